"""Replay a rosbag2 bag into the LA-Pose node and score the odometry it publishes.

``lapose replay BAG`` does what ``ros2 bag play`` + ``ros2 run`` + a recorder would, with plain rclpy
(rosbag2_py and ros2cli are not needed):

1. starts the node (``python -m lapose_ros.node``) as a subprocess on this process's ROS domain, on
   loopback only (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST);
2. waits until it subscribes to the image topic, then publishes every message of the bag at the
   recorded timing (or ``rate`` times faster) as the raw CDR bytes stored in the bag;
3. records the ``nav_msgs/Odometry`` the node publishes, waits for it to catch up, stops it;
4. writes ``lapose.tum`` (and ``ground_truth.tum`` from ``/ground_truth/odom``), ``metrics.json`` and
   ``trajectory.png`` into the output folder.

Metrics use the definitions of :mod:`lapose_core.eval.metrics`. Estimate and ground truth are
associated by header stamp (the node stamps its odometry with the image stamp). ATE-S and ATE-M are
computed over the whole associated trajectory; AUC over all frame pairs of 16-frame windows sampled at
``eval_fps`` along it, leaving out near-stationary windows as ``lapose eval`` does. Both trajectories
are body-frame poses (REP-103); every metric is unchanged by the fixed optical-to-body conjugation, so
they score exactly like camera poses.
"""
from __future__ import annotations

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
from typing import Any, Optional

import numpy as np

from lapose_core.data.rosbag_source import camera_info_topic_for, open_bag, stamp_ns
from lapose_core.data.sources import DataError

GROUND_TRUTH_TOPIC = "/ground_truth/odom"
ODOM_TOPIC = "/lapose/odom"
NODE_NAME = "lapose_node"
PUBLISHER_DEPTH = 50
REPO_ROOT = Path(__file__).resolve().parents[1]


class ReplayError(RuntimeError):
    """The replay could not run (bag, node start-up, ROS set-up); the message says what and where."""


@dataclass
class Trajectory:
    """Timestamped body poses: stamps in integer nanoseconds (bag time), poses (N, 4, 4)."""

    stamps_ns: np.ndarray
    poses: np.ndarray

    def __len__(self) -> int:
        return len(self.stamps_ns)

    @property
    def seconds(self) -> np.ndarray:
        return self.stamps_ns.astype(np.float64) * 1e-9


@dataclass
class ReplayResult:
    bag: Path
    out_dir: Path
    images_played: int
    image_stamps_ns: np.ndarray
    estimate: Trajectory
    ground_truth: Optional[Trajectory]
    metrics: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    node_returncode: Optional[int] = None

    @property
    def stamps_match_images(self) -> bool:
        """Every odometry stamp is the stamp of an image that was played."""
        return bool(len(self.estimate)) and bool(np.isin(self.estimate.stamps_ns, self.image_stamps_ns).all())

    def summary(self) -> str:
        m = self.metrics
        lines = [f"replayed {self.bag}: {self.images_played} images, {len(self.estimate)} odometry messages"]
        if len(self.estimate):
            first = (self.estimate.stamps_ns[0] - self.image_stamps_ns[0]) * 1e-9
            lines.append(f"  odometry from {first:.2f} s into the bag; stamps equal image stamps: "
                         f"{'yes' if self.stamps_match_images else 'NO'}")
        if self.ground_truth is None:
            lines.append(f"  no ground truth ({GROUND_TRUTH_TOPIC} not in the bag): trajectory only")
        elif m.get("associated_poses", 0) < 2:
            lines.append(f"  metrics: {m.get('note', 'not enough associated poses')}")
        else:
            lines.append(f"  associated poses: {m['associated_poses']}  ATE-S: {m['ate_s']:.4f}  "
                         f"ATE-M: {m['ate_m']:.3f} m")
            if m.get("auc_5") is not None:
                lines.append(f"  AUC@5: {m['auc_5']:.4f}  AUC@30: {m['auc_30']:.4f}  over {m['windows']} "
                             f"windows at {m['eval_fps']:g} fps ({m['stationary_windows']} stationary left out)")
            else:
                lines.append(f"  AUC: {m['auc_note']}")
        lines += [f"  {name}: {path}" for name, path in self.files.items()]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------- ground truth
