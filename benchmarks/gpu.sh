#!/usr/bin/env bash
# Benchmarks for a lent GPU machine (H100 / H200): everything written as JSON under $OUT (else
# benchmarks/results/gpu), in under 8 minutes. Run from the repo root; no network needed (torch with CUDA,
# onnx and a CPU-only onnxruntime are what the machine has). Without an install of lordkit, the package is
# staged in a temp dir as pyproject's package-dir lays it out (lordkit/ with export/ and cli/ inside):
#
#   bash benchmarks/gpu.sh                           # on the GPU machine
#   bash benchmarks/gpu.sh --cpu-smoke               # the same steps and code paths, tiny sizes, on a CPU
#
# Steps (each under its own time limit; a failed or timed-out step is recorded and the next one runs):
#   1. latency: the random reference-size model (LordConfig defaults, 64 px) exported once, then eager
#      fp32 vs TorchScript fp32 vs .half() fp16 vs bfloat16 at batch 1, 8, 32, 128 on CUDA, every network
#      (benchmarks/latency.py -> bench-gpu.json / .png);
#   2. the AOTInductor packages compiled for CUDA (export --aoti) beside eager and TorchScript, every
#      network (bench-gpu-aoti.json);
#   3. torch.compile of the generator at batch 8 and 128 beside eager (compile time reported apart);
#   4. training throughput, reference-equivalent loop vs lordkit's, both stages, reduced step count
#      (benchmarks/train_throughput.py -> train_throughput.json);
#   5. with more than one GPU: 1 vs N processes (benchmarks/ddp_throughput.py -> ddp_throughput.json).
# steps.json records each step's exit status and seconds.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
SMOKE=0
[[ "${1:-}" == "--cpu-smoke" ]] && SMOKE=1
RES=${OUT:-benchmarks/results/gpu}
mkdir -p "$RES"
export LORDKIT_RESULTS_DIR=${LORDKIT_RESULTS_DIR:-$RES}  # result lines of this run beside its JSON
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lordkit-gpu-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
if ! $PY -c "import lordkit.bench, lordkit.export" 2>/dev/null; then
  # Not installed: lordkit.export and lordkit.cli live in export/ and cli/, mapped in by pyproject.
  mkdir -p "$WORK/site"
  cp -r lordkit "$WORK/site/lordkit"
  ln -s "$PWD/export" "$WORK/site/lordkit/export"
  ln -s "$PWD/cli" "$WORK/site/lordkit/cli"
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
START=$(date +%s)
BUDGET_S=${GPU_BENCH_BUDGET_S:-460}   # the whole script, startup included, stays under 8 minutes
STEPS="$WORK/steps.txt"
: >"$STEPS"

# step NAME LIMIT_S CMD...: run CMD under min(LIMIT_S, time left); skip it when under 20 s are left.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET_S - ($(date +%s) - START)))
  ((limit > left)) && limit=$left
  if ((limit < 20)); then
    echo "== $name: skipped (${left} s of the budget left)"
    echo "$name skipped 0" >>"$STEPS"
    return
  fi
  echo "== $name (limit ${limit} s)"
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  echo "$name $rc $(($(date +%s) - t0))" >>"$STEPS"
  ((rc == 124)) && echo "== $name: timed out after ${limit} s"
  ((rc != 0 && rc != 124)) && echo "== $name: failed with status $rc"
}

if ((SMOKE)); then
  DEVICE=cpu
  N_GPUS=0
  TIMING=(--batch-sizes 1,2 --iters 2 --warmup 1 --max-time 5 --threads 1)
  LAT=(--tiny --img-size 32 "${TIMING[@]}")
  COMPILE_BATCHES=2
  TRAIN=(--device cpu --img-size 32 --batch-size 4 --steps 2 --warmup 1 --set model.n_adain_layers=2
    --set model.content_dim=8 --set model.class_dim=8 --set model.adain_dim=16 --set model.gen_last_dim=8
    --set model.enc_conv_dims=8,16,16 --set model.enc_fc_dim=32)
  DDP=(--procs 1,2 --device cpu --epochs 1 --batch-size 256)
else
  DEVICE=cuda
  N_GPUS=$($PY -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
  if ((N_GPUS < 1)); then
    echo "no CUDA GPU visible to torch; use --cpu-smoke on a machine without one" >&2
    exit 2
  fi
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$RES/nvidia-smi.csv" 2>/dev/null || true
  TIMING=(--batch-sizes 1,8,32,128 --iters 50 --warmup 5 --max-time 10)
  LAT=("${TIMING[@]}")
  COMPILE_BATCHES=8,128
  TRAIN=(--device cuda --steps 20 --warmup 5)
  DDP=(--procs "1,$N_GPUS" --device auto --img-size 64 --set model.adain_dim=256)
fi

# 1. Eager vs TorchScript vs half precision, every network and batch size. The export (on the CPU) is kept
#    in $WORK for step 2; ONNX is exported too, for the FLOP counts.
step latency 230 $PY benchmarks/latency.py "${LAT[@]}" --device "$DEVICE" --work-dir "$WORK/model" \
  --backends eager,torchscript,torch-fp16,torch-bf16 --no-align --out "$RES" --name bench-gpu

# 2. The AOTInductor packages compiled for the GPU (lordkit export --aoti --aoti-device cuda) beside eager
#    and TorchScript, from the same model dir.
AOTI_DEVICE=cuda
((SMOKE)) && AOTI_DEVICE=cpu
step aoti_export 200 $PY -c "import sys; from lordkit.export.exporter import export_model as e; \
e(sys.argv[1], sys.argv[2], aoti=True, aoti_device=sys.argv[3], batch_sizes=(2,), show=False)" \
  "$WORK/model/model" "$WORK/aoti" "$AOTI_DEVICE"
step aoti 60 $PY benchmarks/latency.py "${TIMING[@]}" --device "$DEVICE" --model "$WORK/aoti" --model-dir "$WORK/model/model" \
  --backends eager,torchscript,aoti --no-align --out "$RES" --name bench-gpu-aoti

# 3. torch.compile (compile time excluded from the latency, reported per shape).
step compile 120 $PY benchmarks/latency.py "${LAT[@]}" --device "$DEVICE" --work-dir "$WORK/model" \
  --backends eager,compile --models generator --batch-sizes "$COMPILE_BATCHES" --no-align --out "$RES" \
  --name bench-gpu-compile

# 4. Training throughput, reduced step count.
step train_throughput 130 $PY benchmarks/train_throughput.py "${TRAIN[@]}" --out "$RES/train_throughput.json"

# 5. Data-parallel scaling, only with several GPUs (and in the smoke run, on CPU processes).
if ((N_GPUS > 1 || SMOKE)); then
  step ddp_throughput 90 $PY benchmarks/ddp_throughput.py "${DDP[@]}" --out "$RES/ddp_throughput.json"
fi

$PY - "$STEPS" "$RES/steps.json" "$SMOKE" "$START" <<'EOF'
import json, sys, time
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
steps = [{"step": n, "status": "skipped" if rc == "skipped" else ("timed out" if rc == "124" else int(rc)),
          "seconds": int(s)} for n, rc, s in rows]
json.dump({"smoke": sys.argv[3] == "1", "total_seconds": int(time.time()) - int(sys.argv[4]), "steps": steps},
          open(sys.argv[2], "w"), indent=2)
print(json.dumps(steps))
EOF
echo "results in $RES"
