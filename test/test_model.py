"""Model shapes, exact causality, presets and the pose-target conventions."""
import math

import pytest
import torch

from lapose_core import geometry
from lapose_core.config import ConfigError, LaPoseConfig, preset
from lapose_core.model.lapose import LaPose
from lapose_core.model.vqvae import VQVAE


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = preset("tiny")
    return cfg, LaPose(cfg.model).eval()


def clip(cfg, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = cfg.model
    frames = torch.rand(B, m.num_frames, 3, m.image_height, m.image_width, generator=g)
    ts = torch.arange(m.num_frames).float().repeat(B, 1) * 0.5
    return frames, ts


def test_part_shapes(tiny):
    cfg, model = tiny
    m = cfg.model
    frames, ts = clip(cfg)
    tokens = model.encode_frames(frames, ts)
    n_tokens = m.grid[0] * m.grid[1]
    assert tokens.shape == (2, 16, n_tokens, m.width)
    actions = model.actions(tokens, ts)
    assert actions.shape == (2, 15, m.width)
    assert model.bottleneck.compress(actions).shape == (2, 15, m.action_dim)
    assert model.bottleneck(actions).shape == actions.shape
    codes = model.vqvae.encode(frames[0])
    assert codes.shape == (16, *m.code_grid)
    logits = model.fdm(codes[None, :-1].repeat(2, 1, 1, 1), actions, model.time_embed(ts)[:, 1:])
    assert logits.shape == (2, 15, m.code_grid[0] * m.code_grid[1], m.vq_codebook_size)
    out = model.pose(actions, ts)
    assert out["translation"].shape == (2, 15, 3) and out["quaternion"].shape == (2, 15, 4)
    assert out["fov"].shape == (2, 15) and out["scale"].shape == (2,)
    assert torch.allclose(out["quaternion"].norm(dim=-1), torch.ones(2, 15), atol=1e-5)
    assert (out["quaternion"][..., 0] >= 0).all() and (out["scale"] > 0).all()


def test_speed_scale_output_scales_with_the_frame_interval():
    """scale_output 'speed': the same actions over windows twice as long apart in time give steps
    twice as long (the scale token predicts m/s; s = speed x mean interval)."""
    cfg = LaPoseConfig.from_dict({"preset": "tiny", "model": {"scale_output": "speed"}})
    torch.manual_seed(0)
    model = LaPose(cfg.model).eval()
    actions = torch.randn(2, 15, cfg.model.width)
    ts = torch.arange(16.0)[None].repeat(2, 1) * 0.5
    with torch.no_grad():
        a, b = model.pose(actions, ts)["scale"], model.pose(actions, ts * 2)["scale"]
    torch.testing.assert_close(b, 2 * a)


@pytest.fixture(scope="module")
def tiny_motion():
    torch.manual_seed(0)
    cfg = LaPoseConfig.from_dict({"model": {"motion_features": "correlation"}})
    return cfg, LaPose(cfg.model).eval()


@pytest.mark.parametrize("motion", [False, True])
@pytest.mark.parametrize("t", [0, 6, 13])
def test_inverse_dynamics_is_causal(tiny, tiny_motion, t, motion):
    """Action t (frames t -> t+1) must not change at all when frames after t+1 change."""
    cfg, model = tiny_motion if motion else tiny
    frames, ts = clip(cfg)
    changed = frames.clone()
    changed[:, t + 2:] = torch.rand_like(changed[:, t + 2:])
    with torch.no_grad():
        a = model.window_actions(frames, ts)
        b = model.window_actions(changed, ts)
    assert torch.equal(a[:, :t + 1], b[:, :t + 1])
    if t + 1 < 15:
        assert not torch.allclose(a[:, t + 1], b[:, t + 1])


def test_motion_tokens_see_how_the_image_moved(tiny_motion):
    """The correlation volume peaks at the true displacement; frame 0 has no motion tokens."""
    from lapose_core.model.latent_action import local_correlation, patch_descriptors

    cfg, model = tiny_motion
    g = torch.Generator().manual_seed(1)
    scene = torch.nn.functional.interpolate(torch.rand(1, 3, 48, 136, generator=g), scale_factor=2,
                                            mode="bilinear")
    a, b = scene[..., 8:104, 8:264], scene[..., 0:96, 0:256]  # a(y, x) = b(y + 8, x + 8)
    da, db = patch_descriptors(a), patch_descriptors(b)
    corr = local_correlation(da, db, radius=4)[0, :, 4:-4, 4:-4].mean((1, 2))
    dy, dx = divmod(int(corr.argmax()), 9)
    assert (dy - 4, dx - 4) == (2, 2)  # 8 px = 2 cells down and right in b
    frames, ts = clip(cfg, B=1)
    with torch.no_grad():
        motion, pixel_flow = model.motion(model.motion_maps(frames))
    assert pixel_flow is None  # only with rotation_from_flow
    assert torch.all(motion[:, 0] == 0) and motion[:, 1:].abs().sum() > 0


def test_centred_correlation_reaches_a_shift_beyond_the_fine_level():
    """motion_centred: an image shifted 28 px (7 fine cells, beyond the 4 px level's +-4) is found
    by the 16 px level, and the 4 px level then sees the rest of it (1 cell); uncentred, the 4 px
    level cannot: its best correlation is far below the match's."""
    from lapose_core.model.latent_action import MotionEncoder, patch_descriptors

    g = torch.Generator().manual_seed(1)
    scene = torch.nn.functional.interpolate(torch.rand(1, 3, 48, 160, generator=g), scale_factor=2,
                                            mode="bilinear")
    a, b = scene[..., 0:96, 28:284], scene[..., 0:96, 0:256]  # a(y, x) = b(y, x + 28)
    da, db = patch_descriptors(a), patch_descriptors(b)
    fine_offsets, fine_peaks = {}, {}
    for centred in (False, True):
        cfg = LaPoseConfig.from_dict({"model": {"motion_features": "correlation",
                                                "motion_centred": centred}})
        encoder = MotionEncoder(cfg.model)
        volume = encoder.correlations(da, db)
        assert volume.shape[1] == 3 * 81 + (2 if centred else 0)
        fine = volume[0, :81, 4:-4, 4:-12].mean((1, 2))  # cells whose match is inside b
        dy, dx = divmod(int(fine.argmax()), 9)
        fine_offsets[centred], fine_peaks[centred] = (dy - 4, dx - 4), float(fine.max())
        if centred:
            shift = volume[0, -2:, 0, 0] * 4  # the global shift in 16 px cells, given to the read-out
            assert shift.tolist() == [0.0, 2.0]  # 32 px: the nearest whole coarse cell to 28
    assert fine_offsets[True] == (0, -1)  # 28 = 32 - 4 px
    assert fine_peaks[True] > 0.9 and fine_peaks[False] < 0.5 * fine_peaks[True]
    with pytest.raises(ConfigError, match="motion_centred"):
        LaPoseConfig.from_dict({"model": {"motion_centred": True}})


def test_motion_flow_reads_the_shift_below_a_cell():
    """motion_flow: each level's flow (best offset, parabola-refined, plus the global shift) gives
    the image's shift, beyond the fine level's reach too: the 4 px level to a quarter of its cell
    (1 px), the 8 px level to 3 px."""
    from lapose_core.model.latent_action import MotionEncoder, patch_descriptors

    g = torch.Generator().manual_seed(1)
    scene = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 40, generator=g), scale_factor=8,
                                            mode="bilinear")  # texture a few pixels wide, as in a road scene
    cfg = LaPoseConfig.from_dict({"model": {"motion_features": "correlation", "motion_centred": True,
                                            "motion_flow": True}})
    encoder = MotionEncoder(cfg.model)
    per_level = 81 + 2
    for shift_px in (-10, 6, 28, 29, 30, 31):
        a = scene[..., 0:96, max(shift_px, 0):max(shift_px, 0) + 256]  # a(y, x) = b(y, x + shift)
        b = scene[..., 0:96, max(-shift_px, 0):max(-shift_px, 0) + 256]
        volume = encoder.correlations(patch_descriptors(a), patch_descriptors(b))
        assert volume.shape[1] == 3 * per_level + 2
        # 4 and 8 px cells (flow in 4 px cells / radius 4); the 16 px level finds the global shift
        for level, tolerance in ((0, 0.25), (1, 0.75)):
            flow = volume[0, level * per_level + 81:(level + 1) * per_level, 4:-4, 9:-9] * 4
            dy, dx = flow.flatten(1).median(1).values.tolist()
            assert dx == pytest.approx(shift_px / 4, abs=tolerance), (shift_px, level)
            assert dy == pytest.approx(0, abs=tolerance)
    with pytest.raises(ConfigError, match="motion_flow"):
        LaPoseConfig.from_dict({"model": {"motion_flow": True}})


