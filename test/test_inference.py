"""PoseEstimator: streaming through cached frame features equals the whole-window model, the
backend fallback chain, and clear errors."""
import logging

import numpy as np
import pytest
import torch

from lapose_core.data.sources import KittiSequence
from lapose_core.data.windows import window_indices
from lapose_core.inference import InferenceError, PoseEstimator


@pytest.fixture(scope="module")
def window(shared_data):
    seq = KittiSequence(shared_data / "kitti" / "03_head")
    idx = window_indices(seq.timestamps, 2.0, 16, start=20)
    return [seq.read(i) for i in idx], seq.timestamps[idx]


@pytest.mark.parametrize("model", [{}, {"motion_features": "correlation"},
                                   {"motion_features": "correlation", "motion_centred": True},
                                   {"motion_features": "correlation", "motion_centred": True,
                                    "motion_flow": True}],
                         ids=["paper", "motion", "centred", "flow"])
def test_streaming_equals_whole_window(window, model):
    images, ts = window
    est = PoseEstimator.random("tiny", seed=3, model=model)
    streamed = est.predict_features([est.encode_frame(im) for im in images], ts)
    frames = torch.stack([est.preprocess(im) for im in images])[None]
    with torch.no_grad():
        out = est.model.predict(frames, torch.as_tensor(ts - ts[0], dtype=torch.float32)[None])
    assert np.allclose(streamed.scale, out["scale"].item(), rtol=1e-5)
    assert streamed.relative.shape == (15, 4, 4) and streamed.poses.shape == (16, 4, 4)
    assert np.allclose(streamed.poses[0], np.eye(4))
    assert np.allclose(streamed.poses[-1], streamed.poses[-2] @ streamed.relative[-1], atol=1e-9)
    assert streamed.finite


def test_sliding_window_computes_one_new_pair(shared_data, monkeypatch):
    """A window slid by one keyframe reuses 14 pairs' motion tokens: one correlation per keyframe,
    and the same answer as a fresh estimator that computes all 15."""
    seq = KittiSequence(shared_data / "kitti" / "03_head")
    idx = window_indices(seq.timestamps, 2.0, 17, start=20)
    images, ts = [seq.read(i) for i in idx], seq.timestamps[idx]
    est = PoseEstimator.random("tiny", seed=3, model={"motion_features": "correlation"})
    calls = []
    pair_part = est.pair_part
    monkeypatch.setattr(est, "pair_part", lambda a, b: calls.append(1) or pair_part(a, b))
    features = [est.encode_frame(im) for im in images]
    est.predict_features(features[:16], ts[:16])
    assert len(calls) == 15
    slid = est.predict_features(features[1:], ts[1:])
    assert len(calls) == 16
    fresh = PoseEstimator.random("tiny", seed=3, model={"motion_features": "correlation"})
    reference = fresh.predict_features([fresh.encode_frame(im) for im in images[1:]], ts[1:])
    assert np.allclose(slid.relative, reference.relative, atol=1e-9)
    assert np.isclose(slid.scale, reference.scale, rtol=1e-9)


def test_encoder_time_embedding_models_run_too(window):
    """A model with the timestamp embedding in the tokenizer re-encodes the window each time."""
    from lapose_core.config import LaPoseConfig
    from lapose_core.model.lapose import LaPose

    cfg = LaPoseConfig.from_dict({"model": {"time_embedding_at": "encoder"}})
    torch.manual_seed(0)
    est = PoseEstimator(LaPose(cfg.model), cfg)
    images, ts = window
    pred = est.predict_window(images, ts)
    frames = torch.stack([est.preprocess(im) for im in images])[None]
    with torch.no_grad():
        out = est.model.predict(frames, torch.as_tensor(ts - ts[0], dtype=torch.float32)[None])
    assert np.isclose(pred.scale, out["scale"].item(), rtol=1e-5)


def test_backend_falls_back_to_eager(window, monkeypatch, caplog):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken_compile)
    with caplog.at_level(logging.WARNING):
        est = PoseEstimator.random("tiny", seed=3, backend="tensorrt")
    assert est.backend == "eager"
    assert "backend 'tensorrt' unavailable" in caplog.text and "backend 'compile' unavailable" in caplog.text
    assert all(p.dtype == torch.float32 for p in est.model.parameters())
    images, ts = window
    reference = PoseEstimator.random("tiny", seed=3).predict_window(images, ts)
    assert np.allclose(est.predict_window(images, ts).relative, reference.relative, atol=1e-6)


def test_clear_errors(tmp_path, window):
    with pytest.raises(InferenceError, match="nowhere"):
        PoseEstimator.load(tmp_path / "nowhere")
    with pytest.raises(InferenceError, match="unknown backend 'fast'"):
        PoseEstimator.random("tiny", backend="fast")
    est = PoseEstimator.random("tiny")
    images, ts = window
    with pytest.raises(InferenceError, match="needs 16 frames, got 3"):
        est.predict_features([est.encode_frame(im) for im in images[:3]], ts[:3])
    with pytest.raises(InferenceError, match="uint8"):
        est.encode_frame(np.zeros((10, 10, 3), dtype=np.float32))
