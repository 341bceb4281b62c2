"""Shared test fixtures: the real data folder and ROS isolation.

Every ROS process a test starts stays on loopback (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST) and on a
domain of its own, so tests never talk to each other or to anything off this machine.
"""
import itertools
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LAPOSE_SHARED_DATA", REPO.parent / "shared" / "data"))

# Set before anything imports rclpy, for this process and every child it starts.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 60))

# LAPOSE_TEST_DOMAIN_BASE gives concurrent test runs on one machine disjoint domain ranges.
_domain_ids = itertools.count(int(os.environ.get("LAPOSE_TEST_DOMAIN_BASE", 100 + (os.getpid() * 7) % 60)))


@pytest.fixture(scope="session")
def study():
    """``training/geometry_study.py`` as a module (the training scripts are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("geometry_study", REPO / "training" / "geometry_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder. CI must have it; elsewhere (``colcon test`` on a robot, say) the tests
    that need it are skipped with the reason."""
    if not (SHARED_DATA / "kitti").is_dir():
        message = f"real data folder not found at {SHARED_DATA} (set LAPOSE_SHARED_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture
def ros_domain_id(monkeypatch) -> int:
    """A ROS_DOMAIN_ID of this test's own (valid ids are 0..232), set in the environment."""
    domain = next(_domain_ids) % 230 + 1
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    return domain


@pytest.fixture
def ros_context(ros_domain_id):
    """An rclpy context of the test's own, on its own domain (rclpy imported only by tests using it)."""
    import rclpy
    import rclpy.context

    context = rclpy.context.Context()
    rclpy.init(context=context)
    yield context
    rclpy.shutdown(context=context)
