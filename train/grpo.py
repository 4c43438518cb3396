"""GRPO / divergence-weighted GRPO training: the entry point.

    accelerate launch --config_file accelerate_configs/NAME.yaml train/grpo.py \
        --config train/recipes/tiny_grpo.yaml [--key value ...]

    # the same, one process, through the console script:
    sparse-rlvr grpo --config train/recipes/tiny_grpo.yaml [--key value ...]

NAME: `ddp`, `zero2`, `zero3`, `fsdp` on an 8-GPU node; `cpu_ddp`, `cpu_zero2`, `cpu_zero3` for 2
processes on CPU (set `DS_ACCELERATOR=cpu` for the DeepSpeed ones). Every field of the three
argument groups below can be set in the YAML recipe or overridden on the command line
(`--weighting none` gives plain TRL GRPO); `--help` lists them all. See docs/launch.md.

Argument groups, parsed with TRL's `TrlParser` (YAML `--config`, then command-line overrides):
- `GRPOScriptArguments` (this file): dataset (through `rewards.data.load_math_dataset`), reward
  functions by name (through `rewards.registry.get_reward_funcs`; weights are GRPOConfig's
  `reward_weights`), and the final evaluation (through `train.evaluate.evaluate_model`).
- `DivergenceGRPOConfig` (`train/config.py`): TRL's `GRPOConfig` plus the divergence weighting.
- `ModelConfig` (TRL): the model path, dtype, attention implementation and PEFT/LoRA (`--use_peft`).

What the script does: load data and rewards -> build `DivergenceWeightedGRPOTrainer` (all config
validation happens here, before the first step) -> train, resuming from a checkpoint if asked
(`--resume_from_checkpoint true` = the last `checkpoint-*` in `output_dir`, or a fresh start if
there is none, so the same command restarts a pre-empted job) -> save model + trainer state ->
optionally evaluate mean@K / pass@K on the held-out split (main process) -> `final_eval.json`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # `python train/grpo.py` / `accelerate launch train/grpo.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

logger = logging.getLogger("train.grpo")

TRUE_WORDS = ("true", "yes", "1", "last")
FALSE_WORDS = ("false", "no", "0", "none", "")


@dataclass
class GRPOScriptArguments:
    """What to train on, which rewards, and the final evaluation (everything that is not the trainer's config)."""

    dataset_name: str = field(
        default="tiny",
        metadata={"help": "Dataset source: 'tiny' (the generated tiny world, offline), a local "
                          ".json/.jsonl/.parquet file or folder, or a hub dataset id (e.g. 'openai/gsm8k')."},
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "Hub dataset configuration name (e.g. 'main' for openai/gsm8k)."}
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(
        default="test", metadata={"help": "Held-out split for the final evaluation (see eval_num_samples)."}
    )
    problem_column: str = field(default="problem", metadata={"help": "Source column holding the problem text."})
    answer_column: str = field(
        default="answer", metadata={"help": "Source column holding the gold answer or solution."}
    )
    gold_format: str = field(
        default="auto",
        metadata={"help": "How to read the gold: 'auto', 'gsm8k' ('... #### 42'), 'boxed' (\\boxed{} in a "
                          "solution; 'math' is an alias) or 'plain'."},
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "If set, prepended to every prompt as a system turn."}
    )
    num_train_samples: int | None = field(
        default=None,
        metadata={"help": "Tiny world: how many training problems to generate (default 2000); other "
                          "sources: keep the first N rows (default all)."},
    )
    dataset_seed: int = field(default=0, metadata={"help": "Seed of the tiny world's problem generator."})
    reward_funcs: list[str] = field(
        default_factory=lambda: ["accuracy"],
        metadata={"help": "Reward functions by name from rewards/registry.py ('accuracy', 'format', "
                          "'overlong'). Weights: GRPOConfig's --reward_weights (same order)."},
    )
    reward_timeout: float = field(
        default=5.0, metadata={"help": "Seconds the math verifier may spend on one completion (accuracy reward)."}
    )
    overlong_buffer: int | None = field(
        default=None,
        metadata={"help": "L_cache of the 'overlong' reward (DAPO, arXiv 2503.14476); default "
                          "max_completion_length // 4."},
    )
    eval_num_samples: int = field(
        default=0,
        metadata={"help": "K for the final evaluation (mean@K / pass@K on dataset_test_split, after the "
                          "final save, on the main process). 0 disables it."},
    )
    eval_num_problems: int | None = field(
        default=None, metadata={"help": "Held-out problems for the final evaluation (default: the whole split)."}
    )
    eval_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the final evaluation."})
    eval_top_p: float = field(default=1.0, metadata={"help": "Top-p of the final evaluation."})
    eval_max_new_tokens: int | None = field(
        default=None, metadata={"help": "Max new tokens in the final evaluation (default: max_completion_length)."}
    )
    eval_batch_size: int = field(default=64, metadata={"help": "Generation batch size of the final evaluation."})


