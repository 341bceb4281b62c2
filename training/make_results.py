"""Evaluate the trained variants against the classical baseline and write docs/results.md.

Run by training/reproduce.sh after training. Every number in the written file comes from this run;
the JSON of every evaluation is written next to it (docs/results/*.json) and so are the pictures.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from lapose_core import KITTI_CAMERA_HEIGHT_M, LABELLED_KITTI_PITCH_DEG
from lapose_core.eval.diagnose import diagnose_sequence
from lapose_core.eval.evaluate import evaluate_sequence
from lapose_core.eval.plots import plot_auc_distribution, plot_window_trajectories
from lapose_core.inference import PoseEstimator
from lapose_core.road_plane import RoadPlaneConfig
from lapose_core.train.trainer import last_metrics

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "kitti"
TIGHT_TILT_PRIOR_DEG = 3.0  # the road fit's tilt prior before the loose default: its ablation row
SHIPPED = "posttrain"  # the recipe on all three labelled sequences: the bundled default
ABLATIONS = {  # run folder -> description; trained on 00_head + 06_head, compared on 07_head
    "val_recipe": "the recipe before its newest switch (scale token predicts the mean step)",
    "val_speed": "the recipe then: the scale token predicts the mean speed",
    "val_speed_1000": "val_speed resumed to 1000 steps (schedule stretched at step 500): how long to train",
    "val_no_motion": "without motion features (the paper's inverse-dynamics input)",
    "val_quaternion_l1": "the paper's L1 on quaternion components",
    "val_step_embedding": "with the pose head's per-step position embedding",
    "val_no_rotation_aug": "without rotation-homography windows",
    "val_no_reverse_static": "without reversed and static windows",
    "val_pretrained": "post-trained on the recipe's latent action pretraining (fine-tuned)",
    "val_scale_w5": "log-scale loss weight 5 (recipe 0.5) and static windows 0.1 (recipe 0.05)",
    "val_floor0": "val_speed with translation_floor 0 (translation normalised by the window's own s)",
    "val_static": "val_speed with static windows 0.15 (0.05 in the recipe then)",
    "val_floor0_static": "val_speed with translation_floor 0 and static windows 0.15",
    # Trained later, two at a time with one thread each, against val_speed trained again beside them.
    "val_speed_rerun": "val_speed trained again beside the variants below (not bit-identical to val_speed)",
    "val_time_scale": "val_speed_rerun with time-scaled windows 0.5 (timestamps stretched 0.5-2x: speed from motion)",
    "val_time_scale_p25": "val_speed_rerun with time-scaled windows 0.25 (0.5-2x)",
    "val_time_scale_m14": "val_speed_rerun with time-scaled windows 0.5 (0.71-1.4x)",
    "val_self_labels": "val_speed_rerun with the self-labelled unlabeled clips (half the windows; motion up to scale)",
    "val_self_labels_p25": "val_speed_rerun with the self-labelled unlabeled clips (a quarter of the windows)",
    "val_rotation_aug_p1": "val_speed_rerun with rotation-homography windows 1.0 (recipe 0.5)",
    "val_rotation_aug_10": "val_speed_rerun with rotation-homography windows up to 10 deg of yaw (recipe 5)",
    # The same recipe from another seed: how far apart two runs of one recipe land on 07_head.
    "val_speed_seed1": "val_speed_rerun with seed 1 (the recipe's run-to-run spread)",
    "val_motion_only": "val_speed_rerun without appearance tokens (motion tokens at their positions only)",
    "val_motion_only_seed1": "val_motion_only with seed 1",
    "val_motion_only_static": "val_motion_only with static windows 0.15 (recipe 0.05)",
    "val_speed_no_reverse_seed1": "val_speed_seed1 without reversed windows",
    "val_motion_only_no_reverse_seed1": "val_motion_only_seed1 without reversed windows",
    # The recipe as shipped (no appearance tokens, no reversed windows), seed 0 and seed 1.
    "val_motion_only_no_reverse": "val_motion_only without reversed windows (the shipped recipe's switches)",
    "val_motion_only_no_reverse_static_seed1": "val_motion_only_no_reverse_seed1 with static windows 0.15 (recipe 0.05)",
    "val_centred": "val_motion_only_no_reverse with correlations centred on the pair's global shift (motion_centred)",
    "val_centred_seed1": "val_motion_only_no_reverse_seed1 with correlations centred on the pair's global shift",
    "val_centred_static": "val_centred with static windows 0.15 instead of 0.05 (shipped before the flow)",
    "val_centred_static_seed1": "val_centred_seed1 with static windows 0.15 instead of 0.05",
    "val_centred_static_seed2": "val_centred_static with seed 2",
    "val_centred_static_1000": "val_centred_static resumed to 1000 steps (schedule stretched at step 500)",
    "val_centred_static_rot10": "val_centred_static with rotation-homography windows up to 10 deg (recipe 5)",
    "val_centred_static_rot10_seed1": "val_centred_static_seed1 with rotation windows up to 10 deg",
    "val_centred_static_rot10_seed2": "val_centred_static_seed2 with rotation windows up to 10 deg",
    "val_flow": "val_centred_static with each level's flow beside its correlations (motion_flow)",
    "val_flow_seed1": "val_centred_static_seed1 with each level's flow (motion_flow)",
    "val_flow_seed2": "val_centred_static_seed2 with each level's flow (motion_flow)",
    "val_flow_mirror": "val_flow's weights run with mirror averaging (model.mirror_average; shipped)",
    "val_flow_mirror_seed1": "val_flow_seed1's weights run with mirror averaging",
    "val_flow_mirror_seed2": "val_flow_seed2's weights run with mirror averaging",
    "val_rotflow": "val_flow_mirror with each step's rotation read from the flow, the head's as a residual (rotation_from_flow)",
    "val_rotflow_seed1": "val_flow_mirror_seed1 with the flow's rotation and a learned residual (rotation_from_flow)",
    "val_rotflow_seed2": "val_flow_mirror_seed2 with the flow's rotation and a learned residual (rotation_from_flow; shipped before the focus fit)",
    "val_rotfocus": "val_rotflow with the rotation fitted with the flow's focus of expansion (rotation_fit focus)",
    "val_rotfocus_seed1": "val_rotflow_seed1 with the rotation fitted with the focus of expansion (rotation_fit focus)",
    "val_rotfocus_seed2": "val_rotflow_seed2 with the rotation fitted with the focus of expansion (rotation_fit focus)",
    "val_direction": "val_rotfocus with a loss on each step's direction in degrees (train.w_direction 1)",
    "val_direction_seed1": "val_rotfocus_seed1 with a loss on each step's direction in degrees (train.w_direction 1)",
    "val_halfturn": "val_rotfocus with each step predicted on the chord of the flow's turn (translation_frame half_turn)",
    "val_halfturn_seed1": "val_rotfocus_seed1 with each step predicted on the chord of the flow's turn (translation_frame half_turn)",
    "val_rotroll": "val_rotfocus with the roll read by the focus fit too (rotation_fit focus_roll)",
    "val_rotroll_halfturn": "val_halfturn with the roll read by the focus fit too (rotation_fit focus_roll)",
    "val_halfturn_seed2": "val_rotfocus_seed2 with each step predicted on the chord of the flow's turn (translation_frame half_turn)",
    "val_halfturn_refit": "val_halfturn run with pitch and yaw refitted about the head's direction of travel (rotation_fit head_focus)",
    "val_halfturn_refit_seed1": "val_halfturn_seed1 run with the refit about the head's direction (rotation_fit head_focus)",
    "val_halfturn_refit_seed2": "val_halfturn_seed2 run with the refit about the head's direction (rotation_fit head_focus)",
    "val_halfturn_refit_uncalibrated": "val_halfturn_refit without the camera's intrinsics: the predicted field of view, the image centre for the principal point (use_intrinsics false)",
    "val_halfturn_refit_uncalibrated_seed1": "val_halfturn_refit_seed1 without the camera's intrinsics (use_intrinsics false)",
    "val_halfturn_refit_uncalibrated_seed2": "val_halfturn_refit_seed2 without the camera's intrinsics (use_intrinsics false)",
    "val_halfturn_refit_height": "val_halfturn_refit with each window's height of travel read from the flow, not the head's (travel_height flow)",
    "val_halfturn_refit_height_seed1": "val_halfturn_refit_seed1 with the height of travel from the flow (travel_height flow)",
    "val_halfturn_refit_height_seed2": "val_halfturn_refit_seed2 with the height of travel from the flow (travel_height flow)",
    "val_halfturn_refit_roll": "val_halfturn_refit_height with each pair's roll refitted too (refit_roll true)",
    "val_halfturn_refit_roll_seed1": "val_halfturn_refit_height_seed1 with the roll refitted too (refit_roll true)",
    "val_halfturn_refit_roll_seed2": "val_halfturn_refit_height_seed2 with the roll refitted too (refit_roll true)",
    "val_halfturn_refit_mutual": "val_halfturn_refit_roll reading only the cells whose match is mutual (refit_matches mutual)",
    "val_halfturn_refit_mutual_seed1": "val_halfturn_refit_roll_seed1 reading only mutual matches (refit_matches mutual)",
    "val_halfturn_refit_mutual_seed2": "val_halfturn_refit_roll_seed2 reading only mutual matches (refit_matches mutual)",
    "val_halfturn_refit_wide": "val_halfturn_refit_mutual with the global shift also searched twice as wide (wide_shift true)",
    "val_halfturn_refit_wide_seed1": "val_halfturn_refit_mutual_seed1 with the wider global search (wide_shift true)",
    "val_halfturn_refit_wide_seed2": "val_halfturn_refit_mutual_seed2 with the wider global search (wide_shift true)",
    "val_halfturn_refit_fine": "val_halfturn_refit_wide with the refit reading each cell's flow refined below a pixel (fine_flow true)",
    "val_halfturn_refit_fine_seed1": "val_halfturn_refit_wide_seed1 with the refit reading the refined flow (fine_flow true)",
    "val_halfturn_refit_fine_seed2": "val_halfturn_refit_wide_seed2 with the refit reading the refined flow (fine_flow true)",
    "val_halfturn_refit_steps": "val_halfturn_refit_fine with each step's length against the last triangulated from the flow (step_lengths flow; shipped)",
    "val_halfturn_refit_steps_seed1": "val_halfturn_refit_fine_seed1 with the step lengths triangulated from the flow (step_lengths flow)",
    "val_halfturn_refit_steps_seed2": "val_halfturn_refit_fine_seed2 with the step lengths triangulated from the flow (step_lengths flow)",
}
# The newest inference switches at the other frame rates, on the validation drive: each seed's run
# folders in the order they add a switch, and the rates each is measured at (wide_shift acts at the
# low rates only).
OTHER_RATE_RUNS = tuple(((f"val_halfturn_refit_mutual{seed}", (1.0, 1.3)),
                         (f"val_halfturn_refit_wide{seed}", (1.0, 1.3, 4.0)),
                         (f"val_halfturn_refit_fine{seed}", (1.0, 1.3, 4.0)),
                         (f"val_halfturn_refit_steps{seed}", (1.0, 1.3, 4.0)))
                        for seed in ("", "_seed1", "_seed2"))
OTHER_RATE_FPS = tuple(sorted({fps for seed in OTHER_RATE_RUNS for _, rates in seed for fps in rates}))
# Runs of the one recipe that differ only in seed or thread timing: their spread is the noise of a
# single ablation run on the validation windows.
RECIPE_RERUNS = ("val_speed", "val_speed_rerun", "val_speed_seed1")
VALIDATION = "07_head"
TABLE3_FPS = (1.0, 1.3, 2.0, 4.0)
HYBRID_START, HYBRID_END = "<!-- hybrid section: start -->", "<!-- hybrid section: end -->"
GPU_START, GPU_END = "<!-- gpu section: start -->", "<!-- gpu section: end -->"


def fmt(v, spec=".3f"):
    return "n/a" if v is None else format(v, spec)


def relation(a: float, b: float) -> str:
    """'=' where two figures differ by summation order only (the same steps, added up in another
    order: 1e-17 apart), else '<' or '>'."""
    return "=" if abs(a - b) <= 1e-12 * max(1.0, abs(b)) else "<" if a < b else ">"


def row(name: str, r: dict) -> str:
    return (f"| {name} | {r['fps']:g} | {r['windows']} | {fmt(r['auc5'])} | {fmt(r['auc30'])} | "
            f"{fmt(r['ate_s'], '.4f')} | {fmt(r['ate_m'], '.3f')} |")


HEADER = ("| method | fps | windows | AUC@5 | AUC@30 | ATE-S | ATE-M (m) |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")


def final_losses(run: Path) -> str:
    last = last_metrics(run)
    if last is None:  # run_with in training/reproduce.sh: another run's weights, one switch changed
        return "not trained: another run's weights with an inference switch"
    keys = [k for k in ("loss", "model/recon", "model/perplexity", "model/ce", "model/code_acc",
                        "model/copy_acc", "model/rot_err_deg", "model/scale_abs_err") if k in last]
    return f"step {last.get('step')}: " + ", ".join(f"{k.split('/')[-1]} {last[k]:.4g}" for k in keys)


def code_version() -> str:
    """The commit, and any uncommitted change to tracked files outside docs/ (this script's output)."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip()
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                             ":!docs"], capture_output=True, text=True, cwd=REPO).stdout
    changed = sorted(line[3:] for line in status.splitlines() if line.strip())
    return commit + (f" with uncommitted changes to {', '.join(changed)}" if changed else "")


