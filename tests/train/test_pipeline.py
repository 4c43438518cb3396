"""train.pipeline: the one command builder of GRPO runs, checked against the entry point's parser."""

from __future__ import annotations

import pytest

from train.pipeline import grpo_command, grpo_field_names


def test_every_pipeline_variant_parses(tmp_path):
    """Every variant of `demo`, `demo --world real` and `compare` builds a command the TrlParser accepts."""
    from train import compare, demo, real_demo
    from train.grpo import parse_args

    recipe = str(demo.RECIPE)
    commands = [grpo_command(recipe, {"model_name_or_path": "m", "output_dir": str(tmp_path), **v})
                for v in demo.VARIANTS.values()]
    commands += [compare.run_command(recipe, v, 0, tmp_path, ["--eval_num_samples", "0"]) for v in compare.VARIANTS]
    commands += [grpo_command(str(real_demo.RECIPE), {"output_dir": str(tmp_path)}, extra)
                 for extra in real_demo.VARIANTS.values()]
    for cmd in commands:
        script, training, model = parse_args(cmd[3:])  # python -m train.grpo ...
        assert training.output_dir == str(tmp_path)
    script, training, _ = parse_args(grpo_command(recipe, {"model_name_or_path": "m", "output_dir": "o",
                                                           "reward_funcs": ["accuracy", "format"],
                                                           "weighting_alpha": -10.0, "bf16": False})[3:])
    assert script.reward_funcs == ["accuracy", "format"] and training.weighting_alpha == -10.0


def test_unknown_setting_fails_before_running():
    with pytest.raises(ValueError, match=r"weighting_alpa.*weighting_alpha"):
        grpo_command("recipe.yaml", {"weighting_alpa": 1.0})
    with pytest.raises(ValueError, match="max_stepz"):
        grpo_command("recipe.yaml", {}, ["--max_stepz", "3"])
    assert {"weighting", "reward_funcs", "model_name_or_path", "extraction"} <= grpo_field_names()


def test_demo_real_refuses_a_folder_of_the_other_rollout_engine(tmp_path):
    """Finished stages are reused by name: a folder built with vLLM rollouts must not pass as an HF run."""
    import json

    from train.real_demo import check_rollouts

    out = tmp_path / "demo-real"
    assert check_rollouts(out, use_vllm=False, force=False) == "hf"
    assert check_rollouts(out, use_vllm=False, force=False) == "hf"  # same engine: resumes
    (out / "rollouts.json").write_text(json.dumps({"rollouts": "vllm"}))  # as a --use-vllm run leaves it
    with pytest.raises(SystemExit, match=r"stages run with vllm rollouts, this run asks for hf.*demo-real-hf.*--force"):
        check_rollouts(out, use_vllm=False, force=False)
    assert check_rollouts(out, use_vllm=False, force=True) == "hf"
    assert json.loads((out / "rollouts.json").read_text()) == {"rollouts": "hf"}


def test_demo_real_use_vllm_without_vllm_names_the_fix(tmp_path, monkeypatch):
    from train import vllm_cpu
    from train.real_demo import check_rollouts

    monkeypatch.setattr(vllm_cpu, "vllm_installed", lambda: False)
    with pytest.raises(SystemExit, match=r"--use-vllm needs vLLM.*make setup-vllm.*drop --use-vllm"):
        check_rollouts(tmp_path / "demo-real", use_vllm=True, force=False)
    assert not (tmp_path / "demo-real").exists()  # refused before anything is written
