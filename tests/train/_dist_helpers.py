"""Launch `train/grpo.py` in subprocesses for the distributed and fault-tolerance tests.

As a script it is `train/grpo.py` plus two test-only callbacks (run by `accelerate launch` or python):

    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml tests/train/_dist_helpers.py \
        --rank_log_dir DIR [--kill_at_step N] [grpo.py args ...]

- `RankLogCallback` writes `DIR/rank{R}.jsonl`: one `{"event": "begin", world size, distributed
  type, ZeRO stage}` line, then one `{"event": "log", "step", "logs"}` line per `on_log` call, so a
  test can compare what every rank logged (the trainer only writes trainer_state.json on rank 0).
- `KillCallback` SIGKILLs its own process right after the log of step N (a hard crash: no
  cleanup, no final save), to test resuming.

As a module it gives the tests `launch(...)`, `grpo_args(...)` and `read_rank_logs(...)`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from transformers import TrainerCallback  # noqa: E402


class RankLogCallback(TrainerCallback):
    """Append every rank's logs to `DIR/rank{R}.jsonl` (begin line: world size, backend, ZeRO stage)."""

    def __init__(self, log_dir: str):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.rank = int(os.environ.get("RANK", "0"))

    def _write(self, record: dict) -> None:
        with open(self.log_dir / f"rank{self.rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_begin(self, args, state, control, **kwargs):
        import torch.distributed as dist
        from accelerate.state import AcceleratorState

        acc_state = AcceleratorState()
        plugin = acc_state.deepspeed_plugin
        self._write({
            "event": "begin",
            "rank": self.rank,
            "world_size": dist.get_world_size() if dist.is_initialized() else 1,
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "distributed_type": str(acc_state.distributed_type),
            "zero_stage": plugin.zero_stage if plugin is not None else None,
            "device": str(args.device),
            "start_step": state.global_step,
        })

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._write({"event": "log", "rank": self.rank, "step": state.global_step, "logs": logs or {}})


class KillCallback(TrainerCallback):
    """SIGKILL this process right after step `kill_at_step` is logged (only in a run that reached it)."""

    def __init__(self, kill_at_step: int):
        self.kill_at_step = kill_at_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.global_step == self.kill_at_step and logs and "loss" in logs:
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------------------------------------
# Test-side helpers
# ------------------------------------------------------------------------------------------------

def child_env() -> dict:
    env = dict(os.environ)
    env.update({
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline",
        "TOKENIZERS_PARALLELISM": "false", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        "ACCELERATE_DISABLE_RICH": "1",
    })
    return env


def grpo_args(model_dir, output_dir, *, max_steps: int = 2, **overrides) -> list[str]:
    """CLI args of a seconds-long tiny run: 2 prompts x 4 generations per rank-pair, 8 new tokens."""
    args = {
        "model_name_or_path": str(model_dir), "output_dir": str(output_dir), "use_cpu": "true", "bf16": "false",
        "max_steps": max_steps, "per_device_train_batch_size": 4, "num_generations": 4,
        "max_completion_length": 8, "logging_steps": 1, "report_to": "none", "save_strategy": "no",
        "num_train_samples": 32, "reward_funcs": "accuracy", "learning_rate": 1e-3, "seed": 0,
        "weighting": "sigmoid", "divergence_measure": "js", "disable_tqdm": "true", "dataloader_num_workers": 0,
    }
    args.update(overrides)
    out: list[str] = []
    for key, value in args.items():  # a list value is a list field: `--key v1 v2`
        out += [f"--{key}", *(map(str, value) if isinstance(value, (list, tuple)) else [str(value)])]
    return out


RECIPE = REPO / "train" / "recipes" / "tiny_grpo.yaml"


def recipe_args(model_dir, output_dir, *, max_steps: int = 2, eval_num_problems: int = 4, **overrides) -> list[str]:
    """`--config tiny_grpo.yaml` + `grpo_args` overrides: the recipe's own final evaluation (its K, temperature,
    top-p, batch size; mean@K / pass@K -> final_eval.json after training) on `eval_num_problems` held-out
    problems, with the training shrunk to seconds."""
    return ["--config", str(RECIPE), *grpo_args(model_dir, output_dir, max_steps=max_steps,
                                                eval_num_problems=eval_num_problems, **overrides)]


def launch(config_name: str | None, args: list[str], *, rank_log_dir, kill_at_step: int | None = None,
           timeout: float = 240) -> subprocess.CompletedProcess:
    """Run this script with `accelerate launch --config_file accelerate_configs/NAME.yaml`, or plain
    python (one process) when `config_name` is None. Returns the finished process (output captured)."""
    script = [str(Path(__file__).resolve()), "--rank_log_dir", str(rank_log_dir)]
    if kill_at_step is not None:
        script += ["--kill_at_step", str(kill_at_step)]
    if config_name is None:
        cmd = [sys.executable, *script, *args]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "accelerate_configs" / f"{config_name}.yaml"), *script, *args]
    return subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=timeout)


def read_rank_logs(log_dir) -> dict[int, list[dict]]:
    """{rank: [records in order]} from `rank{R}.jsonl` files."""
    out = {}
    for path in sorted(Path(log_dir).glob("rank*.jsonl")):
        rank = int(path.stem[len("rank"):])
        out[rank] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return out


def shift_logs(records: list[dict]) -> dict[int, dict]:
    """{step: {shift/* metrics}} from one rank's log records (steps with shift metrics only)."""
    return {
        r["step"]: {k: v for k, v in r["logs"].items() if k.startswith("shift/")}
        for r in records
        if r["event"] == "log" and any(k.startswith("shift/") for k in r["logs"])
    }


def main(argv: list[str] | None = None) -> int:
    import argparse

    from train import grpo

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--rank_log_dir", required=True)
    parser.add_argument("--kill_at_step", type=int, default=None)
    ours, rest = parser.parse_known_args(argv)
    callbacks = [RankLogCallback(ours.rank_log_dir)]
    if ours.kill_at_step is not None:
        callbacks.append(KillCallback(ours.kill_at_step))
    return grpo.main(rest, callbacks=callbacks)


if __name__ == "__main__":
    sys.exit(main())
