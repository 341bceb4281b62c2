"""``lapose demo``: the README's main job, on the bundled model and sample sequence, no download.

1. Writes the bundled KITTI sample as a rosbag2 (images, camera info, ground truth).
2. Replays it through the real ``lapose_node`` over DDS on loopback (``estimator: hybrid``, the
   default) and records the odometry: TUM trajectory, metrics against the bag's ground truth, and a
   trajectory picture.
3. Evaluates the same frames offline with ``lapose eval`` for LA-Pose, the classical baseline and the
   hybrid, so the node's result can be compared with all three.
4. Streams the frames offline through LA-Pose alone and through the hybrid as the node does, checks
   that the node's trajectory is the offline hybrid one, and draws the node's hybrid trajectory beside
   LA-Pose's and the ground truth in metres (``hybrid_vs_lapose.png``).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from lapose_core import ASSETS_DIR, KITTI_CAMERA_HEIGHT_M

SAMPLE_SEQUENCE = ASSETS_DIR / "sample_sequence"
SAMPLE_CAMERA_HEIGHT_M = KITTI_CAMERA_HEIGHT_M  # the sample is KITTI's
SAMPLE_CAMERA_PITCH_DEG = 0.0  # level, the nominal mount: no labelled data of its recording day


def run(args: argparse.Namespace) -> int:
    from lapose_core.eval.evaluate import evaluate_sequence
    from lapose_core.hybrid import HybridConfig, HybridEstimator
    from lapose_core.inference import PoseEstimator

    from .bag_from_sequence import write_bag_from_sequence
    from .replay import replay_bag

    out = Path(args.out)
    sequence = Path(args.sequence)
    bag = out / "sample_bag"
    if bag.exists():
        shutil.rmtree(bag)
    out.mkdir(parents=True, exist_ok=True)
    print(f"[1/4] writing {sequence} as a rosbag2: {bag}")
    print(write_bag_from_sequence(sequence, bag, storage="mcap"))

    how = "in lockstep" if args.mode == "lockstep" else f"in real time at {args.rate:g}x"
    height = max(float(args.camera_height_m), 0.0)
    pitch = float(args.camera_pitch_deg)
    scale = f"road plane, camera {height:g} m up, {pitch:g} deg down" if height else "LA-Pose's"
    print(f"[2/4] replaying the bag through lapose_node {how}, estimator {args.estimator} "
          f"(hybrid metric scale: {scale})")
    replay = replay_bag(bag, out / "replay", rate=args.rate, checkpoint=args.checkpoint, mode=args.mode,
                        node_params={"estimator": args.estimator, "camera_height_m": height,
                                     "camera_pitch_deg": pitch})

    print("[3/4] offline evaluation of the same frames (lapose eval)")
    lapose = PoseEstimator.load(args.checkpoint)
    hybrid = HybridConfig.for_camera(height, pitch)  # what the node built from its parameters
    estimators = {"lapose": lapose, "classical": None, "hybrid": HybridEstimator(lapose, hybrid)}
    results = {}
    for method, estimator in estimators.items():
        r = evaluate_sequence(sequence, method=method, estimator=estimator, fps=lapose.fps)
        results[method] = r.to_dict()
        print(r.table())

    print("[4/4] streaming the frames offline as the node does: LA-Pose alone and the hybrid")
    streams = compare_streams(sequence, replay, {"lapose": lapose, "hybrid": estimators["hybrid"]},
                              out / "hybrid_vs_lapose.png", lapose.fps, node_estimator=args.estimator)
    summary = {"replay": replay.metrics, "streams": streams,
               "offline": {m: {k: v for k, v in r.items() if k != "per_window"}
                           for m, r in results.items()}}
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nWritten: {out / 'hybrid_vs_lapose.png'} (node's hybrid, LA-Pose, ground truth), "
          f"{out / 'replay' / 'trajectory.png'} (node trajectory picture), "
          f"{out / 'replay' / 'metrics.json'} (node metrics), {out / 'replay' / 'lapose.tum'}, "
          f"{out / 'demo.json'} (all figures)")
    return 0


def compare_streams(sequence: Path, replay, estimators: dict, png: Path, fps: float,
                    node_estimator: str) -> dict:
    """Offline streams of each estimator, the node's difference from its own one, and the picture."""
    from lapose_core.data.sources import KittiSequence
    from lapose_core.eval import metrics
    from lapose_core.eval.evaluate import stream_sequence

    from .odometry import camera_motion_to_base, default_camera_to_base

    seq = KittiSequence(sequence)
    body = default_camera_to_base()
    # Node stamps in seconds of the sequence's clock (the bag starts at its first frame's stamp).
    start_ns = int(replay.image_stamps_ns[0]) if len(replay.image_stamps_ns) else 0
    node_s = (replay.estimate.stamps_ns - start_ns) * 1e-9 + seq.timestamps[0]
    tracks, summary = {}, {}
    for name, estimator in estimators.items():
        stamps, poses, fallbacks = stream_sequence(sequence, estimator, fps=fps)
        frames = [int(np.argmin(np.abs(seq.timestamps - s))) for s in stamps]
        gt = metrics.relative_to_first(seq.poses[frames])
        tracks[name] = poses
        tracks["ground truth"] = gt
        summary[name] = {"keyframes": len(stamps), "fallback_steps": fallbacks,
                         "ate_m": metrics.ate_m(poses, gt), "ate_s": metrics.ate_s(poses, gt)}
        if name == node_estimator:
            # Odometry is published from the 16th keyframe on; the warm-up keyframes are in the path.
            nearest = [int(np.argmin(np.abs(node_s - s))) if len(node_s) else -1 for s in stamps[15:]]
            found = [(k + 15, i) for k, i in enumerate(nearest)
                     if i >= 0 and abs(node_s[i] - stamps[k + 15]) < 1e-4]
            if found and len(found) == len(stamps) - 15:
                published = np.stack([replay.estimate.poses[i] for _, i in found])
                expected = camera_motion_to_base(poses[[k for k, _ in found]], body)
                diff = float(np.abs(published - expected).max())
                summary[name]["node_max_difference"] = diff
                tracks[f"node ({name})"] = np.linalg.inv(body) @ published @ body
                print(f"node vs offline {name} stream: largest difference {diff:.2e} over the "
                      f"{len(found)} published keyframes")
            else:
                print(f"node published {len(found)} of the {len(stamps) - 15} offline keyframes "
                      "after warm-up")
        print(f"{name} stream: {len(stamps)} keyframes, ATE-M {summary[name]['ate_m']:.3f} m, "
              f"ATE-S {summary[name]['ate_s']:.4f}, {fallbacks} fallback steps")
    plot_top_view(png, tracks, title=f"{sequence.name}: streamed keyframe trajectories (metres)")
    return summary


