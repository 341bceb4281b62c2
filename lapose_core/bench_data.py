"""``lapose bench-data``: how long building a training dataset takes, decoded vs from the frame cache.

Builds the same dataset twice against one cache folder (emptied first): the first build decodes
every source and writes the cache, the second reads it back. Prints both times, the frames and the
cache's size on disk.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path


def run_bench_data(args: argparse.Namespace) -> int:
    from .config import preset
    from .data.datasets import ClipDataset
    from .data.sources import expand_sources

    cfg = preset(args.preset)
    root = Path(args.root).resolve()
    sources = expand_sources(args.sources or cfg.data.pretrain_sources, root)
    cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="lapose-frame-cache-"))
    shutil.rmtree(cache, ignore_errors=True)
    print(f"{len(sources)} sources, preset {args.preset} "
          f"({cfg.model.image_height}x{cfg.model.image_width} input), cache {cache}")
    try:
        timings = []
        for label in ("decode + write cache", "read cache"):
            start = time.perf_counter()
            ds = ClipDataset(sources, cfg, labeled=False, frame_cache=cache)
            timings.append(time.perf_counter() - start)
            print(f"{label:>22}: {timings[-1]:7.2f} s")
        frames = sum(len(s.frames) for s in ds.sources)
        size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
        print(f"{frames} frames in {len(ds.sources)} usable sources; cache {size / 2**20:.0f} MiB; "
              f"speed-up {timings[0] / timings[1]:.1f}x")
    finally:
        if not args.cache:
            shutil.rmtree(cache, ignore_errors=True)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("bench-data", help="dataset build time, decoding vs reading the frame cache")
    p.add_argument("--preset", default="tiny", help="model input size to fit frames to")
    p.add_argument("--sources", nargs="*", help="paths or globs; default: the preset's pretraining sources")
    p.add_argument("--root", default=".", help="folder that relative paths are resolved against")
    p.add_argument("--cache", help="cache folder to use (emptied first, kept); default: a temporary one")
    p.set_defaults(func=run_bench_data)
