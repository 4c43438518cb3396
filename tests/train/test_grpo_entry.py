"""The training entry point (`train/grpo.py`, `sparse-rlvr grpo`), its recipes and accelerate configs.

In-process and single-process: recipes parse into the right config, accelerate configs describe
what their headers claim, bad settings fail before the first step with a message naming the
setting, `--resume_from_checkpoint true` resolution, and one seconds-long end-to-end run through
`sparse-rlvr grpo` with the final evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml
from transformers import TrainerCallback

from diagnostics.shift_stats import stat_names
from train import grpo

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "train" / "recipes").glob("*.yaml"))
CONFIGS = REPO / "accelerate_configs"


def _tiny_argv(model_dir, output_dir, **overrides) -> list[str]:
    from _dist_helpers import grpo_args

    return grpo_args(model_dir, output_dir, **overrides)


# ------------------------------------------------------------------------------------------------
# Recipes and accelerate configs
# ------------------------------------------------------------------------------------------------

def test_tiny_recipe_parses_to_the_documented_setup():
    script_args, cfg, model_args = grpo.parse_args(["--config", str(REPO / "train/recipes/tiny_grpo.yaml")])
    assert type(cfg).__name__ == "DivergenceGRPOConfig"
    assert (cfg.shift_probe_every_n_steps, cfg.shift_probe_source) == (50, "eval")  # shift monitoring on
    assert (cfg.weighting, cfg.divergence_source, cfg.divergence_measure) == ("sigmoid", "base", "js")
    assert cfg.use_cpu and cfg.beta == 0.0 and cfg.learning_rate == 3e-5 and cfg.lr_scheduler_type == "constant"
    # 8 prompts x 8 generations per step on one process: 64 completions / 8 generations = 8 prompts.
    assert cfg.num_generations == 8 and cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps == 64
    assert script_args.dataset_name == "tiny" and script_args.reward_funcs == ["accuracy"]
    assert script_args.eval_num_samples > 0
    # The commented baseline really is a valid override.
    _, baseline, _ = grpo.parse_args(["--config", str(REPO / "train/recipes/tiny_grpo.yaml"), "--weighting", "none"])
    assert baseline.weighting == "none"


@pytest.mark.parametrize("mode", ["lenient", "strict"])
def test_extraction_reaches_the_accuracy_reward(mode):
    script_args, cfg, _ = grpo.parse_args(
        ["--config", str(REPO / "train/recipes/tiny_grpo.yaml"), "--extraction", mode])
    assert cfg.extraction == mode
    (acc,) = grpo.build_reward_funcs(script_args, cfg)
    assert acc.keywords["extraction"] == mode
    # A marker-less completion: lenient reads its last number, strict scores it no_answer.
    assert acc(completions=["so 2+3 = 5"], answer=["5"]) == [1.0 if mode == "lenient" else 0.0]


@pytest.mark.parametrize("name", ["qwen2.5-math-1.5b_grpo.yaml", "qwen2.5-7b_zero3.yaml"])
def test_gpu_recipes_parse(name):
    # bf16 needs a GPU; everything else is validated as on the cluster.
    script_args, cfg, model_args = grpo.parse_args(
        ["--config", str(REPO / "train/recipes" / name), "--bf16", "false", "--use_cpu", "true"])
    assert cfg.use_vllm and cfg.vllm_mode == "colocate" and cfg.weighting == "sigmoid"
    assert model_args.model_name_or_path.startswith("Qwen/")
    assert cfg.resume_from_checkpoint == "true"
    assert cfg.reward_weights is None or len(cfg.reward_weights) == len(script_args.reward_funcs)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_header_names_a_real_command(recipe):
    header = "".join(line for line in recipe.read_text().splitlines(keepends=True) if line.startswith("#"))
    configs = re.findall(r"--config_file (accelerate_configs/\S+\.yaml)", header)
    assert configs, f"{recipe.name}: header has no `accelerate launch --config_file ...` command"
    for path in configs:
        assert (REPO / path).exists(), f"{recipe.name} names {path}, which does not exist"
    assert f"--config train/recipes/{recipe.name}" in header


@pytest.mark.parametrize("name, processes, dist_type, zero_stage, precision", [
    ("ddp", 8, "MULTI_GPU", None, "bf16"),
    ("zero2", 8, "DEEPSPEED", 2, "bf16"),
    ("zero3", 8, "DEEPSPEED", 3, "bf16"),
    ("fsdp", 8, "FSDP", None, "bf16"),
    # 2 CPU processes: MULTI_CPU / --cpu would start only one; DeepSpeed needs use_cpu false in the yaml.
    ("cpu_ddp", 2, "MULTI_GPU", None, "no"),
    ("cpu_zero2", 2, "DEEPSPEED", 2, "no"),
    ("cpu_zero3", 2, "DEEPSPEED", 3, "no"),
])
def test_accelerate_configs(name, processes, dist_type, zero_stage, precision):
    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    assert cfg["num_processes"] == processes and cfg["distributed_type"] == dist_type
    assert cfg["use_cpu"] is False and cfg["mixed_precision"] == precision
    assert cfg.get("deepspeed_config", {}).get("zero_stage") == zero_stage
    assert f"accelerate_configs/{name}.yaml" in (CONFIGS / f"{name}.yaml").read_text()  # header command


def test_every_script_argument_has_help():
    missing = [f.name for f in dataclasses.fields(grpo.GRPOScriptArguments) if not f.metadata.get("help")]
    assert not missing


def test_cli_help_lists_our_flags(capsys):
    from train.cli import main as cli_main

    with pytest.raises(SystemExit) as exc:
        cli_main(["grpo", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--dataset_name", "--reward_funcs", "--eval_num_samples", "--weighting", "--divergence_measure",
                 "--use_peft", "--resume_from_checkpoint"):
        assert flag in text, flag


# ------------------------------------------------------------------------------------------------
# Bad configurations fail at start-up
# ------------------------------------------------------------------------------------------------

class _StepRecorder(TrainerCallback):
    def __init__(self):
        self.events = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.events.append("train_begin")

    def on_step_begin(self, args, state, control, **kwargs):
        self.events.append("step")


@pytest.mark.parametrize("override, setting", [
    ({"weighting": "cubic"}, "weighting"),
    ({"divergence_measure": "hellinger"}, "divergence_measure"),
    ({"weighting": "top_quantile", "weighting_rho": 1.5}, "weighting_rho"),
    ({"weighting": "top_quantile", "weighting_rho": 0.0}, "weighting_rho"),
    ({"weighting": "random_quantile", "weighting_rho": -0.2}, "weighting_rho"),
])
def test_bad_config_fails_before_training(override, setting, tiny_model_dir, tmp_path):
    recorder = _StepRecorder()
    with pytest.raises(ValueError, match=setting):
        grpo.main(_tiny_argv(tiny_model_dir, tmp_path / "out", **override), callbacks=[recorder])
    assert recorder.events == [] and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def other_vocab_model_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny Llama whose vocabulary has 16 more rows than the tokenizer's (a different model family)."""
    from train.tiny_world import random_tiny_model

    path = tmp_path_factory.mktemp("other_vocab")
    model = random_tiny_model(tiny_tokenizer, seed=2, hidden_size=16, num_layers=2, num_heads=2)
    model.resize_token_embeddings(len(tiny_tokenizer) + 16)
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def test_base_with_other_vocabulary_fails_before_training(tiny_model_dir, other_vocab_model_dir, tmp_path):
    recorder = _StepRecorder()
    with pytest.raises(ValueError, match="vocabulary") as exc:
        grpo.main(_tiny_argv(tiny_model_dir, tmp_path / "out", base_model_name_or_path=other_vocab_model_dir),
                  callbacks=[recorder])
    assert "base_model_name_or_path" in str(exc.value)
    assert recorder.events == []
    assert not list((tmp_path / "out").glob("checkpoint-*")) and not (tmp_path / "out" / "trainer_state.json").exists()


