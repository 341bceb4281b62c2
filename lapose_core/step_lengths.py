"""A window's step lengths from every measurement of them, fitted together.

Two kinds of measurement, each with its own error:

* the **ratio** of two step lengths: points triangulated by two consecutive keyframe pairs (feature
  geometry; a few per cent), or, where geometry has none, LA-Pose's own two steps (much weaker), or
  nothing at all (a constant speed, weakest);
* the **length** of one step in metres: the road aligned between the pair's two frames, for a camera
  at a known height (:mod:`lapose_core.road_plane`; about 5 % each).

Chaining the ratios alone lets every ratio's error carry into every later step, and a missing ratio
(common when keyframes are a second apart and few points are seen by three frames) breaks the chain.
Fitting all of them at once by weighted least squares on log-lengths lets the road's independent
lengths hold the chain in place and the ratios smooth the road's noise. A Huber loss (iteratively
reweighted) keeps one wrong measurement (a road aligned onto a shadow, a ratio of a few far points)
from pulling the others. With ratios only, the fit is the chain itself.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np


class Ratio(NamedTuple):
    """log(length[later] / length[earlier]) measured with standard deviation ``sigma`` (log units)."""

    earlier: int
    later: int
    log_ratio: float
    sigma: float


class Length(NamedTuple):
    """log(length[step] in metres) measured with standard deviation ``sigma`` (log units)."""

    step: int
    log_length: float
    sigma: float


def fuse_log_lengths(num_steps: int, ratios: Sequence[Ratio], lengths: Sequence[Length] = (),
                     huber: float = 2.0, iterations: int = 10) -> np.ndarray:
    """The (num_steps,) log step lengths that best fit ``ratios`` and ``lengths``.

    Every step must be reached by the ratios (a chain through the window); without ``lengths`` the
    overall level is free and the mean log-length is 0. ``huber`` is in standard deviations: a
    measurement further off than that counts linearly, not squared.
    """
    rows = len(ratios) + len(lengths)
    A, b, sigma = np.zeros((rows, num_steps)), np.zeros(rows), np.ones(rows)
    for r, m in enumerate(ratios):
        A[r, m.earlier], A[r, m.later], b[r], sigma[r] = -1.0, 1.0, m.log_ratio, m.sigma
    for r, m in enumerate(lengths, start=len(ratios)):
        A[r, m.step], b[r], sigma[r] = 1.0, m.log_length, m.sigma
    weights = 1.0 / sigma
    for _ in range(iterations):
        x = np.linalg.lstsq(A * weights[:, None], b * weights, rcond=None)[0]
        z = np.abs(A @ x - b) / sigma
        weights = np.sqrt(np.minimum(1.0, huber / np.maximum(z, 1e-12))) / sigma
    if not len(lengths):
        x -= x.mean()
    return x
