"""``lapose bag-from-sequence`` and ``lapose replay``: registered into the ``lapose`` command.

Importing this module imports neither rclpy nor the bag code; each command loads what it needs when
it runs, so ``lapose --help`` works on a machine without ROS.
"""
from __future__ import annotations

import argparse
import sys

ROS_MISSING_HINT = ("rclpy is not installed in this Python environment: run 'make setup-ros' "
                    "(tools/setup_ros.sh .venv installs the ROS 2 wheels from PyPI) or source a ROS 2 "
                    "distribution")


def cmd_bag_from_sequence(args: argparse.Namespace) -> int:
    from lapose_core.data.sources import DataError
    from lapose_ros.bag_from_sequence import run

    try:
        return run(args)
    except DataError as e:
        print(f"lapose bag-from-sequence: error: {e}", file=sys.stderr)
        return 2


def cmd_replay(args: argparse.Namespace) -> int:
    try:
        import rclpy  # noqa: F401 - checked here so the message can say how to get it
    except ImportError:
        print(f"lapose replay: error: {ROS_MISSING_HINT}", file=sys.stderr)
        return 2
    from lapose_core.data.sources import DataError
    from lapose_ros.replay import ReplayError, run

    try:
        return run(args)
    except (ReplayError, DataError) as e:
        print(f"lapose replay: error: {e}", file=sys.stderr)
        return 2


def register(subparsers) -> None:
    """Add ``bag-from-sequence`` and ``replay`` to an argparse subparsers object."""
    from lapose_ros import bag_from_sequence, replay

    p = subparsers.add_parser("bag-from-sequence",
                              help="write a rosbag2 bag (camera, camera info, ground truth) from a KITTI folder")
    bag_from_sequence.add_arguments(p)
    p.set_defaults(func=cmd_bag_from_sequence)

    p = subparsers.add_parser("replay", help="play a bag into the LA-Pose node, record and score its odometry")
    replay.add_arguments(p)
    p.set_defaults(func=cmd_replay)