@pytest.mark.parametrize("fit", ["median", "focus"])
@pytest.mark.parametrize("yaw_deg, pitch_deg", [(6.0, 1.0), (-15.0, 0.0), (2.0, 0.0)])
def test_rotation_from_flow_reads_a_rotated_camera(shared_data, yaw_deg, pitch_deg, fit):
    """rotation_from_flow: a real frame and the same view from a camera turned by R (the exact
    rotation homography K R K^-1) give R's yaw and pitch to 0.15 degrees + 2%, a standing pair
    under 0.02 degrees, and the pair played backwards the opposite turn. (Below a pixel, about 0.6 degrees
    here, the 4 px cells' sub-cell peaks lock towards whole cells: 0.5 degrees reads 0.2-0.3.)"""
    from lapose_core.data.augment import camera_matrix, rotation_matrices, warp_frames
    from lapose_core.data.sources import KittiSequence
    from lapose_core.data.transforms import fit_to_model, to_tensor

    cfg = LaPoseConfig.from_dict({"model": {"motion_features": "correlation", "motion_centred": True,
                                            "rotation_from_flow": True}})
    m = cfg.model
    seq = KittiSequence(shared_data / "kitti" / "00_head")
    image, K = fit_to_model(seq.read(40), seq.intrinsics, (m.image_height, m.image_width))
    K[2:] = [(m.image_width - 1) / 2, (m.image_height - 1) / 2]  # the model's centred camera
    rotvec = torch.tensor([math.radians(pitch_deg), math.radians(yaw_deg), 0.0], dtype=torch.float64)
    Km = camera_matrix(K)
    a = to_tensor(image)[None]
    b = warp_frames(a, (Km @ rotation_matrices(rotvec) @ torch.linalg.inv(Km))[None].float())
    fov = torch.tensor(geometry.horizontal_fov(K[0], m.image_width))
    model = LaPose(m).eval()
    maps = model.motion_maps(torch.stack([a, b, a], 1))
    read_rotation = geometry.rotation_from_flow_and_focus if fit == "focus" else geometry.rotation_from_flow
    with torch.no_grad():
        _, pixel_flow = model.motion(maps)  # (dy, dx) and whether each match is mutual
        read = torch.rad2deg(read_rotation(pixel_flow[0, :, :2], fov))
        standing = read_rotation(model.motion(maps[:, [0, 0]])[1][0, :, :2], fov)
    for row, sign in ((0, 1), (1, -1)):  # forwards, backwards
        for got, true in zip(read[row, :2].tolist(), (pitch_deg, yaw_deg)):
            assert abs(got - sign * true) <= 0.15 + 0.02 * abs(true), (row, got, true)
    assert torch.all(read[:, 2] == 0) and standing.abs().max() < math.radians(0.02)
    with pytest.raises(ConfigError, match="rotation_from_flow"):
        LaPoseConfig.from_dict({"model": {"rotation_from_flow": True}})


def exact_drive_flow(fov, pitch_deg, yaw_deg, t, depth_m, seed, h=24, w=64, cell=4, roll_deg=0.0,
                     principal_point=(0.0, 0.0)):
    """The exact (2, h, w) flow (dy, dx) of 4 px cells of a camera of horizontal field of view ``fov``
    that turns by the rotation vector (pitch, yaw, roll) while it moves by ``t`` (its own frame, metres)
    in front of points depth_m to 1.3 depth_m away (random per cell). ``principal_point``: where its
    optical axis meets the image, pixels (x, y) from the image centre."""
    f = (w * cell / 2) / math.tan(fov / 2)
    ys = (torch.arange(h, dtype=torch.float64) - (h - 1) / 2) * cell - principal_point[1]
    xs = (torch.arange(w, dtype=torch.float64) - (w - 1) / 2) * cell - principal_point[0]
    x, y = torch.broadcast_tensors(xs[None, :], ys[:, None])  # from the principal point
    g = torch.Generator().manual_seed(seed)
    depth = depth_m * (1 + 0.3 * torch.rand(h, w, generator=g, dtype=torch.float64))
    points = torch.stack([x * depth / f, y * depth / f, depth], -1)  # earlier camera's frame
    rotvec = torch.tensor([math.radians(pitch_deg), math.radians(yaw_deg), math.radians(roll_deg)],
                          dtype=torch.float64)
    R = geometry.quaternion_to_matrix(geometry.rotvec_to_quaternion(rotvec))
    later = (points - torch.tensor(t, dtype=torch.float64)) @ R  # the later camera: X' = R^T (X - t)
    to = f * later[..., :2] / later[..., 2:]
    return torch.stack([to[..., 1] - y, to[..., 0] - x])


def test_focus_fit_does_not_read_the_drive_as_a_turn():
    """rotation_fit focus: the exact flow of a camera that turns while it drives 1 m forwards between
    walls 5-6.5 m away, its direction of travel 8.5 degrees off its optical axis. The median reads
    part of that translation as yaw (0.5-1.8 degrees off); the focus-of-expansion fit reads the turn
    to 0.1 degrees."""
    fov = torch.tensor(math.radians(70.0))
    for yaw_deg, pitch_deg in ((3.0, 0.5), (-1.0, 0.0), (0.0, 0.0)):
        flow = exact_drive_flow(fov, pitch_deg, yaw_deg, (0.15, 0.0, 1.0), depth_m=5.0, seed=0)
        truth = torch.tensor([pitch_deg, yaw_deg], dtype=torch.float64)
        median = torch.rad2deg(geometry.rotation_from_flow(flow, fov))[:2]
        focus = torch.rad2deg(geometry.rotation_from_flow_and_focus(flow, fov))[:2]
        assert (focus - truth).abs().max() < 0.1, (yaw_deg, focus)
        assert (median - truth).abs().max() > 0.5, (yaw_deg, median)  # what the fit is for
    with pytest.raises(ConfigError, match="rotation_fit"):
        LaPoseConfig.from_dict({"model": {"rotation_fit": "focus"}})


def test_focus_fit_reads_the_roll():
    """rotation_fit focus_roll: the exact flow of a camera that turns and rolls while it drives. The
    roll's flow crosses the lines from the focus, which the pitch-and-yaw fit can only explain with
    the wrong turn (0.5-3 degrees off); read with the roll, every angle is within 0.05 degrees."""
    fov = torch.tensor(math.radians(70.0))
    for pitch_deg, yaw_deg, roll_deg in ((0.5, 3.0, 0.4), (-0.3, 6.0, 0.2), (0.3, 2.0, 1.0), (0.0, 0.0, 0.0)):
        flow = exact_drive_flow(fov, pitch_deg, yaw_deg, (0.15, 0.0, 1.0), depth_m=5.0, seed=0, roll_deg=roll_deg)
        truth = torch.tensor([pitch_deg, yaw_deg, roll_deg], dtype=torch.float64)
        read = torch.rad2deg(geometry.rotation_from_flow_and_focus(flow, fov, roll=True))
        assert (read - truth).abs().max() < 0.05, ((pitch_deg, yaw_deg, roll_deg), read)
        if roll_deg:
            without = torch.rad2deg(geometry.rotation_from_flow_and_focus(flow, fov))
            assert without[2] == 0 and (without - truth)[:2].abs().max() > 0.4, without
    # The model passes the roll through unconverted: a roll looks the same at every field of view.
    reading = torch.tensor([0.01, 0.02, 0.005])
    seen = geometry.rotation_at_fov(reading, torch.tensor(math.radians(50.0)), geometry.FLOW_READING_FOV)
    assert seen[2] == reading[2] and seen[1] < reading[1]


