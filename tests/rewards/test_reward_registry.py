"""TRL adapters: names, signatures, conversational completions, overlong values, metric logging."""

from __future__ import annotations

import logging

import pytest

from rewards.registry import get_reward_funcs


def test_names_and_unknown_name():
    funcs = get_reward_funcs(["accuracy", "format", "overlong"], max_completion_length=10)
    assert [f.__name__ for f in funcs] == ["accuracy", "format", "overlong"]
    with pytest.raises(ValueError, match=r"\['accuracy', 'format', 'overlong'\]"):
        get_reward_funcs(["accuracy", "acc"])
    with pytest.raises(ValueError, match="not accepted"):
        get_reward_funcs(["format"], answer_column="gold")
    with pytest.raises(ValueError, match="max_completion_length"):
        get_reward_funcs(["overlong"])


def test_accuracy_strings_conversational_and_metrics():
    (acc,) = get_reward_funcs(["accuracy"], answer_column="solution")
    metrics, extra = {}, {}
    completions = [
        r"1+1=2 \boxed{2}",
        [{"role": "assistant", "content": "The answer is 2."}],
        [{"role": "assistant", "content": [{"type": "text", "text": r"\boxed{3}"}]}],
        "no answer",
    ]
    out = acc(
        completions=completions, prompts=["p"] * 4, solution=["2"] * 4, problem=["1+1"] * 4,
        log_metric=metrics.__setitem__, log_extra=extra.__setitem__,
    )
    assert out == [1.0, 1.0, 0.0, 0.0]
    assert metrics["rewards/accuracy/no_answer_frac"] == 0.25  # 1 of 4 has no final answer
    assert metrics["rewards/accuracy/timeout_frac"] == 0.0
    assert metrics["rewards/accuracy/answer_too_long_frac"] == 0.0
    assert metrics["rewards/accuracy/fallback_frac"] == 0.0  # all three answers carry a marker
    assert extra["accuracy_status"] == ["ok", "ok", "ok", "no_answer"]
    assert extra["accuracy_path"] == ["marker", "marker", "marker", ""]


def test_accuracy_missing_column_names_the_fix():
    (acc,) = get_reward_funcs(["accuracy"])
    with pytest.raises(ValueError, match="answer_column"):
        acc(completions=["x"], solution=["1"])


def test_bad_gold_is_warned_once_with_its_row(caplog):
    (acc,) = get_reward_funcs(["accuracy"])
    with caplog.at_level(logging.WARNING, logger="rewards.registry"):
        acc(completions=["a", "b"], answer=["", ""], problem=["row-7 problem", "row-7 problem"])
        acc(completions=["c"], answer=[""], problem=["row-7 problem"])
    warnings = [r for r in caplog.records if "cannot be parsed" in r.getMessage()]
    assert len(warnings) == 1
    assert "row-7 problem" in warnings[0].getMessage()


def test_format_reward():
    fmt, fmt_think = get_reward_funcs(["format"]), get_reward_funcs(["format"], think=True)
    texts = [
        r"so \boxed{5}.",  # single final box
        r"\boxed{1} then \boxed{2}",  # two boxes
        r"\boxed{5} and more text",  # box not final
        r"\boxed{}",  # empty
        r"<think>2+3</think> \boxed{5}$",
    ]
    assert fmt[0](texts) == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert fmt_think[0](texts) == [0.0, 0.0, 0.0, 0.0, 1.0]


def test_overlong_matches_dapo_formula():
    (ov,) = get_reward_funcs(["overlong"], max_completion_length=10, overlong_buffer=4)
    # L_max=10, L_cache=4, safe = 6: |y|=5,6 -> 0; |y|=8 -> (6-8)/4 = -0.5; |y|=10 -> (6-10)/4 = -1;
    # |y|=11 > L_max -> -1.
    ids = [[0] * n for n in (5, 6, 8, 10, 11)]
    assert ov(["x"] * 5, completion_ids=ids) == [0.0, 0.0, -0.5, -1.0, -1.0]


def test_accuracy_extraction_modes_and_fallback_metric():
    (lenient,) = get_reward_funcs(["accuracy"])
    (strict,) = get_reward_funcs(["accuracy"], extraction="strict")
    completions = [r"\boxed{4}", "so the total is 4", r"\boxed{" + "1+" * 600 + "1}", "no number"]
    for fn, expected, fallback in ((lenient, [1.0, 1.0, 0.0, 0.0], 0.25), (strict, [1.0, 0.0, 0.0, 0.0], 0.0)):
        metrics, extra = {}, {}
        out = fn(completions=completions, answer=["4"] * 4, log_metric=metrics.__setitem__, log_extra=extra.__setitem__)
        assert out == expected
        assert metrics["rewards/accuracy/fallback_frac"] == fallback  # lenient: 1 of 4 found by the fallback
        assert metrics["rewards/accuracy/answer_too_long_frac"] == 0.25  # the 1201-character box
        assert set(extra) == {"accuracy_status", "accuracy_path"}
    with pytest.raises(ValueError, match="extraction='loose'"):
        get_reward_funcs(["accuracy"], extraction="loose")


def test_add_reward_arguments():
    import argparse

    from rewards.registry import add_reward_arguments

    parser = argparse.ArgumentParser()
    add_reward_arguments(parser)
    assert parser.parse_args([]).extraction == "lenient"
    assert parser.parse_args(["--extraction", "strict"]).extraction == "strict"
    with pytest.raises(SystemExit):
        parser.parse_args(["--extraction", "loose"])
