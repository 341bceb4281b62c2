"""Pose conventions shared by training targets, evaluation and the ROS node.

Poses are 4x4 camera-to-world matrices in the camera's optical frame (x right, y down, z forward),
as KITTI stores them. The relative motion of step k is ``inv(P_k) @ P_{k+1}``: frame k+1 expressed in
frame k. Quaternions are (w, x, y, z) with w >= 0 (the canonical sign; q and -q are one rotation).
The paper's targets: s = mean step length over the window, translation divided by max(s, 1.0),
metric scale predicted as s itself.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

SCALE_FLOOR = 1.0  # translation targets are t / max(s, SCALE_FLOOR)
MIN_SCALE = 1e-3  # log(s) target is clamped here so a standing car does not give -inf
# The field of view a pair's flow is fitted at once (rotation_fit focus), before the window predicts
# its own: the labelled rig's at the tiny input (183.5 px focal length at 256 px wide).
FLOW_READING_FOV = math.radians(70.0)


def full_precision(fn):
    """Run ``fn`` with autocast off, on CUDA and CPU alike: for the weight-free readings of image
    motion, whose pixel positions and small differences bf16's 8-bit mantissa would round away
    (under the trainer's bf16 autocast the focus fit read a 3-degree turn 0.1 degrees off). Tensors
    keep the dtype they come in."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            return fn(*args, **kwargs)
    return wrapper


def relative_poses(poses: torch.Tensor) -> torch.Tensor:
    """(..., T, 4, 4) camera-to-world -> (..., T-1, 4, 4) step motions inv(P_k) @ P_{k+1}."""
    return torch.linalg.inv(poses[..., :-1, :, :]) @ poses[..., 1:, :, :]


def compose_relative(rel: torch.Tensor) -> torch.Tensor:
    """(..., T-1, 4, 4) step motions -> (..., T, 4, 4) poses relative to the first frame."""
    eye = torch.eye(4, dtype=rel.dtype, device=rel.device).expand(*rel.shape[:-3], 1, 4, 4)
    out = [eye[..., 0, :, :]]
    for k in range(rel.shape[-3]):
        out.append(out[-1] @ rel[..., k, :, :])
    return torch.stack(out, dim=-3)


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation -> (..., 4) unit quaternion (w, x, y, z) with w >= 0."""
    m = R
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    # Four candidate formulas; pick the numerically largest denominator per element (Shepperd).
    cand = torch.stack([
        torch.stack([1 + trace, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0],
                     m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                     m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0],
                     1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], m[..., 1, 2] + m[..., 2, 1]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0],
                     m[..., 1, 2] + m[..., 2, 1], 1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1),
    ], -2)
    diag = torch.stack([1 + trace, 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                        1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
                        1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1)
    best = diag.argmax(-1, keepdim=True)
    q = torch.gather(cand, -2, best[..., None].expand(*best.shape[:-1], 1, 4)).squeeze(-2)
    return canonical_quaternion(q)


def canonical_quaternion(q: torch.Tensor) -> torch.Tensor:
    """Normalise and flip the sign so that w >= 0."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_to_rotvec(q: torch.Tensor) -> torch.Tensor:
    """(..., 4) quaternion (w, x, y, z) -> (..., 3) rotation vector (axis * angle, radians)."""
    q = canonical_quaternion(q)
    w, v = q[..., :1], q[..., 1:]
    n = v.norm(dim=-1, keepdim=True)
    # angle / |v| = 2 atan2(|v|, w) / |v|, which tends to 2 / w as |v| -> 0 (no 0/0 in the gradient).
    safe_n = torch.where(n < 1e-6, torch.ones_like(n), n)
    factor = torch.where(n < 1e-6, 2.0 / w.clamp_min(1e-6), 2.0 * torch.atan2(safe_n, w) / safe_n)
    return v * factor


def rotvec_to_quaternion(rotvec: torch.Tensor) -> torch.Tensor:
    """(..., 3) rotation vector (radians) -> (..., 4) unit quaternion (w, x, y, z), w >= 0 for
    angles up to 180 degrees."""
    angle = rotvec.norm(dim=-1, keepdim=True)
    # sin(angle / 2) / angle tends to 1/2 - angle^2 / 48 as angle -> 0 (no 0/0 in the gradient).
    safe = torch.where(angle < 1e-4, torch.ones_like(angle), angle)
    factor = torch.where(angle < 1e-4, 0.5 - angle * angle / 48, torch.sin(safe / 2) / safe)
    return torch.cat([torch.cos(angle / 2), rotvec * factor], -1)


def quaternion_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product of (..., 4) quaternions (w, x, y, z): the rotation of ``b`` then ``a``
    (matrices ``R_a @ R_b``)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz,
                        aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx,
                        aw * bz + ax * by - ay * bx + az * bw], -1)