def test_rotation_given_focus_reads_the_turn_about_the_direction_of_travel():
    """rotation_fit head_focus: with the direction of travel given, the exact flow of a camera that
    turns while it drives 17 degrees off its optical axis (a sharp turn), a tenth of its cells
    matched onto something else (a passing car), is read to 0.03 degrees from a start a degree off.
    The same flow read about the wrong direction (straight ahead) is a degree off: the direction is
    what the refit rests on. Without a forward direction (standing, reversing) the start stands."""
    fov = torch.tensor(math.radians(70.0))
    t = (0.3, 0.02, 1.0)
    for pitch_deg, yaw_deg in ((0.5, 3.0), (-0.3, -6.0), (0.0, 0.0)):
        flow = exact_drive_flow(fov, pitch_deg, yaw_deg, t, depth_m=5.0, seed=1).float()
        flow[:, 4:10, 20:36] += torch.tensor([1.5, -6.0])[:, None, None]  # the car's cells
        truth = torch.tensor([pitch_deg, yaw_deg])
        start = torch.deg2rad(truth + torch.tensor([0.5, -1.0]))
        read = torch.rad2deg(geometry.rotation_given_focus(flow, fov, torch.tensor(t), start))
        assert (read - truth).abs().max() < 0.03, ((pitch_deg, yaw_deg), read)
        wrong = torch.rad2deg(geometry.rotation_given_focus(flow, fov, torch.tensor([0.0, 0.0, 1.0]), start))
        assert (wrong - truth).abs().max() > 1.0, wrong
    flows = torch.stack([flow, flow])
    for direction in (torch.zeros(2, 3), torch.tensor([[0.0, 0.0, -1.0], [1.0, 0.0, 0.2]])):
        starts = torch.tensor([[0.01, 0.02], [-0.01, 0.03]])
        assert torch.equal(geometry.rotation_given_focus(flows, fov, direction, starts), starts)


def test_rotation_given_focus_lays_the_flow_out_about_the_principal_point():
    """A camera whose optical axis meets the image 3 px left of and 1 px above its centre (KITTI's
    lies about there at the model's input), turning while it drives: read about its principal point
    the turn comes out to 0.03 degrees; taken for a centred camera the yaw is biased by more than 0.1
    degrees, the bias seen on real drives. Each pair of a batch takes its own principal point."""
    fov = torch.tensor(math.radians(70.0))
    t = torch.tensor([0.1, 0.0, 1.0])
    axis = (-3.0, -1.0)
    truths, flows = [], []
    for pitch_deg, yaw_deg in ((0.5, 3.0), (-0.3, -6.0), (0.0, 0.0)):
        flows.append(exact_drive_flow(fov, pitch_deg, yaw_deg, t.tolist(), depth_m=5.0, seed=2,
                                      principal_point=axis).float())
        truths.append([pitch_deg, yaw_deg])
    flows, truth = torch.stack(flows), torch.tensor(truths)
    start = torch.deg2rad(truth + torch.tensor([0.5, -1.0]))
    read = torch.rad2deg(geometry.rotation_given_focus(flows, fov, t, start,
                                                       principal_point=torch.tensor(axis)))
    assert (read - truth).abs().max() < 0.03, read
    centred = torch.rad2deg(geometry.rotation_given_focus(flows, fov, t, start))
    assert (centred - truth)[:, 1].abs().min() > 0.1, centred
    per_pair = torch.tensor([axis, (0.0, 0.0), axis])
    mixed = torch.rad2deg(geometry.rotation_given_focus(flows, fov, t, start, principal_point=per_pair))
    assert torch.allclose(mixed[[0, 2]], read[[0, 2]]) and torch.allclose(mixed[1], centred[1])


def test_window_height_of_travel_is_read_from_the_flow():
    """travel_height flow: a window of 15 exact pairs of a camera mounted so that the car drives 1.5
    degrees below its optical axis, turning, its principal point off the centre. The head says
    0.5 degrees above (a mount it recalls from training): about that direction the pitches and yaws
    come out up to 0.4 degrees off; with the window's height fitted too, the height is read to 0.01
    degrees and every angle to 0.01. Pairs without a forward direction keep their start and leave
    their direction as it was."""
    fov = torch.tensor(math.radians(70.0))
    g = torch.Generator().manual_seed(0)
    yaw, pitch = torch.linspace(-4.0, 6.0, 15), 0.3 * torch.randn(15, generator=g)
    sideways, height = 0.15 * torch.randn(15, generator=g), math.tan(math.radians(1.5))
    axis = (-3.0, -1.0)
    flows = torch.stack([exact_drive_flow(fov, float(pitch[k]), float(yaw[k]), (float(sideways[k]), height, 1.0),
                                          depth_m=5.0, seed=k, principal_point=axis).float() for k in range(15)])[None]
    truth = torch.stack([pitch, yaw], -1)[None]
    head = torch.stack([sideways, torch.full((15,), math.tan(math.radians(-0.5))), torch.ones(15)], -1)[None]
    start = torch.deg2rad(truth + torch.tensor([0.5, -1.0]))
    pp = torch.tensor(axis)
    rotation, direction = geometry.rotation_and_height_given_heading(flows, fov, head, start, principal_point=pp)
    read_height = torch.rad2deg(torch.atan(direction[..., 1] / direction[..., 2]))
    assert (read_height - 1.5).abs().max() < 0.01, read_height
    assert torch.allclose(direction[..., [0, 2]], head[..., [0, 2]])
    assert (torch.rad2deg(rotation) - truth).abs().max() < 0.01
    about_head = geometry.rotation_given_focus(flows, fov, head, start, principal_point=pp)
    assert (torch.rad2deg(about_head) - truth).abs().max() > 0.3
    standing = head.clone()
    standing[0, 3] = torch.tensor([0.0, 0.0, -1.0])  # a reversing pair
    rotation, direction = geometry.rotation_and_height_given_heading(flows, fov, standing, start, principal_point=pp)
    assert torch.equal(rotation[0, 3], start[0, 3].float()) and torch.equal(direction[0, 3], standing[0, 3])
    assert (torch.rad2deg(rotation[0, 4:]) - truth[0, 4:]).abs().max() < 0.01
    with pytest.raises(ConfigError, match="travel_height"):
        LaPoseConfig.from_dict({"model": {"travel_height": "flow"}})


