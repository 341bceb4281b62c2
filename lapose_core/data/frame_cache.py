"""Sources decoded once, fitted to the model input, and optionally kept on disk between runs.

Decoding every video and JPEG of a training set takes about a minute here and much longer on a
cluster's data, and each stage of each run did it again. With ``data.frame_cache`` set, the fitted
frames and their cut / repeat statistics are written to one folder per source and read back (memory
mapped, so many DataLoader workers or ranks share one copy in the page cache) by every later run.

An entry is keyed by everything its content depends on: the source's path, the size and
modification time of each of its files, the model input size, the decoding width and the
cut / frozen thresholds. A changed source or setting gets a new entry, never a stale one. Entries are
written to a temporary folder and renamed into place, so a run killed while writing leaves no
half-written entry behind; an entry that cannot be read is rebuilt with a warning. A lock file per
entry lets one process build it while others (ranks of one torchrun job) wait and then read it.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lapose_core.config import LaPoseConfig
from lapose_core.data.quality import FrameStats, frame_stats, thumbnail
from lapose_core.data.sources import DataError, FrameReadError, FrameSource, open_source
from lapose_core.data.transforms import fit_to_model
from lapose_core.geometry import horizontal_fov

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # bump when what an entry holds, or how frames are fitted, changes
STATS_FIELDS = ("difference", "dissimilarity", "changed", "is_cut", "is_repeat")


@dataclass
class CachedSource:
    """One source fitted to the model input and held in memory (or memory mapped from the cache)."""

    name: str
    path: Path
    frames: np.ndarray  # (N, H, W, 3) uint8, zeros where unreadable
    timestamps: np.ndarray  # (N,) float64
    readable: np.ndarray  # (N,) bool
    stats: FrameStats
    fov: float  # horizontal FoV of the fitted frames in radians, NaN if unknown
    poses: np.ndarray | None  # (N, 4, 4)
    timeline: np.ndarray  # frame indices windows are drawn from: every frame that is not a copy
    intrinsics: np.ndarray | None = None  # (fx, fy, cx, cy) of the fitted frames, None if unknown

    @property
    def duration(self) -> float:
        return float(self.timestamps[-1] - self.timestamps[0])


def decode_width(cfg: LaPoseConfig) -> int:
    """Videos are decoded only as wide as the model needs: the raw clip is dropped after fitting."""
    return max(320, int(1.5 * cfg.model.image_width))


def fit_source(source: FrameSource | str | Path, cfg: LaPoseConfig) -> CachedSource:
    """Read every frame once: fit it to the model input and compute cut / repeat statistics."""
    out_hw = (cfg.model.image_height, cfg.model.image_width)
    if not isinstance(source, FrameSource):
        source = open_source(source, image_topic=cfg.data.image_topic,
                             image_folder_fps=cfg.data.image_folder_fps, max_width=decode_width(cfg))
    n = len(source)
    frames = np.zeros((n, *out_hw, 3), np.uint8)
    thumbs = np.zeros((n, 32, 64), np.uint8)
    readable = np.ones(n, bool)
    fov = math.nan
    fitted_intrinsics = None
    for i in range(n):
        try:
            image = source.read(i)
        except FrameReadError as e:
            readable[i] = False
            log.debug("%s", e)
            continue
        intrinsics = source.intrinsics_for(image.shape[1], image.shape[0])
        frames[i], fitted = fit_to_model(image, intrinsics, out_hw)
        thumbs[i] = thumbnail(image)
        if fitted is not None and fitted_intrinsics is None:
            fitted_intrinsics = fitted
            fov = horizontal_fov(float(fitted[0]), out_hw[1])
    if not readable.any():
        raise DataError(f"{source.path}: none of its {n} frames could be read")
    stats = frame_stats(thumbs, readable, cfg.data.cut_threshold, cfg.data.frozen_threshold)
    timeline = np.flatnonzero(np.concatenate([[True], ~stats.is_repeat]))
    return CachedSource(source.name, Path(source.path), frames, source.timestamps.copy(), readable,
                        stats, fov, source.poses, timeline, fitted_intrinsics)


def load_source(source: FrameSource | str | Path, cfg: LaPoseConfig,
                cache_dir: Path | None = None) -> CachedSource:
    """``fit_source``, through the on-disk cache when ``cache_dir`` is given.

    Sources the caller opened itself are never cached: how they were opened is not known here.
    """
    if cache_dir is None or isinstance(source, FrameSource):
        return fit_source(source, cfg)
    entry = Path(cache_dir) / cache_key(Path(source), cfg)
    entry.parent.mkdir(parents=True, exist_ok=True)
    # One builder per entry: under torchrun every rank asks for the same sources at once, and the
    # ones that wait read what the first one wrote instead of decoding it again.
    with open(entry.with_name(entry.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if entry.is_dir():
            try:
                return read_entry(entry)
            except Exception as e:  # noqa: BLE001 - any damage to an entry means: build it again
                log.warning("%s: unreadable cache entry (%s); decoding %s again", entry, e, source)
        log.info("decoding %s into the frame cache", source)
        cached = fit_source(source, cfg)
        write_entry(entry, cached)
        return cached


def cache_key(path: Path, cfg: LaPoseConfig) -> str:
    """A digest of the source's files (name, size, mtime) and every setting the entry depends on."""
    path = path.resolve()
    if not path.exists():
        raise DataError(f"{path}: source not found")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    listing = []
    for f in files:
        st = f.stat()
        listing.append((str(f.relative_to(path)) if path.is_dir() else f.name, st.st_size,
                        st.st_mtime_ns))
    settings = {
        "format": CACHE_FORMAT, "path": str(path), "files": listing,
        "input": [cfg.model.image_height, cfg.model.image_width], "decode_width": decode_width(cfg),
        "cut_threshold": cfg.data.cut_threshold, "frozen_threshold": cfg.data.frozen_threshold,
        "image_topic": cfg.data.image_topic, "image_folder_fps": cfg.data.image_folder_fps,
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]
    return f"{path.name}-{digest}"


