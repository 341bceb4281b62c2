#!/usr/bin/env bash
# The `small` preset (training/configs/small/posttrain.yaml) on one GPU, under the tiny recipe's
# protocol: a validation model trained on 00_head + 06_head and measured on 07_head, and the final
# model trained on all three labelled drives and reported on the test drives 03_head and 01_head.
# Nothing here is chosen by a test drive. The two models train side by side (one small model leaves
# most of a large GPU idle); every figure lands as JSON under RUNS, and the training logs
# (RUNS/*.log, RUNS/*/metrics.jsonl) give clips/s.
#
#   bash training/small_gpu.sh                                 # cuda, 1000 steps of 32 windows
#   STEPS=300 LAPOSE="python3 -m lapose_core.cli" bash training/small_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
LAPOSE=${LAPOSE:-.venv/bin/lapose}
RUNS=${RUNS:-runs/small}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-1000}
WINDOWS=${MAX_WINDOWS:+--max-windows $MAX_WINDOWS}  # a quick check of the script itself
K=../shared/data/kitti
mkdir -p "$RUNS"
{ nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | grep . || echo "$DEVICE"; } > "$RUNS/device.txt"
# The recipe's rotation switches as trained, for the results page.
grep -E '^  (rotation_fit|translation_frame):' training/configs/small/posttrain.yaml | sed 's/#.*//; s/^ *//' | paste -sd ';' | sed 's/;/; /g' > "$RUNS/recipe.txt"

train() {  # NAME ARGS...
  local name=$1; shift
  $LAPOSE posttrain --config training/configs/small/posttrain.yaml --resume --no-progress \
    --max-steps "$STEPS" --out "$RUNS/$name" "$@" > "$RUNS/$name.log" 2>&1 \
    || { echo "training $name failed; see $RUNS/$name.log" >&2; return 1; }
}
measure() {  # VERB RUN SEQ FPS
  # shellcheck disable=SC2086 - WINDOWS is empty or two words
  $LAPOSE "$1" --data "$K/$3" --fps "$4" --checkpoint "$RUNS/$2" --device "$DEVICE" $WINDOWS \
    --json "$RUNS/$2.$3.$4fps.$1.json" > "$RUNS/$2.$3.$4fps.$1.txt" 2>&1 \
    || { echo "$1 of $2 on $3 at $4 fps failed; see $RUNS/$2.$3.$4fps.$1.txt" >&2; return 1; }
}
all() {  # wait for the background jobs, failing if any failed
  local pid ok=0
  for pid in "$@"; do wait "$pid" || ok=1; done
  return $ok
}

train val --set "data.posttrain_sequences=[$K/00_head, $K/06_head]" & a=$!
train posttrain & b=$!
all $a $b

measure diagnose val 07_head 2 & p1=$!
measure eval val 07_head 4 & p2=$!
measure diagnose posttrain 03_head 2 & p3=$!
measure eval posttrain 03_head 1 & p4=$!
measure eval posttrain 03_head 1.3 & p5=$!
measure eval posttrain 03_head 4 & p6=$!
measure eval posttrain 01_head 4 & p7=$!
all $p1 $p2 $p3 $p4 $p5 $p6 $p7
grep -h "clips/s" "$RUNS"/val.log "$RUNS"/posttrain.log | tail -n 2
echo "docs/results.md: python training/make_results.py --gpu-only --gpu-runs $RUNS"
