"""Completions cut off by the length cap (issue 11c) and GSM8K's `#### N` final line as a marker.

A cut-off completion's last number is the middle of an unfinished step (SmolLM2 on GSM8K: 3 of 4
"correct" rescored samples were such), so the lenient fallback never reads it: `finished=False`
without a marker is `truncated`, 0.0; with a marker it is judged on the marker.
"""

from __future__ import annotations

import pytest

from rewards.extract import extract
from rewards.math import STATUSES, compute_score, score_batch, score_batch_detailed
from rewards.registry import finished_flags, get_reward_funcs

CUT = "The shark is 10 feet. The remoras are 6 inches each, so 2 * 6 = 12 inches. Then 10"  # gold 10


def test_truncated_without_marker_is_truncated_even_when_last_number_is_gold():
    assert "truncated" in STATUSES
    assert compute_score(CUT, "10") == 1.0  # finished unknown: today's fallback reads the last number, 10
    assert compute_score(CUT, "10", finished=False) == 0.0
    (r,) = score_batch_detailed([CUT], ["10"], finished=[False])
    assert (r.score, r.status, r.path) == (0.0, "truncated", None)
    (s,) = score_batch_detailed(["no number at all, cut"], ["10"], finished=[False], extraction="strict")
    assert s.status == "truncated"  # no marker before the cap, in strict mode too


def test_truncated_with_marker_is_judged_on_the_marker():
    assert score_batch([r"so \boxed{10}. Let me double-check: 2 * 6 = 12 and", r"\boxed{12} then 10"],
                       ["10", "10"], finished=[False, False]) == [1.0, 0.0]
    (r,) = score_batch_detailed(["The answer is 10. Checking: 3 + 7 = 1"], ["10"], finished=[False])
    assert (r.score, r.status, r.path) == (1.0, "ok", "marker")


def test_finished_without_marker_uses_the_fallback_as_before():
    (r,) = score_batch_detailed([CUT], ["10"], finished=[True])
    assert (r.score, r.status, r.path) == (1.0, "ok", "fallback")
    # None items and finished=None are "unknown" = finished
    assert score_batch([CUT, CUT], ["10", "10"], finished=[None, False]) == [1.0, 0.0]


def test_finished_length_must_match():
    with pytest.raises(ValueError, match="finished flags"):
        score_batch(["a", "b"], ["1", "1"], finished=[True])


@pytest.mark.parametrize("mode", ["strict", "lenient"])
def test_gsm8k_hash_line_is_a_marker_in_both_modes(mode):
    text = "He has 8 * 9 = 72 apples.\n#### 72"
    e = extract(text, mode)
    assert (e.answer, e.path) == ("72", "marker")
    assert compute_score(text, "72", extraction=mode) == 1.0
    assert extract("Total 3 + 4 = 7.\n#### $1,234\n", mode).answer == "$1,234"
    # the last `####` line wins; a later answer phrase restates it; a later box too
    assert extract("#### 5\noops\n#### 6", mode).answer == "6"
    assert extract("#### 5\nThe answer is 7.", mode).answer == "7"
    assert extract("\\boxed{3}\n#### 4", mode).answer == "4"
    # an empty `####` line is a marker with nothing to read: no fallback rescue, 0
    e = extract("#### \n12", mode)
    assert (e.answer, e.path) == (None, "marker")
    # a cut-off completion that already wrote its `####` line is judged on it
    assert compute_score("#### 72\nExplanation: 8 * 9 =", "72", extraction=mode, finished=False) == 1.0


def test_finished_flags_rule():
    # TRL keeps the EOS (id 2 here) in completion_ids; cap 4:
    #   [5, 2] shorter than the cap -> finished; [5, 6, 7, 2] at the cap but ends on EOS -> finished;
    #   [5, 6, 7, 8] at the cap, no EOS -> cut off; [5, 6] shorter, no EOS (a stop string) -> finished.
    ids = [[5, 2], [5, 6, 7, 2], [5, 6, 7, 8], [5, 6]]
    assert finished_flags(ids, 4, [2]) == [True, True, False, True]
    assert finished_flags(ids, 4) == [True, False, False, True]  # no EOS ids: at the cap counts as cut off
    assert finished_flags(ids, None, [2]) == [True, True, False, False]  # no cap: the final EOS decides
    assert finished_flags(ids, None, None) is None and finished_flags(None, 4, [2]) is None


def test_accuracy_reward_with_trl_completion_ids():
    (acc,) = get_reward_funcs(["accuracy"], max_completion_length=4, eos_token_ids=[2])
    metrics, extra = {}, {}
    completions = [CUT, CUT, r"\boxed{10} and then", "no answer"]
    # CUT with EOS (finished) -> fallback 10 = 1; CUT at the cap without EOS -> truncated 0;
    # a box at the cap -> marker 1; "no answer" finished -> no_answer 0
    ids = [[5, 6, 2], [5, 6, 7, 8], [5, 6, 7, 8], [9, 2]]
    out = acc(completions=completions, completion_ids=ids, answer=["10"] * 4,
              log_metric=metrics.__setitem__, log_extra=extra.__setitem__)
    assert out == [1.0, 0.0, 1.0, 0.0]
    assert extra["accuracy_status"] == ["ok", "truncated", "ok", "no_answer"]
    assert metrics["rewards/accuracy/truncated_frac"] == 0.25
    assert metrics["rewards/accuracy/fallback_frac"] == 0.25
    # without the bound options the reward cannot tell: the fallback applies (behaviour before 11c)
    (plain,) = get_reward_funcs(["accuracy"])
    assert plain(completions=completions, completion_ids=ids, answer=["10"] * 4) == [1.0, 1.0, 1.0, 0.0]