def resolve_resume(value: str | bool | None, output_dir: str) -> str | None:
    """`--resume_from_checkpoint` -> a checkpoint path or None.

    'true'/'last' -> the last `checkpoint-*` in `output_dir`, or None (fresh start, logged) when
    there is none yet: the same command both starts and restarts a job. A path must exist.
    """
    from transformers.trainer_utils import get_last_checkpoint

    if value is None or value is False:
        return None
    text = str(value).strip()
    if value is True or text.lower() in TRUE_WORDS:
        last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if last is None:
            logger.warning("resume_from_checkpoint=%s but %s has no checkpoint-* yet: starting fresh", value, output_dir)
        else:
            logger.info("resuming from %s", last)
        return last
    if text.lower() in FALSE_WORDS:
        return None
    if not os.path.isdir(text):
        raise FileNotFoundError(
            f"resume_from_checkpoint={text!r} is not a directory. Fix: pass a checkpoint-* folder, or 'true' "
            f"for the last checkpoint in output_dir"
        )
    return text


def reward_settings(script_args: GRPOScriptArguments, training_args):
    """The run's one `train.reward_settings.RewardSettings`: TRL's reward functions and every evaluation use it."""
    from train.reward_settings import RewardSettings

    return RewardSettings.from_args(script_args, training_args)


def recipe_reward_settings(recipe: str | Path):
    """The `RewardSettings` a YAML recipe trains with (parsed exactly as a run of it would be), e.g. to evaluate
    models a pipeline did not train with GRPO (the base, SFT) as its GRPO runs are scored."""
    script_args, training_args, _ = parse_args(["--config", str(recipe), "--output_dir", "unused"])
    return reward_settings(script_args, training_args)


def build_reward_funcs(script_args: GRPOScriptArguments, training_args) -> list:
    """TRL's reward functions, from `reward_settings` (validates names, weights, extraction)."""
    return reward_settings(script_args, training_args).reward_funcs_list()


def load_split(script_args: GRPOScriptArguments, split: str, num_samples: int | None):
    from rewards.data import load_math_dataset

    return load_math_dataset(
        script_args.dataset_name, split, num_samples=num_samples, problem_column=script_args.problem_column,
        answer_column=script_args.answer_column, gold_format=script_args.gold_format,
        system_prompt=script_args.system_prompt, seed=script_args.dataset_seed, subset=script_args.dataset_config,
    )


def build_trainer(script_args: GRPOScriptArguments, training_args, model_args, callbacks=None, rewards=None):
    """Data, rewards (`rewards`: the run's `RewardSettings`, default `reward_settings(...)`), model kwargs, PEFT ->
    `DivergenceWeightedGRPOTrainer` (validates everything)."""
    from trl import get_peft_config, get_quantization_config

    from train.trainer import DivergenceWeightedGRPOTrainer

    if not model_args.model_name_or_path:
        raise ValueError("model_name_or_path is not set. Fix: pass --model_name_or_path PATH_OR_HUB_ID "
                         "(tiny world: build one with `sparse-rlvr tiny-base --output-dir outputs/tiny_base`)")
    model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        model_init_kwargs["quantization_config"] = quantization_config
    model_init_kwargs = {k: v for k, v in model_init_kwargs.items() if v is not None}
    model_init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = model_init_kwargs

    train_dataset = load_split(script_args, script_args.dataset_train_split, script_args.num_train_samples)
    rewards = rewards if rewards is not None else reward_settings(script_args, training_args)
    reward_funcs = rewards.reward_funcs_list()
    return DivergenceWeightedGRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        peft_config=get_peft_config(model_args),
        callbacks=callbacks,
    )


