"""The math reward on real completions: SmolLM2-135M-Instruct (4-bit GGUF, de-quantized; base and
GRPO-trained) on GSM8K test problems, sampled by `sparse-rlvr demo --world real` (its
`completions.jsonl`), each labelled by a person who read the completion's final answer and compared it
with the gold (NOT by running the reward).

Label rule (`label`): 1 when the answer the completion commits to as final (a `\\boxed{}`, "the answer
is ...", `#### N`, or the number of its closing sentence) equals the gold; 0 otherwise, including
completions cut off by the length cap before any final answer. `note` says what the labeller saw.
Rows with `xfail` are known disagreements of the reward with the label, with the reason.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

CASES = [json.loads(line) for line in (Path(__file__).parent / "real_completions.jsonl").read_text().splitlines()
         if line.strip()]


def test_enough_labelled_real_completions():
    assert len(CASES) >= 200
    assert {c["model"] for c in CASES} >= {"base", "grpo-none", "grpo-js"}  # base and trained policies
    assert set(Counter(c["label"] for c in CASES)) <= {0, 1}


@pytest.mark.parametrize("case", CASES, ids=[f"{c['model']}-{c['problem_index']}-{c['sample']}" for c in CASES])
def test_reward_matches_label(case, request):
    from rewards.math import score_batch

    if case.get("xfail"):
        request.applymarker(pytest.mark.xfail(reason=case["xfail"], strict=True))
    assert score_batch([case["completion"]], [case["gold"]])[0] == float(case["label"]), case.get("note")