def plot_top_view(png: Path, tracks: dict, title: str) -> None:
    """x-z top view (x right, z forward of the first keyframe's camera), metric, not aligned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6), dpi=120)
    for name, poses in tracks.items():
        xyz = np.asarray(poses)[:, :3, 3]
        style = {"ls": "--", "color": "black", "zorder": 5} if name == "ground truth" else {}
        ax.plot(xyz[:, 0], xyz[:, 2], marker="o", ms=2, label=name, **style)
    ax.set_xlabel("x (m, right)")
    ax.set_ylabel("z (m, forward)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title, fontsize=9)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, bbox_inches="tight")
    plt.close(fig)


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="replay the bundled sample through the node (main job)")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--sequence", default=str(SAMPLE_SEQUENCE),
                   help="KITTI-format sequence folder (default: the bundled sample)")
    p.add_argument("--checkpoint", default=None, help="model checkpoint (default: the bundled model)")
    p.add_argument("--mode", choices=("lockstep", "realtime"), default="lockstep",
                   help="replay mode (see lapose replay; default lockstep: the same result on any machine)")
    p.add_argument("--rate", type=float, default=1.0, help="realtime playback speed factor (default 1)")
    p.add_argument("--estimator", default="hybrid", choices=("hybrid", "lapose"),
                   help="the node's estimator (default hybrid)")
    p.add_argument("--camera-height-m", type=float, default=SAMPLE_CAMERA_HEIGHT_M,
                   help="the camera's height above the road: the hybrid's metric scale from the road "
                        f"plane (default {SAMPLE_CAMERA_HEIGHT_M:g}, the sample's KITTI camera; 0: "
                        "LA-Pose's scale)")
    p.add_argument("--camera-pitch-deg", type=float, default=SAMPLE_CAMERA_PITCH_DEG,
                   help="the camera's optical axis below the road plane, degrees (default "
                        f"{SAMPLE_CAMERA_PITCH_DEG:g}, the sample's KITTI camera)")
    p.set_defaults(func=run)
