"""Summary of a token table (from `diagnostics.shift.analyze`): the paper's five analyses as JSON.

    from diagnostics.summary import summarize, scalar_metrics
    summary = summarize(table)          # nested, JSON-serialisable (None where undefined)
    flat = scalar_metrics(summary)      # {"js_mean": ..., "frac_js_gt_0.1": ..., "js_gini": ...}

Sections (Meng et al., arXiv 2603.22446, §"token-level shift"; docs/diagnostics.md explains each):
- `sparsity`: fraction of tokens with JS above each threshold, JS quantiles, the CDF on a log
  grid, the Lorenz curve of total JS mass with its Gini coefficient, and the share of total JS
  held by the top x% of tokens.
- `entropy_vs_js`: base and policy entropy per JS bin.
- `position`: JS by relative-position decile of the completion.
- `reallocation`: at JS > `high_divergence_threshold`, how often the policy's top-1 equals base's top-1, lies in
  base's top-3, or had base probability < 0.01; the mean top-k overlap curve k = 1..5.
- `token_identity`: the most frequent tokens of the high-JS set, next to the share of all their
  occurrences that are high-JS (low share = context, not identity, decides).

Where we depart from the paper: its "near-zero" cut-off is unpublished; we report the fraction at
or below every threshold (`frac_js_le_*`, default thresholds 0.01 / 0.05 / 0.1 / 0.2).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from diagnostics.shift_stats import (
    DEFAULT_HIGH_DIVERGENCE_THRESHOLD,
    DEFAULT_QUANTILES,
    DEFAULT_THRESHOLDS,
    gini_sorted,
    shift_stats,
    top_share_sorted,
)

LN2 = math.log(2.0)
TOP_SHARES = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)  # "top x% of tokens hold y% of total JS"
CDF_GRID = tuple(float(x) for x in np.geomspace(1e-6, LN2, 31))  # log-spaced JS values up to ln 2
JS_BIN_EDGES = (0.0, 1e-3, 0.01, 0.05, 0.1, 0.2, 0.3, LN2)


def _f(x) -> float | None:
    """float for JSON; None for NaN / undefined (an empty set)."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def _fmt(t: float) -> str:
    return f"{t:g}"


def gini(values: np.ndarray) -> float | None:
    """Gini coefficient of non-negative values (`diagnostics.shift_stats.gini_sorted`); None when undefined."""
    return _f(gini_sorted(torch.sort(torch.as_tensor(np.asarray(values, dtype=np.float64))).values))


