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
from lapose_ros.rectify import CameraModel, RectificationError, Rectifier, is_rectified_topic, should_rectify

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


def test_binned_and_cropped_camera_is_read_as_sent(study, frame):
    """A driver that bins 2x2 and sends a region of interest: CameraInfo's K and P still describe the
    full sensor. Read as image_geometry reads them, the binned crop rectifies to the binned crop of
    the full pinhole view, and an image_rect topic's intrinsics are P's, not K's."""
    from types import SimpleNamespace

    image, K = frame
    camera, raw_view = study.raw_camera(K, image.shape[:2], PLUMB_BOB)
    x0, y0, w, h = 40, 20, 480, 140  # full-sensor pixels
    info = SimpleNamespace(width=camera.width, height=camera.height, distortion_model="plumb_bob",
                           k=camera.K, d=camera.D, r=camera.R, p=camera.P, binning_x=2, binning_y=2,
                           roi=SimpleNamespace(x_offset=x0, y_offset=y0, width=w, height=h))
    sent = CameraModel.from_camera_info(info)
    assert (sent.width, sent.height) == (w // 2, h // 2)
    fx, fy, cx, cy = camera.K[0], camera.K[4], camera.K[2], camera.K[5]
    assert sent.raw_intrinsics == pytest.approx((fx / 2, fy / 2, (cx - x0) / 2, (cy - y0) / 2))
    assert sent.rectified_intrinsics == pytest.approx(
        (camera.P[0] / 2, camera.P[5] / 2, (camera.P[2] - x0) / 2, (camera.P[6] - y0) / 2))

    def binned_crop(full):
        return cv2.resize(full[y0:y0 + h, x0:x0 + w], (w // 2, h // 2), interpolation=cv2.INTER_AREA)

    K_raw = np.asarray(camera.K).reshape(3, 3)
    pinhole = binned_crop(cv2.warpPerspective(image, K_raw @ np.linalg.inv(K), image.shape[1::-1]))
    raw = binned_crop(raw_view(image))
    inner = (slice(6, -6), slice(6, -6))
    rectified_error = np.abs(Rectifier(sent)(raw).astype(float) - pinhole)[inner].mean()
    raw_error = np.abs(raw.astype(float) - pinhole)[inner].mean()
    assert rectified_error < 3.0 and raw_error > 3 * rectified_error, (rectified_error, raw_error)
    # Read without the crop's corner, the rectification is off by more than the raw image is.
    halved = np.array([[0.5], [0.5], [1.0]])  # binned, the crop's corner left out
    uncropped = CameraModel(sent.width, sent.height, "plumb_bob", tuple((K_raw * halved).reshape(-1)),
                            camera.D, camera.R, tuple((np.reshape(camera.P, (3, 4)) * halved).reshape(-1)))
    misread_error = np.abs(Rectifier(uncropped)(raw).astype(float) - pinhole)[inner].mean()
    assert misread_error > 3 * rectified_error, (misread_error, rectified_error)
    # Without binning or ROI (all zero, as drivers leave them) the camera is CameraInfo's own.
    info.binning_x = info.binning_y = 0
    info.roi = SimpleNamespace(x_offset=0, y_offset=0, width=0, height=0)
    assert CameraModel.from_camera_info(info) == camera


def test_rectified_topics_are_recognised():
    assert is_rectified_topic("/camera/image_rect") and is_rectified_topic("/cam/image_rect_color/compressed")
    assert not is_rectified_topic("/camera/image_raw") and not is_rectified_topic("/camera/image_raw/compressed")
    assert not should_rectify("auto", "/camera/image_rect/compressed")
