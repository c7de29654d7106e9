"""data.prepare: ahead: batches over a train stream that is still being written are the batches of the
finished data, whatever the physical shard size; a real run trains while the background prepare works."""

from __future__ import annotations

import json
import resource
import shutil
import sys
import threading
import time

import numpy as np
import pytest
from helpers import smoke_argv, train_losses, write_bpe_tokenizer

from tinyllama import evaluate_checkpoints, train_cuda, train_mlx
from tinyllama.core.config import load_config
from tinyllama.data.ahead import AheadLoader, Background, TrainStream, ahead_val, held_out
from tinyllama.data.prepare import prepare_data
from tinyllama.data.util import DataError

WORDS = "the of and to in a is was for on as with by he at from his an were are which this be or had".split()


def _corpus(path, documents: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(documents):
            words = rng.choice(WORDS, int(rng.integers(50, 400)))
            f.write(json.dumps({"text": f"Document {i}. " + " ".join(words)}) + "\n")
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The same corpus prepared with two physical shard sizes."""
    root = tmp_path_factory.mktemp("ahead")
    corpus = _corpus(root / "c.jsonl", 400)
    out = {}
    for shard in (700, 2500):
        cfg = load_config(
            None, {"data.dataset": str(corpus), "data.tokenizer": "gpt2", "data.cache_dir": str(root / f"c{shard}")}
        )
        out[shard] = prepare_data(cfg.data, progress=False, shard_tokens=shard, log=lambda *_: None).path
    return root, out


def _loader(stream, block=3000, hold=60, **kw):
    return AheadLoader(stream, block, hold, seq_len=16, batch_size=4, seed=7, **kw)


def _batches(loader, steps):
    return [loader.batch(s, m) for s in range(steps) for m in range(loader.grad_accum)]


def test_batches_while_shards_appear_equal_the_finished_datas(finished, tmp_path):
    root, dirs = finished
    target = dirs[700]
    dtype = np.dtype(json.loads((target / "meta.json").read_text())["dtype"])
    reference = _batches(_loader(TrainStream(target, target, dtype), grad_accum=2), 800)
    # the same data written shard by shard into a directory being built, meta.json last into its final place
    work, growing = tmp_path / ".partial", tmp_path / "final"
    work.mkdir()
    shards = sorted(target.glob("train-*.bin"))

    def write():
        for shard in shards[:-1]:
            time.sleep(0.01)
            shutil.copy(shard, work / (shard.name + ".part"))
            (work / (shard.name + ".part")).rename(work / shard.name)
        time.sleep(0.1)
        shutil.copytree(target, growing)  # the finished directory renamed into place, with its last shard

    writer = threading.Thread(target=write)
    stream = TrainStream(growing, work, dtype)
    writer.start()
    got = _batches(_loader(stream, grad_accum=2), 800)
    writer.join()
    assert stream.complete  # 800 steps x 8 windows: into the second epoch, which waits for the whole corpus
    for (x, y), (rx, ry) in zip(got, reference, strict=True):
        assert (x == rx).all() and (y == ry).all()


def test_the_order_does_not_depend_on_the_physical_shard_size(finished):
    _, dirs = finished
    loaders = []
    for shard in (700, 2500):
        dtype = np.dtype(json.loads((dirs[shard] / "meta.json").read_text())["dtype"])
        loaders.append(_loader(TrainStream(dirs[shard], dirs[shard], dtype), world_size=2, rank=1))
    for (x, y), (x2, y2) in zip(_batches(loaders[0], 30), _batches(loaders[1], 30), strict=True):
        assert (x == x2).all() and (y == y2).all()


def test_epoch_zero_walks_the_blocks_in_order_and_never_trains_on_the_held_out_tokens(finished):
    _, dirs = finished
    dtype = np.dtype(json.loads((dirs[700] / "meta.json").read_text())["dtype"])
    stream = TrainStream(dirs[700], dirs[700], dtype)
    loader = _loader(stream, block=3000, hold=held_out(3000, 0.02))
    loader._extend(10**9)  # learn every block
    total = sum(loader.counts)
    starts = [loader.window_start(g) for g in range(total)]
    assert starts == sorted(starts, key=lambda s: s // 3000)  # block by block
    assert len(set(starts)) == total  # each window once per epoch
    assert all(not (3000 - held_out(3000, 0.02) <= s + 16 < 3000) for s in starts)  # held-out tail untouched
    assert all(s // 3000 == (s + 16) // 3000 for s in starts)  # windows never straddle blocks
    second = sorted(loader.window_start(total + g) for g in range(total))
    assert second == sorted(starts) and [loader.window_start(total + g) for g in range(total)] != starts
    val = ahead_val(stream, 3000, 0.02, 16, 2)
    assert val.shape == (2, 17) and (val[0] == np.asarray(stream.tokens[3000 - 60 : 3000 - 60 + 17])).all()


def test_a_block_too_small_for_the_held_out_tokens_is_one_line(finished):
    _, dirs = finished
    stream = TrainStream(dirs[700], dirs[700], np.dtype("<u2"))
    with pytest.raises(DataError, match="raise data.shard_tokens"):
        AheadLoader(stream, 40, 30, 16, 4, 0)


@pytest.mark.slow
def test_a_run_trains_while_the_background_prepare_writes_and_matches_one_on_the_finished_data(tmp_path, capsys):
    corpus = _corpus(tmp_path / "big.jsonl", 10000, seed=1)  # ~6M tokens: 30 blocks, seconds of tokenizing
    tokenizer = write_bpe_tokenizer(tmp_path / "tok", 300)
    args = ("--data.dataset", str(corpus), "--data.tokenizer", str(tokenizer), "--data.prepare", "ahead",
            "--data.shard_tokens", "200000", "--data.max_documents", "0", "--training.max_steps", "12",
            "--training.eval_every", "6", "--training.save_every", "6")  # fmt: skip
    torch_args = (*args, "--hardware.accelerator", "cpu")
    cache = tmp_path / "cache"
    train_cuda.main(smoke_argv(tmp_path / "during", cache, *torch_args))
    # step 0 came once the first block was there, while the background prepare tokenized the rest
    assert "train tokens ready; the rest is being tokenized in the background" in capsys.readouterr().out
    cfg = load_config(
        None, {"data.dataset": str(corpus), "data.tokenizer": str(tokenizer), "data.cache_dir": str(cache)}
    )
    prepare_data(cfg.data, progress=False, shard_tokens=200000, log=lambda *_: None)  # finished (or finishes)
    train_cuda.main(smoke_argv(tmp_path / "after", cache, *torch_args))
    assert "(all of them)" in capsys.readouterr().out
    during, after = train_losses(tmp_path / "during"), train_losses(tmp_path / "after")
    assert sorted(during) == list(range(1, 13)) and during == after
    records = [
        json.loads(x) for x in (tmp_path / "after" / "logs" / "smoke" / "metrics.jsonl").read_text().splitlines()
    ]
    out = tmp_path / "eval.json"
    evaluate_checkpoints.main(["--checkpoints", str(tmp_path / "after" / "ckpt" / "final.ckpt"), "--backend", "torch",
                               "--out", str(out)])  # fmt: skip
    trainer = [r["loss"] for r in records if r["split"] == "val"][-1]
    assert json.loads(out.read_text())[0]["val_loss"] == pytest.approx(trainer, abs=2e-5)
    # and the other backend resumes the same order exactly
    halfway = tmp_path / "after" / "ckpt" / "step-000006.ckpt"
    train_mlx.main(smoke_argv(tmp_path / "mlx", cache, *args, "--resume", str(halfway)))
    resumed = train_losses(tmp_path / "mlx")
    assert sorted(resumed) == list(range(7, 13))
    assert all(abs(resumed[s] - after[s]) <= 1e-4 * after[s] for s in resumed), (resumed, after)


def _ahead_config(corpus, tokenizer, cache, shard_tokens: int):
    return load_config(
        None,
        {
            "data.dataset": str(corpus), "data.tokenizer": str(tokenizer), "data.cache_dir": str(cache),
            "data.prepare": "ahead", "data.shard_tokens": shard_tokens, "data.max_documents": 0,
        },
    ).data  # fmt: skip


def test_a_failed_background_prepare_ends_the_run_even_while_it_has_data(finished, tmp_path):
    """Its one error line (a full disk, a bad document) ends the run at the next batch, not when the run would
    have needed its next block: a run never exits 0 on a prepare that died."""
    _, dirs = finished
    work = tmp_path / ".c.partial"
    work.mkdir()
    for shard in sorted(dirs[700].glob("train-*.bin"))[:3]:
        shutil.copy(shard, work / shard.name)
    line = "data.cache_dir /c: no space left on its disk writing /c/train-00003.bin.part; free some space"
    code = f"import sys; print('error: {line}', file=sys.stderr); sys.exit(2)"
    background = Background([sys.executable, "-c", code], tmp_path / "prepare.log", work)
    background.process.wait(timeout=60)
    loader = _loader(TrainStream(tmp_path / "c", work, np.dtype("<u2"), background), block=1400, hold=60)
    with pytest.raises(DataError, match=f"^the background data.prepare failed: {line}$"):
        loader.batch(0)  # block 0 is there: before, this trained on, and the run exited 0
    background.stop()


def test_a_prepare_that_finished_its_data_is_let_exit_and_one_still_at_work_is_stopped(tmp_path, capsys):
    """Its meta.json is written a moment before its process exits: a run ending in that moment waits for the exit
    instead of stopping a prepare that is done and saying so."""
    exiting = Background([sys.executable, "-c", "import time; time.sleep(0.5)"], tmp_path / "a.log", tmp_path)
    exiting.stop(finished=True)
    assert exiting.process.returncode == 0 and capsys.readouterr().err == ""
    working = Background([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "b.log", tmp_path)
    working.stop()
    assert working.process.returncode != 0 and "note: stopped the background data.prepare" in capsys.readouterr().err


@pytest.mark.slow
def test_a_killed_background_prepare_is_started_again_and_resumes(tmp_path, capsys):
    corpus = _corpus(tmp_path / "c.jsonl", 10000, seed=2)  # ~6M tokens: seconds of tokenizing
    tokenizer = write_bpe_tokenizer(tmp_path / "tok", 300)
    cfg = _ahead_config(corpus, tokenizer, tmp_path / "cache", 100_000)
    data = prepare_data(cfg, progress=False, log=lambda *_: None)
    work, process = data.stream.work, data.background.process
    while not (work / "progress.json").is_file() and process.poll() is None:  # a finished shard on record
        time.sleep(0.01)
    assert process.poll() is None, "the prepare finished before it could be killed: make the corpus larger"
    process.kill()
    process.wait()
    loader = data.train_batches(seq_len=16, batch_size=4, seed=7)
    loader.window_start(10**9)  # every block of epoch 0: waits for the whole corpus
    assert data.stream.complete and data.background.restarts == 1
    assert "note: the background data.prepare was killed (SIGKILL); starting it again" in capsys.readouterr().err
    meta = json.loads((data.target / "meta.json").read_text())
    assert meta["resumed_tokens"] > 0  # the second one went on from the first one's shards
    full = load_config(None, {**{f"data.{k}": getattr(cfg, k) for k in ("dataset", "tokenizer", "cache_dir")}})
    reference = prepare_data(full.data, progress=False, shard_tokens=100_000, log=lambda *_: None)
    assert np.array_equal(np.asarray(reference.tokens("train")), np.asarray(data.stream.tokens))
    data.close()
    assert capsys.readouterr().err == ""  # finished: nothing to stop


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="Linux: a full disk is simulated with prlimit")
def test_a_run_whose_background_prepare_fails_exits_2_with_its_line(tmp_path, monkeypatch):
    """At step 3 the background prepare's files may no longer grow (RLIMIT_FSIZE, as on a full disk: Python
    ignores SIGXFSZ, so its next write fails with EFBIG and it ends with its error line). The run has block 0
    and needs nothing more; before, it trained on and exited 0, the cache left with a lock file."""
    corpus = _corpus(tmp_path / "c.jsonl", 10000, seed=3)  # ~6M tokens: seconds of tokenizing
    tokenizer = write_bpe_tokenizer(tmp_path / "tok", 300)
    batch = AheadLoader.batch

    def batch_then_fill_the_disk(loader, step, micro_step=0):
        process = loader.stream.background.process
        if step == 3 and micro_step == 0:
            assert process.poll() is None, "the prepare finished before step 3: make the corpus larger"
            resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (4096, 4096))  # room for its error line
        if step == 4 and micro_step == 0:  # however busy the machine: the prepare has hit the limit by now
            process.wait(timeout=300)
        return batch(loader, step, micro_step)

    monkeypatch.setattr(AheadLoader, "batch", batch_then_fill_the_disk)
    args = ("--data.dataset", str(corpus), "--data.tokenizer", str(tokenizer), "--data.prepare", "ahead",
            "--data.shard_tokens", "200000", "--data.max_documents", "0", "--training.max_steps", "300",
            "--training.eval_every", "0", "--training.save_every", "0", "--hardware.accelerator", "cpu")  # fmt: skip
    with pytest.raises(DataError, match=r"^the background data.prepare failed: data.cache_dir .*File too large"):
        train_cuda.main(smoke_argv(tmp_path / "run", tmp_path / "cache", *args))
    assert not (tmp_path / "run" / "ckpt" / "final.ckpt").exists()
    prepared = tmp_path / "cache" / "prepared"
    assert [p.name for p in prepared.iterdir() if not p.name.endswith(".lock")] == []  # it removed its partial


@pytest.mark.slow
def test_a_run_that_ends_first_stops_the_background_prepare_and_says_so(tmp_path, capsys):
    corpus = _corpus(tmp_path / "c.jsonl", 3000, seed=4)
    tokenizer = write_bpe_tokenizer(tmp_path / "tok", 300)
    data = prepare_data(_ahead_config(corpus, tokenizer, tmp_path / "cache", 100_000), progress=False)
    running = data.background.process
    data.close()
    assert running.poll() is not None
    err = capsys.readouterr().err
    assert err.startswith("note: stopped the background data.prepare; ") and "resumes there" in err
