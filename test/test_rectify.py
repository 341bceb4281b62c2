"""Rectifying a distorted camera's images (``lapose_ros.rectify``), on real frames.

A raw camera is simulated from a frame of the bundled sample (``training/geometry_study.py``'s
``raw_camera``): a camera with a 1.3x longer focal length and lens distortion looks through the
sample's (pinhole) camera, so every raw pixel has image content. Rectified, its images must be the
pinhole view at the raw camera's focal length.
"""
import cv2
import numpy as np
import pytest

from lapose_core import ASSETS_DIR
from lapose_core.data.sources import KittiSequence
from lapose_ros.rectify import CameraModel, RectificationError, Rectifier, should_rectify

PLUMB_BOB = (-0.25, 0.06, 0.0005, -0.0005, 0.0)  # a wide lens's barrel distortion
RATIONAL = (-0.25, 0.06, 0.0005, -0.0005, 0.0, 0.01, -0.01, 0.0)
EQUIDISTANT = (0.05, -0.01, 0.002, 0.0)


@pytest.fixture(scope="module")
def frame():
    seq = KittiSequence(ASSETS_DIR / "sample_sequence")
    fx, fy, cx, cy = seq.intrinsics[:4]
    return seq.read(0), np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("model,D", [("plumb_bob", PLUMB_BOB), ("rational_polynomial", RATIONAL),
                                     ("equidistant", EQUIDISTANT)])
def test_rectified_raw_images_are_the_pinhole_view(study, frame, model, D):
    image, K = frame
    camera, raw_view = study.raw_camera(K, image.shape[:2], D, model=model)
    rectifier = Rectifier(camera)
    raw = raw_view(image)
    # The pinhole camera with the raw camera's intrinsics, seen through the sample's camera.
    K_raw = np.asarray(camera.K).reshape(3, 3)
    pinhole = cv2.warpPerspective(image, K_raw @ np.linalg.inv(K), image.shape[1::-1])
    inner = (slice(8, -8), slice(8, -8))  # interpolation at the border
    rectified_error = np.abs(rectifier(raw).astype(float) - pinhole)[inner].mean()
    raw_error = np.abs(raw.astype(float) - pinhole)[inner].mean()
    # Two bilinear resamplings blur the texture a little; the distortion moves it by many pixels.
    assert rectified_error < 2.0 and raw_error > 5 * rectified_error, (rectified_error, raw_error)
    assert rectifier.intrinsics == pytest.approx(tuple(K_raw[[0, 1, 0, 1], [0, 1, 2, 2]]))
    assert camera.distorted and rectifier.description.startswith(model)


def test_rectification_refuses_what_it_cannot_do(study, frame):
    image, K = frame
    camera, _ = study.raw_camera(K, image.shape[:2], PLUMB_BOB)
    with pytest.raises(RectificationError, match="distortion model 'mei' is not supported"):
        Rectifier(CameraModel(camera.width, camera.height, "mei", camera.K, camera.D, camera.R, camera.P))
    with pytest.raises(RectificationError, match="with 3 coefficients"):
        Rectifier(CameraModel(camera.width, camera.height, "plumb_bob", camera.K, (0.1, 0.0, 0.0),
                              camera.R, camera.P))
    with pytest.raises(RectificationError, match="CameraInfo D has a non-finite value"):
        Rectifier(CameraModel(camera.width, camera.height, "plumb_bob", camera.K, (float("nan"),) * 5,
                              camera.R, camera.P))
    with pytest.raises(RectificationError, match="image 310x94 but CameraInfo 621x188"):
        Rectifier(camera)(cv2.resize(image, (310, 94)))
    # No P: rectified to K's camera.
    without_p = Rectifier(CameraModel(camera.width, camera.height, "plumb_bob", camera.K, camera.D, camera.R,
                                      (0.0,) * 12))
    assert without_p.intrinsics == pytest.approx((camera.K[0], camera.K[4], camera.K[2], camera.K[5]))
    assert without_p.description == "plumb_bob, 5 coefficients, to K (no P)'s pinhole camera"
    assert not CameraModel(camera.width, camera.height, "plumb_bob", camera.K, (0.0,) * 5, camera.R,
                           camera.P).distorted


def test_topics_rectified_already_are_left_alone():
    assert should_rectify("auto", "/camera/image_raw")
    assert not should_rectify("auto", "/camera/image_rect")
    assert not should_rectify("auto", "/front/image_rect_color/")
    assert should_rectify("always", "/camera/image_rect") and not should_rectify("never", "/camera/image_raw")
    with pytest.raises(RectificationError, match="parameter 'rectify' must be one of auto, always, never"):
        should_rectify("yes", "/camera/image_raw")
