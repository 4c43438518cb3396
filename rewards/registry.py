"""TRL reward functions by name: `accuracy`, `format`, `overlong`.

    from rewards.registry import get_reward_funcs
    reward_funcs = get_reward_funcs(["accuracy", "format"], answer_column="answer", timeout=5.0)
    GRPOTrainer(..., reward_funcs=reward_funcs)

Every function has TRL's signature `(completions, **kwargs) -> list[float | None]`; completions
may be strings or conversational (`[{"role": "assistant", "content": ...}]`). Options are bound
with `functools.partial` + `update_wrapper`, and `__name__` is the registry name, so TRL logs
`rewards/accuracy/mean` etc.

`accuracy` also reports the verifier's health through TRL 1.16's `log_metric` kwarg (averaged per
logging step across ranks): `rewards/accuracy/{status}_frac` for every status of
`rewards.math.STATUSES` (ok, no_answer, truncated, answer_too_long, bad_gold, timeout, error),
`rewards/accuracy/fallback_frac` (share of answers found by the lenient fallback, not a marker)
and `.../worker_restarts` (restarts during this batch), and, through `log_extra`, per-completion
`accuracy_status` and `accuracy_path` columns in the completions table. A gold that never parses is logged once (a
WARNING with its dataset row), not left scoring 0 forever in silence.

Truncation (`accuracy`): a completion cut off by the length cap gets no lenient fallback
(`rewards.math`, status `truncated`). TRL 1.16 passes `completion_ids` per completion, cut after
the first EOS, which is kept (grpo_trainer `_generate_single_turn`: mask `<= eos_idx`), but passes
neither the EOS ids nor the cap to reward functions, so the factory binds them: a completion is
finished when its last id is one of `eos_token_ids`, or when it is shorter than
`max_completion_length` (generation stopped before the cap: an EOS, a stop string, a vLLM stop).
A completion exactly at the cap without a final EOS id is truncated. With neither option bound,
or no `completion_ids`, finished is unknown and the reward behaves as before (fallback applies).
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import threading
from typing import Any, Callable

from rewards.extract import BOX_RE, EXTRACTION_MODES, check_extraction, match_braces
from rewards.math import DEFAULT_TIMEOUT, STATUSES, score_batch_detailed
from rewards.pool import COUNTERS

logger = logging.getLogger(__name__)

RewardFunc = Callable[..., list]
_TRL_KWARGS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric", "environments")
_WARNED_GOLDS: set[str] = set()
_WARNED_LOCK = threading.Lock()


def completion_text(completion: Any) -> str:
    """Plain text of a completion: a string, or the assistant content of a message list."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, list):
        parts = []
        for msg in completion:
            if not isinstance(msg, dict) or msg.get("role", "assistant") != "assistant":
                continue
            content = msg.get("content", "")
            if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            parts.append(content if isinstance(content, str) else "")
        return "".join(parts)
    raise ValueError(
        f"reward: completion of type {type(completion).__name__} is neither a string nor a list of messages. "
        "Fix: pass TRL completions (str or [{'role': 'assistant', 'content': ...}])"
    )


def finished_flags(completion_ids: list | None, max_completion_length: int | None = None,
                   eos_token_ids: list[int] | None = None) -> list[bool] | None:
    """Per completion (token ids, EOS kept as TRL keeps it): True when it ended on its own (last id
    in `eos_token_ids`, or fewer than `max_completion_length` ids), False when it hit the cap.
    None (unknown) when `completion_ids` is None or neither option is given."""
    if completion_ids is None or (max_completion_length is None and not eos_token_ids):
        return None
    eos = set(eos_token_ids or ())
    out = []
    for ids in completion_ids:
        ids = list(ids)
        ended_on_eos = bool(ids) and int(ids[-1]) in eos
        under_cap = max_completion_length is not None and len(ids) < max_completion_length
        out.append(ended_on_eos or under_cap)
    return out


def _row(kwargs: dict, i: int, n: int) -> dict:
    """Dataset row `i` reconstructed from TRL's per-sample kwargs (for error messages)."""
    return {
        k: (repr(v[i])[:200]) for k, v in kwargs.items() if k not in _TRL_KWARGS and isinstance(v, list) and len(v) == n
    }


