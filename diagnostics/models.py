"""Load a base/policy pair for the shift analysis and refuse pairs that do not share a vocabulary.

    from diagnostics.models import load_pair
    base, policy, tok = load_pair("path/or/hub-id-of-base", "path/to/policy")
    records = diagnostics.probe.generate_completions(policy, tok, prompts, num_samples=4, seed=0)

A token-level comparison only means something if token id i is the same string for both models, so
`check_same_vocabulary` compares the two tokenizers (size, special tokens, the full vocab map, and
the ids of a fixed probe text) and the two models' output sizes, and raises one line saying which
differs. Sampling lives in `diagnostics.probe` (`build_probe_set`, `generate_completions`: one
generation code path for the CLI, the training callback and `evolution`), which imports this module,
never the reverse.
"""

from __future__ import annotations

import logging
import os
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
    """`AutoTokenizer` of a local folder or hub id; a missing source or files raise naming `flag` and the fix."""
    from transformers import AutoTokenizer

    _check_source(name_or_path, flag)
    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except OSError as err:
        raise ValueError(f"{flag} {name_or_path!r}: cannot load its tokenizer ({str(err).splitlines()[0]}). Fix: pass "
                         f"a local folder with tokenizer files, or go online for a hub id") from None


def resolve_device(device: str | torch.device | None = "auto") -> torch.device | None:
    """'auto' -> cuda if available, else cpu; None -> None (leave the model where loading put it)."""
    if device is None:
        return None
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(name_or_path: str, *, dtype: str | torch.dtype = "float32", device: str | torch.device | None = "auto",
               flag: str = "--base", **from_pretrained_kwargs):
    """The project's one model loader: `AutoModelForCausalLM.from_pretrained`, in eval mode.

    Args:
        name_or_path: a folder written by `save_pretrained` (e.g. a `checkpoint-*`) or a hub id.
        dtype: a `torch.dtype`, or 'float32' / 'bfloat16' / 'float16' / 'auto' (the checkpoint's).
        device: where to move it: 'auto' (cuda if available, else cpu), a device, or None (leave it where
            `from_pretrained` put it, e.g. with a `device_map` in `from_pretrained_kwargs`).
        flag: the CLI flag or config field the path came from, named in errors.
        from_pretrained_kwargs: passed on (e.g. the trainer's `model_init_kwargs`).

    Raises:
        FileNotFoundError: a local path that does not exist or has no config.json.
        ValueError: the weights cannot be loaded (message names `flag` and the fix).
    """
    from transformers import AutoModelForCausalLM

    _check_source(name_or_path, flag)
    torch_dtype = dtype if isinstance(dtype, torch.dtype) or dtype == "auto" else getattr(torch, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch_dtype, **from_pretrained_kwargs)
    except OSError as err:
        raise ValueError(f"{flag} {name_or_path!r}: cannot load the model ({str(err).splitlines()[0]}). Fix: pass a "
                         f"local folder with config.json and weights, or go online for a hub id") from None
    dev = resolve_device(device)
    if dev is not None:
        model = model.to(dev)
    return model.eval()


def eos_token_ids(model=None, tokenizer=None) -> list[int]:
    """Every id that ends a generation: the union of the model's `generation_config.eos_token_id` (an int or a
    list, e.g. Llama-3's `<|eot_id|>` next to `<|end_of_text|>`) and the tokenizer's `eos_token_id`, sorted.

    Every place the project generates (evaluation, probes, co-decoding, SFT sampling, the demo) stops on this
    set: passing only `tokenizer.eos_token_id` to `generate` overrides the generation config, so a chat model
    whose turn ends with a token that is not the tokenizer's eos would run on past its answer.
    """
    ids: set[int] = set()
    for m in (model if isinstance(model, (list, tuple)) else [model]):
        gen = getattr(m, "generation_config", None) if m is not None else None
        eos = getattr(gen, "eos_token_id", None) if gen is not None else None
        if eos is not None:
            ids.update(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
    for t in (tokenizer if isinstance(tokenizer, (list, tuple)) else [tokenizer]):
        if t is not None and getattr(t, "eos_token_id", None) is not None:
            ids.add(int(t.eos_token_id))
    return sorted(ids)


def _output_size(model) -> int | None:
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None and emb.weight.dim() == 2:
        return int(emb.weight.shape[0])
    return getattr(getattr(model, "config", None), "vocab_size", None)


def check_same_vocabulary(base_tok, policy_tok, base_model=None, policy_model=None, *,
                          base_name: str = "base", policy_name: str = "policy") -> None:
    """The project's one vocabulary check (shift, evolution, cross-sampling, the callback, the trainer's base).

    Raise ValueError (one line: what differs, how to fix) unless both sides share a vocabulary: the
    tokenizers' sizes, vocab maps and split of a fixed probe text; with both models, their output
    sizes (equal, and at least the tokenizer's size). Different eos/pad ids only warn (generation
    stops on the union, `eos_token_ids`). A tokenizer may be None (e.g. the trainer's base without
    tokenizer files): then only the models are compared.
    """
    fix = ("Fix: compare a policy fine-tuned from this base (same tokenizer), or re-save the policy with the "
           "base's tokenizer if only the files differ")
    where = f"base {base_name!r} and policy {policy_name!r}"
    if base_tok is None or policy_tok is None:
        base_tok = policy_tok = base_tok or policy_tok
    if base_tok is None:
        pass
    elif len(base_tok) != len(policy_tok):
        raise ValueError(f"{where} tokenizers differ in size ({len(base_tok)} vs {len(policy_tok)}). {fix}")
    for attr in ("eos_token_id", "pad_token_id"):
        a, b = getattr(base_tok, attr, None), getattr(policy_tok, attr, None)
        if a is not None and b is not None and a != b:
            logger.warning("%s tokenizers have different %s (%s vs %s); the base tokenizer's is used",
                           where, attr, a, b)
    if base_tok is not policy_tok:
        vb, vp = base_tok.get_vocab(), policy_tok.get_vocab()
        if vb != vp:
            diff = sorted(set(vb.items()) ^ set(vp.items()), key=lambda kv: kv[1])[:3]
            raise ValueError(f"{where} tokenizers map tokens to different ids (e.g. {diff}). {fix}")
        ib = base_tok(PROBE_TEXT, add_special_tokens=False)["input_ids"]
        ip = policy_tok(PROBE_TEXT, add_special_tokens=False)["input_ids"]
        if ib != ip:
            raise ValueError(f"{where} tokenizers split the same text differently ({ib[:8]}... vs {ip[:8]}...). "
                             f"{fix}")
    if base_model is not None and policy_model is not None:
        sb, sp = _output_size(base_model), _output_size(policy_model)
        if sb is not None and sp is not None and sb != sp:
            raise ValueError(f"{where} models have different vocabulary sizes ({sb} vs {sp} output logits). {fix}")
        if sb is not None and base_tok is not None and sb < len(base_tok):
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
