"""Benchmark the verifiable math reward: throughput vs plain math-verify, p99 latency, hostile worst case.

Run (CPU, ~1-3 min on 2 cores):
    source .venv/bin/activate && python bench/bench_reward.py [--n-prompts 64] [--group 8] [--timeout 5]

Workload (GRPO-like): `--n-prompts` problems x `--group` sampled completions each, half correct.
  tiny:  the tiny world's completions (`65-6=59 59+4=63 63-9=54 \\boxed{54}`), golds as in the dataset.
  latex: MATH-style completions (a paragraph of reasoning, then a LaTeX `\\boxed{}` answer) built from
         the labelled set's answers, with golds in their LaTeX form.
Scorers, on the same pairs, same process, `--rounds` alternating runs (plain, then ours with a
cold result cache), the median round reported, so both see the same machine load:
  plain:  `verify(parse(gold), parse(completion))` in process, math-verify defaults (what people
          plug into TRL).
  ours:   `rewards.math.score_batch` (fast paths + de-duplication + the worker pool). The pool is
          started and warmed before timing (a trainer pays that once per run).
p99 latency: per item sent to the pool, from dispatch to result, over all timed batches; the
target is <= timeout + 10%. Hostile: wall time of `tests/rewards/reward_hostile_corpus.py` in one batch.
Stage 1: in-process extraction + normalization (`rewards.math.prepare`) per item on the latex
workload, `extraction="lenient"` vs `"strict"` (the cost of the fallback), microseconds per item.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "rewards"))


def tiny_workload(n_prompts: int, group: int, seed: int) -> tuple[list[str], list[str]]:
    from rewards.tiny_task import generate_problems, sample_slip, solution_text

    rng = random.Random(seed)
    comps, golds = [], []
    for p in generate_problems("train", n_prompts, seed):
        for _ in range(group):
            comps.append(solution_text(p, None if rng.random() < 0.5 else sample_slip(p, rng)))
            golds.append(str(p.answer))
    return comps, golds


def latex_workload(n_prompts: int, group: int, seed: int) -> tuple[list[str], list[str]]:
    """MATH-style: reasoning text + a boxed LaTeX answer; wrong samples take another case's answer."""
    from reward_report_accuracy import load_cases

    rng = random.Random(seed)
    cases = [c for c in load_cases() if c["expected"] == 1.0 and "\\boxed{" in c["completion"] and c["gold"].strip()]
    filler = (
        "Let us work through the problem step by step. First we simplify the expression, "
        "collect like terms and check the boundary cases. "
    ) * 6
    comps, golds = [], []
    for _ in range(n_prompts):
        c = rng.choice(cases)
        for _ in range(group):
            right = rng.random() < 0.5
            ans = c["completion"] if right else rng.choice(cases)["completion"]
            comps.append(filler + "Therefore " + ans)
            golds.append(c["gold"])
    return comps, golds


def plain_scores(comps: list[str], golds: list[str]) -> list[float]:
    from math_verify import parse, verify

    out = []
    for c, g in zip(comps, golds):
        try:
            out.append(float(verify(parse(g), parse(c))))
        except BaseException as e:  # noqa: BLE001 - TimeoutException is a BaseException
            if isinstance(e, KeyboardInterrupt):
                raise
            out.append(0.0)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-prompts", type=int, default=64, help="problems per workload (default 64)")
    parser.add_argument("--group", type=int, default=8, help="completions per problem, as GRPO's num_generations (default 8)")
    parser.add_argument("--timeout", type=float, default=5.0, help="per-item hard timeout of the pool, seconds (default 5)")
    parser.add_argument("--workers", type=int, default=None, help="pool workers (default: usable CPUs, max 8)")
    parser.add_argument("--seed", type=int, default=0, help="workload seed")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating plain/ours rounds per workload; the median round is reported (default 3)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)

    from reward_hostile_corpus import hostile_corpus

    from rewards.math import score_batch, score_batch_detailed
    from rewards.pool import get_pool

    pool = get_pool(timeout=args.timeout, num_workers=args.workers)
    t0 = time.monotonic()
    pool.wait_ready()
    startup = time.monotonic() - t0
    plain_scores(["\\boxed{1}"], ["1"])  # warm math-verify in this process too

    import rewards.math as reward_math

    rows, latencies = [], []
    for name, make in (("tiny", tiny_workload), ("latex", latex_workload)):
        comps, golds = make(args.n_prompts, args.group, args.seed)
        ratios, t_plains, t_ourss = [], [], []
        for _ in range(args.rounds):  # alternating rounds: both scorers see the same machine load
            t0 = time.monotonic()
            plain = plain_scores(comps, golds)
            t_plain = time.monotonic() - t0
            with reward_math._CACHE_LOCK:
                reward_math._RESULT_CACHE.clear()  # each round starts with a cold result cache
            ours_all, t_ours = [], 0.0
            for i in range(0, len(comps), args.group * 8):  # batches of 8 prompts x group, as a trainer would
                t0 = time.monotonic()
                ours_all += score_batch(comps[i : i + args.group * 8], golds[i : i + args.group * 8], timeout=args.timeout)
                t_ours += time.monotonic() - t0
                latencies += [x for x in pool.last_latencies if x > 0]
            ratios.append(t_plain / t_ours)
            t_plains.append(t_plain)
            t_ourss.append(t_ours)
        agree = sum(a == b for a, b in zip(plain, ours_all)) / len(comps)
        med = sorted(range(args.rounds), key=lambda r: ratios[r])[args.rounds // 2]  # the median round
        rows.append((name, len(comps), len(comps) / t_plains[med], len(comps) / t_ourss[med], ratios[med], agree,
                     [round(r, 2) for r in ratios]))

    from rewards.math import prepare

    comps, golds = latex_workload(args.n_prompts, args.group, args.seed)
    stage1 = {}
    for mode in ("strict", "lenient"):
        t0 = time.perf_counter()
        for _ in range(3):
            for c, g in zip(comps, golds):
                prepare(c, g, extraction=mode)
        stage1[mode] = (time.perf_counter() - t0) / (3 * len(comps)) * 1e6

    hostile = hostile_corpus()
    t0 = time.monotonic()
    res = score_batch_detailed([c for c, _ in hostile], [g for _, g in hostile], timeout=args.timeout)
    t_hostile = time.monotonic() - t0
    hostile_worst = max(pool.last_latencies, default=0.0)
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else 0.0

    print(f"pool: {pool.num_workers} workers, timeout {args.timeout:.1f} s, startup {startup:.1f} s (not timed below)")
    print(f"{'workload':<8} {'items':>6} {'plain/s':>9} {'ours/s':>9} {'ratio':>7} {'agree':>7}  rounds")
    for name, n, ps, os_, ratio, agree, per_round in rows:
        print(f"{name:<8} {n:>6} {ps:>9.1f} {os_:>9.1f} {ratio:>6.2f}x {agree:>7.1%}  {per_round}")
    print(f"p99 pool item latency: {p99:.3f} s over {len(latencies)} pool items (target <= {1.1 * args.timeout:.2f} s)")
    print(f"stage 1 (prepare) per item: strict {stage1['strict']:.0f} us, lenient {stage1['lenient']:.0f} us")
    print(
        f"hostile corpus: {len(hostile)} items in {t_hostile:.2f} s wall, worst item {hostile_worst:.2f} s, "
        f"statuses {sorted(set(r.status for r in res))}"
    )
    if args.json:
        args.json.write_text(json.dumps({
            "rows": rows, "p99": p99, "stage1_us": stage1, "timeout": args.timeout, "hostile_wall": t_hostile, "hostile_worst": hostile_worst,
        }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
