"""Math datasets as TRL expects them: conversational `prompt`, normalized gold `answer`, `problem`.

    from rewards.data import load_math_dataset
    load_math_dataset("tiny", "train", num_samples=2000)                        # the tiny world
    load_math_dataset("openai/gsm8k", "test", subset="main",
                      problem_column="question", answer_column="answer")        # hub id (needs network)
    load_math_dataset("data/math500.jsonl", answer_column="solution",
                      gold_format="boxed", system_prompt="Put the final answer in \\boxed{}.")

One path for every source, so the tiny world exercises exactly the code real datasets go through:
load -> check the mapped columns -> normalize gold answers (`rewards.math.normalize_gold`: GSM8K
`#### 42`, MATH `\\boxed{}` solutions, plain) -> build `prompt = [system?, user]`.
Rows whose gold cannot be normalized are dropped, counted and logged.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# Problems generated for the tiny world when `num_samples` is None.
TINY_DEFAULT_SIZE = {"train": 2000, "test": 200}
# `rewards.math.normalize_gold` formats; "math" is accepted as another name for "boxed".
GOLD_FORMATS = ("auto", "gsm8k", "boxed", "plain")
GOLD_FORMAT_ALIASES = {"math": "boxed"}


def _is_empty_file(path: Path) -> bool:
    """True for a local data file without rows (datasets' own error for these is cryptic)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_metadata(path).num_rows == 0
    head = path.read_text(errors="replace")[:64].strip()
    return head in ("", "[]") or (head.startswith("[") and head[1:].strip() == "]")


def _load_raw(source: str, split: str, subset: str | None, seed: int, num_samples: int | None):
    """The raw `datasets.Dataset` for `source` (tiny / local file or folder / hub id)."""
    import datasets

    if source == "tiny":
        from rewards.tiny_task import SPLITS, tiny_math_dataset

        if split not in SPLITS:
            raise ValueError(f"the tiny world has splits {SPLITS}, not {split!r}. Fix: pass split='train' or 'test'")
        return tiny_math_dataset(split, num_samples or TINY_DEFAULT_SIZE[split], seed)

    path = Path(source)
    if path.suffix in LOCAL_FORMATS or path.exists():
        if path.is_dir():
            files = [f for ext in LOCAL_FORMATS for f in sorted(path.glob(f"{split}*{ext}"))]
            if not files:
                raise FileNotFoundError(f"dataset folder {source} has no {split}*.json/.jsonl/.parquet file. "
                                        f"Fix: name the file for split {split!r} (e.g. {split}.jsonl) or pass the file path")
        elif path.is_file():
            files = [path]
        else:
            raise FileNotFoundError(f"dataset file {source} does not exist. Fix: pass an existing .json/.jsonl/.parquet "
                                    "file, a folder of them, 'tiny', or a hub dataset id")
        kinds = {LOCAL_FORMATS.get(f.suffix) for f in files}
        if None in kinds or len(kinds) != 1:
            raise ValueError(f"dataset {source}: cannot mix or read formats {sorted(f.suffix for f in files)}. "
                             "Fix: use only .json/.jsonl or only .parquet files")
        if all(_is_empty_file(f) for f in files):
            raise ValueError(f"dataset {source!r} (split {split!r}) is empty: {', '.join(map(str, files))} "
                             "hold(s) no rows. Fix: point it at a file/split with rows")
        try:
            return datasets.load_dataset(kinds.pop(), data_files=[str(f) for f in files], split="train")
        except datasets.exceptions.DatasetGenerationError as err:
            raise ValueError(f"dataset {source} could not be parsed ({err.__cause__ or err}). "
                             "Fix: one JSON object per line (.jsonl), a JSON list/records file, or parquet") from err

    try:
        return datasets.load_dataset(source, subset, split=split)
    except (FileNotFoundError, ConnectionError) as err:
        raise ValueError(f"could not load hub dataset {source!r} (subset {subset!r}, split {split!r}): "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}. Fix: check the id/subset/split, "
                         "unset HF_HUB_OFFLINE if you have network, or pass a local .json/.jsonl/.parquet file") from err


def _normalizer(gold_format: str):
    from rewards.math import normalize_gold

    fmt = GOLD_FORMAT_ALIASES.get(gold_format, gold_format)
    if fmt not in GOLD_FORMATS:
        raise ValueError(f"unknown gold format {gold_format!r}. Fix: pass --gold-format / gold_format as one of "
                         f"{GOLD_FORMATS + tuple(GOLD_FORMAT_ALIASES)}")
    return lambda gold: normalize_gold(gold, fmt)