def _flow_camera(flow: torch.Tensor, fov: torch.Tensor, cell: int):
    """The pinhole camera both flow readings assume, centred on the image: the focal length in
    pixels (fov's shape) and the cells' centres xs (w,), ys (h,) in pixels from the image centre."""
    h, w = flow.shape[-2:]
    f = (w * cell / 2) / torch.tan(fov.float().clamp(0.2, 3.0) / 2)
    ys = (torch.arange(h, device=flow.device, dtype=flow.dtype) - (h - 1) / 2) * cell
    xs = (torch.arange(w, device=flow.device, dtype=flow.dtype) - (w - 1) / 2) * cell
    return f, xs, ys


def _lands_inside(x: torch.Tensor, y: torch.Tensor, h: int, w: int, cell: int) -> torch.Tensor:
    """Whether a cell's match lies inside the later image (one outside matched something else)."""
    return (x.abs() <= w * cell / 2 - cell) & (y.abs() <= h * cell / 2 - cell)


def _cell_rays(flow: torch.Tensor, f: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor,
               cell: int, stride: int = 1):
    """(M, 2, h, w) flow, (M,) focal lengths and the cells' centres (:func:`_flow_camera`) -> every
    ``stride``-th cell's position p (n, 2) x, y from the image centre, whether where it went lies
    inside the later image (M, n) as 0/1, and the ray through where it went (M, n, 3)."""
    h, w = flow.shape[-2:]
    if flow.shape[-3] != 2:
        raise ValueError(f"a flow has 2 channels (dy, dx), got shape {tuple(flow.shape)}")
    p = torch.stack(torch.broadcast_tensors(xs[None, :], ys[:, None]), -1)[::stride, ::stride].reshape(-1, 2)
    q = p + flow[..., ::stride, ::stride].flip(1).flatten(2).transpose(1, 2)  # (M, n, 2)
    inside = _lands_inside(q[..., 0], q[..., 1], h, w, cell).float()
    rays = torch.cat([q, f[:, None, None].expand(-1, q.shape[1], 1)], -1)
    return p, inside, rays


def _about_principal_point(p: torch.Tensor, rays: torch.Tensor, principal_point: torch.Tensor | None,
                           lead: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The cells' positions and rays (:func:`_cell_rays`) laid out from the principal point, (*lead,
    2) x, y pixels from the image centre, instead of from the centre (unchanged when None)."""
    if principal_point is None:
        return p, rays
    axis = principal_point.float().expand(*lead, 2).reshape(-1, 1, 2)
    return p - axis, torch.cat([rays[..., :2] - axis, rays[..., 2:]], -1)


def with_roll(rotation: torch.Tensor) -> torch.Tensor:
    """(..., 2) pitch and yaw, or (..., 3) with the roll -> (..., 3) the rotation vector (roll 0 when
    not given)."""
    if rotation.shape[-1] == 2:
        rotation = torch.cat([rotation, torch.zeros_like(rotation[..., :1])], -1)
    return rotation


def _turn(rotation: torch.Tensor) -> torch.Tensor:
    """(..., 2) pitch and yaw, or (..., 3) with the roll -> (..., 3, 3) their rotation (roll 0 when
    not given)."""
    return quaternion_to_matrix(rotvec_to_quaternion(with_roll(rotation)))


def _derotated_flow(rotation: torch.Tensor, rays: torch.Tensor, f: torch.Tensor,
                    p: torch.Tensor) -> torch.Tensor:
    """(M, K, 2) candidate pitch and yaw [(M, K, 3) with the roll], the cells' rays (M, n, 3) and
    positions (n, 2), or (M, 1, n, 2) -> (M, K, n, 2) each cell's flow in pixels once the candidate
    is undone exactly (a homography), as the model applies it."""
    back = torch.einsum("mkij,mnj->mkni", _turn(rotation), rays)
    return f[:, None, None, None] * back[..., :2] / back[..., 2:].clamp_min(1e-3) - p


def _derotated_rays(rotation: torch.Tensor, rays: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) pitch, yaw [, roll] (K 2 or 3) and the cells' rays (M, n, 3) -> where each ray points
    once the rotation is undone, x and y (M, n) on the image plane at unit focal length."""
    back = torch.einsum("mij,mnj->mni", _turn(rotation), rays)
    z = back[..., 2].clamp_min(1e-3)
    return back[..., 0] / z, back[..., 1] / z