def attach_shift_probe(trainer, script_args: GRPOScriptArguments, training_args, model_args):
    """`shift_probe_every_n_steps > 0`: attach `ShiftDiagnosticsCallback` (shift_probe/* every N steps and at
    each save; see `DivergenceGRPOConfig.shift_probe_*`). Returns the callback, or None when off.

    Base: the trainer's `base` (`train.base_model.BaseModel`: prepared like the policy, so DDP / ZeRO-2 / ZeRO-3
    work without a second copy; with PEFT the policy under its initial adapter); with source 'old' (no base)
    the policy's step-0 weights are snapshotted. Divergence settings: the trainer's `divergence_settings`, so
    `shift_probe/*` is the same computation as `shift/*`.
    """
    if training_args.shift_probe_every_n_steps <= 0:
        return None
    from diagnostics.callbacks import ShiftDiagnosticsCallback

    source = training_args.shift_probe_source
    if source == "eval":
        split = load_split(script_args, script_args.dataset_test_split, training_args.shift_probe_num_prompts)
        probe = list(split["prompt"][: training_args.shift_probe_num_prompts])
    else:
        if not Path(source).is_file():
            raise FileNotFoundError(f"shift_probe_source={source!r} does not exist. Fix: pass a probe-set .jsonl "
                                    "file or 'eval'")
        probe = source
    generation = {"max_new_tokens": training_args.max_completion_length, "temperature": training_args.temperature,
                  "top_p": training_args.top_p, "seed": training_args.seed}
    from_trainer = trainer.base is not None  # the trainer's answer to "what is the base" (PEFT context included)
    callback = ShiftDiagnosticsCallback(  # base None (source 'old'): the policy's step-0 weights are snapshotted
        probe, base_model=None, every_n_steps=training_args.shift_probe_every_n_steps, evaluate_on_save=True,
        divergence=trainer.divergence_settings, probe_generation=generation,
    )
    return callback.attach(trainer, base_from_trainer=from_trainer)


def final_evaluation(trainer, script_args: GRPOScriptArguments, training_args, rewards=None) -> dict | None:
    """mean@K / pass@K of the trained model on the held-out split, scored with the training reward settings
    (`rewards`, default `reward_settings(...)`: the extraction and verifier timeout); main process only.

    Sharded runs (ZeRO-3 / FSDP) evaluate the consolidated model saved in `output_dir`, loaded by rank 0
    alone in the training dtype on its device, and generation runs, inside `train.standalone.standalone()`
    (else `from_pretrained` enters ZeRO-3's collective `zero.Init` and `generate` syncs every token across
    ranks, which hangs or crashes once the other ranks have left); the others
    evaluate the in-memory (unwrapped, possibly PEFT) model, so nothing is reloaded. Not covered:
    PEFT under ZeRO-3 / FSDP (output_dir then holds only the adapter).
    """
    from accelerate.utils import is_peft_model

    from train.evaluate import evaluate_model
    from train.standalone import load_standalone_model, standalone

    acc = trainer.accelerator
    result = None
    if acc.is_main_process:
        dataset = load_split(script_args, script_args.dataset_test_split, script_args.eval_num_problems)
        zero3 = trainer.is_deepspeed_enabled and acc.state.deepspeed_plugin.zero_stage == 3
        sharded = zero3 or trainer.is_fsdp_enabled
        policy = acc.unwrap_model(trainer.model)
        if sharded:  # the saved, consolidated weights, loaded by this rank alone (no zero.Init / meta loading)
            dtype = next(policy.parameters()).dtype
            model = load_standalone_model(training_args.output_dir, dtype=dtype, device=acc.device)
        elif is_peft_model(policy):  # the LoRA-injected transformers model: it generates with the adapter on
            model = policy.get_base_model()
        else:
            model = policy
        with standalone():  # rank 0 alone: no ZeRO-3 synced generation (an all_reduce per token)
            result = evaluate_model(  # restores the model's train/eval mode itself
                model, dataset, tokenizer=trainer.processing_class, num_samples=script_args.eval_num_samples,
                temperature=script_args.eval_temperature, top_p=script_args.eval_top_p,
                max_new_tokens=script_args.eval_max_new_tokens or training_args.max_completion_length,
                batch_size=script_args.eval_batch_size, seed=training_args.seed,
                **(rewards if rewards is not None else reward_settings(script_args, training_args)).evaluation_kwargs(),
            )
        summary = {k: v for k, v in result.items() if isinstance(v, (int, float, str))}
        path = Path(training_args.output_dir) / "final_eval.json"
        path.write_text(json.dumps(summary, indent=2))
        logger.info("final evaluation on %s/%s: %s (-> %s)", script_args.dataset_name,
                    script_args.dataset_test_split, summary, path)
        acc.print(f"final evaluation: {summary}")
    # No barrier here: the other ranks may finish while rank 0 evaluates (a long evaluation would
    # otherwise run into the process group's timeout, `ddp_timeout`, 30 min by default).
    return result


