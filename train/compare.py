"""`sparse-rlvr compare`: train advantage-weighting variants x seeds and rank them.

    sparse-rlvr compare --config train/recipes/tiny_grpo.yaml \
        --variants none,sigmoid_high,sigmoid_low,top_quantile --seeds 0,1,2 --output-dir outputs/compare

Every run is `python -m train.grpo --config RECIPE <variant args> --seed S --output_dir DIR/<variant>/seed<S>`
with the recipe's final evaluation switched on, so each (variant, seed) pair sees the same prompts in
the same order and the same generation seeds as every other variant with that seed. Runs go one
after another on this machine; a run whose `final_eval.json` exists is reused (an interrupted
compare resumes, each run itself resuming from its last checkpoint). On a multi-GPU node, launch
each run yourself (the command is printed and written to `commands.sh`) with
`accelerate launch --config_file accelerate_configs/zero2.yaml train/grpo.py ...`, then re-run
`compare` with the same arguments to collect the table.

Writes to --output-dir: `runs.csv` (one row per run), `table.csv` + `table.md` (mean ± std over
seeds of held-out mean@K, pass@K, final reward), `curves.csv` (every logged step of every run),
`accuracy.png`, `reward_curves.png` and `shift_curves.png`. With wandb, runs share the group
`--group`, so the variants overlay in one workspace.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
from pathlib import Path

from train.pipeline import grpo_command

logger = logging.getLogger("train.compare")

# named variant -> GRPO arguments (any other name is passed as `--weighting NAME`)
VARIANTS: dict[str, list[str]] = {
    "none": {"weighting": "none"},
    "sigmoid_high": {"weighting": "sigmoid", "weighting_alpha": 10.0, "weighting_s": 1.0, "weighting_scale": "auto"},
    "sigmoid_low": {"weighting": "sigmoid", "weighting_alpha": -10.0, "weighting_s": 1.0, "weighting_scale": "auto"},
    "linear": {"weighting": "linear"},
    "normalized": {"weighting": "normalized"},
    "top_quantile": {"weighting": "top_quantile", "weighting_rho": 0.2},
    "random_quantile": {"weighting": "random_quantile", "weighting_rho": 0.2},
    # TRL's own 80/20 rule (Wang et al., arXiv 2506.01939): loss on the 20% highest-entropy tokens, no D weighting
    "entropy_8020": {"weighting": "none", "top_entropy_quantile": 0.2},
}
BASELINE = "none"  # the paired comparison's reference variant
SHIFT_KEYS = ("shift/js_mean", "shift/js_p99", "shift/frac_js_gt_0.01", "shift/weight_mean",
              "shift/weight_p99")  # measure js (default)


def variant_settings(name: str) -> dict:
    """The GRPO settings (train.grpo field names) of a variant; any registered weighting name is a variant too."""
    return dict(VARIANTS.get(name, {"weighting": name}))


def run_command(config: str, variant: str, seed: int, out: Path, extra: list[str]) -> list[str]:
    """`train.pipeline.grpo_command` for one (variant, seed) run: every name checked against the entry point."""
    return grpo_command(config, {**variant_settings(variant), "seed": seed, "output_dir": str(out),
                                 "resume_from_checkpoint": "true", "run_name": f"{variant}-seed{seed}"}, extra)


def _final_metrics(run_dir: Path) -> dict:
    ev = json.loads((run_dir / "final_eval.json").read_text())
    row = {k: v for k, v in ev.items() if k.startswith(("mean@", "pass@"))}
    state = run_dir / "trainer_state.json"
    history = json.loads(state.read_text())["log_history"] if state.exists() else []
    rewards = [h["reward"] for h in history if "reward" in h]
    row["final_reward"] = sum(rewards[-3:]) / len(rewards[-3:]) if rewards else float("nan")
    return row


def _history(run_dir: Path) -> list[dict]:
    state = run_dir / "trainer_state.json"
    return json.loads(state.read_text())["log_history"] if state.exists() else []


def build_parser() -> argparse.ArgumentParser:
    from diagnostics.cli_args import add_verbose_argument

    p = argparse.ArgumentParser(prog="sparse-rlvr compare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=str(Path(__file__).resolve().parent / "recipes" / "tiny_grpo.yaml"),
                   help="GRPO recipe shared by every run")
    p.add_argument("--variants", default="none,sigmoid_high,sigmoid_low,top_quantile",
                   help=f"comma-separated variants: {', '.join(VARIANTS)} or any weighting name")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--output-dir", required=True, help="one folder per variant/seed, plus the tables and plots")
    p.add_argument("--eval-num-samples", type=int, default=8, help="K of the held-out mean@K after each run")
    p.add_argument("--base", default=None,
                   help="the base model every run starts from (sets --model_name_or_path; default: the recipe's)")
    p.add_argument("--group", default=None, help="wandb group (default: the output dir's name)")
    p.add_argument("--dry-run", action="store_true", help="only write commands.sh (e.g. for a GPU cluster)")
    add_verbose_argument(p)
    p.add_argument("extra", nargs=argparse.REMAINDER,
                   help="after `--`: extra train/grpo.py arguments for every run, e.g. -- --max_steps 100")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"sparse-rlvr compare: error: --seeds {args.seeds!r} is not a comma-separated list of "
                         "integers. Fix: e.g. --seeds 0,1,2") from None
    if not variants or not seeds:
        raise SystemExit("sparse-rlvr compare: error: need at least one variant and one seed")
    if not Path(args.config).exists():
        raise SystemExit(f"sparse-rlvr compare: error: --config {args.config!r} does not exist")
    from train.weighting import WEIGHTING_REGISTRY

    unknown = [v for v in variants if v not in VARIANTS and v not in WEIGHTING_REGISTRY]
    if unknown:
        raise SystemExit(f"sparse-rlvr compare: error: unknown variant(s) {unknown}; choose from "
                         f"{sorted(set(VARIANTS) | set(WEIGHTING_REGISTRY))}")
    extra = [a for a in args.extra if a != "--"]
    extra += ["--eval_num_samples", str(args.eval_num_samples)]  # scored with the run's own reward settings
    if args.base is not None:
        if not Path(args.base).is_dir():
            raise SystemExit(f"sparse-rlvr compare: error: --base {args.base!r} is not a directory. Fix: build one "
                             "with `sparse-rlvr tiny-base --output-dir DIR`")
        extra += ["--model_name_or_path", str(args.base)]
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_RUN_GROUP", args.group or out.name)
    plan = [(v, s, out / v / f"seed{s}") for v in variants for s in seeds]
    (out / "commands.sh").write_text("#!/usr/bin/env bash\nset -e\n" + "".join(
        shlex.join(run_command(args.config, v, s, d, extra)) + "\n" for v, s, d in plan))
    if args.dry_run:
        print(f"wrote {out / 'commands.sh'}")
        return 0

    from tqdm.auto import tqdm

    for v, s, d in tqdm(plan, desc="compare runs", unit="run"):
        if (d / "final_eval.json").exists():
            logger.info("[compare] %s seed %d: done, reusing %s", v, s, d)
            continue
        logger.info("[compare] %s seed %d -> %s", v, s, d)
        subprocess.run(run_command(args.config, v, s, d, extra), check=True)
    collect(plan, out)
    return 0


def collect(plan: list[tuple[str, int, Path]], out: Path) -> None:
    """Tables and plots from finished runs."""
    import pandas as pd

    rows, curves = [], []
    for v, s, d in plan:
        rows.append({"variant": v, "seed": s, **_final_metrics(d)})
        for h in _history(d):
            if "step" in h:
                curves.append({"variant": v, "seed": s, **{k: h[k] for k in h if isinstance(h[k], (int, float))}})
    runs = pd.DataFrame(rows)
    runs.to_csv(out / "runs.csv", index=False)
    pd.DataFrame(curves).to_csv(out / "curves.csv", index=False)
    metrics = [c for c in runs.columns if c not in ("variant", "seed")]
    agg = runs.groupby("variant", sort=False)[metrics].agg(["mean", "std"])
    agg.to_csv(out / "table.csv")
    n_seeds = runs.groupby("variant").size().max()
    lines = ["| variant | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for v in agg.index:
        cells = [f"{100 * agg.loc[v, (m, 'mean')]:.1f} ± {100 * (agg.loc[v, (m, 'std')] or 0):.1f}"
                 if m != "final_reward" else f"{agg.loc[v, (m, 'mean')]:.3f} ± {agg.loc[v, (m, 'std')] or 0:.3f}"
                 for m in metrics]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    lines.append(f"\nmean ± std over {n_seeds} seeds (accuracies in %, held-out split).")
    paired = paired_comparison(runs, metrics)
    if paired is not None:
        paired.to_csv(out / "paired.csv", index=False)
        lines += ["", paired_markdown(paired)]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(runs, pd.DataFrame(curves), out)


def student_t_two_sided_p(t: float, df: int) -> float:
    """Two-sided p-value of Student's t with `df` degrees of freedom: 2 P(T > |t|).

    P(|T| < |t|) = ∫_{-|t|}^{|t|} pdf, pdf(x) = Γ((ν+1)/2) / (√(νπ) Γ(ν/2)) (1 + x²/ν)^{-(ν+1)/2}, integrated
    with Simpson's rule on [0, |t|] (4000 intervals; error < 1e-9 for the |t| < 100 that matter here).
    """
    import math

    if df < 1:
        return float("nan")
    if not math.isfinite(t):
        return 0.0 if abs(t) == math.inf else float("nan")
    a = abs(t)
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def pdf(x):
        return c * (1 + x * x / df) ** (-(df + 1) / 2)

    n = 4000
    h = a / n
    s = pdf(0) + pdf(a) + sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, n))
    return max(0.0, 1.0 - 2.0 * s * h / 3.0)


def sign_test_p(wins: int, losses: int) -> float:
    """Exact two-sided sign test: 2 · P(Binomial(n, ½) <= min(wins, losses)), n = wins + losses (ties dropped)."""
    import math

    n = wins + losses
    if n == 0:
        return float("nan")
    k = min(wins, losses)
    return min(1.0, 2.0 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def paired_comparison(runs, metrics: list[str], baseline: str = BASELINE):
    """Per-seed differences `variant − baseline` on every metric, over the seeds both have.

    Returns a DataFrame (variant, metric, n, mean_diff, std_diff, t, p_t, wins, losses, p_sign) or None when
    the baseline was not run. t = mean / (std / √n) (paired t-test, n − 1 df); sign test on wins vs losses.
    """
    import math

    import pandas as pd

    if baseline not in set(runs["variant"]):
        return None
    base = runs[runs["variant"] == baseline].set_index("seed")
    rows = []
    for v in dict.fromkeys(runs["variant"]):
        if v == baseline:
            continue
        other = runs[runs["variant"] == v].set_index("seed")
        seeds = sorted(set(base.index) & set(other.index))
        for m in metrics:
            d = [float(other.loc[s, m]) - float(base.loc[s, m]) for s in seeds]
            n = len(d)
            mean = sum(d) / n if n else float("nan")
            std = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) if n > 1 else float("nan")
            if n > 1 and std > 0:
                t = mean / (std / math.sqrt(n))
            elif n > 1:  # every seed gives the same difference
                t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
            else:
                t = float("nan")
            wins, losses = sum(x > 0 for x in d), sum(x < 0 for x in d)
            rows.append({"variant": v, "metric": m, "n": n, "mean_diff": mean, "std_diff": std, "t": t,
                         "p_t": student_t_two_sided_p(t, n - 1) if n > 1 else float("nan"),
                         "wins": wins, "losses": losses, "p_sign": sign_test_p(wins, losses)})
    return pd.DataFrame(rows)


def paired_markdown(paired, baseline: str = BASELINE) -> str:
    """The paired table: mean ± std of the per-seed difference, paired t-test and sign-test p-values."""
    lines = [f"Paired against `{baseline}` (same seeds; difference = variant − {baseline}; accuracies in points):",
             "",
             "| variant | metric | mean diff ± std | t | p (paired t) | wins/losses | p (sign) |",
             "|---|---|---|---|---|---|---|"]
    for _, r in paired.iterrows():
        k = 1.0 if r["metric"] == "final_reward" else 100.0
        fmt = "{:+.3f} ± {:.3f}" if r["metric"] == "final_reward" else "{:+.1f} ± {:.1f}"
        lines.append(f"| {r['variant']} | {r['metric']} | {fmt.format(k * r['mean_diff'], k * r['std_diff'])} | "
                     f"{r['t']:.2f} | {r['p_t']:.3f} | {r['wins']}/{r['losses']} | {r['p_sign']:.3f} |")
    return "\n".join(lines)


def plot(runs, curves, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc_col = next(c for c in runs.columns if c.startswith("mean@"))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    variants = list(dict.fromkeys(runs["variant"]))
    for i, v in enumerate(variants):
        vals = 100 * runs.loc[runs["variant"] == v, acc_col]
        ax.bar(i, vals.mean(), yerr=vals.std() if len(vals) > 1 else 0, alpha=0.7, capsize=4)
        ax.scatter([i] * len(vals), vals, color="k", s=10, zorder=3)
    ax.set_xticks(range(len(variants)), variants, rotation=20)
    ax.set_ylabel(f"held-out {acc_col} (%)")
    ax.set_title("advantage-weighting variants (bars: mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)
    plt.close(fig)
    if curves.empty:
        return
    for name, keys in (("reward_curves.png", ["reward"]), ("shift_curves.png", list(SHIFT_KEYS))):
        keys = [k for k in keys if k in curves.columns]
        if not keys:
            continue
        fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5), squeeze=False)
        for ax, key in zip(axes[0], keys):
            for v in variants:
                sub = curves[(curves["variant"] == v) & curves[key].notna()]
                mean = sub.groupby("step")[key].mean()
                ax.plot(mean.index, mean.values, label=v)
            ax.set_xlabel("step")
            ax.set_title(key + " (mean over seeds)")
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