def odometry_pose(pose_msg: Any) -> np.ndarray:
    """geometry_msgs/Pose (rosbags or rclpy) -> 4x4."""
    from transforms3d.quaternions import quat2mat

    q, p = pose_msg.orientation, pose_msg.position
    T = np.eye(4)
    T[:3, :3] = quat2mat([q.w, q.x, q.y, q.z])
    T[:3, 3] = [p.x, p.y, p.z]
    return T


def read_bag_odometry(bag: str | Path, topic: str = GROUND_TRUTH_TOPIC) -> Optional[Trajectory]:
    """The ``nav_msgs/Odometry`` of ``topic`` in a bag (by header stamp), or None if the bag has none."""
    reader = open_bag(bag)
    try:
        connections = [c for c in reader.connections if c.topic == topic]
        if not connections:
            return None
        if any(c.msgtype != "nav_msgs/msg/Odometry" for c in connections):
            raise DataError(f"{bag}: topic {topic} is {connections[0].msgtype}, expected nav_msgs/msg/Odometry")
        stamps, poses = [], []
        for connection, _, raw in reader.messages(connections=connections):
            msg = reader.deserialize(raw, connection.msgtype)
            stamps.append(stamp_ns(msg.header.stamp))
            poses.append(odometry_pose(msg.pose.pose))
    finally:
        reader.close()
    if not stamps:
        return None
    order = np.argsort(stamps, kind="stable")
    return Trajectory(np.asarray(stamps, dtype=np.int64)[order], np.stack(poses)[order])


# ---------------------------------------------------------------------------------- metrics
def associate(estimate: Trajectory, ground_truth: Trajectory, max_diff_s: float = 0.01):
    """Pairs (estimate index, ground-truth index) of nearest stamps within ``max_diff_s``, in order.

    Each ground-truth pose is used at most once (the closest estimate wins).
    """
    if not len(estimate) or not len(ground_truth):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    gt_ns = ground_truth.stamps_ns
    right = np.clip(np.searchsorted(gt_ns, estimate.stamps_ns), 1, max(len(gt_ns) - 1, 1))
    left = right - 1
    if len(gt_ns) == 1:
        nearest = np.zeros(len(estimate), dtype=np.int64)
    else:
        nearest = np.where(np.abs(gt_ns[left] - estimate.stamps_ns) <= np.abs(gt_ns[right] - estimate.stamps_ns),
                           left, right)
    diff = np.abs(gt_ns[nearest] - estimate.stamps_ns)
    best: dict[int, int] = {}
    for i in np.flatnonzero(diff <= max_diff_s * 1e9):
        j = int(nearest[i])
        if j not in best or diff[i] < diff[best[j]]:
            best[j] = int(i)
    pairs = sorted((i, j) for j, i in best.items())
    return (np.array([p[0] for p in pairs], dtype=np.int64), np.array([p[1] for p in pairs], dtype=np.int64))