@full_precision
def rotation_from_flow(flow: torch.Tensor, fov: torch.Tensor, cell: int = 4) -> torch.Tensor:
    """(..., 2, h, w) image flow (dy, dx) in pixels of cells ``cell`` px apart, (...) horizontal
    field of view in radians -> (..., 3) rotation vector (pitch, yaw, 0) of the step it shows.

    Each cell's flow is read as a pure rotation of a pinhole camera centred on the image: a yaw
    moves every point's azimuth atan(x / f) by the same angle, and a pitch its elevation atan(y / f),
    exactly, whatever the depth. The median over the cells whose match lies inside the image
    discards what translation adds near the edges of the expanding image and cells without texture.
    """
    h, w = flow.shape[-2:]
    dtype, flow = flow.dtype, flow.float()
    f, xs, ys = _flow_camera(flow, fov, cell)
    f = f[..., None, None]  # (..., 1, 1)
    to_x, to_y = xs + flow[..., 1, :, :], ys[:, None] + flow[..., 0, :, :]
    yaw = torch.atan(xs / f) - torch.atan(to_x / f)
    pitch = torch.atan(to_y / f) - torch.atan(ys[:, None] / f)
    inside = _lands_inside(to_x, to_y, h, w, cell)
    angles = torch.stack([pitch, yaw], -3).masked_fill(~inside[..., None, :, :], float("nan"))
    angles = angles.flatten(-2).nanmedian(-1).values.nan_to_num(0.0)  # (..., 2)
    return with_roll(angles).to(dtype)


def rotation_at_fov(reading: torch.Tensor, fov: torch.Tensor,
                    read_at: float | torch.Tensor) -> torch.Tensor:
    """(..., 2) pitch and yaw [+ roll] read from a flow with the field of view ``read_at`` -> (..., 3)
    rotation vector (pitch, yaw, roll or 0) for the field of view ``fov`` (...). Roll, a turn about
    the optical axis, looks the same at every field of view.

    An angle a seen at focal length f0 is an image shift f0 tan(a); the same shift at focal length f
    is the angle atan(f0 tan(a) / f), and f0 / f = tan(fov / 2) / tan(read_at / 2). Exact for the
    image centre, second order elsewhere: a reading made once per pair serves any later field of
    view."""
    ratio = torch.tan(fov.float() / 2) / math.tan(float(read_at) / 2)
    angles = torch.atan(torch.tan(reading[..., :2].float()) * ratio[..., None])
    roll = reading[..., 2:].float() if reading.shape[-1] == 3 else torch.zeros_like(angles[..., :1])
    return torch.cat([angles, roll], -1).to(reading.dtype)


# The search of :func:`rotation_from_flow_and_focus`, in degrees: a coarse grid around the median
# reading, then a fine one around the best coarse candidate, as (pitch step, half count, yaw step,
# half count). Every third cell in each direction and two reweighting rounds read yaw on 07_head's
# 2 fps pairs about as well as every cell, a 90-candidate grid and three rounds (0.44 against 0.43
# degrees) at 1.8 ms a pair instead of 47 on a 2-core CPU.
_FOCUS_SEARCH = ((0.3, 1, 0.5, 4), (0.1, 1, 0.1, 2))
_FOCUS_CELL_STRIDE = 3
_FOCUS_ROUNDS = 2
# Both focus fits: a cell closer to the focus than this fraction of the image width says little
# about the direction of its line from the focus.
_NEAR_FOCUS = 0.08


