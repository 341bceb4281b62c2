#!/usr/bin/env bash
# Reproduces docs/results.md: the VQ-VAE and latent action pretraining on unlabeled frames, pose
# post-training with the labels of 00_head, 07_head and 06_head, the ablations of the CPU-scale
# recipe (trained on 00_head + 06_head and chosen on 07_head, never on a test sequence), and the
# evaluation on 03_head (1, 1.3, 2, 4 fps) and 01_head (4 fps). Every stage resumes where a killed run
# stopped and a finished stage is not trained again, so the script can simply be started again.
#
#   bash training/reproduce.sh                 # tiny preset, CPU (RUNS=runs/tiny)
#   PRESET=paper bash training/reproduce.sh    # on a GPU machine; wrap lapose in torchrun for many
#   ABLATIONS=0 bash training/reproduce.sh     # the shipped model and its evaluation only
#
# The paper-recipe rows of the previous revision (no motion features, quaternion L1, 211 labels) are
# in docs/results_paper_recipe.md; `git checkout e7d50aa && bash training/reproduce.sh` rebuilds them.
set -euo pipefail
cd "$(dirname "$0")/.."
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
PRESET=${PRESET:-tiny}
RUNS=${RUNS:-runs/$PRESET}
CONFIGS=training/configs/$PRESET
LAPOSE=${LAPOSE:-.venv/bin/lapose}
ABLATIONS=${ABLATIONS:-1}
POST_STEPS=${POST_STEPS:-}  # optional override of the shipped model's post-training steps
VAL_STEPS=${VAL_STEPS:-500}  # post-training steps of every validation variant
post_args=(--config "$CONFIGS/posttrain.yaml" --resume --no-progress)

pretrain() {  # CONFIG NAME: the VQ-VAE (once), then latent action pretraining
  $LAPOSE train-vqvae --config "$CONFIGS/vqvae.yaml" --out "$RUNS/vqvae" --resume --no-progress
  $LAPOSE pretrain --config "$CONFIGS/$1" --out "$RUNS/$2" --vqvae "$RUNS/vqvae" --resume --no-progress
}

# The shipped model on all three labelled sequences. The paper preset post-trains a pretrained
# model (its posttrain.yaml names it); the tiny recipe's default starts from scratch (the ablation
# below measures pretraining against none).
if ! grep -q "init_from: scratch" "$CONFIGS/posttrain.yaml"; then pretrain pretrain.yaml pretrain; fi
$LAPOSE posttrain "${post_args[@]}" ${POST_STEPS:+--max-steps "$POST_STEPS"} --out "$RUNS/posttrain"

