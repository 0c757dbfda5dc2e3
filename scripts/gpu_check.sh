#!/usr/bin/env bash
# The GPU check of issues 10 and 23 in one call (at most ~9 minutes of an H100/H200; nothing is downloaded there).
#
#   bash scripts/gpu_check.sh            # from the repository root; outputs under $OUT (default ./gpu_check_out)
#
# On this workplace's device tool: run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=560).
# The device image has torch, torchvision, numpy, scikit-learn, matplotlib and rich; `bench` also needs
# submitit (the CLI builds `bench sweep`'s parser) and AutoAttack is the official package (pyautoattack);
# both are pure Python. First, here (the wheels travel in .whl/ and are installed there without the network):
#   echo /.whl/ >> "$(git rev-parse --git-common-dir)/info/exclude"   # works in a worktree too
#   python3 -m pip download --no-deps -d .whl pyautoattack==0.2.0 submitit==1.5.4 cloudpickle==3.1.3
# Without pyautoattack the AutoAttack timing is skipped (the log says so). `bench speed` needs none of
# pandas, filelock or scipy (checked on CPU with those three and pyautoattack made unimportable).
#
# CIFAR-10 cannot be downloaded on the device machine, so the speed stages use a synthetic CIFAR-shaped
# dataset: 50,000 random 32x32 RGB images (`bench speed --synthetic 50000`); a step costs the same on
# random pixels. Stages (each bounded by `timeout`, the sum <= 520 s; each writes its own files):
#   main/      paper-preset advcl-ip and rocl at batch 512 on four paths: reference (released precision:
#              fp32 with default TF32 convs), reference-strict (TF32 off), fast (TF32, pretrain.amp false)
#              and fast-bf16; each ratio beside its FLOP ceiling and MFU; PGD-20 on 1,024 images; one
#              epoch of paper-preset advcl-ip on each fast path (targets: <= 10 s bf16, <= 25 s TF32) and
#              the projected ainfonce-table1 pretraining (target <= 15 GPU-hours in bf16)
#   precision/ scripts/precision_check.py: acl, rocl, advcl on the embedded digits at 32 px, ResNet-18,
#              pretrained in fp32 and bf16 with the same seed, SLF, clean and PGD-20 paired per image,
#              per-step losses and PGD sign agreement (precision.md; exit 1 when bf16 differs detectably)
#   compile/   rocl's fast path with torch.compile (--compile) and with pretrain.compile_attack (CUDA graphs)
#   aa/        AutoAttack (standard) on 256 images, only with GPU_CHECK_AA=1 (it does not fit the 9 minutes)
set -u -o pipefail
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
LOG="$OUT/log.txt"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if ! $PY -c "import submitit" 2>/dev/null; then
  echo "gpu_check: submitit is not importable: put its wheel in .whl/ (see the header of this script)" | tee -a "$LOG"
  exit 2
fi
AA=0; $PY -c "import pyautoattack" 2>/dev/null && AA=1
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
  echo "autoattack package available: $AA"
} 2>&1 | tee -a "$LOG"

COMMON=(--preset paper --synthetic 50000 --device cuda)
stage() {  # name, seconds, bench speed flags...
  local name=$1 seconds=$2; shift 2
  echo "=== $name (at most ${seconds}s): bench speed ${COMMON[*]} $*" | tee -a "$LOG"
  local began=$SECONDS
  timeout "$seconds" $PY -m bench.cli speed "${COMMON[@]}" "$@" \
    --results-dir "$OUT/$name" --reports-dir "$OUT/$name" 2>&1 | tee -a "$LOG"
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - began))s" | tee -a "$LOG"
}

stage main 240 --methods advcl-ip rocl --warmup 2 --steps 3 --repeats 3 --max-repeats 6 --eval-images 1024 \
  --no-autoattack --epoch advcl-ip
echo "=== precision (at most 170s): scripts/precision_check.py" | tee -a "$LOG"
began=$SECONDS
timeout 170 $PY scripts/precision_check.py --out "$OUT/precision" --device cuda 2>&1 | tail -n 30 | tee -a "$LOG"
echo "=== precision: exit ${PIPESTATUS[0]} after $((SECONDS - began))s" | tee -a "$LOG"
stage compile 55 --methods rocl --compile --no-reference --stages pretrain --warmup 3 --steps 3 --repeats 3
stage compile_attack 55 --methods rocl --set pretrain.compile_attack=true --no-reference --stages pretrain \
  --warmup 3 --steps 3 --repeats 3
if [ "$AA" = 1 ] && [ "${GPU_CHECK_AA:-0}" = 1 ]; then
  stage aa 100 --methods advcl-ip --stages eval --eval-images 256 --repeats 1
else
  echo "=== aa: skipped (set GPU_CHECK_AA=1 with the pyautoattack wheel in .whl/; see the header)" | tee -a "$LOG"
fi

echo "=== summary" | tee -a "$LOG"
for name in main compile compile_attack aa; do
  [ -f "$OUT/$name/speed.md" ] || continue
  echo "--- $name" | tee -a "$LOG"
  grep -E "^\| (advcl-ip|rocl|classifier) |^Total|^- |met\*\*|MISSED" "$OUT/$name/speed.md" | tee -a "$LOG"
done
[ -f "$OUT/precision/precision.md" ] && grep -E "^\| |Verdict" "$OUT/precision/precision.md" | tee -a "$LOG"
