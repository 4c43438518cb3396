"""summarize / scalar_metrics on a hand-built 10-token table with hand-computed expectations."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from diagnostics.shift_stats import stat_names
from diagnostics.summary import gini, lorenz_curve, scalar_metrics, summarize, top_share

JS = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.02, 0.06, 0.15, 0.3]  # total 0.53


def _table() -> pd.DataFrame:
    n = len(JS)
    overlap = np.ones((n, 5))
    overlap[9] = [0.0, 0.5, 2 / 3, 0.75, 0.8]  # the one high-JS token whose top-1 changed
    return pd.DataFrame({
        "seq_id": [0] * 5 + [1] * 5,
        "position": list(range(10)),
        "rel_position": [i / 10 for i in range(10)],  # one token per decile
        "token_id": [3, 3, 4, 4, 4, 4, 4, 4, 3, 3],
        "token": ["the", "the", "x", "x", "x", "x", "x", "x", "the", "the"],
        "js": np.array(JS, dtype=np.float32),
        "entropy_base": [0.1] * 6 + [1.0, 2.0, 3.0, 4.0],
        "entropy_policy": [0.2] * 6 + [1.5, 2.5, 3.5, 4.5],
        "top1_base": [5] * 10,
        "top1_policy": [5] * 9 + [7],
        "base_rank_of_policy_top1": [0] * 9 + [4],
        "base_prob_of_policy_top1": [0.4] * 9 + [0.005],
        **{f"overlap@{k}": overlap[:, k - 1] for k in range(1, 6)},
    })


def test_sparsity_fractions_gini_and_shares():
    s = summarize(_table())
    sp = s["sparsity"]
    # 4 of 10 tokens above 0.01 (0.02, 0.06, 0.15, 0.3); 3 above 0.05; 2 above 0.1; 1 above 0.2
    assert sp["frac_js_gt"] == pytest.approx({"0.01": 0.4, "0.05": 0.3, "0.1": 0.2, "0.2": 0.1})
    assert sp["frac_js_le"]["0.1"] == pytest.approx(0.8)
    assert sp["js_mean"] == pytest.approx(0.053, abs=1e-6)
    # Gini, ascending x, i = 1..10: Σ i·x = 7·0.02 + 8·0.06 + 9·0.15 + 10·0.3 = 4.97
    # G = 2·4.97 / (10·0.53) − 11/10 = 0.775471...
    assert sp["gini"] == pytest.approx(2 * 4.97 / 5.3 - 1.1, abs=1e-6)
    # top 10% = 1 token holds 0.3/0.53; top 20% = 2 tokens hold 0.45/0.53
    assert sp["top_share"]["10%"] == pytest.approx(0.3 / 0.53, abs=1e-6)
    assert sp["top_share"]["20%"] == pytest.approx(0.45 / 0.53, abs=1e-6)
    # CDF is non-decreasing and ends at 1 (ln 2 is the JS maximum)
    cdf = sp["cdf"]["frac_le"]
    assert all(a <= b for a, b in zip(cdf, cdf[1:])) and cdf[-1] == 1.0
    lor = sp["lorenz"]
    assert lor["js_share"][0] == 0.0 and lor["js_share"][-1] == pytest.approx(1.0)
    # the lowest 60% of tokens hold no JS mass at all
    assert lor["js_share"][60] == pytest.approx(0.0)
    json.dumps(s)  # JSON-serialisable (None, not NaN)


def test_entropy_bins_positions_reallocation_identity():
    s = summarize(_table())
    bins = {(b["js_lo"], b["js_hi"]): b for b in s["entropy_vs_js"]}
    zero_bin = bins[(0.0, 1e-3)]
    assert zero_bin["count"] == 6 and zero_bin["entropy_base_mean"] == pytest.approx(0.1)
    # 0.3 falls in [0.3, ln 2] (bins are closed on the left)
    top_bin = bins[(0.3, math.log(2))]
    assert top_bin["count"] == 1 and top_bin["entropy_policy_mean"] == pytest.approx(4.5)
    assert sum(b["count"] for b in s["entropy_vs_js"]) == 10

    dec = s["position"]
    assert [d["count"] for d in dec] == [1] * 10  # rel 0.0, 0.1, ..., 0.9 -> deciles 0..9
    assert dec[9]["js_mean"] == pytest.approx(0.3) and dec[7]["js_mean"] == pytest.approx(0.06)
    assert dec[8]["frac_high"] == 1.0 and dec[7]["frac_high"] == 0.0

    re = s["reallocation"]
    # high set = tokens 8 (top-1 kept, rank 0, p=0.4) and 9 (top-1 changed, base rank 4, p=0.005)
    assert re["n_high"] == 2
    assert re["frac_top1_equal"] == pytest.approx(0.5)
    assert re["frac_policy_top1_in_base_top3"] == pytest.approx(0.5)
    assert re["frac_base_prob_lt_0.01"] == pytest.approx(0.5)
    # mean of [1,1,1,1,1] and [0, .5, 2/3, .75, .8]
    assert list(re["topk_overlap_high"].values()) == pytest.approx([0.5, 0.75, 5 / 6, 0.875, 0.9])

    ident = s["token_identity"]
    # "the" (id 3) is the whole high set, but only 2 of its 4 occurrences are high
    assert ident["tokens"] == [{"token_id": 3, "token": "the", "n_high": 2, "share_of_high_set": 1.0,
                                "n_total": 4, "frac_of_occurrences_high": 0.5}]
    assert ident["frac_high_in_mostly_low_types"] == 0.0  # 0.5 is not < 0.5


def test_scalar_metrics_flat_floats_and_empty_high_set():
    summary = summarize(_table())
    flat = scalar_metrics(summary)
    assert all(isinstance(v, float) for v in flat.values())
    # the flat scalars are diagnostics.shift_stats' keys (the trainer's shift/ names) first, then the extras
    assert list(flat)[: len(stat_names("js"))] == stat_names("js")
    assert flat["js_gini"] == pytest.approx(summary["sparsity"]["gini"])
    assert flat["entropy_base_high_mean"] == pytest.approx(3.5)  # JS > 0.1: tokens 8, 9 with base entropy 3, 4
    assert flat["frac_js_gt_0.1"] == pytest.approx(0.2)
    assert flat["js_p50"] == pytest.approx(0.0)
    assert flat["realloc_frac_in_base_top3"] == pytest.approx(0.5)
    # nothing above 0.5: reallocation undefined -> None in JSON, NaN in scalars (keys stay stable)
    s = summarize(_table(), high_divergence_threshold=0.5)
    assert s["reallocation"]["frac_top1_equal"] is None
    flat2 = scalar_metrics(s)
    assert set(flat2) == set(flat) and math.isnan(flat2["realloc_frac_top1_equal"])


def test_helpers_edge_cases():
    assert gini(np.ones(7)) == pytest.approx(0.0)  # perfectly equal
    assert gini(np.array([0.0, 0.0, 0.0, 1.0])) == pytest.approx(0.75)  # (n-1)/n for one holder
    assert gini(np.zeros(3)) is None and lorenz_curve(np.array([])) is None
    assert top_share(np.array([1.0, 1.0, 2.0]), 0.01) == pytest.approx(0.5)  # at least one token
    empty = summarize(_table().iloc[:0])
    assert empty["n_tokens"] == 0 and empty["sparsity"]["gini"] is None
    json.dumps(empty)
