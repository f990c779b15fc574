#!/usr/bin/env bash
# The GPU checks that issues 11, 14 and 15 wait for, prepared so a lent GPU's few minutes go to measuring.
#
# usage, on the GPU machine, from the project root, once the device pack is unpacked there
# (../shared/tools/device-pack.sh here; its setup.sh sourced there):
#   . .device-pack/setup.sh && bench/gpu_checks.sh [--budget SECONDS] PART [PART ...]
# --budget: the seconds this call may spend on parts; each part's limit is cut to what is left (less a margin
# for the call's return), and a part that would get under 60 s is skipped, saying so, so the call ends inside
# the device tool's limit with every finished part's log in $OUT.
# A lease is 15 minutes of device time, the machine's start and the pack's three transfers included (they take
# about 3-5 of them), and the machine stays warm 30 s after a call. So: call 1 carries part1 (the start), call 2
# part2, call 3 part3 and runs, at once,
#   . .device-pack/setup.sh && bench/gpu_checks.sh --budget 480 tests stylize evaluate train
# with timeout_s 540; a second lease runs `job` (issue 15's plain loop vs the job); a third, issue 11's run in one
# call (a lease cannot carry a full-size run's state, some 400 MB, to the next: 16 MiB a file comes back), shortened
# to fit and scored on all 1,500 pack photos, the issue's own measure:
#   RECIPE_ARGS="--epochs 10 --eval-every 5 --eval-photos 1500" bench/gpu_checks.sh --budget 480 recipe
# PARTs, in the order they pay (each bounded by its own limit):
#   tests     the CUDA sides of the equality tests (GPU decode vs Pillow, data on the device vs the DataLoader),
#             when pytest is importable there (the H200 image has it; else it says so and skips)
#   stylize   bench/stylize_throughput.py --gpu over 1,500 and 6,000 photos: job vs the plain script (issue 14)
#   evaluate  bench/evaluate_throughput.py on the GPU, 1,500 photos, Inception (issue 14)
#   train     bench/train_throughput.py --gpu at the recipe's batch 4: each lever, data in GPU memory (issue 15)
#   job       the plain loop vs the training job, both with --compile (2 epochs; the job's epoch lines) (issue 15)
#   recipe    jobs.train --recipe kaggle $RECIPE_ARGS until the budget ends; a call on the same machine continues it
#             (issue 11: 35 epochs, ~18 min at the 38.8 images/s seen on an H100)
# Logs go to $OUT (the device tool's folder that comes back) or /tmp/gpu-checks.
set -uo pipefail
cd "$(dirname "$0")/.."
budget=100000
if [ "${1:-}" = --budget ]; then budget=${2:?--budget takes seconds}; shift 2; fi
out=${OUT:-/tmp/gpu-checks}; mkdir -p "$out"
: "${PACK_DATA:?source .device-pack/setup.sh first (it sets PACK_DATA and PACK_INCEPTION)}"
photos=$PACK_DATA/photo_jpg
export GAN_INCEPTION_WEIGHTS=${PACK_INCEPTION:?}  # the FID Inception for the jobs, benches and training workers
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"

run() {  # run NAME SECONDS CMD...: the command's output to $OUT/NAME.log, its table lines and exit code here
  local name=$1 limit=$2; shift 2
  local left=$((budget - SECONDS - 20))  # 20 s kept for the kill, the grep and the call's return
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 60 ]; then echo "== $name: skipped, ${left} s of the budget left"; return; fi
  local t0=$SECONDS
  echo "== $name (at most $limit s): $*"
  timeout -k 10 "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  grep -E '^\||images/s|ratio|TFLOP|peak|passed|failed|skipped|Error|error:' "$out/$name.log" | grep -v 'INFO\|WARNING' | tail -40
  echo "== $name: exit $rc after $((SECONDS - t0)) s"
}

for part in "$@"; do
  case $part in
    tests)
      if python -c "import pytest" 2>/dev/null; then
        run tests 240 python -m pytest -q -p no:cacheprovider tests/test_data.py tests/test_batch.py \
          -k "device or decoder"
      else
        echo "== tests: pytest is not importable here; not run"
      fi ;;
    train) run train 540 python bench/train_throughput.py --gpu --gpu-batches 4 --photos "$photos" ;;
    job) run job 420 python bench/train_throughput.py --gpu --gpu-batches 4 --photos "$photos" --no-levers \
           --compile default --steps 150 ;;
    stylize) run stylize 420 python bench/stylize_throughput.py --gpu --photos "$photos" --gpu-counts 1500,6000 ;;
    evaluate)
      run evaluate 240 python bench/evaluate_throughput.py --photos "$photos" --count 1500 --batch 64 ;;
    recipe)
      # killed at its time limit; the same command in a later call continues from the last epoch's checkpoint
      # shellcheck disable=SC2086  # RECIPE_ARGS: flags, split on spaces
      run recipe 540 python -m jobs.train --recipe kaggle --data "$PACK_DATA" --storage /tmp/gpu-runs --name kaggle \
        --export "$out/kaggle-generator.pt" ${RECIPE_ARGS:-}
      find /tmp/gpu-runs -name history.json -exec cp {} "$out/" \; ;;
    *) echo "bench/gpu_checks.sh: unknown part '$part' (tests, train, job, stylize, evaluate, recipe)"; exit 2 ;;
  esac
done
