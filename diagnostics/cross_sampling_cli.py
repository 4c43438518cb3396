"""`sparse-rlvr cross-sample`: forward/backward cross-sampling sweeps with a random-position control.

    sparse-rlvr cross-sample --base runs/tiny_base --policy runs/grpo/final --direction both \
        --rule js_threshold --values 0.02,0.05,0.1,0.2 --num-samples 8 --output-dir runs/cross \
        --dataset tiny --split test --limit 100 --max-new-tokens 64

For each direction (forward: primary = base, intervention = RL; backward: primary = RL,
intervention = base) and each value of the rule's sweep parameter (`--values`; e.g. ε for
`js_threshold`), co-decode `--num-samples` answers per problem (`diagnostics.cross_sampling`),
score them with the project's math reward (`rewards.math.score_batch`) and report mean@K accuracy,
pass@K, the effective share (%) and number of switched tokens per answer. For every threshold-type
setting (`js_threshold`, `js_threshold_budget`, `entropy_threshold`) a **random control** switches
at random positions with a matched budget: probability p = that run's mean per-answer share of
switched tokens, so both have the same expected share. Pure base and pure RL accuracies (rule
`never` with each as primary) are the reference lines.

Every run reuses the same per-answer seeds (common random numbers), so differences between
settings come from the switches, not from fresh sampling noise.

Writes to `--output-dir`: `summary.json` (config, references, one entry per run), `samples.jsonl`
(one line per answer: run, problem, text, score, switched positions; `--no-save-samples` to skip)
and `cross_sampling.png` (accuracy vs effective % switched; forward, backward, random controls,
reference lines).
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
from pathlib import Path

from diagnostics.cli_args import (
    add_model_arguments,
    add_runtime_arguments,
    add_sampling_arguments,
    check_required,
)
from rewards.data import add_dataset_arguments
from rewards.registry import add_reward_arguments

logger = logging.getLogger(__name__)

DIRECTIONS = {"forward": ("base", "rl"), "backward": ("rl", "base")}  # direction -> (primary, intervention)


def build_parser() -> argparse.ArgumentParser:
    from diagnostics.switching import RULE_REGISTRY

    rules = "; ".join(f"{n}: {s.help}" + (f" [sweeps {s.sweep_param}]" if s.sweep_param else "")
                      for n, s in sorted(RULE_REGISTRY.items()))
    p = argparse.ArgumentParser(
        prog="sparse-rlvr cross-sample",
        description="Cross-sampling interventions between a base and an RL model (Meng et al., arXiv 2603.22446): "
                    "accuracy vs share of swapped tokens, forward and backward, with a random-position control.",
    )
    add_model_arguments(p, policy_help="the RL-trained model sharing the base's tokenizer (directory or hub id)",
                        policy_aliases=("--rl",),
                        base_help="base model: local directory (or cached hub id) with model + tokenizer")
    p.add_argument("--direction", choices=["forward", "backward", "both"], default="both",
                   help="forward: decode with base, take RL tokens where the rule fires; backward: decode with RL, "
                        "take base tokens; both (default)")
    p.add_argument("--rule", default="js_threshold", choices=sorted(RULE_REGISTRY),
                   help=f"switching rule (default js_threshold). {rules}")
    p.add_argument("--values", default=None,
                   help="comma-separated values of the rule's sweep parameter, e.g. 0.05,0.1,0.2 for epsilon "
                        "(JS in nats, max ln2≈0.693). Not used by never/always")
    p.add_argument("--max-switch-tokens", type=int, default=None,
                   help="budget: at most this many switched tokens per answer (js_threshold_budget, random)")
    p.add_argument("--max-switch-fraction", type=float, default=None,
                   help="budget: at most this fraction of each answer's tokens switched, enforced on every prefix "
                        "(js_threshold_budget, random)")
    p.add_argument("--num-samples", type=int, default=4, help="K answers per problem: accuracy is mean@K (default 4)")
    p.add_argument("--output-dir", required=True, help="where summary.json, samples.jsonl and the PNG go")
    add_dataset_arguments(p, dataset="tiny", split="test", limit=100)
    add_reward_arguments(p)
    add_sampling_arguments(p, legacy_plain=True, what="co-decoding (both models' distributions; the rule's JS is "
                                                    "computed on them)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="answer length budget in tokens (default 128)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="answers co-decoded together (results do not depend on it; default 64)")
    p.add_argument("--random-control", action=argparse.BooleanOptionalAction, default=True,
                   help="run a budget-matched random-position control for every threshold setting (default on)")
    p.add_argument("--save-samples", action=argparse.BooleanOptionalAction, default=True,
                   help="write samples.jsonl with every answer (default on)")
    add_runtime_arguments(p, seed_help="seed of the per-answer random streams (default 0)", dtype_default="auto")
    return p


def parse_values(text: str | None, rule: str) -> list[float | None]:
    """`--values` -> floats; rules without a sweep parameter get `[None]`."""
    from diagnostics.switching import get_rule_spec

    spec = get_rule_spec(rule)
    if spec.sweep_param is None:
        if text:
            logger.warning("rule %r has no sweep parameter; ignoring --values %s", rule, text)
        return [None]
    if not text:
        raise SystemExit(f"sparse-rlvr cross-sample: error: rule {rule!r} needs --values (its {spec.sweep_param}). "
                         "Fix: e.g. --values 0.05,0.1,0.2")
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"sparse-rlvr cross-sample: error: --values {text!r} is not a comma-separated list of "
                         "numbers. Fix: e.g. --values 0.05,0.1,0.2") from None
    if not vals or any(math.isnan(v) for v in vals):
        raise SystemExit(f"sparse-rlvr cross-sample: error: --values {text!r} has no usable number. "
                         "Fix: e.g. --values 0.05,0.1,0.2")
    return vals


def make_rule(rule: str, value: float | None, max_tokens: int | None, max_fraction: float | None):
    """Build the rule with its sweep parameter = value and the budget flags it accepts."""
    from diagnostics.switching import get_rule, get_rule_spec

    spec = get_rule_spec(rule)
    params = {} if spec.sweep_param is None else {spec.sweep_param: value}
    accepted = inspect.signature(spec.factory).parameters
    for key, val, flag in (("max_tokens", max_tokens, "--max-switch-tokens"),
                           ("max_fraction", max_fraction, "--max-switch-fraction")):
        if val is None:
            continue
        if key not in accepted:
            raise SystemExit(f"sparse-rlvr cross-sample: error: {flag} does not apply to rule {rule!r}. "
                             "Fix: use --rule js_threshold_budget (or random), or drop the flag")
        params[key] = val
    return get_rule(rule, **params)


def metrics_of(scores: list[float], result_rows: list[dict], num_problems: int, k: int) -> dict:
    """mean@K, pass@K, switched-token statistics over all answers of one run."""
    n = len(scores)
    per_problem = [scores[i * k:(i + 1) * k] for i in range(num_problems)]
    tokens = sum(r["num_tokens"] for r in result_rows)
    switched = sum(r["num_switched"] for r in result_rows)
    return {
        "accuracy": sum(scores) / n,  # mean@K = mean over problems of the mean over K (equal K)
        "pass_at_k": sum(max(s) > 0 for s in per_problem) / num_problems,
        "effective_share": sum(r["share_switched"] for r in result_rows) / n,  # mean per-answer share
        "pooled_share": switched / max(tokens, 1),  # all switched tokens / all generated tokens
        "mean_switched_tokens": switched / n,
        "mean_length": tokens / n,
        "mean_js": sum(sum(r["js"]) for r in result_rows) / max(tokens, 1),
        "num_answers": n,
    }


def run_setting(models: dict, roles: tuple[str, str], rule, batches: list, golds: list[str], *, args,
                tokenizer, num_problems: int, desc: str) -> tuple[dict, list[dict]]:
    """Co-decode every batch with (primary, intervention) = roles, score, return (metrics, rows)."""
    from tqdm.auto import tqdm

    from diagnostics.cross_sampling import co_decode
    from diagnostics.models import eos_token_ids
    from rewards.math import score_batch

    primary, intervention = models[roles[0]], models[roles[1]]
    rows: list[dict] = []
    eos = eos_token_ids([primary, intervention], tokenizer)  # stop on any end-of-turn id of either model
    for input_ids, mask, seeds in tqdm(batches, desc=desc, leave=False, unit="batch", disable=not args.progress):
        res = co_decode(primary, intervention, input_ids, mask, rule, seeds=seeds,
                        max_new_tokens=args.max_new_tokens, temperature=args.sample_temperature,
                        top_p=args.sample_top_p, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
        rows += res.records(tokenizer, eos)  # `finished`: ended on one of these ids, not at the cap
    scores = score_batch([r["text"] for r in rows], golds, extraction=args.extraction,
                         finished=[r["finished"] for r in rows])  # cut off at the cap: no lenient fallback
    for r, s in zip(rows, scores):
        r["score"] = float(s)
    return metrics_of(scores, rows, num_problems, args.num_samples), rows


def plot(summary: dict, path: Path) -> None:
    """Accuracy (%) vs effective % switched tokens; forward/backward, random controls dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"forward": "tab:blue", "backward": "tab:red"}
    refs = summary["references"]
    top = 100 * max(refs["base"]["accuracy"], refs["rl"]["accuracy"])
    for direction in ("forward", "backward"):
        for control in (False, True):
            runs = sorted((r for r in summary["runs"] if r["direction"] == direction and r["control"] == control),
                          key=lambda r: r["effective_share"])
            if not runs:
                continue
            # every curve starts at 0% switched = the primary's own accuracy
            xs = [0.0] + [100 * r["effective_share"] for r in runs]
            ys = [100 * summary["references"][runs[0]["primary"]]["accuracy"]] + [100 * r["accuracy"] for r in runs]
            top = max(top, *ys)
            label = f"{direction} ({'random control' if control else summary['config']['rule']})"
            ax.plot(xs, ys, ls="--" if control else "-", marker="x" if control else "o", color=colors[direction],
                    alpha=0.7 if control else 1.0, label=label)
            if not control:
                for r, x, y in zip(runs, xs[1:], ys[1:]):
                    if r["value"] is not None:
                        ax.annotate(f"{r['value']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                                    color=colors[direction])
    ax.axhline(100 * refs["base"]["accuracy"], color="gray", ls=":", label=f"pure base {100 * refs['base']['accuracy']:.1f}%")
    ax.axhline(100 * refs["rl"]["accuracy"], color="black", ls=":", label=f"pure RL {100 * refs['rl']['accuracy']:.1f}%")
    ax.set_ylim(0, min(100.0, top * 1.15) + 2)
    ax.set_xlim(left=0)
    ax.set_xlabel("effective % of switched tokens per answer")
    ax.set_ylabel(f"accuracy, mean@{summary['config']['num_samples']} (%)")
    ax.set_title("Cross-sampling: forward = base + RL tokens, backward = RL + base tokens", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_required(parser, args, "--policy")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for flag, val, ok in (("--num-samples", args.num_samples, args.num_samples >= 1),
                          ("--limit", args.limit, args.limit is None or args.limit >= 1),
                          ("--max-new-tokens", args.max_new_tokens, args.max_new_tokens >= 1),
                          ("--batch-size", args.batch_size, args.batch_size >= 1),
                          ("--sample-temperature", args.sample_temperature, args.sample_temperature >= 0),
                          ("--sample-top-p", args.sample_top_p, 0 < args.sample_top_p <= 1)):
        if not ok:
            raise SystemExit(f"sparse-rlvr cross-sample: error: {flag} {val} is out of range. "
                             "Fix: counts >= 1, temperature >= 0, 0 < top-p <= 1")
    values = parse_values(args.values, args.rule)
    rule_builders = {v: make_rule(args.rule, v, args.max_switch_tokens, args.max_switch_fraction) for v in values}

    import torch
    from tqdm.auto import tqdm

    from diagnostics.cross_sampling import encode_prompts
    from diagnostics.models import check_same_vocabulary, load_model, load_tokenizer
    from diagnostics.switching import get_rule, get_rule_spec
    from rewards.data import dataset_from_args

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
             "auto": torch.bfloat16 if device.type == "cuda" else torch.float32}[args.dtype]
    tok, tok_rl = load_tokenizer(args.base, "--base"), load_tokenizer(args.policy, "--policy")
    check_same_vocabulary(tok, tok_rl, base_name=args.base, policy_name=args.policy)
    base = load_model(args.base, dtype=dtype, device=device, flag="--base")
    rl = load_model(args.policy, dtype=dtype, device=device, flag="--policy")
    check_same_vocabulary(tok, tok_rl, base, rl, base_name=args.base, policy_name=args.policy)
    models = {"base": base, "rl": rl}

    ds = dataset_from_args(args)
    k, n_prob = args.num_samples, len(ds)
    prompts = [p for p in ds["prompt"] for _ in range(k)]  # answer r = problem r // K, sample r % K
    golds = [a for a in ds["answer"] for _ in range(k)]
    seeds = [args.seed * 1_000_003 + r for r in range(len(prompts))]
    batches = []
    for start in range(0, len(prompts), args.batch_size):
        ids, mask = encode_prompts(tok, prompts[start:start + args.batch_size], device)
        batches.append((ids, mask, seeds[start:start + args.batch_size]))
    logger.info("%d problems x %d samples = %d answers per setting, %d batches", n_prob, k, len(prompts), len(batches))

    directions = ["forward", "backward"] if args.direction == "both" else [args.direction]
    spec = get_rule_spec(args.rule)
    do_control = args.random_control and spec.is_threshold
    n_runs = 2 + len(directions) * len(values) * (2 if do_control else 1)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sample_file = (out_dir / "samples.jsonl").open("w") if args.save_samples else None
    summary: dict = {"config": {**vars(args), "num_problems": n_prob, "sweep_param": spec.sweep_param},
                     "references": {}, "runs": []}
    bar = tqdm(total=n_runs, desc="cross-sample settings", unit="run")

    def record(run_id: str, rows: list[dict]) -> None:
        if sample_file is None:
            return
        for r_idx, row in enumerate(rows):
            row = {key: v for key, v in row.items() if key not in ("tokens", "js")}
            sample_file.write(json.dumps({"run": run_id, "problem": r_idx // k, "sample": r_idx % k, **row}) + "\n")

    try:
        for ref, roles in (("base", ("base", "rl")), ("rl", ("rl", "base"))):
            m, rows = run_setting(models, roles, get_rule("never"), batches, golds, args=args, tokenizer=tok,
                                  num_problems=n_prob, desc=f"pure {ref}")
            summary["references"][ref] = m
            record(f"pure_{ref}", rows)
            bar.update(1)
        for direction in directions:
            roles = DIRECTIONS[direction]
            for value in values:
                run_id = f"{direction}_{args.rule}_{value}"
                m, rows = run_setting(models, roles, rule_builders[value], batches, golds, args=args, tokenizer=tok,
                                      num_problems=n_prob, desc=run_id)
                summary["runs"].append({"direction": direction, "primary": roles[0], "intervention": roles[1],
                                        "rule": args.rule, "value": value, "control": False, **m})
                record(run_id, rows)
                bar.update(1)
                if not do_control:
                    continue
                p = m["effective_share"]  # matched budget: same expected per-answer share
                cm, crows = run_setting(models, roles, get_rule("random", p=p), batches, golds, args=args,
                                        tokenizer=tok, num_problems=n_prob, desc=f"{run_id} random control")
                summary["runs"].append({"direction": direction, "primary": roles[0], "intervention": roles[1],
                                        "rule": "random", "value": value, "p": p, "control": True,
                                        "matched_to": {"rule": args.rule, "value": value}, **cm})
                record(f"{run_id}_random", crows)
                bar.update(1)
    finally:
        bar.close()
        if sample_file is not None:
            sample_file.close()

    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(summary, out_dir / "cross_sampling.png")
    refs = summary["references"]
    print(f"pure base {100 * refs['base']['accuracy']:.1f}%   pure RL {100 * refs['rl']['accuracy']:.1f}%   "
          f"(mean@{k}, {n_prob} problems)")
    print(f"{'direction':<9} {'rule':<20} {'value':>8} {'acc %':>7} {'switched %':>10} {'# switched':>10}")
    for r in summary["runs"]:
        val = "" if r["value"] is None else f"{r['value']:g}"
        name = "random (control)" if r["control"] else r["rule"]
        print(f"{r['direction']:<9} {name:<20} {val:>8} {100 * r['accuracy']:>7.1f} "
              f"{100 * r['effective_share']:>10.2f} {r['mean_switched_tokens']:>10.1f}")
    print(f"wrote {out_dir / 'summary.json'} and {out_dir / 'cross_sampling.png'}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
