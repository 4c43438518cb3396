"""Load a base/policy pair for the shift analysis, refuse pairs that do not share a vocabulary, and
sample completions to analyse.

    from diagnostics.models import load_pair, generate_completions
    base, policy, tok = load_pair("path/or/hub-id-of-base", "path/to/policy")
    records = generate_completions(policy, tok, prompts, num_samples=4, seed=0)

A token-level comparison only means something if token id i is the same string for both models, so
`check_same_vocabulary` compares the two tokenizers (size, special tokens, the full vocab map, and
the ids of a fixed probe text) and the two models' output sizes, and raises one line saying which
differs. Sampling reuses `diagnostics.probe.build_probe_set` (one generation code path for the CLI,
the training callback and `evolution`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

PROBE_TEXT = "Compute 12 + 7 * 3. The answer is \\boxed{33}.\n  Hello, world! 0123456789 +-*/=()"


def _is_local(name_or_path: str) -> bool:
    return os.path.sep in name_or_path or name_or_path.startswith(".") or Path(name_or_path).exists()


def _check_source(name_or_path: str, flag: str) -> None:
    if _is_local(name_or_path) and not Path(name_or_path).exists():
        raise FileNotFoundError(f"{flag} {name_or_path!r} does not exist. Fix: pass a model folder (with config.json) "
                                f"or a hub id")
    if Path(name_or_path).is_dir() and not (Path(name_or_path) / "config.json").exists():
        raise FileNotFoundError(f"{flag} {name_or_path!r} has no config.json. Fix: pass the folder that "
                                f"save_pretrained wrote (e.g. a checkpoint-* folder)")


def load_tokenizer(name_or_path: str, flag: str = "--base"):
    from transformers import AutoTokenizer

    _check_source(name_or_path, flag)
    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except OSError as err:
        raise ValueError(f"{flag} {name_or_path!r}: cannot load its tokenizer ({str(err).splitlines()[0]}). Fix: pass "
                         f"a local folder with tokenizer files, or go online for a hub id") from None


def load_model(name_or_path: str, *, dtype: str = "float32", device: str | None = None, flag: str = "--base"):
    """AutoModelForCausalLM in eval mode on `device` (default: cuda if available, else cpu)."""
    from transformers import AutoModelForCausalLM

    _check_source(name_or_path, flag)
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch_dtype)
    except OSError as err:
        raise ValueError(f"{flag} {name_or_path!r}: cannot load the model ({str(err).splitlines()[0]}). Fix: pass a "
                         f"local folder with config.json and weights, or go online for a hub id") from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval()


def _output_size(model) -> int | None:
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None and emb.weight.dim() == 2:
        return int(emb.weight.shape[0])
    return getattr(getattr(model, "config", None), "vocab_size", None)


def check_same_vocabulary(base_tok, policy_tok, base_model=None, policy_model=None, *,
                          base_name: str = "base", policy_name: str = "policy") -> None:
    """Raise ValueError (one line: what differs, how to fix) unless both sides share a vocabulary."""
    fix = ("Fix: compare a policy fine-tuned from this base (same tokenizer), or re-save the policy with the "
           "base's tokenizer if only the files differ")
    where = f"base {base_name!r} and policy {policy_name!r}"
    if len(base_tok) != len(policy_tok):
        raise ValueError(f"{where} tokenizers differ in size ({len(base_tok)} vs {len(policy_tok)}). {fix}")
    for attr in ("eos_token_id", "pad_token_id"):
        a, b = getattr(base_tok, attr, None), getattr(policy_tok, attr, None)
        if a is not None and b is not None and a != b:
            logger.warning("%s tokenizers have different %s (%s vs %s); the base tokenizer's is used",
                           where, attr, a, b)
    vb, vp = base_tok.get_vocab(), policy_tok.get_vocab()
    if vb != vp:
        diff = sorted(set(vb.items()) ^ set(vp.items()), key=lambda kv: kv[1])[:3]
        raise ValueError(f"{where} tokenizers map tokens to different ids (e.g. {diff}). {fix}")
    ib = base_tok(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    ip = policy_tok(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    if ib != ip:
        raise ValueError(f"{where} tokenizers split the same text differently ({ib[:8]}... vs {ip[:8]}...). {fix}")
    if base_model is not None and policy_model is not None:
        sb, sp = _output_size(base_model), _output_size(policy_model)
        if sb != sp:
            raise ValueError(f"{where} models have different vocabulary sizes ({sb} vs {sp} output logits). {fix}")
        if sb is not None and sb < len(base_tok):
            raise ValueError(f"{where}: the models output {sb} logits but the tokenizer has {len(base_tok)} tokens. "
                             f"Fix: pass the tokenizer the model was trained with")


def load_pair(base: str, policy: str, *, dtype: str = "float32", device: str | None = None):
    """(base_model, policy_model, tokenizer) after checking the pair shares one vocabulary."""
    base_tok = load_tokenizer(base, "--base")
    policy_tok = load_tokenizer(policy, "--policy")
    check_same_vocabulary(base_tok, policy_tok, base_name=base, policy_name=policy)
    base_model = load_model(base, dtype=dtype, device=device, flag="--base")
    policy_model = load_model(policy, dtype=dtype, device=device, flag="--policy")
    check_same_vocabulary(base_tok, policy_tok, base_model, policy_model, base_name=base, policy_name=policy)
    if base_tok.pad_token_id is None and base_tok.eos_token_id is not None:
        base_tok.pad_token = base_tok.eos_token
    return base_model, policy_model, base_tok


def generate_completions(model, tokenizer, prompts: Sequence, *, num_samples: int = 1, temperature: float = 1.0,
                         top_p: float = 1.0, max_new_tokens: int = 128, batch_size: int = 8, seed: int = 0,
                         extras: Sequence[dict] | None = None, progress: bool = True) -> list[dict]:
    """Sample `num_samples` completions per prompt; returns analysis records.

    Each record: `prompt_ids`, `completion_ids` (cut after the first eos, which is kept),
    `prompt`, `completion` (text), `prompt_index`, `sample`, plus the prompt's `extras`.
    Prompts are chat-templated strings or conversational message lists.
    """
    from diagnostics.probe import build_probe_set

    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}. Fix: pass --num-samples 1 or more")
    rep_prompts = [p for p in prompts for _ in range(num_samples)]
    rep_extras = [{**(dict(extras[i]) if extras is not None else {}), "prompt_index": i, "sample": s}
                  for i in range(len(prompts)) for s in range(num_samples)]
    probe = build_probe_set(model, tokenizer, rep_prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                            top_p=top_p, seed=seed, batch_size=batch_size, extras=rep_extras, progress=progress)
    return [{"prompt_ids": list(q.prompt_ids), "completion_ids": list(q.completion_ids), "prompt": q.prompt,
             "completion": q.completion, **q.extra} for q in probe.sequences]
