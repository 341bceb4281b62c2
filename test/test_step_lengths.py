"""Step lengths fitted from ratios and road lengths (lapose_core.step_lengths)."""
import math

import numpy as np
import pytest

from lapose_core.step_lengths import Length, Ratio, fuse_log_lengths


def chain(log_lengths, sigma=0.05):
    return [Ratio(k, k + 1, float(log_lengths[k + 1] - log_lengths[k]), sigma)
            for k in range(len(log_lengths) - 1)]


def test_ratios_alone_are_the_chain():
    truth = np.log([5.0, 6.0, 4.5, 7.0, 7.0])
    fitted = fuse_log_lengths(5, chain(truth))
    # Only the ratios are known: the same profile, its mean log-length at 0.
    assert fitted == pytest.approx(truth - truth.mean(), abs=1e-9)


def test_road_lengths_set_the_level_and_correct_a_drifting_chain():
    rng = np.random.default_rng(0)
    fitted_errors, chained_errors = [], []
    for _ in range(20):
        truth = np.log(rng.uniform(4.0, 8.0, 15))
        drifting = chain(truth + np.cumsum(rng.normal(0.0, 0.05, 15)))  # every ratio a little off
        road = [Length(k, float(truth[k] + rng.normal(0.0, 0.05)), 0.08) for k in range(15)]
        fitted = fuse_log_lengths(15, drifting, road)
        chained = fuse_log_lengths(15, drifting)
        chained += np.mean([m.log_length for m in road]) - chained.mean()  # the chain, scaled by the road
        fitted_errors.append(np.abs(fitted - truth).mean())
        chained_errors.append(np.abs(chained - truth).mean())
    assert np.mean(fitted_errors) < 0.7 * np.mean(chained_errors)


def test_one_wrong_road_length_does_not_pull_the_others():
    truth = np.log(np.full(10, 5.0))
    road = [Length(k, float(truth[k]), 0.08) for k in range(10)]
    road[3] = Length(3, math.log(15.0), 0.08)  # a road aligned onto a shadow: three times too long
    fitted = fuse_log_lengths(10, chain(truth), road)
    least_squares = fuse_log_lengths(10, chain(truth), road, huber=1e9)
    assert np.abs(fitted - truth).max() < 0.4 * np.abs(least_squares - truth).max()
    assert np.exp(fitted).mean() == pytest.approx(5.0, rel=0.05)