def trajectory_metrics(estimate: Trajectory, ground_truth: Optional[Trajectory], *, eval_fps: float = 2.0,
                       num_frames: int = 16, min_mean_step_m: float = 0.1, window_stride_s: float = 1.0,
                       max_diff_s: float = 0.01) -> dict[str, Any]:
    """metrics.json content: ATE-S / ATE-M over the associated trajectory, AUC over windows along it."""
    from lapose_core.data.windows import window_indices, window_starts
    from lapose_core.eval import metrics as M

    out: dict[str, Any] = {"estimated_poses": len(estimate), "eval_fps": eval_fps, "num_frames": num_frames,
                           "min_mean_step_m": min_mean_step_m, "association_max_diff_s": max_diff_s}
    if ground_truth is None:
        out.update(ground_truth=False, note=f"the bag has no {GROUND_TRUTH_TOPIC}: no metrics")
        return out
    est_idx, gt_idx = associate(estimate, ground_truth, max_diff_s)
    out.update(ground_truth=True, ground_truth_poses=len(ground_truth), associated_poses=int(len(est_idx)))
    if len(est_idx) < 2:
        out["note"] = (f"only {len(est_idx)} odometry poses have a ground-truth pose within {max_diff_s} s: "
                       f"no metrics")
        return out
    pred, gt = estimate.poses[est_idx], ground_truth.poses[gt_idx]
    t = (estimate.stamps_ns[est_idx] - estimate.stamps_ns[est_idx[0]]) * 1e-9
    out["duration_s"] = float(t[-1] - t[0])
    out["ate_m"] = M.ate_m(pred, gt)
    try:
        out["ate_s"] = M.ate_s(pred, gt)
    except M.MetricError as e:
        out["ate_s"], out["ate_s_note"] = None, str(e)

    errors, used, stationary = [], 0, 0
    for start in window_starts(t, eval_fps, num_frames, stride_s=window_stride_s):
        idx = window_indices(t, eval_fps, num_frames, start)
        if idx is None:
            continue
        if M.is_stationary(gt[idx], min_mean_step_m):
            stationary += 1
            continue
        errors.append(M.pose_pair_errors(pred[idx], gt[idx]))
        used += 1
    out.update(windows=used, stationary_windows=stationary, window_stride_s=window_stride_s)
    if errors:
        pooled = np.concatenate(errors)
        out.update(auc_5=M.auc(pooled, 5), auc_30=M.auc(pooled, 30), pairs=int(pooled.size))
    else:
        span = (num_frames - 1) / eval_fps
        out.update(auc_5=None, auc_30=None,
                   auc_note=(f"no moving {num_frames}-frame window at {eval_fps:g} fps ({span:.1f} s) fits in "
                             f"the {out['duration_s']:.1f} s of associated odometry"
                             + (f" ({stationary} stationary windows left out)" if stationary else "")))
    return out


# ---------------------------------------------------------------------------------- files
def write_tum(path: Path, trajectory: Trajectory) -> None:
    """TUM trajectory: ``stamp x y z qx qy qz qw`` per line, stamp in seconds (bag time)."""
    from evo.core.trajectory import PoseTrajectory3D
    from evo.tools import file_interface

    if not len(trajectory):
        path.write_text("")  # the node published nothing: an empty trajectory, still a valid file
        return
    traj = PoseTrajectory3D(poses_se3=list(trajectory.poses), timestamps=trajectory.seconds)
    file_interface.write_tum_trajectory_file(str(path), traj)


