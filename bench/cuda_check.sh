#!/usr/bin/env bash
# The whole CUDA check, one GPU, about 8 minutes on an H200 (most of it torch.compile):
#
#     bash bench/cuda_check.sh [RESULTS_DIR [STEP ...]]   # default: cuda_check/, every step
#
# 1. probe: the card, versions, its measured bf16 matmul rate, our attention on SDPA's flash kernel
# 2. bench_compile / bench_eager: 124M, batch 16 x 1024, bf16 autocast, flash SDPA, ours vs transformers
#    in one process (bench/train_torch.py), with and without torch.compile
# 3. dry_run / train: train_cuda.py as a user runs it (124M config on the built-in corpus, compiled),
#    its log line (tok/s, MFU, allocator peak) against the --dry-run memory estimate
# 4. infer: the checkpoint it saved, generated from on the GPU
# 5. mlx: if mlx[cuda] is installed, train_mlx.py on the same config and GPU (our MLX model vs our torch path)
# 6. muon: train_cuda.py with training.optimizer muon
# 7. sweep, only when named (`bash bench/cuda_check.sh DIR sweep`): train_cuda.py at larger batches (SWEEP,
#    default "32 64", 30 steps each, its --dry-run estimate first): the MFU a bigger batch per GPU reaches
# Each step has its own time limit and log (RESULTS_DIR/<step>.log); one failing does not stop the rest.
# Checkpoints and prepared data go to $WORK (default /tmp/cuda_check_work), not RESULTS_DIR.
# CONFIG, BATCH, SEQ, STEPS override the model and sizes (e.g. a quick try on the CPU with the smoke config).
set -u
cd "$(dirname "$0")/.."
out=${1:-cuda_check}
only=" ${*:2} "  # the steps to run (names below); none named: all
work=${WORK:-/tmp/cuda_check_work}
py=${PYTHON:-python3}
config=${CONFIG:-configs/gpt2-124m.yaml}
batch=${BATCH:-16}
seq=${SEQ:-1024}
steps=${STEPS:-60}
mkdir -p "$out" "$work"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TINY_LLAMA_BLAS=reference

wanted() { [[ "$only" == "  " || "$only" == *" $1 "* ]]; }

step() {  # step NAME SECONDS COMMAND...: when NAME is wanted, run_step
    wanted "$1" || return 0
    run_step "$@"
}

run_step() {  # run_step NAME SECONDS COMMAND...: run it under a time limit, log to RESULTS_DIR/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name: start $(date -u +%T)"
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$out/$name.log"
    echo "== $name: rc $rc, end $(date -u +%T)"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >"$out/nvidia-smi.log" 2>&1
cat "$out/nvidia-smi.log"
step probe 120 "$py" bench/cuda_probe.py --json "$out/probe.json"
bench=(--config "$config" --batch-size "$batch" --seq-len "$seq" --rounds 1 --dtype bfloat16)
step bench_compile 240 "$py" bench/train_torch.py "${bench[@]}" --steps "$steps" --compile --json "$out/bench_compile.json"
step bench_eager 120 "$py" bench/train_torch.py "${bench[@]}" --steps $((steps / 2)) --json "$out/bench_eager.json"
run=(--config "$config" --data.dataset builtin --data.val_fraction 0.05 --data.cache_dir "$work/cache"
    --output.dir "$work/ckpt" --output.logs "$out/logs" --output.overwrite true
    --training.batch_size "$batch" --training.seq_len "$seq" --training.grad_accum 1
    --training.max_steps "$steps" --training.max_tokens 0 --training.warmup_steps 10 --training.log_every 10
    --training.eval_every 1000000 --training.save_every 1000000 --training.sample_tokens 0)
step dry_run 60 "$py" train_cuda.py "${run[@]}" --output.run_name adamw --dry-run
step train 240 "$py" train_cuda.py "${run[@]}" --output.run_name adamw
step infer 60 "$py" infer.py --ckpt "$work/ckpt/final.ckpt" --backend auto --max-new-tokens 64 --temperature 0 \
    --prompt "The history of"
if ! wanted mlx; then
    :
elif "$py" -c "import mlx.core as mx, sys; sys.exit(0 if mx.cuda.is_available() else 1)" 2>/dev/null; then
    step mlx 240 "$py" train_mlx.py "${run[@]}" --output.dir "$work/ckpt_mlx" --output.run_name mlx \
        --hardware.accelerator mlx
else
    echo "== mlx: skipped (mlx[cuda] is not installed, or sees no GPU)"
fi
step muon 240 "$py" train_cuda.py "${run[@]}" --output.dir "$work/ckpt_muon" --output.run_name muon \
    --training.optimizer muon
for sweep_batch in ${SWEEP:-32 64}; do  # each batch's estimate, then its run; logs sweep_dry_B, sweep_B
    [[ "$only" == *" sweep "* ]] || break  # only when named: it is not part of the 8-minute check
    sweep=("${run[@]}" --output.dir "$work/ckpt_sweep" --output.run_name "batch$sweep_batch"
        --training.batch_size "$sweep_batch" --training.max_steps 30)
    run_step "sweep_dry_$sweep_batch" 60 "$py" train_cuda.py "${sweep[@]}" --dry-run
    run_step "sweep_$sweep_batch" 300 "$py" train_cuda.py "${sweep[@]}"
done