def lorenz_curve(values: np.ndarray, points: int = 101) -> dict[str, list[float]] | None:
    """Lorenz curve of the JS mass: share of total JS held by the lowest-JS fraction f of tokens."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total <= 0:
        return None
    cum = np.concatenate([[0.0], np.cumsum(x) / total])  # cum[j] = share of the lowest j tokens
    frac = np.linspace(0.0, 1.0, points)
    share = np.interp(frac * n, np.arange(n + 1), cum)
    return {"token_fraction": frac.tolist(), "js_share": share.tolist()}


def top_share(values: np.ndarray, fraction: float) -> float | None:
    """Share of total JS held by the top `fraction` of tokens (`diagnostics.shift_stats.top_share_sorted`)."""
    return _f(top_share_sorted(torch.sort(torch.as_tensor(np.asarray(values, dtype=np.float64))).values, fraction))


def summarize(
    table: pd.DataFrame,
    *,
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS,
    high_divergence_threshold: float = DEFAULT_HIGH_DIVERGENCE_THRESHOLD,
    js_bin_edges: tuple[float, ...] = JS_BIN_EDGES,
    top_tokens: int = 20,
) -> dict:
    """The paper's analyses of one token table, as a JSON-serialisable dict.

    Args:
        table: `analyze(...)` output (needs js, entropies, top-1s, base rank/prob of policy top-1,
            overlap@k, rel_position, token_id, token).
        thresholds: JS cut-offs for the sparsity fractions.
        high_divergence_threshold: "high divergence" cut-off (paper: 0.1) for reallocation and token identity.
        js_bin_edges: bins for entropy vs JS (last bin closed on the right).
        top_tokens: how many tokens of the high-JS set to list.
    """
    if "js" not in table.columns:
        raise ValueError("the token table has no 'js' column; build it with diagnostics.shift.analyze")
    js = table["js"].to_numpy(dtype=np.float64)  # (N,)
    n = len(js)
    high = js > high_divergence_threshold  # (N,)
    out: dict = {
        "n_tokens": int(n),
        "n_sequences": int(table["seq_id"].nunique()) if "seq_id" in table else None,
        "high_divergence_threshold": float(high_divergence_threshold),
        "thresholds": [float(t) for t in thresholds],
    }

    # ---- the flat statistics (one implementation: diagnostics.shift_stats) ---------------------------
    ent = {f"entropy_{w}": table[f"entropy_{w}"].to_numpy(dtype=np.float64) if f"entropy_{w}" in table else None
           for w in ("base", "policy")}
    stats = shift_stats(js, measure="js", entropy_base=ent["entropy_base"], entropy_policy=ent["entropy_policy"],
                        thresholds=thresholds, high_divergence_threshold=high_divergence_threshold)
    out["scalars"] = {k: _f(v) for k, v in stats.items()}

    # ---- sparsity (the nested view the report and plots read; values from `stats`) ---------------
    sparsity = {
        "frac_js_gt": {_fmt(t): _f(stats[f"frac_js_gt_{t:g}"]) for t in thresholds},
        "frac_js_le": {_fmt(t): _f(1.0 - stats[f"frac_js_gt_{t:g}"]) for t in thresholds},
        "js_mean": _f(stats["js_mean"]),
        "js_quantiles": {f"p{p}": _f(stats[f"js_p{p}"]) for p in DEFAULT_QUANTILES},
        "js_max": _f(stats["js_max"]),
        "cdf": {"js": list(CDF_GRID),
                "frac_le": [_f((js <= g).mean()) if n else None for g in CDF_GRID]},
        "lorenz": lorenz_curve(js),
        "gini": _f(stats["js_gini"]),
        "top_share": {_fmt(100 * f) + "%": top_share(js, f) for f in TOP_SHARES},
    }
    out["sparsity"] = sparsity

    # ---- entropy vs divergence -------------------------------------------------------------------
    edges = np.asarray(js_bin_edges, dtype=np.float64)
    # bin j holds edges[j] <= js < edges[j+1]; the last bin also takes js == edges[-1]
    bin_idx = np.clip(np.searchsorted(edges, js, side="right") - 1, 0, len(edges) - 2)
    bins = []
    for j in range(len(edges) - 1):
        sel = bin_idx == j
        cnt = int(sel.sum())
        row = {"js_lo": float(edges[j]), "js_hi": float(edges[j + 1]), "count": cnt,
               "share": _f(cnt / n) if n else None}
        for col in ("entropy_base", "entropy_policy"):
            v = table[col].to_numpy(dtype=np.float64)[sel] if col in table else np.array([])
            row[f"{col}_mean"] = _f(v.mean()) if len(v) else None
            row[f"{col}_median"] = _f(np.median(v)) if len(v) else None
        bins.append(row)
    out["entropy_vs_js"] = bins

    # ---- positional concentration ---------------------------------------------------------------
    deciles = []
    if "rel_position" in table:
        # +1e-6: a float32-stored 0.7 (= 0.69999999) still lands in decile 7
        dec = np.clip(np.floor(table["rel_position"].to_numpy(dtype=np.float64) * 10 + 1e-6), 0, 9).astype(int)
        for d in range(10):
            sel = dec == d
            v = js[sel]
            deciles.append({"decile": d, "count": int(sel.sum()),
                            "js_mean": _f(v.mean()) if len(v) else None,
                            "js_median": _f(np.median(v)) if len(v) else None,
                            "js_p95": _f(np.quantile(v, 0.95)) if len(v) else None,
                            "frac_high": _f((v > high_divergence_threshold).mean()) if len(v) else None})
    out["position"] = deciles

    # ---- probability-mass reallocation at high-JS positions --------------------------------------
    hi = table[high]
    n_hi = len(hi)
    overlap_cols = sorted((c for c in table.columns if c.startswith("overlap@")), key=lambda c: int(c[8:]))

    def mean_or_none(series) -> float | None:
        return _f(series.mean()) if len(series) else None

    out["reallocation"] = {
        "n_high": int(n_hi),
        "frac_top1_equal": mean_or_none(hi["top1_policy"] == hi["top1_base"]) if n_hi else None,
        "frac_policy_top1_in_base_top3": mean_or_none(hi["base_rank_of_policy_top1"] < 3) if n_hi else None,
        "frac_base_prob_lt_0.01": mean_or_none(hi["base_prob_of_policy_top1"] < 0.01) if n_hi else None,
        "topk_overlap_high": {c[8:]: mean_or_none(hi[c]) for c in overlap_cols},
        "topk_overlap_all": {c[8:]: mean_or_none(table[c]) for c in overlap_cols},
    }

    # ---- token identity vs context ---------------------------------------------------------------
    ident: dict = {"tokens": [], "frac_high_in_mostly_low_types": None}
    if n and "token_id" in table:
        g = pd.DataFrame({"token_id": table["token_id"].to_numpy(), "high": high})
        per = g.groupby("token_id")["high"].agg(n_total="size", n_high="sum")
        per["frac_high"] = per["n_high"] / per["n_total"]
        names = (table.drop_duplicates("token_id").set_index("token_id")["token"]
                 if "token" in table else pd.Series(dtype=object))
        top = per[per["n_high"] > 0].sort_values(["n_high", "n_total"], ascending=[False, False]).head(top_tokens)
        ident["tokens"] = [
            {"token_id": int(tid), "token": str(names.get(tid, tid)), "n_high": int(r.n_high),
             "share_of_high_set": _f(r.n_high / n_hi), "n_total": int(r.n_total),
             "frac_of_occurrences_high": _f(r.frac_high)}
            for tid, r in top.iterrows()
        ]
        if n_hi:
            # of all high-JS positions, the share whose token type is high-JS in under half its uses
            mostly_low = per.index[per["frac_high"] < 0.5]
            ident["frac_high_in_mostly_low_types"] = _f(g.loc[high, "token_id"].isin(mostly_low).mean())
    out["token_identity"] = ident
    return out


def high_divergence_threshold_of(summary: dict) -> float:
    """The summary's high-divergence threshold (summaries written before issue 18 call it `high_js`)."""
    return float(summary.get("high_divergence_threshold", summary.get("high_js", DEFAULT_HIGH_DIVERGENCE_THRESHOLD)))


