#!/usr/bin/env bash
# The long fuzzing campaign: tests/test_fuzz.py with fresh seeds, batch after batch, for
# SECONDS_TOTAL seconds (default 3600). Prints the examples tried and stops at the first failure.
set -u
cd "$(dirname "$0")/.."
total=${SECONDS_TOTAL:-3600}
end=$(( $(date +%s) + total ))
tried=0
batch=0
while [ "$(date +%s)" -lt "$end" ]; do
  batch=$((batch + 1))
  seed="$RANDOM$RANDOM"
  out=$(HYPOTHESIS_PROFILE=campaign python -m pytest -q -p no:cacheprovider tests/test_fuzz.py \
        --hypothesis-seed="$seed" --hypothesis-show-statistics 2>&1)
  rc=$?
  n=$(printf '%s\n' "$out" | grep -oE '[0-9]+ passing examples' | head -1 | grep -oE '^[0-9]+')
  tried=$((tried + ${n:-0}))
  echo "batch $batch (seed $seed): rc=$rc passing=${n:-?} total=$tried"
  if [ "$rc" -ne 0 ]; then printf '%s\n' "$out" | tail -60; exit 1; fi
done
echo "campaign done: $tried examples in $batch batches, no failure"
