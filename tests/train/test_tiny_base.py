"""train.tiny_base: demonstrations, config hashing, the cache, determinism, and the built base.

The `slow` tests use the session fixture `tiny_base_dir` (fast "ci" preset, built once into
`.cache/tiny-base-ci/` and reused); the determinism test builds a micro config (hidden 16, 4 steps)
twice in seconds.
"""

from __future__ import annotations

import json
import time

import pytest

from train.cli import main as cli_main
from train.tiny_base import META_FILE, PRESETS, TinyBaseConfig, build_tiny_base, preset_config, read_meta, sft_dataset

# A build small enough to run twice in a unit test (the accuracy it reaches is meaningless).
MICRO = dict(hidden_size=16, num_layers=1, num_heads=2, max_steps=4, batch_size=8, train_problems=64,
             tokenizer_corpus=200, eval_problems=2, eval_samples=2)


def test_sft_dataset_is_conversational_with_slips():
    cfg = TinyBaseConfig(train_problems=2000, slip_fraction=0.3)
    ds = sft_dataset(cfg)
    assert len(ds) == 2000
    row = ds[0]
    assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"].startswith("Compute ")
    assert row["completion"][0]["role"] == "assistant" and row["completion"][0]["content"].endswith("}")
    # slip rate ~ Binomial(2000, 0.3): mean 600, sd ~20.5 -> [520, 680] is ~4 sd either side
    assert 520 <= sum(ds["slipped"]) <= 680
    # clean demonstrations box the gold; slipped ones box a wrong value (the slip is carried to the end;
    # only a slip clamped at 0 on an intermediate result of 0 can leave the answer unchanged)
    wrong = []
    for r in ds.select(range(200)):
        expr = r["prompt"][0]["content"].removeprefix("Compute ").rstrip(".")
        boxed = r["completion"][0]["content"].rsplit("\\boxed{", 1)[1].rstrip("}")
        if r["slipped"]:
            wrong.append(boxed != str(eval(expr)))
        else:
            assert boxed == str(eval(expr))
    assert sum(wrong) >= 0.95 * len(wrong)
    assert sft_dataset(cfg)["completion"] == ds["completion"]  # deterministic for a seed


def test_config_hash_and_presets():
    assert TinyBaseConfig().hash() == TinyBaseConfig().hash()
    assert TinyBaseConfig(seed=1).hash() != TinyBaseConfig().hash()
    assert preset_config("ci").hidden_size == PRESETS["ci"]["hidden_size"]
    assert preset_config("default", lr=None).lr == TinyBaseConfig().lr  # None = keep the preset's value
    with pytest.raises(ValueError, match="unknown tiny-base preset"):
        preset_config("huge")
    with pytest.raises(ValueError, match="unknown tiny-base option"):
        preset_config("default", hidden=3)


def test_micro_build_is_deterministic_and_cached(tmp_path):
    import torch
    from safetensors.torch import load_file

    a = build_tiny_base(tmp_path / "a", seed=3, progress=False, **MICRO)
    b = build_tiny_base(tmp_path / "b", seed=3, progress=False, **MICRO)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    meta = read_meta(a)
    assert meta["config"]["seed"] == 3 and meta["train_steps_done"] == MICRO["max_steps"]
    assert not list(tmp_path.glob("a.tmp*"))  # scratch folder renamed into place

    start = time.monotonic()
    again = build_tiny_base(tmp_path / "a", seed=3, progress=False, **MICRO)
    assert again == a and time.monotonic() - start < 5
    assert read_meta(a)["build_seconds"] == meta["build_seconds"]  # untouched: served from the cache

    # another config in the same folder is rebuilt (and recorded under its own hash)
    build_tiny_base(tmp_path / "a", seed=4, progress=False, **MICRO)
    assert read_meta(a)["config_hash"] == preset_config(seed=4, **MICRO).hash()


def test_cli_help_and_bad_flag(capsys):
    with pytest.raises(SystemExit) as err:
        cli_main(["tiny-base", "--help"])
    assert err.value.code == 0
    out = capsys.readouterr().out
    assert "--output-dir" in out and "--preset" in out and "--force" in out
    with pytest.raises(SystemExit, match="--slip-fraction must be in"):
        cli_main(["tiny-base", "--output-dir", "x", "--slip-fraction", "1.5"])


@pytest.mark.slow
def test_tiny_base_loads_like_a_hub_model(tiny_base_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta = json.loads((tiny_base_dir / META_FILE).read_text())
    assert meta["config_hash"] == preset_config("ci").hash()
    tok = AutoTokenizer.from_pretrained(tiny_base_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir)
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    # every digit is one token
    assert len(tok("1234567890", add_special_tokens=False)["input_ids"]) == 10


@pytest.mark.slow
def test_tiny_base_is_competent_but_flawed(tiny_base_dir):
    """Fresh held-out problems (seed 1, not the ones stored in tiny_base.json)."""
    from rewards.data import load_math_dataset
    from train.evaluate import evaluate_model

    test = load_math_dataset("tiny", "test", num_samples=32, seed=1)
    out = evaluate_model(tiny_base_dir, test, num_samples=4, temperature=1.0, greedy=True, batch_size=128,
                         seed=1, progress=False)
    # competent: it solves a good share; flawed: sampling at T=1 is clearly worse than perfect
    assert 0.05 <= out["mean@4"] <= 0.9, out["mean@4"]
    assert out["pass@4"] >= out["mean@4"]
    completions = [c for p in out["problems"] for c in p["completions"]]
    assert sum("\\boxed{" in c for c in completions) >= 0.8 * len(completions)  # learned the format


@pytest.mark.slow
def test_tiny_base_cache_hit_is_fast(tiny_base_dir, capsys):
    start = time.monotonic()
    rc = cli_main(["tiny-base", "--output-dir", str(tiny_base_dir), "--preset", "ci", "--no-progress"])
    assert rc == 0 and time.monotonic() - start < 5
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["config_hash"] == preset_config("ci").hash()
