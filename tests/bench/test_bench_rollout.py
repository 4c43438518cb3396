"""bench/bench_rollout.py runs end to end on SmolLM2 cut to 2 layers and measures what it says it measures.

Not a timing test: only that every mode ran, decoded the asked number of tokens, and that each GRPO-step
mode measured exactly `--step-steps` optimizer steps after its warm-up (a lost `max_steps` once made every
mode run a whole epoch and log only twice, so the "median of 3" was one step).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from train import real_world
from train.vllm_cpu import vllm_installed

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bool(real_world.missing_packages()),
                                 reason="real-world packages not installed (scripts/setup_env.sh installs them)")]


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_rollout", REPO / "bench" / "bench_rollout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_rollout_measures_every_mode(tmp_path):
    out = tmp_path / "bench.json"
    rc = _load_bench().main(["--truncated", "2", "--threads", "1", "--prompts", "2", "--new-tokens", "4",
                             "--rounds", "1", "--step-prompts", "2", "--num-generations", "2",
                             "--step-new-tokens", "4", "--step-steps", "2", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    expected_gen = {"fp32", "autocast", "bf16_copy"} | ({"vllm"} if vllm_installed() else set())
    assert set(res["generate"]) == expected_gen
    assert all(len(r["rounds"]) == 1 and math.isfinite(r["tokens_per_s"]) and r["tokens_per_s"] > 0
               for r in res["generate"].values())
    expected_step = {"fp32", "autocast_only", "bf16"} | ({"vllm"} if vllm_installed() else set())
    assert set(res["step"]) == expected_step
    assert all(len(r["steps"]) == 2 and r["step_seconds"] > 0 for r in res["step"].values())
