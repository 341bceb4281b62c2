"""Training datasets: random windows of frames at a random frame rate, from cached sources.

Every source is read once, fitted to the model's input size and kept in memory as uint8 (all the data
here is tens of MB of video), together with its cut / repeat statistics; with ``data.frame_cache``
set, that work is done once for all runs (``frame_cache.py``). ``sample(seed)`` then draws a
window deterministically: a source weighted by duration, a frame rate uniform in
[fps_min, fps_max], a start time, then the exact augmentations of ``augment.py``; windows that span a cut, contain copied or unreadable frames, or do
not fit are redrawn, and every drop is counted per reason in ``stats``.

Copied frames (a 25 fps recording stored at 30 fps) are taken out of the timeline before windows are
drawn, so such clips still give windows with honest timestamps; a long freeze then shows up as a gap
that ``window_indices`` rejects.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from lapose_core.config import LaPoseConfig
from lapose_core.data.augment import augment_clip
from lapose_core.data.frame_cache import CachedSource, load_source
from lapose_core.data.quality import bad_window
from lapose_core.data.self_labels import is_self_labelled
from lapose_core.data.sources import DataError, FrameSource, expand_sources
from lapose_core.data.transforms import to_tensor
from lapose_core.data.windows import window_indices

log = logging.getLogger(__name__)

MAX_DRAWS = 200  # redraws per sample before giving up (only reached with almost no usable windows)
FPS_PROBES = 7  # frame rates tried when checking that a source has any usable window


class ClipDataset(torch.utils.data.Dataset):
    """Windows of ``cfg.model.num_frames`` frames drawn deterministically from a seed.

    ``sources`` may be opened :class:`FrameSource` objects or paths (opened one at a time, so raw
    video is never all in memory at once). ``labeled`` datasets also return camera-to-world poses.
    With ``frame_cache``, sources given as paths are fitted once and read back from there.
    """

    def __init__(self, sources: list[FrameSource | str | Path], cfg: LaPoseConfig, labeled: bool,
                 length: int = 10_000, frame_cache: Path | None = None):
        if not sources:
            raise DataError("no sources given")
        self.cfg = cfg
        self.labeled = labeled
        self.length = length
        self.num_frames = cfg.model.num_frames
        self.stats: Counter[str] = Counter()
        workers = min(len(sources), max(1, os.cpu_count() or 1))
        with ThreadPoolExecutor(workers) as pool:  # PyAV, libjpeg and OpenCV release the GIL
            cached = list(pool.map(lambda s: load_source(s, cfg, frame_cache), sources))

        self.sources: list[CachedSource] = []
        for src in cached:
            if labeled and src.poses is None:
                raise DataError(f"{src.path}: labeled source has no poses (expected poses.txt)")
            if not self._has_usable_window(src):
                message = (f"{src.path}: no usable window of {self.num_frames} frames at any rate in "
                           f"[{cfg.data.fps_min}, {cfg.data.fps_max}] fps (duration "
                           f"{src.duration:.1f}s, {src.stats.num_cuts} cuts, "
                           f"{src.stats.num_repeats} copied frames)")
                if labeled:
                    raise DataError(message)
                log.warning("%s; skipped", message)
                continue
            self.sources.append(src)
        if not self.sources:
            raise DataError(f"no usable window in any of the {len(cached)} sources: "
                            + ", ".join(str(s.path) for s in cached))
        self.unreadable_frames = int(sum((~s.readable).sum() for s in cached))
        if self.unreadable_frames:
            log.warning("%d unreadable frames across %d sources; windows touching them are skipped",
                        self.unreadable_frames, len(cached))
        # Self-labelled sequences (data/self_labels.py) have motion up to scale: no metric scale, no
        # field of view. They get data.self_label_share of the windows, by duration among themselves.
        self.metric_scale = np.array([not is_self_labelled(s.path) for s in self.sources])
        for src, metric in zip(self.sources, self.metric_scale):
            if not metric:
                src.fov = float("nan")
        durations = np.array([s.duration for s in self.sources])
        self.weights = durations / durations.sum()
        # Each sample first picks its kind (so redraws of a window too long for a short
        # self-labelled sequence stay among its kind); only when both kinds are there, so that other
        # runs keep their random stream.
        self.self_label_share = None
        if labeled and self.metric_scale.any() and not self.metric_scale.all():
            self.self_label_share = cfg.data.self_label_share
            log.info("%d self-labelled sequences (%.0f s) get %.0f %% of the windows",
                     (~self.metric_scale).sum(), durations[~self.metric_scale].sum(),
                     100 * self.self_label_share)
        log.info("%d sources, %.0f s of footage, %d cuts, %d copied frames", len(self.sources),
                 durations.sum(), sum(s.stats.num_cuts for s in self.sources),
                 sum(s.stats.num_repeats for s in self.sources))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.sample(int(i))

    def _has_usable_window(self, src: CachedSource) -> bool:
        for fps in np.linspace(self.cfg.data.fps_min, self.cfg.data.fps_max, FPS_PROBES):
            for start in range(len(src.timeline)):
                if self._window(src, float(fps), start)[0] is not None:
                    return True
        return False

    def _window(self, src: CachedSource, fps: float, start: int) -> tuple[np.ndarray | None, str]:
        """Frame indices of the window at timeline position ``start``, or None and the reason."""
        t = src.timestamps
        pos = window_indices(t[src.timeline], fps, self.num_frames, start)
        if pos is None:
            if t[src.timeline[start]] + (self.num_frames - 1) / fps > t[-1] + 0.5 / fps:
                return None, "too_short"
            # Removing copies opened the gap when the full timeline has a window here.
            full = window_indices(t, fps, self.num_frames, int(src.timeline[start]))
            return None, "frozen" if full is not None else "gap"
        idx = src.timeline[pos]
        if not src.readable[idx].all():
            return None, "unreadable"
        reason = bad_window(src.stats, idx)
        return (None, reason) if reason else (idx, "")

    def sample(self, seed: int) -> dict[str, torch.Tensor]:
        """The window of ``seed``: same seed, same clip (redraws are derived from the seed too)."""
        rng = np.random.default_rng(seed)
        data = self.cfg.data
        weights = self.weights
        if self.self_label_share is not None:
            kind = self.metric_scale != (rng.uniform() < self.self_label_share)
            weights = np.where(kind, weights, 0.0) / weights[kind].sum()
        for _ in range(MAX_DRAWS):
            k = int(rng.choice(len(self.sources), p=weights))
            src = self.sources[k]
            fps = float(rng.uniform(data.fps_min, data.fps_max))
            self.stats["drawn"] += 1
            # Draw among starts that leave room for the whole window.
            t = src.timestamps[src.timeline]
            last_start = int(np.searchsorted(t, t[-1] - (self.num_frames - 1) / fps, side="right"))
            if last_start == 0:
                self.stats["too_short"] += 1
                continue
            idx, reason = self._window(src, fps, int(rng.integers(last_start)))
            if idx is None:
                self.stats[reason] += 1
                continue
            self.stats["used"] += 1
            clip = self._clip(src, idx, fps)
            if self.labeled:
                clip["metric_scale"] = torch.tensor(bool(self.metric_scale[k]))
            return augment_clip(clip, src.intrinsics, rng, data)
        raise DataError(f"seed {seed}: no usable window in {MAX_DRAWS} draws (drops so far: "
                        f"{dict(self.stats)})")

    def _clip(self, src: CachedSource, idx: np.ndarray, fps: float) -> dict[str, torch.Tensor]:
        clip = {
            "frames": to_tensor(src.frames[idx]),
            "timestamps": torch.from_numpy((src.timestamps[idx] - src.timestamps[idx[0]])
                                           .astype(np.float32)),
            "fov": torch.tensor(src.fov, dtype=torch.float32),
            "fps": torch.tensor(fps, dtype=torch.float32),
        }
        if self.labeled:
            clip["poses"] = torch.from_numpy(src.poses[idx].astype(np.float32))
        return clip


def build_pretrain_dataset(cfg: LaPoseConfig, root: Path) -> ClipDataset:
    """Unlabeled windows from ``cfg.data.pretrain_sources`` (globs relative to ``root``)."""
    return ClipDataset(expand_sources(cfg.data.pretrain_sources, Path(root)), cfg, labeled=False,
                       frame_cache=frame_cache_dir(cfg, root))


def build_posttrain_dataset(cfg: LaPoseConfig, root: Path) -> ClipDataset:
    """Labeled windows (with poses) from ``cfg.data.posttrain_sequences``."""
    return ClipDataset(expand_sources(cfg.data.posttrain_sequences, Path(root)), cfg, labeled=True,
                       frame_cache=frame_cache_dir(cfg, root))


def frame_cache_dir(cfg: LaPoseConfig, root: Path) -> Path | None:
    """``data.frame_cache`` (relative paths against ``root``), or None when caching is off."""
    return Path(root) / cfg.data.frame_cache if cfg.data.frame_cache else None
