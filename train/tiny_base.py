"""Build (or reuse) the tiny world's base model: a competent-but-flawed arithmetic LM.

    sparse-rlvr tiny-base --output-dir outputs/tiny-base                 # default preset (~360 CPU-s)
    sparse-rlvr tiny-base --output-dir .cache/tiny-base-ci --preset ci    # fast preset (~210 CPU-s)
    python -m train.tiny_base --help

What it does, deterministically for a seed:
1. trains the tokenizer (`train.tiny_world.build_tokenizer`) on the task's own text;
2. trains a Llama (`train.tiny_world.tiny_llama_config`) from scratch with TRL's `SFTTrainer` on
   conversational prompt-completion demonstrations
       prompt     = [{"role": "user", "content": "Compute 65-6+4-9."}]
       completion = [{"role": "assistant", "content": "65-6=59 59+4=63 63-9=54 \\boxed{54}"}]
   where `slip_fraction` (default 40%) of the demonstrations carry one plausible slip (an intermediate result off
   by ±1..10, carried to the end: `rewards.tiny_task.sample_slip`). Loss on completion tokens only.
3. measures held-out mean@K accuracy at temperature 1.0 (and greedy) with `train.evaluate`;
4. saves model + tokenizer + generation_config (eos/pad) with `save_pretrained`, and
   `tiny_base.json` = {config, config_hash, build_seconds, accuracy, versions}.

Why flawed on purpose: RLVR needs a base that already solves the task sometimes (non-zero reward)
but not always (room to improve). The slips make sampling at T=1.0 reproduce wrong intermediate
results with some probability, while the greedy decode is mostly right.

Cache: a second call with the same configuration finds `tiny_base.json` with the same config hash
in `output_dir` and returns at once; `force=True` (`--force`) rebuilds. A directory holding a build
of another configuration is rebuilt (logged).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

META_FILE = "tiny_base.json"
# Bump when the build recipe changes in a way the config fields do not capture (invalidates caches).
RECIPE_VERSION = 1


@dataclass(frozen=True)
class TinyBaseConfig:
    """Everything that determines the built model (hashed for the cache)."""

    seed: int = 0
    train_problems: int = 6000  # distinct training problems (one demonstration each; epochs cycle over them)
    # Fraction of demonstrations with one wrong intermediate result. Once SFT has learned the
    # arithmetic, T=1.0 accuracy plateaus near 1 - slip_fraction (greedy near 100%): 0.4 puts the
    # plateau (~53% at 800 steps) inside the [20%, 60%] band; 0.3 gave 60-62% (docs/tiny_world.md).
    slip_fraction: float = 0.4
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    mlp_ratio: float = 3.0  # SwiGLU intermediate size = mlp_ratio * hidden_size (hidden 128 -> ~0.86M params)
    max_steps: int = 650  # optimizer steps (fixed, so the build is deterministic for a seed)
    batch_size: int = 64
    lr: float = 2e-3  # cosine schedule with warmup
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    tokenizer_corpus: int = 2000  # problems in the tokenizer's training corpus
    eval_problems: int = 100  # held-out test problems for the accuracy stored in tiny_base.json
    eval_samples: int = 8  # K of mean@K at temperature 1.0

    def hash(self) -> str:
        payload = json.dumps({"recipe": RECIPE_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


# Measured numbers for both presets live in docs/tiny_world.md.
PRESETS: dict[str, dict] = {
    # ~0.8M parameters; the starting point (hidden 128, 4 layers, 4 heads, batch 64, lr 2e-3).
    "default": {},
    # For tests and the shortened demo: smaller and shorter, still competent-but-flawed.
    # Smaller configs measured (seed 0, mean@8 T=1 / greedy on 64 test problems): hidden 64, 2 layers,
    # 400 steps: 2% / 5%; hidden 96, 3 layers, 400 steps, lr 3e-3: 5% / 12%; this one: 15% / 42%.
    "ci": {"hidden_size": 96, "num_layers": 3, "num_heads": 4, "mlp_ratio": 4.0, "max_steps": 600,
           "train_problems": 8000, "eval_problems": 64, "slip_fraction": 0.3},
}


def preset_config(preset: str = "default", **overrides) -> TinyBaseConfig:
    """The config of a named preset, with field overrides (None values are ignored)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown tiny-base preset {preset!r}; choose one of {sorted(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(TinyBaseConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown tiny-base option(s) {sorted(unknown)}; valid: {sorted(fields)}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return TinyBaseConfig(**values)


def read_meta(output_dir: str | os.PathLike) -> dict | None:
    """The `tiny_base.json` of a build, or None if `output_dir` holds no finished build."""
    path = Path(output_dir) / META_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def sft_dataset(config: TinyBaseConfig):
    """Conversational prompt-completion demonstrations, `slip_fraction` of them with one slip."""
    from datasets import Dataset

    from rewards.tiny_task import generate_problems, sample_slip, solution_text

    rng = random.Random(f"tiny-base-slips-{config.seed}")
    prompts, completions, slipped = [], [], []
    for p in generate_problems("train", config.train_problems, config.seed):
        slip = sample_slip(p, rng) if rng.random() < config.slip_fraction else None
        prompts.append([{"role": "user", "content": p.text}])
        completions.append([{"role": "assistant", "content": solution_text(p, slip)}])
        slipped.append(slip is not None)
    return Dataset.from_dict({"prompt": prompts, "completion": completions, "slipped": slipped})


def _time_budget_callback(seconds: float | None):
    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):
        """Stops training after `seconds` of wall time (a safety cap: hitting it breaks determinism)."""

        hit = False

        def __init__(self):
            self.start = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            if seconds is not None and time.monotonic() - self.start > seconds:
                logger.warning("tiny-base: time budget of %.0f s hit at step %d of %d; stopping early",
                               seconds, state.global_step, state.max_steps)
                self.hit = True
                control.should_training_stop = True
            return control

    return TimeBudget()


def build_tiny_base(output_dir: str | os.PathLike, seed: int = 0, *, preset: str = "default",
                    force: bool = False, time_budget: float | None = None, progress: bool = True,
                    num_threads: int | None = None, **overrides) -> Path:
    """Build the tiny base into `output_dir` (or reuse a build of the same config); returns the path.

    Args:
        output_dir: where model, tokenizer and `tiny_base.json` go.
        seed: seeds problems, slips, initialisation and data order.
        preset: "default" (issue's recipe) or "ci" (fast, for tests); see `PRESETS`.
        force: rebuild even if `output_dir` holds a build of the same config.
        time_budget: optional wall-clock cap (s) on the SFT loop; if hit, training stops early
            (recorded in `tiny_base.json` as `time_budget_hit`; the result is then not reproducible).
        num_threads: torch CPU threads (default: torch's choice).
        **overrides: any `TinyBaseConfig` field (train_problems, slip_fraction, hidden_size,
            num_layers, num_heads, max_steps, batch_size, lr, ...).
    """
    config = preset_config(preset, seed=seed, **overrides)
    out = Path(output_dir)
    meta = read_meta(out)
    if meta is not None and meta.get("config_hash") == config.hash() and not force:
        logger.info("tiny-base: reusing %s (config %s)", out, config.hash())
        return out
    if meta is not None and not force:
        logger.warning("tiny-base: %s holds a build of another config (%s); rebuilding for %s",
                       out, meta.get("config_hash"), config.hash())

    import torch

    previous_threads = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        _train_and_save(config, out, preset=preset, time_budget=time_budget, progress=progress)
    finally:
        torch.set_num_threads(previous_threads)
    return out


def _train_and_save(config: TinyBaseConfig, out: Path, *, preset: str, time_budget: float | None,
                    progress: bool) -> None:
    """Tokenizer -> SFT -> held-out accuracy -> save into `out` (via a temporary sibling folder)."""
    import torch
    import transformers
    import trl
    from trl import SFTConfig, SFTTrainer

    from rewards.data import load_math_dataset
    from train.evaluate import evaluate_model
    from train.tiny_world import build_tokenizer, default_corpus, tiny_llama_config

    start, cpu_start = time.monotonic(), time.process_time()
    transformers.set_seed(config.seed)
    tokenizer = build_tokenizer(default_corpus(n=config.tokenizer_corpus, seed=config.seed))
    model = transformers.LlamaForCausalLM(tiny_llama_config(
        tokenizer, hidden_size=config.hidden_size, num_layers=config.num_layers, num_heads=config.num_heads,
        intermediate_size=int(config.mlp_ratio * config.hidden_size)))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("tiny-base: %d parameters, config %s", n_params, config.hash())

    dataset = sft_dataset(config)
    # Per-process scratch folder: two concurrent builds of the same folder (e.g. two pytest runs) never
    # write into each other's files; the last one to finish wins the rename.
    work = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    if work.exists():
        shutil.rmtree(work)
    args = SFTConfig(
        output_dir=str(work / "trainer"),
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.lr,
        lr_scheduler_type="cosine",
        warmup_steps=int(config.warmup_ratio * config.max_steps),
        weight_decay=config.weight_decay,
        completion_only_loss=True,
        max_length=256,
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        report_to="none",
        logging_steps=max(1, config.max_steps // 20),
        disable_tqdm=not progress,
        dataloader_num_workers=0,
    )
    budget = _time_budget_callback(time_budget)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[budget])
    result = trainer.train()
    train_seconds, train_cpu_seconds = time.monotonic() - start, time.process_time() - cpu_start

    model = trainer.model.eval()
    test = load_math_dataset("tiny", "test", num_samples=config.eval_problems, seed=config.seed)
    sampled = evaluate_model(model, test, tokenizer=tokenizer, num_samples=config.eval_samples,
                             temperature=1.0, seed=config.seed, greedy=True, batch_size=128, progress=progress)

    model.save_pretrained(work)
    tokenizer.save_pretrained(work)
    shutil.rmtree(work / "trainer", ignore_errors=True)
    meta = {
        "config": dataclasses.asdict(config),
        "config_hash": config.hash(),
        "preset": preset,
        "recipe_version": RECIPE_VERSION,
        "num_parameters": n_params,
        "train_steps_done": trainer.state.global_step,
        "mean_train_loss": result.training_loss,
        "time_budget_hit": budget.hit,
        "train_seconds": round(train_seconds, 1),
        "build_seconds": round(time.monotonic() - start, 1),
        # CPU seconds (all threads) tell the cost on a shared machine, where wall time is inflated
        "train_cpu_seconds": round(train_cpu_seconds, 1),
        "build_cpu_seconds": round(time.process_time() - cpu_start, 1),
        "torch_threads": torch.get_num_threads(),
        "accuracy": {
            f"mean@{config.eval_samples}_T1.0": sampled[f"mean@{config.eval_samples}"],
            f"pass@{config.eval_samples}_T1.0": sampled[f"pass@{config.eval_samples}"],
            "greedy": sampled["greedy"],
            "num_problems": sampled["num_problems"],
            "split": "test",
        },
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
    }
    (work / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    # Replace atomically-ish: a half-written build never carries a tiny_base.json in `out`.
    if out.exists():
        shutil.rmtree(out, ignore_errors=True)
    work.rename(out)
    logger.info("tiny-base: built %s in %.0f s; held-out mean@%d(T=1) %.3f, greedy %.3f", out,
                meta["build_seconds"], config.eval_samples, meta["accuracy"][f"mean@{config.eval_samples}_T1.0"],
                meta["accuracy"]["greedy"])


def build_parser() -> argparse.ArgumentParser:
    from diagnostics.cli_args import add_verbose_argument

    defaults = TinyBaseConfig()
    p = argparse.ArgumentParser(
        prog="sparse-rlvr tiny-base",
        description="Build (or reuse from cache) the tiny world's SFT'd base model: a small Llama that solves "
                    "multi-step arithmetic with a controlled rate of slips. Flags left unset take the preset's value.")
    p.add_argument("--output-dir", required=True, help="directory for model, tokenizer and tiny_base.json")
    p.add_argument("--seed", type=int, default=0, help="seed for problems, slips, init and data order (default 0)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="'default' (T=1 mean@8 ~39%%, ~360 CPU-s) or 'ci' (smaller, ~15%%, ~210 CPU-s, for tests); "
                        "see docs/tiny_world.md")
    p.add_argument("--force", action="store_true", help="rebuild even if OUTPUT_DIR holds a build of this config")
    p.add_argument("--train-problems", type=int, help=f"distinct training problems (default {defaults.train_problems})")
    p.add_argument("--slip-fraction", type=float,
                   help=f"fraction of demonstrations with one slip (default {defaults.slip_fraction})")
    p.add_argument("--hidden-size", type=int, help=f"model hidden size (default {defaults.hidden_size})")
    p.add_argument("--num-layers", type=int, help=f"transformer layers (default {defaults.num_layers})")
    p.add_argument("--num-heads", type=int, help=f"attention heads (default {defaults.num_heads})")
    p.add_argument("--max-steps", type=int, help=f"SFT optimizer steps (default {defaults.max_steps})")
    p.add_argument("--batch-size", type=int, help=f"SFT batch size (default {defaults.batch_size})")
    p.add_argument("--lr", type=float, help=f"peak learning rate, cosine schedule (default {defaults.lr})")
    p.add_argument("--eval-problems", type=int,
                   help=f"held-out problems for the stored accuracy (default {defaults.eval_problems})")
    p.add_argument("--time-budget", type=float, default=None,
                   help="optional wall-clock cap on SFT in seconds; stops early (non-reproducibly) if hit")
    p.add_argument("--num-threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_verbose_argument(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name, value in (("--train-problems", args.train_problems), ("--max-steps", args.max_steps),
                        ("--batch-size", args.batch_size), ("--hidden-size", args.hidden_size),
                        ("--eval-problems", args.eval_problems)):
        if value is not None and value < 1:
            raise SystemExit(f"sparse-rlvr tiny-base: error: {name} must be >= 1, got {value}. Fix: pass a positive integer")
    if args.slip_fraction is not None and not 0.0 <= args.slip_fraction <= 1.0:
        raise SystemExit(f"sparse-rlvr tiny-base: error: --slip-fraction must be in [0, 1], got {args.slip_fraction}. "
                         "Fix: pass e.g. 0.3")
    start = time.monotonic()
    path = build_tiny_base(
        args.output_dir, args.seed, preset=args.preset, force=args.force, time_budget=args.time_budget,
        progress=not args.no_progress, num_threads=args.num_threads,
        train_problems=args.train_problems, slip_fraction=args.slip_fraction, hidden_size=args.hidden_size,
        num_layers=args.num_layers, num_heads=args.num_heads, max_steps=args.max_steps,
        batch_size=args.batch_size, lr=args.lr, eval_problems=args.eval_problems)
    meta = read_meta(path)
    acc = meta["accuracy"]
    k = meta["config"]["eval_samples"]
    print(json.dumps({"output_dir": str(path), "config_hash": meta["config_hash"],
                      f"mean@{k}_T1.0": acc[f"mean@{k}_T1.0"], "greedy": acc["greedy"],
                      "build_seconds": meta["build_seconds"], "this_call_seconds": round(time.monotonic() - start, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
