"""Frame sources, preprocessing, windows, cut / repeat detection and datasets on the real data."""
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lapose_core.config import preset
from lapose_core.data.datasets import ClipDataset
from lapose_core.data.frame_cache import fit_source
from lapose_core.data.quality import CUT_THRESHOLD, FROZEN_THRESHOLD, bad_window, source_stats
from lapose_core.data.sources import (DataError, FrameReadError, KittiSequence, VideoSource,
                                      expand_sources, open_source)
from lapose_core.data.transforms import fit_to_model, to_tensor
from lapose_core.data.windows import window_indices, window_starts


@pytest.fixture
def cfg():
    cfg = preset("tiny")
    cfg.data.cut_threshold = CUT_THRESHOLD  # calibrated values (see quality.py)
    cfg.data.frozen_threshold = FROZEN_THRESHOLD
    return cfg


def copy_kitti(src, dst, frames=60):
    """A shortened copy of a KITTI folder (first ``frames`` frames) that a test may break."""
    (dst / "images").mkdir(parents=True)
    for name in ("poses.txt", "times.txt"):
        lines = (src / name).read_text().splitlines()[:frames]
        (dst / name).write_text("\n".join(lines) + "\n")
    shutil.copy(src / "calib.txt", dst / "calib.txt")
    for i in range(frames):
        shutil.copy(src / "images" / f"{i:06d}.jpg", dst / "images" / f"{i:06d}.jpg")
    return dst


def test_kitti_sequence_loads(shared_data):
    seq = open_source(shared_data / "kitti" / "07_head")
    assert isinstance(seq, KittiSequence) and len(seq) == 160
    assert seq.timestamps[0] == 0.0 and np.all(np.diff(seq.timestamps) > 0)
    assert seq.poses.shape == (160, 4, 4) and np.allclose(seq.poses[0], np.eye(4), atol=1e-6)
    assert seq.image_size == (613, 185)
    assert np.allclose(seq.intrinsics, [353.5456, 353.5456, 300.69365, 91.3052])
    image = seq.read(5)
    assert image.shape == (185, 613, 3) and image.dtype == np.uint8
    assert np.array_equal(image[..., 0], image[..., 1])  # grayscale expanded to 3 channels


def test_kitti_count_mismatch_names_file(shared_data, tmp_path):
    broken = copy_kitti(shared_data / "kitti" / "06_head", tmp_path / "seq", frames=40)
    lines = (broken / "poses.txt").read_text().splitlines()
    (broken / "poses.txt").write_text("\n".join(lines[:-3]) + "\n")
    with pytest.raises(DataError, match=r"poses.txt: 37 poses but times.txt has 40 frames"):
        KittiSequence(broken)
    with pytest.raises(DataError, match="not found"):
        KittiSequence(tmp_path / "nope")


