"""``lapose bench``: latency of the odometry node, from image arrival to odometry publication.

For every backend and device available (eager and compile on cpu; tensorrt, compile and eager on
cuda) and for the bundled model and the paper-size model (random weights, when memory allows), the
node runs in this process with a publisher of real KITTI frames and an odometry subscriber on a
private DDS domain on loopback. Each frame is sent once the previous odometry has come back, so the
numbers are the node's own latency, not queueing. Keyframes (one encoder pass + the window model)
and frames between keyframes (extrapolation only) are reported apart, and combined into the load at
camera rates of 10 Hz (KITTI) and 30 Hz. The compiled model's output is compared with eager's on the
same window.

  lapose bench --quick            # eager on the bundled model, 200 frames (40 keyframes)
  lapose bench --quick --compressed   # the same frames as JPEG CompressedImage
  lapose bench --frames 100       # every backend, the paper-size model too
  lapose bench --soak 10          # the live node under a 30 Hz camera for 10 minutes (lapose_ros.soak)
"""
from __future__ import annotations

import argparse
import gc
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import cv2
import numpy as np

from lapose_core import KITTI_CAMERA_HEIGHT_M

DEFAULT_SEQUENCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "kitti" / "03_head"
CAMERA_RATES_HZ = (10.0, 30.0)


class BenchError(RuntimeError):
    """The benchmark cannot run as asked (missing sequence, bad option)."""


@dataclass
class Measurement:
    model: str
    device: str
    backend: str
    keyframe_ms: np.ndarray
    between_ms: np.ndarray
    model_fps: float

    def load_at(self, camera_hz: float) -> float:
        """Fraction of one second spent processing at ``camera_hz`` (> 1: frames will be dropped)."""
        keyframes_per_s = min(self.model_fps, camera_hz)
        kf = float(np.mean(self.keyframe_ms)) if self.keyframe_ms.size else 0.0
        between = float(np.mean(self.between_ms)) if self.between_ms.size else 0.0
        return (keyframes_per_s * kf + (camera_hz - keyframes_per_s) * between) / 1e3

    def achievable_hz(self) -> float:
        """The highest camera rate whose load stays below one (keyframes still at the model rate)."""
        kf = float(np.mean(self.keyframe_ms)) / 1e3 if self.keyframe_ms.size else 0.0
        between = float(np.mean(self.between_ms)) / 1e3 if self.between_ms.size else 0.0
        spare = 1.0 - self.model_fps * kf
        if spare <= 0:
            return 1.0 / kf if kf > 0 else float("inf")  # cannot even keep up with the keyframes
        return self.model_fps + (spare / between if between > 0 else float("inf"))


def percentile(values: np.ndarray, q: float) -> str:
    return f"{np.percentile(values, q):8.1f}" if values.size else "       -"