def plot_trajectories(path: Path, estimate: Trajectory, ground_truth: Optional[Trajectory],
                      title: str) -> None:
    """x-y top view in the odometry frame.

    The node's odometry frame starts where it starts tracking (after warming up), so its trajectory
    is drawn from the ground-truth pose at its first stamp (no other alignment); without ground
    truth it is drawn as published.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 6.0), dpi=110)
    label = "LA-Pose"
    poses = estimate.poses
    if ground_truth is not None:
        ax.plot(ground_truth.poses[:, 0, 3], ground_truth.poses[:, 1, 3], "-", color="0.3", lw=2,
                label="ground truth")
        ax.plot(*ground_truth.poses[0, :2, 3], "o", color="0.3")
        if len(estimate):
            est_idx, gt_idx = associate(estimate, ground_truth)
            if len(est_idx):
                anchor = ground_truth.poses[gt_idx[0]] @ np.linalg.inv(estimate.poses[est_idx[0]])
                poses = anchor @ estimate.poses
                label = "LA-Pose (from the ground-truth pose where tracking starts)"
    if len(poses):
        ax.plot(poses[:, 0, 3], poses[:, 1, 3], "-", color="tab:red", lw=1.5, label=label)
        ax.plot(*poses[0, :2, 3], "o", color="tab:red")
    else:
        ax.text(0.5, 0.5, "no odometry published", transform=ax.transAxes, ha="center")
    ax.set_xlabel("x [m] (forward at start)")
    ax.set_ylabel("y [m] (left at start)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------------------- ROS plumbing
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


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _Recorder:
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

    def trajectory(self) -> Trajectory:
        with self.lock:
            if not self.stamps:
                return Trajectory(np.zeros(0, dtype=np.int64), np.zeros((0, 4, 4)))
            return Trajectory(np.asarray(self.stamps, dtype=np.int64), np.stack(self.poses))


def _wait_for(condition, timeout_s: float, node_proc: Optional[subprocess.Popen], what: str,
              log_path: Optional[Path]) -> None:
    """Poll ``condition`` until true; fail clearly on timeout or when the node process has exited."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if node_proc is not None and node_proc.poll() is not None:
            raise ReplayError(f"the node exited (code {node_proc.returncode}) while waiting for {what}; "
                              f"its log ({log_path}) ends with:\n{_tail(log_path)}")
        if time.monotonic() > deadline:
            raise ReplayError(f"timed out after {timeout_s:.0f} s waiting for {what}"
                              + (f"; node log ({log_path}) ends with:\n{_tail(log_path)}" if log_path else ""))
        time.sleep(0.05)


def _settle_discovery(publishers: list, quiet_s: float = 0.5, max_wait_s: float = 3.0) -> None:
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


