"""The three LA-Pose training stages, each a ``Stage`` for :func:`lapose_core.train.trainer.train`.

- ``vqvae``: the VQ-VAE image tokenizer on unlabeled frames (everything else idle).
- ``pretrain``: latent action pretraining. The VQ-VAE comes frozen from stage 0; the encoder, inverse
  dynamics, bottleneck and forward dynamics learn to predict the next frame's codes.
- ``posttrain``: the forward model is dropped from the objective; the pose head learns from labels on
  top of the pretrained inverse-dynamics model, which is frozen (default) or fine-tuned.

``train.init_from`` names the previous stage's checkpoint. For post-training, ``init_from: scratch``
starts from random weights: the "no pretraining" ablation with the same architecture and labels.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..config import LaPoseConfig
from ..data.datasets import build_posttrain_dataset, build_pretrain_dataset
from ..model.lapose import LaPose
from .checkpoint import CheckpointError, read_config, read_model_state, resolve_checkpoint

log = logging.getLogger(__name__)

# Which parts each stage takes from the checkpoint named by init_from / vqvae_checkpoint.
INHERITED = {
    "pretrain": ("vqvae",),
    "posttrain": ("encoder", "motion", "time_embed", "idm", "bottleneck", "vqvae", "fdm"),
}
RESTART_EVERY = 10  # steps between dead-code restarts of the VQ-VAE codebook
# Model fields that only shape the pose head: post-training variants may change them freely.
POSE_HEAD_FIELDS = {"pose_head_input", "pose_layers", "pose_width", "pose_heads",
                    "pose_step_embedding", "scale_output", "translation_floor"}
# The frozen image tokenizer depends on these alone: one VQ-VAE serves pretraining runs that differ
# in everything else (motion features, dynamics sizes).
VQVAE_FIELDS = {"image_height", "image_width", "vq_codebook_size", "vq_code_dim", "vq_hidden",
                "vq_downsample", "vq_beta", "vq_ema_decay"}


class LaPoseStage:
    def __init__(self, cfg: LaPoseConfig, root: Path):
        self.cfg = cfg
        self.name = cfg.train.stage
        self._restarted = 0
        self.model = LaPose(cfg.model)
        t = cfg.train
        self.model.loss_weights = {"translation": t.w_translation, "rotation": t.w_rotation,
                                   "fov": t.w_fov, "scale": t.w_scale, "direction": t.w_direction}
        self.model.rotation_loss = t.rotation_loss
        self._inherit_weights(root)
        self.model.set_stage(self.name, freeze_idm=t.freeze_idm)
        self.dataset = (build_posttrain_dataset(cfg, root) if self.name == "posttrain"
                        else build_pretrain_dataset(cfg, root))

    def _inherit_weights(self, root: Path) -> None:
        t = self.cfg.train
        if self.name == "vqvae":
            return
        source = t.vqvae_checkpoint if self.name == "pretrain" else t.init_from
        what = "train.vqvae_checkpoint" if self.name == "pretrain" else "train.init_from"
        if not source:
            raise CheckpointError(f"{what} is empty: stage '{self.name}' needs the previous stage's "
                                  "checkpoint" + (" (or 'scratch' for the no-pretraining ablation)"
                                                  if self.name == "posttrain" else ""))
        if self.name == "posttrain" and source == "scratch":
            log.info("post-training from random weights (no pretraining)")
            return
        path = Path(source) if Path(source).is_absolute() else root / source
        load_parts(self.model, path, INHERITED[self.name], self.cfg)

    def scalars(self) -> dict[str, float]:
        # Codebook health: the model logs codes_used and perplexity per batch; this is how many codes
        # the last restart had to revive (it falls towards 0 as the codebook settles).
        return {"codes_restarted": float(self._restarted)} if self.name == "vqvae" else {}

    def on_step_end(self, step: int) -> None:
        if self.name == "vqvae" and step % RESTART_EVERY == 0:
            self._restarted = self.model.vqvae.quantizer.restart_dead_codes()
            if self._restarted:
                log.info("step %d: restarted %d dead codebook entries", step, self._restarted)


def load_parts(model: LaPose, path: Path, parts: tuple[str, ...], cfg: LaPoseConfig) -> None:
    """Copy the named parts of ``model`` from a checkpoint trained with the same model config."""
    ckpt = resolve_checkpoint(path)
    stored = read_config(ckpt)
    fields = VQVAE_FIELDS if set(parts) == {"vqvae"} else set(vars(cfg.model)) - POSE_HEAD_FIELDS
    diff = [k for k, v in vars(cfg.model).items() if k in fields and getattr(stored.model, k) != v]
    if diff:
        raise CheckpointError(f"{ckpt}: model config differs from this run in {diff}")
    state = read_model_state(ckpt)
    wanted = {k: v for k, v in state.items() if k.split(".", 1)[0] in parts}
    if not wanted:
        raise CheckpointError(f"{ckpt}: holds none of the parts {parts}")
    missing, unexpected = model.load_state_dict(wanted, strict=False)
    missing = [k for k in missing if k.split(".", 1)[0] in parts]
    if missing or unexpected:
        raise CheckpointError(f"{ckpt}: weights do not fit the model (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    log.info("loaded %s from %s", ", ".join(parts), ckpt)


def build_stage(cfg: LaPoseConfig, root: Path) -> LaPoseStage:
    torch.manual_seed(cfg.train.seed)
    return LaPoseStage(cfg, root)