def load_math_dataset(source: str = "tiny", split: str = "train", *, num_samples: int | None = None,
                      problem_column: str = "problem", answer_column: str = "answer", gold_format: str = "auto",
                      system_prompt: str | None = None, seed: int = 0, subset: str | None = None):
    """Load a math dataset as a `datasets.Dataset` with columns `prompt`, `answer`, `problem`.

    Args:
        source: "tiny" (generated, offline), a local .json/.jsonl/.parquet file (or a folder with
            `{split}*.jsonl` etc.), or a hub dataset id.
        split: which split ("train"/"test" for tiny; any split name for hub datasets).
        num_samples: tiny: how many problems to generate (default `TINY_DEFAULT_SIZE[split]`);
            other sources: keep the first `num_samples` rows (None = all).
        problem_column / answer_column: source columns holding the problem text and the gold.
        gold_format: "auto", "gsm8k" (`... #### 42`), "boxed" (alias "math": last `\\boxed{}` of a
            solution) or "plain"; passed to `rewards.math.normalize_gold`.
        system_prompt: if given, prepended as a system turn.
        seed: tiny world's seed (ignored for other sources, which keep their order).
        subset: hub dataset configuration name (e.g. "main" for openai/gsm8k).

    Returns:
        Dataset with `prompt` = [{"role": "system", ...}?, {"role": "user", "content": problem}],
        `answer` = normalized gold (str), `problem` = problem text. Other columns are dropped.
    """
    if num_samples is not None and num_samples < 1:
        raise ValueError(f"num_samples must be >= 1 or None, got {num_samples}. Fix: pass a positive limit or none")
    normalize = _normalizer(gold_format)
    if source == "tiny":
        problem_column, answer_column = "problem", "answer"
    raw = _load_raw(source, split, subset, seed, num_samples)
    missing = [c for c in (problem_column, answer_column) if c not in raw.column_names]
    if missing:
        flags = {problem_column: "--problem-column / problem_column", answer_column: "--answer-column / answer_column"}
        raise ValueError(f"dataset {source!r} (split {split!r}) has no column(s) {missing}; its columns are "
                         f"{raw.column_names}. Fix: set {' and '.join(flags[c] for c in missing)} to one of them")
    if len(raw) == 0:
        raise ValueError(f"dataset {source!r} (split {split!r}) is empty. Fix: point it at a file/split with rows")
    if num_samples is not None and len(raw) > num_samples:
        raw = raw.select(range(num_samples))

    problems, answers, prompts, dropped = [], [], [], []
    for i, (problem, gold) in enumerate(zip(raw[problem_column], raw[answer_column])):
        try:
            norm = normalize(str(gold)) if gold is not None else None
        except ValueError as err:
            logger.debug("row %d: gold %r not normalizable: %s", i, gold, err)
            norm = None
        if not norm or problem is None or not str(problem).strip():
            dropped.append(i)
            continue
        problem = str(problem)
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": problem})
        problems.append(problem)
        answers.append(norm)
        prompts.append(messages)
    if dropped:
        logger.warning("dataset %r: dropped %d of %d rows with an empty problem or a gold answer that could not be "
                       "normalized as %r (first rows: %s)", source, len(dropped), len(raw), gold_format, dropped[:5])
    if not problems:
        raise ValueError(f"dataset {source!r}: none of the {len(raw)} rows has a usable gold answer in column "
                         f"{answer_column!r} with gold_format={gold_format!r}. Fix: set --gold-format (gsm8k, boxed, "
                         "plain) or --answer-column to the column holding the final answer")

    from datasets import Dataset

    return Dataset.from_dict({"prompt": prompts, "answer": answers, "problem": problems})


GOLD_FORMATS = ("auto", "gsm8k", "boxed", "math", "plain")


def add_dataset_arguments(parser, *, dataset: str | None = "tiny", split: str = "test", limit: int | None = None,
                          limit_help: str | None = None, dataset_group=None, dataset_help: str | None = None) -> None:
    """The math-dataset flags of every CLI, identical everywhere (docs/vocabulary.md):

    `--dataset`, `--dataset-config`, `--split`, `--limit`, `--problem-column`, `--answer-column`,
    `--gold-format`, `--system-prompt`. Only the defaults differ per command (keyword arguments);
    `dataset_group` puts `--dataset` into a mutually exclusive group (e.g. with `--data`/`--probe`).
    `dataset_from_args` reads them all.
    """
    (dataset_group or parser).add_argument(
        "--dataset", default=dataset,
        help=dataset_help or "math dataset: 'tiny' (the generated tiny world, offline), a local .json/.jsonl/.parquet "
                             "file or folder, or a hub id" + (f" (default {dataset})" if dataset else ""))
    parser.add_argument("--dataset-config", default=None,
                        help="hub dataset configuration name (e.g. 'main' for openai/gsm8k)")
    parser.add_argument("--split", default=split, help=f"dataset split (default {split})")
    parser.add_argument("--limit", type=int, default=limit,
                        help=limit_help or f"use the first N problems (tiny: how many to generate; default "
                                           f"{'all' if limit is None else limit})")
    parser.add_argument("--problem-column", default="problem", help="column with the problem text (default: problem)")
    parser.add_argument("--answer-column", default="answer",
                        help="column with the gold answer or solution (default: answer)")
    parser.add_argument("--gold-format", default="auto", choices=GOLD_FORMATS,
                        help="how to read the gold: auto, gsm8k ('... #### 42'), boxed/math (last \\boxed{} of a "
                             "solution) or plain (default: auto)")
    parser.add_argument("--system-prompt", default=None, help="optional system turn prepended to every prompt")


def dataset_from_args(args):
    """`load_math_dataset` from parsed `--dataset/--split/--limit/--seed` + `add_dataset_arguments` flags."""
    return load_math_dataset(args.dataset, args.split, num_samples=args.limit, problem_column=args.problem_column,
                             answer_column=args.answer_column, gold_format=args.gold_format,
                             system_prompt=args.system_prompt, seed=args.seed, subset=args.dataset_config)
