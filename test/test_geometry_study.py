"""training/geometry_study.py, the studies behind the hybrid's inlier floor, the road's camera pitch,
the step-length fit and the node's rectification, on a labelled training sequence."""
from __future__ import annotations

import re
import sys


def run(study, monkeypatch, capsys, *argv: str) -> str:
    monkeypatch.setattr(sys, "argv", ["geometry_study.py", *argv])
    study.main()
    return capsys.readouterr().out


def test_pairs_bins_every_pair_and_scores_lapose(study, shared_data, monkeypatch, capsys):
    out = run(study, monkeypatch, capsys, "pairs", "--data", str(shared_data / "kitti" / "06_head"),
              "--gaps", "10", "--fps", "4")
    total = int(re.search(r"(\d+) pairs \((\d+) without", out).group(1))
    assert total == len(range(0, 51 - 10, 2))
    errors_table, parallax_table = out.split("Parallax (median", 1)
    row = r"^\| (?:\d+-\d+|>= \d+) \| (\d+) \|"
    binned = [int(m) for m in re.findall(row, errors_table, re.M)]
    without = int(re.search(r"\((\d+) without an essential matrix\)", out).group(1))
    assert sum(binned) + without == total
    # Pairs right or wrong by parallax: a subset of the pairs with 10 inliers or more.
    right_and_wrong = [(int(a), int(b)) for a, b in re.findall(
        r"^\| (?:\d+-\d+|>= \d+) \| (\d+) \|[^|]*\|[^|]*\| (\d+) \|", parallax_table, re.M)]
    assert len(right_and_wrong) == len(binned) - 1
    assert all(r + w <= n for (r, w), n in zip(right_and_wrong, binned[1:]))
    assert sum(r for r, _ in right_and_wrong) > 0
    lapose = re.search(r"^\| LA-Pose \| (\d+) \| ([\d.]+) \|", out, re.M)
    assert lapose and int(lapose.group(1)) % 15 == 0 and int(lapose.group(1)) > 0


def test_road_bias_follows_the_camera_pitch_assumed_and_rendered(study, shared_data, monkeypatch, capsys):
    out = run(study, monkeypatch, capsys, "road", "--data", str(shared_data / "kitti" / "07_head"),
              "--gaps", "10", "--pitches", "0", "1", "--tilt-priors", "3", "--added-pitches", "0", "0.5",
              "--motion-pitch")
    medians = {(float(added), float(pitch)): float(m) for added, pitch, m in re.findall(
        r"^\| ([\d.]+) \| 3 \| ([\d.]+) \| 10 \| \d+ \| \d+ \| ([+-][\d.]+) \|", out, re.M)}
    assert len(medians) == 4
    assert medians[0, 0] > 0.02 and medians[0, 1] < -0.02  # the unbiased pitch lies between
    # Frames re-rendered from a camera pitched 0.5 degrees further down: the road's true pitch moves
    # by as much, and a level assumption is that much further off (about as far as assuming 0.5
    # degrees too little moves it).
    assert 0.03 < medians[0.5, 0] - medians[0, 0] < 0.09
    assert medians[0.5, 1] > medians[0, 1] + 0.03
    # The direction of motion puts the pitch near 1 degree: above the length-unbiased 0.5.
    truth, found = (float(v) for v in re.search(
        r"^\| 07_head \| 10 \| \d+ \| ([+-][\d.]+) \| ([+-][\d.]+) \|", out, re.M).groups())
    assert 0.8 < truth < 1.3 and 0.6 < found < 1.3


def test_lengths_road_corrects_the_triangulated_chain(study, shared_data, monkeypatch, capsys):
    out = run(study, monkeypatch, capsys, "lengths", "--data", str(shared_data / "kitti" / "07_head"),
              "--fps", "2", "--ratio-sigmas", "0.05", "--road-sigmas", "0.08", "10")
    rows = {float(road): (int(n), float(s), float(m), float(a)) for n, road, a, s, m in re.findall(
        r"^\| 2 \| 10 \| (\d+) \| 0.05 \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", out, re.M)}
    assert set(rows) == {0.08, 10.0} and rows[0.08][0] == rows[10.0][0] > 0
    # The road's lengths fitted with the ratios give the better relative lengths than the chain
    # that the road only scales (a road sigma of 10).
    assert rows[0.08][1] < 0.8 * rows[10.0][1]
    # and reshaping the chain costs no direction: pooled AUC@5 at least the scaled chain's.
    assert 0.5 < rows[10.0][3] <= rows[0.08][3] + 0.005


def test_distortion_scores_raw_and_rectified_images(study, shared_data, monkeypatch, capsys):
    out = run(study, monkeypatch, capsys, "distortion", "--data", str(shared_data / "kitti" / "06_head"),
              "--fps", "4", "--max-windows", "1")
    rows = re.findall(r"^\| 06_head \| 4 \| (.+?) \| (pinhole|raw, as they are|raw, rectified) \| (\d+) \| "
                      r"([\d.]+) \| ([\d.]+) \| ([\d.]+|n/a) \|$", out, re.M)
    assert len(rows) == 12, out
    assert {r[0] for r in rows} == {"LA-Pose", "hybrid", "hybrid, road (1.65 m)", "classical"}
    assert all(int(r[2]) == 1 and 0 <= float(r[3]) <= 1 and float(r[4]) > 0 for r in rows)
    assert all((r[5] == "n/a") == (r[0] == "classical") for r in rows)  # classical: no metric scale
    # The straight-ahead prior on the same windows.
    assert re.search(r"^\| 06_head \| 4 \| prior: straight ahead.* \| any \| 1 \| [\d.]+ \| [\d.]+ \| n/a \|$",
                     out, re.M), out
