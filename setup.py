"""One distribution for pip (``pip install -e .``) and colcon (ament_python package ``lapose_ros``)."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "lapose_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="LA-Pose: latent action pretraining meets pose estimation, as a ROS 2 odometry node",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["lapose_core", "lapose_core.*", "lapose_ros", "lapose_ros.*"]),
    package_data={"lapose_core": ["assets/*/*", "assets/*/*/*"]},
    include_package_data=True,
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        # `ros2 run` finds executables in lib/<package>; console scripts stay in bin/ for pip users.
        (f"lib/{PACKAGE}", ["scripts/lapose_node"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz")),
    ],
    install_requires=[
        # torch is not listed: pip would replace an installed CUDA/CPU build with the newest wheel.
        # Install it first (see README): torch==2.13.0 is tested.
        "numpy>=1.24", "av>=12", "rosbags>=0.10", "safetensors>=0.4", "tqdm>=4.60",
        "tensorboard>=2.14", "matplotlib>=3.7", "transforms3d>=0.4", "opencv-python-headless>=4.8",
        "pyyaml>=6",
    ],
    extras_require={"test": ["pytest>=7", "pytest-timeout>=2", "evo>=1.28"]},
    tests_require=["pytest"],
    zip_safe=True,
    entry_points={
        "console_scripts": [
            "lapose = lapose_core.cli:main",
            "lapose_node = lapose_ros.node:main",
        ],
        # Command groups the `lapose` command picks up; lapose_core itself never imports ROS.
        "lapose.commands": [
            "ros = lapose_ros.cli:register",
            "bench = lapose_ros.bench:register",
            "demo = lapose_ros.demo:register",
        ],
    },
)
