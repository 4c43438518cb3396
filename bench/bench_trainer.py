"""Cost of the divergence-weighted trainer against TRL's GRPO with a KL penalty, on one identical batch.

    python bench/bench_trainer.py                       # CPU defaults: hidden 256, 2 layers, vocab 32k
    python bench/bench_trainer.py --vocab-size 151936 --hidden-size 512 --completion-length 256   # GPU-sized
    python bench/bench_trainer.py --help

Compares, on a random Llama with a large vocabulary:
- step:  `DivergenceWeightedGRPOTrainer` (full-vocabulary JS, beta = 0, sigmoid weights; D at loss time,
  the default) vs TRL `GRPOTrainer` with beta = 0.04 (which already runs a reference-model forward every
  step); also `dw_js_separate`, the same trainer with `divergence_reuse_loss_forward=False` (the path
  taken where D cannot be computed at loss time, e.g. num_iterations > 1); also reported: the
  "forward work" per step (time in `_generate_and_score_completions` + `_compute_loss`, i.e. TRL's
  reference pass or our divergence, plus the loss forward), the part that differs between the
  trainers, since backward and optimizer step are the same and dominate the noise of the step time;
  time = TRL's own `step_time` metric (one `training_step`: batch preparation incl. the reference /
  divergence pass, loss forward and backward), median over the steps after the first;
  targets <= 1.10x time and <= 1.15x peak memory.
- pass:  the divergence pass alone vs TRL's reference log-prob pass (`_get_per_token_logps_and_entropies`
  on the reference model): `pass_dw` is what the trainer runs by default, at loss time (`_base_vs_policy`
  with the policy's hidden states given: base forward, chunked JS); `pass_dw_separate` is the pass used
  where D cannot be computed at loss time (base + policy forwards, chunked JS).

Identical batch: generation is replaced by a fixed `rollout_func` (TRL's rollout hook) returning the
same seeded prompt/completion ids at every step, so both trainers see exactly the same tokens and
rewards and the time measured is training, not sampling. Every configuration runs in a fresh
subprocess; peak memory is torch.cuda.max_memory_allocated on CUDA and, on CPU, the growth of the
process's peak RSS over its RSS just before the measured work (VmHWM, reset through
/proc/self/clear_refs; the absolute peak RSS is printed too, dominated by the imported libraries).
CPU glibc malloc may keep freed pages, so CPU memory numbers are coarser than CUDA's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIGS = {  # name -> what runs
    "trl_beta0.04": "TRL GRPOTrainer, beta=0.04 (reference forward + KL penalty)",
    "dw_js": "DivergenceWeightedGRPOTrainer, JS, sigmoid, beta=0",
    "dw_js_separate": "the same, divergence_reuse_loss_forward=False",
    "pass_ref": "TRL reference log-prob pass alone",
    "pass_dw": "divergence pass alone, at loss time (base forward + chunked JS)",
    "pass_dw_separate": "divergence pass alone, separate (base + policy forwards + JS)",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab-size", type=int, default=32000, help="model vocabulary (default 32000)")
    p.add_argument("--hidden-size", type=int, default=256, help="hidden size (default 256)")
    p.add_argument("--num-layers", type=int, default=2, help="decoder layers (default 2)")
    p.add_argument("--num-generations", type=int, default=8, help="completions per prompt (default 8)")
    p.add_argument("--batch-size", type=int, default=16, help="per-device train batch = completions per step (default 16)")
    p.add_argument("--prompt-length", type=int, default=32, help="prompt tokens (default 32)")
    p.add_argument("--completion-length", type=int, default=128, help="completion tokens, no eos (default 128)")
    p.add_argument("--steps", type=int, default=6, help="training steps per configuration; the first is not timed (default 6)")
    p.add_argument("--pass-repeats", type=int, default=3, help="timed repeats of each pass alone (default 3)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="divergence_chunk_size (default: the config's default, DivergenceGRPOConfig.divergence_chunk_size)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per run (default: torch's choice)")
    p.add_argument("--only", choices=sorted(CONFIGS), action="append", help="run only these configurations")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every configuration this many times, alternating the order; time ratios are the median "
                   "of the per-round ratios (use 3 on a noisy machine; default 1)")
    p.add_argument("--json", type=str, default=None, help="also write the results to this JSON file")
    p.add_argument("--_worker", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    p.add_argument("--_model-dir", type=str, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak RSS since the last `reset_peak_rss()` (VmHWM), else since the process started."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> None:
    """Linux >= 4.0: writing 5 to clear_refs resets VmHWM to the current RSS, so the next peak is the work's own."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def build_model(args, out_dir: Path) -> None:
    """Random Llama (vocab `--vocab-size`) + the tiny tokenizer, saved once and shared by all workers."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from train.tiny_world import build_tokenizer, default_corpus

    tok = build_tokenizer(default_corpus(n=200))
    torch.manual_seed(0)
    heads = max(1, args.hidden_size // 64)
    cfg = LlamaConfig(vocab_size=args.vocab_size, hidden_size=args.hidden_size, intermediate_size=4 * args.hidden_size,
                      num_hidden_layers=args.num_layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=args.prompt_length + args.completion_length + 8,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)


def fixed_rollout(args, tokenizer):
    """A TRL `rollout_func` returning the same seeded batch at every call (no eos: full-length completions)."""
    import torch

    gen = torch.Generator().manual_seed(1234)
    low = len(tokenizer.all_special_ids) + 1  # ordinary tokens only (never eos/pad), inside the tokenizer
    high = len(tokenizer)
    n_prompts = args.batch_size // args.num_generations
    prompts = torch.randint(low, high, (n_prompts, args.prompt_length), generator=gen).tolist()
    completions = torch.randint(low, high, (args.batch_size, args.completion_length), generator=gen).tolist()

    def rollout(prompts_in, trainer):
        n = len(prompts_in)  # TRL repeats each prompt num_generations times
        prompt_ids = [prompts[(i // args.num_generations) % n_prompts] for i in range(n)]
        return {"prompt_ids": prompt_ids, "completion_ids": [completions[i % len(completions)] for i in range(n)],
                "logprobs": None}

    return rollout


def fixed_reward(completions, **kwargs):
    """Deterministic rewards that differ within a group (non-zero advantages): text length mod 5."""
    return [float(len(c if isinstance(c, str) else c[0]["content"]) % 5) for c in completions]


def make_trainer(args, name: str, model_dir: str):
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer

    from train.config import DivergenceGRPOConfig
    from train.trainer import DivergenceWeightedGRPOTrainer
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    dataset = Dataset.from_dict({"prompt": ["Compute 1+1."] * 64})
    common = dict(
        output_dir=tempfile.mkdtemp(prefix=f"out_{name}_", dir=model_dir), use_cpu=not torch.cuda.is_available(),
        bf16=False, per_device_train_batch_size=args.batch_size, num_generations=args.num_generations,
        max_completion_length=args.completion_length, max_steps=args.steps, logging_steps=1, report_to=[],
        save_strategy="no", learning_rate=1e-5, seed=0, disable_tqdm=True, gradient_checkpointing=False,
    )
    rollout = fixed_rollout(args, tok)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    if name in ("trl_beta0.04", "pass_ref"):
        cfg = GRPOConfig(beta=0.04, **common)
        return GRPOTrainer(model=model_dir, reward_funcs=[fixed_reward], args=cfg, train_dataset=dataset,
                           processing_class=tok, rollout_func=rollout)
    chunk = {} if args.chunk_size is None else {"divergence_chunk_size": args.chunk_size}
    cfg = DivergenceGRPOConfig(beta=0.0, weighting="sigmoid", divergence_measure="js", **chunk, **common,
                               divergence_reuse_loss_forward=name != "dw_js_separate")
    return DivergenceWeightedGRPOTrainer(model=model_dir, reward_funcs=[fixed_reward], args=cfg,
                                         train_dataset=dataset, processing_class=tok, rollout_func=rollout)


def _time_calls(obj, method: str, sink: list[float]) -> None:
    """Wrap `obj.method` (on the instance) so each call's wall time is appended to `sink`."""
    import torch

    original = getattr(obj, method)

    def timed(*a, **kw):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = original(*a, **kw)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        sink.append(time.perf_counter() - t0)
        return out

    setattr(obj, method, timed)


