"""Verifiable math reward: 1.0 when the completion's final answer equals the gold, else 0.0.

Pure scoring layer (no TRL imports). Three stages:

1. `prepare(completion, gold)` (calling process, pure Python, bounded time): extract the answer
   (`rewards.normalize.extract_answer`), canonicalize both sides, and settle the cheap cases
   without sympy. Fast paths, each exactly what math-verify would answer:
     - identical canonical strings, or identical LaTeX token sequences (whitespace in math
       mode only ends macro names) -> 1.0;
     - both plain integers of <= 15 digits -> integer equality (math-verify compares numbers at
       15 significant digits, so below that it is exact equality too);
     - two numbers (integer, decimal, a/b, \\frac{a}{b}) that are exactly equal -> 1.0 (unequal
       ones go to math-verify, which treats floats within 6 decimals as equal);
     - a multiple-choice gold letter (A-J) -> letter equality (math-verify would parse both
       letters as symbols and compare them the same way).
2. `verify_prepared(pred, gold)`: math-verify `verify(parse(gold), parse(pred))` on the short
   canonical strings, wrapped in `$...$` (so a bare gold like `\\frac{1}{2}` is read whole).
   This is the part that can hang on hostile input, so `score_batch` runs it in
   `rewards.pool.VerifierPool` worker processes with a hard per-item wall-clock timeout.
3. `score_batch(completions, golds)`: de-duplicates canonical pairs, fast-paths in process, reuses
   cached math-verify outcomes of pairs seen before (LRU), sends the rest to the pool; never raises, every failure is counted in `rewards.pool.COUNTERS`.

`compute_score` runs stages 1-2 in process (no hard timeout: math-verify's own `signal.alarm`
timeout is used on the main thread only, because off the main thread it raises). Use
`score_batch` in training.

Statuses (one per item, counted): ok, no_answer (nothing extractable), answer_too_long,
bad_gold (gold empty, too long or not parseable by math-verify), timeout, error.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

from rewards.normalize import (
    MAX_ANSWER_CHARS,
    canonical,
    extract_answer,
    exact_number,
    is_choice_letter,
    is_plain_int,
    latex_tokens,
    normalize_gold,
    strip_percent,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "Prepared",
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
DEFAULT_TIMEOUT = 5.0  # seconds of wall clock per item in the pool (hard kill past it)
STATUSES = ("ok", "no_answer", "answer_too_long", "bad_gold", "timeout", "error")


@dataclass(frozen=True)
class Prepared:
    """Result of stage 1: either decided (`score` set) or a canonical pair for math-verify."""

    score: float | None  # None -> needs math-verify on (pred, gold)
    status: str
    pred: str = ""
    gold: str = ""


def prepare(completion: str, gold: str, *, last_number_fallback: bool = False) -> Prepared:
    """Stage 1: extraction, normalization and the exact fast paths. Pure Python, never raises."""
    if not isinstance(gold, str) or not gold.strip():
        return Prepared(0.0, "bad_gold")
    try:
        gold_ans = normalize_gold(gold, "auto")
    except ValueError:
        return Prepared(0.0, "bad_gold")
    if len(gold_ans) > MAX_ANSWER_CHARS:
        return Prepared(0.0, "bad_gold")
    gold_c = canonical(gold_ans, strip_equation=False)
    if not gold_c:
        return Prepared(0.0, "bad_gold")
    ans = extract_answer(completion, last_number_fallback=last_number_fallback) if isinstance(completion, str) else None
    if ans is None:
        return Prepared(0.0, "no_answer")
    if len(ans) > MAX_ANSWER_CHARS:
        return Prepared(0.0, "answer_too_long")
    pred_c = canonical(ans, strip_equation="=" not in gold_c)
    if "%" not in gold_c:
        pred_c = strip_percent(pred_c)  # gold 12.5 (the usual convention) vs `12.5\%`
    if not pred_c:
        return Prepared(0.0, "no_answer")
    if pred_c == gold_c or latex_tokens(pred_c) == latex_tokens(gold_c):
        return Prepared(1.0, "ok")
    if is_plain_int(pred_c) and is_plain_int(gold_c):
        return Prepared(float(int(pred_c) == int(gold_c)), "ok")
    a, b = exact_number(pred_c), exact_number(gold_c)
    if a is not None and b is not None and a == b:  # 0.5 == \frac{1}{2}; unequal ones go to
        return Prepared(1.0, "ok")  # math-verify, which compares floats at 6 decimals
    if is_choice_letter(gold_c):
        return Prepared(float(pred_c.upper() == gold_c), "ok")
    return Prepared(None, "pending", pred_c, gold_c)


def _soft_timeout(seconds: float | None) -> int | None:
    """math-verify's own timeout (signal.alarm, whole seconds) only works on the main thread."""
    if seconds is None or threading.current_thread() is not threading.main_thread():
        return None
    return max(1, int(seconds))


