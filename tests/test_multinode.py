"""Beyond one machine, simulated on this host: two `torchrun` nodes (one launch each, a c10d rendezvous, each node
on its own loopback address) and an `mlx.launch` hostfile of two hosts train like one process with the same global
batch, resume exactly, and all stop at one step when one node's trainer gets SIGTERM. Each node is a separate
launcher with LOCAL_RANK 0, as on separate machines; what two machines would not share (output.dir, the data
cache) is given to one node at another path, which is what it looks like from that node."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, SMOKE, file_hashes, max_weight_diff, smoke_argv, train_losses

from tinyllama import train_cuda, train_mlx
from tinyllama.core.checkpoint import list_checkpoints, read_trainer_state
from tinyllama.core.cli import UserError
from tinyllama.core.config import load_config
from tinyllama.core.loop import Device, Run, first_on_its_machine, start_together
from tinyllama.core.training import Start

# lr constant after warmup (min_lr = lr): the schedule does not depend on max_steps, so a run stopped by a signal
# (max_steps far away) and resumed to STEPS follows the same learning rates as a straight STEPS-step run
QUIET = ("--training.eval_every", "0", "--training.save_every", "0", "--training.min_lr", "3e-3")
TORCH_STEPS = MLX_STEPS = 30  # far beyond the step a signal lands at, even when a busy machine delays it
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
TIMEOUT = 180  # a hang fails here instead of blocking the suite


def free_ports(count: int = 1) -> int:
    """The first of `count` consecutive TCP ports free on loopback now (mlx.launch takes one per host)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        try:
            for port in range(first + 1, first + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise RuntimeError("no free ports")


def node_address(node: int) -> str:
    """127.0.0.<node + 1>: Linux routes all of 127/8 to loopback, so each simulated machine has its own address;
    where only 127.0.0.1 exists (macOS), every node uses it."""
    address = f"127.0.0.{node + 1}"
    try:
        with socket.socket() as probe:
            probe.bind((address, 0))
    except OSError:
        return "127.0.0.1"
    return address


def start_torch_nodes(log_dir: Path, *node_argv: list[str]) -> list[subprocess.Popen]:
    """One `torchrun --nnodes N --nproc-per-node 1` per node, as a user starts one on each machine (docs/training.md):
    the rendezvous on node 0's address. c10d ranks the nodes by their address, so node i holds global rank i."""
    port = free_ports()
    nodes = []
    for i, argv in enumerate(node_argv):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(len(node_argv)), "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"test-{port}",
               "--local-addr", node_address(i), "--rdzv-conf", f"is_host={int(i == 0)}",
               "train_cuda.py", *argv, "--hardware.accelerator", "cpu"]  # fmt: skip
        with open(log_dir / f"node{i}.log", "w") as log:
            nodes.append(subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))  # fmt: skip
    return nodes


def start_mlx_hosts(log_dir: Path, argv: list[str], hosts: int = 2) -> list[subprocess.Popen]:
    """mlx.launch over a hostfile, as for several Macs (docs/training.md). "ssh": "127.0.0.1" is the one host
    mlx.launch starts without ssh; each host's ring address is its own loopback address."""
    hostfile = log_dir / "hosts.json"
    hostfile.write_text(json.dumps([{"ssh": "127.0.0.1", "ips": [node_address(i)]} for i in range(hosts)]))
    launcher = Path(sys.executable).parent / "mlx.launch"
    cmd = [str(launcher), "--hostfile", str(hostfile), "--backend", "ring", "--starting-port", str(free_ports(hosts)),
           "--cwd", str(ROOT), "--python", sys.executable, "train_mlx.py", *argv]  # fmt: skip
    with open(log_dir / "node0.log", "w") as log:
        return [subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)]


