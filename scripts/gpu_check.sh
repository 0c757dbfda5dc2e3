#!/usr/bin/env bash
# The GPU check of issue 10 in one call (about 8 minutes of an H100/H200; nothing is downloaded there).
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
# CIFAR-10 cannot be downloaded on the device machine, so every stage uses a synthetic CIFAR-shaped
# dataset: 50,000 random 32x32 RGB images (`bench speed --synthetic 50000`); a step costs the same on
# random pixels. Stages (each bounded by `timeout`, each writing its own speed.csv and speed.md):
#   main/    fast vs reference-style pretraining steps of paper-preset advcl-ip and rocl at batch 512
#            (target: advcl-ip fast >= 3x), PGD-20 on 1,024 images, one whole epoch of paper-preset
#            advcl-ip (target <= 25 s) and the projected ainfonce-table1 CIFAR-10 pretraining
#            (target <= 36 GPU-hours; the other A-InfoNCE variants use their family's measured rate)
#   aa/      AutoAttack (standard) on 256 images, fast vs reference-style
#   compile/ rocl's fast path with torch.compile (--compile), to compare with main/
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

stage main 290 --methods advcl-ip rocl --warmup 3 --steps 5 --repeats 3 --eval-images 1024 --no-autoattack \
  --epoch advcl-ip
if [ "$AA" = 1 ]; then
  stage aa 100 --methods advcl-ip --stages eval --eval-images 256 --repeats 1
else
  echo "=== aa: skipped (no pyautoattack wheel in .whl/: see the header of this script)" | tee -a "$LOG"
fi
stage compile 90 --methods rocl --compile --no-reference --stages pretrain --warmup 3 --steps 5 --repeats 3

echo "=== summary" | tee -a "$LOG"
for name in main aa compile; do
  [ -f "$OUT/$name/speed.md" ] || continue
  echo "--- $name" | tee -a "$LOG"
  grep -E "^\| (advcl-ip|rocl|classifier) |^Total|^- |met\*\*|MISSED" "$OUT/$name/speed.md" | tee -a "$LOG"
done
