"""``lapose eval``, ``lapose diagnose`` and ``lapose bench-eval``: accuracy, motion diagnostics and
speed of LA-Pose, the classical baseline and the hybrid.

``register(subparsers)`` adds the subcommands to the ``lapose`` command (through the
``lapose.commands`` entry point).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from lapose_core import PACKAGE_DIR
from lapose_core.config import DataConfig
from lapose_core.data.sources import DataError, open_source
from lapose_core.eval.evaluate import METHODS, METRIC_METHODS, load_method_estimator

log = logging.getLogger(__name__)

DEFAULT_BENCH_SEQUENCE = Path(os.environ.get(
    "LAPOSE_SHARED_DATA", PACKAGE_DIR.parent.parent / "shared" / "data")) / "kitti" / "03_head"


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="AUC@5/30, ATE-S, ATE-M on a KITTI-format sequence",
                              description="Evaluate LA-Pose or the classical baseline on every window "
                                          "of a sequence with ground-truth poses.")
    p.add_argument("--data", required=True, metavar="SEQ_DIR",
                   help="KITTI-format folder (images/, poses.txt, times.txt, calib.txt)")
    p.add_argument("--method", choices=METHODS, default="lapose",
                   help="lapose, classical (SIFT + essential matrix, scale-free) or hybrid (geometry "
                        "checked against LA-Pose, LA-Pose's metric scale)")
    _add_window_options(p, "evaluate")
    p.add_argument("--json", metavar="OUT", help="write the results (with per-window values) here")
    p.add_argument("--trajectory", metavar="OUT.tum",
                   help="also stream the whole sequence through the estimator as the node does and "
                        "write that trajectory (keyframes, camera frame of the first) here")
    _add_hybrid_options(p)
    p.add_argument("--plots", metavar="DIR",
                   help="write the AUC distribution and the trajectories of a few windows here")
    p.set_defaults(func=cmd_eval)

    d = subparsers.add_parser("diagnose", help="per-step yaw/pitch/roll, static and reversed tests, prior",
                              description="Motion diagnostics of a method on the evaluation windows "
                                          "of a sequence (see lapose_core/eval/diagnose.py).")
    d.add_argument("--data", required=True, metavar="SEQ_DIR", help="KITTI-format folder with poses.txt")
    d.add_argument("--method", choices=METHODS, default="lapose")
    _add_window_options(d, "diagnose")
    d.add_argument("--json", metavar="OUT", help="write the figures here")
    _add_hybrid_options(d)
    d.set_defaults(func=cmd_diagnose)

    b = subparsers.add_parser("bench-eval", help="windows per second of each evaluation method")
    b.add_argument("--data", default=str(DEFAULT_BENCH_SEQUENCE), metavar="SEQ",
                   help="KITTI-format folder or any frame source (default: %(default)s)")
    b.add_argument("--windows", type=int, default=5, help="timed windows per method")
    b.add_argument("--fps", type=float, default=DataConfig.eval_fps)
    b.add_argument("--methods", default="lapose,classical", help="comma-separated")
    b.add_argument("--checkpoint", help="LA-Pose checkpoint (default: bundled model, else random weights)")
    b.add_argument("--device", default="cpu")
    b.set_defaults(func=cmd_bench_eval)


def _add_hybrid_options(p) -> None:
    p.add_argument("--camera-height-m", type=float,
                   help="hybrid: camera height above the road; the metric scale then comes from the "
                        "road, aligned between keyframes where it is seen (KITTI: 1.65)")
    p.add_argument("--camera-pitch-deg", type=float, default=0.0,
                   help="hybrid: the optical axis's angle below the road plane (default 0, KITTI)")
    p.add_argument("--scale-source", choices=("lapose", "ground", "constant"),
                   help="hybrid: metric scale from LA-Pose (default), the road plane (needs "
                        "--camera-height-m) or a constant speed (ablation)")


def _hybrid_config(args: argparse.Namespace):
    from lapose_core.hybrid import HybridConfig

    height = getattr(args, "camera_height_m", None)
    source = getattr(args, "scale_source", None) or ("ground" if height else "lapose")
    return HybridConfig(scale_source=source, camera_height_m=height,
                        camera_pitch_deg=getattr(args, "camera_pitch_deg", 0.0))


class _Refused(Exception):
    """A request refused after printing why (the exit status is 2)."""


def _add_window_options(parser: argparse.ArgumentParser, verb: str) -> None:
    """Model, rate and window options shared by ``eval`` and ``diagnose``."""
    parser.add_argument("--checkpoint", help="post-trained checkpoint or run folder (default: bundled model)")
    parser.add_argument("--fps", type=float, default=DataConfig.eval_fps, help="window frame rate")
    parser.add_argument("--stride-s", type=float, default=1.0, help="seconds between window starts")
    parser.add_argument("--max-windows", type=int, help=f"{verb} at most this many windows")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (lapose and hybrid)")


def _checked_estimator(args: argparse.Namespace):
    """Check the request and the data, then load the method's estimator (None for classical)."""
    from lapose_core.eval.evaluate import open_eval_sequence

    if args.max_windows is not None and args.max_windows < 1:
        _fail(args, "--max-windows must be at least 1")
        raise _Refused
    try:
        open_eval_sequence(args.data)  # data errors before the (slower) model load
    except DataError as e:
        _fail(args, str(e))
        raise _Refused from None
    if args.method not in METRIC_METHODS:
        return None
    estimator = _load_estimator(args, allow_random=False)
    if estimator is None:
        raise _Refused
    return estimator


