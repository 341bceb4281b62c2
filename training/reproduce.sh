#!/usr/bin/env bash
# Reproduces docs/results.md end to end: VQ-VAE and latent action pretraining on unlabeled frames,
# pose post-training with the labels of 07_head and 06_head only, the ablations, and the evaluation
# on 03_head (1, 1.3, 2, 4 fps) and 01_head (4 fps). Every stage resumes where a killed run stopped
# and a finished stage is not trained again, so the script can simply be started again.
#
#   bash training/reproduce.sh            # tiny preset, CPU (RUNS=runs/tiny)
#   PRESET=paper bash training/reproduce.sh   # on a GPU machine; wrap lapose in torchrun for many
set -euo pipefail
cd "$(dirname "$0")/.."
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
PRESET=${PRESET:-tiny}
RUNS=${RUNS:-runs/$PRESET}
CONFIGS=training/configs/$PRESET
LAPOSE=${LAPOSE:-.venv/bin/lapose}
POST_STEPS=${POST_STEPS:-}  # optional override of post-training steps for every variant
post_args=(--config "$CONFIGS/posttrain.yaml" --resume --no-progress ${POST_STEPS:+--max-steps "$POST_STEPS"})

$LAPOSE train-vqvae --config "$CONFIGS/vqvae.yaml" --out "$RUNS/vqvae" --resume --no-progress
$LAPOSE pretrain --config "$CONFIGS/pretrain.yaml" --out "$RUNS/pretrain" --vqvae "$RUNS/vqvae" \
  --resume --no-progress

# Longer pretraining (an ablation): the finished run, continued to LONG_STEPS. Resuming with a larger
# max_steps stretches the cosine schedule, so the learning rate rises again (a warm restart) and the
# optimiser state carries over. The copy is renamed into place only when complete.
LONG_STEPS=${LONG_STEPS:-4000}
if [ ! -d "$RUNS/pretrain_long" ]; then
  rm -rf "$RUNS/pretrain_long.partial"
  cp -r "$RUNS/pretrain" "$RUNS/pretrain_long.partial" && mv "$RUNS/pretrain_long.partial" "$RUNS/pretrain_long"
fi
$LAPOSE pretrain --config "$CONFIGS/pretrain.yaml" --out "$RUNS/pretrain_long" --vqvae "$RUNS/vqvae" \
  --resume --no-progress --max-steps "$LONG_STEPS"

# Post-training variants (the paper's default, then the ablations), two at a time with one thread
# each: for a model this small that uses two cores better than one run with two threads.
# PARALLEL=1 runs them one after the other.
PARALLEL=${PARALLEL:-2}
posttrain() {  # NAME ARGS...: one variant, its log in RUNS/NAME.log
  local name=$1; shift
  OMP_NUM_THREADS=$(( PARALLEL > 1 ? 1 : $(nproc) )) \
    $LAPOSE posttrain "${post_args[@]}" --out "$RUNS/$name" "$@" > "$RUNS/$name.log" 2>&1 \
    || { echo "post-training $name failed; see $RUNS/$name.log" >&2; return 1; }
}
variants=(
  "post_frozen --init-from $RUNS/pretrain --freeze"
  "post_finetune --init-from $RUNS/pretrain --finetune"
  "post_bottleneck --init-from $RUNS/pretrain --freeze --set model.pose_head_input=bottleneck"
  "post_scratch --init-from scratch --finetune"
  "post_frozen_noflip --init-from $RUNS/pretrain --freeze --set data.hflip_prob=0.0"
  "post_frozen_long --init-from $RUNS/pretrain_long --freeze"
  "post_bottleneck_long --init-from $RUNS/pretrain_long --freeze --set model.pose_head_input=bottleneck"
)
pids=()
for v in "${variants[@]}"; do
  # shellcheck disable=SC2086 - each entry is a name followed by its arguments
  posttrain $v &
  pids+=($!)
  if (( ${#pids[@]} >= PARALLEL )); then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
for pid in "${pids[@]}"; do wait "$pid"; done

.venv/bin/python training/make_results.py --runs "$RUNS" --out docs/results.md
