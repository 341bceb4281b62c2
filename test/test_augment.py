"""Exact augmentation: the warped frames and the recomputed poses tell the same story.

Each geometric transform is checked against projected 3-D points: a bright dot is drawn where a world
point projects under the original poses, the frames are transformed, and the dot must be found where
the point projects under the new poses.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from lapose_core.config import LaPoseConfig
from lapose_core.data.augment import (augment_clip, mirror_clip, photometric_clip, reverse_clip,
                                      rotate_clip, smooth_rotations, static_clip, time_scaled_clip)
from lapose_core.geometry import pose_targets, relative_poses


@pytest.fixture(scope="module")
def real_clip(shared_data):
    """A labelled window of 07_head and the intrinsics of its fitted frames."""
    from lapose_core.data.datasets import build_posttrain_dataset

    cfg = LaPoseConfig.from_dict({"data": {"posttrain_sequences": [str(shared_data / "kitti" / "07_head")]}})
    dataset = build_posttrain_dataset(cfg, Path.cwd())
    source = dataset.sources[0]
    assert source.intrinsics is not None
    return dataset.sample(5), source.intrinsics


def project(intrinsics, pose, point):
    fx, fy, cx, cy = intrinsics
    x, y, z = (np.linalg.inv(pose) @ np.append(point, 1.0))[:3]
    assert z > 1.0
    return np.array([fx * x / z + cx, fy * y / z + cy])


def dot_frames(clip, intrinsics, point):
    """Frames that are black but for a Gaussian dot where ``point`` projects in each frame."""
    T, _, H, W = clip["frames"].shape
    ys, xs = np.mgrid[0:H, 0:W]
    frames = np.zeros((T, 3, H, W), np.float32)
    for t, pose in enumerate(clip["poses"].double().numpy()):
        u, v = project(intrinsics, pose, point)
        frames[t] = np.exp(-((xs - u) ** 2 + (ys - v) ** 2) / (2 * 1.5 ** 2))[None]
    return dict(clip, frames=torch.from_numpy(frames))


def dot_centres(frames):
    f = frames[:, 0].double().numpy()
    H, W = f.shape[1:]
    ys, xs = np.mgrid[0:H, 0:W]
    mass = f.sum((1, 2))
    return np.stack([(f * xs).sum((1, 2)) / mass, (f * ys).sum((1, 2)) / mass], 1)


def head(clip, n=6):
    """The first ``n`` frames of a window: a point ahead stays in view (and in front) all along."""
    return {k: v[:n] if k in ("frames", "timestamps", "poses") else v for k, v in clip.items()}


def a_visible_point(clip, intrinsics):
    """A world point 30 m ahead of the first frame, slightly right of and below its centre."""
    return (clip["poses"][0].double().numpy() @ np.array([1.5, 0.8, 30.0, 1.0]))[:3]


def test_rotation_homography_matches_the_rotated_poses(real_clip):
    clip, K = head(real_clip[0]), real_clip[1]
    point = a_visible_point(clip, K)
    dotted = dot_frames(clip, K, point)
    rotations = smooth_rotations(clip["timestamps"], np.random.default_rng(0), max_deg=5.0)
    angles = np.degrees(np.arccos(np.clip((np.trace(rotations.numpy(), axis1=1, axis2=2) - 1) / 2, -1, 1)))
    assert angles.max() > 0.5  # the warp really turns the camera
    rotated = rotate_clip(dotted, K, rotations)
    expected = np.stack([project(K, P, point) for P in rotated["poses"].double().numpy()])
    original = np.stack([project(K, P, point) for P in clip["poses"].double().numpy()])
    assert np.abs(expected - original).max() > 2.0  # the dot really moved
    np.testing.assert_allclose(dot_centres(rotated["frames"]), expected, atol=0.15)
    R = rotated["poses"][:, :3, :3].double()
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand_as(R), atol=1e-5)


def test_mirror_reflects_about_the_principal_point(real_clip):
    clip, K = head(real_clip[0]), real_clip[1]
    W = clip["frames"].shape[-1]
    assert abs(K[2] - (W - 1) / 2) > 1.0  # KITTI's principal point is not the image centre
    point = a_visible_point(clip, K)
    mirrored = mirror_clip(dot_frames(clip, K, point), K)
    reflected_point = point * np.array([-1.0, 1.0, 1.0])  # the world reflected with the image
    expected = np.stack([project(K, P, reflected_point) for P in mirrored["poses"].double().numpy()])
    np.testing.assert_allclose(dot_centres(mirrored["frames"]), expected, atol=0.15)
    rel, rel_m = relative_poses(clip["poses"].double()), relative_poses(mirrored["poses"].double())
    assert torch.allclose(rel[:, 0, 2], -rel_m[:, 0, 2], atol=1e-6)  # yaw changes sign
    assert torch.allclose(rel[:, 2, 3], rel_m[:, 2, 3], atol=1e-6)  # forward motion kept
    assert torch.allclose(rel[:, :3, 3].norm(dim=-1), rel_m[:, :3, 3].norm(dim=-1), atol=1e-5)


def test_reversed_window_inverts_every_step(real_clip):
    clip, K = head(real_clip[0]), real_clip[1]
    point = a_visible_point(clip, K)
    reversed_ = reverse_clip(dot_frames(clip, K, point))
    expected = np.stack([project(K, P, point) for P in reversed_["poses"].double().numpy()])
    np.testing.assert_allclose(dot_centres(reversed_["frames"]), expected, atol=0.05)
    assert reversed_["timestamps"][0] == 0 and torch.all(reversed_["timestamps"].diff() > 0)
    assert torch.allclose(reversed_["timestamps"].diff(), clip["timestamps"].diff().flip(0))
    rel, rel_r = relative_poses(clip["poses"].double()), relative_poses(reversed_["poses"].double())
    assert torch.allclose(rel_r, torch.linalg.inv(rel).flip(0), atol=1e-5)


def test_static_window_has_no_motion_and_photometric_jitter_keeps_labels(real_clip):
    clip, _ = real_clip
    static = static_clip(clip)
    assert torch.equal(static["frames"][7], clip["frames"][0])
    targets = pose_targets(static["poses"][None].double(), torch.tensor([1.0], dtype=torch.float64))
    assert float(targets["scale"]) < 1e-9 and float(targets["translation"].abs().max()) < 1e-9
    jittered = photometric_clip(clip, np.random.default_rng(1))
    assert torch.equal(jittered["poses"], clip["poses"])
    assert 0 <= float(jittered["frames"].min()) and float(jittered["frames"].max()) <= 1
    assert (jittered["frames"] - clip["frames"]).abs().mean() > 0.01


def test_time_scaled_window_keeps_its_steps_and_changes_its_speed(real_clip):
    """Stretched timestamps: the frames and steps stay, the speed (step / interval) is 1 / factor
    as large, so the model's speed output must come from the motion, and its step is unchanged."""
    clip, K = real_clip
    slow = time_scaled_clip(clip, 2.0)
    assert torch.equal(slow["frames"], clip["frames"]) and torch.equal(slow["poses"], clip["poses"])
    assert torch.allclose(slow["timestamps"], 2.0 * clip["timestamps"])
    steps = pose_targets(clip["poses"][None].double(), torch.tensor([1.0], dtype=torch.float64))["scale"]
    interval = lambda c: float(c["timestamps"][-1] - c["timestamps"][0]) / (len(c["timestamps"]) - 1)
    assert float(steps) / interval(slow) == pytest.approx(0.5 * float(steps) / interval(clip))
    # Off (the default): no random number is drawn for it, so every other augmentation is as before.
    cfg = LaPoseConfig.from_dict({"data": {"photometric_prob": 1.0, "reverse_prob": 0.5}}).data
    on = LaPoseConfig.from_dict({"data": {"photometric_prob": 1.0, "reverse_prob": 0.5,
                                          "time_scale_prob": 1.0, "time_scale_max": 2.0}}).data
    for seed in range(4):
        rng_off, rng_on = np.random.default_rng(seed), np.random.default_rng(seed)
        a, b = augment_clip(clip, K, rng_off, cfg), augment_clip(clip, K, rng_on, on)
        assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["poses"], b["poses"])
        ratio = (b["timestamps"][-1] / a["timestamps"][-1]).item()
        assert 0.5 <= ratio <= 2.0 and ratio != 1.0
        assert rng_off.uniform() != rng_on.uniform()  # the enabled one drew its factor last
