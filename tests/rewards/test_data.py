"""rewards.data.load_math_dataset: one loading path for the tiny world, local files and hub ids.

Everything here uses small files written into tmp_path in the schemas of real datasets (GSM8K:
question / answer "... #### 42"; MATH: problem / solution with \\boxed{}); nothing downloads.
"""

from __future__ import annotations

import json

import pytest

from rewards.data import TINY_DEFAULT_SIZE, load_math_dataset

GSM8K_ROWS = [
    {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3+4=<<3+4=7>>7\n#### 7"},
    {"question": "A box holds 6 eggs. How many in 7 boxes?", "answer": "6*7=<<6*7=42>>42\n#### 42"},
    {"question": "Half of 10?", "answer": "10/2=5\n#### 5"},
]
MATH_ROWS = [
    {"problem": "What is $3+9$?", "solution": "We add: $3+9=\\boxed{12}$.", "level": "Level 1"},
    {"problem": "Solve $2x=8$.", "solution": "Divide by 2, so $x=\\boxed{4}$.", "level": "Level 2"},
]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_tiny_source_builds_conversational_prompts():
    ds = load_math_dataset("tiny", "test", num_samples=5, seed=0)
    assert ds.column_names == ["prompt", "answer", "problem"]
    assert len(ds) == 5
    row = ds[0]
    assert row["prompt"] == [{"role": "user", "content": row["problem"]}]
    assert row["problem"].startswith("Compute ")
    # The gold is the value of the expression: "Compute 65-6+4-9." -> eval("65-6+4-9") = 54.
    assert row["answer"] == str(eval(row["problem"].removeprefix("Compute ").rstrip(".")))


def test_tiny_default_sizes_and_disjoint_splits():
    train = load_math_dataset("tiny", "train")
    test = load_math_dataset("tiny", "test")
    assert (len(train), len(test)) == (TINY_DEFAULT_SIZE["train"], TINY_DEFAULT_SIZE["test"])
    assert not set(train["problem"]) & set(test["problem"])


def test_tiny_bad_split():
    with pytest.raises(ValueError, match="split='train' or 'test'"):
        load_math_dataset("tiny", "validation")


def test_gsm8k_schema_jsonl_with_column_mapping_and_system_prompt(tmp_path):
    path = _write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS)
    ds = load_math_dataset(str(path), problem_column="question", answer_column="answer",
                           gold_format="gsm8k", system_prompt="Be brief.")
    # GSM8K golds are the text after '####'.
    assert ds["answer"] == ["7", "42", "5"]
    assert ds["problem"] == [r["question"] for r in GSM8K_ROWS]
    assert ds[1]["prompt"] == [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": GSM8K_ROWS[1]["question"]}]


def test_gsm8k_auto_format_and_limit(tmp_path):
    path = _write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS)
    ds = load_math_dataset(str(path), problem_column="question", num_samples=2)
    assert ds["answer"] == ["7", "42"]


@pytest.mark.parametrize("ext", ["parquet", "json"])
def test_math_schema_boxed_solutions(tmp_path, ext):
    import pandas as pd

    path = tmp_path / f"math.{ext}"
    df = pd.DataFrame(MATH_ROWS)
    df.to_parquet(path) if ext == "parquet" else df.to_json(path, orient="records")
    ds = load_math_dataset(str(path), answer_column="solution", gold_format="boxed")
    # The gold is the content of the last \boxed{} in the solution.
    assert ds["answer"] == ["12", "4"]
    assert ds.column_names == ["prompt", "answer", "problem"]  # 'solution', 'level' dropped


def test_folder_picks_the_split_file(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", GSM8K_ROWS)
    _write_jsonl(tmp_path / "test.jsonl", GSM8K_ROWS[:1])
    ds = load_math_dataset(str(tmp_path), "test", problem_column="question")
    assert ds["answer"] == ["7"]


def test_missing_columns_names_present_columns_and_flag(tmp_path):
    path = _write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS)
    with pytest.raises(ValueError) as err:
        load_math_dataset(str(path))  # default problem_column="problem" does not exist
    msg = str(err.value)
    assert "'problem'" in msg and "question" in msg and "--problem-column" in msg
    assert "\n" not in msg


def test_empty_dataset(tmp_path):
    import pandas as pd

    path = tmp_path / "empty.parquet"
    pd.DataFrame({"problem": pd.Series([], dtype=str), "answer": pd.Series([], dtype=str)}).to_parquet(path)
    with pytest.raises(ValueError, match="is empty"):
        load_math_dataset(str(path))


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_math_dataset("/nonexistent/data.jsonl")


def test_rows_without_usable_gold_are_dropped_and_all_bad_is_an_error(tmp_path, caplog):
    rows = MATH_ROWS + [{"problem": "No answer here.", "solution": "I do not know.", "level": "Level 5"}]
    path = _write_jsonl(tmp_path / "math.jsonl", rows)
    ds = load_math_dataset(str(path), answer_column="solution", gold_format="boxed")
    assert len(ds) == 2
    assert "dropped 1 of 3" in caplog.text
    bad = _write_jsonl(tmp_path / "bad.jsonl", rows[-1:])
    with pytest.raises(ValueError, match="--gold-format"):
        load_math_dataset(str(bad), answer_column="solution", gold_format="boxed")
