"""``lapose bench --soak MINUTES``: the live node under a 30 Hz camera for minutes, figures per minute.

The node runs as its own process (``python -m lapose_ros.node``, the bundled model unless
``--checkpoint``), on a private ROS domain on loopback. This process plays the camera: KITTI frames
from ``--sequence`` (looped, stamped at exactly ``--camera-hz``), published best effort like a camera
driver, in real time. Each reporting interval (a minute by default) gives the node's resident memory
at its end, the latency of its keyframes (image publication to the node's acknowledgement of the
keyframe, for keyframes that ran the window model), the frames it never processed, the odometry
messages it published and the length of its Path. At the end: memory growth after the first
interval, and whether the Path and the latency stayed bounded.
"""
from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

MEMORY_GROWTH_LIMIT_MIB = 20.0


@dataclass
class SoakRow:
    """One reporting interval."""

    index: int
    end_s: float  # seconds since the camera started
    rss_mib: float
    keyframe_ms: np.ndarray  # latencies of the keyframes sent in the interval
    sent: int
    processed: int
    odometry: int  # odometry messages received in the interval
    path_length: int  # poses in the last Path received

    @property
    def dropped(self) -> int:
        return self.sent - self.processed

    def cells(self) -> list[str]:
        k = self.keyframe_ms

        def ms(v: Optional[float]) -> str:
            return f"{v:.1f}" if v is not None else "-"
        p50, p95, mx = ((float(np.percentile(k, 50)), float(np.percentile(k, 95)), float(k.max()))
                        if k.size else (None, None, None))
        return [str(self.index + 1), f"{self.end_s:.0f}", f"{self.rss_mib:.1f}", ms(p50), ms(p95), ms(mx),
                str(self.sent), str(self.dropped), str(self.odometry), str(self.path_length)]


COLUMNS = ["interval", "t [s]", "RSS [MiB]", "key p50 [ms]", "key p95 [ms]", "key max [ms]", "frames",
           "dropped", "odometry", "path"]


def format_table(rows: list[SoakRow]) -> str:
    """A Markdown table (readable in a terminal, pasted into the README as it is)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---:" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)


def verdict(rows: list[SoakRow], path_max_length: int) -> list[str]:
    """Memory flat after the first interval, Path bounded, latency not growing (no queue builds up)."""
    out = []
    if len(rows) >= 2:
        growth = max(r.rss_mib for r in rows[1:]) - rows[0].rss_mib
        out.append(f"memory growth after interval 1: {growth:+.1f} MiB "
                   f"({'flat' if growth < MEMORY_GROWTH_LIMIT_MIB else 'GROWS'}: limit "
                   f"{MEMORY_GROWTH_LIMIT_MIB:g} MiB)")
    longest = max((r.path_length for r in rows), default=0)
    out.append(f"longest Path: {longest} poses ({'bounded' if longest <= path_max_length else 'UNBOUNDED'} "
               f"by path_max_length={path_max_length})")
    timed = [r for r in rows if r.keyframe_ms.size]
    if len(timed) >= 2:
        first, last = float(np.percentile(timed[0].keyframe_ms, 95)), float(np.percentile(timed[-1].keyframe_ms, 95))
        growing = last > 2 * first + 50
        out.append(f"keyframe latency p95: {first:.1f} ms in the first timed interval, {last:.1f} ms in the "
                   f"last ({'GROWS: a queue builds up' if growing else 'no queue builds up'})")
    dropped, sent = sum(r.dropped for r in rows), sum(r.sent for r in rows)
    out.append(f"frames dropped by the node: {dropped} of {sent} ({100 * dropped / max(sent, 1):.1f}%)")
    return out


def process_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def path_length_from_cdr(raw: bytes) -> int:
    """Number of poses in a serialized ``nav_msgs/Path``, read without deserializing the poses.

    Deserializing 1000 poses in Python takes milliseconds on this process's executor thread, which
    would delay (and so inflate) the latencies measured from the acknowledgements behind it. CDR
    layout: 4-byte encapsulation header, header.stamp (2 x 4 bytes), header.frame_id (uint32 length
    including the terminating NUL, the bytes, padding to 4), then the uint32 length of ``poses``.
    """
    little = raw[1] == 1  # encapsulation CDR_LE (0x0001) or CDR_BE (0x0000)
    order = "little" if little else "big"
    offset = 4 + 8
    length = int.from_bytes(raw[offset:offset + 4], order)
    offset += 4 + length
    offset += -(offset - 4) % 4  # alignment counts from the end of the encapsulation header
    return int.from_bytes(raw[offset:offset + 4], order)


class SoakRecorder:
    """What the node sends back, with arrival times (called from the executor thread).

    Odometry and Path arrive as raw bytes: only counted, never deserialized.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.sent: dict[int, float] = {}  # stamp ns -> publication time
        self.acks: dict[int, tuple[float, bool]] = {}  # stamp ns -> (arrival, keyframe with odometry)
        self.odometry_arrivals: list[float] = []
        self.path_length = 0

    def on_processed(self, msg: Any) -> None:
        arrival = time.perf_counter()
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        status = msg.status[0]
        ran_model = status.message == "keyframe" and any(
            kv.key == "odometry_published" and kv.value == "true" for kv in status.values)
        with self.lock:
            self.acks.setdefault(stamp, (arrival, ran_model))

    def on_odometry(self, msg: Any) -> None:
        with self.lock:
            self.odometry_arrivals.append(time.perf_counter())

    def on_path(self, raw: bytes) -> None:
        length = path_length_from_cdr(raw)
        with self.lock:
            self.path_length = length

    def row(self, index: int, start: float, end: float, t0: float, rss_mib: float, path_length: int) -> SoakRow:
        """Figures of the frames sent in [start, end) (perf_counter times)."""
        with self.lock:
            stamps = [s for s, t in self.sent.items() if start <= t < end]
            acked = [s for s in stamps if s in self.acks]
            keyframe_ms = [(self.acks[s][0] - self.sent[s]) * 1e3 for s in acked if self.acks[s][1]]
            odometry = sum(1 for t in self.odometry_arrivals if start <= t < end)
            # Forget what this interval used: the recorder must not grow over a long soak either.
            for s in stamps:
                self.sent.pop(s)
                self.acks.pop(s, None)
            self.odometry_arrivals = [t for t in self.odometry_arrivals if t >= end]
        return SoakRow(index, end - t0, rss_mib, np.asarray(keyframe_ms), len(stamps), len(acked), odometry,
                       path_length)


