"""PNG plots of a shift summary (matplotlib, Agg backend: no display needed).

    from diagnostics.plots import write_shift_plots, plot_evolution
    paths = write_shift_plots(table, summary, "out/")   # {"sparsity": Path, "entropy_vs_js": ..., ...}
    plot_evolution(per_step_frame, "out/evolution_quantiles.png", columns=["js_p50", "js_p95", "js_p99"])

One function per figure, each returning the PNG path. The JS histogram uses log-spaced bins
because the distribution is extremely skewed (most tokens sit near 0, a few near ln 2);
tokens with JS < 1e-8 are drawn in the first bin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from diagnostics.summary import high_divergence_threshold_of  # noqa: E402

LN2 = math.log(2.0)
JS_FLOOR = 1e-8


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sparsity(table: pd.DataFrame, summary: dict, path: str | Path) -> Path:
    """JS histogram (log x), JS CDF (log x, threshold lines) and the Lorenz curve of JS mass."""
    js = np.clip(table["js"].to_numpy(dtype=np.float64), JS_FLOOR, LN2)
    high = high_divergence_threshold_of(summary)
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    bins = np.geomspace(JS_FLOOR, LN2, 60)
    ax[0].hist(js, bins=bins, color="#c0392b", alpha=0.8)
    ax[0].set_xscale("log")
    ax[0].set_yscale("log")
    ax[0].axvline(high, color="k", ls="--", lw=1, label=f"JS = {high:g}")
    ax[0].set(xlabel="JS(base, policy) per token", ylabel="tokens", title=f"JS histogram ({len(js)} tokens)")
    ax[0].legend()

    xs = np.sort(js)
    ax[1].plot(xs, np.arange(1, len(xs) + 1) / max(len(xs), 1), color="#2c3e50")
    for t in summary.get("thresholds", []):
        ax[1].axvline(t, color="grey", ls=":", lw=1)
    ax[1].set_xscale("log")
    ax[1].set(xlabel="JS", ylabel="fraction of tokens ≤ JS", title="JS CDF", ylim=(0, 1.02))

    lor = summary["sparsity"].get("lorenz")
    if lor:
        ax[2].plot(lor["token_fraction"], lor["js_share"], color="#8e44ad", label="Lorenz curve")
    ax[2].plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="equal shift")
    g = summary["sparsity"].get("gini")
    ax[2].set(xlabel="fraction of tokens (lowest JS first)", ylabel="share of total JS",
              title=f"concentration (Gini {g:.3f})" if g is not None else "concentration")
    ax[2].legend()
    return _save(fig, path)


def plot_entropy_vs_js(summary: dict, path: str | Path) -> Path:
    """Mean base and policy entropy per JS bin, with the bin's token share on top."""
    bins = summary["entropy_vs_js"]
    labels = [f"[{b['js_lo']:.3g}, {b['js_hi']:.3g})" for b in bins]
    x = np.arange(len(bins))
    nz = lambda v: np.nan if v is None else v  # noqa: E731
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar(x - 0.2, [nz(b["entropy_base_mean"]) for b in bins], 0.4, label="base entropy", color="#2980b9")
    ax.bar(x + 0.2, [nz(b["entropy_policy_mean"]) for b in bins], 0.4, label="policy entropy", color="#e67e22")
    for xi, b in zip(x, bins):
        if b["share"]:
            ax.annotate(f"{100 * b['share']:.1f}%", (xi, 0), xytext=(0, -28), textcoords="offset points",
                        ha="center", fontsize=8, color="grey")
    ax.set_xticks(x, labels, rotation=20, fontsize=8)
    ax.set(ylabel="mean entropy (nats)", title="entropy per JS bin (grey: share of tokens)")
    ax.legend()
    return _save(fig, path)


def plot_position_profile(summary: dict, path: str | Path) -> Path:
    """Mean / p95 JS and the high-JS fraction per relative-position decile of the completion."""
    rows = summary["position"]
    d = [r["decile"] for r in rows]
    nz = lambda v: np.nan if v is None else v  # noqa: E731
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(d, [nz(r["js_mean"]) for r in rows], "o-", label="mean JS", color="#c0392b")
    ax.plot(d, [nz(r["js_p95"]) for r in rows], "s--", label="p95 JS", color="#7f8c8d")
    ax.set(xlabel="relative position in the completion (decile; 0 = start)", ylabel="JS",
           title="positional profile")
    ax2 = ax.twinx()
    ax2.bar(d, [nz(r["frac_high"]) for r in rows], alpha=0.2, color="#2c3e50",
            label=f"frac JS > {high_divergence_threshold_of(summary):g}")
    ax2.set_ylabel("fraction of high-JS tokens")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8)
    ax.set_xticks(range(10))
    return _save(fig, path)


def plot_topk_overlap(summary: dict, path: str | Path) -> Path:
    """Mean |top-k(base) ∩ top-k(policy)| / k for k = 1..5: high-JS tokens vs all tokens."""
    re = summary["reallocation"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label, color in (("topk_overlap_high", f"JS > {high_divergence_threshold_of(summary):g}", "#c0392b"),
                              ("topk_overlap_all", "all tokens", "#2980b9")):
        curve = re.get(key) or {}
        ks = [int(k) for k in curve]
        vals = [np.nan if v is None else v for v in curve.values()]
        ax.plot(ks, vals, "o-", label=label, color=color)
    ax.set(xlabel="k", ylabel="top-k overlap", ylim=(0, 1.05), title="top-k overlap base vs policy")
    ax.set_xticks(range(1, 6))
    ax.legend()
    return _save(fig, path)


def write_shift_plots(table: pd.DataFrame, summary: dict, output_dir: str | Path) -> dict[str, Path]:
    """All shift PNGs into `output_dir`; returns name -> path (the HTML report embeds them)."""
    out = Path(output_dir)
    return {
        "sparsity": plot_sparsity(table, summary, out / "js_sparsity.png"),
        "entropy_vs_js": plot_entropy_vs_js(summary, out / "entropy_vs_js.png"),
        "position": plot_position_profile(summary, out / "position_profile.png"),
        "topk_overlap": plot_topk_overlap(summary, out / "topk_overlap.png"),
    }


def plot_evolution(frame: pd.DataFrame, path: str | Path, *, columns: Sequence[str], x: str = "step",
                   title: str | None = None, ylabel: str | None = None, logy: bool = False) -> Path:
    """Line plot of per-step scalars (e.g. `scalar_metrics` rows, one per checkpoint) against `x`.

    Args:
        frame: one row per evaluation; must hold `x` and every name in `columns`.
        columns: the series to draw (e.g. ["frac_js_gt_0.1"], ["js_p50", "js_p95", "js_p99"],
            ["jaccard_with_final"]).
    """
    missing = [c for c in [x, *columns] if c not in frame.columns]
    if missing:
        raise ValueError(f"plot_evolution: columns {missing} are not in the frame (it has {list(frame.columns)})")
    f = frame.sort_values(x)
    fig, ax = plt.subplots(figsize=(7, 4))
    for c in columns:
        ax.plot(f[x], f[c], "o-", label=c)
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel=x, ylabel=ylabel or ", ".join(columns), title=title or "shift over training")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)
