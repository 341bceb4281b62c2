"""PoseEstimator: streaming through cached frame features equals the whole-window model, the
backend fallback chain, and clear errors."""
import logging

import cv2
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from lapose_core.config import ConfigError, LaPoseConfig
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
                                    "motion_flow": True},
                                   {"motion_features": "correlation", "motion_centred": True,
                                    "motion_flow": True, "rotation_from_flow": True},
                                   {"motion_features": "correlation", "motion_centred": True,
                                    "motion_flow": True, "rotation_from_flow": True,
                                    "rotation_fit": "focus"},
                                   {"motion_features": "correlation", "motion_centred": True,
                                    "motion_flow": True, "rotation_from_flow": True,
                                    "rotation_fit": "focus_roll", "translation_frame": "half_turn"},
                                   {"motion_features": "correlation", "motion_centred": True,
                                    "motion_flow": True, "rotation_from_flow": True,
                                    "rotation_fit": "head_focus", "translation_frame": "half_turn"}],
                         ids=["paper", "motion", "centred", "flow", "rotation_from_flow", "rotation_fit_focus",
                              "focus_roll_half_turn", "head_focus_half_turn"])
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


def test_mirror_average_undoes_a_mirror_exactly():
    """A step and the same step seen in a mirror (x -> -x) average back to that step."""
    from scipy.spatial.transform import Rotation

    from lapose_core import geometry
    from lapose_core.inference import average_with_mirror

    rotations = Rotation.from_rotvec([[0.01, 0.2, -0.03], [-0.02, -0.1, 0.05]])
    quaternion = torch.as_tensor(np.roll(rotations.as_quat(), 1, -1))[None]  # (w, x, y, z)
    translation = torch.tensor([[[0.1, -0.02, 1.0], [-0.2, 0.01, 0.9]]], dtype=torch.float64)
    M = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    mirrored_R = M @ geometry.quaternion_to_matrix(quaternion) @ M
    mirrored_q = torch.as_tensor(np.roll(Rotation.from_matrix(mirrored_R[0].numpy()).as_quat(), 1, -1))[None]
    t, q, fov, scale = average_with_mirror(torch.cat([translation, translation @ M]),
                                           torch.cat([quaternion, -mirrored_q]),  # either sign
                                           torch.tensor([[1.2], [1.4]]), torch.tensor([2.0, 3.0]))
    assert torch.allclose(t, translation) and torch.allclose(q, quaternion)
    assert torch.allclose(fov, torch.tensor([[1.3]])) and torch.allclose(scale, torch.tensor([2.5]))


def test_mirror_averaged_model_turns_the_other_way_in_a_mirror(window):
    """With model.mirror_average the estimator is exactly mirror-symmetric: the mirrored window
    gives the mirrored motion (any weights), which no single pass of a trained model is."""
    images, ts = window
    model = {"motion_features": "correlation", "motion_centred": True, "motion_flow": True,
             "mirror_average": True}
    est = PoseEstimator.random("tiny", seed=3, model=model)
    m = est.config.model
    fitted = [cv2.resize(im, (m.image_width, m.image_height), interpolation=cv2.INTER_AREA)
              for im in images]  # at the model's size: flipping commutes with the input's crop
    direct = est.predict_features([est.encode_frame(im) for im in fitted], ts)
    flipped = est.predict_features([est.encode_frame(np.ascontiguousarray(im[:, ::-1]))
                                    for im in fitted], ts)
    M = np.diag([-1.0, 1.0, 1.0, 1.0])
    assert np.allclose(M @ flipped.relative @ M, direct.relative, atol=1e-5)
    assert np.isclose(flipped.scale, direct.scale, rtol=1e-5)
    assert np.abs(direct.relative[:, 0, 2]).max() > 1e-4  # it does turn: the check has content


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


def step_angles_deg(prediction) -> np.ndarray:
    """How far the camera turns in each step of a window prediction, degrees."""
    return np.degrees(np.linalg.norm(Rotation.from_matrix(prediction.relative[:, :3, :3]).as_rotvec(), axis=-1))


