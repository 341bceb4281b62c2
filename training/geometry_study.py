"""The studies behind the hybrid's settings, on the labelled training sequences only.

``pairs``: how accurate feature geometry is against its essential-matrix inlier count. Every pair of
frames ``gap`` frames apart (every second start frame) is estimated by the classical pipeline
(:class:`lapose_core.eval.classical.ClassicalVO`, accepting down to 5 inliers) and scored against the
ground truth (the larger of the rotation and translation-direction errors, degrees), binned by
inliers. Frame gaps beyond 10 (slower than 1 fps at KITTI's 10 Hz) are where pairs with few inliers
are found. Beside it, LA-Pose's own per-step error on 16-frame windows at ``--fps`` of the same
sequences: what a pair that falls back gets instead. The bundled model was trained on these
sequences, so its figures here flatter it. This chose ``HybridConfig.min_inliers``.

``road``: the road's metric step length (:func:`lapose_core.road_plane.fit_road`) for pairs ``gap``
frames apart, given the ground-truth motion, against the true length, for each assumed camera pitch
and tilt prior, on the frames as recorded and re-rendered (homography K R K^-1, exact) as from a
camera pitched ``--added-pitches`` further down, which moves the road's true pitch by as much. Under
a tight prior (3 degrees) the lengths follow the assumed pitch: on 00/07/06 a level camera made them
3-5 % too long and the labelled heads' pitch (``lapose_core.LABELLED_KITTI_PITCH_DEG``) left none,
but a true pitch 0.5 degrees off what is assumed costs 5 %. Under a loose one (10 degrees, the
default) the road finds its own normal: assuming a level camera, the bias stays within about 2 % over
a true pitch from 0.5 degrees above to 0.5 below the labelled heads', at 1.5 times the spread per pair;
30 degrees biased the lengths about as little and made the hybrid noisier (``lengths``). This chose
``RoadPlaneConfig.tilt_prior_deg``. With ``--motion-pitch``, the pitch that the direction of motion implies (the car
moves along the road): from the ground truth about 1.0-1.2 degrees on the labelled heads, and from
feature geometry alone 0.7-1.0, where the road's lengths are unbiased at 0.5 under the tight prior:
so the motion's direction, which needs no labels, cannot stand in for the pitch.

``lengths``: the hybrid's step lengths with the road (``scale_source="ground"``) on 16-keyframe windows
at ``--fps``, for each pair of standard deviations of a triangulated ratio and of a road length
(:mod:`lapose_core.step_lengths`): ATE-S says how well the relative lengths came out, ATE-M adds the
scale, and AUC@5 whether reshaping the chain cost directions between distant frames (on 00/07/06 it did
not: 0.879 against 0.870 at 2 fps). A road standard deviation of 10 (log units) leaves the triangulated
chain as it is and lets the road only set its level (a least-squares one, so an outlying road length
moves it). This chose ``HybridConfig.ratio_sigma`` and ``road_sigma``; ``--tilt-priors 3 10 30``
compares the road's tilt priors in the whole hybrid: with a level camera on the 00/07 heads (ratio
0.05, road 0.08), ATE-M 0.90 m at 1 fps and 0.38 m at 2 fps at 10 degrees, against 1.39 / 0.70 at 3 and
1.22 / 0.46 at 30 (window scale off by 2.2 % against 4.5 and 2.6 %; ATE-S 0.0139 / 0.0115 against
0.0121 / 0.0106 and 0.0228 / 0.0110).

``distortion``: what the node's rectification (:mod:`lapose_ros.rectify`) is for. Each frame is
re-rendered as a raw camera with lens distortion would have seen it (a focal length ``--focal-gain``
times the sequence's, so every raw pixel has content, and ``--distortion``'s plumb_bob
coefficients), and LA-Pose, the hybrid and the hybrid with the road's scale run on 16-keyframe
windows of the pinhole view at the raw camera's focal length (what a rectified camera sees), of the
raw images as they are (with the raw camera's K: what the node did before it rectified), and of the
raw images rectified as the node rectifies them; beside them the classical baseline on the same
images and the straight-ahead prior on the same windows. On ``00_head`` at 2 fps with a wide lens's
barrel distortion (-0.25, 0.06) the raw images cost the hybrid AUC@5 0.823 -> 0.655 and ATE-S 0.015
-> 0.105 (the classical baseline the same: where every pair passes its checks the hybrid's directions
are its); rectified, 0.825 and 0.021 (prior 0.320 and 0.130). (The bundled model was trained on these drives, which flatters
its own figures; what the study measures is raw against rectified.)

    python training/geometry_study.py pairs --data ../shared/data/kitti/00_head ../shared/data/kitti/07_head
    python training/geometry_study.py road --data ../shared/data/kitti/00_head ../shared/data/kitti/07_head ../shared/data/kitti/06_head
    python training/geometry_study.py lengths --data ../shared/data/kitti/00_head ../shared/data/kitti/07_head
    python training/geometry_study.py distortion --data ../shared/data/kitti/00_head
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools

import numpy as np
import torch

from lapose_core import KITTI_CAMERA_HEIGHT_M
from lapose_core.data.augment import rotation_matrices, warp_frames
from lapose_core.data.sources import KittiSequence
from lapose_core.eval.classical import ClassicalVO, intrinsics_matrix
from lapose_core.eval.evaluate import WindowScan, eval_windows
from lapose_core.eval.metrics import (ate_m, ate_s, auc, compose_steps, mean_step_length, pair_errors,
                                      pose_pair_errors, step_motions)
from lapose_core.eval.prior import score_prior
from lapose_core.road_plane import RoadPlaneConfig, fit_road, road_image

INLIER_BINS = (5, 10, 15, 20, 25, 30, 50, 100, 10**6)


def motion(seq: KittiSequence, i: int, j: int) -> np.ndarray:
    """Frame j in frame i (4x4), from the ground truth."""
    return np.linalg.inv(seq.poses[i]) @ seq.poses[j]


def step_errors(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """max(rotation, direction) error in degrees of each step (frame k+1 in frame k, (N, 4, 4))."""
    return np.array([np.max(pair_errors(np.stack([np.eye(4), p]), np.stack([np.eye(4), g])))
                     for p, g in zip(pred, gt)])


def bin_label(lo: int, hi: int) -> str:
    """An inlier bin [lo, hi) as the tables write it."""
    return f"{lo}-{hi - 1}" if hi < 10**6 else f">= {lo}"


def error_row(label: str, errors: np.ndarray) -> str:
    if not len(errors):
        return f"| {label} | 0 | | | | |"
    return (f"| {label} | {len(errors)} | {np.median(errors):.2f} | {np.percentile(errors, 90):.2f} | "
            f"{np.mean(errors > 5):.2f} | {np.mean(errors > 20):.2f} |")


def study_pairs(args: argparse.Namespace) -> None:
    found: list[tuple[int, float, float]] = []  # (inliers, error, parallax); 0 inliers: no essential matrix
    for path in args.data:
        seq = KittiSequence(path)
        vo = ClassicalVO(seq.intrinsics, min_inliers=5)
        features = [vo.features(seq.read(i)) for i in range(len(seq))]
        for gap in args.gaps:
            for i in range(0, len(seq) - gap, 2):
                step = vo.two_view(features[i], features[i + gap])
                if not step.ok:
                    found.append((0, 180.0, 0.0))
                    continue
                pred = step.motion()
                found.append((step.inliers, float(step_errors(pred[None], motion(seq, i, i + gap)[None])[0]),
                              step.parallax_px))
    inliers = np.array([f[0] for f in found])
    errors = np.array([f[1] for f in found])
    print(f"Feature geometry, frame gaps {', '.join(map(str, args.gaps))}, {len(found)} pairs "
          f"({np.sum(inliers == 0)} without an essential matrix)\n")
    print("| inliers | pairs | median error (deg) | 90th percentile | > 5 deg | > 20 deg |")
    print("| --- | --- | --- | --- | --- | --- |")
    for lo, hi in zip(INLIER_BINS[:-1], INLIER_BINS[1:]):
        sel = (inliers >= lo) & (inliers < hi)
        print(error_row(bin_label(lo, hi), errors[sel]))
    parallax = np.array([f[2] for f in found])
    print("\nParallax (median rotation-compensated image motion of the inliers, pixels) of the pairs "
          "geometry got right (< 5 deg) and wrong (> 20 deg): a wrong rotation leaves the inliers "
          "moving far more than the translation can, but so does a sharp turn seen from up close\n")
    print("| inliers | right: pairs | right: median | right: 99th percentile | wrong: pairs | "
          "wrong: 10th percentile | wrong: median |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for lo, hi in zip(INLIER_BINS[1:-1], INLIER_BINS[2:]):
        sel = (inliers >= lo) & (inliers < hi)
        right, wrong = parallax[sel & (errors < 5)], parallax[sel & (errors > 20)]
        pct = lambda v, q: f"{np.percentile(v, q):.1f}" if len(v) else ""  # noqa: E731
        print(f"| {bin_label(lo, hi)} | {len(right)} | {pct(right, 50)} | {pct(right, 99)} | "
              f"{len(wrong)} | {pct(wrong, 10)} | {pct(wrong, 50)} |")

    from lapose_core.inference import PoseEstimator

    estimator = PoseEstimator.load(args.checkpoint)
    lapose: list[np.ndarray] = []
    for path in args.data:
        seq = KittiSequence(path)
        if seq.duration < (estimator.num_frames - 1) / args.fps:
            continue
        windows = eval_windows(seq, args.fps, estimator.num_frames, stride_s=0.5)
        for idx, gt, images in WindowScan(seq, windows):
            pred = estimator.predict_window(images, seq.timestamps[idx]).relative
            lapose.append(step_errors(np.asarray(pred), step_motions(gt)))
    print(f"\nLA-Pose ({estimator.checkpoint_name}) per step, 16-frame windows at {args.fps:g} fps:\n")
    print("| method | steps | median error (deg) | 90th percentile | > 5 deg | > 20 deg |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(error_row("LA-Pose", np.concatenate(lapose) if lapose else np.zeros(0)))


def pitched(image: np.ndarray, K: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> the image a camera rotated by ``rotation`` (new camera frame = rotation @ old)
    would have seen: the homography K R K^-1, exact for any scene, except the rows that come from
    outside the frame (about 3 px for half a degree at KITTI's half resolution), which repeat its
    edge. Resampled as the training augmentation resamples (its homography maps output pixels to
    source pixels)."""
    source_from_output = torch.from_numpy(K @ rotation.T @ np.linalg.inv(K))[None]
    frames = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]  # (1, 3, H, W)
    return warp_frames(frames, source_from_output)[0].permute(1, 2, 0).numpy()