def write_entry(entry: Path, src: CachedSource) -> None:
    """Write to a temporary folder beside ``entry`` and rename it into place (atomic on POSIX)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        np.save(tmp / "frames.npy", src.frames)
        arrays = {name: getattr(src.stats, name) for name in STATS_FIELDS}
        if src.poses is not None:
            arrays["poses"] = src.poses
        np.savez(tmp / "meta.npz", timestamps=src.timestamps, readable=src.readable,
                 timeline=src.timeline, **arrays)
        (tmp / "source.json").write_text(json.dumps(
            {"name": src.name, "path": str(src.path), "fov": src.fov, "frames": len(src.frames),
             "intrinsics": None if src.intrinsics is None else [float(v) for v in src.intrinsics]}))
        try:
            os.replace(tmp, entry)
        except OSError:
            if not entry.is_dir():  # not a concurrent writer that got there first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_entry(entry: Path) -> CachedSource:
    info = json.loads((entry / "source.json").read_text())
    frames = np.load(entry / "frames.npy", mmap_mode="r")
    with np.load(entry / "meta.npz") as meta:
        arrays = {k: meta[k] for k in meta.files}
    if len(frames) != info["frames"] or len(arrays["timestamps"]) != info["frames"]:
        raise DataError(f"{entry}: {len(frames)} frames stored, {info['frames']} expected")
    stats = FrameStats(**{name: arrays[name] for name in STATS_FIELDS})
    return CachedSource(info["name"], Path(info["path"]), frames, arrays["timestamps"],
                        arrays["readable"], stats, float(info["fov"]), arrays.get("poses"),
                        arrays["timeline"],
                        None if info.get("intrinsics") is None else np.array(info["intrinsics"]))
