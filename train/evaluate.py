"""Sample K completions per problem and report mean@K / pass@K accuracy (and greedy if asked).

    sparse-rlvr eval --model outputs/tiny-base --split test --num-samples 8 --sample-temperature 1.0 \
        --output outputs/eval.json
    sparse-rlvr eval --model Qwen/Qwen2.5-Math-1.5B --dataset data/math500.jsonl \
        --answer-column solution --gold-format boxed --system-prompt "Put the final answer in \\boxed{}." \
        --num-samples 4 --max-new-tokens 1024 --output math500.json

Definitions (K = num_samples, N problems, r_ij in {0, 1} the verified reward of sample j of problem i):
    mean@K = 1/(N K) * sum_ij r_ij          (expected accuracy of one sample at this temperature)
    pass@K = 1/N * sum_i max_j r_ij         (at least one of K samples correct; n = k, so the
                                             unbiased estimator 1 - C(n-c, k)/C(n, k) reduces to this)
    greedy = 1/N * sum_i r_i(greedy decode)

Generation: batched HF `generate`, prompts rendered with the tokenizer's chat template and
`add_generation_prompt=True`, left padding, pure sampling (top_k disabled; `top_p` as given).
Scoring: `rewards.math.score_batch` (math-verify with hard timeouts; never raises).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from diagnostics.cli_args import add_runtime_arguments, add_sampling_arguments
from rewards.data import add_dataset_arguments
from rewards.registry import add_reward_arguments

logger = logging.getLogger(__name__)


def _score_batch(completions: list[str], golds: list[str], extraction: str = "lenient",
                 finished: list[bool] | None = None, timeout: float | None = None) -> list[float]:
    from rewards.math import score_batch

    kwargs = {} if timeout is None else {"timeout": timeout}
    return list(score_batch(completions, golds, extraction=extraction, finished=finished, **kwargs))


def _load(model_or_path, tokenizer, *, dtype="float32", device="auto"):
    """(model, tokenizer) from a model object or a local path / hub id (`diagnostics.models`, the one loader)."""
    from transformers import PreTrainedModel

    from diagnostics.models import load_model, load_tokenizer

    if isinstance(model_or_path, PreTrainedModel):
        if tokenizer is None:
            raise ValueError("evaluate_model got a model object but no tokenizer. Fix: pass tokenizer=...")
        return model_or_path, tokenizer
    path = str(model_or_path)
    tokenizer = tokenizer or load_tokenizer(path, "--model")
    return load_model(path, dtype=dtype, device=device, flag="--model"), tokenizer


def _check_dataset(dataset):
    if len(dataset) == 0:
        raise ValueError("the evaluation dataset is empty. Fix: check --dataset / --split / --limit")
    cols = dataset.column_names
    if "answer" not in cols or not ({"prompt", "problem"} & set(cols)):
        raise ValueError(f"the evaluation dataset needs columns 'answer' and 'prompt' (or 'problem'); it has {cols}. "
                         "Fix: load it with rewards.data.load_math_dataset (column mapping) first")


def _generate(model, tokenizer, texts: list[str], *, do_sample: bool, temperature: float, top_p: float,
              max_new_tokens: int, batch_size: int, desc: str, progress: bool) -> tuple[list[str], list[bool]]:
    """(completions, finished) for `texts`, in order, in batches: the decoded text (special tokens
    dropped) and whether generation produced an EOS (False: cut off at `max_new_tokens`)."""
    import torch
    from tqdm.auto import tqdm

    from diagnostics.models import eos_token_ids

    tokenizer.padding_side = "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = eos_token_ids(model, tokenizer)  # the generation config's end-of-turn ids too, not only the tokenizer's
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0} if do_sample else {
        "do_sample": False}
    out: list[str] = []
    finished: list[bool] = []
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, disable=not progress, unit="batch"):
        batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                          add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            seqs = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                                  eos_token_id=eos or None, **sampling)  # (b, T_prompt + T_new)
        completion_ids = seqs[:, batch["input_ids"].shape[1]:]  # (b, T_new)
        out += tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        # generate pads a row after its EOS, so a row that stopped early contains one of the EOS ids
        finished += (torch.isin(completion_ids, torch.tensor(eos, device=completion_ids.device)).any(dim=1).tolist()
                     if eos else [False] * completion_ids.shape[0])
    return out, finished


def evaluate_model(model_or_path, dataset, *, tokenizer=None, num_samples: int = 8, temperature: float = 1.0,
                   top_p: float = 1.0, max_new_tokens: int = 64, batch_size: int = 64, seed: int = 0,
                   greedy: bool = False, progress: bool = True, extraction: str = "lenient",
                   timeout: float | None = None, dtype: str = "float32", device: str | None = "auto") -> dict:
    """Sample `num_samples` completions per problem of `dataset` and score them against `answer`.

    Args:
        model_or_path: a `PreTrainedModel` (then pass `tokenizer`) or a saved-model path / hub id.
        dataset: rows with `answer` (normalized gold) and `prompt` (conversational messages) or
            `problem` (then the prompt is one user turn); e.g. from `rewards.data.load_math_dataset`.
        num_samples: K samples per problem (>= 1).
        temperature: sampling temperature; 0 means greedy decoding for all K samples.
        greedy: additionally decode greedily once per problem and report `greedy` accuracy.
        seed: torch seed for sampling (same seed + batch size -> same samples).
        extraction: the reward's answer extraction, "lenient" (default) or "strict" (`rewards.math`).
        timeout: seconds the verifier may spend on one completion (None: `rewards.math`'s default). A training
            run passes both from its `train.reward_settings.RewardSettings.evaluation_kwargs()`.
        dtype, device: for a path (`diagnostics.models.load_model`); a model object is used where it is.

    Returns:
        {"mean@K", "pass@K", "greedy" (if asked), "num_problems", "num_samples", "temperature",
         "top_p", "problems": [{"problem", "answer", "scores", "completions", "finished", "greedy_*"?}, ...]}
        `finished[j]`: completion j ended on an EOS (False: cut off at `max_new_tokens`; the reward
        then applies no lenient fallback, `rewards.math`).
    """
    import torch

    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}. Fix: pass --num-samples K with K >= 1")
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size and max_new_tokens must be >= 1 (got {batch_size}, {max_new_tokens})")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1 (got {temperature}, {top_p})")
    _check_dataset(dataset)
    model, tokenizer = _load(model_or_path, tokenizer, dtype=dtype, device=device)
    was_training = model.training
    model.eval()

    rows = list(dataset)
    messages = [r["prompt"] if "prompt" in r else [{"role": "user", "content": r["problem"]}] for r in rows]
    prompts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]
    golds = [str(r["answer"]) for r in rows]
    n, k = len(rows), num_samples

    torch.manual_seed(seed)
    texts = [p for p in prompts for _ in range(k)]  # (N*K,) problem-major
    completions, finished = _generate(model, tokenizer, texts, do_sample=temperature > 0, temperature=temperature,
                            top_p=top_p, max_new_tokens=max_new_tokens, batch_size=batch_size,
                            desc=f"eval: {n} problems x {k} samples", progress=progress)
    scores = _score_batch(completions, [g for g in golds for _ in range(k)], extraction, finished, timeout)  # (N*K,)
    per_problem = []
    for i, row in enumerate(rows):
        s = scores[i * k:(i + 1) * k]
        per_problem.append({"problem": row.get("problem", messages[i][-1]["content"]), "answer": golds[i],
                            "scores": s, "completions": completions[i * k:(i + 1) * k],
                            "finished": finished[i * k:(i + 1) * k]})
    result = {
        f"mean@{k}": sum(scores) / (n * k),
        f"pass@{k}": sum(max(p["scores"]) > 0 for p in per_problem) / n,
        "num_problems": n,
        "num_samples": k,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "extraction": extraction,
    }
    if greedy:
        greedy_out, greedy_finished = _generate(model, tokenizer, prompts, do_sample=False, temperature=1.0, top_p=1.0,
                               max_new_tokens=max_new_tokens, batch_size=batch_size,
                               desc=f"eval: {n} problems greedy", progress=progress)
        greedy_scores = _score_batch(greedy_out, golds, extraction, greedy_finished, timeout)
        for p, c, s, f in zip(per_problem, greedy_out, greedy_scores, greedy_finished):
            p["greedy_completion"], p["greedy_score"], p["greedy_finished"] = c, s, f
        result["greedy"] = sum(greedy_scores) / n
    result["problems"] = per_problem
    if was_training:
        model.train()
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sparse-rlvr eval",
        description="Sample K completions per problem and write mean@K / pass@K (and greedy) accuracy as JSON.")
    p.add_argument("--model", required=True, help="saved model directory (save_pretrained) or hub model id")
    add_dataset_arguments(p, dataset="tiny", split="test", limit=None,
                          limit_help="number of problems (tiny: how many to generate, default 200 for test; others: "
                                     "first N rows)")
    add_reward_arguments(p)
    p.add_argument("--num-samples", type=int, default=8, help="K samples per problem (default 8)")
    add_sampling_arguments(p, legacy_plain=True)
    p.add_argument("--greedy", action="store_true", help="also decode greedily once per problem and report it")
    p.add_argument("--max-new-tokens", type=int, default=64, help="generation length cap (default 64)")
    p.add_argument("--batch-size", type=int, default=64, help="sequences per generate call (default 64)")
    add_runtime_arguments(p, seed_help="sampling seed and tiny-world problem seed (default 0)")
    p.add_argument("--output", default=None, help="write the full result (incl. per-problem completions) to this JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.num_samples < 1:
        parser.error(f"--num-samples must be >= 1, got {args.num_samples}. Fix: pass e.g. --num-samples 8")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be >= 1, got {args.limit}. Fix: pass a positive number or leave it out")
    if args.batch_size < 1 or args.max_new_tokens < 1:
        parser.error("--batch-size and --max-new-tokens must be >= 1")
    from rewards.data import dataset_from_args

    dataset = dataset_from_args(args)
    result = evaluate_model(args.model, dataset, num_samples=args.num_samples, temperature=args.sample_temperature,
                            top_p=args.sample_top_p, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                            seed=args.seed, greedy=args.greedy, progress=args.progress, extraction=args.extraction,
                            dtype=args.dtype, device=args.device or "auto")
    result = {"model": str(args.model), "dataset": args.dataset, "split": args.split, **result}
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "problems"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