def _scored(args: argparse.Namespace, score):
    """The method's estimator and ``score(estimator)``, plus None; or (None, None, exit code) after
    saying what is wrong."""
    try:
        estimator = _checked_estimator(args)
        return estimator, score(estimator), None
    except _Refused:
        return None, None, 2
    except DataError as e:
        return None, None, _fail(args, str(e))


def cmd_eval(args: argparse.Namespace) -> int:
    from lapose_core.eval.evaluate import evaluate_sequence

    estimator, result, refused = _scored(args, lambda est: evaluate_sequence(
        args.data, method=args.method, estimator=est, fps=args.fps, stride_s=args.stride_s,
        max_windows=args.max_windows, progress=sys.stderr.isatty()))
    if refused is not None:
        return refused
    print(result.table())
    if args.json:
        _write_json(result.to_dict(), args.json)
    if args.plots:
        _write_plots(result, Path(args.plots))
        print(f"plots written to {args.plots}")
    if args.trajectory:
        from lapose_core.eval.evaluate import stream_sequence, write_tum

        if estimator is None:
            return _fail(args, "--trajectory needs a streaming method (lapose or hybrid)")
        stamps, poses, fallbacks = stream_sequence(args.data, estimator, fps=args.fps)
        write_tum(args.trajectory, stamps, poses)
        print(f"streamed trajectory ({len(stamps)} keyframes, {fallbacks} fallback steps) written to "
              f"{args.trajectory}")
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    from lapose_core.eval.diagnose import diagnose_sequence

    _, diagnosis, refused = _scored(args, lambda est: diagnose_sequence(
        args.data, method=args.method, estimator=est, fps=args.fps, stride_s=args.stride_s,
        max_windows=args.max_windows))
    if refused is not None:
        return refused
    print(diagnosis.table())
    if args.json:
        _write_json(diagnosis.to_dict(), args.json)
    return 0


def _write_json(values: dict, path: str) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(values, indent=2) + "\n")
    print(f"results written to {out}")


