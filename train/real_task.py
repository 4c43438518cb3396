"""The real world's training task: reasoning-gym `chain_sum` arithmetic, a task SmolLM2-135M has signal on.

    sparse-rlvr real-world setup        # writes data/chain_sum_train.jsonl and data/chain_sum_heldout.jsonl

Why this task (issue 19): on GSM8K SmolLM2-135M-Instruct (4-bit) is right on ~1% of samples, so
nearly every GRPO group has zero reward variance and no gradient. On reasoning-gym's `chain_sum`
(PyPI `reasoning-gym` 0.1.25, Apache-2.0, seeded generators with their own verifiers) with
"Reply with only the number." it was measured (48 problems, bf16): 2 terms of 1 digit greedy 29%,
mean@4 at T = 0.7 17%, 52% of groups with reward variance. The answers are one short number, so
rollouts need few new tokens.

Levels (`LEVELS`, a curriculum from easy to harder; the training file mixes them in equal parts, the
held-out file holds `heldout_per_level` problems of each): `chain_sum` 2 terms of 1 digit (only 200
distinct expressions exist: half of them go to the held-out file), 3 terms of 1 digit. Measured on
the 4-bit model, bf16, 16 new tokens, this system prompt: 2 terms of 1 digit greedy 36% (50 problems),
mean@4 at T = 0.7 15%; 3 terms greedy 10%, mean@4 5% (60 problems); 2 terms of 2 digits was 2-3%
(too hard: no signal), so it is not a level. Every
held-out expression is absent from the training file (checked by a test). Rows: question (the
package's text), answer (its gold, an integer), level, expression, source_index. Read with
`rewards.data.load_math_dataset(data_dir, "chain_sum_train", **DATA_COLUMNS, system_prompt=SYSTEM_PROMPT)`;
scored by the project's reward (`rewards.math`, gold format "plain"); the package's own
`score_answer` is the cross-check (tests/train/test_real_world.py).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

PACKAGE = ("reasoning-gym==0.1.25", "reasoning_gym")
DATASET = "chain_sum"
# (name, reasoning-gym chain_sum keyword arguments), easy to harder
LEVELS = (("2x1", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}),
          ("3x1", {"min_terms": 3, "max_terms": 3, "min_digits": 1, "max_digits": 1}))
SPLITS = {"train": "chain_sum_train", "heldout": "chain_sum_heldout"}
DATA_COLUMNS = {"problem_column": "question", "answer_column": "answer", "gold_format": "plain"}
SYSTEM_PROMPT = "Reply with only the number."


def _entries(level: dict, seed: int, size: int) -> list[dict]:
    import reasoning_gym

    ds = reasoning_gym.create_dataset(DATASET, size=size, seed=seed, **level)
    return [ds[i] for i in range(size)]


def _row(entry: dict, level_name: str) -> dict:
    meta = entry["metadata"]
    return {"question": entry["question"], "answer": str(entry["answer"]), "level": level_name,
            "expression": meta["expression"], "source_index": meta["source_index"]}


def build_rows(train_size: int, heldout_per_level: int, seed: int) -> tuple[list[dict], list[dict], dict]:
    """(train_rows, heldout_rows, counts): seeded, held-out expressions unique and absent from train.

    The held-out file takes the first `heldout_per_level` distinct expressions of each level drawn
    with seed `seed`; the training file draws `train_size / len(LEVELS)` problems per level with seed
    `seed + 1`, skipping held-out expressions (repeats allowed: a level may have few expressions).

    Raises:
        ValueError: a level has fewer than `heldout_per_level` distinct expressions to hold out, or no
            expression left for training (lower `heldout_per_level`).
    """
    if train_size < 1 or heldout_per_level < 1:
        raise ValueError(f"train_size and heldout_per_level must be >= 1, got {train_size}, {heldout_per_level}")
    heldout, train, counts = [], [], {}
    per = [train_size // len(LEVELS) + (1 if i < train_size % len(LEVELS) else 0) for i in range(len(LEVELS))]
    for (name, level), n_train in zip(LEVELS, per):
        held_expr: dict[str, dict] = {}
        for entry in _entries(level, seed, 20 * heldout_per_level):
            held_expr.setdefault(entry["metadata"]["expression"], entry)
            if len(held_expr) == heldout_per_level:
                break
        if len(held_expr) < heldout_per_level:
            raise ValueError(f"level {name} has only {len(held_expr)} distinct expressions in "
                             f"{20 * heldout_per_level} draws, fewer than heldout_per_level={heldout_per_level}. "
                             "Fix: lower --task-heldout-per-level")
        heldout += [_row(e, name) for e in held_expr.values()]
        kept = [e for e in _entries(level, seed + 1, 4 * n_train + 400) if e["metadata"]["expression"] not in held_expr]
        if not kept:
            raise ValueError(f"level {name}: every expression is held out. Fix: lower --task-heldout-per-level")
        train += [_row(e, name) for e in kept[:n_train]]
        counts[f"num_train_{name}"] = len(kept[:n_train])
        counts[f"num_distinct_train_{name}"] = len({e["metadata"]["expression"] for e in kept[:n_train]})
    random.Random(seed).shuffle(train)
    return train, heldout, counts


def write_task(data_dir: Path, *, train_size: int, heldout_per_level: int, seed: int) -> dict:
    """Write `chain_sum_train.jsonl` and `chain_sum_heldout.jsonl` into `data_dir`; returns the manifest entry."""
    train, heldout, counts = build_rows(train_size, heldout_per_level, seed)
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in ((SPLITS["train"], train), (SPLITS["heldout"], heldout)):
        (data_dir / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"task": DATASET, "task_levels": {name: level for name, level in LEVELS}, "task_num_train": len(train),
            "task_num_heldout": len(heldout), "task_system_prompt": SYSTEM_PROMPT, **counts}
