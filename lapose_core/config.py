"""The one configuration object of LA-Pose.

Every size, rate and optimiser setting lives here, grouped as ``model``, ``data`` and ``train``.
Named presets (``tiny``, ``small``, ``paper``) give complete configurations; YAML files under
``training/configs/`` name a preset and override fields. An unknown key is an error that names the
file and the key, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration file or dictionary that does not describe a valid LA-Pose config."""


@dataclass
class ModelConfig:
    # Input: frames are resized and centre-cropped to this size (intrinsics follow).
    image_height: int = 96
    image_width: int = 256
    patch_size: int = 32
    num_frames: int = 16  # T: a window of 16 frames gives 15 latent actions.
    # Transformer sizes (shared by the per-frame encoder and the dynamics models).
    width: int = 128
    heads: int = 4
    mlp_ratio: float = 4.0
    encoder_layers: int = 2  # per-frame ViT encoder
    idm_layers: int = 2  # inverse-dynamics ST-transformer
    # Where the sinusoidal timestamp embedding enters: "encoder" (the paper's tokenizer, before the
    # per-frame transformer) or "dynamics" (after it, at the inverse-dynamics input). "dynamics" keeps a
    # frame's encoder output independent of the window it sits in, so a streaming node can cache it.
    time_embedding_at: str = "dynamics"
    # Optional action bottleneck: width -> action_dim -> width, three-layer MLPs each way.
    use_bottleneck: bool = True
    action_dim: int = 50
    pose_head_input: str = "action"  # "action" (uncompressed) or "bottleneck" (decompressed)
    # Departures from the paper for models trained at CPU scale (each proved by an ablation in
    # docs/results.md; the paper preset keeps the paper's choices):
    # "correlation" adds local correlation volumes between consecutive frames' fine patch
    # descriptors (4 px grid, three pyramid levels) to the inverse-dynamics input of the later frame.
    # Coarse patches compared late cannot resolve a degree of yaw (3 px at 256 px wide); a
    # correlation can.
    motion_features: str = "none"  # "none" (paper) | "correlation"
    motion_feature_dim: int = 32  # channels of the network reading the correlation volumes
    motion_radius: int = 4  # displacements -r..r cells per level (4, 8 and 16 px cells)
    # True centres the 4 and 8 px levels' correlations on the frame pair's global image shift (the
    # best offset of the 16 px level, averaged over the image) and gives the network that shift:
    # a turn of 8 degrees in one step moves the image ~25 px, beyond the 4 px level's +-16 px, and
    # such steps came out at half their size; centred, every level sees the residual motion.
    motion_centred: bool = False
    # True also gives the read-out each level's flow: per cell, the best offset refined below a
    # cell (a parabola through the peak) plus the global shift, in 4 px units over the radius. A
    # turn is then the image-wide mean of that flow, a linear read, where from the volumes alone
    # it is an arg-max that a 1x1 convolution cannot form.
    motion_flow: bool = False
    # True makes each step's rotation the rotation the image flow shows, composed with the pose
    # head's prediction as a learned residual: every 4 px cell's flow is read as a pure rotation
    # (yaw from its horizontal, pitch from its vertical displacement, exact for a pinhole camera of
    # the predicted field of view) and the median over the image taken. A regression has to
    # reproduce a 15-degree turn from features to a tenth of a degree and came out ~10% short on
    # every turn; the residual only corrects what translation and depth add to the flow.
    rotation_from_flow: bool = False
    # How rotation_from_flow reads the flow: "median" of every cell read as a pure rotation, or
    # "focus": the rotation whose removal leaves the flow most nearly an expansion from one point,
    # the focus of expansion, so the car's own translation is not read as a turn. Slower: a search
    # over candidate rotations, ~2 ms a pair on a 2-core CPU, made once per pair as it enters the
    # window (LaPose.flow_reading), at geometry.FLOW_READING_FOV and converted to the predicted one.
    # "focus_roll": the same fit also reading the roll about the optical axis (the others leave
    # roll to the head, which did not learn it: on 07_head its roll error equalled predicting none).
    # "head_focus": trained as "focus"; at inference each window's pitch and yaw are refitted with
    # the focus put where the head says the car drives (geometry.rotation_given_focus), and the
    # head's residual, learned on the focus fit, is left out (roll 0). The head reads the direction
    # of travel better than the flow's focus does, and a focus fitted off to one side passes for a
    # turn; the residual put back errors the refit had taken out (docs/results.md).
    rotation_fit: str = "median"
    # Inference only, with rotation_fit head_focus: where the camera's intrinsics are known (a
    # sequence's calib.txt, the node's CameraInfo or fx fy cx cy), the flow's rotation is read at
    # their field of view and refitted about their principal point; otherwise (or false) at the
    # predicted field of view and about the image centre. The model predicts the field of view of
    # the cameras it was trained on whatever it sees (69.8 degrees on 07_head cropped to 66.3), and
    # a turn read at the wrong field of view comes out scaled by the ratio; KITTI's principal point
    # lies 2-4 px off the centre of the model's input, which biased the refit's yaw by 0.1 degrees
    # a step (docs/results.md).
    use_intrinsics: bool = True
    # Inference only, with rotation_fit head_focus: how high the direction of travel lies in the
    # image. "head": as the pose head predicts it. "flow": each window's heights shifted by one
    # offset fitted with the refit's pitches and yaws (geometry.rotation_and_height_given_heading):
    # the height is set by how the camera is mounted, which the head recalls from its training
    # drives instead of reading (on 03_head, another mount, its steps point 2 degrees too low).
    travel_height: str = "head"
    # Inference only, with rotation_fit head_focus: also refit each pair's roll about the optical
    # axis (otherwise 0). A roll crosses the lines from the focus, so once the head has placed the
    # focus the flow shows it; the focus fit, which must find the focus too, could not read it.
    refit_roll: bool = False
    # Inference only, with rotation_fit head_focus: which cells the refit reads. "all": every cell
    # whose match lies inside the later image. "mutual": only those whose best match has them as its
    # own best match back (the left-right check, latent_action.mutual_matches). At 2 fps the road
    # just ahead has gone under the car by the next frame, and its cells match something else.
    refit_matches: str = "all"
    # Inference only, with motion_centred: each pair's global shift is searched again on the 4 px
    # level, twice as far across (MotionEncoder.wide_shift, +-128 px), and where the centre that
    # matches best lies beyond the 4 px level's own +-16 px search around the 16 px level's shift,
    # the finer levels are centred there. At 1 fps a sharp turn is 30 degrees a step, past the
    # 16 px level's +-64 px (about 19 degrees of yaw at the model's input); its best offset then
    # lies anywhere and the turn is lost. A pair whose fine search already covers the best centre
    # is read exactly as before.
    wide_shift: bool = False
    # Inference only, with rotation_fit head_focus: the refit reads each 4 px cell's flow refined to
    # a fraction of a pixel, the cell's 8x8 pixels matched again in the later frame within 2 px of
    # where the 4 px level put them (latent_action.refine_flow); a frame caches its grey pixels
    # beside its descriptors. The focus fit, and so everything the head is given, keeps the flow it
    # was trained with (given the refined flow too, the head lost AUC@5 at 1.3 fps on 07_head).
    fine_flow: bool = False
    # Inference only, with rotation_fit head_focus: how long each step is within its window. "head":
    # as the pose head predicts it. "flow": each step's length against the one before triangulated
    # from the refit's flow (geometry.step_length_ratios), fitted together with the head's own
    # lengths (geometry.with_step_lengths), the window's path length kept. The head reads a window's
    # speed from how it looks but hardly how the speed changes from step to step, and every frame
    # pair spanning several steps points where those lengths send it: on 07_head the true lengths
    # alone would lift AUC@5 from 0.78 to 0.85. Measured with fine_flow (docs/results.md).
    step_lengths: str = "head"
    # The frame the head's step translation is predicted in (needs rotation_from_flow). "camera":
    # the earlier frame's, as the paper. "half_turn": turned by half the step's flow rotation. A
    # car's step runs along the chord of its arc, half the turn from where it pointed, so in this
    # frame every step points about the same way (the camera's mount) and the head predicts only
    # what departs from the chord (on 07_head each step's direction error fell from 1.18 to
    # 0.74-0.84 degrees, docs/results.md, though AUC@5 stayed inside the seed spread).
    translation_frame: str = "camera"
    # Inference only: True runs every window also mirrored (the image flipped left to right, a batch
    # of two through every part) and averages the mirrored prediction, reflected back, with the
    # direct one. Training mirrors windows (data.hflip_prob), so both views are in distribution;
    # a model's left-right bias, which differs from run to run, cancels.
    mirror_average: bool = False
    # False gives the inverse dynamics motion tokens at their positions and no image content (needs
    # motion_features "correlation"): a model with a few labelled drives can no longer recognise the
    # scene and replay the turn it learned there, only read how the image moved.
    appearance_tokens: bool = True
    # A learnable per-step position embedding in the pose head lets it replay a memorised yaw
    # profile instead of reading each action; false makes every step read only its own action.
    pose_step_embedding: bool = True
    # What the pose head's scale token predicts: "step" (the paper: log of the mean step length s) or
    # "speed" (log of the mean speed in m/s; s = speed x the window's mean frame interval). With
    # "step" the model must learn from the timestamp embedding that a 1 fps step is five 5 fps steps,
    # and at CPU scale it under-estimates low-rate steps; "speed" makes that dependence exact.
    scale_output: str = "step"
    # Translation targets are t / max(s, translation_floor). The paper's 1 m floor keeps slow windows
    # in metres, so only the translation head can say "standing" (the scale token's s < 1 changes
    # nothing); 0 normalises every window by its own s, and a small s alone then stops the camera.
    translation_floor: float = 1.0
    # VQ-VAE image tokenizer (stage 0, frozen afterwards).
    vq_codebook_size: int = 256
    vq_code_dim: int = 32
    vq_hidden: int = 64
    vq_downsample: int = 16  # code grid = image / vq_downsample
    vq_beta: float = 0.25  # commitment weight
    vq_ema_decay: float = 0.99
    # Forward-dynamics ST-transformer + extra blocks predicting next-frame code logits.
    fdm_layers: int = 2
    fdm_extra_layers: int = 2  # the paper uses 4 (paper preset); tiny halves it for CPU training
    # Pose head: learnable metric-scale token + 15 action tokens, non-causal transformer.
    pose_layers: int = 2
    pose_width: int = 128
    pose_heads: int = 4

    @property
    def grid(self) -> tuple[int, int]:
        return self.image_height // self.patch_size, self.image_width // self.patch_size

    @property
    def code_grid(self) -> tuple[int, int]:
        return self.image_height // self.vq_downsample, self.image_width // self.vq_downsample