@pytest.mark.parametrize("fov_deg", [60.0, 80.0])
def test_focus_reading_serves_another_field_of_view(fov_deg):
    """rotation_fit focus fits each pair once, at geometry.FLOW_READING_FOV, before the window
    predicts its field of view; geometry.rotation_at_fov converts the reading. For the exact flow of a
    camera 10 degrees wider or narrower, turning while it drives, the converted reading is within 0.15
    degrees of the turn (the error grows with the difference: 0.2-0.35 at 90 degrees), and the
    model's pose applies exactly that conversion."""
    fov = torch.tensor(math.radians(fov_deg))
    rotvec = torch.tensor([math.radians(-0.4), math.radians(2.5), 0.0], dtype=torch.float64)
    flow = exact_drive_flow(fov, -0.4, 2.5, (0.1, 0.0, 1.0), depth_m=6.0, seed=1).float()
    reading = geometry.rotation_from_flow_and_focus(flow, torch.tensor(geometry.FLOW_READING_FOV))[:2]
    seen = geometry.rotation_at_fov(reading, fov, geometry.FLOW_READING_FOV)
    assert (torch.rad2deg(seen) - torch.rad2deg(rotvec).float()).abs().max() < 0.15, torch.rad2deg(seen)
    assert (torch.rad2deg(reading) - torch.rad2deg(rotvec[:2]).float()).abs().max() > 0.3  # converted

    cfg = LaPoseConfig.from_dict({"model": {"motion_features": "correlation", "rotation_from_flow": True,
                                            "rotation_fit": "focus"}})
    torch.manual_seed(0)
    model = LaPose(cfg.model).eval()
    torch.nn.init.zeros_(model.pose_head.step_mlp.net[-1].weight)  # the head's initial prior only
    frames, ts = clip(cfg, B=1)
    with torch.no_grad():
        actions = model.actions(model.encode_frames(frames, ts), ts, model.motion_maps(frames))
        plain = model.pose(actions, ts)
        readings = reading.expand(1, 15, 2)
        out = model.pose(actions, ts, readings)
    seen = geometry.rotation_at_fov(readings, plain["fov"], geometry.FLOW_READING_FOV)  # (1, 15, 3)
    expected = geometry.quaternion_multiply(geometry.rotvec_to_quaternion(seen), plain["quaternion"])
    assert expected.shape == out["quaternion"].shape == (1, 15, 4)
    assert torch.allclose(out["quaternion"], geometry.canonical_quaternion(expected), atol=1e-6)


def test_head_focus_refits_about_the_heads_direction():
    """rotation_fit head_focus: each pair's reading carries its flow and mutual matches. At inference
    the window's pitch and yaw are refitted (geometry.rotation_given_focus) about the direction of
    travel the head predicts, at the field of view it predicts, from the focus fit's reading, and the
    head's residual is left out (roll 0). In training it is the focus fit with the residual, the loss
    unchanged. refit_roll refits the roll too; refit_matches mutual reads only the mutual cells."""
    cfg = LaPoseConfig.from_dict({"model": {"motion_features": "correlation", "rotation_from_flow": True,
                                            "rotation_fit": "head_focus", "translation_frame": "half_turn"}})
    torch.manual_seed(0)
    model = LaPose(cfg.model).eval()
    frames, ts = clip(cfg, B=1)
    fov = torch.tensor(math.radians(70.0))
    flows = torch.stack([exact_drive_flow(fov, 0.2 * k - 1.0, 0.5 * k - 3.0, (0.1, 0.0, 1.0), depth_m=5.0,
                                          seed=k) for k in range(15)]).float()[None]  # (1, 15, 2, h, w)
    mutual = torch.ones_like(flows[:, :, :1])
    mutual[..., 20:, :] = 0  # the bottom rows: gone from view, matched onto something else
    flows[..., 20:, :] += torch.tensor([-3.0, 5.0])[:, None, None]
    with torch.no_grad():
        readings = model.flow_reading(torch.cat([flows, mutual], 2))
        assert readings.shape == (1, 15, 2 + 3 * flows[0, 0, 0].numel())
        actions = model.actions(model.encode_frames(frames, ts), ts, model.motion_maps(frames))
        out = model.pose(actions, ts, readings)
        trained = model.train().pose(actions, ts, readings)
    start = geometry.rotation_at_fov(readings[..., :2], out["fov"], geometry.FLOW_READING_FOV)[..., :2]
    refit = geometry.rotation_given_focus(flows, out["fov"], out["translation"], start)
    expected = geometry.rotvec_to_quaternion(torch.cat([refit, torch.zeros_like(refit[..., :1])], -1))
    assert torch.allclose(out["quaternion"], geometry.canonical_quaternion(expected), atol=1e-6)
    assert not torch.allclose(refit, start, atol=1e-4)  # the refit moved the reading
    model.cfg.rotation_fit = "focus"
    with torch.no_grad():
        focus = model.pose(actions, ts, readings[..., :2])
    assert all(torch.equal(trained[k], focus[k]) for k in focus)
    assert not torch.allclose(out["quaternion"], focus["quaternion"], atol=1e-4)
    # travel_height flow: the refit also shifts the window's heights; the step keeps its length.
    model.cfg.rotation_fit, model.cfg.travel_height = "head_focus", "flow"
    with torch.no_grad():
        high = model.eval().pose(actions, ts, readings)
    refit, direction = geometry.rotation_and_height_given_heading(flows, out["fov"], out["translation"], start)
    expected = geometry.rotvec_to_quaternion(torch.cat([refit, torch.zeros_like(refit[..., :1])], -1))
    assert torch.allclose(high["quaternion"], geometry.canonical_quaternion(expected), atol=1e-6)
    assert torch.allclose(high["translation"].norm(dim=-1), out["translation"].norm(dim=-1), atol=1e-6)
    assert torch.allclose(torch.nn.functional.normalize(high["translation"], dim=-1),
                          torch.nn.functional.normalize(direction, dim=-1), atol=1e-6)
    assert not torch.allclose(high["translation"], out["translation"], atol=1e-4)
    model.cfg.refit_roll, model.cfg.refit_matches = True, "mutual"
    with torch.no_grad():
        rolled = model.pose(actions, ts, readings)
    refit, _ = geometry.rotation_and_height_given_heading(flows, out["fov"], out["translation"], start,
                                                         roll=True, cells=mutual[:, :, 0])
    assert refit.shape == (1, 15, 3)
    expected = geometry.canonical_quaternion(geometry.rotvec_to_quaternion(refit))
    assert torch.allclose(rolled["quaternion"], expected, atol=1e-6)
    every_cell, _ = geometry.rotation_and_height_given_heading(flows, out["fov"], out["translation"], start, roll=True)
    assert (every_cell - refit).abs().max() > 1e-4  # the cells left out were read before


def test_motion_readings_keep_full_precision_under_autocast():
    """The trainer's bf16 autocast (CUDA) must not round the weight-free motion readings: the
    correlations, each cell's sub-cell flow and the rotation read from it come out exactly as in
    float32 (checked with CPU autocast, which casts the same matrix products; without the guard the
    flow moved by up to a pixel and the focus fit's reading by a grid step)."""
    cfg = LaPoseConfig.from_dict({"model": {"motion_features": "correlation", "motion_flow": True,
                                            "motion_centred": True, "rotation_from_flow": True,
                                            "rotation_fit": "focus"}})
    torch.manual_seed(0)
    model = LaPose(cfg.model).eval()
    frames, _ = clip(cfg, B=1)
    frames = frames.clone()
    frames[:, 1:] = torch.roll(frames[:, :1], shifts=(1, 3), dims=(-2, -1))  # a real shift to read
    with torch.no_grad():
        flow = model.motion(model.motion_maps(frames))[1]
        reading = model.window_motion(frames)[1]  # the focus fit of each pair's flow
        with torch.autocast("cpu", dtype=torch.bfloat16):
            flow_bf16 = model.motion(model.motion_maps(frames))[1]
            reading_bf16 = model.window_motion(frames)[1]
    assert flow.abs().max() > 1.0 and reading.shape == (1, 15, 2)
    assert flow_bf16.dtype == torch.float32 and torch.equal(flow, flow_bf16)
    assert torch.equal(reading, reading_bf16)


def poses_of_a_right_turn(model: dict, fresh_head: bool = False):
    """A window whose flow shows the camera turning right (the image moves 8 px left), through
    ``pose`` with and without that flow (rotation_from_flow median): (out, plain, the flow's
    rotation). ``fresh_head``: the head's last layer zeroed, so it gives its initial prior only."""
    cfg = LaPoseConfig.from_dict({"model": {"motion_features": "correlation", "rotation_from_flow": True,
                                            **model}})
    torch.manual_seed(0)
    net = LaPose(cfg.model).eval()
    if fresh_head:
        torch.nn.init.zeros_(net.pose_head.step_mlp.net[-1].weight)
    frames, ts = clip(cfg, B=1)
    pixel_flow = torch.zeros(1, 15, 2, 24, 64)
    pixel_flow[:, :, 1] = -8.0
    with torch.no_grad():
        actions = net.window_actions(frames, ts)
        out, plain = net.pose(actions, ts, pixel_flow), net.pose(actions, ts)
    return out, plain, geometry.rotation_from_flow(pixel_flow, plain["fov"])


