"""2-process runs of the divergence-weighted trainer on CPU: DDP (gloo), DeepSpeed ZeRO-2, ZeRO-3, LoRA.

Each test launches `train/grpo.py` (through `_dist_helpers.py`, which adds a per-rank log callback)
with `accelerate launch --config_file accelerate_configs/cpu_*.yaml` on the random tiny Llama
fixtures: 2 training steps, 8-token completions. The base model is a *different* random Llama with
the same tokenizer (`tiny_policy_dir`), so the divergence is non-zero from the first step. What is
checked: both ranks really ran (world size 2, gloo, the expected DeepSpeed stage), every step
logged its `shift/` metrics exactly once on every rank, the metrics are identical across ranks
(reduced over processes before logging), rank 0's trainer_state.json holds the same values, and
the final model was saved, and the recipe's own final evaluation (train/recipes/tiny_grpo.yaml: mean@8 at
temperature 1 after the final save, here on 4 held-out problems) wrote final_eval.json: under ZeRO-3 that
is rank 0 reloading the consolidated model alone after training (issue 12, fault 1). ~30-90 s per test on
2 idle cores (mostly imports and DeepSpeed start-up).
"""

from __future__ import annotations

import json
import math

import pytest

from _dist_helpers import RECIPE, launch, read_rank_logs, recipe_args, shift_logs

pytestmark = [pytest.mark.distributed]

MAX_STEPS = 2
PROBE = {"shift_probe_every_n_steps": 1, "shift_probe_num_prompts": 2}  # shift monitoring from the config
EXPECTED = {  # config -> (accelerate's distributed type, DeepSpeed ZeRO stage)
    "cpu_ddp": ("DistributedType.MULTI_CPU", None),
    "cpu_zero2": ("DistributedType.DEEPSPEED", 2),
    "cpu_zero3": ("DistributedType.DEEPSPEED", 3),
}


def _fail_message(proc) -> str:
    return f"exit code {proc.returncode}\n--- stdout (tail) ---\n{proc.stdout[-3000:]}\n--- stderr (tail) ---\n{proc.stderr[-6000:]}"


def _check_two_ranks(log_dir, distributed_type, zero_stage) -> dict[int, list[dict]]:
    logs = read_rank_logs(log_dir)
    assert sorted(logs) == [0, 1], f"expected rank0/rank1 logs, got ranks {sorted(logs)}"
    for rank, records in logs.items():
        begin = records[0]
        assert begin["event"] == "begin"
        assert begin["world_size"] == 2 and begin["backend"] == "gloo", begin
        assert begin["distributed_type"] == distributed_type, begin
        assert begin["zero_stage"] == zero_stage, begin
        assert begin["device"].startswith("cpu"), begin
    return logs


def _check_shift_once_and_equal(logs: dict[int, list[dict]]) -> dict[int, dict]:
    per_rank = {rank: shift_logs(records) for rank, records in logs.items()}
    for rank, records in logs.items():
        steps = [r["step"] for r in records if r["event"] == "log" and any(k.startswith("shift/") for k in r["logs"])]
        assert steps == list(range(1, MAX_STEPS + 1)), f"rank {rank}: shift/ metrics logged at steps {steps}"
    rank0, rank1 = per_rank[0], per_rank[1]
    for step, metrics in rank0.items():
        expected = {"shift/js_mean", "shift/weight_mean", "shift/frac_js_gt_0.1", "shift/weight_p99"}
        assert expected <= set(metrics)
        # Reduced across processes before logging: both ranks must report the very same numbers.
        assert metrics == rank1[step], f"step {step}: rank 0 {metrics} != rank 1 {rank1[step]}"
        for key, value in metrics.items():
            assert value is None or math.isfinite(value), f"{key}={value} at step {step}"
    return rank0


def _check_probe_every_step(logs: dict[int, list[dict]]) -> dict[int, dict]:
    """The config-driven probe callback (shift_probe_every_n_steps=1) ran at every step on both ranks, with the
    same numbers (every rank runs the same forwards) and the same metric names as the trainer's shift/."""
    from diagnostics.shift_stats import stat_names

    per_rank = {}
    for rank, records in logs.items():
        per_rank[rank] = {r["step"]: {k: v for k, v in r["logs"].items() if k.startswith("shift_probe/")}
                          for r in records if r["event"] == "log" and any(k.startswith("shift_probe/") for k in r["logs"])}
        assert sorted(per_rank[rank]) == list(range(1, MAX_STEPS + 1)), f"rank {rank}: {sorted(per_rank[rank])}"
    for step, metrics in per_rank[0].items():
        assert {f"shift_probe/{n}" for n in stat_names("js")} <= set(metrics), step
        assert metrics["shift_probe/n_tokens"] > 0
        same = {k: v for k, v in metrics.items() if k != "shift_probe/seconds"}
        other = {k: v for k, v in per_rank[1][step].items() if k != "shift_probe/seconds"}
        assert same.keys() == other.keys()
        for key, value in same.items():
            assert other[key] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), (step, key)
    return per_rank[0]