def play_and_record(bag: str | Path, *, rate: float = 1.0, image_topic: str = "/camera/image_raw",
                    odom_topic: str = ODOM_TOPIC, domain_id: Optional[int] = None,
                    command: Optional[list[str]] = None, log_path: Optional[Path] = None,
                    startup_timeout_s: float = 180.0, settle_s: float = 3.0, drain_timeout_s: float = 60.0,
                    skip_topics: tuple[str, ...] = (), verbose: bool = True) -> tuple[Trajectory, np.ndarray, Optional[int]]:
    """Start ``command`` (the node, or any process that subscribes ``image_topic`` and publishes
    ``nav_msgs/Odometry`` on ``odom_topic``), play the bag into it, record its odometry, stop it.

    Returns (recorded odometry, stamps of the images played, the process's exit code or None when
    ``command`` is None and the subscriber is already running elsewhere).
    """
    try:
        import rclpy
        from nav_msgs.msg import Odometry
        from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
        from rclpy.qos import QoSProfile
    except ImportError as e:
        raise ReplayError(f"rclpy is not importable ({e}): run 'make setup-ros' (tools/setup_ros.sh .venv) "
                          f"or source a ROS 2 distribution") from None
    if rate <= 0:
        raise ReplayError(f"rate must be positive, got {rate}")
    domain_id = default_domain_id() if domain_id is None else domain_id
    # Read by rcl at init: discovery stays on loopback (the child gets the same via ros_environment).
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"

    reader = open_bag(bag)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id)
    proc = None
    log_file = None
    executor = spinner = None
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
        recorder = _Recorder()
        node.create_subscription(Odometry, odom_topic, recorder, QoSProfile(depth=200))
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)

        def spin() -> None:
            try:
                executor.spin()
            except ExternalShutdownException:  # the context was shut down under it: done
                pass

        spinner = threading.Thread(target=spin, daemon=True)
        spinner.start()

        if command is not None:
            log_file = open(log_path, "w") if log_path else subprocess.DEVNULL
            proc = subprocess.Popen(command, env=ros_environment(domain_id), stdout=log_file,
                                    stderr=subprocess.STDOUT, cwd=str(REPO_ROOT), start_new_session=True)
        if verbose:
            print(f"[replay] waiting for a subscriber on {image_topic} (ROS_DOMAIN_ID={domain_id})")
        started = time.monotonic()
        _wait_for(lambda: publishers[image_topic].get_subscription_count() > 0, startup_timeout_s, proc,
                  f"the node to subscribe {image_topic}", log_path)
        _wait_for(lambda: node.count_publishers(odom_topic) > 0, startup_timeout_s, proc,
                  f"the node to publish {odom_topic}", log_path)
        _settle_discovery(list(publishers.values()))
        if verbose:
            print(f"[replay] node ready after {time.monotonic() - started:.1f} s; playing at {rate:g}x")

        image_stamps: list[int] = []
        wanted = [c for c in reader.connections if c.topic in publishers]
        t0_bag, t0_wall = None, time.monotonic()
        for connection, timestamp, raw in reader.messages(connections=wanted):
            if t0_bag is None:
                t0_bag = timestamp
            delay = t0_wall + (timestamp - t0_bag) * 1e-9 / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if proc is not None and proc.poll() is not None:
                raise ReplayError(f"the node exited (code {proc.returncode}) during playback; its log "
                                  f"({log_path}) ends with:\n{_tail(log_path)}")
            publishers[connection.topic].publish(bytes(raw))
            if connection.topic == image_topic:
                image_stamps.append(stamp_ns(reader.deserialize(raw, connection.msgtype).header.stamp))
        if verbose:
            print(f"[replay] played {len(image_stamps)} images in {time.monotonic() - t0_wall:.1f} s; "
                  f"waiting for the node to finish")

        # Done when the odometry of the last image arrived, or nothing new came for settle_s.
        last_stamp = max(image_stamps) if image_stamps else None
        end = time.monotonic()
        deadline = end + drain_timeout_s
        while time.monotonic() < deadline:
            trajectory = recorder.trajectory()
            if len(trajectory) and trajectory.stamps_ns.max() == last_stamp:
                break
            if time.monotonic() - max(recorder.last_arrival, end) > settle_s:
                break
            time.sleep(0.05)
        time.sleep(0.2)
        returncode = stop_process(proc) if proc is not None else None
        proc = None
        return recorder.trajectory(), np.asarray(image_stamps, dtype=np.int64), returncode
    finally:
        if proc is not None:
            stop_process(proc)
        if executor is not None:
            executor.shutdown(timeout_sec=2.0)
            spinner.join(timeout=5.0)
        if log_file not in (None, subprocess.DEVNULL):
            log_file.close()
        reader.close()
        rclpy.try_shutdown(context=context)


