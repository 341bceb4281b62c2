"""Geometric self-labels for unlabeled driving video: the classical pipeline's motion, up to scale.

The labelled KITTI heads are three short drives: a pose model trained on them alone learns their
scenes as much as their motion (on a held-out head its yaw comes out at about half the true turn).
Unlabeled clips show many more scenes, and two-view geometry measures their motion without labels:

1. Keyframes every ``1 / rate_hz`` seconds (copied frames never chosen).
2. The focal length is unknown for these clips and two-view geometry cannot tell it: on the KITTI
   heads the number of matches that fit an essential matrix changes by a few percent between 50
   and 110 degrees of field of view, and its peak misses the true 82 by up to 30. So every clip is
   labelled as if seen through the labelled rig's lens *at the model's input*: the focal length,
   in pixels of the frame fitted to the model (:func:`fit_to_model`), of the labelled sequences
   (``model_focal_px``). An image motion of so many model pixels is then labelled with the same
   rotation it has on the labelled sequences; a clip with another lens gets rotations off by the
   ratio of the focal lengths, consistently with its pixels. Its field of view is never a label.
3. Per keyframe step: rotation and translation direction (five-point RANSAC), with the step's length
   relative to the previous one from points triangulated in both (:meth:`ClassicalVO.depth_ratio`).
   A step with few inliers, no parallax (a standing car: no direction), an unknown relative length,
   or a scene cut ends the segment; segments of at least ``min_frames`` keyframes are kept.
4. Each segment is written as a KITTI-format folder (frames, ``poses.txt`` chained from the steps in
   units of its first step, ``times.txt``, ``calib.txt`` with that focal length) plus
   ``self_labels.json``. That file marks the folder as self-labelled: post-training uses its
   rotations and its translations up to a window's scale, never its metric scale or its field of
   view (:func:`is_self_labelled`).

Features on overlays (timestamps, a dashboard, black bars) do not move with the scene and would pull
the essential matrix towards no motion: pixels that hardly change over the clip are masked out.

Pure numpy and OpenCV; no ROS imports.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from lapose_core.data.frame_source import DataError, FrameReadError, FrameSource
from lapose_core.data.quality import THUMBNAIL_SIZE, FrameStats, frame_stats, thumbnail
from lapose_core.data.windows import nearest_indices
from lapose_core.eval.classical import ClassicalVO, Step

log = logging.getLogger(__name__)

SELF_LABELS_FILE = "self_labels.json"


@dataclass
class SelfLabelConfig:
    rate_hz: float = 5.0  # keyframe rate: windows of 1 to 5 fps can be drawn from the segments
    min_inliers: int = 30  # fewer: the step is not trusted (HybridConfig's study: >= 30 is < 1 % off 5 deg)
    min_parallax_px: float = 1.0  # less rotation-compensated image motion: no translation direction
    max_width: int = 640  # frames are decoded (and written) at most this wide
    min_frames: int = 16  # shorter segments hold no window
    # The lens every clip is labelled through: focal length in pixels of the model's input (height,
    # width), the labelled sequences' (:func:`model_focal_px`).
    model_focal_px: float = 0.0
    model_hw: tuple[int, int] = (96, 256)
    static_level: float = 4.0  # grey levels: pixels varying less than this over the clip are overlay
    jpeg_quality: int = 95


def is_self_labelled(path: str | Path) -> bool:
    """A sequence folder written by :func:`write_segment`: motion up to scale, no metric scale or FoV."""
    return (Path(path) / SELF_LABELS_FILE).is_file()


def model_focal_px(intrinsics: np.ndarray, image_size: tuple[int, int], model_hw: tuple[int, int]) -> float:
    """Horizontal focal length, in model-input pixels, of a camera with ``intrinsics`` at
    ``image_size`` (width, height) once its frames are fitted to ``model_hw``."""
    w, h = image_size
    return float(intrinsics[0]) * max(model_hw[1] / w, model_hw[0] / h)


def source_focal_px(model_focal: float, width: int, height: int, model_hw: tuple[int, int]) -> float:
    """The focal length at a ``width`` x ``height`` frame that is ``model_focal`` once fitted."""
    return model_focal / max(model_hw[1] / width, model_hw[0] / height)


def pick_keyframes(timestamps: np.ndarray, stats: FrameStats, readable: np.ndarray,
                   rate_hz: float) -> np.ndarray:
    """Readable, non-copied frames nearest to every ``1 / rate_hz`` seconds (increasing, unique)."""
    usable = readable.copy()
    usable[1:] &= ~stats.is_repeat
    candidates = np.flatnonzero(usable)
    if len(candidates) == 0:
        return candidates
    t = timestamps[candidates]
    wanted = np.arange(t[0], t[-1] + 1e-9, 1.0 / rate_hz)
    return np.unique(candidates[nearest_indices(t, wanted)])


def static_mask(frames: list[np.ndarray], level: float) -> np.ndarray:
    """uint8 mask (255 = use) of the pixels that change over the clip: overlays are left out."""
    grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]).astype(np.float32)
    varying = grey.std(axis=0) >= level
    # Grow the overlay a little: SIFT's descriptors reach past a keypoint's own pixel.
    still = cv2.dilate((~varying).astype(np.uint8), np.ones((9, 9), np.uint8))
    return np.where(still > 0, 0, 255).astype(np.uint8)


@dataclass
class Segment:
    keyframes: np.ndarray  # indices into the clip's frames
    poses: np.ndarray  # (N, 4, 4) camera-to-world, lengths in units of the first step


def chain_segments(steps: list[Step], ratios: list[float | None], breaks: np.ndarray,
                   keyframes: np.ndarray, min_frames: int) -> list[Segment]:
    """Runs of trusted steps chained into poses. ``breaks[k]``: step k is not trusted (it is left
    out); ``ratios[k]``: step k's length over step k-1's (None: unknown, a new run starts at k)."""
    runs, start = [], 0
    for k in range(len(steps)):
        if breaks[k]:
            runs.append((start, k))
            start = k + 1
        elif k > start and ratios[k] is None:
            runs.append((start, k))
            start = k
    runs.append((start, len(steps)))
    segments = []
    for first, end in runs:  # steps first..end-1, keyframes first..end
        if end - first + 1 < min_frames:
            continue
        poses, length = [np.eye(4)], 1.0
        for j in range(first, end):
            if j > first:
                length *= ratios[j]
            rel = steps[j].motion()
            rel[:3, 3] *= length
            poses.append(poses[-1] @ rel)
        segments.append(Segment(keyframes[first:end + 1], np.stack(poses)))
    return segments


def self_label(source: FrameSource, cfg: SelfLabelConfig | None = None) -> tuple[list[Segment], dict]:
    """Segments of ``source`` with their self-labelled poses, and what was found (for the record)."""
    cfg = cfg or SelfLabelConfig()
    n = len(source)
    frames: list[np.ndarray | None] = []
    readable = np.ones(n, bool)
    thumbs = np.zeros((n, THUMBNAIL_SIZE[1], THUMBNAIL_SIZE[0]), np.uint8)
    for i in range(n):
        try:
            frame = source.read(i)
        except FrameReadError as e:
            log.debug("%s", e)
            readable[i], frame = False, None
        else:
            thumbs[i] = thumbnail(frame)
        frames.append(frame)
    if not readable.any():
        raise DataError(f"{source.path}: none of its {n} frames could be read")
    stats = frame_stats(thumbs, readable)
    keyframes = pick_keyframes(source.timestamps, stats, readable, cfg.rate_hz)
    record = {"source": str(source.path), "keyframes": int(len(keyframes))}
    if len(keyframes) < cfg.min_frames:
        return [], {**record, "segments": 0, "reason": "too few keyframes"}

    key_frames = [frames[k] for k in keyframes]
    mask = static_mask(key_frames, cfg.static_level)
    if cfg.model_focal_px <= 0:
        raise ValueError("SelfLabelConfig.model_focal_px must be set (the labelled sequences' focal "
                         "length at the model input, model_focal_px())")
    h, w = key_frames[0].shape[:2]
    f = source_focal_px(cfg.model_focal_px, w, h, cfg.model_hw)
    intrinsics = np.array([f, f, (w - 1) / 2, (h - 1) / 2])
    vo = ClassicalVO(intrinsics, min_inliers=cfg.min_inliers)
    features = [vo.features(im, mask) for im in key_frames]
    steps = [vo.two_view(a, b) for a, b in zip(features[:-1], features[1:])]
    ratios: list[float | None] = [None] + [vo.depth_ratio(p, c) if p.ok and c.ok else None
                                           for p, c in zip(steps[:-1], steps[1:])]
    cut = np.array([stats.is_cut[a:b].any() for a, b in zip(keyframes[:-1], keyframes[1:])])
    untrusted = np.array([not s.ok or s.parallax_px < cfg.min_parallax_px for s in steps])
    segments = chain_segments(steps, ratios, cut | untrusted, keyframes, cfg.min_frames)
    record.update(hfov_deg=round(math.degrees(2 * math.atan(w / 2 / f)), 2),
                  intrinsics=intrinsics.tolist(), steps=len(steps), cuts=int(cut.sum()),
                  untrusted=int(untrusted.sum()),
                  unknown_lengths=int(sum(r is None for r in ratios[1:])),
                  segments=len(segments), segment_frames=[len(s.keyframes) for s in segments])
    return segments, record


def write_segment(folder: Path, source: FrameSource, segment: Segment, intrinsics: np.ndarray,
                  record: dict, cfg: SelfLabelConfig) -> None:
    """A KITTI-format folder for ``segment``, written beside and then moved into place, so a killed
    run never leaves a half-written sequence that looks complete. A folder already there (a run
    killed before its clip's record was written) is replaced."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "images").mkdir(parents=True)
    for j, k in enumerate(segment.keyframes):
        image = source.read(int(k))
        cv2.imwrite(str(tmp / "images" / f"{j:06d}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
    h, w = image.shape[:2]
    np.savetxt(tmp / "poses.txt", segment.poses[:, :3, :].reshape(len(segment.poses), 12), fmt="%.9f")
    stamps = source.timestamps[segment.keyframes]
    np.savetxt(tmp / "times.txt", stamps - stamps[0], fmt="%.6f")
    np.savetxt(tmp / "calib.txt", np.array([[*intrinsics, w, h]]), fmt="%.6f")
    meta = {**record, "first_frame": int(segment.keyframes[0]), "frames": int(len(segment.keyframes)),
            "metric_scale": False, "fov_known": False, "config": asdict(cfg)}
    (tmp / SELF_LABELS_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