def run_soak(args: Any) -> int:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from nav_msgs.msg import Odometry, Path as PathMsg
    from rclpy.qos import QoSProfile, qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from .bench import BenchError, load_frames
    from .image_conversion import fill_image_msg
    from .playback import (PROCESSED_TOPIC, ReplayError, SpinningThread, node_command, ros_environment,
                           stop_process, wait_for)
    from .replay import parse_node_params

    if not args.soak > 0:
        raise BenchError(f"--soak must be a positive number of minutes, got {args.soak}")
    if not args.soak_interval_s > 0 or not args.camera_hz > 0:
        raise BenchError("--soak-interval-s and --camera-hz must be positive")
    try:
        params = parse_node_params(args.param)
    except ReplayError as e:
        raise BenchError(str(e)) from None
    path_max_length = int(params.get("path_max_length", 1000))
    gray, _ = load_frames(Path(args.sequence), 100)
    images = [fill_image_msg(Image(), g, "mono8") for g in gray]
    for image in images:
        image.header.frame_id = "camera_optical"

    duration_s, interval_s, period = 60.0 * args.soak, args.soak_interval_s, 1.0 / args.camera_hz
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    command = node_command(args.checkpoint, "/camera/image_raw", "/camera/camera_info", "/lapose/odom", params)
    log_path = Path(args.soak_log)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=args.domain_id)
    proc = spinner = None
    recorder = SoakRecorder()
    rows: list[SoakRow] = []
    try:
        node = rclpy.create_node("lapose_soak_camera", context=context)
        camera = node.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
        node.create_subscription(DiagnosticArray, PROCESSED_TOPIC, recorder.on_processed, QoSProfile(depth=100))
        node.create_subscription(Odometry, "/lapose/odom", recorder.on_odometry, QoSProfile(depth=100), raw=True)
        node.create_subscription(PathMsg, "/lapose/path", recorder.on_path, QoSProfile(depth=1), raw=True)
        spinner = SpinningThread(node, context)
        with open(log_path, "w") as log:
            proc = subprocess.Popen(command, env=ros_environment(args.domain_id), stdout=log,
                                    stderr=subprocess.STDOUT)
        print(f"soak: node pid {proc.pid} (log {log_path}), ROS_DOMAIN_ID={args.domain_id}; "
              f"{args.camera_hz:g} Hz camera for {duration_s / 60:g} min, a row every {interval_s:g} s",
              flush=True)
        wait_for(lambda: camera.get_subscription_count() > 0 and node.count_publishers(PROCESSED_TOPIC) > 0,
                 180.0, proc, "the node to start", log_path)
        time.sleep(1.0)  # let the node's other endpoints be matched too

        base_stamp_ns = time.time_ns()
        t0 = time.perf_counter()
        pending: list[tuple[int, float, float, float, int]] = []  # rows waiting for late answers
        next_boundary, i = t0 + interval_s, 0
        while True:
            now = time.perf_counter()
            if now >= next_boundary or now - t0 >= duration_s:
                end = min(next_boundary, t0 + duration_s)
                pending.append((len(rows) + len(pending), end - interval_s, end, process_rss_mib(proc.pid),
                                recorder.path_length))
                print(f"soak: {end - t0:.0f} s, node RSS {pending[-1][3]:.1f} MiB", flush=True)
                next_boundary += interval_s
                if now - t0 >= duration_s:
                    break
            # An interval's row is made a second after it ends: its last frames' answers are in.
            while pending and now - pending[0][2] > 1.0:
                rows.append(recorder.row(pending[0][0], pending[0][1], pending[0][2], t0, *pending[0][3:]))
                pending.pop(0)
            if proc.poll() is not None:
                raise BenchError(f"the node exited (code {proc.returncode}) during the soak; see {log_path}")
            target = t0 + i * period
            if target > now:
                time.sleep(target - now)
            image = images[i % len(images)]
            stamp_ns = base_stamp_ns + int(round(i * period * 1e9))
            image.header.stamp.sec, image.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
            with recorder.lock:
                recorder.sent[stamp_ns] = time.perf_counter()
            camera.publish(image)
            i += 1
        time.sleep(1.5)
        rows += [recorder.row(p[0], p[1], p[2], t0, *p[3:]) for p in pending]
    finally:
        if proc is not None:
            stop_process(proc)
        if spinner is not None:
            spinner.stop()
        rclpy.try_shutdown(context=context)

    print(f"\nsoak of the live node, {args.camera_hz:g} Hz camera ({args.sequence}), model "
          f"{args.checkpoint or 'bundled'}, parameters {params or 'defaults'}; keyframe latency = image "
          f"publication to the node's acknowledgement, keyframes that ran the window model")
    print(format_table(rows))
    for line in verdict(rows, path_max_length):
        print(line)
    return 0