def test_rotation_residual_starts_at_the_flow_rotation():
    """The head's rotation composes onto the flow's: a fresh head (identity rotation) predicts
    exactly the rotation the flow shows."""
    out, plain, seen = poses_of_a_right_turn({}, fresh_head=True)
    assert torch.allclose(plain["quaternion"], torch.tensor([1.0, 0, 0, 0]).expand(1, 15, 4))
    assert torch.allclose(geometry.quaternion_to_rotvec(out["quaternion"]), seen, atol=1e-6)
    assert bool((seen[..., 1] > 0).all())
    assert torch.equal(out["translation"], plain["translation"])  # only the rotation changes


def test_half_turn_frame_turns_the_step_onto_the_chord():
    """translation_frame half_turn: the head's step is turned by half the flow's rotation, so a
    head that predicts straight ahead gives a step along the chord of the turn the flow shows."""
    out, plain, seen = poses_of_a_right_turn({"translation_frame": "half_turn"})
    half = geometry.quaternion_to_matrix(geometry.rotvec_to_quaternion(seen / 2))
    assert torch.allclose(out["translation"], (half @ plain["translation"][..., None])[..., 0], atol=1e-6)
    heading = lambda t: torch.atan2(t[..., 0], t[..., 2])  # noqa: E731 - yaw of a step, right positive
    assert torch.allclose(heading(out["translation"]) - heading(plain["translation"]), seen[..., 1] / 2, atol=1e-5)
    assert torch.allclose(out["translation"].norm(dim=-1), plain["translation"].norm(dim=-1), atol=1e-6)
    with pytest.raises(ConfigError, match="translation_frame"):
        LaPoseConfig.from_dict({"model": {"translation_frame": "half_turn"}})


def test_without_appearance_tokens_only_motion_counts():
    """appearance_tokens false: frames of other content give the same frame tokens, so the actions
    come from the motion tokens alone (a standing window's differ from a moving one's)."""
    cfg = LaPoseConfig.from_dict({"model": {"motion_features": "correlation", "appearance_tokens": False}})
    torch.manual_seed(0)
    model = LaPose(cfg.model).eval()
    frames, ts = clip(cfg, B=2)
    with torch.no_grad():
        tokens = model.encode_frames(frames, ts)
        assert torch.equal(tokens[0], tokens[1])
        actions = model.window_actions(frames, ts)
        standing = model.window_actions(frames[:, :1].expand_as(frames).contiguous(), ts)
    assert not torch.allclose(actions, standing)
    with pytest.raises(ConfigError, match="appearance_tokens"):
        LaPoseConfig.from_dict({"model": {"appearance_tokens": False}})


def test_timestamps_change_actions(tiny):
    cfg, model = tiny
    frames, ts = clip(cfg)
    with torch.no_grad():
        a = model.actions(model.encode_frames(frames, ts), ts)
        b = model.actions(model.encode_frames(frames, ts * 2), ts * 2)
        c = model.actions(model.encode_frames(frames, ts + 100), ts + 100)
    assert not torch.allclose(a, b)  # the frame rate is an input
    assert torch.allclose(a, c, atol=1e-5)  # only time relative to the window counts


def test_time_embedding_at_encoder_is_supported():
    cfg = LaPoseConfig.from_dict({"model": {"time_embedding_at": "encoder"}})
    model = LaPose(cfg.model)
    frames, ts = clip(cfg, B=1)
    assert model.predict(frames, ts)["translation"].shape == (1, 15, 3)


def test_paper_preset_on_meta_device():
    cfg = preset("paper")
    m = cfg.model
    assert (m.image_width, m.image_height, m.patch_size, m.width) == (960, 448, 64, 1536)
    assert m.grid == (7, 15) and m.encoder_layers == 12 and m.num_frames == 16 and m.action_dim == 50
    with torch.device("meta"):
        model = LaPose(m)
    counts = {n: sum(p.numel() for p in c.parameters()) for n, c in model.named_children()}
    # A 12-layer width-1536 encoder holds 12 * ~28.3M parameters.
    assert 330e6 < counts["encoder"] < 380e6
    assert 1.2e9 < sum(counts.values()) < 1.7e9
    assert all(p.is_meta for p in model.parameters())


def test_config_rejects_unknown_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: tiny\nmodel:\n  widht: 64\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*unknown key 'widht'"):
        LaPoseConfig.from_yaml(bad)
    with pytest.raises(ConfigError, match="unknown top-level"):
        LaPoseConfig.from_dict({"modle": {}})
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        LaPoseConfig.from_dict({"model": {"image_height": 100}})


def random_poses(T=16, seed=0, step=1.3):
    g = torch.Generator().manual_seed(seed)
    poses = [torch.eye(4, dtype=torch.float64)]
    for _ in range(T - 1):
        q = geometry.canonical_quaternion(torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)
                                          + 0.05 * torch.randn(4, generator=g, dtype=torch.float64))
        rel = torch.eye(4, dtype=torch.float64)
        rel[:3, :3] = geometry.quaternion_to_matrix(q)
        rel[:3, 3] = torch.tensor([0.0, 0.0, step]) + 0.2 * torch.randn(3, generator=g, dtype=torch.float64)
        poses.append(poses[-1] @ rel)
    return torch.stack(poses)


@pytest.mark.parametrize("floor", [1.0, 0.0])
@pytest.mark.parametrize("step", [0.05, 0.8, 1.3, 3.0])
def test_targets_round_trip(step, floor):
    """pose_targets then poses_from_prediction gives back the trajectory (any speed, either floor)."""
    poses = random_poses(step=step)[None]
    fov = torch.tensor([1.2], dtype=torch.float64)
    tgt = geometry.pose_targets(poses, fov, floor)
    s = tgt["scale"]
    steps = (geometry.relative_poses(poses)[..., :3, 3]).norm(dim=-1)
    assert torch.allclose(s, steps.mean(-1))
    # Translation divided by s, floored at 1 m (the paper): slow windows keep metres, fast ones are
    # normalised. Without the floor every window is normalised.
    if s.item() >= floor:
        assert torch.allclose(tgt["translation"].norm(dim=-1).mean(), torch.tensor(1.0, dtype=torch.float64))
    else:
        assert torch.allclose(tgt["translation"].norm(dim=-1), steps)
    assert (tgt["quaternion"][..., 0] >= 0).all()
    rel = geometry.poses_from_prediction(tgt["translation"], tgt["quaternion"], s, floor)
    back = geometry.compose_relative(rel)
    assert torch.allclose(back, torch.linalg.inv(poses[:, :1]) @ poses, atol=1e-9)


