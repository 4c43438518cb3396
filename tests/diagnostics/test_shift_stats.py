"""`diagnostics.shift_stats.shift_stats`: hand-computed values, stable keys, agreement with numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diagnostics.shift_stats import DEFAULT_QUANTILES, DEFAULT_THRESHOLDS, DEFAULT_TOP_SHARES, shift_stats, stat_names


def test_shift_stats_by_hand():
    # Five tokens, the last masked out -> counted D = [0.3, 0.0, 0.1, 0.05], N = 4, ascending [0, .05, .1, .3], Σ = .45
    d = torch.tensor([[0.3, 0.0, 0.1, 0.05, 0.15]], dtype=torch.float64)  # float64: 0.05 is not above 0.05
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    h_base = torch.tensor([[1.0, 2.0, 3.0, 4.0, 99.0]])
    h_pol = torch.tensor([[2.0, 2.0, 2.0, 2.0, 99.0]])
    w = torch.tensor([[1.0, 1.0, 2.0, 1.0, 9.0]])
    s = shift_stats(d, measure="js", mask=mask, entropy_base=h_base, entropy_policy=h_pol, weights=w)
    assert s["n_tokens"] == 4.0
    assert s["js_mean"] == pytest.approx(0.1125) and s["js_max"] == pytest.approx(0.3)
    # linear interpolation at pos = q·(N − 1): p50 at 1.5 -> .05 + .5·.05; p90 at 2.7 -> .1 + .7·.2;
    # p95 at 2.85 -> .1 + .85·.2; p99 at 2.97 -> .1 + .97·.2
    assert s["js_p50"] == pytest.approx(0.075) and s["js_p90"] == pytest.approx(0.24)
    assert s["js_p95"] == pytest.approx(0.27) and s["js_p99"] == pytest.approx(0.294)
    # strictly greater: > .01 three tokens, > .05 two (.05 itself is not), > .1 one, > .2 one
    assert (s["frac_js_gt_0.01"], s["frac_js_gt_0.05"], s["frac_js_gt_0.1"], s["frac_js_gt_0.2"]) == \
        pytest.approx((0.75, 0.5, 0.25, 0.25))
    # top k%: max(1, ⌈k/100 · 4⌉) = 1 token for k = 1, 5, 10 -> .3 / .45
    for k in (1, 5, 10):
        assert s[f"js_top{k}pct_share"] == pytest.approx(2 / 3)
    # Gini: Σ i·x_i = 1·0 + 2·.05 + 3·.1 + 4·.3 = 1.6; G = 2·1.6 / (4·.45) − 5/4 = 0.52777...
    assert s["js_gini"] == pytest.approx(2 * 1.6 / 1.8 - 1.25)
    # high = D > 0.1 = token 0 only: base entropy high 1, low mean(2, 3, 4) = 3, all mean(1..4) = 2.5
    assert (s["entropy_base_mean"], s["entropy_base_high_mean"], s["entropy_base_low_mean"]) == (2.5, 1.0, 3.0)
    assert (s["entropy_policy_mean"], s["entropy_policy_high_mean"], s["entropy_policy_low_mean"]) == (2.0, 2.0, 2.0)
    # weights of the counted tokens, ascending [1, 1, 1, 2]: mean 1.25, p1 at .03 -> 1, p99 at 2.97 -> 1 + .97
    assert s["weight_mean"] == 1.25 and s["weight_max"] == 2.0 and s["weight_frac_not_one"] == 0.25
    assert s["weight_p1"] == 1.0 and s["weight_p50"] == 1.0 and s["weight_p99"] == pytest.approx(1.97)


def test_keys_are_stable_and_named_by_measure():
    names = stat_names("js")
    assert names[:3] == ["n_tokens", "js_mean", "js_max"]
    assert {f"js_p{q}" for q in DEFAULT_QUANTILES} | {f"frac_js_gt_{t:g}" for t in DEFAULT_THRESHOLDS} \
        | {f"js_top{k}pct_share" for k in DEFAULT_TOP_SHARES} <= set(names)
    empty = shift_stats(torch.zeros(0))  # no tokens: the same keys, every value NaN except the count
    assert list(empty) == names and empty["n_tokens"] == 0.0
    assert all(math.isnan(v) for k, v in empty.items() if k != "n_tokens")
    zero = shift_stats(np.zeros(5))  # Σ D = 0: shares and Gini undefined, not 0
    assert math.isnan(zero["js_gini"]) and math.isnan(zero["js_top1pct_share"]) and zero["js_mean"] == 0.0
    kl = shift_stats([0.5, 0.0], measure="kl_forward")
    assert "kl_forward_p99" in kl and "frac_kl_forward_gt_0.1" in kl and not any(k.startswith("js") for k in kl)
    assert set(stat_names("js", weights=True)) - set(names) == {"weight_mean", "weight_max", "weight_p1", "weight_p50",
                                                                "weight_p99", "weight_frac_not_one"}


def test_quantiles_match_numpy_and_errors():
    x = np.random.default_rng(0).exponential(0.02, size=1001)
    s = shift_stats(x)
    for q in DEFAULT_QUANTILES:
        assert s[f"js_p{q}"] == pytest.approx(np.quantile(x, q / 100), rel=1e-12)
    with pytest.raises(ValueError, match="NaN divergence"):
        shift_stats([0.1, float("nan")])
    with pytest.raises(ValueError, match="mask shape"):
        shift_stats([0.1, 0.2], mask=[1, 1, 1])