# ---------------------------------------------------------------------------------- entry point
def replay_bag(bag: str | Path, out_dir: str | Path, rate: float = 1.0, checkpoint: Optional[str] = None, *,
               image_topic: str = "/camera/image_raw", camera_info_topic: Optional[str] = None,
               odom_topic: str = ODOM_TOPIC, node_params: Optional[dict[str, Any]] = None,
               command: Optional[list[str]] = None, domain_id: Optional[int] = None,
               eval_fps: float = 2.0, startup_timeout_s: float = 180.0, drain_timeout_s: float = 60.0,
               verbose: bool = True) -> ReplayResult:
    """Replay ``bag`` into the node and write the trajectory, metrics and plot into ``out_dir``.

    ``checkpoint`` and ``node_params`` (name -> value) become the node's ROS parameters; ``command``
    replaces the node's command line entirely (any process that turns images into odometry).
    """
    bag = Path(bag)
    out_dir = Path(out_dir)
    try:
        ground_truth = read_bag_odometry(bag)
    except DataError as e:
        raise ReplayError(str(e)) from None
    out_dir.mkdir(parents=True, exist_ok=True)
    camera_info_topic = camera_info_topic or camera_info_topic_for(image_topic)
    if command is None:
        command = node_command(checkpoint, image_topic, camera_info_topic, odom_topic, node_params or {})
    log_path = out_dir / "node.log"
    try:
        estimate, image_stamps, returncode = play_and_record(
            bag, rate=rate, image_topic=image_topic, odom_topic=odom_topic, domain_id=domain_id,
            command=command, log_path=log_path, startup_timeout_s=startup_timeout_s,
            drain_timeout_s=drain_timeout_s, verbose=verbose)
    except DataError as e:
        raise ReplayError(str(e)) from None

    files = {"node log": log_path}
    files["trajectory"] = out_dir / "lapose.tum"
    write_tum(files["trajectory"], estimate)
    if ground_truth is not None:
        files["ground truth"] = out_dir / "ground_truth.tum"
        write_tum(files["ground truth"], ground_truth)
    metrics = trajectory_metrics(estimate, ground_truth, eval_fps=eval_fps)
    metrics.update(bag=str(bag), rate=rate, images_played=int(len(image_stamps)),
                   odometry_messages=int(len(estimate)),
                   odometry_stamps_equal_image_stamps=bool(len(estimate))
                   and bool(np.isin(estimate.stamps_ns, image_stamps).all()),
                   checkpoint=checkpoint or "(node default)")
    files["metrics"] = out_dir / "metrics.json"
    files["metrics"].write_text(json.dumps(metrics, indent=2) + "\n")
    files["plot"] = out_dir / "trajectory.png"
    plot_trajectories(files["plot"], estimate, ground_truth, title=f"{bag.name}: x-y top view (odom frame)")
    result = ReplayResult(bag=bag, out_dir=out_dir, images_played=len(image_stamps),
                          image_stamps_ns=image_stamps, estimate=estimate, ground_truth=ground_truth,
                          metrics=metrics, files=files, node_returncode=returncode)
    if verbose:
        print(result.summary())
    return result


def parse_node_params(items: list[str]) -> dict[str, str]:
    """``["model_fps:=5.0", ...]`` -> {"model_fps": "5.0"} (values passed to the node verbatim)."""
    params = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise ReplayError(f"--param '{item}': expected NAME:=VALUE (e.g. model_fps:=5.0)")
        params[name] = value
    return params


def add_arguments(parser) -> None:
    parser.add_argument("bag", metavar="BAG", help="rosbag2 bag folder, or its .mcap/.db3 file")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1)")
    parser.add_argument("--out", default=None, help="output folder (default out/replay/<bag name>)")
    parser.add_argument("--json", default=None, help="also write metrics.json to this path")
    parser.add_argument("--checkpoint", default=None,
                        help="node checkpoint (a file or run folder, 'random:<preset>'; default: bundled)")
    parser.add_argument("--image-topic", default="/camera/image_raw", help="default /camera/image_raw")
    parser.add_argument("--eval-fps", type=float, default=2.0, help="frame rate of the AUC windows (default 2)")
    parser.add_argument("--estimator", choices=("hybrid", "lapose"), default=None,
                        help="the node's estimator (default: the node's default, hybrid)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                        help="extra node parameter, repeatable (e.g. --param model_fps:=5.0)")
    parser.add_argument("--startup-timeout", type=float, default=180.0,
                        help="seconds to wait for the node to come up (default 180)")


def run(args) -> int:
    bag = Path(args.bag)
    out = Path(args.out) if args.out else REPO_ROOT / "out" / "replay" / (bag.stem if bag.is_file() else bag.name)
    params = parse_node_params(args.param)
    if args.estimator:
        params["estimator"] = args.estimator
    result = replay_bag(bag, out, rate=args.rate, checkpoint=args.checkpoint, image_topic=args.image_topic,
                        node_params=params, eval_fps=args.eval_fps,
                        startup_timeout_s=args.startup_timeout)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.metrics, indent=2) + "\n")
    return 0