def test_step_direction_loss_measures_degrees_of_moving_steps():
    """train.w_direction's term: the angle between predicted and true steps in degrees, standing
    steps left out, with a finite gradient where prediction and truth agree."""
    from lapose_core.model.lapose import step_direction_error_deg

    a = math.radians(2.0)
    true = torch.tensor([[[math.sin(a), 0.0, math.cos(a)], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    pred = torch.tensor([[[0.0, 0.0, 1.3], [0.5, 0.0, 0.5], [0.0, 0.0, 0.7]]], requires_grad=True)
    err = step_direction_error_deg(pred, true)
    assert err.item() == pytest.approx(1.0, abs=1e-4)  # (2 + 0) / 2: the standing step is left out
    err.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad[0, 1].abs().sum() == 0
    assert step_direction_error_deg(pred, torch.zeros_like(true)).item() == 0.0


def test_quaternion_conventions():
    g = torch.Generator().manual_seed(1)
    q = geometry.canonical_quaternion(torch.randn(500, 4, generator=g, dtype=torch.float64))
    R = geometry.quaternion_to_matrix(q)
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(500, 3, 3), atol=1e-12)
    assert torch.allclose(geometry.matrix_to_quaternion(R), q, atol=1e-9)
    assert torch.allclose(geometry.quaternion_to_matrix(-q), R)  # q and -q: one rotation
    # Cross-check against transforms3d (w, x, y, z convention too).
    import transforms3d

    for qi, Ri in zip(q[:20], R[:20]):
        assert torch.allclose(torch.as_tensor(transforms3d.quaternions.quat2mat(qi.numpy())), Ri, atol=1e-12)
    # A 90 degree yaw about the camera's y axis (down): a right turn of a forward-looking camera.
    R90 = torch.tensor([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]], dtype=torch.float64)
    q90 = geometry.matrix_to_quaternion(R90)
    assert torch.allclose(q90, torch.tensor([math.cos(math.pi / 4), 0, math.sin(math.pi / 4), 0],
                                            dtype=torch.float64), atol=1e-12)


def test_fov_from_intrinsics():
    assert geometry.horizontal_fov(360.77, 621) == pytest.approx(2 * math.atan(621 / 721.54))
    assert geometry.horizontal_fov(500.0, 1000) == pytest.approx(math.pi / 2)


def test_vqvae_dead_code_restart():
    cfg = preset("tiny").model
    vq = VQVAE(cfg).train()
    frames = torch.rand(4, 3, cfg.image_height, cfg.image_width)
    vq.quantizer.usage.zero_()  # every code looks dead
    vq.loss(frames)
    n = vq.quantizer.restart_dead_codes()
    assert n > 0 and (vq.quantizer.usage >= 0.03).sum() >= n


def test_frozen_vqvae_stays_in_eval_mode_when_the_trainer_calls_train():
    """The trainer calls model.train(); the frozen tokenizer's EMA codebook must not move."""
    model = LaPose(preset("tiny").model)
    model.set_stage("pretrain")
    model.train()
    assert model.training and model.encoder.training and not model.vqvae.training
    model.set_stage("vqvae")
    model.train()
    assert model.vqvae.training


@pytest.mark.parametrize("stage, share", [("pretrain", 0.6), ("posttrain", 0.8)])
def test_recomputed_activations_give_the_same_step_in_less_memory(stage, share):
    """train.recompute_activations: the same loss and gradients, with fewer bytes kept for the
    backward pass (what ran the paper preset's pretraining out of a 141 GB GPU). At the tiny size the
    motion read-out, outside the transformer stacks, keeps much of what post-training keeps."""
    from lapose_core.bench_train import synthetic_batch

    cfg = LaPoseConfig.from_dict({"model": {"motion_features": "correlation"}})
    torch.manual_seed(0)
    model = LaPose(cfg.model)
    model.set_stage(stage, freeze_idm=False)
    batch = synthetic_batch(cfg, 2, torch.device("cpu"))

    def step(recompute):
        model.recompute_activations(recompute)
        model.zero_grad(set_to_none=True)
        kept = []

        def pack(t):
            kept.append(t.numel() * t.element_size())
            return t

        torch.manual_seed(1)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, _ = model(batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), grads, sum(kept)

    loss, grads, kept = step(False)
    loss_r, grads_r, kept_r = step(True)
    assert torch.allclose(loss, loss_r, rtol=1e-5, atol=1e-6)
    assert grads.keys() == grads_r.keys() and len(grads) > 10
    for name in grads:
        assert torch.allclose(grads[name], grads_r[name], rtol=1e-4, atol=1e-6), name
    assert kept_r < share * kept, (kept_r, kept)


def test_refit_reads_the_roll_about_the_direction_of_travel():
    """refit_roll: the exact flow of a camera that turns and rolls while it drives, its principal
    point off the centre. With the direction of travel given, pitch, yaw and roll are read to 0.02
    degrees from a start a degree off; the pitch-and-yaw refit cannot say the roll (0) and gives the
    turn less exactly. A window of such pairs, the head 2 degrees off in height, gives its height and
    every angle, roll included, to 0.02 degrees."""
    fov = torch.tensor(math.radians(70.0))
    t, axis = (0.15, 0.02, 1.0), (-3.0, -1.0)
    for pitch_deg, yaw_deg, roll_deg in ((0.5, 3.0, 0.4), (-0.3, -6.0, -0.3), (0.2, 1.0, 1.0)):
        flow = exact_drive_flow(fov, pitch_deg, yaw_deg, t, depth_m=5.0, seed=3, roll_deg=roll_deg,
                                principal_point=axis).float()
        truth = torch.tensor([pitch_deg, yaw_deg, roll_deg])
        start = torch.deg2rad(truth[:2] + torch.tensor([0.5, -1.0]))
        read = torch.rad2deg(geometry.rotation_given_focus(flow, fov, torch.tensor(t), start,
                                                           principal_point=torch.tensor(axis), roll=True))
        assert (read - truth).abs().max() < 0.02, ((pitch_deg, yaw_deg, roll_deg), read)
        without = torch.rad2deg(geometry.rotation_given_focus(flow, fov, torch.tensor(t), start,
                                                              principal_point=torch.tensor(axis)))
        assert (without - truth[:2]).abs().max() > (read - truth)[:2].abs().max()
    g = torch.Generator().manual_seed(1)
    yaw, pitch, roll = torch.linspace(-4.0, 6.0, 15), 0.3 * torch.randn(15, generator=g), 0.4 * torch.randn(15, generator=g)
    sideways, height = 0.15 * torch.randn(15, generator=g), math.tan(math.radians(1.5))
    flows = torch.stack([exact_drive_flow(fov, float(pitch[k]), float(yaw[k]), (float(sideways[k]), height, 1.0),
                                          depth_m=5.0, seed=k, roll_deg=float(roll[k]), principal_point=axis).float()
                         for k in range(15)])[None]
    truth = torch.stack([pitch, yaw, roll], -1)[None]
    head = torch.stack([sideways, torch.full((15,), math.tan(math.radians(-0.5))), torch.ones(15)], -1)[None]
    start = torch.deg2rad(truth[..., :2] + torch.tensor([0.5, -1.0]))
    rotation, direction = geometry.rotation_and_height_given_heading(flows, fov, head, start, roll=True,
                                                                     principal_point=torch.tensor(axis))
    assert rotation.shape == (1, 15, 3) and (torch.rad2deg(rotation) - truth).abs().max() < 0.02
    assert (torch.rad2deg(torch.atan(direction[..., 1] / direction[..., 2])) - 1.5).abs().max() < 0.02
    with pytest.raises(ConfigError, match="refit_roll"):
        LaPoseConfig.from_dict({"model": {"refit_roll": True}})


def test_refit_reads_only_the_cells_it_is_given():
    """refit_matches: the exact flow of a turning, driving camera whose bottom third matched onto
    something else, 2 px to the side (under the outlier cut, so nothing else leaves it out). Read
    from every cell the turn comes out more than 0.1 degrees off; with those cells left out, to
    0.01."""
    fov = torch.tensor(math.radians(70.0))
    t = torch.tensor([0.1, 0.0, 1.0])
    flow = exact_drive_flow(fov, 0.3, 2.0, t.tolist(), depth_m=5.0, seed=4).float()
    flow[:, 16:, :] += torch.tensor([0.0, 2.0])[:, None, None]
    cells = torch.ones(24, 64)
    cells[16:] = 0
    start = torch.deg2rad(torch.tensor([0.8, 1.0]))
    truth = torch.tensor([0.3, 2.0])
    read = torch.rad2deg(geometry.rotation_given_focus(flow, fov, t, start, cells=cells))
    every = torch.rad2deg(geometry.rotation_given_focus(flow, fov, t, start))
    assert (read - truth).abs().max() < 0.01, read
    assert (every - truth).abs().max() > 0.1, every
    with pytest.raises(ConfigError, match="refit_matches"):
        LaPoseConfig.from_dict({"model": {"refit_matches": "mutual"}})
    with pytest.raises(ConfigError, match="refit_matches"):
        LaPoseConfig.from_dict({"model": {"rotation_from_flow": True, "motion_features": "correlation",
                                          "rotation_fit": "head_focus", "refit_matches": "some"}})


def test_solve_normal_matches_a_linear_solve():
    """The refits' closed-form 2x2 and 3x3 solves (no LAPACK in a compiled engine) agree with
    torch.linalg.solve, on systems whose scales differ as a turn's and a roll's do, and give no
    step for a flow without texture (all-zero system)."""
    g = torch.Generator().manual_seed(0)
    for K in (2, 3):
        J = torch.randn(8, K, 200, generator=g) * torch.tensor([300.0, 500.0, 40.0][:K])[:, None]
        A, b = J @ J.transpose(1, 2), torch.randn(8, K, generator=g) * 1e4
        expected = torch.linalg.solve(A.double(), b.double())
        assert torch.allclose(geometry._solve_normal(A, b).double(), expected, rtol=1e-3, atol=1e-9)
        assert torch.equal(geometry._solve_normal(torch.zeros(1, K, K), torch.zeros(1, K)), torch.zeros(1, K))


def test_mutual_matches_leave_out_what_left_the_view(shared_data):
    """mutual_matches on a real frame and the same view 8 px lower and 16 px to the right (a crop of
    a larger frame): the cells whose content is still in view match back, the two rows whose
    content left the view mostly do not (each still has a best match inside, something else). A
    frame against itself matches back wherever it has texture."""
    from lapose_core.data.sources import KittiSequence
    from lapose_core.data.transforms import fit_to_model, to_tensor
    from lapose_core.model.latent_action import local_correlation, mutual_matches, patch_descriptors

    image, _ = fit_to_model(KittiSequence(shared_data / "kitti" / "00_head").read(40), None, (120, 320))
    big = to_tensor(image)[None]
    a, b = big[..., 8:104, 16:272], big[..., 16:112, 32:288]  # a's content at (y, x) is b's at (y - 8, x - 16)
    mutual = mutual_matches(local_correlation(patch_descriptors(a), patch_descriptors(b), 4), 4)[0]
    still = mutual[2:, 4:].float().mean()
    gone = mutual[:2].float().mean()
    assert still > 0.9 and gone < 0.5, (still, gone)
    same = mutual_matches(local_correlation(patch_descriptors(a), patch_descriptors(a), 4), 4)[0]
    assert same.float().mean() > 0.95  # all but cells without texture, which match nothing better


@pytest.mark.parametrize("yaw_deg", [28.0, -28.0])
def test_wide_shift_reads_a_turn_past_the_search_edge(shared_data, yaw_deg):
    """wide_shift: a real frame and the same view from a camera turned 28 degrees (the exact rotation
    homography; about 100 px at the model's input, past the 16 px level's +-64) is read as that turn
    once the pair is searched again wider; without it the turn is lost (the 16 px level's best
    offset is then nowhere near it). A pair within reach (6 degrees) gives the same flow bit for
    bit either way, and the switch needs centred correlations."""
    from lapose_core.data.augment import camera_matrix, rotation_matrices, warp_frames
    from lapose_core.data.sources import KittiSequence
    from lapose_core.data.transforms import fit_to_model, to_tensor

    seq = KittiSequence(shared_data / "kitti" / "00_head")
    settings = {"motion_features": "correlation", "motion_centred": True, "rotation_from_flow": True}
    m = LaPoseConfig.from_dict({"model": settings}).model
    image, K = fit_to_model(seq.read(40), seq.intrinsics, (m.image_height, m.image_width))
    K[2:] = [(m.image_width - 1) / 2, (m.image_height - 1) / 2]  # the model's centred camera
    Km, a = camera_matrix(K), to_tensor(image)[None]
    fov = torch.tensor(geometry.horizontal_fov(K[0], m.image_width))

    def read(turn_deg: float, wide: bool) -> tuple[torch.Tensor, float]:
        R = rotation_matrices(torch.tensor([0.0, math.radians(turn_deg), 0.0], dtype=torch.float64))
        b = warp_frames(a, (Km @ R @ torch.linalg.inv(Km))[None].float())
        model = LaPose(LaPoseConfig.from_dict({"model": {**settings, "wide_shift": wide}}).model).eval()
        with torch.no_grad():
            _, pixel_flow = model.motion(model.motion_maps(torch.stack([a, b], 1)))
        yaw = torch.rad2deg(geometry.rotation_from_flow_and_focus(pixel_flow[0, :, :2], fov))[0, 1]
        return pixel_flow, float(yaw)

    assert read(yaw_deg, True)[1] == pytest.approx(yaw_deg, abs=0.5)
    assert abs(read(yaw_deg, False)[1] - yaw_deg) > 5
    assert torch.equal(read(6.0, True)[0], read(6.0, False)[0])
    with pytest.raises(ConfigError, match="wide_shift"):
        LaPoseConfig.from_dict({"model": {"motion_features": "correlation", "wide_shift": True}})


def test_shift_scores_match_their_definition():
    """shift_scores against its docstring, written out cell by cell on random unit maps."""
    from lapose_core.model.latent_action import shift_scores

    g = torch.Generator().manual_seed(0)
    h, w, reach, radius = 5, 9, 3, 1
    a, b = (torch.nn.functional.normalize(torch.randn(2, 4, h, w, generator=g), dim=1) for _ in range(2))
    got = shift_scores(a, b, reach, radius)
    cosine = lambda m, y, x, yb, xb: float(a[m, :, y, x] @ b[m, :, yb, xb]) if 0 <= yb < h else 0.0  # noqa: E731
    for m in range(2):
        score = [0.0] * (2 * reach + 1)
        for y in range(h):
            for x in range(w):
                peaks = {s: max(cosine(m, y, x, y + dy, x + s + dx) for dy in range(-radius, radius + 1)
                                for dx in range(-radius, radius + 1) if 0 <= x + s + dx < w)
                         for s in range(-reach, reach + 1) if 0 <= x + s < w}  # where the cell lands in b
                chance = sorted(peaks.values())[(len(peaks) - 1) // 2]  # the median (the lower middle one)
                for s, peak in peaks.items():
                    score[s + reach] += max(peak - chance, 0.0) / (h * w)
        assert got[m].tolist() == pytest.approx(score, abs=1e-5)


def test_fine_flow_refines_the_refits_flow_below_a_pixel(shared_data):
    """fine_flow: a real frame and the same view zoomed 8 % about its centre (an exact warp: the flow
    of driving towards a wall), read by the 4 px level and refined. Over the cells with mutual
    matches and at least 3 px of flow, the 4 px level's flow is off by 1.8 px (median), the refined
    one by under 0.6. The flow the head's inputs rest on is the same with the switch as without
    it, and a frame caches its grey pixels only with it."""
    from lapose_core.data.augment import warp_frames
    from lapose_core.data.sources import KittiSequence
    from lapose_core.data.transforms import fit_to_model, to_tensor

    settings = {"motion_features": "correlation", "motion_centred": True, "rotation_from_flow": True,
                "rotation_fit": "head_focus", "refit_matches": "mutual"}
    m = LaPoseConfig.from_dict({"model": settings}).model
    seq = KittiSequence(shared_data / "kitti" / "00_head")
    image, _ = fit_to_model(seq.read(40), seq.intrinsics, (m.image_height, m.image_width))
    a = to_tensor(image)[None]
    H, W, s = m.image_height, m.image_width, 1.08
    zoom = torch.tensor([[1 / s, 0, (W - 1) / 2 * (1 - 1 / s)], [0, 1 / s, (H - 1) / 2 * (1 - 1 / s)], [0, 0, 1]])
    b = warp_frames(a, zoom[None].float())
    ys = (torch.arange(H // 4) - (H // 4 - 1) / 2) * 4
    xs = (torch.arange(W // 4) - (W // 4 - 1) / 2) * 4
    x, y = torch.broadcast_tensors(xs[None], ys[:, None])
    true = torch.stack([(s - 1) * y, (s - 1) * x])

    def read(fine: bool) -> tuple[torch.Tensor, torch.Tensor]:
        model = LaPose(LaPoseConfig.from_dict({"model": {**settings, "fine_flow": fine}}).model).eval()
        with torch.no_grad():
            maps = model.motion_maps(torch.stack([a, b], 1))
            return maps, model.motion(maps)[1][0, 0]

    maps, flow = read(True)
    plain_maps, plain = read(False)
    assert maps.shape[2] == 32 and plain_maps.shape[2] == 16 and flow.shape[0] == 5 and plain.shape[0] == 3
    assert torch.equal(flow[:3], plain)
    cells = (flow[2] > 0) & (true.norm(dim=0) >= 3) & (x.abs() < W / 2 - 12) & (y.abs() < H / 2 - 12)
    assert cells.sum() > 200
    coarse_err = (flow[:2] - true).norm(dim=0)[cells].median()
    fine_err = (flow[3:5] - true).norm(dim=0)[cells].median()
    assert fine_err < 0.6 and coarse_err > 1.2, (fine_err, coarse_err)
    # Trained models read the flow they were trained with: the refinement is inference only.
    model = LaPose(LaPoseConfig.from_dict({"model": {**settings, "fine_flow": True}}).model).train()
    assert model.motion_maps(torch.stack([a, b], 1)).shape[2] == 16
    with pytest.raises(ConfigError, match="fine_flow"):
        LaPoseConfig.from_dict({"model": {"motion_features": "correlation", "rotation_from_flow": True,
                                          "fine_flow": True}})


def box_drive_flows(poses, fov, h=24, w=64, cell=4):
    """The exact (P, 2, h, w) flows (dy, dx) of 4 px cells of a camera of horizontal field of view
    ``fov`` driving through a box (a road 1.65 m below, walls 6 m to either side, a far wall 60 m on),
    ``poses`` its P + 1 (position (3,), rotation (3, 3)) in the box's frame: every point's depth is
    known in every frame, so consecutive pairs triangulate exactly."""
    f = (w * cell / 2) / math.tan(fov / 2)
    ys = (torch.arange(h, dtype=torch.float64) - (h - 1) / 2) * cell
    xs = (torch.arange(w, dtype=torch.float64) - (w - 1) / 2) * cell
    x, y = torch.broadcast_tensors(xs[None, :], ys[:, None])
    rays = torch.stack([x / f, y / f, torch.ones_like(x)], -1).reshape(-1, 3)
    flows = []
    for (at, R), (to, R_to) in zip(poses[:-1], poses[1:]):
        d = rays @ R.T  # the rays in the box's frame, at unit depth
        hits = [(value - at[axis]) / d[:, axis] for axis, value in ((1, 1.65), (0, 6.0), (0, -6.0), (2, 60.0))]
        depth = torch.stack([torch.where(t > 0, t, torch.full_like(t, math.inf)) for t in hits]).min(0).values
        later = (at + depth[:, None] * d - to) @ R_to  # each point in the later camera
        seen = f * later[:, :2] / later[:, 2:]
        flows.append(torch.stack([seen[:, 1] - y.reshape(-1), seen[:, 0] - x.reshape(-1)]).reshape(2, h, w))
    return torch.stack(flows)


def test_step_length_ratios_triangulate_each_step_against_the_last():
    """step_lengths flow: a camera driving 1, 1.2, 0.8, 1.5 and 1.5 m through a box while it turns
    by up to 3 degrees a step, its direction of travel 3 degrees off its axis. Each step's length
    against the one before is read from the exact flows to 1e-4 in log; fitted with the head's
    lengths (all equal here) the steps take the measured lengths' shape, their directions and the
    window's path length kept. Unread ratios (a standing pair) leave the head's lengths."""
    fov = math.radians(70.0)
    lengths = torch.tensor([1.0, 1.2, 0.8, 1.5, 1.5], dtype=torch.float64)
    turns = [(0.002, 0.02), (0.0, -0.03), (-0.003, 0.05), (0.0, 0.0), (0.001, 0.01)]
    heading = torch.tensor([0.05, 0.0, 1.0], dtype=torch.float64)
    heading = heading / heading.norm()
    at, R = torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64)
    poses, rotations = [(at, R)], []
    for length, (pitch, yaw) in zip(lengths, turns):
        rotvec = torch.tensor([pitch, yaw, 0.0], dtype=torch.float64)
        at, R = at + R @ (heading * length), R @ geometry.quaternion_to_matrix(geometry.rotvec_to_quaternion(rotvec))
        poses.append((at, R))
        rotations.append([pitch, yaw])
    flows = box_drive_flows(poses, fov)[None].float()
    directions = (heading[None] * lengths[:, None])[None].float()
    fovs = torch.full((1, 5), fov)
    log_ratios, read = geometry.step_length_ratios(flows, fovs, directions, torch.tensor([rotations]).float())
    assert read.all()
    assert torch.allclose(log_ratios[0], (lengths[1:] / lengths[:-1]).log().float(), atol=1e-4), log_ratios

    head = heading[None].float().expand(5, 3)[None] * 1.2  # the head: five equal steps, 6 m in all
    fitted = geometry.with_step_lengths(head, log_ratios, read)
    assert torch.allclose(fitted / fitted.norm(dim=-1, keepdim=True), head / head.norm(dim=-1, keepdim=True))
    assert fitted.norm(dim=-1).sum() == pytest.approx(6.0, rel=1e-5)
    # The head's lengths weigh a tenth of a ratio: the fit lies near the flow's, a little towards them.
    fitted_ratios = (fitted.norm(dim=-1)[0, 1:] / fitted.norm(dim=-1)[0, :-1]).log()
    true_ratios = (lengths[1:] / lengths[:-1]).log().float()
    assert (fitted_ratios - true_ratios).abs().max() < 0.05, fitted_ratios
    assert fitted_ratios.abs().sum() < true_ratios.abs().sum()
    assert torch.allclose(geometry.with_step_lengths(head, log_ratios, torch.zeros_like(read)), head)

    standing = directions.clone()
    standing[0, 2] = 0.0  # no forward direction: neither ratio through it is read
    _, read = geometry.step_length_ratios(flows, fovs, standing, torch.tensor([rotations]).float())
    assert read.tolist() == [[True, False, False, True]]
    with pytest.raises(ConfigError, match="step_lengths"):
        LaPoseConfig.from_dict({"model": {"step_lengths": "flow"}})


def test_step_length_fit_solves_its_least_squares():
    """with_step_lengths' closed-form tridiagonal solve against a dense linear solve of the same
    least squares, ratios read and unread mixed."""
    g = torch.Generator().manual_seed(0)
    steps = torch.rand(3, 15, 3, generator=g, dtype=torch.float64) + 0.2
    log_ratios = 0.2 * torch.randn(3, 14, generator=g, dtype=torch.float64)
    read = torch.rand(3, 14, generator=g) > 0.3
    fitted = geometry.with_step_lengths(steps, log_ratios, read).norm(dim=-1)
    own, w = steps.norm(dim=-1).log(), geometry._RATIO_WEIGHT * read.double()
    D = torch.zeros(14, 15, dtype=torch.float64)
    D[range(14), range(14)], D[range(14), range(1, 15)] = -1.0, 1.0
    A = torch.eye(15, dtype=torch.float64) + D.T @ (w[..., None] * D)
    x = torch.linalg.solve(A, own + ((w * log_ratios)[..., None, :] * D.T).sum(-1))
    expected = x.exp() * steps.norm(dim=-1).sum(-1, keepdim=True) / x.exp().sum(-1, keepdim=True)
    assert torch.allclose(fitted, expected, rtol=1e-5)