def scalar_metrics(summary: dict) -> dict[str, float]:
    """Flatten a summary into `name -> float` for loggers (NaN where undefined, so keys are stable).

    Keys: the `diagnostics.shift_stats.shift_stats` keys of the JS column (`n_tokens`, `js_mean`,
    `js_p50/p90/p95/p99`, `js_max`, `frac_js_gt_<t>`, `js_top{1,5,10}pct_share`, `js_gini`,
    `entropy_{base,policy}_{mean,high_mean,low_mean}`; docs/vocabulary.md), then `n_high`,
    `js_mean_decile_0..9`, `realloc_frac_top1_equal`, `realloc_frac_in_base_top3`,
    `realloc_frac_base_prob_lt_0.01`, `overlap_high@1..5`.
    """
    nan = float("nan")

    def v(x) -> float:
        return nan if x is None else float(x)

    if "scalars" not in summary:
        raise ValueError("this summary has no 'scalars' section (written by an older sparse-rlvr); re-run the "
                         "analysis (sparse-rlvr shift / evolution) to rebuild it")
    re = summary["reallocation"]
    out: dict[str, float] = {k: v(val) for k, val in summary["scalars"].items()}
    out["n_high"] = float(re["n_high"])
    for row in summary.get("position", []):
        out[f"js_mean_decile_{row['decile']}"] = v(row["js_mean"])
    out["realloc_frac_top1_equal"] = v(re["frac_top1_equal"])
    out["realloc_frac_in_base_top3"] = v(re["frac_policy_top1_in_base_top3"])
    out["realloc_frac_base_prob_lt_0.01"] = v(re["frac_base_prob_lt_0.01"])
    for k, val in re["topk_overlap_high"].items():
        out[f"overlap_high@{k}"] = v(val)
    return out
