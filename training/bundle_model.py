"""Copy a post-trained run into lapose_core/assets/default_model with a model card.

    python training/bundle_model.py --run runs/tiny/post_finetune --reason "best AUC@5 ..."

The card is written from the run folders' own logs and the evaluation JSON that
training/make_results.py wrote (docs/results/*.json): no figure in it is typed by hand. A run whose
weights are the bundled ones byte for byte (the default re-bundled with a new inference switch,
its training log on another machine) keeps its training row from the card it replaces.
"""
from __future__ import annotations

import argparse
import filecmp
import json
import shutil
from pathlib import Path

from safetensors.torch import load_file

from lapose_core.inference import DEFAULT_CHECKPOINT
from lapose_core.train.checkpoint import read_config, resolve_checkpoint
from lapose_core.train.trainer import last_metrics

REPO = Path(__file__).resolve().parents[1]


def data_summary(log_path: Path) -> str:
    """What the pretraining data loader reported: sources used, footage, sources skipped."""
    if not log_path.is_file():
        return "see the training log"
    lines = log_path.read_text().splitlines()
    used = next((l.split("datasets: ", 1)[1] for l in lines if "sources," in l and "footage" in l), "")
    skipped = sorted(Path(l.split(": no usable")[0].split()[-1]).name for l in lines
                     if "no usable window" in l)
    return (f"{used}; skipped for having no usable 16-frame window at 1-4 fps: "
            f"{', '.join(skipped) or 'none'}")


