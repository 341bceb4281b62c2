"""Play a bag into a running odometry node over DDS and record what it publishes (plain rclpy).

Two ways to play:

* **lockstep** (the default for evaluation): each image is published only once the node has
  acknowledged the previous one on its ``~/processed`` topic (one ``diagnostic_msgs/DiagnosticArray``
  per image, header = the image's). No frame is dropped and keyframes follow from the image stamps,
  so the recorded odometry is a function of the bag and the model alone, whatever the machine's load.
  The other topics (camera info, ground truth, TF) are published in bag order in between.
* **realtime**: the bag's recorded timing (``rate`` times faster), as a camera would deliver it. A
  node slower than the stream drops frames (it keeps the newest); how many is counted from its
  acknowledgements. The figures then depend on the machine's load.

The node is started as a subprocess on this process's ROS domain, on loopback only
(ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST), and stopped with SIGINT at the end.
"""
from __future__ import annotations

import collections
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from lapose_core.data.rosbag_source import open_bag, stamp_ns

from .replay_metrics import Trajectory, odometry_pose

MODES = ("lockstep", "realtime")
ODOM_TOPIC = "/lapose/odom"
NODE_NAME = "lapose_node"
PROCESSED_TOPIC = f"/{NODE_NAME}/processed"  # the node's ~/processed under its replay name
PUBLISHER_DEPTH = 50
REPO_ROOT = Path(__file__).resolve().parents[1]


class ReplayError(RuntimeError):
    """The replay could not run (bag, node start-up, ROS set-up); the message says what and where."""


@dataclass
class Playback:
    """What playing a bag into the node gave."""

    mode: str
    estimate: Trajectory
    image_stamps_ns: np.ndarray  # every image played, in order
    processed_stamps_ns: np.ndarray  # the images the node acknowledged (unique stamps)
    outcomes: dict[str, int] = field(default_factory=dict)  # per-image outcome -> count
    acknowledging: bool = True  # the node publishes acknowledgements at all
    resent: int = 0  # lockstep: images published again after no acknowledgement came
    wall_s: float = 0.0
    returncode: Optional[int] = None

    @property
    def frames_dropped(self) -> Optional[int]:
        """Images played that the node never took up (None: the node does not acknowledge)."""
        if not self.acknowledging:
            return None
        return int(len(self.image_stamps_ns) - np.isin(self.image_stamps_ns, self.processed_stamps_ns).sum())


# ---------------------------------------------------------------------------------- process helpers
def message_class(msgtype: str):
    """``pkg/msg/Name`` -> the rclpy message class, or None when the package is not installed."""
    package, kind, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError):
        return None


def ros_environment(domain_id: int) -> dict[str, str]:
    """This process's environment for a ROS child: same domain, loopback only, the repo importable."""
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def default_domain_id() -> int:
    value = os.environ.get("ROS_DOMAIN_ID", "")
    if value:
        if not value.isdigit() or not 0 <= int(value) <= 232:
            raise ReplayError(f"ROS_DOMAIN_ID='{value}' is not a domain id (0..232)")
        return int(value)
    return 100 + os.getpid() % 100


def node_command(checkpoint: Optional[str], image_topic: str, camera_info_topic: str, odom_topic: str,
                 params: dict[str, Any]) -> list[str]:
    """The node's command line: ``python -m lapose_ros.node --ros-args -p name:=value ...``."""
    cmd = [sys.executable, "-m", "lapose_ros.node", "--ros-args", "-r", f"__node:={NODE_NAME}",
           "-p", f"image_topic:={image_topic}", "-p", f"camera_info_topic:={camera_info_topic}",
           "-p", f"odom_topic:={odom_topic}"]
    if checkpoint:
        cmd += ["-p", f"checkpoint:={checkpoint}"]
    for name, value in params.items():
        text = value if isinstance(value, str) else json.dumps(value)
        cmd += ["-p", f"{name}:={text}"]
    return cmd


