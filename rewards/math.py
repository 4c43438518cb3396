"""Verifiable math reward: 1.0 when the completion's final answer equals the gold, else 0.0.

Pure scoring layer (no TRL imports). Three stages:

1. `prepare(completion, gold, extraction=...)` (calling process, pure Python, bounded time):
   extract the answer (`rewards.extract.extract`: markers, then in `lenient` mode the last
   expression), canonicalize both sides (`rewards.normalize.canonical`), and settle without sympy:
     - identical canonical strings or LaTeX token sequences -> 1.0;
     - two numbers (integers, decimals, a/b, \\frac{a}{b}, a\\times 10^k, percents) -> exact
       comparison, or relative tolerance 1e-6 when a decimal is involved
       (`rewards.normalize.numbers_equal`);
     - a multiple-choice gold letter (A-J) -> letter equality (`(B) 42` is B);
     - an answer in words (`Monday`, `5 thousand apples`) -> word equality.
2. `rewards.verify.verify_prepared(pred, gold)`: latex2sympy on each whole string (never a
   prefix) and math-verify's `verify` with relative, not absolute, numeric tolerance. This is
   the part that can hang on hostile input, so `score_batch` runs it in
   `rewards.pool.VerifierPool` worker processes with a hard per-item wall-clock timeout.
3. `score_batch(completions, golds)`: de-duplicates canonical pairs, settles stage 1 in process,
   reuses cached stage-2 outcomes of pairs seen before (LRU), sends the rest to the pool; never
   raises, every outcome is counted in `rewards.pool.COUNTERS`.

`compute_score` runs stages 1-2 in process (no hard timeout: math-verify's own `signal.alarm`
timeout is used on the main thread only, because off the main thread it raises). Use
`score_batch` in training.

`extraction`: "lenient" (default) or "strict" (markers only: a completion without `\\boxed{}` or
an answer phrase is `no_answer`). Statuses (one per item, counted): ok, no_answer (nothing
extractable, or not parseable), truncated (the completion hit the length cap before any answer
marker: the lenient fallback is not applied, score 0), answer_too_long, bad_gold (gold empty, too long or not parseable),
timeout, error. Each item's `path` says which extraction decided: "marker", "fallback" or None
(nothing extracted, or a bad gold).

`finished` (per item): whether the completion ended on its own (an EOS / stop string) rather than
at the generation length cap. A cut-off completion's last number is often the middle of an
unfinished step, so the fallback never reads one: `finished=False` with a marker is judged on
the marker; without one it is `truncated` (0.0). `None` (the default) means unknown: the
completion is treated as finished (the behaviour before this flag existed).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

from rewards.extract import (
    MAX_ANSWER_CHARS,
    MAX_GOLD_CHARS,
    check_extraction,
    extract,
    extract_answer,
    normalize_gold,
)
from rewards.normalize import (
    canonical,
    choice_letter,
    equation_rhs,
    is_choice_letter,
    is_list,
    is_text,
    latex_tokens,
    numbers_equal,
    parse_number,
    text_key,
    top_level_commas,
)
from rewards.numbers import comma_kind
from rewards.pool import COUNTERS, get_pool
from rewards.verify import DEFAULT_TIMEOUT, verify_prepared

__all__ = [
    "DEFAULT_TIMEOUT",
    "Prepared",
    "Scored",
    "compute_score",
    "extract_answer",
    "normalize_gold",
    "prepare",
    "score_batch",
    "score_batch_detailed",
    "verify_prepared",
]

logger = logging.getLogger(__name__)

RESULT_CACHE_SIZE = 65_536  # canonical (pred, gold) -> (score, status), deterministic outcomes only
_RESULT_CACHE: "OrderedDict[tuple[str, str], tuple[float, str]]" = OrderedDict()
_CACHE_LOCK = threading.Lock()
STATUSES = ("ok", "no_answer", "truncated", "answer_too_long", "bad_gold", "timeout", "error")


class Scored(NamedTuple):
    """One item's outcome: `score` in {0.0, 1.0}, `status` (one of `STATUSES`), `path`
    ("marker", "fallback" or None: which extraction found the answer)."""

    score: float
    status: str
    path: str | None


@dataclass(frozen=True)
class Prepared:
    """Result of stage 1: either decided (`score` set) or a canonical pair for stage 2."""

    score: float | None  # None -> needs verify_prepared(pred, gold)
    status: str
    pred: str = ""
    gold: str = ""
    path: str | None = None


class _GoldForm(NamedTuple):
    """A gold's canonical readings. `canonical`/`is_list`: as written (commas between digits
    separating list items when `is_list`); `number`: its reading as one number when its commas
    are ambiguous (`2,4`, `1,234`: the decimal-comma rule of `rewards.numbers`), else None;
    `rhs`: the form of its right-hand side when it states the answer as `name = value`."""

    canonical: str
    is_list: bool
    number: str | None
    rhs: "_GoldForm | None"
    is_number: bool  # `canonical` is one number (`parse_number`)


def _answer_form(gold_ans: str, *, with_rhs: bool = True) -> _GoldForm | None:
    gold_c = canonical(gold_ans, strip_equation=False)
    if not gold_c:
        return None
    number = None
    if is_list(gold_c) or comma_kind(gold_c):
        list_c = canonical(gold_ans, strip_equation=False, list_gold=True)
        as_number = canonical(gold_ans, strip_equation=False, decimal_comma=True)
        if parse_number(as_number) is not None and top_level_commas(list_c):  # `2,4`: 2.4 or the list 2, 4
            number = as_number
        gold_c, list_gold = list_c, True
    else:
        list_gold = False
    rhs_text = equation_rhs(gold_c) if with_rhs and "=" in gold_c else None
    rhs = _answer_form(rhs_text, with_rhs=False) if rhs_text else None
    return _GoldForm(gold_c, list_gold, number, rhs, parse_number(gold_c) is not None)


@functools.lru_cache(maxsize=65_536)
def _gold_form(gold: str) -> _GoldForm | None:
    """The readings of a gold, or None for a bad gold. Cached: a GRPO group shares its gold."""
    if not gold.strip():
        return None
    try:
        gold_ans = normalize_gold(gold, "auto")
    except ValueError:
        return None
    if not gold_ans or len(gold_ans) > MAX_GOLD_CHARS:
        return None
    return _answer_form(gold_ans)


def _pair(answer: str, gold: _GoldForm) -> tuple[str, str]:
    """(canonical prediction, canonical gold) under one symmetric comma rule (`rewards.numbers`):
    a comma between digits is a decimal comma / thousands separator when both sides are one
    number, a list separator otherwise."""
    if gold.rhs is not None and "=" not in answer:  # `AB:CD=3:8` vs `3:8`: judged by its right-hand side
        gold = gold.rhs
    strip = "=" not in gold.canonical
    as_number = canonical(answer, strip_equation=strip, decimal_comma=True)
    if gold.number is not None:
        if parse_number(as_number) is not None:
            return as_number, gold.number
        return canonical(answer, strip_equation=strip, list_gold=True), gold.canonical
    if gold.is_list or not gold.is_number:
        return canonical(answer, strip_equation=strip, list_gold=True), gold.canonical
    return as_number, gold.canonical


def prepare(completion: str, gold: str, *, extraction: str = "lenient", finished: bool | None = None) -> Prepared:
    """Stage 1: extraction, normalization and the in-process decisions. Pure Python; never raises
    on content (ValueError for an unknown `extraction`). `finished=False`: see the module docstring."""
    check_extraction(extraction)
    if not isinstance(gold, str):
        return Prepared(0.0, "bad_gold")
    form = _gold_form(gold)
    if form is None:
        return Prepared(0.0, "bad_gold")
    ex = extract(completion, extraction) if isinstance(completion, str) else extract("", extraction)
    if finished is False and ex.path != "marker":  # cut off before any marker: its last number is not an answer
        return Prepared(0.0, "truncated")
    if ex.answer is None:
        return Prepared(0.0, "no_answer", path=ex.path)
    if len(ex.answer) > MAX_ANSWER_CHARS:
        return Prepared(0.0, "answer_too_long", path=ex.path)
    pred_c, gold_c = _pair(ex.answer, form)
    if not pred_c:
        return Prepared(0.0, "no_answer", path=ex.path)
    if is_choice_letter(gold_c):
        letter = choice_letter(pred_c) or choice_letter(ex.answer)
        return Prepared(float(letter == gold_c), "ok", path=ex.path)
    if pred_c == gold_c or latex_tokens(pred_c) == latex_tokens(gold_c):
        return Prepared(1.0, "ok", path=ex.path)
    a, b = parse_number(pred_c), parse_number(gold_c)
    if a is not None and b is not None:
        return Prepared(float(numbers_equal(a, b)), "ok", path=ex.path)
    if is_text(pred_c) or is_text(gold_c):
        return Prepared(float(text_key(pred_c) == text_key(gold_c)), "ok", path=ex.path)
    return Prepared(None, "pending", pred_c, gold_c, ex.path)


def compute_score(completion: str, gold: str, *, extraction: str = "lenient", finished: bool | None = None) -> float:
    """1.0 if the completion's final answer is equivalent to `gold`, else 0.0. In-process; never
    raises on content. No hard timeout (see module docstring): training should use `score_batch`.
    `finished`: did the completion end on its own (False: it hit the length cap; None: unknown,
    treated as finished); see the module docstring."""
    prep = prepare(completion, gold, extraction=extraction, finished=finished)
    if prep.score is not None:
        return prep.score
    return verify_prepared(prep.pred, prep.gold)[0]


def score_batch_detailed(
    completions: list[str],
    golds: list[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    extraction: str = "lenient",
    pool=None,
    use_cache: bool = True,
    finished: list[bool | None] | None = None,
) -> list[Scored]:
    """`Scored(score, status, path)` per pair; see `score_batch`."""
    check_extraction(extraction)
    if len(completions) != len(golds):
        raise ValueError(
            f"score_batch: {len(completions)} completions but {len(golds)} golds. Fix: pass one gold per completion"
        )
    if finished is not None and len(finished) != len(completions):
        raise ValueError(
            f"score_batch: {len(finished)} finished flags for {len(completions)} completions. "
            "Fix: pass one flag per completion (or finished=None when unknown)"
        )
    out: list[tuple[float, str] | None] = [None] * len(completions)
    paths: list[str | None] = [None] * len(completions)
    todo: dict[tuple[str, str], list[int]] = {}  # canonical pair -> item indices (de-duplication)
    for i, (c, g) in enumerate(zip(completions, golds)):
        prep = prepare(c, g, extraction=extraction, finished=None if finished is None else finished[i])
        paths[i] = prep.path
        if prep.score is not None:
            out[i] = (prep.score, prep.status)
        else:
            todo.setdefault((prep.pred, prep.gold), []).append(i)
    n_cached = 0
    if todo and use_cache:
        with _CACHE_LOCK:
            for pair in list(todo):
                hit = _RESULT_CACHE.get(pair)
                if hit is not None:
                    _RESULT_CACHE.move_to_end(pair)
                    for i in todo.pop(pair):
                        out[i] = hit
                        n_cached += 1
    if todo:
        pairs = list(todo)
        pool = pool if pool is not None else get_pool(timeout=timeout)
        results = pool.map(pairs)
        for pair, res in zip(pairs, results):
            for i in todo[pair]:
                out[i] = res
        if use_cache:
            with _CACHE_LOCK:
                for pair, res in zip(pairs, results):
                    if res[1] in ("ok", "no_answer", "bad_gold"):  # never cache timeouts/errors
                        _RESULT_CACHE[pair] = res
                while len(_RESULT_CACHE) > RESULT_CACHE_SIZE:
                    _RESULT_CACHE.popitem(last=False)
    COUNTERS.add("cache_hits", n_cached)
    COUNTERS.add_batch(
        [s for _, s in out], n_verified=len(todo), n_deduplicated=sum(len(v) - 1 for v in todo.values())
    )
    COUNTERS.add("fallback", sum(p == "fallback" for p in paths))
    return [Scored(r[0], r[1], p) for r, p in zip(out, paths)]  # type: ignore[index]


def score_batch(
    completions: list[str],
    golds: list[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    extraction: str = "lenient",
    pool=None,
    use_cache: bool = True,
    finished: list[bool | None] | None = None,
) -> list[float]:
    """Score N (completion, gold) pairs: stage 1 in process, the rest de-duplicated and verified
    in parallel by the worker pool with a hard per-item `timeout` (seconds). An item past its
    timeout scores 0.0 and is counted. `extraction`: "lenient" (default) or "strict" (see the
    module docstring). `pool`: a `VerifierPool` to use instead of this process's shared one (its
    own `.timeout` then applies). Never raises on content; raises ValueError when the two lists
    differ in length or `extraction` is unknown. `use_cache`: reuse stage-2 outcomes of canonical
    pairs seen in earlier batches (LRU, `RESULT_CACHE_SIZE`; timeouts and errors are never cached).
    `finished`: per completion, whether it ended on its own (EOS / stop) rather than at the length
    cap; False -> no lenient fallback (`truncated` when it has no marker); None, or a None item:
    unknown, treated as finished. ValueError when its length differs from `completions`."""
    return [r.score for r in score_batch_detailed(
        completions, golds, timeout=timeout, extraction=extraction, pool=pool, use_cache=use_cache,
        finished=finished,
    )]