def study_road(args: argparse.Namespace) -> None:
    sequences = [KittiSequence(path) for path in args.data]
    greys = {}
    print(f"Road length error (fitted / true - 1) with the ground-truth motion, camera "
          f"{args.camera_height_m} m above the road; 'added pitch' re-renders every frame as a camera "
          f"pitched that much further down (the road's true pitch moves by as much)\n")
    print("| added pitch (deg) | tilt prior (deg) | assumed pitch (deg) | gap | pairs | voting | "
          "median error | mean abs error |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for added, prior, pitch in itertools.product(args.added_pitches, args.tilt_priors, args.pitches):
        config = RoadPlaneConfig(camera_height_m=args.camera_height_m, pitch_deg=pitch,
                                 tilt_prior_deg=prior)
        # About the camera's x axis: the road's normal (0, 1, 0) -> (0, cos, sin).
        turn = np.eye(4)
        turn[:3, :3] = rotation_matrices(torch.tensor([np.radians(added), 0.0, 0.0],
                                                      dtype=torch.float64)).numpy()
        for gap in args.gaps:
            errors, pairs = [], 0
            for seq in sequences:
                K = intrinsics_matrix(seq.intrinsics)
                for i in range(0, len(seq) - gap, 3):
                    for k in (i, i + gap):
                        if (seq.name, k, added) not in greys:
                            image = seq.read(k)
                            greys[seq.name, k, added] = road_image(
                                pitched(image, K, turn[:3, :3]) if added else image, config)
                    true = turn @ motion(seq, i, i + gap) @ turn.T
                    inverse = np.linalg.inv(true)  # x_j = R x_i + t
                    length = float(np.linalg.norm(true[:3, 3]))
                    fit = fit_road(greys[seq.name, i, added], greys[seq.name, i + gap, added], K,
                                   inverse[:3, :3], inverse[:3, 3] / length, config)
                    pairs += 1
                    if fit is not None and fit.ok:
                        errors.append(fit.baseline_m / length - 1.0)
            e = np.array(errors)
            row = f"| {added:g} | {prior:g} | {pitch:g} | {gap} | {pairs} | {len(e)} |"
            print(f"{row} {np.median(e):+.3f} | {np.abs(e).mean():.3f} |" if len(e) else f"{row} | |")
    if args.motion_pitch:
        study_motion_pitch(sequences, args.gaps)


def motion_elevation_deg(c: np.ndarray) -> float:
    """How far above the optical axis the camera moved (degrees; camera y points down): the
    camera's pitch below the road, if the car moved along the road."""
    return float(np.degrees(np.arctan2(-c[1], c[2])))


def study_motion_pitch(sequences: list[KittiSequence], gaps: list[int]) -> None:
    """The pitch a camera would have if the car moved along the road plane: the elevation of the
    motion in the camera frame, from the ground truth and from feature geometry (no labels)."""
    print("\nPitch from the direction of motion (median elevation of the motion above the optical "
          "axis, degrees)\n")
    print("| sequence | gap | pairs | ground truth | feature geometry |")
    print("| --- | --- | --- | --- | --- |")
    for seq in sequences:
        vo = ClassicalVO(seq.intrinsics)
        features = [vo.features(seq.read(i)) for i in range(len(seq))]
        for gap in gaps:
            true, found = [], []
            for i in range(0, len(seq) - gap):
                c = motion(seq, i, i + gap)[:3, 3]
                if np.linalg.norm(c) < 0.05 * gap:  # standing: no direction
                    continue
                true.append(motion_elevation_deg(c))
                step = vo.two_view(features[i], features[i + gap])
                if step.ok:
                    found.append(motion_elevation_deg(step.motion()[:3, 3]))
            print(f"| {seq.name} | {gap} | {len(true)} | {np.median(true):+.2f} | {np.median(found):+.2f} |")


def study_lengths(args: argparse.Namespace) -> None:
    from lapose_core.hybrid import HybridConfig, HybridEstimator
    from lapose_core.inference import PoseEstimator

    lapose = PoseEstimator.load(args.checkpoint)
    base = HybridConfig.for_camera(args.camera_height_m, args.pitch)
    sigmas = list(itertools.product(args.ratio_sigmas, args.road_sigmas))
    print(f"Hybrid step lengths with the road (camera {args.camera_height_m} m above it, pitch "
          f"{args.pitch:g} deg), mean over 16-keyframe windows; window scale: mean |predicted / true "
          f"mean step - 1|; AUC@5 pooled over the windows' frame pairs\n")
    print("| fps | road tilt prior (deg) | windows | ratio sigma | road sigma | AUC@5 | ATE-S | ATE-M (m) | "
          "window scale |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for fps, prior in itertools.product(args.fps, args.tilt_priors):
        scores = {s: [] for s in sigmas}
        pair_errs = {s: [] for s in sigmas}
        for path in args.data:
            seq = KittiSequence(path)
            if seq.duration < (lapose.num_frames - 1) / fps:
                continue
            # One estimator per sequence and prior: its pairs are matched (and their road aligned)
            # once and reused for every pair of deviations.
            hybrid = HybridEstimator(lapose, dataclasses.replace(base, road_tilt_prior_deg=prior))
            for idx, gt, images in WindowScan(seq, eval_windows(seq, fps, lapose.num_frames, 1.0)):
                frames = [hybrid.encode_frame(im) for im in images]
                for ratio_sigma, road_sigma in sigmas:
                    hybrid.config = dataclasses.replace(hybrid.config, ratio_sigma=ratio_sigma,
                                                        road_sigma=road_sigma)
                    pred = hybrid.predict_features(frames, seq.timestamps[idx], seq.intrinsics).poses
                    scale = mean_step_length(pred) / mean_step_length(gt)
                    scores[ratio_sigma, road_sigma].append((ate_s(pred, gt), ate_m(pred, gt),
                                                            abs(scale - 1)))
                    pair_errs[ratio_sigma, road_sigma].append(pose_pair_errors(pred, gt))
        for (ratio_sigma, road_sigma), found in scores.items():
            if found:
                s_err, m_err, scale_err = np.mean(found, axis=0)
                pooled = auc(np.concatenate(pair_errs[ratio_sigma, road_sigma]), 5)
                print(f"| {fps:g} | {prior:g} | {len(found)} | {ratio_sigma:g} | {road_sigma:g} | "
                      f"{pooled:.3f} | {s_err:.4f} | {m_err:.3f} | {scale_err:.3f} |")


def raw_camera(K: np.ndarray, shape: tuple[int, int], distortion: tuple[float, ...],
               focal_gain: float = 1.3, model: str = "plumb_bob"):
    """A raw (distorted) camera looking through the pinhole camera ``K`` of a sequence: its
    ``CameraModel`` (``model``: a CameraInfo distortion model; ``P`` = its own K) and a function from
    a sequence frame to the raw image. The raw camera's focal length is ``focal_gain`` times K's, so
    that with barrel distortion every raw pixel sees inside the sequence's frame."""
    import cv2

    from lapose_ros.rectify import CameraModel

    h, w = shape
    K_raw = K.copy()
    K_raw[0, 0] *= focal_gain
    K_raw[1, 1] *= focal_gain
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    pixels = np.stack([xs.ravel(), ys.ravel()], -1)[:, None]
    undistort = cv2.fisheye.undistortPoints if model == "equidistant" else cv2.undistortPoints
    seen = undistort(pixels, K_raw, np.asarray(distortion), P=K).reshape(h, w, 2)  # where each looks
    camera = CameraModel(w, h, model, tuple(K_raw.ravel()), tuple(distortion), tuple(np.eye(3).ravel()),
                         tuple(np.hstack([K_raw, np.zeros((3, 1))]).ravel()))
    return camera, lambda image: cv2.remap(image, seen[..., 0], seen[..., 1], cv2.INTER_LINEAR)


def study_distortion(args: argparse.Namespace) -> None:
    import cv2

    from lapose_core.hybrid import HybridConfig, HybridEstimator
    from lapose_core.inference import PoseEstimator
    from lapose_ros.rectify import Rectifier

    lapose = PoseEstimator.load(args.checkpoint)
    estimators = {"LA-Pose": None, "hybrid": HybridConfig(),
                  f"hybrid, road ({args.camera_height_m} m)": HybridConfig.for_camera(args.camera_height_m),
                  "classical": "classical"}
    print(f"A raw camera (focal length {args.focal_gain:g}x the sequence's, plumb_bob {args.distortion}), "
          f"16-keyframe windows; AUC@5 pooled over the windows' frame pairs\n")
    print("| data | fps | estimator | images | windows | AUC@5 | ATE-S | ATE-M (m) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for path, fps in itertools.product(args.data, args.fps):
        seq = KittiSequence(path)
        K = intrinsics_matrix(seq.intrinsics)
        camera, raw_view = raw_camera(K, seq.read(0).shape[:2], tuple(args.distortion), args.focal_gain)
        rectify = Rectifier(camera)
        K_raw = np.asarray(camera.K).reshape(3, 3)
        intrinsics = tuple(K_raw[[0, 1, 0, 1], [0, 1, 2, 2]])
        views = {"pinhole": lambda im: cv2.warpPerspective(im, K_raw @ np.linalg.inv(K), im.shape[1::-1]),
                 "raw, as they are": raw_view, "raw, rectified": lambda im: rectify(raw_view(im))}
        scores = {}
        windows = eval_windows(seq, fps, lapose.num_frames, 1.0)
        # One hybrid per estimator and view for the sequence (its pairs are keyed by frame).
        hybrids = {(view, name): HybridEstimator(lapose, config) for view, (name, config)
                   in itertools.product(views, estimators.items()) if isinstance(config, HybridConfig)}
        classical = ClassicalVO(intrinsics)
        gts = []
        for idx, gt, images in WindowScan(seq, windows, max_windows=args.max_windows):
            gts.append(gt)
            for view, make in views.items():
                frames = [make(im) for im in images]  # each view rendered once a window
                for name, config in estimators.items():
                    if config == "classical":  # no metric scale: no ATE-M
                        pred = compose_steps(classical.estimate(frames).relative)
                    elif config is None:
                        pred = lapose.predict_features([lapose.encode_frame(f) for f in frames],
                                                       seq.timestamps[idx], intrinsics=intrinsics).poses
                    else:
                        pred = hybrids[view, name].predict_window(frames, seq.timestamps[idx],
                                                                  intrinsics=intrinsics).poses
                    pred = np.asarray(pred, dtype=np.float64)
                    scores.setdefault((name, view), []).append(
                        (pose_pair_errors(pred, gt), ate_s(pred, gt),
                         ate_m(pred, gt) if config != "classical" else float("nan")))
        for (name, view), found in scores.items():
            pooled = auc(np.concatenate([f[0] for f in found]), 5)
            metric = np.mean([f[2] for f in found])
            print(f"| {seq.name} | {fps:g} | {name} | {view} | {len(found)} | {pooled:.3f} | "
                  f"{np.mean([f[1] for f in found]):.4f} | {'n/a' if np.isnan(metric) else f'{metric:.3f}'} |")
        floor = score_prior(gts)
        print(f"| {seq.name} | {fps:g} | prior: {floor['description']} | any | {len(gts)} | "
              f"{floor['auc5']:.3f} | {floor['ate_s']:.4f} | n/a |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="study", required=True)
    pairs = sub.add_parser("pairs", help="geometry error against inlier count; LA-Pose's step error")
    pairs.add_argument("--data", nargs="+", required=True, help="labelled KITTI-format folders")
    pairs.add_argument("--gaps", type=int, nargs="+", default=[10, 13, 15, 17, 20, 25])
    pairs.add_argument("--fps", type=float, default=1.0, help="LA-Pose's window rate")
    pairs.add_argument("--checkpoint", help="LA-Pose checkpoint (default: bundled model)")
    pairs.set_defaults(func=study_pairs)
    road = sub.add_parser("road", help="road length bias against camera pitch")
    road.add_argument("--data", nargs="+", required=True, help="labelled KITTI-format folders")
    road.add_argument("--gaps", type=int, nargs="+", default=[5, 10])
    road.add_argument("--pitches", type=float, nargs="+", default=[0.0, 0.5, 1.0],
                      help="assumed camera pitches (degrees down)")
    road.add_argument("--tilt-priors", type=float, nargs="+", default=[3.0, 10.0, 30.0])
    road.add_argument("--added-pitches", type=float, nargs="+", default=[0.0, 0.5],
                      help="frames re-rendered as from a camera pitched this much further down")
    road.add_argument("--motion-pitch", action="store_true",
                      help="also the pitch the direction of motion implies")
    road.add_argument("--camera-height-m", type=float, default=KITTI_CAMERA_HEIGHT_M)
    road.set_defaults(func=study_road)
    lengths = sub.add_parser("lengths", help="hybrid step lengths from triangulation and the road")
    lengths.add_argument("--data", nargs="+", required=True, help="labelled KITTI-format folders")
    lengths.add_argument("--fps", type=float, nargs="+", default=[1.0, 2.0])
    lengths.add_argument("--ratio-sigmas", type=float, nargs="+", default=[0.03, 0.05, 0.1])
    lengths.add_argument("--road-sigmas", type=float, nargs="+", default=[0.05, 0.08, 0.15, 10.0])
    lengths.add_argument("--pitch", type=float, default=0.0, help="camera pitch (degrees down)")
    lengths.add_argument("--tilt-priors", type=float, nargs="+",
                         default=[RoadPlaneConfig.tilt_prior_deg], help="the road's tilt prior (degrees)")
    lengths.add_argument("--camera-height-m", type=float, default=KITTI_CAMERA_HEIGHT_M)
    lengths.add_argument("--checkpoint", help="LA-Pose checkpoint (default: bundled model)")
    lengths.set_defaults(func=study_lengths)
    distortion = sub.add_parser("distortion", help="odometry on a distorted camera's images, raw and rectified")
    distortion.add_argument("--data", nargs="+", required=True, help="labelled KITTI-format folders")
    distortion.add_argument("--fps", type=float, nargs="+", default=[2.0])
    distortion.add_argument("--distortion", type=float, nargs=5, default=[-0.25, 0.06, 0.0, 0.0, 0.0],
                            metavar=("K1", "K2", "P1", "P2", "K3"), help="the raw camera's plumb_bob coefficients")
    distortion.add_argument("--focal-gain", type=float, default=1.3,
                            help="the raw camera's focal length over the sequence's")
    distortion.add_argument("--max-windows", type=int, help="at most this many windows a sequence and rate")
    distortion.add_argument("--camera-height-m", type=float, default=KITTI_CAMERA_HEIGHT_M)
    distortion.add_argument("--checkpoint", help="LA-Pose checkpoint (default: bundled model)")
    distortion.set_defaults(func=study_distortion)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