def _write_plots(result, out_dir: Path) -> None:
    from lapose_core.eval.plots import plot_auc_distribution, plot_window_trajectories

    plot_auc_distribution({result.method: [w.auc5 for w in result.per_window]},
                          out_dir / "auc5_per_window.png")
    # The best, median and worst window by AUC@5 show the range of behaviour.
    ranked = sorted(result.per_window, key=lambda w: w.auc5)
    picks = {"worst": ranked[0], "median": ranked[len(ranked) // 2], "best": ranked[-1]}
    for label, w in picks.items():
        plot_window_trajectories(w.gt_poses, {result.method: w.pred_poses},
                                 out_dir / f"trajectory_{label}_frame{w.start:06d}.png",
                                 title=f"{Path(result.data).name} frame {w.start} ({label}), "
                                       f"AUC@5 {w.auc5:.3f}")


def cmd_bench_eval(args: argparse.Namespace) -> int:
    from lapose_core.data.windows import window_indices, window_starts
    from lapose_core.eval.classical import ClassicalVO

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - {"lapose", "classical"}
    if unknown or not methods:
        return _fail(args, f"--methods: unknown method(s) {sorted(unknown)} (lapose, classical)")
    if args.windows < 1:
        return _fail(args, "--windows must be at least 1")
    try:
        source = open_source(args.data)
    except DataError as e:
        return _fail(args, str(e))
    estimator = _load_estimator(args, allow_random=True) if "lapose" in methods else None
    if "lapose" in methods and estimator is None:
        return 2
    num_frames = estimator.num_frames if estimator is not None else 16

    starts = window_starts(source.timestamps, args.fps, num_frames, stride_s=1.0)
    windows = [w for w in (window_indices(source.timestamps, args.fps, num_frames, s) for s in starts)
               if w is not None][:args.windows]
    if not windows:
        return _fail(args, f"{args.data}: {source.duration:.2f} s long, too short for one window of "
                           f"{num_frames} frames at {args.fps:g} fps ({(num_frames - 1) / args.fps:.2f} s)")
    # Frames are decoded up front: the benchmark times pose estimation, not JPEG decoding.
    frames = {int(i): source.read(int(i)) for w in windows for i in w}
    print(f"bench-eval: {source.path}, {len(windows)} windows of {num_frames} frames at {args.fps:g} fps "
          f"(frame decoding excluded), {_cpu_summary(args.device)}")
    rows = []
    for method in methods:
        if method == "lapose":
            name = estimator.checkpoint_name
            run = lambda w: estimator.predict_window([frames[int(i)] for i in w],  # noqa: E731
                                                     source.timestamps[w])
        else:
            if source.intrinsics is None:
                print(f"classical: skipped, {source.path} has no intrinsics")
                continue
            vo = ClassicalVO(source.intrinsics)
            name = "opencv-sift-essential"
            run = lambda w: vo.estimate([frames[int(i)] for i in w])  # noqa: E731
        run(windows[0])  # warm-up: lazy initialisation, allocator, caches
        t0 = time.perf_counter()
        for w in windows:
            run(w)
        seconds = time.perf_counter() - t0
        rows.append((method, name, len(windows), seconds, len(windows) / seconds))
    header = f"{'method':<10} {'model':<28} {'windows':>7} {'seconds':>8} {'windows/s':>9}"
    print(header)
    for method, name, n, seconds, rate in rows:
        print(f"{method:<10} {name:<28} {n:>7} {seconds:>8.2f} {rate:>9.2f}")
    return 0


def _load_estimator(args: argparse.Namespace, allow_random: bool):
    """The requested estimator (LA-Pose, or the hybrid around it), or None after printing why it
    cannot be loaded."""
    from lapose_core.hybrid import HybridError
    from lapose_core.inference import InferenceError, PoseEstimator
    from lapose_core.train.checkpoint import CheckpointError

    try:
        return load_method_estimator(getattr(args, "method", "lapose"), args.checkpoint, args.device,
                                     hybrid_config=_hybrid_config(args))
    except HybridError as e:
        _fail(args, str(e))
        return None
    except (InferenceError, CheckpointError) as e:
        if args.checkpoint or not allow_random:
            _fail(args, str(e))
            return None
        log.warning("%s; timing a randomly initialised tiny model instead", e)
        return PoseEstimator.random(preset="tiny", seed=0, device=args.device)


def _cpu_summary(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"device {torch.cuda.get_device_name()}"
    return f"device cpu ({torch.get_num_threads()} threads)"


def _fail(args: argparse.Namespace, message: str) -> int:
    print(f"lapose {getattr(args, 'command', 'eval')}: error: {message}", file=sys.stderr)
    return 2
