"""train.compare: the paired statistics of `sparse-rlvr compare` (hand-computed values)."""

from __future__ import annotations

import pandas as pd
import pytest

from train.compare import paired_comparison, paired_markdown, sign_test_p, student_t_two_sided_p


def test_student_t_p_values_match_tables():
    # two-sided critical values of Student's t with 4 df: t = 2.776 at p = 0.05, 4.604 at p = 0.01
    assert student_t_two_sided_p(2.776, 4) == pytest.approx(0.05, abs=2e-4)
    assert student_t_two_sided_p(-4.604, 4) == pytest.approx(0.01, abs=2e-4)
    assert student_t_two_sided_p(0.0, 4) == pytest.approx(1.0)


def test_sign_test_exact():
    # 5 seeds all better: 2 * (1/2)^5 = 0.0625 (never < 0.05 with 5 seeds); 4 vs 1: 2 * (1 + 5) / 32 = 0.375
    assert sign_test_p(5, 0) == pytest.approx(0.0625)
    assert sign_test_p(4, 1) == pytest.approx(0.375)


def test_paired_comparison_hand():
    runs = pd.DataFrame({
        "variant": ["none"] * 3 + ["x"] * 3,
        "seed": [0, 1, 2, 0, 1, 2],
        "mean@4": [0.50, 0.40, 0.60, 0.52, 0.43, 0.61],  # differences +0.02, +0.03, +0.01
    })
    p = paired_comparison(runs, ["mean@4"])
    row = p.iloc[0]
    # mean 0.02, std sqrt(((0)^2 + 0.01^2 + 0.01^2) / 2) = 0.01, t = 0.02 / (0.01 / sqrt 3) = 3.4641
    assert (row["variant"], row["n"], row["wins"], row["losses"]) == ("x", 3, 3, 0)
    assert row["mean_diff"] == pytest.approx(0.02) and row["std_diff"] == pytest.approx(0.01)
    assert row["t"] == pytest.approx(3.4641, abs=1e-3)
    assert 0.05 < row["p_t"] < 0.1  # t(2 df) two-sided: 4.303 at 0.05, 2.920 at 0.10
    assert "| x | mean@4 | +2.0 ± 1.0 |" in paired_markdown(p)
    assert paired_comparison(runs[runs["variant"] == "x"], ["mean@4"]) is None  # no baseline run
