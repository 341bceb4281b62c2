"""The launch file's arguments and what they pass on to the node (no ``launch`` import: tested anywhere).

``config/lapose.yaml`` (or ``params_file:=...``) holds the node's parameters; a launch argument
overrides its namesake only when it is given. An argument with a default of its own would override
the file every time, and editing the file would change nothing for those names.
"""
from __future__ import annotations

from typing import Any, Mapping

# name -> (value in config/lapose.yaml, shown in the help; description). Each is a parameter of
# lapose_node except LAUNCH_ONLY's, which steer the launch file itself.
ARGUMENTS = {
    "image_topic": ("/camera/image_raw", "sensor_msgs/Image topic of the camera"),
    "camera_info_topic": ("/camera/camera_info", "sensor_msgs/CameraInfo topic of the camera"),
    "odom_frame": ("odom", "frame of the published odometry (REP-105)"),
    "base_frame": ("base_link", "frame of the robot body that the odometry moves"),
    "checkpoint": ("", "model checkpoint or run folder; empty = the bundled model"),
    "backend": ("auto", "auto | tensorrt | compile | eager (auto: eager on cpu, tensorrt on cuda)"),
    "device": ("cpu", "cpu | cuda (falls back to cpu when CUDA is unavailable)"),
    "estimator": ("hybrid", "hybrid (feature geometry checked against LA-Pose) | lapose (the model alone)"),
    "camera_height_m": ("0.0", "hybrid: camera height above the road in metres; > 0: metric scale "
                               "from the road (0 = unknown)"),
    "camera_pitch_deg": ("0.0", "hybrid: the camera's pitch below the road plane in degrees"),
    "base_height_m": ("-1.0", "hybrid, camera_height_m 0: base_frame's height above the road; >= 0: "
                              "the camera's height and pitch from the camera-to-base transform"),
    "use_sim_time": ("false", "use /clock (on whenever bag is given)"),
    "params_file": ("", "the node's parameter file; empty = the package's config/lapose.yaml"),
    "rviz": ("false", "true: start rviz2 with config/lapose.rviz"),
    "bag": ("", "rosbag2 to replay with --clock; empty = live camera"),
}
LAUNCH_ONLY = ("params_file", "rviz", "bag")
STRING_PARAMETERS = ("image_topic", "camera_info_topic", "odom_frame", "base_frame", "checkpoint",
                     "backend", "device", "estimator")
# Typed, so that camera_height_m:=2 reaches the node as the float it declares.
FLOAT_PARAMETERS = ("camera_height_m", "camera_pitch_deg", "base_height_m")


# The node logs this once its model is loaded and it is subscribed: the launch file starts a bag's
# playback on it, not before (loading, or building a TensorRT engine, can outlast a short bag).
NODE_READY_LOG = "LA-Pose odometry:"


def is_ready_line(text: bytes | str) -> bool:
    """Whether a chunk of the node's output holds its ready line."""
    return NODE_READY_LOG in (text.decode(errors="replace") if isinstance(text, bytes) else text)


class LaunchArgumentError(ValueError):
    """A launch argument that cannot be passed on (the message names it)."""


def help_text(name: str) -> str:
    """An argument's description with the value the parameter file gives it when it is not set."""
    default, description = ARGUMENTS[name]
    if name in LAUNCH_ONLY:
        return description
    return f"{description} (not set: the parameter file's value, '{default}' as shipped)"


def is_true(name: str, value: str) -> bool:
    """A boolean launch argument as launch's IfCondition reads one ('' = not given = false)."""
    lowered = value.strip().lower()
    if lowered not in ("true", "false", "1", "0", ""):
        raise LaunchArgumentError(f"launch argument {name}:={value} must be true or false")
    return lowered in ("true", "1")


def node_overrides(values: Mapping[str, str]) -> dict[str, Any]:
    """The node parameters the launch arguments ``values`` (name -> string, '' = not given) set over
    the parameter file: only the given ones, with the types the node declares; use_sim_time is
    turned on by a bag."""
    overrides: dict[str, Any] = {}
    for name in STRING_PARAMETERS:
        if values.get(name, ""):
            overrides[name] = values[name]
    for name in FLOAT_PARAMETERS:
        value = values.get(name, "")
        if value:
            try:
                overrides[name] = float(value)
            except ValueError:
                raise LaunchArgumentError(f"launch argument {name}:={value} is not a number") from None
    if values.get("bag", "") or is_true("use_sim_time", values.get("use_sim_time", "")):
        overrides["use_sim_time"] = True
    elif values.get("use_sim_time", ""):
        overrides["use_sim_time"] = False
    return overrides