def worker(args) -> dict:
    """Run one configuration in this (fresh) process and return its measurements."""
    import torch

    from train.lm_head import core_model

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    trainer = make_trainer(args, args._worker, args._model_dir)
    result = {"config": args._worker, "device": "cuda" if cuda else "cpu", "threads": torch.get_num_threads(),
              "divergence_at_loss": None if not hasattr(trainer, "divergence_timing")
              else trainer.divergence_timing == "loss"}
    if args._worker in ("trl_beta0.04", "dw_js", "dw_js_separate"):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        spent: dict[str, list[float]] = {"gen": [], "loss": []}
        for method, key in (("_generate_and_score_completions", "gen"), ("_compute_loss", "loss")):
            _time_calls(trainer, method, spent[key])
        reset_peak_rss()
        rss0 = current_rss_bytes()
        trainer.train()
        times = [e["step_time"] for e in trainer.state.log_history if "step_time" in e]
        timed = times[1:] or times
        # forward work per step: batch preparation (TRL's reference pass / nothing) + loss forward (D at loss time)
        fwd = [g + lo for g, lo in zip(spent["gen"], spent["loss"])]
        result.update(time_s=statistics.median(timed), step_times=times,
                      fwd_s=statistics.median(fwd[1:] or fwd), fwd_times=fwd)
    else:
        tok = trainer.processing_class
        rollout = fixed_rollout(args, tok)
        batch = rollout(["x"] * args.batch_size, trainer)
        device = trainer.accelerator.device
        ids = torch.tensor([p + c for p, c in zip(batch["prompt_ids"], batch["completion_ids"])], device=device)
        mask = torch.ones_like(ids)
        completion_ids = ids[:, args.prompt_length:]
        c = args.completion_length
        trainer.model.eval()

        hidden = None
        if args._worker == "pass_dw":  # what the trainer runs at loss time: the policy's hidden states are given
            with torch.no_grad():
                hidden = core_model(trainer.model).base_model(input_ids=ids, attention_mask=mask).last_hidden_state

        def run_pass():
            with torch.no_grad():
                if args._worker == "pass_ref":
                    trainer._get_per_token_logps_and_entropies(trainer.ref_model, ids, mask, c, args.batch_size)
                else:
                    trainer._base_vs_policy(ids, mask, completion_ids, c, args.batch_size, policy_hidden=hidden)

        run_pass()  # warm-up (allocator, lazy init)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        import gc

        gc.collect()
        reset_peak_rss()
        rss0 = current_rss_bytes()
        times = []
        for _ in range(args.pass_repeats):
            t0 = time.perf_counter()
            run_pass()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        result.update(time_s=statistics.median(times), step_times=times)
    if cuda:
        result["peak_mem_bytes"] = torch.cuda.max_memory_allocated()
    else:
        result["peak_mem_bytes"] = max(0, peak_rss_bytes() - rss0)  # growth of the peak during the measured work
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result