def accuracy(
    completions: list,
    *,
    answer_column: str = "answer",
    timeout: float = DEFAULT_TIMEOUT,
    extraction: str = "lenient",
    max_completion_length: int | None = None,
    eos_token_ids: list[int] | None = None,
    **kwargs,
) -> list[float | None]:
    """1.0 if the completion's final answer equals the gold in column `answer_column`, else 0.0.
    `extraction`: "lenient" (markers, then the last expression) or "strict" (markers only).
    `max_completion_length` / `eos_token_ids`: recognise completions cut off by the length cap from
    TRL's `completion_ids` (`finished_flags`; module docstring)."""
    if answer_column not in kwargs:
        cols = sorted(k for k in kwargs if k not in _TRL_KWARGS)
        raise ValueError(
            f"accuracy reward: no gold column {answer_column!r} among dataset columns {cols}. "
            f"Fix: pass answer_column=<one of {cols}> to get_reward_funcs"
        )
    golds = kwargs[answer_column]
    texts = [completion_text(c) for c in completions]
    before = COUNTERS.snapshot().get("worker_restarts", 0)
    results = score_batch_detailed(
        texts, [g if isinstance(g, str) else ("" if g is None else str(g)) for g in golds],
        timeout=timeout, extraction=extraction,
        finished=finished_flags(kwargs.get("completion_ids"), max_completion_length, eos_token_ids),
    )
    statuses = [r.status for r in results]
    n = len(results)
    for i, st in enumerate(statuses):
        if st == "bad_gold":
            key = repr(golds[i])
            with _WARNED_LOCK:
                if key in _WARNED_GOLDS:
                    continue
                _WARNED_GOLDS.add(key)
            logger.warning(
                "accuracy reward: gold %s in column %r cannot be parsed, every completion for it scores 0.0. "
                "Row: %s. Fix the dataset row or its gold_format.", key[:200], answer_column, _row(kwargs, i, n),
            )
    log_metric = kwargs.get("log_metric")
    if callable(log_metric) and n:
        for st in STATUSES:
            log_metric(f"rewards/accuracy/{st}_frac", statuses.count(st) / n)
        log_metric("rewards/accuracy/fallback_frac", sum(r.path == "fallback" for r in results) / n)
        log_metric("rewards/accuracy/worker_restarts", float(COUNTERS.snapshot().get("worker_restarts", 0) - before))
    log_extra = kwargs.get("log_extra")
    if callable(log_extra):
        log_extra("accuracy_status", statuses)
        log_extra("accuracy_path", [r.path or "" for r in results])
    return [r.score for r in results]


_THINK_RE = re.compile(r"^\s*<think>(.+?)</think>(.*)$", re.DOTALL)
_AFTER_BOX_OK = re.compile(r"[\s$.\\\])]*(?:</answer>)?\s*")


def _single_final_box(text: str) -> bool:
    """Exactly one `\\boxed{}`/`\\fbox{}`, closed and non-empty, followed only by whitespace,
    `$`, `.`, `\\]`, `)` or a closing `</answer>`."""
    matches = list(BOX_RE.finditer(text))
    if len(matches) != 1:
        return False
    j = matches[0].end()
    while j < len(text) and text[j] == " ":
        j += 1
    if j >= len(text) or text[j] != "{":
        return False
    end = match_braces(text, j)
    if end is None or not text[j + 1 : end].strip():
        return False
    return _AFTER_BOX_OK.fullmatch(text[end + 1 :]) is not None


def format(completions: list, *, think: bool = False, **kwargs) -> list[float | None]:  # noqa: A001
    """1.0 if the completion ends in a single final `\\boxed{}` (and, with `think=True`, starts
    with one `<think>...</think>` block that the box follows), else 0.0."""
    out = []
    for c in completions:
        text = completion_text(c)
        if think:
            m = _THINK_RE.match(text)
            if m is None or "<think>" in m.group(1) or "</think>" in m.group(2):
                out.append(0.0)
                continue
            text = m.group(2)
        out.append(float(_single_final_box(text)))
    return out