@torch.no_grad()
@full_precision
def rotation_from_flow_and_focus(flow: torch.Tensor, fov: torch.Tensor, cell: int = 4,
                                  roll: bool = False) -> torch.Tensor:
    """:func:`rotation_from_flow`, with what the car's own translation adds to the flow taken out.

    Driving forwards, every static point also moves away from the focus of expansion (the image of
    the direction of travel), by an amount that depends on its depth. The median of
    :func:`rotation_from_flow` reads that as rotation wherever the focus is off the image centre or
    the scene is not left-right balanced (on a held-out drive its yaw error correlated at -0.76 with
    the direction of travel). Here each candidate rotation is undone exactly (a homography), the
    focus that best explains the remaining flow as an expansion is fitted (iteratively reweighted
    least squares: each cell's remaining flow should point along the line from the focus; the focus
    kept in the middle half of the image), and the candidate whose remaining flow is most nearly an
    expansion (least flow across those lines or towards the focus) wins: a grid of candidates around
    the median reading, then a finer one around the best, over every third cell. No gradient: the result
    is a fixed reading the pose head's residual builds on. On 07_head's 71 distinct 2 fps pairs (true
    field of view) it reads yaw to 0.44 degrees and pitch to 0.19, the median to 0.61 and 0.26.

    ``roll``: also read the roll about the optical axis (otherwise 0). A small roll moves every point
    by roll x (-y, x) about the image centre, across the lines from the focus, which no expansion
    does: each candidate's roll is the least-squares one that takes that flow out, refitted with
    its focus in every reweighting round. Roll does not depend on the field of view.
    """
    lead, (h, w), dtype = flow.shape[:-3], flow.shape[-2:], flow.dtype
    flow = flow.float().reshape(-1, 2, h, w)
    fov = fov.float().expand(lead).reshape(-1)
    start = rotation_from_flow(flow, fov, cell)[:, :2]  # (M, 2) pitch, yaw
    f, xs, ys = _flow_camera(flow, fov, cell)  # f: (M,)
    p, inside, rays = _cell_rays(flow, f, xs, ys, cell, _FOCUS_CELL_STRIDE)
    near = _NEAR_FOCUS * w * cell  # px: a cell this close to the focus says little about its direction
    half = flow.new_tensor([w * cell / 4, h * cell / 4])
    best = start
    for pitch_step, pitch_n, yaw_step, yaw_n in _FOCUS_SEARCH:
        dp = torch.arange(-pitch_n, pitch_n + 1, device=flow.device, dtype=flow.dtype) * math.radians(pitch_step)
        dy = torch.arange(-yaw_n, yaw_n + 1, device=flow.device, dtype=flow.dtype) * math.radians(yaw_step)
        cand = best[:, None, :] + torch.stack(torch.meshgrid(dp, dy, indexing="ij"), -1).reshape(1, -1, 2)
        r = _derotated_flow(cand, rays, f, p)  # remaining flow
        rx, ry = r[..., 0], r[..., 1]
        # The focus e: the line through p along r passes through it, ry e_x - rx e_y = ry p_x - rx p_y.
        b = ry * p[:, 0] - rx * p[:, 1]
        weight = inside[:, None].expand_as(rx)
        rho = torch.zeros_like(r[..., 0, 0])  # (M, K): each candidate's roll, 0 unless read
        if roll:  # the flow a roll of one radian adds at each cell's new position, (M, K, n, 2)
            r0, spin = r, torch.stack([-(p[:, 1] + r[..., 1]), p[:, 0] + r[..., 0]], -1)
        for _ in range(_FOCUS_ROUNDS):
            wn = weight / (r.norm(dim=-1) + 1e-3)  # each cell's equation scaled to unit flow length
            a11, a12, a22 = (wn * ry * ry).sum(-1), (-wn * ry * rx).sum(-1), (wn * rx * rx).sum(-1)
            b1, b2 = (wn * ry * b).sum(-1), (-wn * rx * b).sum(-1)
            det = (a11 * a22 - a12 * a12).clamp_min(1e-6)
            e = torch.stack([(a22 * b1 - a12 * b2) / det, (a11 * b2 - a12 * b1) / det], -1)  # (M, K, 2)
            # A car drives roughly where its camera looks: the focus lies in the middle half of the
            # image. Near an edge, a rotation error (a near-uniform remaining flow) would pass for an
            # expansion, the ambiguity of turning against sliding sideways.
            e = torch.maximum(torch.minimum(e, half), -half)
            # Each cell's remaining flow across its line to the focus, and towards the focus (driving
            # forwards, nothing static comes closer to it), in pixels.
            away = p - e[..., None, :]
            dist = away.norm(dim=-1) + near
            if roll:  # the roll whose flow best cancels what crosses the lines from the focus
                cross = lambda v: v[..., 0] * away[..., 1] - v[..., 1] * away[..., 0]  # noqa: E731
                c0, c1, wr = cross(r0), cross(spin), weight / dist.square()
                rho = -(wr * c0 * c1).sum(-1) / (wr * c1 * c1).sum(-1).clamp_min(1e-9)
                r = r0 + rho[..., None, None] * spin
                rx, ry = r[..., 0], r[..., 1]
                b = ry * p[:, 0] - rx * p[:, 1]
            misfit = ((ry * e[..., None, 0] - rx * e[..., None, 1] - b).abs()
                      + (-(r * away).sum(-1)).clamp_min(0)) / dist
            weight = inside[:, None] / misfit.clamp_min(0.2)
        cost = (misfit.clamp_max(3.0) * inside[:, None]).sum(-1)  # (M, K)
        pick = cost.argmin(1)[:, None]
        best = cand.gather(1, pick[..., None].expand(-1, 1, 2))[:, 0]
        best_roll = rho.gather(1, pick)  # (M, 1)
    out = torch.cat([best, best_roll], -1)
    return out.reshape(*lead, 3).to(dtype)


# rotation_given_focus: Gauss-Newton rounds, and the misfit (pixels across a cell's line to the
# focus) beyond which a cell is taken for an outlier (a moving car, a wrong match): the cut of the
# focus fit's cost.
_GIVEN_FOCUS_ROUNDS = 5
_GIVEN_FOCUS_OUTLIER_PX = 3.0
# rotation_and_height_given_heading: more rounds (the window's height and its pairs' pitches trade
# off, so the steps are smaller), and the most the height may move in one round (radians).
_HEIGHT_ROUNDS = 8
_HEIGHT_STEP = math.radians(1.0)