def log_tail(path: Optional[Path], lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except (OSError, AttributeError):
        return "(no log)"


def stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> int:
    """SIGINT (the node shuts down cleanly), then SIGTERM, then SIGKILL; returns the exit code."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait(timeout=timeout_s)


def wait_for(condition: Callable[[], bool], timeout_s: float, node_proc: Optional[subprocess.Popen],
             what: str, log_path: Optional[Path]) -> None:
    """Poll ``condition`` until true; fail clearly on timeout or when the node process has exited."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        check_alive(node_proc, f"waiting for {what}", log_path)
        if time.monotonic() > deadline:
            raise ReplayError(f"timed out after {timeout_s:.0f} s waiting for {what}"
                              + (f"; node log ({log_path}) ends with:\n{log_tail(log_path)}" if log_path else ""))
        time.sleep(0.02)


def check_alive(node_proc: Optional[subprocess.Popen], doing: str, log_path: Optional[Path]) -> None:
    if node_proc is not None and node_proc.poll() is not None:
        raise ReplayError(f"the node exited (code {node_proc.returncode}) while {doing}; "
                          f"its log ({log_path}) ends with:\n{log_tail(log_path)}")


def settle_discovery(publishers: list, quiet_s: float = 0.5, max_wait_s: float = 3.0) -> None:
    """Wait until the subscriber counts of all publishers stop changing.

    The image subscription is matched first; the node's other subscriptions (camera info, TF) are
    matched in the same discovery round or a moment later, and their first messages would be lost.
    """
    deadline = time.monotonic() + max_wait_s
    counts = [p.get_subscription_count() for p in publishers]
    stable_since = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - stable_since < quiet_s:
        time.sleep(0.05)
        now = [p.get_subscription_count() for p in publishers]
        if now != counts:
            counts, stable_since = now, time.monotonic()


class SpinningThread:
    """A single-threaded executor spinning ``node`` in a daemon thread, until :meth:`stop`."""

    def __init__(self, node: Any, context: Any):
        from rclpy.executors import SingleThreadedExecutor

        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except ExternalShutdownException:  # the context was shut down under it: done
            pass

    def stop(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.thread.join(timeout=5.0)


# ---------------------------------------------------------------------------------- recorders
class OdometryRecorder:
    """Collects the node's odometry (stamp, pose) and when each arrived; thread-safe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.stamps: list[int] = []
        self.poses: list[np.ndarray] = []
        self.last_arrival = 0.0

    def __call__(self, msg) -> None:
        with self.lock:
            self.stamps.append(stamp_ns(msg.header.stamp))
            self.poses.append(odometry_pose(msg.pose.pose))
            self.last_arrival = time.monotonic()

    def __len__(self) -> int:
        with self.lock:
            return len(self.stamps)

    def trajectory(self) -> Trajectory:
        with self.lock:
            if not self.stamps:
                return Trajectory.empty()
            return Trajectory(np.asarray(self.stamps, dtype=np.int64), np.stack(self.poses))


class FrameAcknowledgements:
    """The node's per-image acknowledgements (``~/processed``): which stamps it is done with."""

    def __init__(self):
        self.cond = threading.Condition()
        self.stamps: dict[int, str] = {}  # stamp -> outcome (first acknowledgement)
        self.with_odometry: set[int] = set()

    def __call__(self, msg) -> None:
        status = msg.status[0] if msg.status else None
        stamp = stamp_ns(msg.header.stamp)
        with self.cond:
            if stamp not in self.stamps:
                self.stamps[stamp] = status.message if status is not None else ""
                values = {kv.key: kv.value for kv in status.values} if status is not None else {}
                if values.get("odometry_published") == "true":
                    self.with_odometry.add(stamp)
            self.cond.notify_all()

    def wait(self, stamp: int, timeout_s: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: stamp in self.stamps, timeout=timeout_s)

    def outcomes(self) -> dict[str, int]:
        with self.cond:
            return dict(collections.Counter(self.stamps.values()))


# ---------------------------------------------------------------------------------- playback
def play_and_record(bag: str | Path, *, mode: str = "lockstep", rate: float = 1.0,
                    image_topic: str = "/camera/image_raw", odom_topic: str = ODOM_TOPIC,
                    processed_topic: str = PROCESSED_TOPIC, domain_id: Optional[int] = None,
                    command: Optional[list[str]] = None, log_path: Optional[Path] = None,
                    startup_timeout_s: float = 180.0, settle_s: float = 3.0, drain_timeout_s: float = 60.0,
                    ack_timeout_s: float = 120.0, resend_after_s: float = 5.0,
                    skip_topics: tuple[str, ...] = (), verbose: bool = True) -> Playback:
    """Start ``command`` (the node, or any process that subscribes ``image_topic`` and publishes
    ``nav_msgs/Odometry`` on ``odom_topic``, plus acknowledgements on ``processed_topic`` for
    lockstep), play the bag into it, record its odometry, stop it.

    ``command`` None: the subscriber is already running elsewhere (its exit code is then None).
    """
    try:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from nav_msgs.msg import Odometry
        from rclpy.qos import QoSProfile
    except ImportError as e:
        raise ReplayError(f"rclpy is not importable ({e}): run 'make setup-ros' (tools/setup_ros.sh .venv) "
                          f"or source a ROS 2 distribution") from None
    if mode not in MODES:
        raise ReplayError(f"mode must be one of {', '.join(MODES)}, got '{mode}'")
    if rate <= 0:
        raise ReplayError(f"rate must be positive, got {rate}")
    lockstep = mode == "lockstep"
    domain_id = default_domain_id() if domain_id is None else domain_id
    # Read by rcl at init: discovery stays on loopback (the child gets the same via ros_environment).
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"

    reader = open_bag(bag)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id)
    proc = None
    log_file = None
    spinner = None
    try:
        node = rclpy.create_node("lapose_replay", context=context)
        publishers, skipped = {}, []
        for connection in reader.connections:
            topic = connection.topic
            if topic in publishers or topic in skip_topics or topic == odom_topic:
                continue
            cls = message_class(connection.msgtype)
            if cls is None:
                skipped.append(f"{topic} ({connection.msgtype})")
                continue
            # Reliable (a best-effort subscriber still matches); deep enough to ride out a slow reader.
            publishers[topic] = node.create_publisher(cls, topic, QoSProfile(depth=PUBLISHER_DEPTH))
        if image_topic not in publishers:
            raise ReplayError(f"{bag}: no playable image topic '{image_topic}'; topics in the bag: "
                              f"{', '.join(sorted({c.topic for c in reader.connections}))}")
        if skipped and verbose:
            print(f"[replay] not played (message package not installed): {', '.join(skipped)}")
        recorder, acks = OdometryRecorder(), FrameAcknowledgements()
        node.create_subscription(Odometry, odom_topic, recorder, QoSProfile(depth=200))
        node.create_subscription(DiagnosticArray, processed_topic, acks, QoSProfile(depth=200))
        spinner = SpinningThread(node, context)

        if command is not None:
            log_file = open(log_path, "w") if log_path else subprocess.DEVNULL
            proc = subprocess.Popen(command, env=ros_environment(domain_id), stdout=log_file,
                                    stderr=subprocess.STDOUT, cwd=str(REPO_ROOT), start_new_session=True)
        if verbose:
            print(f"[replay] waiting for a subscriber on {image_topic} (ROS_DOMAIN_ID={domain_id})")
        started = time.monotonic()
        wait_for(lambda: publishers[image_topic].get_subscription_count() > 0, startup_timeout_s, proc,
                 f"the node to subscribe {image_topic}", log_path)
        wait_for(lambda: node.count_publishers(odom_topic) > 0, startup_timeout_s, proc,
                 f"the node to publish {odom_topic}", log_path)
        if lockstep:
            try:
                wait_for(lambda: node.count_publishers(processed_topic) > 0, 10.0, proc,
                         f"the node to publish {processed_topic}", log_path)
            except ReplayError as e:
                raise ReplayError(f"lockstep replay needs the node's per-image acknowledgements on "
                                  f"{processed_topic} (lapose_node publishes them; use mode 'realtime' "
                                  f"for a process that does not): {e}") from None
        settle_discovery(list(publishers.values()))
        acknowledging = node.count_publishers(processed_topic) > 0
        if verbose:
            how = "in lockstep (each image after the node is done with the previous one)" if lockstep \
                else f"in real time at {rate:g}x"
            print(f"[replay] node ready after {time.monotonic() - started:.1f} s; playing {how}")

        image_stamps: list[int] = []
        resent = 0
        wanted = [c for c in reader.connections if c.topic in publishers]
        t0_bag, t0_wall = None, time.monotonic()
        for connection, timestamp, raw in reader.messages(connections=wanted):
            if t0_bag is None:
                t0_bag = timestamp
            if not lockstep:
                delay = t0_wall + (timestamp - t0_bag) * 1e-9 / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            check_alive(proc, "playing the bag", log_path)
            publisher, data = publishers[connection.topic], bytes(raw)
            publisher.publish(data)
            if connection.topic != image_topic:
                continue
            stamp = stamp_ns(reader.deserialize(raw, connection.msgtype).header.stamp)
            image_stamps.append(stamp)
            if lockstep:
                resent += _wait_acknowledged(acks, stamp, lambda: publisher.publish(data), proc, log_path,
                                             ack_timeout_s, resend_after_s)
        wall_s = time.monotonic() - t0_wall
        if verbose:
            print(f"[replay] played {len(image_stamps)} images in {wall_s:.1f} s; waiting for the node "
                  f"to finish")
        _drain(recorder, acks, lockstep, max(image_stamps) if image_stamps else None, settle_s,
               drain_timeout_s)
        returncode = stop_process(proc) if proc is not None else None
        proc = None
        with acks.cond:
            processed = np.asarray(sorted(acks.stamps), dtype=np.int64)
        return Playback(mode=mode, estimate=recorder.trajectory(),
                        image_stamps_ns=np.asarray(image_stamps, dtype=np.int64), processed_stamps_ns=processed,
                        outcomes=acks.outcomes(), acknowledging=acknowledging, resent=resent, wall_s=wall_s,
                        returncode=returncode)
    finally:
        if proc is not None:
            stop_process(proc)
        if spinner is not None:
            spinner.stop()
        if log_file not in (None, subprocess.DEVNULL):
            log_file.close()
        reader.close()
        rclpy.try_shutdown(context=context)


def _wait_acknowledged(acks: FrameAcknowledgements, stamp: int, publish_again: Callable[[], None],
                       proc: Optional[subprocess.Popen], log_path: Optional[Path], timeout_s: float,
                       resend_after_s: float) -> int:
    """Block until the node acknowledges the image at ``stamp``; returns how often it was resent.

    The node's image subscription is best effort: an image lost on the way is published again after
    ``resend_after_s`` without an answer. That is safe because the node skips an image with the stamp
    of the one before (a second copy is acknowledged again, not processed again).
    """
    start = last_sent = time.monotonic()
    resent = 0
    while not acks.wait(stamp, timeout_s=0.1):
        check_alive(proc, f"waiting for it to process the image stamped {stamp * 1e-9:.3f}", log_path)
        now = time.monotonic()
        if now - start > timeout_s:
            raise ReplayError(f"the node did not acknowledge the image stamped {stamp * 1e-9:.3f} within "
                              f"{timeout_s:.0f} s (resent {resent} times); node log ({log_path}) ends "
                              f"with:\n{log_tail(log_path)}")
        if now - last_sent > resend_after_s:
            publish_again()
            resent, last_sent = resent + 1, now
    return resent


def _drain(recorder: OdometryRecorder, acks: FrameAcknowledgements, lockstep: bool, last_stamp: Optional[int],
           settle_s: float, timeout_s: float) -> None:
    """Wait for the odometry still in flight after the last image."""
    end = time.monotonic()
    deadline = end + timeout_s
    while time.monotonic() < deadline:
        if lockstep:
            # Every image is acknowledged, each saying whether it gave odometry: wait for exactly those.
            with acks.cond:
                expected = len(acks.with_odometry)
            if len(recorder) >= expected:
                return
        else:
            trajectory = recorder.trajectory()
            if len(trajectory) and trajectory.stamps_ns.max() == last_stamp:
                break
            if time.monotonic() - max(recorder.last_arrival, end) > settle_s:
                break
        time.sleep(0.02)
    time.sleep(0.2)
