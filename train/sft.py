"""SFT with a budget comparable to an RL run, for the paper's "SFT shifts more broadly than RL".

    sparse-rlvr sft --base outputs/tiny-base --output-dir outputs/tiny-sft
    python -m train.sft --help

Rejection-sampling fine-tuning (RFT) of the base on its *own* correct completions:
1. sample `--num-samples` completions at temperature 1.0 for `--num-problems` training problems
   with the base model, score them with the project's math reward, keep the correct ones
   (de-duplicated per problem);
2. fine-tune the base on them with TRL's `SFTTrainer` (completion-only loss) for `--max-steps`
   optimizer steps of `--batch-size` sequences at `--learning-rate` (defaults match
   `train/recipes/tiny_grpo.yaml`: 64 sequences per step, lr 3e-5 constant), so SFT sees the same
   number of sequences and the same step size as the RL run it is compared with.

Departure from Meng et al.: the paper fine-tunes on external SFT data of comparable content; on the
tiny world the natural "comparable data" is the base's own filtered samples (the same data RL is
rewarded for), which isolates the effect of the objective (likelihood vs policy gradient).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from diagnostics.cli_args import add_alias, add_model_arguments, add_sampling_arguments, add_verbose_argument
from rewards.data import add_dataset_arguments

logger = logging.getLogger(__name__)


def rejection_sample(base_path: str, *, dataset_source: str = "tiny", num_problems: int = 512, num_samples: int = 8,
                     temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 64, seed: int = 0,
                     progress: bool = True, dataset_kwargs: dict | None = None):
    """Correct, de-duplicated completions of the base on training problems, as an SFT dataset.

    Sampling goes through `train.evaluate.evaluate_model` (stops on `diagnostics.models.eos_token_ids`);
    `dataset_kwargs` go to `rewards.data.load_math_dataset` (split, columns, system prompt; default split train).
    """
    from datasets import Dataset

    from rewards.data import load_math_dataset
    from train.evaluate import evaluate_model

    kw = dict(dataset_kwargs or {})
    split = kw.pop("split", "train")
    train = load_math_dataset(dataset_source, split, num_samples=num_problems, seed=seed, **kw)
    result = evaluate_model(base_path, train, num_samples=num_samples, temperature=temperature, top_p=top_p,
                            max_new_tokens=max_new_tokens, seed=seed, progress=progress)
    prompts, completions = [], []
    for row, prob in zip(train, result["problems"]):
        kept = set()
        for text, score in zip(prob["completions"], prob["scores"]):
            if score > 0 and text not in kept:
                kept.add(text)
                prompts.append(row["prompt"])
                completions.append([{"role": "assistant", "content": text}])
    if not prompts:
        raise ValueError(f"the base model {base_path!r} solved none of {num_problems} training problems; "
                         "rejection-sampling SFT has no data. Fix: use a stronger base or more --num-samples")
    stats = {"problems": num_problems, "samples": num_problems * num_samples, "kept": len(prompts),
             f"base_mean@{num_samples}_train": result[f"mean@{num_samples}"]}
    return Dataset.from_dict({"prompt": prompts, "completion": completions}), stats


def run_sft(base_path: str, output_dir: str, *, dataset_source: str = "tiny", num_problems: int = 512,
            num_samples: int = 8, max_steps: int = 200, batch_size: int = 64, learning_rate: float = 3e-5,
            seed: int = 0, progress: bool = True, sample_temperature: float = 1.0, sample_top_p: float = 1.0,
            dataset_kwargs: dict | None = None) -> Path:
    """Rejection-sample, fine-tune, save to `output_dir` (model + tokenizer + `sft.json`)."""
    from trl import SFTConfig, SFTTrainer

    from diagnostics.models import load_model, load_tokenizer

    if not Path(base_path).exists():
        raise FileNotFoundError(f"--base {base_path!r} does not exist. Fix: build it with "
                                "`sparse-rlvr tiny-base --output-dir PATH` or pass a saved model directory")
    if max_steps < 1 or batch_size < 1 or num_samples < 1 or num_problems < 1:
        raise ValueError("--max-steps, --batch-size, --num-samples and --limit must all be >= 1")
    out = Path(output_dir)
    start = time.monotonic()
    data, stats = rejection_sample(base_path, dataset_source=dataset_source, num_problems=num_problems,
                                   num_samples=num_samples, temperature=sample_temperature, top_p=sample_top_p,
                                   seed=seed, progress=progress, dataset_kwargs=dataset_kwargs)
    logger.info("sft: kept %d correct completions of %d samples", stats["kept"], stats["samples"])
    tokenizer = load_tokenizer(base_path, "--base")
    model = load_model(base_path, dtype="float32", device=None, flag="--base").train()  # SFTTrainer places it
    args = SFTConfig(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=batch_size,
        learning_rate=learning_rate, lr_scheduler_type="constant", warmup_steps=0, completion_only_loss=True,
        max_length=256, seed=seed, data_seed=seed, use_cpu=True, bf16=False, save_strategy="no",
        report_to="none", logging_steps=max(1, max_steps // 10), disable_tqdm=not progress,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(out))
    tokenizer.save_pretrained(out)
    stats.update(max_steps=max_steps, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                 seconds=round(time.monotonic() - start, 1), base=str(base_path))
    (out / "sft.json").write_text(json.dumps(stats, indent=2) + "\n")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sparse-rlvr sft", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_arguments(p, policy=False, base_help="base model directory (e.g. from `sparse-rlvr tiny-base`)")
    p.add_argument("--output-dir", required=True, help="where the fine-tuned model and sft.json go")
    add_dataset_arguments(p, dataset="tiny", split="train", limit=512,
                          limit_help="training problems to rejection-sample (default 512)")
    add_alias(p, "--num-problems", "--limit", "limit", type=int)
    p.add_argument("--num-samples", type=int, default=8, help="samples per problem")
    add_sampling_arguments(p, what="rejection-sampling")
    p.add_argument("--max-steps", type=int, default=200, help="optimizer steps (match the RL run)")
    p.add_argument("--batch-size", type=int, default=64, help="sequences per step (match the RL run)")
    p.add_argument("--learning-rate", type=float, default=3e-5, help="constant learning rate (match the RL run)")
    p.add_argument("--seed", type=int, default=0, help="sampling and training seed")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    add_verbose_argument(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dataset_kwargs = {"split": args.split, "problem_column": args.problem_column, "answer_column": args.answer_column,
                      "gold_format": args.gold_format, "system_prompt": args.system_prompt,
                      "subset": args.dataset_config}
    out = run_sft(args.base, args.output_dir, dataset_source=args.dataset, num_problems=args.limit,
                  num_samples=args.num_samples, max_steps=args.max_steps, batch_size=args.batch_size,
                  learning_rate=args.learning_rate, seed=args.seed, progress=args.progress,
                  sample_temperature=args.sample_temperature, sample_top_p=args.sample_top_p,
                  dataset_kwargs=dataset_kwargs)
    print(json.dumps(json.loads((out / "sft.json").read_text()), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