def hybrid_section(lapose: PoseEstimator, model_name: str, stride_s: float, assets: Path) -> list[str]:
    """Geometry-checked LA-Pose against the classical baseline, LA-Pose alone and the prior, at every
    rate on 03_head and on 01_head; the scale ablations; LA-Pose's metric scale error on its own."""
    from lapose_core.hybrid import HybridConfig, HybridEstimator

    variants = {
        "hybrid": HybridConfig(),
        "hybrid_ground": HybridConfig.for_camera(KITTI_CAMERA_HEIGHT_M),
        "hybrid_ground_pitch": HybridConfig.for_camera(KITTI_CAMERA_HEIGHT_M, LABELLED_KITTI_PITCH_DEG),
        # A road length 10 log units uncertain counts for nothing against the ratios: the chain
        # of triangulated ratios as it is, scaled to the road's lengths (a least-squares level).
        "hybrid_ground_chain": dataclasses.replace(HybridConfig.for_camera(KITTI_CAMERA_HEIGHT_M),
                                                   road_sigma=10.0),
        # The road's normal held near the assumed pitch, as before the loose prior.
        "hybrid_ground_tight": dataclasses.replace(HybridConfig.for_camera(KITTI_CAMERA_HEIGHT_M),
                                                   road_tilt_prior_deg=TIGHT_TILT_PRIOR_DEG),
        "hybrid_constant": HybridConfig(scale_source="constant"),
        "hybrid_uniform": HybridConfig(relative_lengths=False),
    }
    names = {"classical": "classical", "lapose": f"LA-Pose alone ({model_name})",
             "hybrid": "hybrid: geometry + LA-Pose scale (node default)",
             "hybrid_ground": f"hybrid, road scale (camera {KITTI_CAMERA_HEIGHT_M} m above the road, level)",
             "hybrid_ground_pitch": (f"hybrid, road scale, {LABELLED_KITTI_PITCH_DEG} deg pitch (the labelled "
                                     "heads' recordings)"),
             "hybrid_ground_chain": ("ablation: road scale, triangulated lengths as they are, scaled to the road's "
                                     "lengths (road sigma 10)"),
             "hybrid_ground_tight": (f"ablation: road scale, level, the road's tilt held within "
                                     f"{TIGHT_TILT_PRIOR_DEG:g} deg of it (a tight prior)"),
             "hybrid_constant": "ablation: geometry + constant speed (7 m/s)",
             "hybrid_uniform": "ablation: geometry + LA-Pose scale, uniform steps"}
    results: dict[tuple[str, str, float], dict] = {}

    def evaluate(seq: str, method: str, fps: float) -> dict:
        estimator = (lapose if method == "lapose" else None if method == "classical"
                     else HybridEstimator(lapose, variants[method]))
        r = evaluate_sequence(DATA / seq, method="hybrid" if method in variants else method,
                              estimator=estimator, fps=fps, stride_s=stride_s).to_dict()
        results[(seq, method, fps)] = r
        (assets / f"{seq}_{method}_{fps:g}fps.json").write_text(json.dumps(r, indent=1))
        print(f"{seq} {method} {fps:g} fps: AUC@5 {r['auc5']:.3f} ATE-S {r['ate_s']:.4f} "
              f"ATE-M {fmt(r['ate_m'])} fallbacks {r['failed_steps']}", flush=True)
        return r

    runs = [("03_head", fps) for fps in TABLE3_FPS] + [("01_head", 4.0)]
    table_methods = ("classical", "lapose", "hybrid", "hybrid_ground", "hybrid_ground_chain",
                     "hybrid_ground_pitch", "hybrid_ground_tight")
    for seq, fps in runs:
        for method in table_methods:
            evaluate(seq, method, fps)
    for method in ("hybrid_constant", "hybrid_uniform"):
        evaluate("03_head", method, 2.0)

    header = ("| data | fps | method | windows | AUC@5 | ATE-S | ATE-M (m) | fallback steps |\n"
              "| --- | --- | --- | --- | --- | --- | --- | --- |")

    def line(seq, fps, method):
        r = results[(seq, method, fps)]
        fallbacks = r["failed_steps"] if method != "lapose" else "-"
        return (f"| {seq} | {fps:g} | {names[method]} | {r['windows']} | {fmt(r['auc5'])} | "
                f"{fmt(r['ate_s'], '.4f')} | {fmt(r['ate_m'])} | {fallbacks} |")

    lines = [HYBRID_START, "## Geometry-checked LA-Pose (hybrid)", "",
             "Rotation and translation direction from feature geometry (the classical pipeline, with "
             "the sequence's intrinsics) wherever it passes its checks (inliers, parallax, agreement "
             "with LA-Pose's rotation), LA-Pose's own step where it does not (the fallback steps, "
             "counted over all windows); step lengths from triangulation, scaled to LA-Pose's "
             "metric mean step, or in the road-scale rows fitted together with the lengths the road "
             "gives (`lapose_core/step_lengths.py`): each confident pair's road band aligned between "
             f"its two frames with the camera's known height (`lapose_core/road_plane.py`). Model: {model_name}. Settings were chosen on 07_head, 06_head and "
             "00_head, never on these sequences (`lapose_core/hybrid.py`). 'fallback steps' of the "
             "classical rows are its steps without an essential matrix. The prior row is the "
             "straight-ahead prior on the same windows. The road rows take the camera as level (the "
             f"nominal mount) or {LABELLED_KITTI_PITCH_DEG} degrees down, the pitch that leaves the road's "
             "lengths unbiased on the labelled heads' recordings under a tight tilt prior (`python "
             "training/geometry_study.py road`); KITTI calibrated its rig each recording day, and "
             "01_head shares 00_head's day, 03_head has a day of its own. The road's normal is fitted "
             f"with a loose prior ({RoadPlaneConfig.tilt_prior_deg:g} degrees) about the assumed pitch, "
             f"so the pitch matters little; the tight-prior ablation ({TIGHT_TILT_PRIOR_DEG:g} degrees) "
             "is the fit before.", "", header]
    for seq, fps in runs:
        for method in table_methods:
            lines.append(line(seq, fps, method))
        p = results[(seq, "classical", fps)]["prior"]
        lines.append(f"| {seq} | {fps:g} | prior: {p['description']} | - | {fmt(p['auc5'])} | "
                     f"{fmt(p['ate_s'], '.4f')} | n/a | - |")
    lines += ["", "Ablations of the metric scale (03_head, 2 fps):", "", header]
    for method in ("hybrid", "hybrid_constant", "hybrid_uniform", "hybrid_ground",
                   "hybrid_ground_chain"):
        lines.append(line("03_head", 2.0, method))
    lines += ["", "The metric scale on its own (predicted mean step of each window against the true "
              "one): LA-Pose's, which the default hybrid uses, and the hybrid's with the road scale "
              "(the mean of its step lengths fitted to the road's and the triangulated ratios; "
              "LA-Pose's where fewer than two pairs aligned their road):", "",
              "| data | fps | windows | LA-Pose: mean predicted / true | mean abs. relative error "
              "| road: mean predicted / true | mean abs. relative error |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for seq, fps in runs:
        cells = []
        for method in ("lapose", "hybrid_ground"):
            w = results[(seq, method, fps)]["per_window"]
            ratio = np.array([x["pred_mean_step"] / x["mean_step_m"] for x in w])
            cells += [f"{ratio.mean():.3f}", f"{np.abs(ratio - 1).mean():.3f}"]
        lines.append(f"| {seq} | {fps:g} | {len(w)} | " + " | ".join(cells) + " |")
    lines += ["", "Findings (computed from the table):", ""]
    for seq, fps in runs:
        h, c = results[(seq, "hybrid", fps)], results[(seq, "classical", fps)]
        g = results[(seq, "hybrid_ground", fps)]
        lines.append(
            f"- {seq} {fps:g} fps: hybrid AUC@5 {fmt(h['auc5'])} vs classical {fmt(c['auc5'])} "
            f"({relation(h['auc5'], c['auc5'])}), ATE-S {fmt(h['ate_s'], '.4f')} vs "
            f"{fmt(c['ate_s'], '.4f')} ({relation(h['ate_s'], c['ate_s'])}), ATE-M "
            f"{fmt(h['ate_m'])} m with LA-Pose's scale, {fmt(g['ate_m'])} m with the road's "
            f"(target 1.5 m: {'met' if min(h['ate_m'], g['ate_m']) <= 1.5 else 'not met'}); with the "
            f"road's lengths fitted in, AUC@5 {fmt(g['auc5'])} and ATE-S {fmt(g['ate_s'], '.4f')}.")
    return lines + [HYBRID_END]


def gpu_section(gpu_runs: Path) -> list[str]:
    """The `small` preset trained by training/small_gpu.sh: its JSON figures and its logs' clips/s."""
    def load(name: str) -> dict | None:
        path = gpu_runs / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    device = (gpu_runs / "device.txt").read_text().strip() if (gpu_runs / "device.txt").is_file() else "GPU"
    recipe = gpu_runs / "recipe.txt"  # the rotation switches it was trained with (the recipe moves on)
    switches = recipe.read_text().strip() if recipe.is_file() else "not recorded"
    lines = [GPU_START, "## The `small` preset on one GPU (`training/small_gpu.sh`)", "",
             f"Device: {device}. The tiny recipe at the `small` preset's size "
             "(`training/configs/small/posttrain.yaml`: 128x320 input, width 256, batches of 32, bf16; "
             f"as trained: {switches}), "
             "no pretraining, the validation model (00_head + 06_head, measured on 07_head) and the "
             "final model (00/07/06, reported on the test drives) trained side by side. The prior is "
             "the straight-ahead prior on the same windows.", "",
             "| run | steps | clips/s (median, per run) | data | fps | windows | AUC@5 | ATE-S | ATE-M (m) "
             "| prior AUC@5 | yaw corr | scale ratio |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- "
             "| --- | --- | --- |"]
    for run, seqs in (("val", ("07_head",)), ("posttrain", ("03_head", "01_head"))):
        metrics = gpu_runs / run / "metrics.jsonl"
        if not metrics.is_file():
            continue
        rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
        speed = float(np.median([r["clips_per_s"] for r in rows if "clips_per_s" in r]))
        for seq in seqs:
            for fps in (1.0, 1.3, 2.0, 4.0):
                r = load(f"{run}.{seq}.{fps:g}fps.diagnose") or load(f"{run}.{seq}.{fps:g}fps.eval")
                if r is None:
                    continue
                prior = r.get("prior_auc5", (r.get("prior") or {}).get("auc5"))
                lines.append(f"| {run} | {rows[-1]['step']} | {speed:.0f} | {seq} | {fps:g} | {r['windows']} "
                             f"| {fmt(r['auc5'])} | {fmt(r['ate_s'], '.4f')} | {fmt(r.get('ate_m'), '.2f')} "
                             f"| {fmt(prior)} | {fmt(r.get('yaw_corr'))} | {fmt(r.get('scale_ratio'))} |")
    return lines + ["", "yaw corr and scale ratio come from `lapose diagnose` (2 fps rows only).", GPU_END]


def existing_section(path: Path, start: str, end: str) -> str | None:
    """The text of ``path`` from ``start`` to ``end``, both included, if it has them."""
    text = path.read_text() if path.exists() else ""
    if start not in text or end not in text.split(start, 1)[1]:
        return None
    return start + text.split(start, 1)[1].split(end, 1)[0] + end


def replace_section(path: Path, section: list[str], start: str = HYBRID_START, end: str = HYBRID_END) -> None:
    text = path.read_text() if path.exists() else "# Results\n"
    block = "\n".join(section)
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", default="runs/tiny")
    ap.add_argument("--out", default="docs/results.md")
    ap.add_argument("--stride-s", type=float, default=1.0)
    ap.add_argument("--hybrid-only", action="store_true",
                    help="only (re)write the hybrid section of --out, with --checkpoint's model")
    ap.add_argument("--checkpoint", default=None, help="--hybrid-only: model (default: the bundled one)")
    ap.add_argument("--gpu-runs", default="runs/small", help="training/small_gpu.sh's RUNS folder")
    ap.add_argument("--gpu-only", action="store_true",
                    help="only (re)write the section of --out on the small preset's GPU run (--gpu-runs)")
    args = ap.parse_args()
    runs, out = Path(args.runs), Path(args.out)
    if args.gpu_only:
        replace_section(out, gpu_section(Path(args.gpu_runs)), GPU_START, GPU_END)
        print(f"wrote the GPU section of {out}")
        return 0
    if args.hybrid_only:
        assets = out.parent / "results"
        assets.mkdir(parents=True, exist_ok=True)
        lapose = PoseEstimator.load(args.checkpoint)
        name = Path(args.checkpoint).name if args.checkpoint else "bundled default model"
        t0 = time.time()
        section = hybrid_section(lapose, name, args.stride_s, assets)
        section.insert(-1, f"\nWritten by `python training/make_results.py --hybrid-only` at commit "
                           f"{code_version()}; evaluation took {time.time() - t0:.0f} s.")
        replace_section(out, section)
        print(f"wrote the hybrid section of {out}")
        return 0
    commit = code_version()
    assets = out.parent / "results"
    assets.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    estimators = {name: PoseEstimator.load(runs / name)
                  for name in (SHIPPED, *ABLATIONS) if (runs / name).is_dir()}
    shipped_note = ""
    if SHIPPED not in estimators:
        # The shipped run folder is not kept on every machine; the bundled model is its weights.
        estimators[SHIPPED] = PoseEstimator.load(None)
        shipped_note = (f" `{runs / SHIPPED}` was not kept on this machine: the shipped model's rows "
                        "evaluate the bundled model, its weights (`lapose_core/assets/default_model`).")
        print(f"{runs / SHIPPED}: not here; evaluating the bundled model in its place")
    machine = (f"{platform.machine()} CPU, {torch.get_num_threads()} threads (the models on "
               f"{estimators[SHIPPED].cpu_threads or torch.get_num_threads()}: PoseEstimator's "
               f"cpu_threads), torch {torch.__version__}"
               + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"))
    results: dict[tuple[str, str, float], dict] = {}
    kept: dict[tuple[str, str, float], object] = {}

    def evaluate(seq: str, method: str, fps: float, variant: str | None = None):
        key = (seq, variant or method, fps)
        r = evaluate_sequence(DATA / seq, method=method, estimator=estimators.get(variant), fps=fps,
                              stride_s=args.stride_s)
        results[key] = r.to_dict()
        kept[key] = r
        (assets / f"{seq}_{variant or method}_{fps:g}fps.json").write_text(json.dumps(r.to_dict(), indent=1))
        print(f"{seq} {variant or method} {fps:g} fps: AUC@5 {r.auc5:.3f} AUC@30 {r.auc30:.3f} "
              f"ATE-S {r.ate_s:.4f} ATE-M {fmt(r.ate_m)}", flush=True)
        return r.to_dict()

    for fps in TABLE3_FPS:
        evaluate("03_head", "classical", fps)
        evaluate("03_head", "lapose", fps, SHIPPED)
    evaluate("01_head", "classical", 4.0)
    evaluate("01_head", "lapose", 4.0, SHIPPED)
    val_diagnoses = {}
    # A variant whose run folder is absent (trained on another machine, not retrained here) keeps
    # the figures its own run stored; the table marks it. LA-Pose's inference path has not changed
    # since those were written (a new switch has a default that keeps the old behaviour), except
    # the head_focus refit's, which now takes the sequence's intrinsics: its variants are re-run,
    # and the _uncalibrated ones give the refit as it was.
    stored = []
    for variant in ABLATIONS:
        files = [assets / f"{VALIDATION}_{variant}_2fps.json",
                 assets / f"{VALIDATION}_{variant}_diagnose_2fps.json"]
        if variant not in estimators and all(f.is_file() for f in files):
            results[(VALIDATION, variant, 2.0)] = json.loads(files[0].read_text())
            val_diagnoses[variant] = json.loads(files[1].read_text())
            stored.append(variant)
    for variant in estimators:
        if variant != SHIPPED:
            evaluate(VALIDATION, "lapose", 2.0, variant)
            d = diagnose_sequence(DATA / VALIDATION, "lapose", estimators[variant], fps=2.0,
                                  stride_s=args.stride_s)
            val_diagnoses[variant] = d.to_dict()
            (assets / f"{VALIDATION}_{variant}_diagnose_2fps.json").write_text(
                json.dumps(val_diagnoses[variant], indent=1))
    # The newest switches at the other rates (a variant not trained here keeps its stored figures).
    other_rate: dict[tuple[str, float], tuple[dict, dict, bool]] = {}
    for variant, rates in (run for seed in OTHER_RATE_RUNS for run in seed):
        for fps in rates:
            files = [assets / f"{VALIDATION}_{variant}_{fps:g}fps.json",
                     assets / f"{VALIDATION}_{variant}_diagnose_{fps:g}fps.json"]
            if variant in estimators:
                r = evaluate(VALIDATION, "lapose", fps, variant)
                d = diagnose_sequence(DATA / VALIDATION, "lapose", estimators[variant], fps=fps,
                                      stride_s=args.stride_s).to_dict()
                files[1].write_text(json.dumps(d, indent=1))
                other_rate[(variant, fps)] = (r, d, False)
            elif all(f.is_file() for f in files):
                other_rate[(variant, fps)] = (*(json.loads(f.read_text()) for f in files), True)
    # Does the model measure motion? Before any accuracy figure is believed (lapose diagnose).
    diagnoses = {}
    for seq in ("03_head", VALIDATION):
        d = diagnose_sequence(DATA / seq, "lapose", estimators[SHIPPED], fps=2.0, stride_s=args.stride_s)
        diagnoses[seq] = d.to_dict()
        (assets / f"{seq}_{SHIPPED}_diagnose_2fps.json").write_text(json.dumps(diagnoses[seq], indent=1))

    # Pictures of the shipped model: a window where it does about as well as it usually does, and
    # its worst one.
    lap, cla = kept[("03_head", SHIPPED, 2.0)], kept[("03_head", "classical", 2.0)]
    by_auc = sorted(range(len(lap.per_window)), key=lambda i: lap.per_window[i].auc5)
    pictures = []
    for label, i in (("median", by_auc[len(by_auc) // 2]), ("worst", by_auc[0])):
        w = lap.per_window[i]
        c = next(cw for cw in cla.per_window if cw.start == w.start)
        png = assets / f"trajectory_03_head_2fps_{label}.png"
        plot_window_trajectories(w.gt_poses, {"LA-Pose": w.pred_poses, "classical": c.pred_poses}, png,
                                 title=f"03_head, 2 fps, window at {w.timestamps[0]:.1f} s ({label} LA-Pose AUC@5)")
        pictures.append(png)
    auc_png = assets / "auc5_distribution_03_head_2fps.png"
    plot_auc_distribution({"LA-Pose": [w.auc5 for w in lap.per_window],
                           "classical": [w.auc5 for w in cla.per_window]}, auc_png)

    steps = (last_metrics(runs / SHIPPED) or {}).get("step") or estimators[SHIPPED].config.train.max_steps
    lines = [
        "# Results",
        "",
        f"Written by `bash training/reproduce.sh` (its last step: `python training/make_results.py "
        f"--runs {runs} --out {out}`) at commit {commit}, on {machine}. Evaluation took "
        f"{time.time() - t_start:.0f} s. Every figure below was measured in that run; the per-window "
        f"numbers are in `{assets.relative_to(out.parent)}/*.json`. The paper recipe's results of the "
        "previous revision are in [results_paper_recipe.md](results_paper_recipe.md)." + shipped_note,
        "",
        "Protocol: post-training with the poses of `00_head`, `07_head` and `06_head`; ablations trained "
        f"on `00_head` + `06_head` and compared on `{VALIDATION}`, so no choice is made on a test "
        "sequence; evaluation on `03_head` (50 s) and `01_head` (5 s, so 4 fps only). "
        f"Windows of 16 frames start every {args.stride_s:g} s; windows with a mean ground-truth step "
        "below 0.1 m are left out. AUC is pooled over all frame pairs of all windows, ATE averaged over "
        "windows. The classical baseline is SIFT + 5-point RANSAC + recoverPose with relative scale from "
        "triangulation (no metric scale, so no ATE-M). The straight-ahead prior (no rotation, unit "
        "forward steps) is the floor every learned result must clear; ATE-S itself cannot go below "
        "about 0.06 on `03_head` with exact rotations and directions but uniform step lengths: it "
        "mostly measures the speed profile.",
        "",
        f"Scale of this experiment: the `tiny` preset with the CPU-scale recipe (README), trained for "
        f"{steps} steps of 8 windows on a shared 2-core CPU. These tables measure this pipeline at this "
        "scale; they are not a reproduction of the paper's accuracy.",
        "",
        "## Does the model measure motion? (`lapose diagnose`, 2 fps)",
        "",
        "| sequence | windows | yaw corr | yaw gain | yaw MAE (deg) | static step ratio | reversed yaw corr | "
        "AUC@5 | prior AUC@5 | ATE-S | prior ATE-S |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for seq, d in diagnoses.items():
        role = "test" if seq == "03_head" else "training"
        lines.append(f"| {seq} ({role}) | {d['windows']} | {fmt(d['yaw_corr'])} | {fmt(d.get('yaw_gain'))} | "
                     f"{fmt(d['yaw_mae_deg'], '.2f')} | "
                     f"{fmt(d['static_step_ratio'])} | {fmt(d['reversed_yaw_corr'])} | {fmt(d['auc5'])} | "
                     f"{fmt(d['prior_auc5'])} | {fmt(d['ate_s'], '.4f')} | {fmt(d['prior_ate_s'], '.4f')} |")
    lines += ["", "Targets (issue): yaw corr >= 0.9, static step ratio <= 0.1, reversed yaw corr >= 0.8 "
              "on `03_head`.", "", "## LA-Pose vs the classical baseline (the paper's Table 3 protocol)",
              "", HEADER]
    for fps in TABLE3_FPS:
        r = results[("03_head", SHIPPED, fps)]
        lines.append(row("classical", results[("03_head", "classical", fps)]))
        if r.get("prior"):
            pr = r["prior"]
            lines.append(row("straight-ahead prior", {"fps": fps, "windows": r["windows"], "auc5": pr.get("auc5"),
                                                      "auc30": pr.get("auc30"), "ate_s": pr.get("ate_s"),
                                                      "ate_m": None}))
        lines.append(row(f"LA-Pose tiny, {SHIPPED} (bundled default)", r))
    lines += ["", "`01_head` (highway, fast):", "", HEADER,
              row("classical", results[("01_head", "classical", 4.0)]),
              row(f"LA-Pose tiny, {SHIPPED} (bundled default)", results[("01_head", SHIPPED, 4.0)])]
    lines += ["", f"## Ablations of the recipe ({VALIDATION}, 2 fps; trained on 00_head + 06_head)", "",
              "| variant | description | AUC@5 | AUC@30 | ATE-S | ATE-M (m) | yaw corr | yaw gain | "
              "static step ratio | reversed yaw corr | backward steps | scale ratio | direction error (deg) | "
              "AUC@5, true rotations | AUC@5, true directions |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    ablation = {v: results.get((VALIDATION, v, 2.0)) for v in ABLATIONS}
    missing = []
    for variant, desc in ABLATIONS.items():
        r, d = ablation[variant], val_diagnoses.get(variant)
        if r and d:
            mark = " (stored)" if variant in stored else ""
            lines.append(f"| {variant}{mark} | {desc} | {fmt(r['auc5'])} | {fmt(r['auc30'])} | "
                         f"{fmt(r['ate_s'], '.4f')} | {fmt(r['ate_m'])} | {fmt(d['yaw_corr'])} | "
                         f"{fmt(d.get('yaw_gain'))} | "
                         f"{fmt(d['static_step_ratio'])} | {fmt(d['reversed_yaw_corr'])} | "
                         f"{fmt(d.get('backward_step_share'))} | {fmt(d['scale_ratio'])} | "
                         f"{fmt(d.get('direction_error_deg'), '.2f')} | {fmt(d.get('auc5_true_rotation'))} | "
                         f"{fmt(d.get('auc5_true_direction'))} |")
        else:
            missing.append(variant)
    if missing:
        lines += ["", f"Not trained in this run (no folder under `{runs}`): {', '.join(missing)}."]
    if stored:
        lines += ["", f"Rows marked (stored) were not retrained in this run: their figures are those "
                  f"their own training run wrote (`{assets.relative_to(out.parent)}/{VALIDATION}_"
                  "<variant>_2fps.json` and `..._diagnose_2fps.json`); `training/reproduce.sh` "
                  "retrains and re-measures them."]
    lines += ["", "Scale ratio: predicted / true mean step length (1 = metric scale right). Each variant "
              "changes one switch of `val_recipe`, the recipe before its newest switch; `val_speed` adds "
              "that switch (the scale token predicts the mean speed); the shipped model has it, no "
              "appearance tokens and no windows played backwards (the last rows). "
              "AUC@5 over 16-frame windows rewards driving straight on these mostly straight windows "
              f"(the prior scores {fmt(diagnoses[VALIDATION]['prior_auc5'])}): read it with the yaw "
              "correlation, which says whether a variant "
              "reads turns at all. Backward steps: the share of steps whose predicted direction of "
              "travel is more than 90 degrees from the true one (`lapose diagnose`). Where AUC@5 is "
              "lost: each step's direction of travel against the true one (median), and AUC@5 with "
              "each predicted step's rotation, or its direction, replaced by the truth (n/a: stored "
              "before `lapose diagnose` measured it)."]
    rerun_names = [v for v in RECIPE_RERUNS if ablation.get(v)]
    reruns = [ablation[v] for v in rerun_names]
    if len(reruns) > 1:
        spread = lambda key: f"{min(r[key] for r in reruns):.3f}-{max(r[key] for r in reruns):.3f}"  # noqa: E731
        lines += ["", f"Run-to-run spread: the recipe trained {len(reruns)} times "
                  f"({', '.join(rerun_names)}) lands at AUC@5 "
                  f"{spread('auc5')} and ATE-S {spread('ate_s')} on {VALIDATION}. A single variant's "
                  "difference inside that range is not evidence for or against it."]
    lines += ["", f"## Other frame rates ({VALIDATION}; trained on 00_head + 06_head)", "",
              "At 1 fps a sharp turn is 30 degrees a step, past the 16 px level's +-64 px (about 19 "
              "degrees); `wide_shift` searches the global shift again on the 4 px level, twice as far "
              "across, and re-centres a pair only where its fine search misses the best centre "
              "(README). No pair of 07_head is re-centred at 2 fps or faster: there its rows equal "
              "the mutual ones. `fine_flow` and `step_lengths` act at every rate (their 2 fps rows "
              "are above).", "",
              "| variant | fps | windows | AUC@5 | ATE-S | yaw gain | yaw MAE (deg) | prior AUC@5 |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for seed in OTHER_RATE_RUNS:
        for fps in OTHER_RATE_FPS:
            for variant, _ in seed:
                if (variant, fps) in other_rate:
                    r, d, was_stored = other_rate[(variant, fps)]
                    lines.append(f"| {variant}{' (stored)' if was_stored else ''} | {fps:g} | {r['windows']} | "
                                 f"{fmt(r['auc5'])} | {fmt(r['ate_s'], '.4f')} | {fmt(d.get('yaw_gain'))} | "
                                 f"{fmt(d['yaw_mae_deg'], '.2f')} | {fmt(d['prior_auc5'])} |")
    lines += ["", "## Training runs", "", "| run | last logged step |", "| --- | --- |"]
    for name in ("vqvae", "pretrain_motion", SHIPPED, *ABLATIONS):
        if (runs / name).is_dir():
            lines.append(f"| {name} | {final_losses(runs / name)} |")
    lines += ["", "## Pictures", ""]
    for png in pictures:
        lines += [f"![{png.stem}]({png.relative_to(out.parent)})", ""]
    lines += [f"![AUC@5 per window]({auc_png.relative_to(out.parent)})", ""]
    lines += ["## Findings (computed from the tables above)", ""]
    for fps in TABLE3_FPS:
        a = results[("03_head", SHIPPED, fps)]
        c = results[("03_head", "classical", fps)]
        prior = a.get("prior") or {}
        lines.append(f"- {fps:g} fps: LA-Pose AUC@5 {fmt(a['auc5'])} vs classical {fmt(c['auc5'])} "
                     f"({'LA-Pose' if a['auc5'] > c['auc5'] else 'classical'} better) and the prior "
                     f"{fmt(prior.get('auc5'))} ({'above' if a['auc5'] > prior.get('auc5', 1) else 'not above'}"
                     f" it); ATE-S {fmt(a['ate_s'], '.4f')} vs {fmt(c['ate_s'], '.4f')} "
                     f"({'LA-Pose' if a['ate_s'] < c['ate_s'] else 'classical'} better).")
    def compare(a: str, b: str, what: str) -> None:
        ra, rb = ablation.get(a), ablation.get(b)
        if ra and rb:
            lines.append(f"- {what}: AUC@5 {fmt(ra['auc5'])} vs {fmt(rb['auc5'])} "
                         f"({a if ra['auc5'] > rb['auc5'] else b} better), ATE-S "
                         f"{fmt(ra['ate_s'], '.4f')} vs {fmt(rb['ate_s'], '.4f')} "
                         f"({a if ra['ate_s'] < rb['ate_s'] else b} better).")

    for variant, desc in ABLATIONS.items():
        # Its one switch against: the run its description starts from, else val_recipe.
        base = desc.split()[0] if desc.split()[0] in ABLATIONS else "val_recipe"
        if variant != base and variant != "val_recipe" and base in ABLATIONS:
            compare(base, variant, f"{base} vs {variant} ({desc})")
    lines += [""] + hybrid_section(estimators[SHIPPED], f"{SHIPPED} (bundled default)", args.stride_s, assets)
    if Path(args.gpu_runs).is_dir():
        lines += [""] + gpu_section(Path(args.gpu_runs))
    elif kept_gpu := existing_section(out, GPU_START, GPU_END):
        # The GPU runs live on the machine that trained them: their section is kept as it was.
        print(f"{args.gpu_runs}: not here; keeping the GPU section {out} has")
        lines += ["", kept_gpu]
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
