"""Geometric self-labels (data/self_labels.py): checked against the ground truth of a labelled head
treated as unlabeled; written folders read back as self-labelled; post-training uses them up to scale."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lapose_core import geometry
from lapose_core.config import preset
from lapose_core.data.datasets import ClipDataset
from lapose_core.data.self_labels import (SelfLabelConfig, chain_segments, is_self_labelled,
                                          model_focal_px, self_label, source_focal_px, write_segment)
from lapose_core.data.sources import KittiSequence
from lapose_core.eval.classical import Step
from lapose_core.eval import metrics
from lapose_core.eval.metrics import rotation_angle_deg
from lapose_core.model.lapose import pose_losses

REPO = Path(__file__).resolve().parents[1]

MODEL_HW = (96, 256)


@pytest.fixture(scope="module")
def labelled_06(shared_data):
    seq = KittiSequence(shared_data / "kitti" / "06_head")
    cfg = SelfLabelConfig(model_focal_px=model_focal_px(seq.intrinsics, seq.image_size, MODEL_HW),
                          model_hw=MODEL_HW)
    segments, record = self_label(seq, cfg)
    return seq, cfg, segments, record


def test_focal_length_round_trips_through_the_model_input():
    f = model_focal_px(np.array([359.1, 359.4, 303.1, 92.4]), (620, 188), MODEL_HW)
    assert f == pytest.approx(359.1 * 96 / 188)  # KITTI is wider than the input: its height fills it
    assert source_focal_px(f, 620, 188, MODEL_HW) == pytest.approx(359.1)
    # A 16:9 frame fills the input's width instead; the same model focal is a different lens.
    assert source_focal_px(f, 640, 360, MODEL_HW) == pytest.approx(f * 640 / 256)


def test_self_labels_of_a_labelled_head_match_its_ground_truth(labelled_06):
    seq, cfg, segments, record = labelled_06
    # 51 frames at 10 Hz, keyframes at 5 Hz: 26, every step trusted, one segment.
    assert record["keyframes"] == 26 and record["untrusted"] == 0 and len(segments) == 1
    segment = segments[0]
    # Nearest to every 0.2 s; KITTI's frames are 0.104 s apart, so now and then one step is one frame.
    assert set(np.diff(segment.keyframes)) <= {1, 2}
    pred, true = metrics.step_motions(segment.poses), metrics.step_motions(seq.poses[segment.keyframes])
    rotation_error = rotation_angle_deg(np.swapaxes(pred[:, :3, :3], -1, -2) @ true[:, :3, :3])
    assert np.median(rotation_error) < 0.3
    t_pred, t_true = pred[:, :3, 3], true[:, :3, 3]
    cos = np.sum(t_pred * t_true, -1) / np.linalg.norm(t_pred, axis=-1) / np.linalg.norm(t_true, axis=-1)
    assert np.median(np.degrees(np.arccos(np.clip(cos, -1, 1)))) < 2.0
    # Step lengths relative to each other (the scale is unknown): within 10 % over 16 frames.
    ratio = np.linalg.norm(t_pred[:15], axis=-1) / np.linalg.norm(t_true[:15], axis=-1)
    assert np.abs(ratio / ratio.mean() - 1).max() < 0.10


def test_untrusted_steps_and_unknown_lengths_split_segments():
    ok = Step(np.eye(3), np.array([0.0, 0.0, -1.0]), ok=True)
    bad = Step(np.eye(3), np.zeros(3), ok=False)
    steps = [ok] * 5 + [bad] + [ok] * 6
    breaks = np.array([not s.ok for s in steps])
    ratios = [None, 2.0, 1.0, 1.0, 1.0, None, None, 1.0, 1.0, None, 0.5, 1.0]
    segments = chain_segments(steps, ratios, breaks, np.arange(100, 113), min_frames=3)
    # Steps 0-4 (keyframes 100-105), step 5 left out, steps 6-8 and 9-11 split at the unknown length.
    assert [list(s.keyframes) for s in segments] == [[100, 101, 102, 103, 104, 105],
                                                      [106, 107, 108, 109], [109, 110, 111, 112]]
    lengths = np.linalg.norm(metrics.step_motions(segments[0].poses)[:, :3, 3], axis=-1)
    assert lengths == pytest.approx([1, 2, 2, 2, 2])
    assert np.linalg.norm(metrics.step_motions(segments[2].poses)[:, :3, 3], axis=-1) == pytest.approx([1, 0.5, 0.5])
    # x_{k+1} = x_k - z: the camera moved forward along +z.
    assert segments[0].poses[-1][:3, 3] == pytest.approx([0, 0, 9])


def test_written_segment_trains_up_to_scale_only(labelled_06, tmp_path, shared_data):
    seq, cfg, segments, record = labelled_06
    folder = tmp_path / "06_self"
    write_segment(folder, seq, segments[0], np.asarray(record["intrinsics"]), record, cfg)
    # Written again (a run killed before the clip's record): replaced, not an error.
    write_segment(folder, seq, segments[0], np.asarray(record["intrinsics"]), record, cfg)
    assert not folder.with_name("06_self.tmp").exists()
    assert is_self_labelled(folder) and not is_self_labelled(shared_data / "kitti" / "06_head")
    back = KittiSequence(folder)
    assert len(back) == len(segments[0].keyframes)
    assert np.allclose(back.poses, segments[0].poses, atol=1e-6)
    assert np.allclose(back.timestamps, seq.timestamps[segments[0].keyframes] - seq.timestamps[0])

    train = preset("tiny")
    train.data.self_label_share = 0.25
    ds = ClipDataset([shared_data / "kitti" / "00_head", folder], train, labeled=True, length=10)
    assert list(ds.metric_scale) == [True, False]
    clips = [ds.sample(seed) for seed in range(60)]
    self_labelled = [c for c in clips if not c["metric_scale"]]
    assert 8 <= len(self_labelled) <= 22  # a quarter of the windows, though it is 5 s of 25
    assert all(torch.isnan(c["fov"]) for c in self_labelled)
    assert all(torch.isfinite(c["fov"]) for c in clips if c["metric_scale"])


def test_loss_on_self_labelled_windows_ignores_their_scale():
    gen = torch.Generator().manual_seed(0)
    poses = torch.eye(4).repeat(2, 16, 1, 1).double()
    poses[:, :, :3, 3] = torch.cumsum(torch.rand(2, 16, 3, generator=gen).double(), 1)
    fov = torch.tensor([1.2, float("nan")]).double()
    pred = {"translation": torch.rand(2, 15, 3, generator=gen), "quaternion": torch.nn.functional.normalize(
        torch.rand(2, 15, 4, generator=gen), dim=-1), "fov": torch.rand(2, 15, generator=gen),
        "log_scale": torch.rand(2, generator=gen)}
    metric = torch.tensor([True, False])

    def losses(p):
        tgt = {k: v.float() for k, v in geometry.pose_targets(p, fov, 1.0).items()}
        return pose_losses(pred, tgt, "rotvec_deg", metric)

    base = losses(poses)
    rescaled = poses.clone()
    rescaled[1, :, :3, 3] *= 7.0  # the self-labelled window in other units
    assert {k: float(v) for k, v in losses(rescaled).items()} == pytest.approx(
        {k: float(v) for k, v in base.items()})
    rescaled[0, :, :3, 3] *= 7.0  # the metric one: its scale and translation targets change
    changed = losses(rescaled)
    assert float(changed["scale"]) != pytest.approx(float(base["scale"]))
    assert float(changed["translation"]) != pytest.approx(float(base["translation"]))
    # The prediction's own scale does not matter on the self-labelled window either.
    pred["translation"][1] *= 3.0
    assert float(losses(poses)["translation"]) == pytest.approx(float(base["translation"]))


def test_self_label_script_refuses_a_test_sequence(shared_data, tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "training" / "self_label.py"), "--sources",
                          str(shared_data / "kitti" / "03_head"), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode != 0 and "03_head: a test sequence" in out.stderr
    assert not (tmp_path / "out").exists()
