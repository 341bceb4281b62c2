"""Pose inference for evaluation and the ROS node.

``PoseEstimator`` splits the post-trained model into the pieces a streaming node needs: the
per-frame encoder (run once per new frame, its output cached), for models with motion features the
pair part (one pair of consecutive frames' correlation read out into motion tokens, run once per new
frame, cached while the pair is in the window) and the window head (inverse dynamics + pose head over
16 cached frames). Each piece runs on one of three backends:

- ``tensorrt``: Torch-TensorRT (dynamo IR), fp16, static shapes (one frame; one frame pair; one
  16-frame window); the engines are cached on disk, keyed by checkpoint digest, GPU name and library
  versions.
- ``compile``: ``torch.compile``.
- ``eager``: plain PyTorch.

An unavailable backend falls back to the next one in that order with one log line saying why.

With ``model.mirror_average`` every frame is also encoded flipped left to right, and every window
runs as a batch of two, direct and mirrored; the mirrored motion, reflected back, is averaged with
the direct one (:func:`average_with_mirror`). The mirror is about the model input's centre.

Models that refit each step's rotation about the head's direction (``rotation_fit`` head_focus) also
take the camera's field of view and principal point where they are known, from the intrinsics passed
to :meth:`PoseEstimator.predict_features` or set as ``PoseEstimator.intrinsics`` (the node's
CameraInfo); otherwise the predicted field of view and the image centre.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from . import ASSETS_DIR, geometry
from .config import LaPoseConfig
from .model.lapose import LaPose

log = logging.getLogger(__name__)

BACKENDS = ("tensorrt", "compile", "eager")
DEFAULT_CHECKPOINT = ASSETS_DIR / "default_model"


class InferenceError(RuntimeError):
    """The estimator cannot run as asked (missing checkpoint, bad input shape, ...)."""


@dataclass
class WindowPrediction:
    relative: np.ndarray  # (T-1, 4, 4) step motions in metres: frame k+1 expressed in frame k (optical)
    poses: np.ndarray  # (T, 4, 4) camera-to-first-frame poses
    scale: float  # predicted mean step length, metres
    fov: float  # predicted horizontal field of view, radians

    @property
    def finite(self) -> bool:
        return bool(np.isfinite(self.relative).all() and np.isfinite(self.scale))


class FramePart(nn.Module):
    """(M, 3, H, W) frames -> what is cached per frame.

    With the timestamp embedding at the dynamics input (the default) that is the encoder's output
    (M, N, C), which does not depend on the window. With it at the encoder input (the paper's exact
    tokenizer) a frame's encoding changes with its time in the window, so the frame itself is cached
    and the whole window is encoded again at every prediction. Models with motion features also
    cache each frame's fine feature map (M, D, h, w), the input of :class:`PairPart`.
    """

    def __init__(self, model: LaPose):
        super().__init__()
        self.encoder = model.encoder
        self.motion = model.motion
        self.cache_tokens = model.cfg.time_embedding_at == "dynamics"

    def forward(self, frames: torch.Tensor):
        cached = self.encoder(frames) if self.cache_tokens else frames
        if self.motion is None:
            return cached
        return cached, self.motion.feature_maps(frames)


class PairPart(nn.Module):
    """(M, D, h, w) feature maps of frames t and t+1 -> (M, N, C) motion tokens of frame t+1 [and,
    with ``rotation_from_flow``, the pair's flow reading (``LaPose.flow_reading``)]."""

    def __init__(self, model: LaPose):
        super().__init__()
        self.model = model

    def forward(self, earlier: torch.Tensor, later: torch.Tensor):
        tokens, pixel_flow = self.model.motion.pair(earlier, later)
        return tokens if pixel_flow is None else (tokens, self.model.flow_reading(pixel_flow))


class WindowPart(nn.Module):
    """(B, T, ...) cached frame features, (B, T) timestamps [, (B, T-1, N, C) motion tokens of the
    window's pairs [, their flow readings [, (B, 3) the camera (``LaPose.pose``), for a model that
    ``refits_rotation``]]] -> translation, quaternion, fov, scale."""

    def __init__(self, model: LaPose):
        super().__init__()
        self.model = model

    def forward(self, cached: torch.Tensor, timestamps: torch.Tensor,
                motion: torch.Tensor | None = None, flow_reading: torch.Tensor | None = None,
                camera: torch.Tensor | None = None):
        tokens = (cached if self.model.cfg.time_embedding_at == "dynamics"
                  else self.model.encode_frames(cached, timestamps))
        if motion is not None:  # the window's first frame has no pair inside the window
            motion = self.model.motion.per_frame(motion)
        out = self.model.pose(self.model.actions(tokens, timestamps, motion=motion), timestamps,
                              flow_reading, camera)
        return out["translation"], out["quaternion"], out["fov"], out["scale"]


def average_with_mirror(translation: torch.Tensor, quaternion: torch.Tensor, fov: torch.Tensor,
                        scale: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Outputs of a batch (direct window, the same window mirrored) -> one window's outputs.

    Mirroring the image is the camera frame's x -> -x: a step (R, t) is seen as (M R M, M t) with
    M = diag(-1, 1, 1), whose quaternion is (w, x, -y, -z). The mirrored view is reflected back and
    the two are averaged: translations and scales as they are, rotations as the sign-aligned,
    normalised sum of their quaternions (for two unit quaternions, exactly their geodesic midpoint).
    """
    flip = torch.tensor([-1.0, 1.0, 1.0], dtype=translation.dtype, device=translation.device)
    conj = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=quaternion.dtype, device=quaternion.device)
    direct, mirrored = quaternion[:1], quaternion[1:] * conj
    mirrored = torch.where((direct * mirrored).sum(-1, keepdim=True) < 0, -mirrored, mirrored)
    q = torch.nn.functional.normalize(direct + mirrored, dim=-1)
    t = 0.5 * (translation[:1] + translation[1:] * flip)
    return t, q, fov.mean(0, keepdim=True), scale.mean(0, keepdim=True)


class PairCache:
    """What the pair part gave for the frame pairs seen recently (motion tokens [, flow reading]), keyed
    by the identity of the two cached maps.

    A sliding window shares 14 of its 15 pairs with the previous one. Each entry holds both maps, so
    while it is cached neither id can be reused by another tensor.
    """

    def __init__(self, size: int):
        self.size = size
        self.entries: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def get(self, earlier: torch.Tensor, later: torch.Tensor, compute) -> torch.Tensor:
        key = (id(earlier), id(later))
        hit = self.entries.pop(key, None)
        if hit is None:
            hit = (earlier, later, compute(earlier, later))
        self.entries[key] = hit  # most recently used last
        while len(self.entries) > self.size:
            del self.entries[next(iter(self.entries))]
        return hit[2]


@contextmanager
def intra_op_threads(count: int | None):
    """torch's intra-op thread count set to ``count`` for the block (None: left as it is)."""
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _on_cpu_threads(method):
    """Runs a :class:`PoseEstimator` method with its ``cpu_threads`` (on the CPU only)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with intra_op_threads(self.cpu_threads if self.device.type == "cpu" else None):
            return method(self, *args, **kwargs)
    return wrapper


class PoseEstimator:
    """``cpu_threads``: torch's intra-op threads while the estimator runs on the CPU (None: torch's
    setting). One by default: the bundled-size model's ops are small (about a thousand a window), so
    a second thread gains little (a window in 57 ms on two threads, 62 on one), and when the estimator
    runs on another thread than the one that loaded it (the node's processing thread), the two
    threads' OpenMP teams outnumber the cores, their workers sleep between ops instead of spinning
    and a window takes 80-100 ms. One thread also leaves a core to the ROS executor and to the
    hybrid's feature matching. A paper-size model wants every core (None): one thread takes it from
    9 to 17 s a window. Same thread count, same outputs: the node and the offline evaluation agree.
    The count is torch's, process-wide, for the length of each call (restored after it)."""

    def __init__(self, model: LaPose, config: LaPoseConfig, *, device: str = "cpu",
                 backend: str = "eager", checkpoint_name: str = "random",
                 checkpoint_digest: str = "", engine_cache_dir: str | Path | None = None,
                 cpu_threads: int | None = 1):
        if cpu_threads is not None and cpu_threads < 1:
            raise InferenceError(f"cpu_threads must be at least 1 (or None), got {cpu_threads}")
        self.cpu_threads = cpu_threads
        self.config = config
        self.num_frames = config.model.num_frames
        self.fps = config.data.eval_fps
        self.checkpoint_name = checkpoint_name
        self.device = torch.device(_resolve_device(device))
        self.model = model.to(self.device).eval()
        self.model.objective = "posttrain"
        self.views = 2 if config.model.mirror_average else 1  # direct [and mirrored]
        self.dtype = torch.float32
        self.frame_part: nn.Module = FramePart(self.model)
        self.pair_part: nn.Module | None = PairPart(self.model) if self.model.motion is not None else None
        self.window_part: nn.Module = WindowPart(self.model)
        # Two windows' worth: evaluation at several strides interleaves windows over the same frames.
        self.pair_cache = PairCache(2 * self.num_frames)
        # The camera's (fx, fy, cx, cy) in the pixels of the images passed in, when known (the node
        # sets it from CameraInfo), used by a model that refits_rotation. The size of the last image
        # encoded maps it to the model's input.
        self.intrinsics: tuple[float, float, float, float] | None = None
        self._image_hw: tuple[int, int] | None = None
        self.backend = self._set_backend(backend, checkpoint_digest, engine_cache_dir)

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, checkpoint: str | Path | None = None, device: str = "cpu", backend: str = "eager",
             engine_cache_dir: str | Path | None = None, cpu_threads: int | None = 1) -> "PoseEstimator":
        """Load a post-trained checkpoint (a checkpoint or run folder); None = the bundled model."""
        from .train.checkpoint import load_model_weights, read_config

        path = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
        if not path.exists():
            raise InferenceError(f"checkpoint not found: {path}" + (
                "" if checkpoint else " (the bundled default model is missing from this install)"))
        config = read_config(path)
        model = LaPose(config.model)
        load_model_weights(path, model)
        return cls(model, config, device=device, backend=backend, checkpoint_name=str(path),
                   checkpoint_digest=_digest(path), engine_cache_dir=engine_cache_dir,
                   cpu_threads=cpu_threads)

    @classmethod
    def random(cls, preset: str = "tiny", seed: int = 0, device: str = "cpu",
               backend: str = "eager", model: dict | None = None,
               cpu_threads: int | None = 1) -> "PoseEstimator":
        """Random weights of a preset (``model`` overrides its fields): for tests and benchmarks of
        speed, never for accuracy."""
        cfg = LaPoseConfig.from_dict({"preset": preset, "model": model or {}})
        torch.manual_seed(seed)
        dev = _resolve_device(device)
        with torch.device(dev):
            net = LaPose(cfg.model)
        return cls(net, cfg, device=dev, backend=backend,
                   checkpoint_name=f"random:{cfg.preset}:seed{seed}", cpu_threads=cpu_threads)

    def _set_backend(self, backend: str, digest: str, cache_dir: str | Path | None) -> str:
        if backend not in BACKENDS:
            raise InferenceError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")
        for candidate in BACKENDS[BACKENDS.index(backend):]:
            try:
                if candidate == "tensorrt":
                    self._compile_tensorrt(digest, cache_dir)
                elif candidate == "compile":
                    self.frame_part = torch.compile(self.frame_part)
                    self.window_part = torch.compile(self.window_part)
                    if self.pair_part is not None:
                        self.pair_part = torch.compile(self.pair_part)
                    self._warm_up()
                return candidate
            except Exception as e:  # noqa: BLE001 - any failure means: use the next backend
                self.model.float()  # a failed TensorRT build may have left the weights in fp16
                self.frame_part, self.window_part = FramePart(self.model), WindowPart(self.model)
                self.pair_part = PairPart(self.model) if self.model.motion is not None else None
                self.dtype = torch.float32
                log.warning("backend '%s' unavailable (%s: %s); falling back to '%s'", candidate,
                            type(e).__name__, str(e).splitlines()[0] if str(e) else "",
                            BACKENDS[BACKENDS.index(candidate) + 1])
        return "eager"

    def example_inputs(self) -> tuple[tuple[torch.Tensor, ...], ...]:
        """Static-shape inputs of (frame part, window part[, pair part]); batch = views."""
        m, v = self.config.model, self.views
        frame = torch.zeros(v, 3, m.image_height, m.image_width, device=self.device, dtype=self.dtype)
        cached_shape = ((m.grid[0] * m.grid[1], m.width) if m.time_embedding_at == "dynamics"
                        else (3, m.image_height, m.image_width))
        tokens = torch.zeros(v, self.num_frames, *cached_shape, device=self.device, dtype=self.dtype)
        ts = (torch.arange(self.num_frames, device=self.device, dtype=self.dtype) / self.fps)[None]
        ts = ts.expand(v, -1).contiguous()
        if self.model.motion is None:
            return (frame,), (tokens, ts)
        maps = torch.zeros(v, self.model.motion.map_channels, m.image_height // 4, m.image_width // 4,
                           device=self.device, dtype=self.dtype)
        motion = torch.zeros(v, self.num_frames - 1, m.grid[0] * m.grid[1], m.width,
                             device=self.device, dtype=self.dtype)
        window = (tokens, ts, motion)
        if m.rotation_from_flow:  # the pairs' flow readings: fitted angles, or the flows themselves
            flow_size = 3 * maps.shape[-2] * maps.shape[-1]  # (dy, dx, mutual) per cell: LaPose.flow_reading
            reading = {"focus": (2,), "focus_roll": (3,),
                       "head_focus": (2 + flow_size,)}.get(m.rotation_fit, (2, *maps.shape[-2:]))
            window += (torch.zeros(v, self.num_frames - 1, *reading, device=self.device, dtype=self.dtype),)
        if self.model.refits_rotation:
            window += (torch.zeros(v, 3, device=self.device, dtype=self.dtype),)
        return (frame,), window, (maps, maps.clone())

    def engine_key(self, digest: str, gpu: str, version: str) -> str:
        """The name compiled engines are cached under: what they were built from and for."""
        # "p2": the window part takes pair motion tokens, not feature maps (older engines differ);
        # "v2": a batch of two views (mirror averaging); "f": pairs also give their pixel flow;
        # "focuspair": each pair gives its focus-of-expansion fit (pitch, yaw) instead of its flow
        # (the window part once took the flows and fitted them itself: "focus"); "focusroll": and roll;
        # "headfocus": the fit and the flow, refitted in the window part; "cam": with the camera's
        # field of view and principal point given to the window part. Inference-only switches
        # (use_intrinsics, travel_height, refit_roll, refit_matches, wide_shift) change the graph
        # but not the weights, and the flow reading gained each cell's mutual check (2 + 3 h w
        # values, with refit_roll and refit_matches in the config): the model config's digest keys
        # them all.
        m = self.config.model
        fit = {"focus": "_focuspair", "focus_roll": "_focusroll",
               "head_focus": "_headfocuscam"}.get(m.rotation_fit, "")
        fit += "_m" + hashlib.sha256(json.dumps(vars(m), sort_keys=True).encode()).hexdigest()[:8]
        return (f"{digest or self.checkpoint_name.replace('/', '_')}_{gpu}_trt{version}_p2"
                + ("_v2" if self.views == 2 else "") + ("_f" if m.rotation_from_flow else "") + fit)

    def _compile_tensorrt(self, digest: str, cache_dir: str | Path | None) -> None:
        if self.device.type != "cuda":
            raise InferenceError("TensorRT needs device 'cuda'")
        try:
            import torch_tensorrt
        except ImportError as e:
            raise InferenceError(f"torch_tensorrt is not installed ({e})") from None
        self.model.half()
        self.dtype = torch.float16
        inputs = self.example_inputs()
        cache = Path(cache_dir or Path.home() / ".cache" / "lapose" / "tensorrt")
        cache.mkdir(parents=True, exist_ok=True)
        gpu = torch.cuda.get_device_name(self.device).replace(" ", "_")
        key = self.engine_key(digest, gpu, torch_tensorrt.__version__)
        modules = [("frame", FramePart(self.model)), ("window", WindowPart(self.model))]
        if self.pair_part is not None:
            modules.append(("pair", PairPart(self.model)))
        parts = []
        for (name, module), inputs in zip(modules, inputs):
            path = cache / f"{key}_{name}.ep"
            if path.is_file():
                log.info("loading cached TensorRT engine %s", path)
                parts.append(torch.export.load(str(path)).module())
                continue
            log.info("compiling %s part with TensorRT (fp16, static shapes); cached at %s", name, path)
            compiled = torch_tensorrt.compile(module, ir="dynamo", arg_inputs=list(inputs))
            tmp = path.with_suffix(".tmp")
            torch_tensorrt.save(compiled, str(tmp), arg_inputs=list(inputs))
            tmp.replace(path)
            parts.append(compiled)
        self.frame_part, self.window_part = parts[:2]
        if self.pair_part is not None:
            self.pair_part = parts[2]

    @_on_cpu_threads
    def _warm_up(self) -> None:
        inputs = self.example_inputs()
        with torch.inference_mode():
            for part, args in zip((self.frame_part, self.window_part, self.pair_part), inputs):
                part(*args)

    # ------------------------------------------------------------------ inference
    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 RGB (or (H, W) grayscale) at any size -> (3, h, w) model input."""
        from .data.transforms import fit_to_model, to_tensor

        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InferenceError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
        m = self.config.model
        fitted, _ = fit_to_model(image, None, (m.image_height, m.image_width))
        return to_tensor(fitted)

    @_on_cpu_threads
    @torch.inference_mode()
    def encode_frame(self, image: np.ndarray) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """One camera frame -> what the window keeps of it, one row per view (encoder features
        (views, N, C) by default; with motion features, the pair (features, fine feature maps))."""
        x = self.preprocess(image).to(self.device, self.dtype)[None]
        self._image_hw = (int(image.shape[0]), int(image.shape[1]))
        if self.views == 2:
            x = torch.cat([x, x.flip(-1)])
        out = self.frame_part(x)
        return tuple(out) if isinstance(out, (tuple, list)) else out

    @_on_cpu_threads
    @torch.inference_mode()
    def predict_features(self, features: Sequence[torch.Tensor], timestamps: Sequence[float],
                         intrinsics: Sequence[float] | None = None) -> WindowPrediction:
        """16 cached frame features + their timestamps (seconds) -> the window's motion.

        ``intrinsics``: the camera's (fx, fy, cx, cy) for this window, instead of
        :attr:`intrinsics`."""
        if len(features) != self.num_frames or len(timestamps) != self.num_frames:
            raise InferenceError(f"a window needs {self.num_frames} frames, got {len(features)} "
                                 f"features and {len(timestamps)} timestamps")
        per_frame = [_as_tuple(f) for f in features]
        cached = torch.stack([f[0] for f in per_frame], 1).to(self.device, self.dtype)
        ts = np.asarray(timestamps, dtype=np.float64)
        ts = torch.as_tensor(ts - ts[0], dtype=self.dtype, device=self.device)[None]
        ts = ts.expand(self.views, -1).contiguous()
        extra = []
        if self.pair_part is not None:
            maps = [f[1] for f in per_frame]
            pairs = [self.pair_cache.get(a, b, self._pair_outputs) for a, b in zip(maps, maps[1:])]
            extra += [torch.stack(part, 1) for part in zip(*map(_as_tuple, pairs))]  # tokens [, flows]
        if self.model.refits_rotation:
            extra.append(self._camera(self.intrinsics if intrinsics is None else intrinsics))
        t, q, fov, scale = self.window_part(cached, ts, *extra)
        if self.views == 2:
            t, q, fov, scale = average_with_mirror(t.float(), q.float(), fov.float(), scale.float())
        rel = geometry.poses_from_prediction(t.double(), q.double(), scale.double(),
                                             self.config.model.translation_floor)[0]
        return WindowPrediction(relative=rel.cpu().numpy(),
                                poses=geometry.compose_relative(rel).cpu().numpy(),
                                scale=float(scale[0]), fov=float(fov.float().mean()))

    def _camera(self, intrinsics: Sequence[float] | None) -> torch.Tensor:
        """(views, 3) the camera at the model's input, per view (``LaPose.pose``): horizontal field
        of view, and where the optical axis meets the image, pixels from its centre (mirrored: x
        reflected). Zeros (the predicted field of view, the centre) when the intrinsics are unknown
        or unusable (not finite, fx not positive, or the point outside the image)."""
        from .data.transforms import fitted_intrinsics

        m = self.config.model
        camera = np.zeros(3)
        if intrinsics is not None and len(intrinsics) != 4:
            raise InferenceError(f"intrinsics: expected (fx, fy, cx, cy), got {tuple(intrinsics)}")
        if intrinsics is not None and self._image_hw is not None:
            fx, _, cx, cy = fitted_intrinsics(intrinsics, self._image_hw, (m.image_height, m.image_width))
            fov = 2 * np.arctan(m.image_width / (2 * fx)) if fx > 0 else np.nan
            centred = np.array([fov, cx - (m.image_width - 1) / 2, cy - (m.image_height - 1) / 2])
            if np.isfinite(centred).all() and (np.abs(centred[1:]) <= [m.image_width / 2, m.image_height / 2]).all():
                camera = centred
        views = np.array([camera, camera * [1.0, -1.0, 1.0]])[:self.views]
        return torch.as_tensor(views, dtype=self.dtype, device=self.device)

    def _pair_outputs(self, earlier: torch.Tensor, later: torch.Tensor):
        prep = lambda m: m.to(self.device, self.dtype)  # noqa: E731
        return self.pair_part(prep(earlier), prep(later))

    def predict_window(self, images: Sequence[np.ndarray], timestamps: Sequence[float]) -> WindowPrediction:
        return self.predict_features([self.encode_frame(im) for im in images], timestamps)


def _as_tuple(x) -> tuple:
    """A part's output, one tensor or several, as a tuple."""
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _resolve_device(device: str) -> str:
    if device.startswith("cuda") and not torch.cuda.is_available():
        log.warning("device '%s' requested but CUDA is not available; using 'cpu'", device)
        return "cpu"
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise InferenceError(f"unknown device '{device}' (use 'cpu' or 'cuda[:N]')")
    return device


def _digest(path: Path) -> str:
    """Short content digest of a checkpoint's weights: the key of compiled-engine caches."""
    from .train.checkpoint import resolve_checkpoint

    weights = resolve_checkpoint(path) / "model.safetensors"
    h = hashlib.sha256()
    with open(weights, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