def load_frames(folder: Path, count: int, loop: bool = False) -> tuple[list[np.ndarray], np.ndarray]:
    """The first ``count`` frames of a KITTI-format sequence and their times. With ``loop`` a shorter
    sequence is played again from its start until there are ``count`` (times run on, one frame period
    after its last frame): the node sees one jump at each seam, which costs no more than a step."""
    import cv2

    times_file = folder / "times.txt"
    if not times_file.is_file():
        raise BenchError(f"{folder}: not a KITTI-format sequence (times.txt missing)")
    times = np.loadtxt(times_file)
    frames = []
    for i in range(min(count, len(times))):
        path = folder / "images" / f"{i:06d}.jpg"
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if gray is None:
            raise BenchError(f"{path}: cannot read image")
        frames.append(gray)
    times = times[:len(frames)]
    if loop and 1 < len(frames) < count:
        plays = -(-count // len(frames))
        span = times[-1] - times[0] + (times[-1] - times[0]) / (len(times) - 1)
        times = np.concatenate([times + k * span for k in range(plays)])[:count]
        frames = (frames * plays)[:count]
    return frames, times


def measure_node(estimator: Any, frames: list[np.ndarray], times: np.ndarray, warmup: int,
                 label: tuple[str, str, str], domain_id: int, timeout_s: float = 120.0,
                 compressed: bool = False) -> Measurement:
    """Run LaPoseNode in-process; send each frame after the previous odometry came back.
    ``compressed``: as sensor_msgs/CompressedImage (JPEG), as cars' bags carry them."""
    import rclpy
    import rclpy.context
    import rclpy.time
    from nav_msgs.msg import Odometry
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import CompressedImage, Image

    from .image_conversion import fill_image_msg
    from .node import LaPoseNode, freeze_start_up_objects

    # A private domain on loopback: the benchmark neither hears nor disturbs other ROS nodes.
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ["ROS_DOMAIN_ID"] = str(domain_id)
    context = rclpy.context.Context()
    rclpy.init(context=context)
    try:
        image_topic = "/bench/image/compressed" if compressed else "/bench/image"
        node = LaPoseNode(estimator=estimator, context=context, parameter_overrides=[
            Parameter("image_topic", value=image_topic), Parameter("odom_topic", value="/bench/odom"),
            Parameter("camera_info_topic", value="/bench/camera_info"),
            Parameter("path_topic", value="/bench/path"), Parameter("publish_tf", value=False),
            Parameter("qos_depth", value=10), Parameter("max_gap_s", value=1e6)])
        client = rclpy.create_node("lapose_bench_camera", context=context)
        publisher = client.create_publisher(CompressedImage if compressed else Image, image_topic, 10)
        jpegs = [cv2.imencode(".jpg", gray)[1].tobytes() for gray in frames] if compressed else None
        received: dict[int, float] = {}

        def on_odom(msg: Odometry) -> None:
            received[rclpy.time.Time.from_msg(msg.header.stamp).nanoseconds] = time.perf_counter()

        client.create_subscription(Odometry, "/bench/odom", on_odom, 10)
        freeze_start_up_objects()  # as the node's main does before it spins
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        executor.add_node(client)
        deadline = time.monotonic() + 30
        while publisher.get_subscription_count() == 0 or client.count_publishers("/bench/odom") == 0:
            if time.monotonic() > deadline:
                raise BenchError("the node's image subscription was not discovered within 30 s")
            executor.spin_once(timeout_sec=0.05)

        keyframe_ms, between_ms = [], []
        for i, gray in enumerate(frames):
            if compressed:
                msg = CompressedImage(format="mono8; jpeg compressed mono8", data=jpegs[i])
            else:
                msg = fill_image_msg(Image(), gray, "mono8")
            stamp_ns = int(round((1.0e9 + float(times[i])) * 1e9))
            msg.header.stamp = rclpy.time.Time(nanoseconds=stamp_ns).to_msg()
            msg.header.frame_id = "camera_optical"
            keyframes_before = node.vo.trajectory.keyframe_stamps[-1:] if node.vo.tracking else None
            sent = time.perf_counter()
            publisher.publish(msg)
            deadline = time.monotonic() + timeout_s
            if i < warmup:
                # Warm-up: nothing comes back; wait until the node's processing thread has taken
                # and processed the frame.
                while node.counters["frames"] <= i and time.monotonic() < deadline:
                    executor.spin_once(timeout_sec=0.01)
                continue
            while stamp_ns not in received and time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.01)
            if stamp_ns not in received:
                raise BenchError(f"no odometry for frame {i} within {timeout_s:.0f} s "
                                 f"(status: {node.vo.status})")
            latency = (received[stamp_ns] - sent) * 1e3
            was_keyframe = node.vo.trajectory.keyframe_stamps[-1:] != keyframes_before
            (keyframe_ms if was_keyframe else between_ms).append(latency)
        fps = node.vo.selector.period
        executor.shutdown()
        node.destroy_node()
        client.destroy_node()
    finally:
        gc.unfreeze()  # a process that measures in-process (a test) collects as usual afterwards
        rclpy.shutdown(context=context)
    return Measurement(*label, np.asarray(keyframe_ms), np.asarray(between_ms), 1.0 / fps)


def max_output_difference(reference: Any, other: Any, frames: list[np.ndarray], times: np.ndarray) -> float:
    """Largest absolute difference of the step motions two estimators give on one window."""
    idx = np.arange(0, 5 * reference.num_frames, 5)[: reference.num_frames]
    images = [np.repeat(frames[i][..., None], 3, -1) for i in idx]
    a = reference.predict_window(images, list(times[idx]))
    b = other.predict_window(images, list(times[idx]))
    return float(max(np.abs(a.relative - b.relative).max(), abs(a.scale - b.scale)))


def paper_memory_estimate_gb() -> float:
    """Weights of the paper-size model (float32), from its configuration: ~12 width^2 per layer."""
    from lapose_core.config import preset

    m = preset("paper").model
    layers = m.encoder_layers + m.idm_layers + m.fdm_layers + m.fdm_extra_layers
    params = 12 * m.width ** 2 * layers + 12 * m.pose_width ** 2 * m.pose_layers
    return params * 4 / 1e9


def available_memory_gb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1e6
    return 0.0