if [ "$ABLATIONS" = 1 ] && [ -f "$CONFIGS/pretrain_motion.yaml" ]; then
  pretrain pretrain_motion.yaml pretrain_motion
  # Each ablation reverts one switch of the recipe; all train on 00_head + 06_head and are compared
  # on 07_head. They were run against the recipe before its newest switch (scale_output speed), so
  # every variant sets scale_output=step and val_speed measures that switch. Two at a time with one
  # thread each: for a model this small that uses two cores better than one run with two threads.
  # PARALLEL=1 runs them one after the other.
  PARALLEL=${PARALLEL:-2}
  # Self-labels of the unlabeled clips (a clip already done is skipped).
  .venv/bin/python training/self_label.py --sources "../shared/data/unlabeled/*.mp4" --out "$RUNS/self_labels"
  # The variants also keep the switches the recipe took after them (appearance tokens on, windows
  # played backwards 0.2, correlations not centred, static windows 0.05, no flow, no rotation read
  # from it, and none of the head_focus refit's inference switches, which need that fit); the rows
  # that measure those switches set them (test/test_reproduce_configs.py checks every row's config).
  VAL=(--set "data.posttrain_sequences=[../shared/data/kitti/00_head, ../shared/data/kitti/06_head]"
       --set model.scale_output=step --set model.appearance_tokens=true --set data.reverse_prob=0.2
       --set model.motion_centred=false --set data.static_prob=0.05 --set model.motion_flow=false
       --set model.mirror_average=false --set model.travel_height=head --set model.refit_roll=false
       --set model.refit_matches=all --set model.wide_shift=false --set model.fine_flow=false
       --set model.step_lengths=head --set model.rotation_from_flow=false --set model.rotation_fit=median
       --set model.translation_frame=camera)
  posttrain() {  # NAME ARGS...: one variant, its log in RUNS/NAME.log
    local name=$1; shift
    OMP_NUM_THREADS=$(( PARALLEL > 1 ? 1 : $(nproc) )) \
      $LAPOSE posttrain "${post_args[@]}" --max-steps "$VAL_STEPS" --out "$RUNS/$name" "${VAL[@]}" "$@" \
      > "$RUNS/$name.log" 2>&1 \
      || { echo "post-training $name failed; see $RUNS/$name.log" >&2; return 1; }
  }
  variants=(
    "val_recipe"
    "val_no_motion --set model.motion_features=none"
    "val_quaternion_l1 --set train.rotation_loss=quaternion_l1 --set train.w_translation=1.0"
    "val_step_embedding --set model.pose_step_embedding=true"
    "val_no_rotation_aug --set data.rotation_aug_prob=0.0"
    "val_no_reverse_static --set data.reverse_prob=0.0 --set data.static_prob=0.0"
    "val_pretrained --init-from $RUNS/pretrain_motion --finetune"
    "val_scale_w5 --set train.w_scale=5.0 --set data.static_prob=0.1"
    "val_speed --set model.scale_output=speed"
    # Can a standing camera be learned without costing motion? (the static test, issue 8)
    "val_floor0 --set model.scale_output=speed --set model.translation_floor=0"
    "val_static --set model.scale_output=speed --set data.static_prob=0.15"
    "val_floor0_static --set model.scale_output=speed --set model.translation_floor=0 --set data.static_prob=0.15"
    # The later variants below are compared with val_speed trained again beside them
    "val_speed_rerun --set model.scale_output=speed"
    # Speed read from the motion, not the scene: half the windows' timestamps stretched 0.5-2x
    "val_time_scale --set model.scale_output=speed --set data.time_scale_prob=0.5"
    "val_time_scale_p25 --set model.scale_output=speed --set data.time_scale_prob=0.25"
    "val_time_scale_m14 --set model.scale_output=speed --set data.time_scale_prob=0.5 --set data.time_scale_max=1.4"
    # Many more scenes: unlabeled clips with the classical pipeline's motion (no metric scale)
    "val_self_labels --set model.scale_output=speed --set data.posttrain_sequences=[../shared/data/kitti/00_head,../shared/data/kitti/06_head,$RUNS/self_labels/sequences/*]"
    "val_self_labels_p25 --set model.scale_output=speed --set data.posttrain_sequences=[../shared/data/kitti/00_head,../shared/data/kitti/06_head,$RUNS/self_labels/sequences/*] --set data.self_label_share=0.25"
    # Turns read at their size on new scenes? More and larger exact rotation-homography windows
    "val_rotation_aug_p1 --set model.scale_output=speed --set data.rotation_aug_prob=1.0"
    "val_rotation_aug_10 --set model.scale_output=speed --set data.rotation_aug_max_deg=10.0"
    # How far apart two runs of one recipe land (another seed), and the model without appearance
    "val_speed_seed1 --set model.scale_output=speed --set train.seed=1"
    "val_motion_only --set model.scale_output=speed --set model.appearance_tokens=false"
    "val_motion_only_seed1 --set model.scale_output=speed --set model.appearance_tokens=false --set train.seed=1"
    "val_motion_only_static --set model.scale_output=speed --set model.appearance_tokens=false --set data.static_prob=0.15"
    # Windows played backwards make the model unsure whether it drives forwards (backward steps)
    "val_speed_no_reverse_seed1 --set model.scale_output=speed --set train.seed=1 --set data.reverse_prob=0.0"
    "val_motion_only_no_reverse_seed1 --set model.scale_output=speed --set model.appearance_tokens=false --set train.seed=1 --set data.reverse_prob=0.0"
    # The recipe as shipped (no appearance tokens, no reversed windows): standing windows again, and
    # correlations centred on the pair's global shift (large turns at their size?), two seeds
    "val_motion_only_no_reverse_static_seed1 --set model.scale_output=speed --set model.appearance_tokens=false --set train.seed=1 --set data.reverse_prob=0.0 --set data.static_prob=0.15"
    "val_motion_only_no_reverse --set model.scale_output=speed --set model.appearance_tokens=false --set data.reverse_prob=0.0"
    "val_centred_seed1 --set model.scale_output=speed --set model.appearance_tokens=false --set train.seed=1 --set data.reverse_prob=0.0 --set model.motion_centred=true"
    "val_centred --set model.scale_output=speed --set model.appearance_tokens=false --set data.reverse_prob=0.0 --set model.motion_centred=true"
    # Standing windows 0.15 once more, now with centred correlations (two seeds)
    "val_centred_static --set model.scale_output=speed --set model.appearance_tokens=false --set data.reverse_prob=0.0 --set model.motion_centred=true --set data.static_prob=0.15"
    "val_centred_static_seed1 --set model.scale_output=speed --set model.appearance_tokens=false --set data.reverse_prob=0.0 --set model.motion_centred=true --set data.static_prob=0.15 --set train.seed=1"
    # A third seed of that recipe; rotation warps up to 10 degrees on it (three seeds); each
    # level's flow beside its correlations (motion_flow, three seeds; now in the recipe)
    "val_centred_static_seed2 --set model.scale_output=speed --set model.appearance_tokens=false --set data.reverse_prob=0.0 --set model.motion_centred=true --set data.static_prob=0.15 --set train.seed=2"
    "val_centred_static_rot10 --set model.scale_output=speed --set model.appearance_tokens=false --set data.reverse_prob=0.0 --set model.motion_centred=true --set data.static_prob=0.15 --set data.rotation_aug_max_deg=10"
    "val_centred_static_rot10_seed1 --set model.scale_output=speed --set model.appearance_tokens=false --set data.reverse_prob=0.0 --set model.motion_centred=true --set data.static_prob=0.15 --set data.rotation_aug_max_deg=10 --set train.seed=1"
    "val_centred_static_rot10_seed2 --set model.scale_output=speed --set model.appearance_tokens=false --set data.reverse_prob=0.0 --set model.motion_centred=true --set data.static_prob=0.15 --set data.rotation_aug_max_deg=10 --set train.seed=2"
    "val_flow --set model.scale_output=speed --set model.appearance_tokens=false --set data.reverse_prob=0.0 --set model.motion_centred=true --set data.static_prob=0.15 --set model.motion_flow=true"
    "val_flow_seed1 --set model.scale_output=speed --set model.appearance_tokens=false --set data.reverse_prob=0.0 --set model.motion_centred=true --set data.static_prob=0.15 --set model.motion_flow=true --set train.seed=1"
    "val_flow_seed2 --set model.scale_output=speed --set model.appearance_tokens=false --set data.reverse_prob=0.0 --set model.motion_centred=true --set data.static_prob=0.15 --set model.motion_flow=true --set train.seed=2"
    # The flow's rotation with a learned residual (rotation_from_flow), run as shipped (mirror averaged)
    "val_rotflow --set model.scale_output=speed --set model.appearance_tokens=false --set data.reverse_prob=0.0 --set model.motion_centred=true --set data.static_prob=0.15 --set model.motion_flow=true --set model.rotation_from_flow=true --set model.mirror_average=true"
    "val_rotflow_seed1 --set model.scale_output=speed --set model.appearance_tokens=false --set data.reverse_prob=0.0 --set model.motion_centred=true --set data.static_prob=0.15 --set model.motion_flow=true --set model.rotation_from_flow=true --set model.mirror_average=true --set train.seed=1"
    "val_rotflow_seed2 --set model.scale_output=speed --set model.appearance_tokens=false --set data.reverse_prob=0.0 --set model.motion_centred=true --set data.static_prob=0.15 --set model.motion_flow=true --set model.rotation_from_flow=true --set model.mirror_average=true --set train.seed=2"
    # The rotation fitted together with the flow's focus of expansion (rotation_fit focus), three seeds
    "val_rotfocus --set model.scale_output=speed --set model.appearance_tokens=false --set data.reverse_prob=0.0 --set model.motion_centred=true --set data.static_prob=0.15 --set model.motion_flow=true --set model.rotation_from_flow=true --set model.mirror_average=true --set model.rotation_fit=focus"
    "val_rotfocus_seed1 --set model.scale_output=speed --set model.appearance_tokens=false --set data.reverse_prob=0.0 --set model.motion_centred=true --set data.static_prob=0.15 --set model.motion_flow=true --set model.rotation_from_flow=true --set model.mirror_average=true --set model.rotation_fit=focus --set train.seed=1"
    "val_rotfocus_seed2 --set model.scale_output=speed --set model.appearance_tokens=false --set data.reverse_prob=0.0 --set model.motion_centred=true --set data.static_prob=0.15 --set model.motion_flow=true --set model.rotation_from_flow=true --set model.mirror_average=true --set model.rotation_fit=focus --set train.seed=2"
    # Where each step goes: a loss on its direction in degrees (two seeds); the step predicted on
    # the chord of the flow's turn (translation_frame half_turn, two seeds)
    "val_direction --set model.scale_output=speed --set model.appearance_tokens=false --set data.reverse_prob=0.0 --set model.motion_centred=true --set data.static_prob=0.15 --set model.motion_flow=true --set model.rotation_from_flow=true --set model.mirror_average=true --set model.rotation_fit=focus --set train.w_direction=1.0"
    "val_direction_seed1 --set model.scale_output=speed --set model.appearance_tokens=false --set data.reverse_prob=0.0 --set model.motion_centred=true --set data.static_prob=0.15 --set model.motion_flow=true --set model.rotation_from_flow=true --set model.mirror_average=true --set model.rotation_fit=focus --set train.w_direction=1.0 --set train.seed=1"
    "val_halfturn --set model.scale_output=speed --set model.appearance_tokens=false --set data.reverse_prob=0.0 --set model.motion_centred=true --set data.static_prob=0.15 --set model.motion_flow=true --set model.rotation_from_flow=true --set model.mirror_average=true --set model.rotation_fit=focus --set model.translation_frame=half_turn"
    "val_halfturn_seed1 --set model.scale_output=speed --set model.appearance_tokens=false --set data.reverse_prob=0.0 --set model.motion_centred=true --set data.static_prob=0.15 --set model.motion_flow=true --set model.rotation_from_flow=true --set model.mirror_average=true --set model.rotation_fit=focus --set model.translation_frame=half_turn --set train.seed=1"
    "val_halfturn_seed2 --set model.scale_output=speed --set model.appearance_tokens=false --set data.reverse_prob=0.0 --set model.motion_centred=true --set data.static_prob=0.15 --set model.motion_flow=true --set model.rotation_from_flow=true --set model.mirror_average=true --set model.rotation_fit=focus --set model.translation_frame=half_turn --set train.seed=2"
    # The focus fit also reading the roll (rotation_fit focus_roll), without and with the half-turn frame
    "val_rotroll --set model.scale_output=speed --set model.appearance_tokens=false --set data.reverse_prob=0.0 --set model.motion_centred=true --set data.static_prob=0.15 --set model.motion_flow=true --set model.rotation_from_flow=true --set model.mirror_average=true --set model.rotation_fit=focus --set model.rotation_fit=focus_roll"
    "val_rotroll_halfturn --set model.scale_output=speed --set model.appearance_tokens=false --set data.reverse_prob=0.0 --set model.motion_centred=true --set data.static_prob=0.15 --set model.motion_flow=true --set model.rotation_from_flow=true --set model.mirror_average=true --set model.rotation_fit=focus --set model.rotation_fit=focus_roll --set model.translation_frame=half_turn"
  )
  pids=()
  for v in "${variants[@]}"; do
    # shellcheck disable=SC2086 - each entry is a name followed by its arguments
    posttrain $v &
    pids+=($!)
    if (( ${#pids[@]} >= PARALLEL )); then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  # How long to train: val_speed resumed from its last checkpoint to twice the steps.
  if [ ! -d "$RUNS/val_speed_1000" ]; then cp -r "$RUNS/val_speed" "$RUNS/val_speed_1000"; fi
  posttrain val_speed_1000 --set model.scale_output=speed --max-steps $(( 2 * VAL_STEPS ))
  # An inference-only switch run on a trained variant's weights: run_with SRC DST KEY JSON_VALUE.
  run_with() {
    local src="$RUNS/$1/checkpoints/step_$VAL_STEPS" dst="$RUNS/$2/checkpoints/step_$VAL_STEPS"
    mkdir -p "$dst" && cp "$src"/model.safetensors "$dst"/
    echo "step_$VAL_STEPS" > "$RUNS/$2/checkpoints/latest"
    .venv/bin/python -c 'import json, sys; c = json.load(open(sys.argv[1])); c["model"][sys.argv[3]] = json.loads(sys.argv[4]); open(sys.argv[2], "w").write(json.dumps(c, indent=2, sort_keys=True) + "\n")' "$src/config.json" "$dst/config.json" "$3" "$4"
  }
  for seed in "" _seed1 _seed2; do
    run_with "val_flow$seed" "val_flow_mirror$seed" mirror_average true  # mirror averaging
    # rotation_fit head_focus trains as focus: the half-turn runs' weights, run with its refit.
    run_with "val_halfturn$seed" "val_halfturn_refit$seed" rotation_fit '"head_focus"'
    # ... and that refit without the camera's intrinsics (predicted field of view, image centre).
    run_with "val_halfturn_refit$seed" "val_halfturn_refit_uncalibrated$seed" use_intrinsics false
    # ... and that refit with each window's height of travel read from the flow.
    run_with "val_halfturn_refit$seed" "val_halfturn_refit_height$seed" travel_height '"flow"'
    # ... and that with each pair's roll refitted too.
    run_with "val_halfturn_refit_height$seed" "val_halfturn_refit_roll$seed" refit_roll true
    # ... and that reading only the cells whose match is mutual.
    run_with "val_halfturn_refit_roll$seed" "val_halfturn_refit_mutual$seed" refit_matches '"mutual"'
    # ... and that with the global shift also searched twice as wide (the low-rate rows).
    run_with "val_halfturn_refit_mutual$seed" "val_halfturn_refit_wide$seed" wide_shift true
    # ... and that with the refit reading the flow refined below a pixel.
    run_with "val_halfturn_refit_wide$seed" "val_halfturn_refit_fine$seed" fine_flow true
    # ... and that with each step's length against the last triangulated from that flow.
    run_with "val_halfturn_refit_fine$seed" "val_halfturn_refit_steps$seed" step_lengths '"flow"'
  done
  # Again for the recipe with centred correlations and standing windows 0.15.
  if [ ! -d "$RUNS/val_centred_static_1000" ]; then cp -r "$RUNS/val_centred_static" "$RUNS/val_centred_static_1000"; fi
  posttrain val_centred_static_1000 --set model.scale_output=speed --set model.appearance_tokens=false \
    --set data.reverse_prob=0.0 --set model.motion_centred=true --set data.static_prob=0.15 --max-steps $(( 2 * VAL_STEPS ))
fi

.venv/bin/python training/make_results.py --runs "$RUNS" --out docs/results.md