def finish(nodes: list[subprocess.Popen], log_dir: Path, timeout: float = TIMEOUT) -> list[int]:
    """Every launcher's exit code; past the timeout (a hang) every process they started is killed and the test fails."""
    deadline = time.time() + timeout
    try:
        for node in nodes:
            node.wait(timeout=max(0.1, deadline - time.time()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {timeout} s (a hang):\n{logs(log_dir)}")
    finally:
        for node in nodes:
            if node.poll() is None:  # torchrun starts each worker in a session of its own: kill the whole tree
                for pid in [*descendants(node.pid), node.pid]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                node.wait()
    return [node.returncode for node in nodes]


def descendants(pid: int) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [p for child in map(int, children) for p in (child, *descendants(child))]


def logs(log_dir: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(log_dir.glob("node*.log")))


def run_nodes(run_dir: Path, start, *args, timeout: float = TIMEOUT) -> str:
    """Start nodes (start_torch_nodes or start_mlx_hosts, args after run_dir), wait, require exit 0; their logs."""
    run_dir.mkdir(parents=True, exist_ok=True)
    codes = finish(start(run_dir, *args), run_dir, timeout)
    assert codes == [0] * len(codes), logs(run_dir)
    return logs(run_dir)


def trainer_of_rank(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of the trainer process of `rank` among the launcher's children (its environment says its rank)."""
    children = descendants(launcher.pid)
    for pid in children:
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env or f"MLX_RANK={rank}".encode() in env:
            return pid
    raise AssertionError(f"no trainer of rank {rank} among {children}")


def wait_for_steps(run_dir: Path, steps: int, nodes: list[subprocess.Popen]) -> None:
    metrics = run_dir / "logs/smoke/metrics.jsonl"
    deadline = time.time() + TIMEOUT
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= steps):
        if time.time() > deadline or any(node.poll() is not None for node in nodes):
            finish(nodes, run_dir, timeout=1)
            pytest.fail(f"no step {steps} logged:\n{logs(run_dir)}")
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------------- torchrun


def assert_trained_like_one_process(two_nodes: Path, one_process: Path, steps: int) -> None:
    """The two-node run logged every step with the one-process run's losses and ended at its weights (1e-4:
    the all-reduce rounds differently), as a world of 2 whose only checkpoint is the final one."""
    one, two = train_losses(one_process), train_losses(two_nodes)
    assert sorted(two) == list(range(1, steps + 1))
    assert all(abs(one[s] - two[s]) < 1e-4 for s in one), (one, two)
    assert max_weight_diff(one_process / "ckpt/final.ckpt", two_nodes / "ckpt/final.ckpt") < 1e-4
    assert read_trainer_state(two_nodes / "ckpt/final.ckpt")["world_size"] == 2
    assert [p.name for p in list_checkpoints(two_nodes / "ckpt")] == ["final.ckpt"]


def torch_argv(run_dir: Path, cache: Path, *extra: str) -> list[str]:
    return smoke_argv(run_dir, cache, *QUIET, "--training.batch_size", "4", *extra)


@pytest.fixture(scope="module")
def torch_straight(tmp_path_factory, data_cache) -> Path:
    """Two nodes, one process each at batch_size 4, TORCH_STEPS steps without a break."""
    run_dir = tmp_path_factory.mktemp("torch-straight")
    argv = torch_argv(run_dir, data_cache, "--training.max_steps", str(TORCH_STEPS))
    run_nodes(run_dir, start_torch_nodes, argv, argv)
    return run_dir


@pytest.mark.slow
def test_two_torchrun_nodes_train_like_one_process(torch_straight, tmp_path, data_cache):
    """Each node's one process is LOCAL_RANK 0 and global rank 0 or 1: they split the batch like one process
    with batch_size 8 (gloo's all-reduce rounds differently: 1e-4), and only rank 0 writes."""
    train_cuda.main(smoke_argv(tmp_path, data_cache, *QUIET, "--hardware.accelerator", "cpu",
                               "--training.batch_size", "8", "--training.max_steps", str(TORCH_STEPS)))  # fmt: skip
    assert_trained_like_one_process(torch_straight, tmp_path, TORCH_STEPS)
    node0, node1 = ((torch_straight / f"node{i}.log").read_text() for i in (0, 1))
    assert "2 process(es)" in node0 and "done:" in node0 and "step " not in node1  # rank 0 is node 0's


@pytest.mark.slow
def test_sigterm_to_one_torchrun_node_stops_both_and_resume_matches(torch_straight, tmp_path, data_cache):
    """SIGTERM to node 1's trainer (not the one that writes): both finish the step, rank 0 saves it, every process
    exits 0 in time; `--resume auto` on both nodes then ends where the straight run did."""
    argv = torch_argv(tmp_path, data_cache, "--training.max_steps", "100000")
    nodes = start_torch_nodes(tmp_path, argv, argv)
    wait_for_steps(tmp_path, 3, nodes)
    os.kill(trainer_of_rank(nodes[1], 1), signal.SIGTERM)
    assert finish(nodes, tmp_path) == [0, 0], logs(tmp_path)
    saved = list_checkpoints(tmp_path / "ckpt")
    stopped = max(train_losses(tmp_path))
    assert [p.name for p in saved] == [f"step-{stopped:06d}.ckpt"] and read_trainer_state(saved[0])["step"] == stopped
    assert f"stopped at step {stopped}" in (tmp_path / "node0.log").read_text()
    assert stopped < TORCH_STEPS - 2, f"the signal landed at step {stopped}: too late to compare a resume"

    resume = torch_argv(tmp_path, data_cache, "--training.max_steps", str(TORCH_STEPS), "--resume", "auto")
    run_nodes(tmp_path, start_torch_nodes, resume, resume)
    straight, resumed = train_losses(torch_straight), train_losses(tmp_path)
    assert sorted(resumed) == list(range(1, TORCH_STEPS + 1))
    assert all(abs(straight[s] - resumed[s]) < 1e-5 for s in straight), (straight, resumed)
    assert max_weight_diff(torch_straight / "ckpt/final.ckpt", tmp_path / "ckpt/final.ckpt") < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("resume", ["auto", "path"])
def test_a_resume_one_node_cannot_see_is_refused_on_every_node(resume, torch_straight, tmp_path, data_cache):
    """output.dir on node 0's own disk: node 1 finds no checkpoint there. `--resume auto`: without a check rank 0
    resumed at the last step while rank 1 started afresh at step 0 (averaging gradients of other batches from
    other optimizer states; rank 0 wrote final.ckpt), then node 0's torchrun waited 5 minutes for node 1's.
    `--resume PATH`: node 1 failed before the process group formed and node 0 waited in it for 30 minutes."""
    shutil.copytree(torch_straight / "ckpt", tmp_path / "ckpt")
    shutil.copytree(torch_straight / "logs", tmp_path / "logs")
    before = {k: v for k, v in file_hashes(tmp_path / "ckpt").items() if k != ".lock"}  # .lock: the holder's pid
    other = tmp_path / "node1-disk/ckpt"  # output.dir as node 1 sees it: the same path on another machine
    how = {"auto": ("auto", "auto"), "path": (str(tmp_path / "ckpt/final.ckpt"), str(other / "final.ckpt"))}[resume]
    argv = torch_argv(tmp_path, data_cache, "--training.max_steps", str(TORCH_STEPS + 2), "--resume", how[0])
    blind = torch_argv(tmp_path, data_cache, "--training.max_steps", str(TORCH_STEPS + 2), "--resume", how[1],
                       "--output.dir", str(other))  # fmt: skip
    codes = finish(start_torch_nodes(tmp_path, argv, blind), tmp_path, timeout=120)
    node0, node1 = ((tmp_path / f"node{i}.log").read_text() for i in (0, 1))
    assert codes[0] != 0 and codes[1] != 0, logs(tmp_path)
    if resume == "auto":  # both ranks say it
        for out in (node0, node1):
            assert f"error: rank 0 starts at step {TORCH_STEPS} ({TORCH_STEPS} updates), rank 1 at step 0 " in out
            assert "every node must see output.dir and its checkpoints at the same path" in out
    else:
        assert f"error: cannot resume from {other / 'final.ckpt'}: not a finished checkpoint" in node1, node1
        assert "error: rank 1 could not start (its error line says why" in node0, node0
    assert {k: v for k, v in file_hashes(tmp_path / "ckpt").items() if k != ".lock"} == before  # nothing written


@pytest.mark.slow
def test_ahead_data_on_a_node_with_its_own_cache(tmp_path, data_cache):
    """data.prepare: ahead where node 1 has its own data cache (not shared): the background prepare must run on
    every node's first process, not on global rank 0 alone, or node 1 waits for shards that never come."""
    ahead = ("--data.prepare", "ahead", "--data.shard_tokens", "100000", "--training.max_steps", "6")
    train_cuda.main(smoke_argv(tmp_path / "one", data_cache, *QUIET, *ahead, "--hardware.accelerator", "cpu"))
    argv = torch_argv(tmp_path / "two", data_cache, *ahead)
    own_cache = torch_argv(tmp_path / "two", tmp_path / "node1-cache", *ahead)
    run_nodes(tmp_path / "two", start_torch_nodes, argv, own_cache, timeout=120)
    one, two = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert sorted(two) == list(range(1, 7)) and all(abs(one[s] - two[s]) < 1e-4 for s in one), (one, two)
    assert any((tmp_path / "node1-cache/prepared").glob("*/meta.json"))  # node 1 prepared its own copy


# ------------------------------------------------------------------------------------- mlx.launch hostfile


def mlx_argv(run_dir: Path, cache: Path, *extra: str) -> list[str]:
    return smoke_argv(run_dir, cache, *QUIET, "--training.batch_size", "4", *extra)


@pytest.fixture(scope="module")
def mlx_straight(tmp_path_factory, data_cache) -> Path:
    """Two hosts in a hostfile, one process each at batch_size 4, MLX_STEPS steps without a break."""
    run_dir = tmp_path_factory.mktemp("mlx-straight")
    run_nodes(run_dir, start_mlx_hosts, mlx_argv(run_dir, data_cache, "--training.max_steps", str(MLX_STEPS)))
    return run_dir


@pytest.mark.slow
def test_mlx_hostfile_of_two_hosts_trains_like_one_process(mlx_straight, tmp_path, data_cache):
    train_mlx.main(smoke_argv(tmp_path, data_cache, *QUIET, "--training.batch_size", "8",
                              "--training.max_steps", str(MLX_STEPS)))  # fmt: skip
    assert_trained_like_one_process(mlx_straight, tmp_path, MLX_STEPS)


@pytest.mark.slow
def test_sigterm_to_one_mlx_host_stops_both_and_resume_matches(mlx_straight, tmp_path, data_cache):
    nodes = start_mlx_hosts(tmp_path, mlx_argv(tmp_path, data_cache, "--training.max_steps", "100000"))
    wait_for_steps(tmp_path, 2, nodes)
    os.kill(trainer_of_rank(nodes[0], 1), signal.SIGTERM)
    assert finish(nodes, tmp_path) == [0], logs(tmp_path)
    saved = list_checkpoints(tmp_path / "ckpt")
    stopped = max(train_losses(tmp_path))
    assert [p.name for p in saved] == [f"step-{stopped:06d}.ckpt"] and read_trainer_state(saved[0])["step"] == stopped
    assert f"stopped at step {stopped}" in logs(tmp_path)
    assert stopped < MLX_STEPS - 2, f"the signal landed at step {stopped}: too late to compare a resume"

    run_nodes(tmp_path, start_mlx_hosts, mlx_argv(tmp_path, data_cache, "--training.max_steps", str(MLX_STEPS),
                                                  "--resume", "auto"))  # fmt: skip
    straight, resumed = train_losses(mlx_straight), train_losses(tmp_path)
    assert sorted(resumed) == list(range(1, MLX_STEPS + 1))
    assert all(abs(straight[s] - resumed[s]) < 1e-5 for s in straight), (straight, resumed)
    assert max_weight_diff(mlx_straight / "ckpt/final.ckpt", tmp_path / "ckpt/final.ckpt") < 1e-6


@pytest.mark.parametrize(
    ("env", "rank", "first"),
    [
        ({"LOCAL_RANK": "0"}, 3, True),  # torchrun: node 1's first process is global rank 3
        ({"LOCAL_RANK": "1"}, 1, False),
        ({"ring": [["10.0.0.1:5000"], ["10.0.0.2:5001"]]}, 1, True),  # two Macs
        ({"ring": [["127.0.0.1:5000"], ["127.0.0.1:5001"]]}, 1, False),  # mlx.launch -n 2: one machine
        ({"ring": [["10.0.0.1:5000", "10.0.1.1:5002"], ["10.0.0.1:5001", "10.0.1.1:5003"]]}, 1, False),
        ({}, 1, True),  # no launcher says: every process starts its own, the cache's lock serialises them
    ],
)
def test_the_first_process_of_each_machine(env, rank, first, tmp_path, monkeypatch):
    """Who starts a machine's background data.prepare: torchrun's LOCAL_RANK 0, or the first rank at an address
    of mlx.launch's ring hostfile."""
    for name in ("LOCAL_RANK", "MLX_HOSTFILE"):
        monkeypatch.delenv(name, raising=False)
    if "ring" in env:
        (tmp_path / "ring.json").write_text(json.dumps(env.pop("ring")))
        env["MLX_HOSTFILE"] = str(tmp_path / "ring.json")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert first_on_its_machine(rank, 4 if "LOCAL_RANK" in env else 2) is first


@pytest.mark.parametrize(
    ("field", "message"),
    [
        (0, r"rank 0 starts at step 7 \(7 updates\), rank 1 at step 8 \(7 updates\): every node must see output.dir"),
        (2, "rank 1 has another run config .* than rank 0: start every node with the same config file"),
        (3, "rank 1 prepared other data than rank 0 .*: every node needs the same data files"),
        (4, "rank 1 starts from other weights or optimizer state than rank 0 at step 7"),
    ],
)
def test_ranks_that_would_start_different_runs_all_stop(field, message):
    """What each rank compares before training (step and updates, run config, data, sampled weights and moments),
    with a stand-in for the collective that shows rank 1's vector differing in one field."""

    def gather(mine):
        theirs = mine.copy()
        theirs[field] += 1
        return np.stack([mine, theirs])

    def run(gather):
        run = Run(load_config(SMOKE), "torch", Device("cpu", 0), 0, 2, gather=gather)
        run.start, run.signature = Start({"w": np.ones(3, np.float32)}, None, step=7, updates=7), {"tokens": 1}
        return run

    with pytest.raises(UserError, match=message):
        run(gather)._check_same_start()
    run(lambda mine: np.stack([mine, mine]))._check_same_start()  # the same start: nothing to say


def test_a_rank_that_cannot_start_stops_the_others():
    """start_together: the failing rank raises its own error, the others one naming it (stand-in collective)."""
    with pytest.raises(UserError, match="rank 1 could not start"):
        start_together(lambda: 1, 2, lambda mine: np.stack([mine, mine + 1]))
    with pytest.raises(UserError, match="no config"):
        start_together(lambda: (_ for _ in ()).throw(UserError("no config")), 2, lambda mine: np.stack([mine, mine]))
    assert start_together(lambda: 5, 2, lambda mine: np.stack([mine, mine])) == 5