def run(script_args: GRPOScriptArguments, training_args, model_args, *, callbacks=None) -> dict:
    """Train, save, evaluate. Returns {'train': train metrics, 'eval': final evaluation or None}."""
    rewards = reward_settings(script_args, training_args)  # built once: TRL's reward functions and the evaluation
    trainer = build_trainer(script_args, training_args, model_args, callbacks=callbacks, rewards=rewards)
    if trainer.args.should_save:
        rewards.save(training_args.output_dir)  # next to final_eval.json
    attach_shift_probe(trainer, script_args, training_args, model_args)
    from train.console import use_one_line_console  # issue 19

    use_one_line_console(trainer)  # issue 19: one short console line per log, not the metrics dict (train/console.py)
    trainer.accelerator.print(
        f"divergence: source {training_args.divergence_source!r}, measure {training_args.divergence_measure!r}, "
        f"weighting {training_args.weighting!r}, computed at {trainer.divergence_timing} time"
    )
    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    train_result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(training_args.output_dir)
    trainer.save_state()  # output_dir/trainer_state.json: the full log_history (shift/ metrics included)
    trainer.accelerator.print(f"model and tokenizer saved to {training_args.output_dir}")
    eval_result = final_evaluation(trainer, script_args, training_args, rewards) if script_args.eval_num_samples > 0 \
        else None
    trainer.end()  # finish trackers, destroy the process group: nothing collective may follow
    return {"train": train_result.metrics, "eval": eval_result}


def make_parser():
    from trl import ModelConfig, TrlParser

    from train.config import DivergenceGRPOConfig

    return TrlParser((GRPOScriptArguments, DivergenceGRPOConfig, ModelConfig),
                     prog="sparse-rlvr grpo / train/grpo.py")


def parse_args(argv: list[str] | None = None):
    """argv (default sys.argv[1:]) -> (script_args, training_args, model_args); config errors raise here."""
    return make_parser().parse_args_and_config(args=argv)


def main(script_args=None, training_args=None, model_args=None, *, callbacks=None) -> int:
    """Run training. Accepts either the three parsed dataclasses or a list of CLI arguments.

    `sparse-rlvr grpo ARGS` calls `main([ARGS])`; `python train/grpo.py ARGS` calls `main()`.
    """
    if training_args is None:
        from diagnostics.cli_args import quiet_third_party_warnings

        quiet_third_party_warnings()  # `accelerate launch train/grpo.py`: third-party deprecation notices hidden
        argv = script_args if isinstance(script_args, list) else None
        script_args, training_args, model_args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(script_args, training_args, model_args, callbacks=callbacks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