# Labelled KITTI stretches of the shared data used for training; 03_head and 01_head are for testing.
TRAIN_SEQUENCES = ("00_head", "07_head", "06_head")


@dataclass
class DataConfig:
    # Frame rate of a training window, drawn per window in [fps_min, fps_max] from real timestamps.
    fps_min: float = 1.0
    fps_max: float = 4.0
    eval_fps: float = 2.0
    # Windows whose mean ground-truth step is below this are near-stationary: left out of evaluation.
    min_mean_step_m: float = 0.1
    # Sources: KITTI-format sequence folders, video files, image folders, rosbag2 bags (globs allowed,
    # relative paths are resolved against the repository root). The KITTI test sequences (03, 01) are
    # never listed: pretraining on them would leak the test set into every result.
    pretrain_sources: list[str] = field(default_factory=lambda: [
        "../shared/data/unlabeled/*.mp4", "../shared/data/videos/*.mp4",
        *(f"../shared/data/kitti/{name}" for name in TRAIN_SEQUENCES)])
    posttrain_sequences: list[str] = field(default_factory=lambda: [
        f"../shared/data/kitti/{name}" for name in TRAIN_SEQUENCES])
    image_topic: str = "/camera/image_raw"  # for rosbag2 sources
    image_folder_fps: float = 10.0  # image folders carry no timestamps
    hflip_prob: float = 0.0  # chance a training window is mirrored left-right (motion mirrored too)
    # Exact geometric augmentation of labelled windows (data/augment.py), each a chance per window:
    rotation_aug_prob: float = 0.0  # warp by H = K R K^-1 for a smooth random camera rotation
    rotation_aug_max_deg: float = 5.0  # largest added yaw (pitch and roll a quarter of it)
    reverse_prob: float = 0.0  # the window played backwards (every step inverted)
    static_prob: float = 0.0  # 16 copies of one frame: a standing camera, zero motion
    photometric_prob: float = 0.0  # brightness / contrast / gamma jitter (labels unchanged)
    # The window's timestamps stretched by a factor log-uniform in [1/time_scale_max, time_scale_max]:
    # the same frames at another speed. With scale_output "speed" the speed target changes and the step
    # does not, so speed can no longer be read off the scene (which predicts it on a few sequences)
    # and must come from the motion between frames.
    time_scale_prob: float = 0.0
    time_scale_max: float = 2.0
    # Share of post-training windows drawn from self-labelled sequences (training/self_label.py:
    # unlabeled clips with the classical pipeline's motion, no metric scale) when both kinds are listed.
    self_label_share: float = 0.5
    # Cut / frozen-frame detection on the decoded low-resolution frames.
    cut_threshold: float = 4.0  # a pair is a cut when this many times more different than its neighbours
    frozen_threshold: float = 0.004  # a frame is a copy when < this fraction of thumbnail pixels changed
    num_workers: int = 0
    # Folder for decoded, fitted frames reused by later runs ("" = decode every run); relative paths
    # are resolved against the repository root. Safe to delete at any time.
    frame_cache: str = ""


