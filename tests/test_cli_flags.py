"""One flag, one meaning, in every subcommand (docs/vocabulary.md); docs/cli.md is generated from the parsers."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from diagnostics.cli_args import flags_of
from train.cli import SUBCOMMANDS, flags_markdown

ROOT = Path(__file__).resolve().parents[1]
# subcommand -> the arguments it needs besides the ones under test
REQUIRED = {
    "shift": ["--output-dir", "o"],  # + --data or --dataset
    "evolution": ["--output-dir", "o"],
    "cross-sample": ["--output-dir", "o"],
    "sft": ["--output-dir", "o"],
    "eval": ["--model", "m"],
}
WITH_POLICY = ("shift", "evolution", "cross-sample")
WITH_BASE = ("shift", "evolution", "cross-sample", "sft")
DATASET_FLAGS = ("--dataset", "--dataset-config", "--split", "--limit", "--problem-column", "--answer-column",
                 "--gold-format", "--system-prompt")


def parser_of(name: str):
    return importlib.import_module(SUBCOMMANDS[name][0]).build_parser()


def test_docs_flag_table_is_generated_from_the_parsers():
    text = (ROOT / "docs" / "cli.md").read_text()
    assert text.strip() == flags_markdown().strip(), (
        "docs/cli.md drifted from the parsers; regenerate it with "
        "`python -c \"from train.cli import flags_markdown; print(flags_markdown())\" > docs/cli.md`")


def test_docs_cover_sub_subcommands():
    """`real-world setup` (argparse subparsers) and `demo --world real` (its own parser) have their own tables."""
    from train.cli import parsers_of

    text = flags_markdown()
    assert "### `sparse-rlvr real-world setup`" in text and "### `sparse-rlvr demo --world real`" in text
    titles = [t for name, (module, _) in SUBCOMMANDS.items() for t, _ in parsers_of(name, module)]
    assert all(f"`{t}`" in text for t in titles)
    setup = dict(parsers_of("real-world", SUBCOMMANDS["real-world"][0]))["sparse-rlvr real-world setup"]
    assert all(f"| `{flags}` |" in text for flags, _ in flags_of(setup))


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_every_subcommand_takes_the_same_flags(name):
    argv = list(REQUIRED[name])
    if name in WITH_BASE:
        argv += ["--base", "B"]
    if name in WITH_POLICY:
        argv += ["--policy", "P"]
    argv += ["--sample-temperature", "0.7", "--sample-top-p", "0.9", "--dataset", "tiny", "--split", "test",
             "--limit", "3", "--problem-column", "q", "--answer-column", "a", "--gold-format", "plain",
             "--system-prompt", "S", "--dataset-config", "main", "--seed", "5", "--verbose"]
    args = parser_of(name).parse_args(argv)
    assert (args.sample_temperature, args.sample_top_p, args.limit, args.seed) == (0.7, 0.9, 3, 5)
    assert (args.problem_column, args.answer_column, args.gold_format, args.verbose) == ("q", "a", "plain", True)
    if name in WITH_BASE:
        assert args.base == "B"
    if name in WITH_POLICY:
        assert args.policy == "P"
    flags = {f for a in parser_of(name)._actions for f in a.option_strings}
    assert set(DATASET_FLAGS) <= flags


@pytest.mark.parametrize("name", ["shift", "evolution"])
def test_temperature_is_the_analysis_distribution(name):
    argv = REQUIRED[name] + ["--base", "B", "--policy", "P", "--temperature", "2.0", "--top-p", "0.7", "--dataset",
                             "tiny"]
    args = parser_of(name).parse_args(argv)
    assert (args.temperature, args.top_p) == (2.0, 0.7)
    assert (args.sample_temperature, args.sample_top_p) == (1.0, 1.0)  # sampling untouched


@pytest.mark.parametrize("name,old,new,value", [
    ("cross-sample", "--rl", "policy", "P"),
    ("evolution", "--run-dir", "policy", "RUN"),
    ("evolution", "--gen-temperature", "sample_temperature", 0.5),
    ("evolution", "--num-prompts", "limit", 7),
    ("sft", "--num-problems", "limit", 7),
    ("eval", "--temperature", "sample_temperature", 0.5),
    ("eval", "--top-p", "sample_top_p", 0.5),
    ("cross-sample", "--temperature", "sample_temperature", 0.5),
    ("shift", "--high-js", "high_divergence_threshold", 0.2),
    ("evolution", "--high-js", "high_divergence_threshold", 0.2),
])
def test_deprecated_aliases_work_and_warn(name, old, new, value):
    argv = list(REQUIRED[name]) + (["--base", "B"] if name in WITH_BASE else []) + ["--dataset", "tiny"]
    if name in WITH_POLICY and old not in ("--rl", "--run-dir"):
        argv += ["--policy", "P"]
    with pytest.warns(FutureWarning, match=f"{old} is deprecated; use --"):
        args = parser_of(name).parse_args(argv + [old, str(value)])
    assert getattr(args, new) == value
    assert old not in {f for flags, _ in flags_of(parser_of(name)) for f in flags.split(", ")}  # not advertised


def test_policy_is_required(capsys):
    from diagnostics.cli_shift import main

    with pytest.raises(SystemExit):
        main(["--base", "B", "--data", "x.jsonl", "--output-dir", "o"])
    assert "required: --policy" in capsys.readouterr().err
