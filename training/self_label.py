"""Self-label unlabeled driving clips with the classical pipeline (lapose_core.data.self_labels).

Every clip becomes zero or more KITTI-format folders ``OUT/sequences/<clip>_<k>`` marked
self-labelled, and a record ``OUT/clips/<clip>.json`` of what was found; list the sequences in
``data.posttrain_sequences`` (``--set "data.posttrain_sequences=[..., OUT/sequences/*]"``) and
post-training learns their rotations and translations up to scale. A clip with a record is done and
skipped, so a killed run is simply started again. The test sequences are refused.

    python training/self_label.py --sources "../shared/data/unlabeled/*.mp4" --out runs/self_labels

The lens the clips are labelled through is the labelled sequences' at the model's input (``--config``:
its model size and its ``data.posttrain_sequences``, KITTI-format folders with ``calib.txt``).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from lapose_core.config import LaPoseConfig
from lapose_core.data.self_labels import SelfLabelConfig, model_focal_px, self_label, write_segment
from lapose_core.data.sources import KittiSequence, expand_sources, open_source

TEST_SEQUENCES = ("03_head", "01_head")
ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sources", nargs="+", required=True, help="videos / folders (globs allowed)")
    p.add_argument("--out", required=True, help="folder of the self-labelled sequences")
    p.add_argument("--config", default=str(ROOT / "training/configs/tiny/posttrain.yaml"),
                   help="post-training config: model input size and the labelled sequences")
    p.add_argument("--rate-hz", type=float, default=SelfLabelConfig.rate_hz)
    p.add_argument("--min-inliers", type=int, default=SelfLabelConfig.min_inliers)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    paths = expand_sources(args.sources, ROOT)
    for path in paths:
        if path.name in TEST_SEQUENCES:
            raise SystemExit(f"{path}: a test sequence; it must not train anything")
    train_cfg = LaPoseConfig.from_yaml(args.config)
    model_hw = (train_cfg.model.image_height, train_cfg.model.image_width)
    labelled = [KittiSequence(p) for p in expand_sources(train_cfg.data.posttrain_sequences, ROOT)]
    focal = float(np.median([model_focal_px(s.intrinsics, s.image_size, model_hw) for s in labelled]))
    print(f"labelling through the lens of {', '.join(s.name for s in labelled)}: "
          f"{focal:.1f} px at the {model_hw[1]}x{model_hw[0]} model input")
    cfg = SelfLabelConfig(rate_hz=args.rate_hz, min_inliers=args.min_inliers, model_focal_px=focal,
                          model_hw=model_hw)
    out = Path(args.out)
    (out / "sequences").mkdir(parents=True, exist_ok=True)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    summary = []
    for path in paths:
        done = out / "clips" / f"{path.stem}.json"
        if done.is_file():
            summary.append(json.loads(done.read_text()))
            continue
        t0 = time.perf_counter()
        source = open_source(path, max_width=cfg.max_width)
        segments, record = self_label(source, cfg)
        for k, segment in enumerate(segments):
            write_segment(out / "sequences" / f"{path.stem}_{k:02d}", source, segment, record["intrinsics"], record, cfg)
        record["seconds"] = round(time.perf_counter() - t0, 1)
        done.write_text(json.dumps(record, indent=2) + "\n")  # written last: the clip is complete
        summary.append(record)
        print(f"{path.name}: {record.get('hfov_deg', '-')} deg, {record.get('steps', 0)} steps, "
              f"{record.get('untrusted', 0)} untrusted, {record.get('cuts', 0)} cuts -> "
              f"{record['segments']} segments {record.get('segment_frames', [])} ({record['seconds']} s)")
    frames = sum(sum(r.get("segment_frames", [])) for r in summary)
    print(f"{len(summary)} clips, {sum(r['segments'] for r in summary)} segments, {frames} labelled keyframes")


if __name__ == "__main__":
    main()