@dataclass
class TrainConfig:
    stage: str = "pretrain"  # "vqvae" | "pretrain" | "posttrain"
    seed: int = 0
    batch_size: int = 4  # per process
    max_steps: int = 200
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 20
    grad_clip: float = 1.0
    # Recompute each transformer block's activations in the backward pass instead of keeping them:
    # the same results for about one more forward pass, in a fraction of the memory.
    recompute_activations: bool = False
    freeze_idm: bool = True  # post-training: inverse-dynamics model frozen (default) or fine-tuned
    init_from: str = ""  # checkpoint of the previous stage (vqvae for pretrain, pretrain for posttrain)
    vqvae_checkpoint: str = ""  # frozen tokenizer used by pretraining
    out_dir: str = "runs/default"
    log_every: int = 10
    ckpt_every: int = 50
    # Loss weights for post-training (L1 on t, q, FoV, log s).
    w_translation: float = 1.0
    w_rotation: float = 1.0
    w_fov: float = 0.1
    w_scale: float = 0.5
    # Each moving step's direction error in degrees (0: the paper's losses only); see pose_losses.
    w_direction: float = 0.0
    # "quaternion_l1" (the paper: L1 on quaternion components, about 0.01 for a degree, so the
    # gradient settles on the median: no rotation) or "rotvec_deg" (L1 on rotation vectors in
    # degrees, as large as the angle itself).
    rotation_loss: str = "quaternion_l1"


