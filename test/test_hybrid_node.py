"""The node with ``estimator: hybrid``: a bag replayed through it gives the offline trajectory of
``lapose eval --method hybrid --trajectory`` (the same streaming code), and its diagnostics report the
estimator, the inliers and the fallbacks."""
import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy not installed (make setup-ros)")

from lapose_core import ASSETS_DIR, KITTI_CAMERA_HEIGHT_M  # noqa: E402
from lapose_core.eval.evaluate import load_method_estimator, stream_sequence  # noqa: E402
from lapose_core.hybrid import HybridConfig  # noqa: E402
from lapose_ros.bag_from_sequence import DEFAULT_START_TIME, write_bag_from_sequence  # noqa: E402
from lapose_ros.odometry import camera_motion_to_base, default_camera_to_base  # noqa: E402
from lapose_ros.replay import replay_bag  # noqa: E402

pytestmark = pytest.mark.timeout(300)
SAMPLE = ASSETS_DIR / "sample_sequence"


@pytest.mark.parametrize("mount,compressed", [(None, False), ("base_height_m", False), (None, True)])
def test_replayed_bag_matches_offline_hybrid_trajectory(tmp_path, ros_domain_id, mount, compressed):
    """With LA-Pose's scale, and with the road's: the node's camera is 1.65 m above the road when
    its base is (base_height_m) and the camera sits at the base's origin (camera_to_base's default),
    as the offline hybrid is told directly. A bag of compressed images (the JPEG files' own bytes on
    /camera/image_raw/compressed, as cars' bags are recorded) gives the same trajectory."""
    bag = tmp_path / "sample"
    write_bag_from_sequence(SAMPLE, bag, storage="mcap", compressed=compressed)
    node_params = {"estimator": "hybrid"}
    if mount:
        node_params["base_height_m"] = KITTI_CAMERA_HEIGHT_M
    image_topic = "/camera/image_raw/compressed" if compressed else "/camera/image_raw"
    result = replay_bag(bag, tmp_path / "replay", rate=1.0, node_params=node_params, image_topic=image_topic,
                        domain_id=ros_domain_id, verbose=False)
    log = (tmp_path / "replay" / "node.log").read_text()
    assert result.node_returncode == 0, log
    config = HybridConfig.for_camera(KITTI_CAMERA_HEIGHT_M if mount else None)
    stamps, poses, _ = stream_sequence(SAMPLE, load_method_estimator("hybrid", hybrid_config=config), fps=2.0)
    expected = camera_motion_to_base(poses, default_camera_to_base())
    start_ns = int(np.floor(DEFAULT_START_TIME)) * 10**9 + int(round((DEFAULT_START_TIME % 1) * 1e9))
    by_stamp = dict(zip(result.estimate.stamps_ns.tolist(), result.estimate.poses))
    # Odometry is published from the 16th keyframe on (the warm-up keyframes are only in the path).
    keyframes = [start_ns + int(round(s * 1e9)) for s in stamps][15:]
    expected = expected[15:]
    missing = [k for k in keyframes if k not in by_stamp]
    assert not missing, f"{len(missing)} of {len(keyframes)} keyframes not published; node log:\n{log[-3000:]}"
    published = np.stack([by_stamp[k] for k in keyframes])
    assert len(keyframes) >= 14
    np.testing.assert_allclose(published, expected, atol=1e-3)


@pytest.mark.parametrize("last", ["black", "repeated"])
def test_node_diagnostics_and_covariance_report_fallbacks(ros_domain_id, last):
    """Frames fed to the hybrid node's frame handler (what its processing thread runs). A black frame
    after warm-up makes the newest step a fallback, said in diagnostics and in a larger covariance.
    The previous keyframe's image again (a standing camera) makes it a standing step: geometry, no
    translation, the covariance unchanged."""
    import rclpy
    import rclpy.context
    from builtin_interfaces.msg import Time

    from lapose_core.data.sources import KittiSequence
    from lapose_core.hybrid import HybridConfig, HybridEstimator
    from lapose_core.inference import PoseEstimator
    from sensor_msgs.msg import Image

    from lapose_ros.image_conversion import fill_image_msg
    from lapose_ros.node import LaPoseNode

    seq = KittiSequence(SAMPLE)
    context = rclpy.context.Context()
    rclpy.init(context=context)
    try:
        node = LaPoseNode(estimator=HybridEstimator(PoseEstimator.load(), intrinsics=seq.intrinsics),
                          context=context)
        published = []
        node._publish_odometry = lambda estimate, stamp: published.append(estimate)
        black = 16 * 5 + 5  # the 18th keyframe
        for i in range(black + 1):
            image = seq.read(i) if i != black else (
                np.zeros_like(seq.read(0)) if last == "black" else seq.read(black - 5))
            stamp = float(seq.timestamps[i]) + 100.0
            msg = fill_image_msg(Image(), image, "rgb8" if image.ndim == 3 else "mono8")
            msg.header.stamp = Time(sec=int(stamp), nanosec=int(round(stamp % 1 * 1e9)))
            node._handle_image(msg, arrival=0.0)
        values = node.diagnostic_values()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    assert values["estimator"] == "hybrid" and values["status"] == "tracking"
    assert values["intrinsics"] == "given"
    assert all(np.isfinite(e.pose).all() for e in published)
    assert published[-1].is_keyframe and published[-2].covariance_scale == 1.0
    if last == "black":
        assert int(values["fallback_steps"]) == 1 and values["newest_step"].startswith("fallback to LA-Pose")
        assert int(values["inliers"]) < HybridConfig().min_inliers and int(values["standing_steps"]) == 0
        assert published[-1].covariance_scale == 10.0
    else:
        assert int(values["fallback_steps"]) == 0 and int(values["standing_steps"]) == 1
        assert values["newest_step"] == "geometry: rotation only, no translation"
        assert published[-1].covariance_scale == 1.0
        keyframes = [e for e in published if e.is_keyframe]
        np.testing.assert_allclose(keyframes[-1].pose[:3, 3], keyframes[-2].pose[:3, 3], atol=1e-9)
