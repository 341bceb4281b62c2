"""LA-Pose: every part of the method in one module, with one objective per training stage.

One module holds all parts so that parameter names are the same in every stage's checkpoint:
``vqvae`` (stage 0), ``encoder`` + ``time_embed`` + ``idm`` + ``bottleneck`` + ``fdm`` (stage 1,
latent action pretraining), ``pose_head`` (stage 2, pose post-training). ``objective`` selects what
``forward(batch)`` computes, so the trainer (and DistributedDataParallel) only ever calls ``forward``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import geometry
from ..config import ModelConfig
from .latent_action import (ActionBottleneck, FrameEncoder, ForwardDynamics, InverseDynamics,
                            MotionEncoder)
from .layers import TimestampEmbedding
from .pose_head import PoseHead
from .vqvae import VQVAE

OBJECTIVES = ("vqvae", "pretrain", "posttrain")
# Which parts each stage optimises; everything else is frozen (and saved as it is).
TRAINABLE = {
    "vqvae": ("vqvae",),
    "pretrain": ("encoder", "motion", "time_embed", "idm", "bottleneck", "fdm"),
    "posttrain_frozen": ("pose_head",),
    "posttrain_finetune": ("encoder", "motion", "time_embed", "idm", "bottleneck", "pose_head"),
}


class LaPose(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = FrameEncoder(cfg)
        self.motion = MotionEncoder(cfg) if cfg.motion_features == "correlation" else None
        self.time_embed = TimestampEmbedding(cfg.width)
        self.idm = InverseDynamics(cfg)
        self.bottleneck = ActionBottleneck(cfg) if cfg.use_bottleneck else None
        self.vqvae = VQVAE(cfg)
        self.fdm = ForwardDynamics(cfg)
        self.pose_head = PoseHead(cfg)
        self.objective = "posttrain"
        self.loss_weights = {"translation": 1.0, "rotation": 1.0, "fov": 0.1, "scale": 0.5}
        self.rotation_loss = "quaternion_l1"

    def recompute_activations(self, on: bool = True) -> None:
        """Training memory for compute: every transformer stack keeps only its blocks' inputs and
        recomputes the rest in the backward pass (``layers.run_blocks``)."""
        for module in self.modules():
            if hasattr(module, "recompute"):
                module.recompute = on

    def set_stage(self, stage: str, freeze_idm: bool = True) -> None:
        """Select the objective and freeze every part the stage does not train."""
        self.objective = stage
        key = stage if stage != "posttrain" else ("posttrain_frozen" if freeze_idm else "posttrain_finetune")
        for name, part in self.named_children():
            part.requires_grad_(name in TRAINABLE[key])
        self.train(self.training)

    def train(self, mode: bool = True) -> "LaPose":
        super().train(mode)
        # The frozen VQ-VAE must not update its codebook statistics outside stage 0, even when a
        # trainer switches the whole model to train mode.
        self.vqvae.train(mode and self.objective == "vqvae")
        return self

    # ----------------------------------------------------------------- shared pieces
    def relative_times(self, timestamps: torch.Tensor) -> torch.Tensor:
        """Timestamps measured from the window's first frame: the model never sees absolute time."""
        return timestamps - timestamps[:, :1]

    def encode_frames(self, frames: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W), (B, T) -> per-frame tokens (B, T, N, C)."""
        B, T = frames.shape[:2]
        time_emb = None
        if self.cfg.time_embedding_at == "encoder":
            time_emb = self.time_embed(self.relative_times(timestamps)).flatten(0, 1)
        return self.encoder(frames.flatten(0, 1), time_emb).unflatten(0, (B, T))

    def motion_maps(self, frames: torch.Tensor) -> torch.Tensor | None:
        """(B, T, 3, H, W) -> fine feature maps (B, T, D, h, w), or None without motion features."""
        if self.motion is None:
            return None
        B, T = frames.shape[:2]
        return self.motion.feature_maps(frames.flatten(0, 1)).unflatten(0, (B, T))

    def actions(self, tokens: torch.Tensor, timestamps: torch.Tensor,
                maps: torch.Tensor | None = None, motion: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, N, C) frame tokens [+ fine feature maps, or the (B, T, N, C) motion tokens already
        computed from them] -> (B, T-1, C) latent actions."""
        time_emb = None
        if self.cfg.time_embedding_at == "dynamics":
            time_emb = self.time_embed(self.relative_times(timestamps))
        if motion is None and self.motion is not None:
            motion = self.motion(maps)[0]
        return self.idm(tokens, time_emb, motion)

    def window_motion(self, frames: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(B, T, 3, H, W) frames -> motion tokens (B, T, N, C) and, with ``rotation_from_flow``, the
        pairs' flow readings (:meth:`flow_reading`); None for what the model does not have."""
        if self.motion is None:
            return None, None
        motion, pixel_flow = self.motion(self.motion_maps(frames))
        return motion, self.flow_reading(pixel_flow)

    def flow_reading(self, pixel_flow: torch.Tensor | None) -> torch.Tensor | None:
        """Pairs' pixel flows and mutual matches (..., 3, h, w) [then the refined flow, (..., 5, h, w),
        with ``fine_flow``] (``MotionEncoder.read_pair``) -> what :meth:`pose` reads their rotation
        from.

        ``rotation_fit`` median: the flows themselves (..., 2, h, w), read at the window's predicted
        field of view (cheap). focus: the fitted (pitch, yaw) (..., 2) at ``geometry.FLOW_READING_FOV``,
        converted to the predicted field of view in :meth:`pose`; focus_roll: (pitch, yaw, roll)
        (..., 3); head_focus: (pitch, yaw) followed by the flow and its mutual matches, flattened
        (..., 2 + 3 h w), which :meth:`pose` refits at inference once the head has said where the
        car drives. The fit costs ~2 ms a pair on a 2-core CPU, so a streaming window makes it once
        per pair as the pair enters, not 15 times per keyframe."""
        if pixel_flow is None:
            return None
        flow = pixel_flow[..., :2, :, :]
        if self.cfg.rotation_fit == "median":
            return flow
        fov = pixel_flow.new_tensor(geometry.FLOW_READING_FOV)
        roll = self.cfg.rotation_fit == "focus_roll"
        reading = geometry.rotation_from_flow_and_focus(flow, fov, roll=roll)
        if self.cfg.rotation_fit == "head_focus":
            if pixel_flow.shape[-3] == 5:  # fine_flow: the refit reads the refined flow; the focus
                # fit above, which the head's inputs rest on, the flow it was trained with
                pixel_flow = torch.cat([pixel_flow[..., 3:5, :, :], pixel_flow[..., 2:3, :, :]], -3)
            return torch.cat([reading[..., :2].to(pixel_flow.dtype), pixel_flow.flatten(-3)], -1)
        return reading if roll else reading[..., :2]

    def window_actions(self, frames: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) frames -> (B, T-1, C) latent actions."""
        return self.actions(self.encode_frames(frames, timestamps), timestamps,
                            motion=self.window_motion(frames)[0])

    @property
    def refits_rotation(self) -> bool:
        """Whether :meth:`pose` refits each step's rotation about the head's direction at inference
        (``rotation_fit`` head_focus), where the camera's intrinsics, when known, are used."""
        return self.motion is not None and self.cfg.rotation_from_flow and self.cfg.rotation_fit == "head_focus"

    def pose(self, actions: torch.Tensor, timestamps: torch.Tensor,
             flow_reading: torch.Tensor | None = None,
             camera: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """(B, T-1, C) actions and the window's (B, T) timestamps [+ the pairs' flow readings
        (:meth:`flow_reading`), with ``rotation_from_flow``] -> pose outputs (:class:`PoseHead`).

        ``camera``: (B, 3) each window's camera as its calibration gives it, at the model's input:
        horizontal field of view (radians; 0 = unknown, the predicted one is used) and where the
        optical axis meets the image (x, y pixels from the centre). The flow's rotation is read with
        it (``use_intrinsics``); the predicted field of view is still output."""
        if self.cfg.pose_head_input == "bottleneck":
            actions = self.bottleneck(actions)
        log_interval = None
        if self.cfg.scale_output == "speed":
            interval = (timestamps[:, -1] - timestamps[:, 0]) / (timestamps.shape[1] - 1)
            log_interval = torch.log(interval.clamp_min(1e-3))
        out = self.pose_head(actions, log_interval)
        if flow_reading is not None:  # the step's rotation from the flow's
            # The field of view only converts pixels to angles here: no gradient teaches it that.
            fov = out["fov"].detach()
            axis = None
            if camera is not None and self.cfg.use_intrinsics:
                given = camera[:, :1].to(fov.dtype).expand_as(fov)
                fov = torch.where(given > 0, given, fov)
                axis = camera[:, None, 1:]
            pixel_flow = cells = None
            if self.cfg.rotation_fit == "head_focus":  # the focus fit's reading, then the flow
                if not self.training:  # in training the residual is learned on the focus fit's reading
                    grid = (3, self.cfg.image_height // 4, self.cfg.image_width // 4)
                    pixel_flow = flow_reading[..., 2:].unflatten(-1, grid)
                    if self.cfg.refit_matches == "mutual":
                        cells = pixel_flow[..., 2, :, :]
                    pixel_flow = pixel_flow[..., :2, :, :]
                flow_reading = flow_reading[..., :2]
            seen = (geometry.rotation_at_fov(flow_reading, fov, geometry.FLOW_READING_FOV)
                    if self.cfg.rotation_fit != "median" else geometry.rotation_from_flow(flow_reading, fov))
            if self.cfg.translation_frame == "half_turn":  # the head's step, turned onto the chord
                half = geometry.quaternion_to_matrix(geometry.rotvec_to_quaternion(seen / 2))
                out["translation"] = (half @ out["translation"][..., None])[..., 0]
            refit_options = dict(principal_point=axis, roll=self.cfg.refit_roll, cells=cells)
            if pixel_flow is not None and self.cfg.travel_height == "flow":
                # pitch and yaw [and roll] refitted about the head's heading, the height read from the flow
                step = out["translation"]
                refit, direction = geometry.rotation_and_height_given_heading(
                    pixel_flow, fov, step.detach(), seen[..., :2], **refit_options)
                out["translation"] = direction * (step.norm(dim=-1, keepdim=True)
                                                  / direction.norm(dim=-1, keepdim=True).clamp_min(1e-9))
            elif pixel_flow is not None:  # pitch and yaw [and roll] refitted about the head's direction
                refit = geometry.rotation_given_focus(pixel_flow, fov, out["translation"].detach(),
                                                      seen[..., :2], **refit_options)
            if pixel_flow is not None:  # (pitch, yaw [, roll]): roll 0 unless refitted
                q = geometry.rotvec_to_quaternion(geometry.with_roll(refit))
                if self.cfg.step_lengths == "flow":  # each step's length against the last, from the flow
                    ratios = geometry.step_length_ratios(pixel_flow, fov, out["translation"], refit,
                                                         principal_point=axis, cells=cells)
                    out["translation"] = geometry.with_step_lengths(out["translation"], *ratios)
            else:  # the head's rotation is a residual on the flow's
                q = geometry.quaternion_multiply(geometry.rotvec_to_quaternion(seen), out["quaternion"])
            out["quaternion"] = geometry.canonical_quaternion(q)
        return out

    def predict(self, frames: torch.Tensor, timestamps: torch.Tensor,
                camera: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Frames to pose outputs (see :class:`PoseHead`; ``camera`` as in :meth:`pose`)."""
        motion, flow_reading = self.window_motion(frames)
        actions = self.actions(self.encode_frames(frames, timestamps), timestamps, motion=motion)
        return self.pose(actions, timestamps, flow_reading, camera)

    # ----------------------------------------------------------------- objectives
    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        if self.objective == "vqvae":
            # Neighbouring frames of a clip are near-duplicates for an image tokenizer: four evenly
            # spaced frames per clip give the same signal at a quarter of the cost.
            frames = batch["frames"]
            return self.vqvae.loss(frames[:, :: max(1, frames.shape[1] // 4)].flatten(0, 1))
        if self.objective == "pretrain":
            return self.pretrain_loss(batch)
        if self.objective == "posttrain":
            return self.posttrain_loss(batch)
        raise ValueError(f"unknown objective {self.objective!r} (expected one of {OBJECTIVES})")

    def pretrain_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        frames, ts = batch["frames"], batch["timestamps"]
        B, T = frames.shape[:2]
        with torch.no_grad():  # the VQ-VAE is frozen: its codes are fixed targets
            codes = self.vqvae.encode(frames.flatten(0, 1)).unflatten(0, (B, T))
        actions = self.window_actions(frames, ts)
        if self.bottleneck is not None:
            actions = self.bottleneck(actions)
        # Each position is told the time of the frame it predicts, so any frame rate works.
        time_emb = self.time_embed(self.relative_times(ts))[:, 1:]
        logits = self.fdm(codes[:, :-1], actions, time_emb)
        target = codes[:, 1:].flatten(2)
        loss = F.cross_entropy(logits.flatten(0, 2), target.flatten())
        with torch.no_grad():
            acc = (logits.argmax(-1) == target).float().mean()
            copy_acc = (codes[:, :-1].flatten(2) == target).float().mean()
        return loss, {"ce": loss.item(), "code_acc": acc.item(), "copy_acc": copy_acc.item()}

    def posttrain_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        frames, ts = batch["frames"], batch["timestamps"]
        backbone_frozen = not any(p.requires_grad for p in self.idm.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not backbone_frozen):
            motion, flow_reading = self.window_motion(frames)
            actions = self.actions(self.encode_frames(frames, ts), ts, motion=motion)
        pred = self.pose(actions, ts, flow_reading)
        tgt = geometry.pose_targets(batch["poses"].double(), batch["fov"].double(),
                                    self.cfg.translation_floor)
        tgt = {k: v.float() for k, v in tgt.items()}
        metric = batch.get("metric_scale")
        if metric is not None:
            # Self-labelled windows: the steps are known up to the window's scale. A standing one
            # (no motion) has its scale, zero, whatever the units.
            metric = metric.to(torch.bool) | (tgt["scale"] <= geometry.MIN_SCALE)
        losses = pose_losses(pred, tgt, self.rotation_loss, metric)
        w = self.loss_weights
        loss = sum(w.get(k, 0.0) * v for k, v in losses.items())
        with torch.no_grad():
            rot_err = quaternion_angle_deg(pred["quaternion"], tgt["quaternion"]).mean()
            scale_err = (pred["scale"] - tgt["scale"]).abs()
            if metric is not None:
                scale_err = scale_err[metric]
        return loss, {**{k: v.item() for k, v in losses.items()}, "rot_err_deg": rot_err.item(),
                      "scale_abs_err": scale_err.mean().item() if len(scale_err) else float("nan")}


def pose_losses(pred: dict[str, torch.Tensor], tgt: dict[str, torch.Tensor],
                rotation_loss: str = "quaternion_l1",
                metric_scale: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """L1 losses on translation, rotation, FoV and log scale (the paper's, with ``rotation_loss``
    "quaternion_l1"; "rotvec_deg" measures rotation error in degrees instead), and each moving
    step's direction error in degrees ("direction", weighted by ``train.w_direction``, 0 in the paper).

    ``metric_scale`` (B,) bool marks windows whose poses are metric; the others (self-labels) have no
    scale loss, and their translation is compared up to scale: prediction and target each divided by
    their own mean step length."""
    q, qt = pred["quaternion"], tgt["quaternion"]
    if rotation_loss == "rotvec_deg":
        diff = geometry.quaternion_to_rotvec(q) - geometry.quaternion_to_rotvec(qt)
        rot = torch.rad2deg(diff).abs().sum(-1).mean()
    else:
        # q and -q are one rotation: take the closer sign (both are canonical; matters near w=0).
        rot = torch.minimum((q - qt).abs().sum(-1), (q + qt).abs().sum(-1)).mean()
    fov_ok = torch.isfinite(tgt["fov"])
    fov = (F.l1_loss(pred["fov"][fov_ok], tgt["fov"][fov_ok]) if fov_ok.any()
           else pred["fov"].sum() * 0.0)
    log_s = torch.log(tgt["scale"].clamp_min(geometry.MIN_SCALE))
    direction = step_direction_error_deg(pred["translation"], tgt["translation"])
    if metric_scale is None or bool(metric_scale.all()):
        return {"translation": F.l1_loss(pred["translation"], tgt["translation"]), "rotation": rot,
                "fov": fov, "scale": F.l1_loss(pred["log_scale"], log_s), "direction": direction}

    def unit_mean_step(t: torch.Tensor) -> torch.Tensor:
        return t / t.norm(dim=-1).mean(-1).clamp_min(geometry.MIN_SCALE)[..., None, None]

    m = metric_scale[:, None, None]
    translation = torch.where(m, (pred["translation"] - tgt["translation"]).abs(),
                              (unit_mean_step(pred["translation"])
                               - unit_mean_step(tgt["translation"])).abs()).mean()
    scale = ((pred["log_scale"] - log_s)[metric_scale].abs().mean() if metric_scale.any()
             else pred["log_scale"].sum() * 0.0)
    return {"translation": translation, "rotation": rot, "fov": fov, "scale": scale, "direction": direction}


def step_direction_error_deg(t: torch.Tensor, t_true: torch.Tensor, min_step: float = 0.05) -> torch.Tensor:
    """Mean angle in degrees between predicted and true step translations (..., 3), over the steps
    that move (true length above ``min_step`` of the normalised translation; a standing window has
    no direction). The L1 translation loss is dominated by the steps' lengths (the speed within a
    window); this term weighs only where each step goes, the quantity AUC@5 thresholds.
    atan2 of the cross and dot products: accurate, and finite in gradient, near zero."""
    cross = torch.linalg.cross(t, t_true)
    angle = torch.atan2((cross.square().sum(-1) + 1e-12).sqrt(), (t * t_true).sum(-1))
    moving = (t_true.norm(dim=-1) > min_step).to(angle.dtype)  # a mask, not a branch: no host sync
    return torch.rad2deg(angle * moving).sum() / moving.sum().clamp_min(1.0)


def quaternion_angle_deg(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    dot = (q1 * q2).sum(-1).abs().clamp(max=1.0)
    return torch.rad2deg(2 * torch.acos(dot))