def test_reward_weights_must_match_reward_funcs(tiny_model_dir, tmp_path):
    argv = _tiny_argv(tiny_model_dir, tmp_path / "out", reward_funcs=["accuracy", "format"], reward_weights=[1.0])
    with pytest.raises(ValueError, match="reward_weights"):
        grpo.main(argv)


def test_unknown_reward_function_is_named(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="rouge"):
        grpo.main(_tiny_argv(tiny_model_dir, tmp_path / "out", reward_funcs="rouge"))


# ------------------------------------------------------------------------------------------------
# Resume resolution
# ------------------------------------------------------------------------------------------------

def test_resolve_resume(tmp_path):
    assert grpo.resolve_resume(None, str(tmp_path)) is None
    assert grpo.resolve_resume("false", str(tmp_path)) is None
    # 'true' with nothing saved yet: a fresh start, so one command both starts and restarts a job.
    assert grpo.resolve_resume("true", str(tmp_path / "missing")) is None
    assert grpo.resolve_resume("true", str(tmp_path)) is None
    for step in (1, 3, 20):
        (tmp_path / f"checkpoint-{step}").mkdir()
    assert grpo.resolve_resume("true", str(tmp_path)) == str(tmp_path / "checkpoint-20")  # numeric, not lexical
    assert grpo.resolve_resume(True, str(tmp_path)) == str(tmp_path / "checkpoint-20")
    assert grpo.resolve_resume(str(tmp_path / "checkpoint-3"), "ignored") == str(tmp_path / "checkpoint-3")
    with pytest.raises(FileNotFoundError, match="resume_from_checkpoint"):
        grpo.resolve_resume(str(tmp_path / "checkpoint-7"), str(tmp_path))


# ------------------------------------------------------------------------------------------------
# End to end, one process, through the console-script dispatcher
# ------------------------------------------------------------------------------------------------

def test_sparse_rlvr_grpo_trains_saves_and_evaluates(tiny_model_dir, tmp_path):
    from train.cli import main as cli_main

    out = tmp_path / "out"
    argv = _tiny_argv(tiny_model_dir, out, max_steps=2, eval_num_samples=2, eval_num_problems=4,
                      eval_max_new_tokens=8, eval_batch_size=8, shift_probe_every_n_steps=2, shift_probe_num_prompts=2)
    assert cli_main(["grpo", *argv]) == 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    shift_steps = [e["step"] for e in state["log_history"] if "shift/js_mean" in e]
    assert shift_steps == [1, 2]
    # shift monitoring turned on from the command line: shift_probe/* at step 2, the names of shift/*
    probe = [e for e in state["log_history"] if "shift_probe/js_mean" in e]
    assert [e["step"] for e in probe] == [2]
    assert {f"shift_probe/{n}" for n in stat_names("js")} <= set(probe[0])
    assert (out / "shift_probe.jsonl").exists() and (out / "shift_probe_set.jsonl").exists()
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists()
    final = json.loads((out / "final_eval.json").read_text())
    assert final["num_problems"] == 4 and final["num_samples"] == 2
    assert 0.0 <= final["mean@2"] <= final["pass@2"] <= 1.0