def _check_trainer_state(output_dir, rank0_shift: dict[int, dict]) -> None:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == MAX_STEPS
    from_state = {
        e["step"]: {k: v for k, v in e.items() if k.startswith("shift/")}
        for e in state["log_history"] if any(k.startswith("shift/") for k in e)
    }
    assert sorted(from_state) == sorted(rank0_shift)
    for step, metrics in rank0_shift.items():
        for key, value in metrics.items():  # None = undefined this step (e.g. a top-1% share of < 100 tokens)
            expected = None if value is None else pytest.approx(value, rel=1e-9, abs=1e-12)
            assert from_state[step][key] == expected, (step, key)


def _check_final_eval(output_dir) -> None:
    """The recipe's evaluation ran after training: K and temperature from the recipe, 4 problems."""
    import yaml

    recipe = yaml.safe_load(RECIPE.read_text())
    path = output_dir / "final_eval.json"
    assert path.exists(), sorted(p.name for p in output_dir.iterdir())
    result = json.loads(path.read_text())
    k = recipe["eval_num_samples"]
    assert result["num_samples"] == k and result["temperature"] == recipe["eval_temperature"], result
    assert result["num_problems"] == 4 and 0.0 <= result[f"mean@{k}"] <= result[f"pass@{k}"] <= 1.0, result


@pytest.mark.parametrize("config_name", sorted(EXPECTED))
def test_two_process_divergence_weighted_run(config_name, tiny_model_dir, tiny_policy_dir, tmp_path):
    out, log_dir = tmp_path / "out", tmp_path / "logs"
    args = recipe_args(tiny_model_dir, out, max_steps=MAX_STEPS, base_model_name_or_path=tiny_policy_dir,
                       weighting="sigmoid", weighting_alpha=10.0, **PROBE)  # weighting_scale: 'auto' (the default)
    proc = launch(config_name, args, rank_log_dir=log_dir)
    assert proc.returncode == 0, _fail_message(proc)
    assert "computed at loss time" in proc.stdout  # the default path: D from the loss forward's hidden states

    logs = _check_two_ranks(log_dir, *EXPECTED[config_name])
    rank0 = _check_shift_once_and_equal(logs)  # D_ref (shift/weighting_scale) included: same on both ranks
    _check_probe_every_step(logs)
    # Two different random models: every token's JS is > 0.
    for step, metrics in rank0.items():
        assert 0.0 < metrics["shift/js_mean"] <= math.log(2), (step, metrics)
    # weighting_scale='auto': batch 1 has no D_ref yet (weights 1); D_ref is then the p99 of batch 1's D over
    # BOTH ranks' tokens (= the gathered shift/js_p99), and batch 2's weights use it.
    assert rank0[1]["shift/weighting_scale"] is None and rank0[1]["shift/weight_mean"] == 1.0
    assert rank0[2]["shift/weighting_scale"] == pytest.approx(rank0[1]["shift/js_p99"], rel=1e-6)
    assert rank0[2]["shift/weight_mean"] > 1.0 and rank0[2]["shift/weight_frac_not_one"] > 0.0
    assert rank0[2]["shift/weight_p99"] > 1.2  # D near D_ref: 1 + (sigmoid(10 D / D_ref) - 1/2) ~ 1.5
    _check_trainer_state(out, rank0)
    assert (out / "config.json").exists() and any(out.glob("*.safetensors")), sorted(p.name for p in out.iterdir())
    _check_final_eval(out)


def test_two_process_lora_run(tiny_model_dir, tmp_path):
    """LoRA under DDP: the base is the policy with its adapter disabled (no second model)."""
    out, log_dir = tmp_path / "out", tmp_path / "logs"
    args = recipe_args(tiny_model_dir, out, max_steps=MAX_STEPS, use_peft="true", lora_r=4, lora_alpha=8,
                       lora_dropout=0.0, lora_target_modules=["q_proj", "v_proj"], **PROBE)
    proc = launch("cpu_ddp", args, rank_log_dir=log_dir)
    assert proc.returncode == 0, _fail_message(proc)
    assert "computed at loss time" in proc.stdout  # base = adapter-disabled policy, run inside the loss step

    logs = _check_two_ranks(log_dir, "DistributedType.MULTI_CPU", None)
    rank0 = _check_shift_once_and_equal(logs)
    _check_probe_every_step(logs)
    # Step 1's batch is generated before any update and LoRA's B matrices start at 0, so the policy
    # equals the adapter-disabled base exactly there: D = 0 and sigmoid weights 1 + s(σ(0) - ½) = 1.
    assert rank0[1]["shift/js_mean"] == pytest.approx(0.0, abs=1e-6)
    assert rank0[1]["shift/weight_mean"] == pytest.approx(1.0, abs=1e-6)
    assert (out / "adapter_config.json").exists(), sorted(p.name for p in out.iterdir())
    _check_final_eval(out)