@dataclass
class LaPoseConfig:
    preset: str = "tiny"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> "LaPoseConfig":
        """Build from a (possibly partial) dict: ``preset`` first, then the overrides."""
        d = dict(d)
        unknown = set(d) - {"preset", "model", "data", "train"}
        if unknown:
            raise ConfigError(f"{source}: unknown top-level key(s) {sorted(unknown)}; "
                              "expected preset, model, data, train")
        cfg = preset(d.pop("preset", "tiny"))
        for section, values in d.items():
            if values is None:
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: '{section}' must be a mapping, got {type(values).__name__}")
            apply_fields(getattr(cfg, section), values, f"{source}: {section}")
        cfg.validate(source)
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> "LaPoseConfig":
        import yaml

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            d = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        return cls.from_dict(d, str(path))

    @classmethod
    def from_json(cls, path: str | Path) -> "LaPoseConfig":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read config JSON: {e}") from None
        return cls.from_dict(d, str(path))

    def validate(self, source: str = "<config>") -> None:
        m = self.model
        for name, size in (("image_height", m.image_height), ("image_width", m.image_width)):
            if size % m.patch_size or size % m.vq_downsample:
                raise ConfigError(f"{source}: model.{name}={size} must be a multiple of patch_size "
                                  f"({m.patch_size}) and vq_downsample ({m.vq_downsample})")
        if m.width % m.heads or m.pose_width % m.pose_heads:
            raise ConfigError(f"{source}: width must be divisible by heads")
        if m.num_frames < 2:
            raise ConfigError(f"{source}: model.num_frames must be >= 2")
        if m.time_embedding_at not in ("encoder", "dynamics"):
            raise ConfigError(f"{source}: model.time_embedding_at must be 'encoder' or 'dynamics'")
        if m.pose_head_input not in ("action", "bottleneck"):
            raise ConfigError(f"{source}: model.pose_head_input must be 'action' or 'bottleneck'")
        if m.pose_head_input == "bottleneck" and not m.use_bottleneck:
            raise ConfigError(f"{source}: pose_head_input='bottleneck' needs use_bottleneck=true")
        if m.scale_output not in ("step", "speed"):
            raise ConfigError(f"{source}: model.scale_output must be 'step' or 'speed'")
        if not m.translation_floor >= 0:
            raise ConfigError(f"{source}: model.translation_floor must be >= 0 (metres), "
                              f"got {m.translation_floor}")
        if m.motion_features not in ("none", "correlation"):
            raise ConfigError(f"{source}: model.motion_features must be 'none' or 'correlation'")
        if m.motion_centred and m.motion_features != "correlation":
            raise ConfigError(f"{source}: model.motion_centred=true needs "
                              f"model.motion_features='correlation'")
        if m.motion_flow and m.motion_features != "correlation":
            raise ConfigError(f"{source}: model.motion_flow=true needs "
                              f"model.motion_features='correlation'")
        # Switches that read the flow's rotation: a known choice, and anything but the first needs it.
        for name, choices in (("rotation_fit", ("median", "focus", "focus_roll", "head_focus")),
                              ("translation_frame", ("camera", "half_turn"))):
            value = getattr(m, name)
            if value not in choices:
                raise ConfigError(f"{source}: model.{name} must be one of {', '.join(map(repr, choices))}, "
                                  f"got {value!r}")
            if value != choices[0] and not m.rotation_from_flow:
                raise ConfigError(f"{source}: model.{name}={value!r} needs model.rotation_from_flow=true")
        if m.travel_height not in ("head", "flow"):
            raise ConfigError(f"{source}: model.travel_height must be 'head' or 'flow', got {m.travel_height!r}")
        if m.travel_height != "head" and m.rotation_fit != "head_focus":
            raise ConfigError(f"{source}: model.travel_height={m.travel_height!r} needs model.rotation_fit='head_focus'")
        if m.refit_matches not in ("all", "mutual"):
            raise ConfigError(f"{source}: model.refit_matches must be 'all' or 'mutual', got {m.refit_matches!r}")
        if m.refit_matches != "all" and m.rotation_fit != "head_focus":
            raise ConfigError(f"{source}: model.refit_matches={m.refit_matches!r} needs model.rotation_fit='head_focus'")
        if m.step_lengths not in ("head", "flow"):
            raise ConfigError(f"{source}: model.step_lengths must be 'head' or 'flow', got {m.step_lengths!r}")
        if m.step_lengths != "head" and m.rotation_fit != "head_focus":
            raise ConfigError(f"{source}: model.step_lengths={m.step_lengths!r} needs model.rotation_fit='head_focus'")
        if m.fine_flow and m.rotation_fit != "head_focus":
            raise ConfigError(f"{source}: model.fine_flow=true needs model.rotation_fit='head_focus'")
        if m.wide_shift and not m.motion_centred:
            raise ConfigError(f"{source}: model.wide_shift=true needs model.motion_centred=true")
        if m.refit_roll and m.rotation_fit != "head_focus":
            raise ConfigError(f"{source}: model.refit_roll=true needs model.rotation_fit='head_focus'")
        if not m.use_intrinsics and m.rotation_fit != "head_focus":
            raise ConfigError(f"{source}: model.use_intrinsics=false needs model.rotation_fit='head_focus'")
        if m.rotation_from_flow and m.motion_features != "correlation":
            raise ConfigError(f"{source}: model.rotation_from_flow=true needs "
                              f"model.motion_features='correlation'")
        if not m.appearance_tokens and m.motion_features != "correlation":
            raise ConfigError(f"{source}: model.appearance_tokens=false needs "
                              f"model.motion_features='correlation' (the model would see nothing)")
        if m.motion_features == "correlation" and (m.patch_size % 8 or m.image_height % 16
                                                   or m.image_width % 16):
            raise ConfigError(f"{source}: model.motion_features='correlation' needs patch_size a "
                              "multiple of 8 and the image size a multiple of 16")
        if self.train.rotation_loss not in ("quaternion_l1", "rotvec_deg"):
            raise ConfigError(f"{source}: train.rotation_loss must be 'quaternion_l1' or 'rotvec_deg'")
        if self.train.stage not in ("vqvae", "pretrain", "posttrain"):
            raise ConfigError(f"{source}: train.stage must be vqvae, pretrain or posttrain")
        if not 0 < self.data.fps_min <= self.data.fps_max:
            raise ConfigError(f"{source}: need 0 < data.fps_min <= data.fps_max")
        if not (0 <= self.data.time_scale_prob <= 1 and self.data.time_scale_max >= 1):
            raise ConfigError(f"{source}: need 0 <= data.time_scale_prob <= 1 and data.time_scale_max >= 1")
        if not 0 <= self.data.self_label_share <= 1:
            raise ConfigError(f"{source}: data.self_label_share must be within [0, 1], "
                              f"got {self.data.self_label_share}")


