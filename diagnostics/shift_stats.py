"""The shift statistics of a set of per-token columns: one function, one set of names and defaults.

    from diagnostics.shift_stats import shift_stats
    stats = shift_stats(d, measure="js", mask=mask, entropy_base=h_b, entropy_policy=h_p)
    # {"n_tokens": 412.0, "js_mean": ..., "js_p99": ..., "frac_js_gt_0.1": ..., "js_gini": ..., ...}

Every place that reports the base-vs-policy shift as scalars calls `shift_stats`: the trainer's
`shift/*` metrics (`train.trainer`), the probe callback's `shift_probe/*` and the flat scalars of
`summary.json` (`diagnostics.summary.scalar_metrics`), and the `evolution.csv` columns
(`diagnostics.evolution.js_stats`). The key names are the ones of docs/vocabulary.md; the measure's
short name (`js`, `kl_forward`, `kl_reverse`, `tv`, `k1`, `abs_k1`, `k3`) is part of every
divergence key, so one chart per name in wandb shows training-time and probe-time values together.

Keys (m = the measure name, N = tokens with mask 1, D ascending = x_1 <= ... <= x_N):

    n_tokens                              N
    {m}_mean, {m}_max                     mean / max of D
    {m}_p{q}                              quantile q/100 of D, linear interpolation (numpy.quantile's default)
    frac_{m}_gt_{t:g}                     share of tokens with D > t
    {m}_top{k}pct_share                   Σ of the top max(1, ⌈k/100 · N⌉) D / Σ D
    {m}_gini                              2 Σ_i i·x_i / (N Σ x) − (N + 1)/N   (0 = all equal, → 1 = one token)
    entropy_{base,policy}_mean            mean next-token entropy (nats)
    entropy_{base,policy}_{high,low}_mean the same over tokens with D > high_divergence_threshold / the rest
    weight_{mean,max,p1,p50,p99,frac_not_one}   advantage weights (only when `weights` is given)

Undefined values (no tokens, Σ D = 0, no high token, an entropy column of NaN) are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

DEFAULT_QUANTILES: tuple[int, ...] = (50, 90, 95, 99)  # percent
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2)  # D cut-offs of the sparsity fractions
DEFAULT_TOP_SHARES: tuple[int, ...] = (1, 5, 10)  # percent of tokens
DEFAULT_HIGH_DIVERGENCE_THRESHOLD: float = 0.1  # "high divergence" (Meng et al., arXiv 2603.22446: JS > 0.1)
WEIGHT_QUANTILES: tuple[int, ...] = (1, 50, 99)  # percent

NAN = float("nan")


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64)
    return torch.from_numpy(np.array(x, dtype=np.float64))  # a copy: the caller's array may be read-only


def quantile_sorted(asc: torch.Tensor, q: float) -> float:
    """Quantile `q` in [0, 1] of an ascending 1-D tensor, linear interpolation (numpy's default method).

    `torch.quantile` refuses inputs above 16M elements, so this reads the two neighbours directly.
    NaN for an empty tensor.
    """
    n = asc.numel()
    if n == 0:
        return NAN
    pos = q * (n - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return float(asc[lo] + (asc[hi] - asc[lo]) * (pos - lo))


def gini_sorted(asc: torch.Tensor) -> float:
    """Gini coefficient of non-negative ascending values; NaN when empty or all zero.

    G = 2 Σ_i i·x_i / (n Σ_i x_i) − (n + 1) / n,  i = 1..n, x ascending.
    """
    n = asc.numel()
    total = float(asc.sum()) if n else 0.0
    if n == 0 or total <= 0:
        return NAN
    i = torch.arange(1, n + 1, dtype=asc.dtype, device=asc.device)
    return float(2.0 * (i * asc).sum() / (n * total) - (n + 1) / n)


def top_share_sorted(asc: torch.Tensor, fraction: float) -> float:
    """Share of Σ x held by the largest max(1, ⌈fraction · n⌉) values of ascending `asc`; NaN if Σ x <= 0."""
    n = asc.numel()
    total = float(asc.sum()) if n else 0.0
    if n == 0 or total <= 0:
        return NAN
    k = max(1, math.ceil(fraction * n - 1e-9))  # -1e-9: 0.05 · 100 is 5.000000000000001 in floats
    return float(asc[n - k:].sum() / total)


def _mean(x: torch.Tensor) -> float:
    """Mean, NaN for no values; NaN entries propagate (an entropy column the caller does not have)."""
    return float(x.mean()) if x.numel() else NAN


def shift_stats(
    divergence,
    *,
    measure: str = "js",
    mask=None,
    entropy_base=None,
    entropy_policy=None,
    weights=None,
    quantiles: Sequence[int] = DEFAULT_QUANTILES,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    top_shares: Sequence[int] = DEFAULT_TOP_SHARES,
    high_divergence_threshold: float = DEFAULT_HIGH_DIVERGENCE_THRESHOLD,
) -> dict[str, float]:
    """The flat shift statistics of one set of tokens (key names: the module docstring).

    Args:
        divergence: per-token D, any shape (`(B, T)`, `(N,)`), a tensor or array-like; NaN entries
            under the mask are an error (the caller decides what a non-finite D means).
        measure: the short name of D's measure; it prefixes the divergence keys.
        mask: same shape as `divergence`, 1/True for the tokens to count (default: all).
        entropy_base, entropy_policy: per-token entropies (nats), same shape; None -> NaN keys.
        weights: per-token advantage weights, same shape; adds the `weight_*` keys.
        quantiles: percentages for `{m}_p{q}`; thresholds: cut-offs for `frac_{m}_gt_{t}`;
        top_shares: percentages for `{m}_top{k}pct_share`; high_divergence_threshold: the high/low entropy split.

    Returns:
        `{key: float}`, identical key set for any input (NaN where undefined).

    Raises:
        ValueError: shapes differ, or D is NaN on a counted token.
    """
    d = _as_tensor(divergence)
    valid = torch.ones_like(d, dtype=torch.bool) if mask is None else _as_tensor(mask).to(d.device) != 0
    if valid.shape != d.shape:
        raise ValueError(f"mask shape {tuple(valid.shape)} differs from the divergence's {tuple(d.shape)}")
    d = d[valid]  # (N,)
    if bool(torch.isnan(d).any()):
        raise ValueError(f"{int(torch.isnan(d).sum())} counted tokens have a NaN divergence ({measure}); mask them "
                         "out or replace them before computing shift statistics")
    asc = torch.sort(d).values  # (N,)
    n = asc.numel()
    m = measure
    out: dict[str, float] = {"n_tokens": float(n), f"{m}_mean": _mean(asc), f"{m}_max": float(asc[-1]) if n else NAN}
    for q in quantiles:
        out[f"{m}_p{q:g}"] = quantile_sorted(asc, q / 100)
    for t in thresholds:
        out[f"frac_{m}_gt_{t:g}"] = float((asc > t).double().mean()) if n else NAN
    for k in top_shares:
        out[f"{m}_top{k:g}pct_share"] = top_share_sorted(asc, k / 100)
    out[f"{m}_gini"] = gini_sorted(asc)
    high = d > high_divergence_threshold  # (N,)
    for name, col in (("base", entropy_base), ("policy", entropy_policy)):
        if col is None:
            ent = torch.full_like(d, NAN)
        else:
            ent = _as_tensor(col).to(d.device)
            if ent.shape != valid.shape:
                raise ValueError(f"entropy_{name} shape {tuple(ent.shape)} differs from the divergence's "
                                 f"{tuple(valid.shape)}")
            ent = ent[valid]
        out[f"entropy_{name}_mean"] = _mean(ent)
        out[f"entropy_{name}_high_mean"] = _mean(ent[high])
        out[f"entropy_{name}_low_mean"] = _mean(ent[~high])
    if weights is not None:
        w = _as_tensor(weights).to(d.device)
        if w.shape != valid.shape:
            raise ValueError(f"weights shape {tuple(w.shape)} differs from the divergence's {tuple(valid.shape)}")
        w_asc = torch.sort(w[valid]).values
        out["weight_mean"] = _mean(w_asc)
        out["weight_max"] = float(w_asc[-1]) if n else NAN
        for q in WEIGHT_QUANTILES:
            out[f"weight_p{q:g}"] = quantile_sorted(w_asc, q / 100)
        out["weight_frac_not_one"] = float((w_asc != 1.0).double().mean()) if n else NAN
    return out


def stat_names(measure: str = "js", *, weights: bool = False) -> list[str]:
    """The keys `shift_stats` returns for `measure` with the default settings (docs, tests, CSV order)."""
    return list(shift_stats(torch.zeros(0), measure=measure, weights=torch.zeros(0) if weights else None))


__all__ = ["DEFAULT_HIGH_DIVERGENCE_THRESHOLD", "DEFAULT_QUANTILES", "DEFAULT_THRESHOLDS", "DEFAULT_TOP_SHARES",
           "gini_sorted", "quantile_sorted", "shift_stats", "stat_names", "top_share_sorted"]
