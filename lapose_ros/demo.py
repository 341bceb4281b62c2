"""``lapose demo``: the README's main job, on the bundled model and sample sequence, no download.

1. Writes the bundled KITTI sample as a rosbag2 (images, camera info, ground truth).
2. Replays it through the real ``lapose_node`` over DDS on loopback and records the odometry:
   TUM trajectory, metrics against the bag's ground truth, and a trajectory picture.
3. Evaluates the same frames offline with ``lapose eval`` for LA-Pose and the classical baseline,
   so the node's result can be compared with both.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from lapose_core import ASSETS_DIR

SAMPLE_SEQUENCE = ASSETS_DIR / "sample_sequence"


def run(args: argparse.Namespace) -> int:
    from lapose_core.eval.evaluate import evaluate_sequence
    from lapose_core.inference import PoseEstimator

    from .bag_from_sequence import write_bag_from_sequence
    from .replay import replay_bag

    out = Path(args.out)
    sequence = Path(args.sequence)
    bag = out / "sample_bag"
    if bag.exists():
        shutil.rmtree(bag)
    out.mkdir(parents=True, exist_ok=True)
    print(f"[1/3] writing {sequence} as a rosbag2: {bag}")
    print(write_bag_from_sequence(sequence, bag, storage="mcap"))

    how = "in lockstep" if args.mode == "lockstep" else f"in real time at {args.rate:g}x"
    print(f"[2/3] replaying the bag through lapose_node {how}")
    replay = replay_bag(bag, out / "replay", rate=args.rate, checkpoint=args.checkpoint, mode=args.mode)

    print("[3/3] offline evaluation of the same frames (lapose eval)")
    estimator = PoseEstimator.load(args.checkpoint)
    results = {}
    for method in ("lapose", "classical"):
        r = evaluate_sequence(sequence, method=method, estimator=estimator if method == "lapose" else None,
                              fps=estimator.fps)
        results[method] = r.to_dict()
        print(r.table())
    summary = {"replay": replay.metrics, "offline": {m: {k: v for k, v in r.items() if k != "per_window"}
                                                     for m, r in results.items()}}
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nWritten: {out / 'replay' / 'trajectory.png'} (trajectory picture), "
          f"{out / 'replay' / 'metrics.json'} (node metrics), {out / 'replay' / 'lapose.tum'}, "
          f"{out / 'demo.json'} (all figures)")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="replay the bundled sample through the node (main job)")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--sequence", default=str(SAMPLE_SEQUENCE),
                   help="KITTI-format sequence folder (default: the bundled sample)")
    p.add_argument("--checkpoint", default=None, help="model checkpoint (default: the bundled model)")
    p.add_argument("--mode", choices=("lockstep", "realtime"), default="lockstep",
                   help="replay mode (see lapose replay; default lockstep: the same result on any machine)")
    p.add_argument("--rate", type=float, default=1.0, help="realtime playback speed factor (default 1)")
    p.set_defaults(func=run)