def fmt(v, spec=".3f"):
    return "n/a" if v is None else format(v, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", required=True, help="post-training run folder to bundle")
    ap.add_argument("--results", default="docs/results", help="folder of make_results.py JSON")
    ap.add_argument("--reason", required=True, help="why this run is the default (goes in the card)")
    ap.add_argument("--out", default=str(DEFAULT_CHECKPOINT))
    args = ap.parse_args()
    run, out, results = Path(args.run), Path(args.out), Path(args.results)
    ckpt = resolve_checkpoint(run)
    cfg = read_config(ckpt)
    runs = run.parent
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("model.safetensors", "config.json"):
        shutil.copyfile(ckpt / name, tmp / name)  # plain copy: readable by every user of the install

    pretrain_run = Path(cfg.train.init_from) if cfg.train.init_from else runs / "pretrain"
    stages = [("vqvae", runs / "vqvae"), ("pretrain", pretrain_run), ("posttrain", run)]
    if cfg.train.init_from == "scratch":
        stages = [("posttrain (no pretraining)", run)]
    previous_rows = {}  # the replaced card's training rows, where the weights are the same
    if (out / "MODEL_CARD.md").is_file() and (out / "model.safetensors").is_file() and filecmp.cmp(
            ckpt / "model.safetensors", out / "model.safetensors", shallow=False):
        card_lines = (out / "MODEL_CARD.md").read_text().splitlines()
        previous_rows = {line.split(" | ")[0][2:]: line for line in card_lines
                         if line.startswith("| ") and line.count("`") == 2}
    rows = []
    for name, folder in stages:
        log = last_metrics(folder)
        if log is None and name in previous_rows:
            rows.append(previous_rows[name])
            continue
        log = log or {}
        c = read_config(folder).train
        scalars = ", ".join(f"{k.split('/')[-1]} {v:.4g}" for k, v in log.items()
                            if k.startswith("model/") or k == "loss")
        rows.append(f"| {name} | `{folder}` | {c.max_steps} | {c.batch_size} | {c.lr:g} | {scalars} |")
    evals = []
    for f in sorted(results.glob(f"*_{run.name}_*fps.json")):
        r = json.loads(f.read_text())
        if "checkpoint" not in r or Path(r["checkpoint"]).resolve() != run.resolve():
            continue  # a diagnosis, or another variant whose name starts with this one's
        evals.append(f"| {Path(r['data']).name} | {r['fps']:g} | {r['windows']} | {fmt(r['auc5'])} | "
                     f"{fmt(r['auc30'])} | {fmt(r['ate_s'], '.4f')} | {fmt(r['ate_m'])} |")
        c_path = f.with_name(f.name.replace(run.name, "classical"))
        if c_path.is_file():
            c = json.loads(c_path.read_text())
            evals.append(f"| {Path(c['data']).name} (classical baseline) | {c['fps']:g} | {c['windows']} | "
                         f"{fmt(c['auc5'])} | {fmt(c['auc30'])} | {fmt(c['ate_s'], '.4f')} | n/a |")
    m = cfg.model
    n_params = sum(t.numel() for k, t in load_file(str(ckpt / "model.safetensors")).items()
                   if not k.startswith(("fdm.", "vqvae.")))
    scratch = cfg.train.init_from == "scratch"
    pretrain_line = ("- No pretraining: every part was trained on the labels (the pretraining ablation "
                     "in `docs/results.md` measures the difference)." if scratch else
                     "- VQ-VAE and pretraining: the unlabeled frames of `../shared/data` (driving clips, "
                     "the highway video, the training KITTI images without their poses): "
                     f"{data_summary(runs / 'vqvae.log')}. Windows spanning scene cuts or frozen "
                     "stretches dropped.")
    labelled = ", ".join(f"`{Path(p).name}`" for p in cfg.data.posttrain_sequences)
    d = cfg.data
    departures = [f"motion features: {m.motion_features}",
                  f"appearance tokens at the inverse-dynamics input: {m.appearance_tokens}",
                  f"correlations centred on the pair's global shift: {m.motion_centred}",
                  f"each level's flow beside its correlations: {m.motion_flow}",
                  f"each step's rotation from the flow, the head's as a residual: {m.rotation_from_flow}",
                  f"that rotation read by: {m.rotation_fit} (the median, the focus-of-expansion fit, "
                  f"or that fit refitted at inference about the head's direction of travel: head_focus)",
                  f"the step translation's frame: {m.translation_frame} (half_turn: on the chord of the turn)",
                  f"the camera's intrinsics, where known, in that refit: {m.use_intrinsics}",
                  f"the height of travel in that refit from: {m.travel_height} (the head, or the flow)",
                  f"each pair's roll refitted too: {m.refit_roll}",
                  f"the cells that refit reads: {m.refit_matches} (all, or those whose match is mutual)",
                  f"the global shift also searched twice as wide at inference: {m.wide_shift}",
                  f"the refit reads the flow refined below a pixel: {m.fine_flow}",
                  f"step lengths within a window from: {m.step_lengths} (the head, or the flow's "
                  "triangulated ratios fitted with the head's)",
                  f"mirror averaging at inference: {m.mirror_average}",
                  f"per-step position embedding in the pose head: {m.pose_step_embedding}",
                  f"scale token output: {m.scale_output}",
                  f"rotation loss: {cfg.train.rotation_loss}",
                  f"window rates {d.fps_min:g}-{d.fps_max:g} fps",
                  f"augmentation chances: mirror {d.hflip_prob:g}, rotation homography "
                  f"{d.rotation_aug_prob:g} (up to {d.rotation_aug_max_deg:g} deg), reversed "
                  f"{d.reverse_prob:g}, static {d.static_prob:g}, photometric {d.photometric_prob:g}"]
    card = f"""# LA-Pose default model (preset `{cfg.preset}`)

The model `lapose demo`, `lapose eval`, `lapose replay` and `lapose_node` use when no checkpoint is
given. Bundled from `{run}` ({ckpt.name}). Why this run: {args.reason}

## Architecture
Input {m.image_width}x{m.image_height}, {m.patch_size}-px patches ({m.grid[1]}x{m.grid[0]} tokens per
frame), width {m.width}, {m.encoder_layers}-layer per-frame encoder, {m.idm_layers}-layer causal
inverse-dynamics ST-transformer, T={m.num_frames}, action bottleneck {m.action_dim}-d
({'used' if m.use_bottleneck else 'not used'}; pose head input: {m.pose_head_input}),
{m.pose_layers}-layer pose head of width {m.pose_width}. Timestamp embedding enters at the
{m.time_embedding_at} input. {n_params / 1e6:.2f} M parameters used at inference (the file also holds
the VQ-VAE and forward-dynamics weights of pretraining). Inverse dynamics
{'frozen' if cfg.train.freeze_idm else 'fine-tuned'} during post-training.

Recipe switches (README, "The CPU-scale recipe"): {'; '.join(departures)}.

## Data and stages
{pretrain_line}
- Post-training: the poses of KITTI {labelled} (the test sequences `03_head` and `01_head` are never
  trained on or used for a choice).
- Trained on a 2-core CPU with `bash training/reproduce.sh`.

| stage | run | steps | batch | lr | last logged values |
| --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

## Measured accuracy
By `training/make_results.py` (see `docs/results.md`); windows every 1 s, stationary windows left out.

| sequence | fps | windows | AUC@5 | AUC@30 | ATE-S | ATE-M (m) |
| --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(evals)}

## Limitations
A tiny model trained for minutes on a 2-core CPU with a few hundred labelled frames: compare it with
the classical baseline in the table before relying on it, and with the straight-ahead prior in
`docs/results.md`. It is a working default for the pipeline, not the paper's model; train the `paper`
preset on a GPU cluster for that.

## Licence and attribution
Weights derived from KITTI (CC BY-NC-SA 3.0; Geiger, Lenz, Urtasun, CVPR 2012) and public driving
clips whose licences are not stated: non-commercial use only.
"""
    (tmp / "MODEL_CARD.md").write_text(card)
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    print(f"bundled {ckpt} -> {out} ({(out / 'model.safetensors').stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
