"""`sparse-rlvr evolution`: how the base-vs-policy shift grows over the checkpoints of a run.

    sparse-rlvr evolution --policy outputs/grpo --base outputs/tiny_base --output-dir outputs/evolution
    sparse-rlvr evolution --policy RUN --base BASE --output-dir OUT --dataset tiny --limit 32
    sparse-rlvr evolution --policy RUN --base BASE --output-dir OUT --probe probe.jsonl --top-p 0.7

Every `checkpoint-N` folder of the run is teacher-forced together with the base on one fixed probe
set (`diagnostics.shift.analyze`), and `OUT/evolution.csv` gets one row per checkpoint:

    step, checkpoint, <the `diagnostics.shift_stats` keys: n_tokens, js_mean, js_max, js_p50 ... js_p99,
    frac_js_gt_0.01 ... frac_js_gt_0.2, js_top1pct_share ..., js_gini, entropy_*>, n_high, jaccard_final,
    + the other `diagnostics.summary.scalar_metrics` columns (the same names as `shift_probe/*` in training)

`jaccard_final` = |H_c ∩ H_final| / |H_c ∪ H_final|, where H_c is the set of probe positions
(seq_id, position) with JS > --high-divergence-threshold (paper: 0.1) at checkpoint c and H_final the same set at the
last checkpoint (empty ∪ empty -> NaN: undefined). Meng et al. report it climbing to 1 while the
95th/99th JS percentiles rise fastest. PNGs: `evolution_sparsity.png`, `evolution_quantiles.png`,
`evolution_jaccard.png`.

Probe set, in order of precedence: `--probe FILE.jsonl`; `--dataset SOURCE --limit N`
(sampled once from the base, seeded, saved as `OUT/probe.jsonl` and reused while the same options
are given); otherwise the probe the training callback saved in `POLICY/shift_probe_set.jsonl`
(`--policy` is the run directory; `--run-dir` is its deprecated alias).

Cache: each checkpoint's token table and summary go to `OUT/cache/checkpoint-N/` together with a
key (probe fingerprint, base, top-p, temperature, and the size and mtime of the checkpoint's weight
files). Re-running analyses only checkpoints whose key is new, so it is cheap to run after every
save.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from diagnostics.cli_args import (
    add_alias,
    add_analysis_arguments,
    add_model_arguments,
    add_runtime_arguments,
    add_sampling_arguments,
    check_required,
    resolve_analysis_settings,
)
from diagnostics.jsonl import write_json_atomic
from diagnostics.probe import ProbeSet, load_probe
from diagnostics.shift_stats import DEFAULT_HIGH_DIVERGENCE_THRESHOLD, DEFAULT_THRESHOLDS, shift_stats, stat_names
from rewards.data import add_dataset_arguments

logger = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


@dataclass
class EvolutionResult:
    frame: pd.DataFrame  # one row per checkpoint (the CSV)
    analyzed: list[str] = field(default_factory=list)  # checkpoints analysed in this call
    cached: list[str] = field(default_factory=list)  # checkpoints read from the cache
    skipped: dict[str, str] = field(default_factory=dict)  # checkpoint -> why it could not be loaded
    plots: dict[str, Path] = field(default_factory=dict)


def find_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """`checkpoint-N` sub-folders of `run_dir`, sorted by N."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"--policy {run_dir} is not a directory. Fix: pass the training output_dir")
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    return sorted(found)


def _weights_signature(ckpt: Path) -> list:
    """[(file, size, mtime_ns)] of the weight files: changes when the checkpoint is rewritten."""
    files = sorted(f for f in ckpt.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES)
                   and not f.name.startswith(("optimizer", "scheduler", "rng_state", "training_args")))
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def js_stats(js: np.ndarray, thresholds=DEFAULT_THRESHOLDS, high_divergence_threshold: float = DEFAULT_HIGH_DIVERGENCE_THRESHOLD) -> dict[str, float]:
    """The CSV's core columns from per-token JS values `(N,)`: `diagnostics.shift_stats.shift_stats` + `n_high`.

    No entropies here (the remaining `scalar_metrics` columns, entropies included, are added per row).
    """
    js = np.asarray(js, dtype=np.float64)
    out = shift_stats(js, measure="js", thresholds=thresholds, high_divergence_threshold=high_divergence_threshold)
    out = {k: v for k, v in out.items() if not k.startswith("entropy_")}
    out["n_high"] = float((js > high_divergence_threshold).sum())
    return out