@functools.lru_cache(maxsize=8192)
def _parse_gold(gold: str, soft: int | None):
    return _parse(gold, soft)


def _parse(s: str, soft: int | None):
    """math-verify `parse` on `$s$`: wrapping makes the LaTeX extractor read a bare answer like
    `\\frac{1}{2}` whole (unwrapped, math-verify 0.9 often reads a prefix: 2^{10} -> 2)."""
    from math_verify import parse

    return parse(f"${s}$", parsing_timeout=soft, raise_on_error=True)


def verify_prepared(pred: str, gold: str, soft_timeout: float | None = DEFAULT_TIMEOUT) -> tuple[float, str]:
    """Stage 2: math-verify equivalence of two canonical strings -> (score, status). Never raises
    an Exception (a math-verify TimeoutException, a BaseException, is caught too)."""
    from math_verify import verify
    from math_verify.errors import TimeoutException

    soft = _soft_timeout(soft_timeout)
    try:
        gold_parsed = _parse_gold(gold, soft)
        if not gold_parsed:
            return 0.0, "bad_gold"
        pred_parsed = _parse(pred, soft)
        if not pred_parsed:
            return 0.0, "no_answer"
        ok = verify(gold_parsed, pred_parsed, timeout_seconds=soft, raise_on_error=True)
        return float(bool(ok)), "ok"
    except TimeoutException:
        return 0.0, "timeout"
    except (Exception, RecursionError) as e:  # sympy/latex2sympy raise anything; counted, not hidden
        logger.debug("math-verify failed on pred=%r gold=%r: %s: %s", pred[:80], gold[:80], type(e).__name__, e)
        return 0.0, "error"


def compute_score(completion: str, gold: str, *, last_number_fallback: bool = False) -> float:
    """1.0 if the completion's final answer is equivalent to `gold`, else 0.0. In-process; never
    raises. No hard timeout (see module docstring): training should use `score_batch`."""
    prep = prepare(completion, gold, last_number_fallback=last_number_fallback)
    if prep.score is not None:
        return prep.score
    return verify_prepared(prep.pred, prep.gold)[0]


def score_batch_detailed(
    completions: list[str],
    golds: list[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    last_number_fallback: bool = False,
    pool=None,
    use_cache: bool = True,
) -> list[tuple[float, str]]:
    """(score, status) per pair; see `score_batch`."""
    from rewards.pool import COUNTERS, get_pool

    if len(completions) != len(golds):
        raise ValueError(
            f"score_batch: {len(completions)} completions but {len(golds)} golds. Fix: pass one gold per completion"
        )
    out: list[tuple[float, str] | None] = [None] * len(completions)
    todo: dict[tuple[str, str], list[int]] = {}  # canonical pair -> item indices (de-duplication)
    for i, (c, g) in enumerate(zip(completions, golds)):
        prep = prepare(c, g, last_number_fallback=last_number_fallback)
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
    return out  # type: ignore[return-value]


def score_batch(
    completions: list[str],
    golds: list[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    last_number_fallback: bool = False,
    pool=None,
    use_cache: bool = True,
) -> list[float]:
    """Score N (completion, gold) pairs: exact fast paths in process, the rest de-duplicated and
    verified in parallel by the worker pool with a hard per-item `timeout` (seconds). An item past
    its timeout scores 0.0 and is counted. `pool`: a `VerifierPool` to use instead of this
    process's shared one (its own `.timeout` then applies). Never raises on content; raises ValueError only when
    the two lists differ in length. `use_cache`: reuse math-verify outcomes of canonical pairs
    seen in earlier batches (LRU, `RESULT_CACHE_SIZE`; timeouts and errors are never cached)."""
    return [s for s, _ in score_batch_detailed(
        completions, golds, timeout=timeout, last_number_fallback=last_number_fallback, pool=pool,
        use_cache=use_cache,
    )]