@torch.no_grad()
@full_precision
def rotation_given_focus(flow: torch.Tensor, fov: torch.Tensor, direction: torch.Tensor,
                         start: torch.Tensor, cell: int = 4,
                         principal_point: torch.Tensor | None = None, roll: bool = False,
                         cells: torch.Tensor | None = None) -> torch.Tensor:
    """(..., 2, h, w) flow in pixels, (...) field of view, (..., 3) direction of travel in the earlier
    camera's frame, (..., 2) pitch and yaw to start from -> (..., 2) the pitch and yaw that leave
    the flow most nearly an expansion from that direction's image, the focus of expansion; with
    ``roll``, (..., 3) pitch, yaw and the roll about the optical axis (started from 0).

    :func:`rotation_from_flow_and_focus` must find the focus and the rotation together, and a focus
    off to one side explains a flow almost as well as a turn does: its yaw errors follow the
    direction of travel. With the focus given, each cell's remaining flow must lie along its line
    from the focus, a condition on the rotation alone, solved by Gauss-Newton with iteratively
    reweighted least absolute misfits (derivatives by finite differences; cells further than
    ``_GIVEN_FOCUS_OUTLIER_PX`` off their line left out). Where there is no forward direction (a
    standing or reversing window) the start is returned unchanged. No gradient.

    ``principal_point``: (..., 2) where the optical axis meets the image, x and y in pixels from the
    image centre (0, the centre, when None). The focus and the rotation's flow are both laid out
    about it: a real camera's lies a few pixels off the centre, and taking the centre for it biases
    the yaw read.

    A roll turns every point about the principal point, across the lines from a focus near it,
    which no expansion does: with the focus given it is read as the pitch and yaw are (the focus
    fit, which must find the focus too, could not: ``rotation_fit`` focus_roll).

    ``cells``: (..., h, w) 1 for the cells to read, 0 for those to leave out (every cell whose match
    lies inside the later image when None).
    """
    return _refit_about_focus(flow, fov, direction, start, cell, principal_point, fit_height=False, roll=roll,
                              cells=cells)[0]