def high_positions(table: pd.DataFrame, high_divergence_threshold: float) -> set[tuple[int, int]]:
    """{(seq_id, position)} of the tokens with JS > high_divergence_threshold."""
    sel = table.loc[table["js"] > high_divergence_threshold, ["seq_id", "position"]]
    return set(zip(sel["seq_id"].astype(int), sel["position"].astype(int)))


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b|; NaN when both are empty (undefined, not 'perfect overlap')."""
    union = a | b
    return len(a & b) / len(union) if union else float("nan")


def _resolve_probe(args, out: Path, base_model, tokenizer) -> tuple[ProbeSet, str]:
    """The probe set per the precedence in the module docstring, and where it came from."""
    if args.probe:
        return load_probe(args.probe, tokenizer), str(args.probe)
    if args.dataset:
        spec = {"dataset": args.dataset, "split": args.split, "limit": args.limit, "seed": args.seed,
                "max_new_tokens": args.max_new_tokens, "sample_temperature": args.sample_temperature,
                "sample_top_p": args.sample_top_p, "base": str(args.base)}
        probe_path, spec_path = out / "probe.jsonl", out / "probe_spec.json"
        if probe_path.exists() and spec_path.exists() and json.loads(spec_path.read_text()) == spec:
            return load_probe(probe_path, tokenizer), str(probe_path)
        from diagnostics.probe import probe_from_dataset

        probe = probe_from_dataset(base_model, tokenizer, args.dataset, split=args.split, num_prompts=args.limit,
                                   seed=args.seed, max_new_tokens=args.max_new_tokens,
                                   temperature=args.sample_temperature, top_p=args.sample_top_p,
                                   batch_size=args.batch_size)
        probe.save(probe_path)
        write_json_atomic(spec_path, spec)
        return probe, str(probe_path)
    from diagnostics.callbacks import PROBE_COPY_NAME

    run_probe = Path(args.policy) / PROBE_COPY_NAME
    if run_probe.exists():
        return load_probe(run_probe, tokenizer), str(run_probe)
    raise ValueError(f"no probe set: {run_probe} does not exist and neither --probe nor --dataset was given. Fix: pass "
                     f"--probe FILE.jsonl or --dataset tiny --num-prompts 32")


def run_evolution(args) -> EvolutionResult:
    """Analyse every checkpoint of `args.policy` (cached), write the CSV and PNGs. See `main`."""
    from tqdm.auto import tqdm

    from diagnostics.models import check_same_vocabulary, load_model, load_tokenizer
    from diagnostics.shift import analyze
    from diagnostics.summary import scalar_metrics, summarize

    resolve_analysis_settings(args, args.policy)  # flags > the run's divergence_settings.json > defaults
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = find_checkpoints(args.policy)
    if not checkpoints:
        raise ValueError(f"--policy {args.policy} has no checkpoint-* folders. Fix: pass a training output_dir "
                         f"saved with save_steps (or save_strategy='steps')")
    tokenizer = load_tokenizer(str(args.base), "--base")
    base_model = load_model(str(args.base), dtype=args.dtype, device=args.device, flag="--base")
    probe, probe_src = _resolve_probe(args, out, base_model, tokenizer)
    logger.info("evolution: %d checkpoints, probe %s (%d sequences, %d tokens, fingerprint %s)", len(checkpoints),
                probe_src, len(probe), probe.num_completion_tokens, probe.fingerprint())
    base_key = str(Path(args.base).resolve()) if Path(args.base).exists() else str(args.base)

    result = EvolutionResult(frame=pd.DataFrame())
    tables: dict[int, pd.DataFrame] = {}
    rows: dict[int, dict] = {}
    bar = tqdm(checkpoints, desc="evolution", unit="checkpoint", disable=not args.progress)
    for step, ckpt in bar:
        bar.set_postfix_str(ckpt.name)
        cache = out / "cache" / ckpt.name
        key = {"probe": probe.fingerprint(), "base": base_key, "top_p": args.top_p, "temperature": args.temperature,
               "checkpoint": str(ckpt.resolve()), "weights": _weights_signature(ckpt)}
        meta_path, table_path = cache / "result.json", cache / "tokens.parquet"
        if meta_path.exists() and table_path.exists() and json.loads(meta_path.read_text()).get("key") == key:
            meta = json.loads(meta_path.read_text())
            table = pd.read_parquet(table_path)
            result.cached.append(ckpt.name)
        else:
            try:
                policy_tok = load_tokenizer(str(ckpt), "--policy checkpoint") if (ckpt / "tokenizer.json").exists() \
                    or (ckpt / "tokenizer_config.json").exists() else tokenizer
                policy = load_model(str(ckpt), dtype=args.dtype, device=args.device, flag=f"checkpoint {ckpt.name}")
                check_same_vocabulary(tokenizer, policy_tok, base_model, policy, base_name=str(args.base),
                                      policy_name=ckpt.name)
            except (OSError, ValueError) as err:
                result.skipped[ckpt.name] = str(err).splitlines()[0]
                logger.warning("evolution: skipping %s: %s", ckpt.name, result.skipped[ckpt.name])
                continue
            table = analyze(base_model, policy, tokenizer, probe.records(), chunk_size=args.chunk_size,
                            top_p=args.top_p, temperature=args.temperature, batch_size=args.batch_size,
                            progress=False)
            del policy
            summary = summarize(table, high_divergence_threshold=args.high_divergence_threshold)
            meta = {"key": key, "step": step, "metrics": scalar_metrics(summary), "summary": summary}
            cache.mkdir(parents=True, exist_ok=True)
            table.to_parquet(table_path, index=False)
            write_json_atomic(meta_path, meta)  # written last: its presence marks a complete entry
            result.analyzed.append(ckpt.name)
        tables[step] = table
        row = {"step": step, "checkpoint": ckpt.name,
               **js_stats(table["js"].to_numpy(dtype=np.float64), high_divergence_threshold=args.high_divergence_threshold)}
        for k, v in meta["metrics"].items():  # the remaining summary scalars (NaN stays NaN)
            row.setdefault(k, float("nan") if v is None else v)
        rows[step] = row
    if result.skipped:
        logger.warning("evolution: %d of %d checkpoints could not be analysed: %s", len(result.skipped),
                       len(checkpoints), ", ".join(result.skipped))
    if not rows:
        raise ValueError(f"none of the {len(checkpoints)} checkpoints in {args.policy} could be loaded "
                         f"({next(iter(result.skipped.values()))}). Fix: save full model weights in checkpoints")

    final = max(tables)
    final_high = high_positions(tables[final], args.high_divergence_threshold)
    for step, row in rows.items():
        row["jaccard_final"] = jaccard(high_positions(tables[step], args.high_divergence_threshold), final_high)
    lead = ["step", "checkpoint", *stat_names("js"), "n_high", "jaccard_final"]
    frame = pd.DataFrame([rows[s] for s in sorted(rows)])
    frame = frame.reindex(columns=lead + [c for c in frame.columns if c not in lead])  # old caches: NaN columns
    frame.to_csv(out / "evolution.csv", index=False)
    result.frame = frame
    if not args.no_plots:
        result.plots = write_evolution_plots(frame, out)
    return result


def write_evolution_plots(frame: pd.DataFrame, out: Path) -> dict[str, Path]:
    """Sparsity, JS quantiles and Jaccard-with-final against the step (PNG files in `out`)."""
    from diagnostics.plots import plot_evolution

    plots = {
        "sparsity": plot_evolution(frame, out / "evolution_sparsity.png",
                                   columns=[f"frac_js_gt_{t:g}" for t in DEFAULT_THRESHOLDS],
                                   title="share of probe tokens above each JS threshold", ylabel="fraction of tokens"),
        "quantiles": plot_evolution(frame, out / "evolution_quantiles.png",
                                    columns=["js_mean", "js_p50", "js_p95", "js_p99"],
                                    title="per-token JS over training", ylabel="JS (nats)",
                                    logy=bool((frame[["js_p50"]] > 0).all().all())),
        "jaccard": plot_evolution(frame, out / "evolution_jaccard.png", columns=["jaccard_final"],
                                  title="overlap of each checkpoint's high-JS set with the final one",
                                  ylabel="Jaccard"),
    }
    return plots


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sparse-rlvr evolution",
        description="Token-level shift (base vs each checkpoint-* of a run) on one probe set: evolution.csv + PNGs. "
                    "Re-running analyses only new checkpoints (cache in OUTPUT_DIR/cache).",
    )
    add_model_arguments(p, policy_help="the run: a training output_dir whose checkpoint-* folders are the policies",
                        policy_aliases=("--run-dir",), base_help="base model: local folder or hub id (its tokenizer "
                                                                  "is used)")
    p.add_argument("--output-dir", required=True, help="where evolution.csv, PNGs, probe and cache go")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--probe", help="probe set JSONL (prompt_ids/completion_ids, or chat-templated prompt/completion "
                                     "text); default: POLICY/shift_probe_set.jsonl written by the training callback")
    add_dataset_arguments(p, dataset=None, split="test", limit=32, dataset_group=src,
                          limit_help="prompts in a --dataset probe (default 32)",
                          dataset_help="build the probe by sampling the base on this dataset source ('tiny', a local "
                                       ".json/.jsonl/.parquet, or a hub id; see rewards.data)")
    add_alias(p, "--num-prompts", "--limit", "limit", type=int)
    p.add_argument("--max-new-tokens", type=int, default=128, help="completion length budget of a --dataset probe")
    add_sampling_arguments(p, what="--dataset probe sampling")
    add_analysis_arguments(p)
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    add_runtime_arguments(p, seed_help="seed for prompt selection and sampling of a --dataset probe (default 0)")
    p.add_argument("--no-plots", action="store_true", help="write the CSV only")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_required(parser, args, "--policy")
    if args.limit < 1:
        parser.error(f"--limit must be >= 1, got {args.limit}")
    try:  # flags > the run folder's divergence_settings.json > defaults
        resolve_analysis_settings(args, args.policy)
    except ValueError as err:
        parser.error(str(err))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    res = run_evolution(args)
    cols = ["step", "js_mean", "js_p95", "js_p99", "frac_js_gt_0.1", "jaccard_final"]
    print(res.frame[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}" if not math.isnan(x) else "nan"))
    print(f"evolution: {len(res.analyzed)} analysed, {len(res.cached)} from cache, {len(res.skipped)} skipped -> "
          f"{Path(args.output_dir) / 'evolution.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