def run_worker(args, name: str, model_dir: str) -> dict:
    cmd = [sys.executable, __file__, "--_worker", name, "--_model-dir", model_dir,
           "--vocab-size", str(args.vocab_size), "--hidden-size", str(args.hidden_size),
           "--num-layers", str(args.num_layers), "--num-generations", str(args.num_generations),
           "--batch-size", str(args.batch_size), "--prompt-length", str(args.prompt_length),
           "--completion-length", str(args.completion_length), "--steps", str(args.steps),
           "--pass-repeats", str(args.pass_repeats)]
    if args.chunk_size is not None:
        cmd += ["--chunk-size", str(args.chunk_size)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"bench worker {name!r} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return 0
    names = args.only or list(CONFIGS)
    print(f"model: random Llama, vocab {args.vocab_size}, hidden {args.hidden_size}, {args.num_layers} layers; batch "
          f"{args.batch_size} completions ({args.batch_size // args.num_generations} prompts x {args.num_generations}), "
          f"prompt {args.prompt_length} + completion {args.completion_length} tokens; {args.steps} steps", flush=True)
    results: dict = {}
    rounds: dict[str, list[dict]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="bench_model_") as model_dir:
        build_model(args, Path(model_dir))
        for k in range(args.rounds):
            # alternate the order each round, so slow drifts of a noisy machine hit both sides alike
            for name in (names if k % 2 == 0 else names[::-1]):
                t0 = time.time()
                r = run_worker(args, name, model_dir)
                rounds[name].append(r)
                path = ""
                if name.startswith("dw_js"):  # which path the trainer took
                    path = ", D at loss time" if r["divergence_at_loss"] else ", D after generation"
                fwd = f" (forward work {r['fwd_s']:.3f} s)" if "fwd_s" in r else ""
                print(f"  {name:<17} {CONFIGS[name]:<64} time {r['time_s']:.3f} s{fwd}   peak +{mib(r['peak_mem_bytes'])}"
                      f"   (peak RSS {mib(r['peak_rss_bytes'])}, {r['device']}, {r['threads']} threads{path}, "
                      f"{time.time() - t0:.0f} s wall)", flush=True)
    for name, rs in rounds.items():  # per configuration: the median round by time
        results[name] = sorted(rs, key=lambda r: r["time_s"])[len(rs) // 2]
        results[name]["rounds_time_s"] = [r["time_s"] for r in rs]
    rows = [("step: divergence-weighted (JS, beta=0) / TRL (beta=0.04)", "dw_js", "trl_beta0.04", 1.10, 1.15),
            ("step: the same with the separate pass / TRL (beta=0.04)", "dw_js_separate", "trl_beta0.04", None, None),
            ("pass: divergence pass at loss time / TRL reference pass", "pass_dw", "pass_ref", None, None),
            ("pass: separate divergence pass / TRL reference pass", "pass_dw_separate", "pass_ref", None, None)]
    for a, b in (("dw_js", "trl_beta0.04"), ("dw_js_separate", "trl_beta0.04")):
        if a in results and b in results:  # forward work only: backward + optimizer are the same for both
            rows.append((f"forward work/step: {a} / {b}", a, b, None, None, "fwd_s"))
    print(f"\n{'ratio':<58} {'time':>7} {'peak mem':>9}  targets")
    for label, a, b, t_target, m_target, *field in rows:
        if a in results and b in results:
            key = field[0] if field else "time_s"
            # time: median over rounds of the paired ratio (the two runs of a round are adjacent in time)
            per_round = [ra[key] / rb[key] for ra, rb in zip(rounds[a], rounds[b])]
            tr = statistics.median(per_round)
            mr = results[a]["peak_mem_bytes"] / max(1, results[b]["peak_mem_bytes"])
            target = f"<= {t_target:.2f}x / <= {m_target:.2f}x" if t_target else "-"
            spread = f"  (rounds: {', '.join(f'{x:.2f}' for x in per_round)})" if len(per_round) > 1 else ""
            print(f"{label:<58} {tr:>6.2f}x {mr:>8.2f}x  {target}{spread}")
            results[f"ratio:{a}/{b}" + ("" if key == "time_s" else f":{key}")] = {
                "time": tr, "peak_mem": mr, "time_per_round": per_round}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