@torch.no_grad()
@full_precision
def rotation_and_height_given_heading(flow: torch.Tensor, fov: torch.Tensor, direction: torch.Tensor,
                                      start: torch.Tensor, cell: int = 4,
                                      principal_point: torch.Tensor | None = None, roll: bool = False,
                                      cells: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rotation_given_focus` for windows, (B, P, 2, h, w) flows of P pairs each, trusting the
    direction of travel sideways but not in height -> (B, P, 2) pitch and yaw [(B, P, 3) with the
    roll, with ``roll``], (B, P, 3) the direction with its height corrected.

    How high a car's direction of travel lies in its camera's image is set by how the camera is
    mounted, which a model trained on a few drives recalls instead of reading (on 03_head, whose
    camera was mounted at another pitch, the head's steps point 2 degrees too low). Here every
    pair's height (y / z) is shifted by one offset per window, fitted together with every pair's
    pitch and yaw so that each flow is most nearly an expansion from its focus: Gauss-Newton on the
    same misfits, the window's offset eliminated from each pair's 2x2 system (a Schur complement,
    closed form). A turn of the camera and a higher focus move the image alike near the focus but
    differently with depth, and the offset is shared by all the window's pairs while their pitches
    differ: a uniform pitch cannot stand in for it. Pairs without a forward direction take no part
    and keep their start. No gradient.
    """
    return _refit_about_focus(flow, fov, direction, start, cell, principal_point, fit_height=True, roll=roll,
                              cells=cells)


def _solve_normal(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(M, K, K) symmetric normal matrices, K 2 or 3, and (M, K) right-hand sides -> (M, K) their
    solutions in closed form (Cramer's rule): no LAPACK call, which a compiled engine may not have;
    a singular system (a flow with no texture) gets no step."""
    if A.shape[-1] == 2:
        a11, a12, a22 = A[:, 0, 0], A[:, 0, 1], A[:, 1, 1]
        det = (a11 * a22 - a12 * a12).clamp_min(1e-12)
        return torch.stack([(a22 * b[:, 0] - a12 * b[:, 1]) / det, (a11 * b[:, 1] - a12 * b[:, 0]) / det], -1)
    # Each row scaled to the unit diagonal first: roll moves the image less than a turn does, and
    # the determinant of the raw rows spans too many orders of magnitude for float32.
    scale = A.diagonal(dim1=-2, dim2=-1).clamp_min(1e-12).rsqrt()  # (M, 3)
    A = A * scale[:, :, None] * scale[:, None, :]
    r0, r1, r2 = A.unbind(1)
    # The inverse's columns are the rows' pairwise cross products over the determinant.
    c0, c1, c2 = torch.linalg.cross(r1, r2), torch.linalg.cross(r2, r0), torch.linalg.cross(r0, r1)
    det = (r0 * c0).sum(-1, keepdim=True).clamp_min(1e-12)
    sb = b * scale
    return scale * (c0 * sb[:, :1] + c1 * sb[:, 1:2] + c2 * sb[:, 2:]) / det


def _refit_about_focus(flow: torch.Tensor, fov: torch.Tensor, direction: torch.Tensor,
                       start: torch.Tensor, cell: int, principal_point: torch.Tensor | None,
                       fit_height: bool, roll: bool, cells: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Both refits: (pitch, yaw [, roll]) (..., 2 or 3) and the direction (..., 3), its height
    shifted per window (the last lead dimension's pairs) with ``fit_height``."""
    lead, (h, w), dtype = flow.shape[:-3], flow.shape[-2:], start.dtype
    flow = flow.float().reshape(-1, 2, h, w)
    fov = fov.float().expand(lead).reshape(-1)
    d = direction.float().expand(*lead, 3).reshape(-1, 3)
    kept = start.float().reshape(-1, 2)  # what a pair without a forward direction keeps
    kept = with_roll(kept) if roll else kept
    omega, K = kept, kept.shape[-1]
    f, xs, ys = _flow_camera(flow, fov, cell)
    p, inside, rays = _cell_rays(flow, f, xs, ys, cell)
    p, rays = _about_principal_point(p, rays, principal_point, lead)  # p: (M, n, 2)
    px, py = p.expand(len(flow), -1, -1).unbind(-1)  # (M, n) each
    length = d.norm(dim=-1)
    forward = (d[:, 2] > 0.5 * length) & (length > 1e-6)
    tangent = d[:, :2] / d[:, 2:].clamp_min(1e-6)  # the focus is f * tangent
    pairs = lead[-1] if fit_height else 1  # rows sharing one height offset
    offset = flow.new_zeros(len(flow) // pairs)
    if cells is not None:
        inside = inside * cells.float().expand(*lead, h, w).reshape(len(flow), -1)
    weight_forward = inside * forward[:, None]

    limit = math.radians(2.0)
    per_pair = lambda x: x.repeat_interleave(pairs, 0)  # noqa: E731 - a window's value on its pairs' rows
    per_window = lambda x: x.reshape(-1, pairs).sum(-1)  # noqa: E731 - the sum over a window's pairs
    fm = f[:, None]
    ax = px - fm * tangent[:, :1]  # (M, n) each cell from the focus, sideways (the offset is in height)
    for _ in range(_HEIGHT_ROUNDS if fit_height else _GIVEN_FOCUS_ROUNDS):
        ay = py - fm * (tangent[:, 1:] + per_pair(offset)[:, None])
        per_px = 1 / (torch.hypot(ax, ay) + _NEAR_FOCUS * w * cell)  # a misfit's unit: px across the line
        x, y = _derotated_rays(omega, rays)  # where each cell went, the rotation undone
        rx, ry = fm * x - px, fm * y - py  # (M, n) its flow
        c0 = (rx * ay - ry * ax) * per_px  # across its line from the focus
        # The misfit's slopes: undoing a further small turn e moves a ray b by e x b, in the image
        # (pitch) f (-x y, -(1 + y^2)), (yaw) f (1 + x^2, x y), (roll) f (-y, x). Exact for a turn
        # composed before the rotation; the step is added to the rotation vector instead, which
        # differs at second order in the rotation's few degrees: the same solution, other steps.
        xy = x * y
        slopes = [(1 + y * y) * ax - xy * ay, (1 + x * x) * ay - xy * ax, -(y * ay + x * ax)]
        J = torch.stack(slopes[:K], 1) * (fm * per_px)[:, None]  # (M, K, n)
        weight = weight_forward * (c0.abs() < _GIVEN_FOCUS_OUTLIER_PX) / c0.abs().clamp_min(0.2)
        wj = J * weight[:, None]
        A = torch.bmm(wj, J.transpose(1, 2))  # (M, K, K) normal equations
        b = -(wj * c0[:, None]).sum(-1)  # (M, K)
        if fit_height:  # the window's offset: each pair's rotation eliminated (Schur complement)
            g = -fm * rx * per_px  # d misfit / d offset: the focus moves by f
            k = (wj * g[:, None]).sum(-1)  # (M, K)
            along, rhs = _solve_normal(A, k), _solve_normal(A, b)  # A^-1 k, A^-1 b
            curvature = (weight * g * g).sum(-1) - (k * along).sum(-1)
            residual = -(weight * g * c0).sum(-1) - (k * rhs).sum(-1)
            move = (per_window(residual) / per_window(curvature).clamp_min(1e-9)).clamp(-_HEIGHT_STEP, _HEIGHT_STEP)
            offset = offset + move
            b = b - k * per_pair(move)[:, None]
        omega = omega + _solve_normal(A, b).clamp(-limit, limit)
    omega = torch.where(forward[:, None], omega, kept)
    height = torch.where(forward, per_pair(offset) * d[:, 2], torch.zeros_like(d[:, 2]))
    d = torch.stack([d[:, 0], d[:, 1] + height, d[:, 2]], -1)
    return omega.reshape(*lead, K).to(dtype), d.reshape(*lead, 3).to(direction.dtype)


# step_length_ratios: a cell counts where its translational flow is at least this long (pixels;
# shorter ones are mostly the flow's own error) and lies within the refit's outlier cut of its line
# from the focus; a ratio needs this many cells seen in both pairs.
_RATIO_MIN_FLOW_PX = 1.0
_RATIO_MIN_CELLS = 20
# with_step_lengths: how much more a ratio from the flow weighs than one from the head's lengths.
# On 07_head at 2 fps (held out from the validation runs' training) the flow's log ratios were off
# by 0.043 (median) with the refined flow, the head's by 0.135: weights as the inverse variances,
# (0.135 / 0.043)^2 = 10. The flow's ratios also run 0.02 short on average (the 4 px level's search
# clips the flows of the nearest points, which grow from one pair to the next), which a chain of
# them alone would add up over a window: the head's lengths hold it.
_RATIO_WEIGHT = 10.0


@torch.no_grad()
@full_precision
def step_length_ratios(flow: torch.Tensor, fov: torch.Tensor, direction: torch.Tensor,
                       rotation: torch.Tensor, cell: int = 4,
                       principal_point: torch.Tensor | None = None,
                       cells: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P, 2, h, w) flows of a window's P consecutive pairs, (B, P) field of view, (B, P, 3) each
    step's direction of travel and (B, P, 2 or 3) its pitch, yaw [, roll] -> (B, P-1) the log of
    each step's length over the one before, read from the flow, and (B, P-1) whether it was read.

    Three-view triangulation on the flow's matches. Once a step's rotation is undone, a static point
    at depth Z moves away from the focus by a known function of tau = length / Z: from u on the
    unit-focal image it lands at (u - tau d_xy) / (1 - tau d_z) for the unit direction d, so every
    cell gives its tau in closed form. The point then lies at depth Z (1 - tau d_z) / b_z in the
    later camera (b the ray it landed on, turned into the earlier camera's frame), where the next
    pair gives its tau' at the cell it landed in (bilinear over that pair's usable cells). The steps
    are tau Z and tau' Z' long, so their ratio needs no depth: the median over the cells seen in
    both pairs. A pair without a forward direction, or with fewer than ``_RATIO_MIN_CELLS`` such
    cells, gives no ratio. Exact for exact flows (a test); no gradient.

    ``principal_point`` and ``cells`` as in :func:`rotation_given_focus`.
    """
    B, P, _, h, w = flow.shape
    flow = flow.float().reshape(-1, 2, h, w)
    fov = fov.float().expand(B, P).reshape(-1)
    d = direction.float().reshape(-1, 3)
    d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    f, xs, ys = _flow_camera(flow, fov, cell)
    p, inside, rays = _cell_rays(flow, f, xs, ys, cell)
    landed = p + flow.flip(1).flatten(2).transpose(1, 2)  # (M, n, 2) px from the image centre
    p, rays = _about_principal_point(p, rays, principal_point, (B, P))
    if cells is not None:
        inside = inside * cells.float().reshape(len(flow), -1)
    fm = f[:, None]
    u = p / fm[..., None]  # (M, n, 2) each cell on the unit-focal image
    back = torch.einsum("mij,mnj->mni", _turn(rotation.float().reshape(len(flow), -1)), rays) / fm[..., None]
    moved = back[..., :2] / back[..., 2:].clamp_min(1e-3) - u  # its flow with the rotation undone
    e = u * d[:, None, 2:] - d[:, None, :2]  # where a unit of tau moves it: away from the focus
    e_norm = e.norm(dim=-1).clamp_min(1e-6)
    m = (moved * e).sum(-1) / e_norm.square()  # tau / (1 - tau d_z)
    tau = m / (1 + m * d[:, None, 2]).clamp_min(1e-6)
    across = (moved[..., 0] * e[..., 1] - moved[..., 1] * e[..., 0]).abs() / e_norm * fm
    usable = ((inside > 0) & (d[:, None, 2] > 0.5) & (tau > 0) & (moved.norm(dim=-1) * fm >= _RATIO_MIN_FLOW_PX)
              & (across < _GIVEN_FOCUS_OUTLIER_PX) & (e_norm * fm > _NEAR_FOCUS * w * cell))
    depth_ratio = (1 - tau * d[:, None, 2]) / back[..., 2].clamp_min(1e-3)  # Z' / Z

    # The next pair's tau where each cell landed: bilinear over its usable cells (a normalised
    # convolution; they must carry at least half the weight).
    later = lambda x: x.reshape(B, P, h, w)[:, 1:].reshape(-1, 1, h, w)  # noqa: E731
    earlier = lambda x: x.reshape(B, P, -1)[:, :-1]  # noqa: E731
    at = earlier(landed.reshape(B * P, -1, 2)).reshape(-1, h * w, 1, 2)
    at = at / at.new_tensor([(w - 1) * cell / 2, (h - 1) * cell / 2])
    sample = lambda x: F.grid_sample(later(x), at, align_corners=True).reshape(B, P - 1, -1)  # noqa: E731
    support = sample(usable.float())
    tau_next = sample(torch.where(usable, tau, torch.zeros_like(tau))) / support.clamp_min(1e-6)
    both = (support >= 0.5) & earlier(usable)
    log_ratio = (torch.log(tau_next.clamp_min(1e-9)) - torch.log(earlier(tau).clamp_min(1e-9))
                 + torch.log(earlier(depth_ratio).clamp_min(1e-6)))
    log_ratio = log_ratio.masked_fill(~both, float("nan")).nanmedian(-1).values
    read = both.sum(-1) >= _RATIO_MIN_CELLS
    return torch.where(read, log_ratio, torch.zeros_like(log_ratio)), read


def with_step_lengths(steps: torch.Tensor, log_ratios: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
    """(B, P, 3) steps, (B, P-1) log ratios of consecutive steps' lengths and whether each was read
    (:func:`step_length_ratios`) -> the steps with their lengths fitted to both, directions and the
    window's path length kept.

    Least squares on log lengths x: sum_k (x_k - log |step_k|)^2 + sum_k w_k (x_k+1 - x_k - r_k)^2,
    w_k ``_RATIO_WEIGHT`` where a ratio was read and 0 where not: a tridiagonal system, solved in
    closed form (the Thomas algorithm, P small rows; no LAPACK call, which a compiled engine may
    not have)."""
    length = steps.norm(dim=-1).float()  # (B, P)
    own = torch.log(length.clamp_min(1e-9))
    weight = _RATIO_WEIGHT * read.float()
    r = weight * log_ratios.float()
    zero = torch.zeros_like(own[:, :1])
    upper = torch.cat([-weight, zero], 1)  # row k's coefficient of x_k+1
    diag = 1 + torch.cat([zero, weight], 1) + torch.cat([weight, zero], 1)
    rhs = own + torch.cat([zero, r], 1) - torch.cat([r, zero], 1)
    c, y = [upper[:, 0] / diag[:, 0]], [rhs[:, 0] / diag[:, 0]]
    for k in range(1, own.shape[1]):  # forward sweep; row k's coefficient of x_k-1 is upper[k-1]
        pivot = diag[:, k] - upper[:, k - 1] * c[-1]
        c.append(upper[:, k] / pivot)
        y.append((rhs[:, k] - upper[:, k - 1] * y[-1]) / pivot)
    x = [y[-1]]
    for k in range(own.shape[1] - 2, -1, -1):  # back substitution
        x.insert(0, y[k] - c[k] * x[0])
    x = torch.stack(x, 1)
    new = torch.exp(x - x.max(-1, keepdim=True).values)
    new = new * length.sum(-1, keepdim=True) / new.sum(-1, keepdim=True).clamp_min(1e-12)
    return steps * (new / length.clamp_min(1e-9)).to(steps.dtype)[..., None]


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """(..., 4) quaternion (w, x, y, z), normalised here -> (..., 3, 3) rotation."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(*q.shape[:-1], 3, 3)


def horizontal_fov(fx: float | torch.Tensor, width: float | torch.Tensor):
    """Horizontal field of view in radians of a pinhole camera."""
    if isinstance(fx, torch.Tensor) or isinstance(width, torch.Tensor):
        return 2 * torch.atan(torch.as_tensor(width) / (2 * torch.as_tensor(fx)))
    return 2 * math.atan(width / (2 * fx))


def pose_targets(poses: torch.Tensor, fov: torch.Tensor,
                 floor: float = SCALE_FLOOR) -> dict[str, torch.Tensor]:
    """Post-training targets of a window (batched: poses (B, T, 4, 4), fov (B,)).

    Returns translation (B, T-1, 3) = t / max(s, floor), quaternion (B, T-1, 4) canonical, fov
    (B, T-1), scale s (B,) = mean step length in metres. ``floor`` is the paper's 1 m; 0 normalises
    every window by its own s (a standing window's translation is 0 either way).
    """
    rel = relative_poses(poses)
    t = rel[..., :3, 3]
    s = t.norm(dim=-1).mean(-1)
    t_norm = t / s.clamp_min(max(floor, MIN_SCALE))[..., None, None]
    q = matrix_to_quaternion(rel[..., :3, :3])
    return {"translation": t_norm, "quaternion": q,
            "fov": fov[..., None].expand(*t.shape[:-1]), "scale": s}


def poses_from_prediction(translation: torch.Tensor, quaternion: torch.Tensor,
                          scale: torch.Tensor, floor: float = SCALE_FLOOR) -> torch.Tensor:
    """Invert :func:`pose_targets` (same ``floor``): (B, T-1, 3), (B, T-1, 4), (B,) -> step motions
    (B, T-1, 4, 4) in metres."""
    rel = torch.zeros(*translation.shape[:-1], 4, 4, dtype=translation.dtype, device=translation.device)
    rel[..., :3, :3] = quaternion_to_matrix(quaternion)
    rel[..., :3, 3] = translation * scale.clamp_min(max(floor, MIN_SCALE))[..., None, None]
    rel[..., 3, 3] = 1.0
    return rel