def test_missing_and_corrupt_frames_are_skipped_and_counted(shared_data, tmp_path, cfg, caplog):
    seq_dir = copy_kitti(shared_data / "kitti" / "07_head", tmp_path / "seq")
    (seq_dir / "images" / "000020.jpg").unlink()
    data = (seq_dir / "images" / "000040.jpg").read_bytes()
    (seq_dir / "images" / "000040.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    seq = KittiSequence(seq_dir)
    with pytest.raises(FrameReadError, match="000020.jpg: image file missing"):
        seq.read(20)
    with pytest.raises(FrameReadError, match="000040.jpg: truncated or corrupt JPEG"):
        seq.read(40)
    with caplog.at_level(logging.WARNING):
        ds = ClipDataset([seq], cfg, labeled=True, length=50)
    assert ds.unreadable_frames == 2
    assert "2 unreadable frames" in caplog.text
    src = ds.sources[0]
    positions = src.poses[:, :3, 3].astype(np.float32)
    for i in range(50):
        clip = ds[i]
        # Recover the frame indices from the (distinct) ground-truth positions.
        idx = [int(np.flatnonzero((positions == p).all(1))[0]) for p in clip["poses"][:, :3, 3].numpy()]
        assert not {20, 40} & set(idx)
    # Windows that touched frame 20 or 40 were drawn, dropped and counted.
    assert ds.stats["unreadable"] > 0 and ds.stats["used"] == 50


def test_undecodable_video_is_a_data_error(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    with pytest.raises(DataError, match="broken.mp4"):
        VideoSource(bad)
    with pytest.raises(DataError, match="matches nothing"):
        expand_sources(["no_such_dir/*.mp4"], tmp_path)


def test_video_source_timestamps_and_downscale(shared_data):
    video = VideoSource(shared_data / "videos" / "nuscenes_mini_boston.mp4", max_width=400)
    assert len(video) == 40 and video.image_size == (800, 450)
    assert video.read(0).shape == (225, 400, 3)
    assert video.timestamps[0] == 0.0 and np.allclose(np.diff(video.timestamps), 0.05)


def test_fit_to_model_keeps_projection(shared_data):
    seq = KittiSequence(shared_data / "kitti" / "03_head")
    fx, fy, cx, cy = seq.intrinsics
    w, h = seq.image_size
    # Draw a bright dot where a 3D point projects, fit, and find the dot again.
    point = np.array([1.5, 0.4, 12.0])
    u, v = fx * point[0] / point[2] + cx, fy * point[1] / point[2] + cy
    image = np.zeros((h, w, 3), np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    image[(xx - u) ** 2 + (yy - v) ** 2 <= 5 ** 2] = 255
    for out_hw in [(96, 256), (128, 128), (448, 960)]:
        fitted, K = fit_to_model(image, seq.intrinsics, out_hw)
        assert fitted.shape == (*out_hw, 3) and fitted.dtype == np.uint8
        weight = fitted[..., 0].astype(np.float64)
        ys, xs = np.mgrid[0:out_hw[0], 0:out_hw[1]]
        found = np.array([(xs * weight).sum(), (ys * weight).sum()]) / weight.sum()
        expected = np.array([K[0] * point[0] / point[2] + K[2], K[1] * point[1] / point[2] + K[3]])
        assert np.abs(found - expected).max() < 0.35, (out_hw, found, expected)
    tensor = to_tensor(fitted)
    assert tensor.shape == (3, 448, 960) and tensor.dtype == torch.float32 and tensor.max() <= 1.0


def test_window_indices_follow_real_timestamps(shared_data):
    video = VideoSource(shared_data / "videos" / "nuscenes_mini_boston.mp4", max_width=64)
    # The stored file is 20 fps; keep the frames of a gappy recording (irregular steps, one hole).
    keep = np.r_[0:8, 9:12, 14:22:2, 23:40]
    t = video.timestamps[keep]
    idx = window_indices(t, fps=4.0, num_frames=6, start=0)
    assert idx is not None
    assert np.abs(t[idx] - np.arange(6) / 4.0).max() <= 0.5 / 4.0
    # Across the hole at 12..14 (0.15 s) a 10 fps window has no frame within 0.05 s.
    assert window_indices(t, fps=10.0, num_frames=8, start=8) is None
    # Faster than the recording: two wanted times on one frame.
    assert window_indices(np.arange(10) / 2.0, fps=5.0, num_frames=4) is None
    assert window_indices(video.timestamps, fps=2.0, num_frames=16) is None  # runs past the end
    starts = window_starts(KittiSequence(shared_data / "kitti" / "03_head").timestamps, 2.0)
    assert starts[0] == 0 and len(starts) >= 40
    last = window_indices(KittiSequence(shared_data / "kitti" / "03_head").timestamps, 2.0, 16,
                          starts[-1])
    assert last[-1] >= 495  # the tail is covered


def test_cut_detection_on_real_clips(shared_data):
    compilation = source_stats(VideoSource(shared_data / "unlabeled" / "asia_highway_8.mp4",
                                           max_width=320))
    assert 12 <= compilation.num_cuts <= 20
    assert source_stats(VideoSource(shared_data / "unlabeled" / "dashcam_us_3.mp4",
                                    max_width=320)).num_cuts == 2
    assert source_stats(KittiSequence(shared_data / "kitti" / "03_head")).num_cuts == 0


def test_frozen_detection_on_repeated_frames(shared_data):
    video = VideoSource(shared_data / "unlabeled" / "city_india_traffic.mp4", max_width=320)
    stats = source_stats(video)
    assert 50 <= stats.num_repeats <= 60
    verdicts = []
    for start in range(0, len(video), 5):
        idx = window_indices(video.timestamps, 3.0, 16, start)
        if idx is None:  # runs past the end
            continue
        verdict = bad_window(stats, idx)
        copies = stats.is_repeat[idx[idx > 0] - 1].any()  # a sampled frame is a stale copy
        assert (verdict == "frozen") == copies
        verdicts.append(verdict)
    assert "frozen" in verdicts and None in verdicts and "cut" not in verdicts


def test_dataset_is_deterministic_and_fps_in_range(shared_data, cfg):
    sources = [shared_data / "unlabeled" / "city_india_traffic.mp4",
               shared_data / "unlabeled" / "dashcam_us_1.mp4", shared_data / "kitti" / "06_head"]
    ds = ClipDataset(sources, cfg, labeled=False, length=100)
    fps = []
    for seed in range(60):
        a, b = ds[seed], ds.sample(seed)
        assert a.keys() == {"frames", "timestamps", "fov", "fps"}
        for key in a:
            assert torch.equal(a[key], b[key]) or (key == "fov" and a[key].isnan() and b[key].isnan())
        assert a["frames"].shape == (16, 3, 96, 256) and a["frames"].dtype == torch.float32
        steps = np.diff(a["timestamps"].numpy())
        assert np.all(np.abs(steps - 1.0 / float(a["fps"])) <= 0.5 / float(a["fps"]) + 1e-4)
        fps.append(float(a["fps"]))
    assert 1.0 <= min(fps) and max(fps) <= 4.0 and max(fps) - min(fps) > 2.0
    assert not torch.equal(ds[0]["frames"], ds[1]["frames"])
    # Copies never reach a window.
    india = ds.sources[0]
    assert india.stats.num_repeats > 50 and len(india.timeline) == len(india.timestamps) - 55


def test_labeled_source_without_window_is_an_error(shared_data, tmp_path, cfg):
    short = copy_kitti(shared_data / "kitti" / "06_head", tmp_path / "short", frames=12)
    with pytest.raises(DataError, match="short: no usable window"):
        ClipDataset([short], cfg, labeled=True)
    fov = fit_source(shared_data / "kitti" / "06_head", cfg).fov
    assert 1.0 < fov < 1.4  # KITTI's ~82 degree lens, centre-cropped to 256x96


def test_frame_cache_reuses_entries_and_rebuilds_stale_or_damaged_ones(shared_data, tmp_path, cfg,
                                                                       monkeypatch, caplog):
    from lapose_core.data import frame_cache
    from lapose_core.data.datasets import build_posttrain_dataset

    seq_dir = copy_kitti(shared_data / "kitti" / "07_head", tmp_path / "seq")
    cache = tmp_path / "cache"
    cfg.data.posttrain_sequences = [str(seq_dir)]
    cfg.data.frame_cache = str(cache)
    first = build_posttrain_dataset(cfg, tmp_path)

    def entries():
        return [p for p in cache.iterdir() if p.is_dir()]

    assert len(entries()) == 1 and entries()[0].name.startswith("seq-")  # no temporary folder left

    decoded = []
    real_fit = frame_cache.fit_source
    monkeypatch.setattr(frame_cache, "fit_source", lambda *a: decoded.append(a) or real_fit(*a))

    def same_windows(ds):
        for seed in range(5):
            a, b = first.sample(seed), ds.sample(seed)
            assert all(torch.equal(a[k], b[k]) for k in ("frames", "poses", "timestamps", "fov"))

    second = build_posttrain_dataset(cfg, tmp_path)
    assert decoded == [] and isinstance(second.sources[0].frames, np.memmap)
    same_windows(second)

    # Any change to the source's files gives a new entry, never the stale one.
    poses = seq_dir / "poses.txt"
    poses.write_text(poses.read_text())
    os.utime(poses, ns=(poses.stat().st_atime_ns, poses.stat().st_mtime_ns + 10**9))
    build_posttrain_dataset(cfg, tmp_path)
    assert len(decoded) == 1 and len(entries()) == 2

    # A damaged entry is rebuilt with a warning naming it.
    newest = max(entries(), key=lambda p: p.stat().st_mtime_ns)
    frames_file = newest / "frames.npy"
    frames_file.write_bytes(frames_file.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING):
        third = build_posttrain_dataset(cfg, tmp_path)
    assert len(decoded) == 2 and f"{newest}: unreadable cache entry" in caplog.text
    same_windows(third)

    # A writer that fails half way leaves neither an entry nor its temporary folder.
    cfg.model.image_width = 128  # another input size: another entry
    monkeypatch.setattr(frame_cache.np, "savez", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        build_posttrain_dataset(cfg, tmp_path)
    assert len(entries()) == 2


def test_frame_cache_entry_is_decoded_once_by_concurrent_processes(shared_data, tmp_path, cfg):
    """Ranks of one job asking for the same source at once: one decodes, the others read its entry."""
    import multiprocessing

    from lapose_core.data import frame_cache

    source = shared_data / "kitti" / "06_head"
    cache = tmp_path / "cache"
    ctx = multiprocessing.get_context("fork")
    decodes = ctx.Value("i", 0)
    real_fit = frame_cache.fit_source

    def counting_fit(*args):
        with decodes.get_lock():
            decodes.value += 1
        return real_fit(*args)

    def rank():
        frame_cache.fit_source = counting_fit  # in the child only
        frames = frame_cache.load_source(source, cfg, cache).frames
        raise SystemExit(0 if frames.shape == (51, 96, 256, 3) else 1)

    procs = [ctx.Process(target=rank) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert decodes.value == 1
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1


def test_bench_data_prints_both_build_times(shared_data, tmp_path, capsys):
    from lapose_core.cli import main

    sources = [str(shared_data / "kitti" / "06_head"), str(shared_data / "videos" / "highway_*.mp4")]
    assert main(["bench-data", "--sources", *sources, "--cache", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "2 sources, preset tiny (96x256 input)" in out
    assert re.search(r"decode \+ write cache: +\d+\.\d+ s", out)
    assert re.search(r"read cache: +\d+\.\d+ s", out)
    assert "272 frames in 2 usable sources" in out  # 51 KITTI frames + 221 video frames
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 2