def test_camera_intrinsics_reach_the_refit(window, shared_data):
    """A model that refits its rotations about the head's direction (the bundled default) reads them
    with the camera's intrinsics: given per window, or set once as the node does from CameraInfo
    (the same answer). 03_head's principal point lies 2.3 px left of and 3.6 px above the centre of
    the model's input, and the rotations move with it. A camera of narrower field of view (fx 25 %
    longer) sees the same image motion as turns about 25 % smaller, which the model's own field of
    view (that of the cameras it was trained on) would not. The mirrored view takes the mirrored
    principal point: a mirrored window with the mirrored camera gives exactly the mirrored motion,
    and with the unmirrored camera it does not."""
    from lapose_core.data.transforms import fit_to_model, fitted_intrinsics

    images, ts = window
    est = PoseEstimator.load()
    assert est.model.refits_rotation and est.views == 2
    m = est.config.model
    native = KittiSequence(shared_data / "kitti" / "03_head").intrinsics
    K = fitted_intrinsics(native, images[0].shape[:2], (m.image_height, m.image_width))
    assert np.allclose(K[2:] - [(m.image_width - 1) / 2, (m.image_height - 1) / 2], [-2.3, -3.6], atol=0.05)
    fitted = [fit_to_model(im, None, (m.image_height, m.image_width))[0] for im in images]
    features = [est.encode_frame(im) for im in fitted]
    unknown = est.predict_features(features, ts)
    given = est.predict_features(features, ts, intrinsics=K)
    assert np.abs(step_angles_deg(given) - step_angles_deg(unknown)).max() > 0.01
    est.intrinsics = tuple(K)
    assert np.array_equal(est.predict_features(features, ts).relative, given.relative)
    narrow = est.predict_features(features, ts, intrinsics=(1.25 * K[0], 1.25 * K[1], K[2], K[3]))
    ratio = step_angles_deg(narrow).sum() / step_angles_deg(given).sum()
    assert 0.75 < ratio < 0.85, ratio

    est.intrinsics = None
    flipped = [est.encode_frame(np.ascontiguousarray(im[:, ::-1])) for im in fitted]
    mirrored_K = (K[0], K[1], m.image_width - 1 - K[2], K[3])
    M = np.diag([-1.0, 1.0, 1.0, 1.0])
    mirrored = est.predict_features(flipped, ts, intrinsics=mirrored_K)
    assert np.allclose(M @ mirrored.relative @ M, given.relative, atol=1e-5)
    unmirrored = est.predict_features(flipped, ts, intrinsics=K)
    assert not np.allclose(M @ unmirrored.relative @ M, given.relative, atol=1e-5)
    with pytest.raises(InferenceError, match="intrinsics: expected"):
        est.predict_features(features, ts, intrinsics=K[:3])
    est.model.cfg.use_intrinsics = False  # the ablation: a camera of unknown intrinsics
    assert np.array_equal(est.predict_features(features, ts, intrinsics=K).relative, unknown.relative)
    with pytest.raises(ConfigError, match="use_intrinsics"):
        LaPoseConfig.from_dict({"model": {"use_intrinsics": False}})


def test_a_cropped_camera_reads_the_same_turns_with_its_intrinsics(window, shared_data):
    """The same drive seen by a camera with 12 rows fewer (the model's input then covers a 7 %
    narrower view): with that camera's intrinsics the bundled model reads the window's turns within
    3 % of what it reads from the full frames; without them, at the field of view it predicts (that
    of the cameras it was trained on), more than 4 % larger."""
    images, ts = window
    est = PoseEstimator.load()
    fx, fy, cx, cy = KittiSequence(shared_data / "kitti" / "03_head").intrinsics

    def turned(frames, intrinsics=None):
        prediction = est.predict_features([est.encode_frame(im) for im in frames], ts, intrinsics=intrinsics)
        return step_angles_deg(prediction).sum()

    full = turned(images, (fx, fy, cx, cy))
    cropped = [np.ascontiguousarray(im[6:-6]) for im in images]
    assert abs(turned(cropped, (fx, fy, cx, cy - 6)) / full - 1) < 0.03
    assert turned(cropped) / full > 1.04


def test_engine_cache_key_follows_inference_switches():
    """Compiled engines are cached by the checkpoint's weights, and an inference-only switch
    (travel_height, use_intrinsics) changes the graph without changing them: the key changes with it."""
    est = PoseEstimator.load()
    key = est.engine_key("digest", "GPU", "2.0")
    assert key == est.engine_key("digest", "GPU", "2.0") and key.startswith("digest_GPU_trt2.0_p2_v2_f_headfocuscam_m")
    est.config.model.travel_height = "head"
    assert est.engine_key("digest", "GPU", "2.0") != key


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


def test_example_inputs_are_the_shapes_the_parts_pass():
    """Compiled engines are built for static shapes (``example_inputs``). For the bundled model,
    every switch of the recipe on, the pair part's flow reading has the shape the window part is
    built for, and the window part runs on its example inputs, as the compile and TensorRT
    backends do when they build and warm up."""
    from lapose_core.inference import PairPart, WindowPart

    est = PoseEstimator.load()
    _, window, pair = est.example_inputs()
    with torch.no_grad():
        _, reading = PairPart(est.model)(*pair)
        assert reading.shape == (est.views, window[3].shape[-1])
        translation = WindowPart(est.model)(*window)[0]
    assert translation.shape == (est.views, 15, 3) and torch.isfinite(translation).all()


def test_cpu_threads_hold_while_it_runs_and_any_thread_gives_the_same_motion(window):
    """The node runs the estimator on its processing thread, the offline evaluation on the main one:
    with the estimator's own intra-op thread count they give the same motion, bit for bit."""
    import threading

    images, stamps = window
    estimator = PoseEstimator.load(None)
    seen = []
    estimator.window_part.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    here = estimator.predict_window(images, list(stamps))
    assert seen == [1] and torch.get_num_threads() == before

    estimator.pair_cache.entries.clear()
    elsewhere = {}
    worker = threading.Thread(target=lambda: elsewhere.update(
        prediction=estimator.predict_window(images, list(stamps))))
    worker.start()
    worker.join()
    assert np.array_equal(elsewhere["prediction"].relative, here.relative)
    assert elsewhere["prediction"].scale == here.scale
    with pytest.raises(InferenceError, match="cpu_threads"):
        PoseEstimator.random("tiny", cpu_threads=0)
