"""``lapose replay BAG``: play a rosbag2 bag into the LA-Pose node and score the odometry it publishes.

It does what ``ros2 bag play`` + ``ros2 run`` + a recorder would, with plain rclpy (rosbag2_py and
ros2cli are not needed):

1. starts the node (``python -m lapose_ros.node``) as a subprocess on this process's ROS domain, on
   loopback only;
2. plays the bag into it (:mod:`lapose_ros.playback`): in **lockstep** by default, each image only
   after the node is done with the previous one, so the result depends on the bag and the model
   alone; or in **real time** (``--mode realtime``, ``--rate``), as a camera would, counting the frames
   the node dropped;
3. records the ``nav_msgs/Odometry`` the node publishes and stops it;
4. writes ``lapose.tum`` (and ``ground_truth.tum`` from ``/ground_truth/odom``), ``metrics.json``
   (:mod:`lapose_ros.replay_metrics`) and ``trajectory.png`` (:mod:`lapose_ros.replay_plot`) into the
   output folder.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from lapose_core.data.rosbag_source import camera_info_topic_for
from lapose_core.data.sources import DataError

from .playback import (MODES, ODOM_TOPIC, PROCESSED_TOPIC, REPO_ROOT, Playback, ReplayError, node_command,
                       play_and_record)
from .replay_metrics import (GROUND_TRUTH_TOPIC, Trajectory, associate, read_bag_odometry,  # noqa: F401
                             trajectory_metrics, write_tum)
from .replay_plot import plot_trajectories

REALTIME_NOTE = ("real-time playback: the node drops frames when it is slower than the stream, so these "
                 "figures depend on the machine's load; use lockstep mode to compare models")


@dataclass
class ReplayResult:
    bag: Path
    out_dir: Path
    playback: Playback
    ground_truth: Optional[Trajectory]
    metrics: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def estimate(self) -> Trajectory:
        return self.playback.estimate

    @property
    def image_stamps_ns(self) -> np.ndarray:
        return self.playback.image_stamps_ns

    @property
    def images_played(self) -> int:
        return len(self.playback.image_stamps_ns)

    @property
    def node_returncode(self) -> Optional[int]:
        return self.playback.returncode

    @property
    def stamps_match_images(self) -> bool:
        """Every odometry stamp is the stamp of an image that was played."""
        return bool(len(self.estimate)) and bool(np.isin(self.estimate.stamps_ns, self.image_stamps_ns).all())

    def summary(self) -> str:
        m, pb = self.metrics, self.playback
        lines = [f"replayed {self.bag} ({pb.mode}): {self.images_played} images, {len(self.estimate)} "
                 f"odometry messages"]
        dropped = "unknown (the node does not acknowledge images)" if pb.frames_dropped is None \
            else str(pb.frames_dropped)
        lines.append(f"  frames dropped by the node: {dropped}"
                     + (f"; {REALTIME_NOTE}" if pb.mode == "realtime" else ""))
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


def replay_bag(bag: str | Path, out_dir: str | Path, rate: float = 1.0, checkpoint: Optional[str] = None, *,
               mode: str = "lockstep", image_topic: str = "/camera/image_raw",
               camera_info_topic: Optional[str] = None, odom_topic: str = ODOM_TOPIC,
               processed_topic: str = PROCESSED_TOPIC, node_params: Optional[dict[str, Any]] = None,
               command: Optional[list[str]] = None, domain_id: Optional[int] = None,
               eval_fps: float = 2.0, startup_timeout_s: float = 180.0, drain_timeout_s: float = 60.0,
               verbose: bool = True) -> ReplayResult:
    """Replay ``bag`` into the node and write the trajectory, metrics and plot into ``out_dir``.

    ``mode`` is 'lockstep' (deterministic; ``rate`` is not used) or 'realtime' (at ``rate`` times the
    recorded speed). ``checkpoint`` and ``node_params`` (name -> value) become the node's ROS
    parameters; ``command`` replaces the node's command line entirely (any process that turns images
    into odometry, and acknowledges each image on ``processed_topic`` for lockstep).
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
        playback = play_and_record(bag, mode=mode, rate=rate, image_topic=image_topic, odom_topic=odom_topic,
                                   processed_topic=processed_topic, domain_id=domain_id, command=command,
                                   log_path=log_path, startup_timeout_s=startup_timeout_s,
                                   drain_timeout_s=drain_timeout_s, verbose=verbose)
    except DataError as e:
        raise ReplayError(str(e)) from None
    estimate, image_stamps = playback.estimate, playback.image_stamps_ns

    files = {"node log": log_path}
    files["trajectory"] = out_dir / "lapose.tum"
    write_tum(files["trajectory"], estimate)
    if ground_truth is not None:
        files["ground truth"] = out_dir / "ground_truth.tum"
        write_tum(files["ground truth"], ground_truth)
    metrics = trajectory_metrics(estimate, ground_truth, eval_fps=eval_fps)
    metrics.update(bag=str(bag), mode=mode, rate=rate if mode == "realtime" else None,
                   images_played=int(len(image_stamps)), odometry_messages=int(len(estimate)),
                   frames_dropped=playback.frames_dropped, frame_outcomes=playback.outcomes,
                   odometry_stamps_equal_image_stamps=bool(len(estimate))
                   and bool(np.isin(estimate.stamps_ns, image_stamps).all()),
                   checkpoint=checkpoint or "(node default)")
    if mode == "realtime":
        metrics["load_note"] = REALTIME_NOTE
    files["metrics"] = out_dir / "metrics.json"
    files["metrics"].write_text(json.dumps(metrics, indent=2) + "\n")
    files["plot"] = out_dir / "trajectory.png"
    plot_trajectories(files["plot"], estimate, ground_truth, title=f"{bag.name}: x-y top view (odom frame)")
    result = ReplayResult(bag=bag, out_dir=out_dir, playback=playback, ground_truth=ground_truth,
                          metrics=metrics, files=files)
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
    parser.add_argument("--mode", choices=MODES, default="lockstep",
                        help="lockstep (default): each image once the node is done with the previous one, "
                             "the same result on any machine; realtime: the recorded timing, frames the "
                             "node cannot keep up with are dropped and counted")
    parser.add_argument("--rate", type=float, default=None,
                        help="realtime playback speed factor (default 1; not used in lockstep)")
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
    if args.rate is not None and args.mode == "lockstep":
        print(f"[replay] --rate {args.rate:g} is not used in lockstep mode (it plays as fast as the node "
              f"goes); add --mode realtime to play at the recorded timing")
    params = parse_node_params(args.param)
    if args.estimator:
        params["estimator"] = args.estimator
    result = replay_bag(bag, out, rate=args.rate or 1.0, checkpoint=args.checkpoint, mode=args.mode,
                        image_topic=args.image_topic, node_params=params,
                        eval_fps=args.eval_fps, startup_timeout_s=args.startup_timeout)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.metrics, indent=2) + "\n")
    return 0
