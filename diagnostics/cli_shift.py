"""`sparse-rlvr shift`: where and how did RL change the model? Token-level base-vs-policy analysis.

    # sequences from a file (text prompt/completion or token ids, one JSON object per line)
    sparse-rlvr shift --base runs/tiny_base --policy runs/grpo/checkpoint-200 --data seqs.jsonl --output-dir out/shift
    # sample K completions per problem from the policy (or the base), then analyse
    sparse-rlvr shift --base runs/tiny_base --policy runs/grpo --dataset tiny --split test --limit 32 \
        --generate-with policy --num-samples 4 --output-dir out/shift

Writes into --output-dir: `tokens.parquet` (one row per completion token, see
`diagnostics.shift.COLUMNS`), `summary.json` (`diagnostics.summary.summarize`), the PNGs of
`diagnostics.plots`, `report.html` (self-contained, offline) and `sequences.jsonl` (the analysed
sequences as token ids + text, reusable with --data).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from diagnostics.cli_args import (
    add_analysis_arguments,
    add_model_arguments,
    add_runtime_arguments,
    add_sampling_arguments,
    check_required,
    resolve_analysis_settings,
)
from rewards.data import add_dataset_arguments

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sparse-rlvr shift",
        description="Teacher-force a base and a policy model on the same sequences and measure, per completion "
                    "token, how far their next-token distributions moved (JS, KL, entropy, top-k reallocation).",
    )
    add_model_arguments(p, policy_help="policy (e.g. RL-trained) model: local folder or hub id; must share the "
                                       "base's tokenizer")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="JSONL of sequences: {prompt, completion} text (prompt chat-templated, or a "
                                    "list of messages), or {prompt_ids, completion_ids}; prompt-only records need "
                                    "--generate-with")
    add_dataset_arguments(p, dataset=None, split="test", dataset_group=src,
                          dataset_help="math dataset to take prompts from: 'tiny', a hub id or a local "
                                       ".json/.jsonl/.parquet (rewards.data.load_math_dataset); needs --generate-with")
    p.add_argument("--generate-with", choices=("policy", "base"), default=None,
                   help="sample completions with this model (the paper uses the RL policy; 'base' avoids the "
                        "on-policy bias)")
    p.add_argument("--num-samples", type=int, default=1, help="completions sampled per prompt (default: 1)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="sampling length budget (default: 128)")
    add_sampling_arguments(p)
    add_analysis_arguments(p)
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward / generate batch")
    add_runtime_arguments(p, seed_help="sampling seed (default: 0)")
    p.add_argument("--max-report-sequences", type=int, default=20, help="sequences shown in report.html")
    p.add_argument("--output-dir", required=True, help="folder for tokens.parquet, summary.json, PNGs, report.html")
    return p


def _read_data(path: str, tokenizer) -> tuple[list[dict], list[dict]]:
    """(records with completions, prompt-only records) from a JSONL file; prompts chat-templated."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--data {path!r} does not exist. Fix: pass a .jsonl file with one sequence per line")
    full, prompt_only = [], []
    with file.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"--data {path}: line {n} is not JSON ({err.msg}). Fix: one JSON object per line") \
                    from None
            if not isinstance(rec, dict):
                raise ValueError(f"--data {path}: line {n} is not a JSON object")
            if isinstance(rec.get("prompt"), list):
                rec["prompt"] = tokenizer.apply_chat_template(rec["prompt"], tokenize=False, add_generation_prompt=True)
            if ("prompt_ids" in rec and "completion_ids" in rec) or ("prompt" in rec and "completion" in rec):
                full.append(rec)
            elif "prompt" in rec:
                prompt_only.append(rec)
            else:
                raise ValueError(f"--data {path}: line {n} has keys {sorted(rec)}. Fix: give 'prompt' + 'completion' "
                                 f"(or 'prompt_ids' + 'completion_ids'), or 'prompt' alone with --generate-with")
    if full and prompt_only:
        raise ValueError(f"--data {path} mixes records with and without completions. Fix: use one kind per file")
    if not full and not prompt_only:
        raise ValueError(f"--data {path} has no records. Fix: write one JSON object per line")
    return full, prompt_only


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_required(parser, args, "--policy")
    if args.dataset and not args.generate_with:
        parser.error("--dataset gives prompts only; add --generate-with policy|base to sample completions")
    for flag, val, lo in (("--num-samples", args.num_samples, 1), ("--batch-size", args.batch_size, 1),
                          ("--max-new-tokens", args.max_new_tokens, 1)):
        if val < lo:
            parser.error(f"{flag} must be >= {lo}, got {val}")
    try:  # flags > the run folder's divergence_settings.json > defaults
        resolve_analysis_settings(args, args.policy)
    except ValueError as err:
        parser.error(str(err))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import pandas as pd  # noqa: F401  (fail early if the table stack is missing)

    from diagnostics.models import load_pair
    from diagnostics.probe import generate_completions
    from diagnostics.plots import write_shift_plots
    from diagnostics.report import write_report
    from diagnostics.shift import analyze
    from diagnostics.summary import summarize

    out = Path(args.output_dir)
    progress = args.progress
    base, policy, tok = load_pair(args.base, args.policy, dtype=args.dtype, device=args.device)

    if args.data:
        records, prompt_only = _read_data(args.data, tok)
        if records and args.generate_with:
            parser.error(f"--data {args.data} already holds completions; drop --generate-with (or give prompts only)")
        if prompt_only:
            if not args.generate_with:
                parser.error(f"--data {args.data} holds prompts only; add --generate-with policy|base")
            prompt_only = prompt_only[: args.limit] if args.limit else prompt_only
            extras = [{k: v for k, v in r.items() if k != "prompt"} for r in prompt_only]
            records = generate_completions(
                policy if args.generate_with == "policy" else base, tok, [r["prompt"] for r in prompt_only],
                num_samples=args.num_samples, temperature=args.sample_temperature, top_p=args.sample_top_p,
                max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed, extras=extras,
                progress=progress)
        elif args.limit:
            records = records[: args.limit]
    else:
        from rewards.data import dataset_from_args

        ds = dataset_from_args(args)
        extras = [{"problem": r["problem"], "answer": r["answer"]} for r in ds]
        records = generate_completions(
            policy if args.generate_with == "policy" else base, tok, list(ds["prompt"]),
            num_samples=args.num_samples, temperature=args.sample_temperature, top_p=args.sample_top_p,
            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed, extras=extras,
            progress=progress)

    table = analyze(base, policy, tok, records, chunk_size=args.chunk_size, top_p=args.top_p,
                    temperature=args.temperature, batch_size=args.batch_size, progress=progress, keep_topk=True)
    if len(table) == 0:
        raise ValueError("no completion tokens to analyse (every completion is empty). Fix: check the data or raise "
                         "--max-new-tokens")
    summary = summarize(table, high_divergence_threshold=args.high_divergence_threshold)
    summary["settings"] = {"base": args.base, "policy": args.policy, "data": args.data, "dataset": args.dataset,
                           "split": args.split if args.dataset else None, "generate_with": args.generate_with,
                           "num_samples": args.num_samples, "temperature": args.temperature, "top_p": args.top_p,
                           "sample_temperature": args.sample_temperature, "sample_top_p": args.sample_top_p,
                           "seed": args.seed}

    out.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out / "tokens.parquet", index=False)
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    with (out / "sequences.jsonl").open("w", encoding="utf-8") as fh:
        for i, r in enumerate(records):
            rec = dict(r)
            if "prompt_ids" not in rec:
                rec["prompt_ids"] = tok(rec["prompt"], add_special_tokens=False)["input_ids"]
                rec["completion_ids"] = tok(rec["completion"], add_special_tokens=False)["input_ids"]
            fh.write(json.dumps({"seq_id": i, **rec}) + "\n")
    images = write_shift_plots(table, summary, out)
    prompts = {i: (r.get("prompt") or tok.decode(r["prompt_ids"])) for i, r in enumerate(records)}
    meta = {k: v for k, v in summary["settings"].items() if v is not None}
    write_report(out / "report.html", table, summary, images=images, prompts=prompts,
                 token_text=lambda i: tok.decode([int(i)]), meta=meta, max_sequences=args.max_report_sequences)

    sp = summary["sparsity"]
    frac_high = float((table["js"] > args.high_divergence_threshold).mean())
    gini = "n/a" if sp["gini"] is None else f"{sp['gini']:.3f}"
    print(f"{summary['n_tokens']} tokens in {summary['n_sequences']} sequences: mean JS {sp['js_mean']:.4g}, "
          f"JS > {args.high_divergence_threshold:g} at {100 * frac_high:.2f}% of tokens, Gini {gini}")
    print(f"wrote {out}/tokens.parquet, summary.json, report.html and {len(images)} PNGs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