def overlong(
    completions: list,
    *,
    max_completion_length: int | None = None,
    overlong_buffer: int | None = None,
    completion_ids: list | None = None,
    **kwargs,
) -> list[float | None]:
    """DAPO's soft overlong punishment (Yu et al., arXiv 2503.14476, eq. 13), on token counts:

        L_max = max_completion_length, L_cache = overlong_buffer, |y| = len(completion_ids)
        R(y) = 0                                  if |y| <= L_max - L_cache
             = ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
             = -1                                 if |y| > L_max
    """
    if max_completion_length is None or max_completion_length <= 0:
        raise ValueError(
            "overlong reward: max_completion_length is not set. Fix: get_reward_funcs(['overlong'], "
            "max_completion_length=<GRPOConfig.max_completion_length>)"
        )
    l_cache = overlong_buffer if overlong_buffer is not None else max(1, max_completion_length // 4)
    if not 0 < l_cache <= max_completion_length:
        raise ValueError(
            f"overlong reward: overlong_buffer={l_cache} must be in (0, max_completion_length={max_completion_length}]. "
            "Fix: pass a smaller overlong_buffer"
        )
    if completion_ids is None:
        raise ValueError("overlong reward: needs token ids (TRL passes completion_ids). Fix: call it from GRPOTrainer")
    safe = max_completion_length - l_cache
    out = []
    for ids in completion_ids:
        n = len(ids)
        out.append(0.0 if n <= safe else (-1.0 if n > max_completion_length else (safe - n) / l_cache))
    return out


REWARD_FUNCS: dict[str, RewardFunc] = {"accuracy": accuracy, "format": format, "overlong": overlong}


def _options_of(fn: RewardFunc) -> set[str]:
    return {
        p.name for p in inspect.signature(fn).parameters.values()
        if p.kind == p.KEYWORD_ONLY and p.name not in _TRL_KWARGS
    }


def get_reward_funcs(names: list[str] | str, **options) -> list[RewardFunc]:
    """Reward functions for `names`, each bound to the `options` it accepts.

    Options: accuracy(answer_column="answer", timeout=5.0, extraction="lenient",
    max_completion_length=None, eos_token_ids=None: see `finished_flags`),
    format(think=False), overlong(max_completion_length, overlong_buffer=max_completion_length//4).
    Raises ValueError for an unknown name (listing the valid ones) or an option no requested
    function accepts.
    """
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n.strip() not in REWARD_FUNCS]
    if unknown:
        raise ValueError(f"unknown reward function(s) {unknown}. Fix: use names from {sorted(REWARD_FUNCS)}")
    accepted = set().union(*(_options_of(REWARD_FUNCS[n.strip()]) for n in names)) if names else set()
    stray = sorted(set(options) - accepted)
    if stray:
        raise ValueError(
            f"reward option(s) {stray} are not accepted by {list(names)}. Fix: use only {sorted(accepted)}"
        )
    if "extraction" in options:
        check_extraction(options["extraction"])
    funcs = []
    for name in (n.strip() for n in names):
        fn = REWARD_FUNCS[name]
        bound = {k: v for k, v in options.items() if k in _options_of(fn)}
        if name == "overlong":  # validate eagerly: a missing length should fail before training starts
            overlong([], completion_ids=[], **bound)
        wrapped = functools.update_wrapper(functools.partial(fn, **bound), fn)
        wrapped.__name__ = name
        funcs.append(wrapped)
    return funcs


def add_reward_arguments(parser) -> None:
    """The math reward's flags, shared by every CLI that scores completions (`eval`, `cross-sample`):
    `--extraction {lenient,strict}`. Read it back as `args.extraction`."""
    parser.add_argument("--extraction", default="lenient", choices=EXTRACTION_MODES,
                        help="math reward answer extraction: 'lenient' (default: \\boxed{} / 'the answer is' / "
                             "'#### N' markers, else the last math expression or number, never on a completion "
                             "cut off by the length cap) or 'strict' (markers only; a completion without one "
                             "scores 0 as no_answer)")
