"""The tiny world's task: multi-step integer arithmetic with verifiable answers.

    problem:  "Compute 65-6+4-9."
    answer:   "54"
    solution: "65-6=59 59+4=63 63-9=54 \\boxed{54}"

The first operand is 10..99, then 2..3 more operands 1..9 joined by + or -, chosen so every
intermediate result stays in [0, 199]. Problems are deterministic for a seed, de-duplicated, and
split into train/test by a hash of the problem text, so the splits are disjoint for every seed and
size. Columns follow real math datasets: `problem` and `answer` (gold), loaded through the same
prompt-building path as hub datasets (`rewards.data`).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

MIN_FIRST, MAX_FIRST = 10, 99
MIN_OPERAND, MAX_OPERAND = 1, 9
MAX_VALUE = 199
TEST_BUCKETS = 10  # 1 in 10 distinct problems belongs to the test split
SPLITS = ("train", "test")


@dataclass(frozen=True)
class TinyProblem:
    first: int
    ops: tuple[tuple[str, int], ...]  # (("-", 6), ("+", 4), ...)

    @property
    def text(self) -> str:
        return "Compute " + str(self.first) + "".join(f"{op}{n}" for op, n in self.ops) + "."

    def intermediates(self) -> list[int]:
        values, acc = [], self.first
        for op, n in self.ops:
            acc = acc + n if op == "+" else acc - n
            values.append(acc)
        return values

    @property
    def answer(self) -> int:
        return self.intermediates()[-1]


def split_of(problem_text: str) -> str:
    """Deterministic split assignment from the problem text alone (disjoint by construction)."""
    h = int(hashlib.sha256(problem_text.encode()).hexdigest()[:8], 16)
    return "test" if h % TEST_BUCKETS == 0 else "train"


def sample_problem(rng: random.Random) -> TinyProblem:
    first = rng.randint(MIN_FIRST, MAX_FIRST)
    ops, acc = [], first
    for _ in range(rng.choice((2, 3))):
        n = rng.randint(MIN_OPERAND, MAX_OPERAND)
        choices = [op for op in "+-" if 0 <= (acc + n if op == "+" else acc - n) <= MAX_VALUE]
        op = rng.choice(choices)
        acc = acc + n if op == "+" else acc - n
        ops.append((op, n))
    return TinyProblem(first, tuple(ops))


def solution_text(problem: TinyProblem, slip: tuple[int, int] | None = None) -> str:
    """Step-by-step demonstration ending in \\boxed{}.

    `slip=(step, delta)` makes intermediate result `step` off by `delta` and carries the error to
    the end (a *plausible* mistake: every later step is computed correctly from the wrong value).
    """
    parts, acc = [], problem.first
    for i, (op, n) in enumerate(problem.ops):
        res = acc + n if op == "+" else acc - n
        if slip is not None and slip[0] == i:
            res = max(0, res + slip[1])
        parts.append(f"{acc}{op}{n}={res}")
        acc = res
    return " ".join(parts) + f" \\boxed{{{acc}}}"


def sample_slip(problem: TinyProblem, rng: random.Random) -> tuple[int, int]:
    delta = rng.choice([d for d in range(-10, 11) if d != 0])
    return rng.randrange(len(problem.ops)), delta


def generate_problems(split: str, n: int, seed: int = 0) -> list[TinyProblem]:
    """`n` distinct problems of `split` ("train" or "test"), deterministic for `seed`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    if n <= 0:
        raise ValueError(f"number of problems must be > 0, got {n}")
    rng = random.Random(f"tiny-math-{seed}-{split}")
    seen: set[str] = set()
    out: list[TinyProblem] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * n + 10_000:
            raise ValueError(f"could not generate {n} distinct {split} problems; ask for fewer")
        p = sample_problem(rng)
        if p.text in seen or split_of(p.text) != split:
            continue
        seen.add(p.text)
        out.append(p)
    return out


def tiny_math_dataset(split: str = "train", n: int = 2000, seed: int = 0):
    """A `datasets.Dataset` with columns `problem` and `answer`, like a hub math dataset."""
    from datasets import Dataset

    problems = generate_problems(split, n, seed)
    return Dataset.from_dict({"problem": [p.text for p in problems], "answer": [str(p.answer) for p in problems]})
