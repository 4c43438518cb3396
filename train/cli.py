"""`sparse-rlvr`: one console script, one subcommand per job.

    sparse-rlvr --help
    sparse-rlvr SUBCOMMAND --help

Each subcommand lives in its own module as `main(argv: list[str] | None = None) -> int` with its own
argparse parser, imported lazily so `sparse-rlvr --help` stays fast. Bad user input is reported as
one line naming the input and the fix (`SystemExit("...")` or `ValueError`), never a deep traceback;
set SPARSE_RLVR_DEBUG=1 to see the traceback anyway.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line description)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "tiny-base": ("train.tiny_base", "build (or reuse) the tiny world's base model: tokenizer + SFT'd small LM"),
    "eval": ("train.evaluate", "sample K completions per problem and report mean@K / pass@K accuracy"),
    "grpo": ("train.grpo", "GRPO / divergence-weighted GRPO training (same as `python train/grpo.py`)"),
    "sft": ("train.sft", "SFT on the base model's own correct completions (the SFT-vs-RL comparison)"),
    "shift": ("diagnostics.cli_shift", "token-level shift analysis base vs policy: table, summary, plots, HTML"),
    "evolution": ("diagnostics.evolution", "shift evolution across the checkpoints of a run"),
    "cross-sample": ("diagnostics.cross_sampling_cli", "forward/backward cross-sampling sweeps with a random control"),
    "real-world": ("train.real_world", "set up the real world: SmolLM2-135M-Instruct + chain_sum (reasoning-gym) + GSM8K/GSM-Symbolic, offline"),
    "demo": ("train.demo", "the main job end to end: the paper in miniature on the tiny world (--world real: SmolLM2 on chain_sum)"),
    "compare": ("train.compare", "train several advantage-weighting variants x seeds and rank them"),
}


# subcommands whose flags change with one option: (subcommand, the option, module with its own build_parser)
VARIANT_PARSERS: tuple[tuple[str, str, str], ...] = (
    ("demo", "--world real", "train.real_demo"),
)


def parsers_of(name: str, module_name: str):
    """[(title, parser)] of a subcommand: its parser, then every sub-subcommand (argparse subparsers, e.g.
    `real-world setup`) and every variant with a parser of its own (`demo --world real`). Empty for `grpo`
    (TrlParser: every config field is a flag)."""
    module = importlib.import_module(module_name)
    if not hasattr(module, "build_parser"):
        return []
    parser = module.build_parser()
    out = [(f"sparse-rlvr {name}", parser)]
    for action in parser._actions:  # argparse keeps no public list of subparsers
        if isinstance(action, argparse._SubParsersAction):
            out += [(f"sparse-rlvr {name} {sub}", p) for sub, p in action.choices.items()]
    for parent, option, variant_module in VARIANT_PARSERS:
        if parent == name:
            out.append((f"sparse-rlvr {name} {option}", importlib.import_module(variant_module).build_parser()))
    return out


def _usage() -> str:
    width = max(len(n) for n in SUBCOMMANDS)
    lines = ["usage: sparse-rlvr SUBCOMMAND [options]   (sparse-rlvr SUBCOMMAND --help for its options)", "",
             "subcommands:"]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def flags_markdown() -> str:
    """docs/cli.md's flag tables, generated from every subcommand's argparse parser (`build_parser`).

    Regenerate: `python -c "from train.cli import flags_markdown; print(flags_markdown())" > docs/cli.md`;
    tests/test_cli_flags.py fails when the file drifts. `grpo` takes TRL-style `--field value` flags for every
    config field instead (see docs/trainer.md and `sparse-rlvr grpo --help`).
    """
    from diagnostics.cli_args import flags_of

    lines = ["# `sparse-rlvr` flags, per subcommand", "",
             "Generated from the parsers by `train.cli.flags_markdown()` (do not edit by hand; "
             "`tests/test_cli_flags.py` checks it). The names follow docs/vocabulary.md; deprecated aliases "
             "(`--rl`, `--run-dir`, `--gen-temperature`, `--num-prompts`, `--num-problems`, `--high-js`, and `--temperature`/"
             "`--top-p` in `eval`/`cross-sample`) still work, warn, and are not listed.", ""]
    for name, (module_name, desc) in SUBCOMMANDS.items():
        parsers = parsers_of(name, module_name)
        if not parsers:
            lines += [f"## `sparse-rlvr {name}`", "", desc + ".", "",
                      "Every `DivergenceGRPOConfig` / `GRPOConfig` / `ModelConfig` field as `--field value` "
                      "(YAML `--config` first); see docs/trainer.md and `sparse-rlvr grpo --help`.", ""]
            continue
        for i, (title, parser) in enumerate(parsers):
            text = desc + "." if i == 0 else " ".join((parser.description or "").split())
            lines += [f"{'##' if i == 0 else '###'} `{title}`", "", text, ""] if text else \
                [f"{'##' if i == 0 else '###'} `{title}`", ""]
            rows = flags_of(parser)
            if not rows:
                lines += ["No flags.", ""]
                continue
            lines += ["| flag | meaning |", "|---|---|"]
            lines += [f"| `{flags}` | {help_text.replace('|', chr(92) + '|')} |" for flags, help_text in rows]
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"sparse-rlvr: error: unknown subcommand {name!r}; choose one of: {', '.join(SUBCOMMANDS)}",
              file=sys.stderr)
        return 2
    module_name = SUBCOMMANDS[name][0]
    from diagnostics.cli_args import quiet_third_party_warnings

    verbose = "--verbose" in rest
    if verbose and name == "grpo":  # TrlParser knows no --verbose: it is the dispatcher's flag there
        rest = [a for a in rest if a != "--verbose"]
    quiet_third_party_warnings(verbose or None)  # before the subcommand imports its libraries
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            print(f"sparse-rlvr: error: subcommand {name!r} is not available in this build", file=sys.stderr)
            return 2
        raise
    try:
        return int(module.main(rest) or 0)
    except (ValueError, FileNotFoundError) as err:
        if os.environ.get("SPARSE_RLVR_DEBUG"):
            raise
        print(f"sparse-rlvr {name}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
