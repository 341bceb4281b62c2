"""Streaming odometry without ROS: keyframes, trajectory integration, frames, reset rules."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from transforms3d.euler import euler2mat

from lapose_core.eval import metrics
from lapose_ros.odometry import (DEFAULT_CAMERA_TO_BASE, OPTICAL_TO_BODY, KeyframeSelector,
                                 OdometryConfigError, StreamMonitor, TrajectoryIntegrator,
                                 VisualOdometry, camera_motion_to_base, camera_to_base_from_xyz_quat,
                                 default_camera_to_base, interpolate_motion, se3, se3_exp, se3_log,
                                 twist_from_step)


def load_kitti(folder: Path):
    poses = np.loadtxt(folder / "poses.txt").reshape(-1, 3, 4)
    poses = np.concatenate([poses, np.tile([[[0, 0, 0, 1.0]]], (len(poses), 1, 1))], axis=1)
    return poses, np.loadtxt(folder / "times.txt")


def read_rgb(folder: Path, index: int) -> np.ndarray:
    gray = cv2.imread(str(folder / "images" / f"{index:06d}.jpg"), cv2.IMREAD_GRAYSCALE)
    return np.repeat(gray[..., None], 3, axis=-1)


# ---------------------------------------------------------------------------- keyframes
def test_keyframes_at_2fps_from_10hz_kitti_stream(shared_data):
    _, times = load_kitti(shared_data / "kitti" / "03_head")
    selector = KeyframeSelector(fps=2.0)
    picked = [i for i, t in enumerate(times[:200]) if selector.offer(float(t))]
    assert picked == list(range(0, 200, 5))
    # KITTI runs at about 9.65 Hz: five frames are 0.52 s, the nearest spacing to 0.5 s.
    assert np.allclose(np.diff(times[picked]), 0.5, atol=0.05)


def test_keyframes_tolerate_jitter_and_dropped_frames():
    rng = np.random.default_rng(0)
    stamps = np.arange(100) * 0.1 + rng.uniform(-0.01, 0.01, 100)
    selector = KeyframeSelector(fps=2.0)
    assert [i for i, t in enumerate(stamps) if selector.offer(t)] == list(range(0, 100, 5))
    # Frame 5 is lost: frame 6 stands in for it, and the spacing goes on from there.
    selector = KeyframeSelector(fps=2.0)
    stream = [i for i in range(30) if i != 5]
    assert [i for i in stream if selector.offer(i * 0.1)] == [0, 6, 11, 16, 21, 26]


def test_is_due_says_what_offer_will_do():
    """The node decides from is_due whether to decode a frame, before offer() sees it: the two must
    agree even while the camera period is being learned from the first intervals and under jitter."""
    rng = np.random.default_rng(1)
    stamps = np.cumsum(rng.choice([1 / 30, 1 / 30, 1 / 30, 2 / 30, 0.2], 400) + rng.uniform(-3e-3, 3e-3, 400))
    for fps in (1.0, 2.0, 4.0, 12.0):
        selector, taken = KeyframeSelector(fps=fps), 0
        for t in stamps:
            due = selector.is_due(t)
            assert selector.offer(t) == due
            taken += due
        assert taken > 20


def test_is_due_is_safe_while_another_thread_resets(monkeypatch):
    """The node's image callback asks is_due while its processing thread may reset the selector:
    a reset landing in the middle of the question must not make it fail."""
    import lapose_core.stream as stream

    selector = KeyframeSelector(fps=2.0)
    for t in (0.0, 0.1, 0.2):
        selector.offer(t)
    period = stream.camera_period

    def reset_meanwhile(intervals):
        selector.reset()  # what the other thread does, at the worst moment
        return period(intervals)

    monkeypatch.setattr(stream, "camera_period", reset_meanwhile)
    assert selector.is_due(0.5)  # half a second after the keyframe at 0.0, as it was asked


def test_keyframe_rate_must_be_positive():
    with pytest.raises(OdometryConfigError, match="model_fps"):
        KeyframeSelector(fps=0.0)


# ---------------------------------------------------------------------------- integration
def test_integrated_trajectory_matches_ground_truth(shared_data):
    """Known step motions (KITTI ground truth at 2 fps) chain back into the ground-truth trajectory."""
    poses, times = load_kitti(shared_data / "kitti" / "03_head")
    idx = np.arange(0, 500, 5)
    gt = np.linalg.inv(poses[idx[0]]) @ poses[idx]
    steps = metrics.step_motions(poses[idx])
    integrator = TrajectoryIntegrator()
    integrator.start(times[idx[:16]], steps[:15])
    track = list(integrator.keyframe_poses)
    for k in range(16, len(idx)):
        integrator.append(times[idx[k]], steps[k - 1])
        track.append(integrator.pose)
    track = np.stack(track)
    assert np.abs(track[:, :3, 3] - gt[:, :3, 3]).max() < 1e-6
    assert np.abs(track[:, :3, :3] - gt[:, :3, :3]).max() < 1e-9
    # lapose_core composes a window the same way.
    window = metrics.compose_steps(steps[:15])
    assert np.allclose(window, track[:16], atol=1e-9)
    assert np.linalg.norm(gt[-1, :3, 3]) > 100  # the sequence really goes somewhere


def test_extrapolation_is_constant_velocity():
    step = se3(euler2mat(0.0, 0.1, 0.0), [0.2, 0.0, 1.5])  # turning while driving forward
    integrator = TrajectoryIntegrator()
    integrator.start([0.0, 0.5], step[None])
    assert np.allclose(integrator.pose_at(0.5), step)
    assert np.allclose(integrator.pose_at(1.0), step @ step, atol=1e-12)
    half = integrator.pose_at(0.75)
    assert np.allclose(half @ interpolate_motion(step, 0.5), step @ step, atol=1e-12)
    assert np.allclose(integrator.pose_at(0.4), step)  # never extrapolated backwards
    linear, angular = twist_from_step(step, 0.5)
    assert np.allclose(angular, [0.0, 0.2, 0.0])
    chord_speed = np.linalg.norm(step[:3, 3]) / 0.5
    assert chord_speed < np.linalg.norm(linear) < 1.01 * chord_speed  # the arc is a little longer
    assert np.allclose(se3_exp(linear * 0.5, angular * 0.5), step, atol=1e-12)
    for angle in (0.0, 1e-9, 1e-5, 1e-3, -0.3, 3.0):  # small angles, where the series cancel, too
        motion = se3(euler2mat(angle, angle / 2, -angle), [1.0, 2.0, 3.0])
        assert np.allclose(se3_exp(*se3_log(motion)), motion, atol=1e-9)
        assert np.allclose(interpolate_motion(motion, 0.5) @ interpolate_motion(motion, 0.5), motion,
                           atol=1e-9)
    straight = se3(np.eye(3), [0.0, 0.0, 1.5])
    assert np.allclose(twist_from_step(straight, 0.5)[0], [0.0, 0.0, 3.0])


# ---------------------------------------------------------------------------- frames
def test_optical_to_body_rotation():
    # A camera driving forward (optical +z) and turning left (about optical -y) moves the base
    # forward (+x) and turns it counter-clockwise about +z (REP-103).
    step = se3(euler2mat(0.0, -0.2, 0.0), [0.0, 0.0, 2.0])
    base = camera_motion_to_base(step, default_camera_to_base())
    assert np.allclose(base[:3, 3], [2.0, 0.0, 0.0])
    _, angular = twist_from_step(base, 1.0)
    assert np.allclose(angular, [0.0, 0.0, 0.2])
    assert np.allclose(OPTICAL_TO_BODY @ [1, 0, 0], [0, -1, 0])  # x right -> -y
    assert np.allclose(OPTICAL_TO_BODY @ [0, 1, 0], [0, 0, -1])  # y down -> -z
    assert np.allclose(camera_to_base_from_xyz_quat(DEFAULT_CAMERA_TO_BASE), default_camera_to_base())


def test_conjugation_recovers_base_motion_for_an_offset_camera(shared_data):
    """Base trajectory -> camera trajectory seen by a mounted camera -> back to the base trajectory."""
    poses, _ = load_kitti(shared_data / "kitti" / "07_head")
    camera_to_base = camera_to_base_from_xyz_quat([1.2, -0.3, 1.5, -0.5, 0.5, -0.5, 0.5])
    # Treat the optical-frame ground truth as a camera trajectory and make the base trajectory.
    camera = np.linalg.inv(poses[0]) @ poses
    base = camera_to_base @ camera @ np.linalg.inv(camera_to_base)
    # A camera at the front of the car sees a larger lateral motion in turns than the base origin.
    camera_from_base = np.linalg.inv(camera_to_base) @ base @ camera_to_base
    assert np.allclose(camera_from_base, camera, atol=1e-9)
    assert np.allclose(camera_motion_to_base(camera, camera_to_base), base)
    with pytest.raises(OdometryConfigError, match="camera_to_base.*7 numbers"):
        camera_to_base_from_xyz_quat([0, 0, 0, 1])
    with pytest.raises(OdometryConfigError, match="unit quaternion"):
        camera_to_base_from_xyz_quat([0, 0, 0, 0, 0, 0, 2])


# ---------------------------------------------------------------------------- reset rules
def test_stream_monitor_reset_rules():
    monitor = StreamMonitor(max_gap_s=1.0)
    size = (188, 621)
    assert monitor.check(10.0, size) is None
    assert monitor.check(10.1, size) is None
    assert "backwards" in monitor.check(9.0, size)
    assert monitor.check(9.1, size) is None
    assert "gap" in monitor.check(10.5, size)
    assert "size changed from 621x188 to 320x240" in monitor.check(10.6, (240, 320))
    # Holes in a 10 Hz stream count as dropped frames without resetting.
    monitor = StreamMonitor(max_gap_s=1.0)
    for t in [0.0, 0.1, 0.2, 0.3, 0.6, 0.7]:
        assert monitor.check(t, size) is None
    assert monitor.dropped_frames == 2
    with pytest.raises(OdometryConfigError, match="max_gap_s"):
        StreamMonitor(max_gap_s=0)


@pytest.fixture(scope="module")
def estimator():
    from lapose_core.inference import PoseEstimator

    return PoseEstimator.random(preset="tiny", seed=0)


@pytest.fixture(scope="module")
def frames(shared_data):
    folder = shared_data / "kitti" / "03_head"
    _, times = load_kitti(folder)
    return [(float(times[i]), read_rgb(folder, i)) for i in range(0, 100)]


def test_visual_odometry_follows_window_predictions(estimator, frames):
    """The streamed trajectory is the first window's poses, then each later window's newest step."""
    vo = VisualOdometry(estimator, fps=2.0, max_gap_s=1.0)
    keyframes, published = [], {}
    for stamp, image in frames[:86]:
        result = vo.process(stamp, image)
        if result.is_keyframe:
            keyframes.append((stamp, image))
        if len(keyframes) < 16:
            assert result.estimate is None and vo.status.startswith("warming up")
        else:
            assert result.estimate is not None
            published[stamp] = result.estimate.pose
    assert vo.status == "tracking" and len(keyframes) == 18  # frames 0, 5, ..., 85
    stamps = [s for s, _ in keyframes]
    features = [estimator.encode_frame(im) for _, im in keyframes]
    first = estimator.predict_features(features[:16], stamps[:16])
    expected = list(first.poses)
    for end in (17, 18):
        window = estimator.predict_features(features[end - 16:end], stamps[end - 16:end])
        expected.append(expected[-1] @ window.relative[-1])
    for k in (15, 16, 17):
        base = camera_motion_to_base(expected[k], default_camera_to_base())
        assert np.allclose(published[stamps[k]], base, atol=1e-5)
    # Between keyframes: constant-velocity extrapolation of the last step.
    between = frames[82][0]  # two camera frames after keyframe 16 (frame 80)
    assert stamps[16] == frames[80][0] and between in published
    step = np.linalg.inv(expected[15]) @ expected[16]
    moved = expected[16] @ interpolate_motion(step, (between - stamps[16]) / (stamps[16] - stamps[15]))
    assert np.allclose(published[between], camera_motion_to_base(moved, default_camera_to_base()),
                       atol=1e-5)
    # Publishing at a fixed rate extrapolates the same way, but never long after the last frame.
    assert np.allclose(vo.extrapolate(frames[85][0] + 0.1).pose, camera_motion_to_base(
        expected[17] @ interpolate_motion(np.linalg.inv(expected[16]) @ expected[17],
                                          (frames[85][0] + 0.1 - stamps[17]) / (stamps[17] - stamps[16])),
        default_camera_to_base()), atol=1e-5)
    assert vo.extrapolate(frames[85][0] + 1.5) is None


def test_visual_odometry_resets_keep_odometry_continuous(estimator, frames):
    vo = VisualOdometry(estimator, fps=2.0, max_gap_s=1.0)
    for stamp, image in frames[:80]:
        last = vo.process(stamp, image)
    held = last.estimate.pose
    # A gap: the window is dropped, nothing is published, the pose is held for the next warm-up.
    result = vo.process(frames[80][0] + 5.0, frames[80][1])
    assert "gap" in result.reset_reason and result.estimate is None and vo.resets == 1
    assert vo.status == "warming up (1/16 keyframes)"
    # A size change resets too; the pose held stays the one published last.
    small = cv2.resize(frames[81][1], (320, 96))
    result = vo.process(frames[81][0] + 5.0, small)
    assert "size changed" in result.reset_reason and vo.resets == 2
    assert np.allclose(camera_motion_to_base(vo.trajectory.anchor, vo.camera_to_base), held)
    # A backwards jump (bag loop) restarts the trajectory at the origin.
    result = vo.process(frames[0][0], frames[0][1])
    assert "backwards" in result.reset_reason and vo.resets == 3
    assert np.allclose(vo.trajectory.anchor, np.eye(4))


def test_frames_between_keyframes_need_no_pixels(estimator, frames):
    """Leaving out the pixels of every frame needs_pixels() does not ask for gives the same odometry:
    the same keyframes, poses and resets (a gap, a size change, a backwards jump, a repeat)."""
    small = cv2.resize(frames[0][1], (320, 96))
    stream = [(s, im) for s, im in frames[:40]] + [frames[40]]  # frame 40 twice: a repeat
    stream += [(s + 5.0, im) for s, im in frames[41:60]]  # a gap
    stream += [(frames[60][0] + 5.0, small)]  # a new size, on a frame between keyframes
    stream += [(s + 5.0, cv2.resize(im, (320, 96))) for s, im in frames[61:70]]
    stream += frames[:86]  # a bag loop
    full, lazy = (VisualOdometry(estimator, fps=2.0, max_gap_s=1.0) for _ in range(2))
    decoded = 0
    for stamp, image in stream:
        expected = full.process(stamp, image)
        needed = lazy.needs_pixels(stamp, image.shape[:2])
        decoded += needed
        got = lazy.process(stamp, image if needed else None, image.shape[:2])
        assert (got.is_keyframe, got.duplicate, got.reset_reason) == \
            (expected.is_keyframe, expected.duplicate, expected.reset_reason)
        assert (got.estimate is None) == (expected.estimate is None)
        if got.estimate is not None:
            np.testing.assert_allclose(got.estimate.pose, expected.estimate.pose, atol=1e-9)
        assert needed == expected.is_keyframe  # exactly the keyframes, resets included
    assert full.resets == lazy.resets == 3 and lazy.tracking
    assert decoded == 33 < len(stream) / 4  # one frame in five at 2 fps from 10 Hz, and the resets
    # A frame whose size is not known (compressed) is taken as the stream's size until decoded.
    assert not lazy.needs_pixels(frames[86][0], None)
    assert lazy.process(frames[86][0], None).estimate is not None
    # Leaving out a keyframe's pixels is a caller's error, said as such.
    keyframe = next(s for s, _ in frames[87:] if lazy.needs_pixels(s))
    with pytest.raises(ValueError, match="needs its pixels"):
        lazy.process(keyframe, None)


def test_non_finite_model_output_resets_without_publishing(frames):
    from lapose_core.inference import PoseEstimator

    poisoned = PoseEstimator.random(preset="tiny", seed=1)
    with torch.no_grad():
        for p in poisoned.model.parameters():
            p.fill_(float("nan"))
    vo = VisualOdometry(poisoned, fps=2.0, max_gap_s=1.0)
    results = [vo.process(stamp, image) for stamp, image in frames[:80]]
    assert all(r.estimate is None for r in results)
    reasons = [r.reset_reason for r in results if r.reset_reason]
    assert reasons and all("not finite" in r for r in reasons)
    assert vo.resets == len(reasons) and not vo.tracking


# ---------------------------------------------------------------------------- falling behind
def test_keyframe_spacing_when_most_frames_are_dropped():
    """A 30 Hz stream of which the node sees only a few frames after each keyframe (it was busy):
    the camera period is still known, so keyframes are neither early nor late by a camera period."""
    selector, period = KeyframeSelector(fps=3.0), 1 / 30
    seen = [i for i in range(300) if i % 10 in (0, 4, 9)]  # 7 of every 10 frames lost
    keyframes = np.array([i for i in seen if selector.offer(i * period)]) * period
    spacing = np.diff(keyframes)
    assert np.all(np.abs(spacing - 1 / 3.0) <= period + 1e-9)
    assert np.allclose(spacing[1:], 1 / 3.0)  # exact once one single-frame interval was seen
    # The holes are counted exactly once the camera period is known (a few intervals in).
    monitor, counted = StreamMonitor(max_gap_s=1.0), {}
    for i in seen:
        assert monitor.check(i * period, (10, 10)) is None
        counted[i] = monitor.dropped_frames
    assert counted[299] - counted[30] == sum(1 for i in range(31, 300) if i not in seen)


def test_newest_frame_buffer_keeps_the_due_keyframe():
    from lapose_ros.odometry import NewestFrameBuffer

    buffer = NewestFrameBuffer()
    assert buffer.take(timeout_s=0.01) is None
    buffer.put(1, due_as_keyframe=False)
    buffer.put(2, due_as_keyframe=False)  # replaces 1
    buffer.put(3, due_as_keyframe=True)  # kept; 2 is older than it and goes
    buffer.put(4, due_as_keyframe=True)  # not the first due frame: an ordinary newest frame
    buffer.put(5, due_as_keyframe=False)  # replaces 4
    assert buffer.dropped == 3
    assert [buffer.take(0.01), buffer.take(0.01), buffer.take(0.01)] == [3, 5, None]
    buffer.close()
    assert buffer.take(timeout_s=10.0) is None  # closed: returns at once


def test_a_repeated_frame_is_skipped(estimator, frames):
    vo = VisualOdometry(estimator, fps=2.0, max_gap_s=1.0)
    stamp, image = frames[0]
    assert vo.process(stamp, image).is_keyframe
    again = vo.process(stamp, image)
    assert again.duplicate and again.outcome == "duplicate" and not again.is_keyframe
    assert len(vo.keyframes) == 1 and vo.resets == 0