def apply_fields(obj: Any, values: dict[str, Any], where: str) -> None:
    """Set ``values`` on a config section, type-checked; ``where`` names the source in errors."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown key '{key}' (known: {', '.join(sorted(fields))})")
        current = getattr(obj, key)
        if isinstance(current, tuple):
            value = tuple(value)
        elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif current is not None and not isinstance(value, type(current)):
            raise ConfigError(f"{where}: key '{key}' expects {type(current).__name__}, "
                              f"got {type(value).__name__} ({value!r})")
        setattr(obj, key, value)


def preset(name: str) -> LaPoseConfig:
    """A complete configuration by name."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}' (known: {', '.join(PRESETS)})")
    cfg = LaPoseConfig(preset=name)
    apply_fields(cfg.model, PRESETS[name].get("model", {}), f"preset {name}: model")
    apply_fields(cfg.train, PRESETS[name].get("train", {}), f"preset {name}: train")
    return cfg


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # Trains on 2 CPU cores in minutes.
    "tiny": {},
    # Between tiny and paper: a few hours on CPU, minutes on a GPU.
    "small": {"model": dict(image_height=128, image_width=320, patch_size=32, width=256, heads=8,
                            encoder_layers=4, idm_layers=4, fdm_layers=4, pose_layers=4,
                            pose_width=256, pose_heads=8, vq_hidden=128)},
    # The paper: 960x448 input, 64-pixel patches (15x7 tokens), width 1536, 12-layer encoder, T=16.
    "paper": {
        "model": dict(image_height=448, image_width=960, patch_size=64, width=1536, heads=16,
                      encoder_layers=12, idm_layers=12, fdm_layers=12, fdm_extra_layers=4,
                      action_dim=50, pose_layers=4, pose_width=768, pose_heads=12,
                      vq_codebook_size=1024, vq_code_dim=64, vq_hidden=256, vq_downsample=16),
        "train": dict(batch_size=8, lr=1e-4, weight_decay=0.05, warmup_steps=2000,
                      max_steps=200_000, grad_clip=1.0),
    },
}