def run_bench(args: argparse.Namespace) -> int:
    import torch

    from lapose_core.inference import InferenceError, PoseEstimator

    # Sixteen keyframes at 2 fps from a ~10 Hz sequence, the first window among them: it computes
    # all 15 pairs' correlations, once in a node's life, where every later one computes one.
    warmup = 16 * 5 + 1
    frames, times = load_frames(Path(args.sequence), warmup + args.frames, loop=True)
    if len(frames) < warmup + args.frames:
        raise BenchError(f"{args.sequence}: {len(frames)} frame(s); a sequence of at least 2 is "
                         "looped to the frames needed")

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    backends = {"cpu": ["eager", "compile"], "cuda": ["tensorrt", "compile", "eager"]}
    if args.quick:
        backends = {"cpu": ["eager"], "cuda": ["tensorrt", "eager"]}
        print("--quick: eager only on cpu (torch.compile takes minutes to warm up on a "
              "small CPU), no paper-size model")
    if args.backends:
        wanted = args.backends.split(",")
        backends = {d: [b for b in bs if b in wanted] for d, bs in backends.items()}

    models: list[tuple[str, Callable[[str, str], Any]]] = []
    try:
        PoseEstimator.load(args.checkpoint or None)  # fail early, and once, if it is missing
        name = args.checkpoint or "bundled"
        models.append((name, lambda device, backend: PoseEstimator.load(
            args.checkpoint or None, device=device, backend=backend)))
    except InferenceError as e:
        print(f"model '{args.checkpoint or 'bundled'}' skipped: {e}; measuring random tiny-preset "
              "weights instead (same size as the bundled model, meaningless poses)")
        models.append(("random:tiny", lambda device, backend: PoseEstimator.random(
            "tiny", device=device, backend=backend)))
    # The hybrid (feature geometry checked against LA-Pose) around the same model: its keyframes add
    # SIFT, matching and the essential matrix, on the node's processing thread.
    from lapose_core.hybrid import HybridEstimator

    lapose_name, make_lapose = models[0]
    calib = Path(args.sequence) / "calib.txt"  # what the camera's CameraInfo would carry
    intrinsics = np.loadtxt(calib)[:4] if calib.is_file() else None
    models.append((f"hybrid:{lapose_name}", lambda device, backend: HybridEstimator(
        make_lapose(device, backend), intrinsics=intrinsics)))
    if args.camera_height_m > 0:  # the road-scale path: one dense road alignment per new pair
        from lapose_core.hybrid import HybridConfig

        road = HybridConfig.for_camera(args.camera_height_m, args.camera_pitch_deg)
        models.append(("hybrid-road", lambda device, backend: HybridEstimator(
            make_lapose(device, backend), road, intrinsics=intrinsics)))
    if args.quick:
        print("paper-size model skipped: --quick")
    else:
        need, have = 3 * paper_memory_estimate_gb(), available_memory_gb()
        if have < need:
            print(f"paper-size model skipped: needs ~{need:.1f} GB of memory, {have:.1f} GB available")
        else:
            # Every core: its ops are large enough to share (PoseEstimator's cpu_threads).
            models.append(("random:paper", lambda device, backend: PoseEstimator.random(
                "paper", device=device, backend=backend, cpu_threads=None)))

    results: list[Measurement] = []
    for model_name, make in models:
        # The paper-size model on a CPU takes seconds per keyframe: measure fewer frames.
        count = args.frames if "paper" not in model_name else min(args.frames, 10)
        for device in devices:
            eager = None
            for backend in backends[device]:
                if model_name.startswith("hybrid") and backend != "eager":
                    continue  # the geometry is the same on every backend; eager is the reference
                t0 = time.perf_counter()
                estimator = make(device, backend)
                setup_s = time.perf_counter() - t0
                if estimator.backend != backend:
                    print(f"{model_name} {device} {backend}: unavailable (fell back to "
                          f"{estimator.backend}); skipped")
                    continue
                print(f"{model_name} {device} {backend}: ready in {setup_s:.1f} s, measuring "
                      f"{count} frames after {warmup} warm-up frames", flush=True)
                results.append(measure_node(estimator, frames[:warmup + count], times, warmup,
                                            (model_name, device, backend), args.domain_id,
                                            compressed=args.compressed))
                if backend == "eager":
                    eager = estimator
                else:
                    reference = eager or make(device, "eager")
                    diff = max_output_difference(reference, estimator, frames, times)
                    print(f"{model_name} {device}: largest |{backend} - eager| difference of the step "
                          f"motions and scale on one window: {diff:.2e}")
                    eager = reference

    width = max([14] + [len(m.model) + 1 for m in results])  # a checkpoint's path is a model's name
    header = (f"{'model':<{width}}{'device':<7}{'backend':<10}{'key p50':>9}{'key p95':>9}{'key max':>9}"
              f"{'mid p50':>9}{'mid p95':>9}{'max Hz':>9}" +
              "".join(f"{f'load@{hz:g}Hz':>11}" for hz in CAMERA_RATES_HZ))
    print("\nlatency from image publication to odometry reception, ms (key: keyframe, one encoder pass "
          "+ window model; mid: between keyframes)" +
          ("; images sent as JPEG sensor_msgs/CompressedImage" if args.compressed else ""))
    print(header)
    for m in results:
        print(f"{m.model:<{width}}{m.device:<7}{m.backend:<10}{percentile(m.keyframe_ms, 50)} "
              f"{percentile(m.keyframe_ms, 95)} {percentile(m.keyframe_ms, 100)} "
              f"{percentile(m.between_ms, 50)} "
              f"{percentile(m.between_ms, 95)} {m.achievable_hz():8.1f}" +
              "".join(f"{m.load_at(hz) * 100:10.0f}%" for hz in CAMERA_RATES_HZ))
    for m in results:
        for hz in CAMERA_RATES_HZ:
            period = 1e3 / hz
            kf95 = float(np.percentile(m.keyframe_ms, 95)) if m.keyframe_ms.size else 0.0
            verdict = ("keeps up" if m.load_at(hz) < 1 else "falls behind: frames will be dropped")
            late = (f"; a keyframe (p95 {kf95:.0f} ms) delays the next "
                    f"{int(kf95 // period)} frame(s)" if kf95 > period else "")
            print(f"{m.model} {m.device} {m.backend} at {hz:g} Hz (period {period:.0f} ms): {verdict}{late}")
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``bench`` to the ``lapose`` command."""
    p = subparsers.add_parser("bench", help="latency of the ROS odometry node per backend and device",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=None,
                   help="frames measured after the warm-up (default 200: 40 keyframes, enough for a "
                        "p95 that one slow keyframe does not make; a short sequence is looped)")
    p.add_argument("--quick", action="store_true",
                   help="eager only on cpu, no paper-size model")
    p.add_argument("--checkpoint", default="", help="model to measure ('' = the bundled model)")
    p.add_argument("--backends", default="", help="comma-separated subset of tensorrt,compile,eager")
    p.add_argument("--sequence", default=str(DEFAULT_SEQUENCE),
                   help="KITTI-format sequence folder whose frames are sent")
    p.add_argument("--camera-height-m", type=float, default=KITTI_CAMERA_HEIGHT_M,
                   help="also measure the hybrid with the road scale, for a camera this high above "
                        "the road (default 1.65, the sample's KITTI camera; 0 skips it)")
    p.add_argument("--camera-pitch-deg", type=float, default=0.0,
                   help="that camera's pitch below the road plane, degrees (default 0, level)")
    p.add_argument("--compressed", action="store_true",
                   help="send the frames as JPEG sensor_msgs/CompressedImage on <topic>/compressed, as "
                        "cars' bags carry them (the node decodes only keyframes)")
    p.add_argument("--domain-id", type=int, default=200 + os.getpid() % 30,
                   help="private ROS_DOMAIN_ID of the in-process node (discovery stays on loopback)")
    soak = p.add_argument_group("soak (--soak MINUTES): the node as its own process under a live camera")
    soak.add_argument("--soak", type=float, default=None, metavar="MINUTES",
                      help="stream frames at --camera-hz through the live node for MINUTES (fractions "
                           "allowed) and print memory, keyframe latency, drops and output per interval")
    soak.add_argument("--soak-interval-s", type=float, default=60.0, help="seconds per row (default 60)")
    soak.add_argument("--camera-hz", type=float, default=30.0, help="camera rate of the soak (default 30)")
    soak.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                      help="node parameter for the soak, repeatable (e.g. --param path_max_length:=100)")
    soak.add_argument("--soak-log", default="out/soak/node.log", help="where the node's log goes")
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    if args.frames is None:
        args.frames = 200
    try:
        if args.soak is not None:
            from .soak import run_soak

            return run_soak(args)
        if args.frames < 1:
            raise BenchError(f"--frames must be >= 1, got {args.frames}")
        return run_bench(args)
    except BenchError as e:
        print(f"lapose bench: error: {e}")
        return 2


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="lapose-bench")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(argv if argv is not None else __import__("sys").argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
