"""A fixed probe set: (prompt, completion) token sequences on which the shift is measured.

Numbers from different training steps or checkpoints compare only if they are measured on the
*same* tokens, so the probe set is built once (sampled from the base model with a fixed seed, or
read from a file) and saved as JSONL; the training callback and `sparse-rlvr evolution` both read
it back. The base-generated default avoids the on-policy bias a reviewer raised for RL-generated
trajectories (Meng et al. teacher-force along RL samples; pass your own file to do that).

    from diagnostics.probe import probe_from_dataset, load_probe
    probe = probe_from_dataset(base_model, tokenizer, "tiny", split="test", num_prompts=16, seed=0)
    probe.save("probe.jsonl")
    probe = load_probe("probe.jsonl")                 # same ids, same fingerprint

File format (one JSON object per line): `prompt_ids`, `completion_ids` (token ids, the truth),
`prompt`, `completion` (decoded text, for people), and optional extra fields (`problem`, `answer`).
Files with only `prompt` / `completion` text (prompt already chat-templated) load too, given a
tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diagnostics.jsonl import read_jsonl, rewrite_jsonl
from diagnostics.models import eos_token_ids

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeSequence:
    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    prompt: str = ""
    completion: str = ""
    extra: dict = field(default_factory=dict, compare=False)


@dataclass
class ProbeSet:
    """An ordered list of probe sequences; `seq_id` in analysis tables is the index here."""

    sequences: list[ProbeSequence]

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def num_completion_tokens(self) -> int:
        return sum(len(s.completion_ids) for s in self.sequences)

    def records(self) -> list[dict]:
        """Records in the form `diagnostics.shift.analyze` takes (token ids, no re-tokenization)."""
        return [{"prompt_ids": list(s.prompt_ids), "completion_ids": list(s.completion_ids)} for s in self.sequences]

    def fingerprint(self) -> str:
        """sha256 (16 hex chars) of the token ids only: equal ids <=> comparable numbers."""
        h = hashlib.sha256()
        for s in self.sequences:
            h.update(json.dumps([s.prompt_ids, s.completion_ids]).encode())
        return h.hexdigest()[:16]

    def save(self, path: str | os.PathLike) -> Path:
        """Write as JSONL atomically (temp file + os.replace). Returns the path."""
        path = Path(path)
        rewrite_jsonl(path, (
            {"prompt_ids": list(s.prompt_ids), "completion_ids": list(s.completion_ids),
             "prompt": s.prompt, "completion": s.completion, **s.extra}
            for s in self.sequences
        ))
        return path


def load_probe(path: str | os.PathLike, tokenizer=None) -> ProbeSet:
    """Read a probe set from JSONL. Records need `prompt_ids` + `completion_ids`, or text
    `prompt` + `completion` (then `tokenizer` is required; both parts are tokenized separately
    without special tokens, as TRL and `diagnostics.shift` do)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"probe file {path} does not exist. Fix: pass an existing .jsonl file, or build one "
                                f"from a dataset (--dataset SOURCE --num-prompts N)")
    rows = read_jsonl(path)
    if not rows:
        raise ValueError(f"probe file {path} holds no records. Fix: rebuild it")
    seqs = []
    for i, rec in enumerate(rows):
        extra = {k: v for k, v in rec.items() if k not in ("prompt_ids", "completion_ids", "prompt", "completion")}
        if "prompt_ids" in rec and "completion_ids" in rec:
            p_ids, c_ids = rec["prompt_ids"], rec["completion_ids"]
        elif "prompt" in rec and "completion" in rec:
            if tokenizer is None:
                raise ValueError(f"{path}: record {i} has text but no token ids; pass a tokenizer to tokenize it")
            if not isinstance(rec["prompt"], str):
                raise ValueError(f"{path}: record {i}: 'prompt' must be chat-templated text, got "
                                 f"{type(rec['prompt']).__name__}")
            p_ids = tokenizer(rec["prompt"], add_special_tokens=False)["input_ids"]
            c_ids = tokenizer(rec["completion"], add_special_tokens=False)["input_ids"]
        else:
            raise ValueError(f"{path}: record {i} has keys {sorted(rec)}; needs 'prompt_ids' and 'completion_ids' "
                             f"or 'prompt' and 'completion'")
        if not p_ids:
            raise ValueError(f"{path}: record {i} has an empty prompt; the first completion token needs a context")
        seqs.append(ProbeSequence(tuple(int(t) for t in p_ids), tuple(int(t) for t in c_ids),
                                  rec.get("prompt", ""), rec.get("completion", ""), extra))
    return ProbeSet(seqs)


def _render_prompt(tokenizer, prompt) -> str:
    """Conversational prompt (list of {"role","content"}) -> templated text; text passes through."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)


def _cut_completion(ids: list[int], eos_ids: set[int], pad_id: int | None) -> list[int]:
    """Keep generated ids up to and including the first eos (termination is a decision too)."""
    out = []
    for t in ids:
        if t in eos_ids:
            out.append(t)
            break
        if pad_id is not None and t == pad_id:
            break
        out.append(t)
    return out


def build_probe_set(
    model,
    tokenizer,
    prompts: Sequence,
    *,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    extras: Sequence[dict] | None = None,
    progress: bool = True,
) -> ProbeSet:
    """Sample one completion per prompt from `model` (seeded: the same inputs give the same set).

    Args:
        prompts: chat-templated strings or conversational prompts (lists of messages).
        temperature, top_p: sampling settings (the paper samples at 1.0 / 0.7).
        seed: seeds torch's RNG inside a forked RNG state (the caller's RNG is left untouched).
        extras: optional per-prompt dicts stored with each sequence (e.g. problem, answer).
    """
    if not prompts:
        raise ValueError("build_probe_set got no prompts. Fix: pass at least one prompt")
    texts = [_render_prompt(tokenizer, p) for p in prompts]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = set(eos_token_ids(model, tokenizer))  # the generation config's and the tokenizer's end ids
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    seqs: list[ProbeSequence] = []
    batches = [range(s, min(s + batch_size, len(texts))) for s in range(0, len(texts), batch_size)]
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="probe generation", unit="batch")
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(seed)
            for idx in batches:
                enc = [tokenizer(texts[i], add_special_tokens=False)["input_ids"] for i in idx]
                t_max = max(len(e) for e in enc)
                ids = torch.full((len(enc), t_max), pad_id, dtype=torch.long)  # (B, T) left-padded
                mask = torch.zeros((len(enc), t_max), dtype=torch.long)  # (B, T)
                for b, e in enumerate(enc):
                    ids[b, t_max - len(e):] = torch.tensor(e)
                    mask[b, t_max - len(e):] = 1
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True,
                                     temperature=temperature, top_p=top_p, top_k=0, max_new_tokens=max_new_tokens,
                                     pad_token_id=pad_id, eos_token_id=sorted(eos_ids) or None)  # (B, T + new)
                for b, i in enumerate(idx):
                    comp = _cut_completion(out[b, t_max:].tolist(), eos_ids, pad_id)
                    seqs.append(ProbeSequence(
                        tuple(enc[b]), tuple(comp), texts[i],
                        tokenizer.decode(comp, skip_special_tokens=False),
                        dict(extras[i]) if extras is not None else {},
                    ))
    finally:
        model.train(was_training)
    n_empty = sum(1 for s in seqs if not s.completion_ids)
    if n_empty:
        logger.warning("probe generation: %d of %d completions are empty (they add no tokens)", n_empty, len(seqs))
    return ProbeSet(seqs)


def probe_from_dataset(
    model,
    tokenizer,
    source: str = "tiny",
    *,
    split: str = "test",
    num_prompts: int = 16,
    seed: int = 0,
    **generate_kwargs,
) -> ProbeSet:
    """Probe set from the first `num_prompts` prompts of a math dataset (`rewards.data`), sampled
    once from `model` with `build_probe_set(..., seed=seed, **generate_kwargs)`."""
    from rewards.data import load_math_dataset

    ds = load_math_dataset(source, split, num_samples=num_prompts, seed=seed)
    ds = ds.select(range(min(num_prompts, len(ds))))
    extras = [{"problem": r.get("problem"), "answer": r.get("answer")} for r in ds]
    return build_probe_set(model, tokenizer, list(ds["prompt"]), seed=seed, extras=extras, **generate_kwargs)


def generate_completions(model, tokenizer, prompts: Sequence, *, num_samples: int = 1, temperature: float = 1.0,
                         top_p: float = 1.0, max_new_tokens: int = 128, batch_size: int = 8, seed: int = 0,
                         extras: Sequence[dict] | None = None, progress: bool = True) -> list[dict]:
    """Sample `num_samples` completions per prompt; returns analysis records.

    Each record: `prompt_ids`, `completion_ids` (cut after the first eos, which is kept),
    `prompt`, `completion` (text), `prompt_index`, `sample`, plus the prompt's `extras`.
    Prompts are chat-templated strings or conversational message lists.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}. Fix: pass --num-samples 1 or more")
    rep_prompts = [p for p in prompts for _ in range(num_samples)]
    rep_extras = [{**(dict(extras[i]) if extras is not None else {}), "prompt_index": i, "sample": s}
                  for i in range(len(prompts)) for s in range(num_samples)]
    probe = build_probe_set(model, tokenizer, rep_prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                            top_p=top_p, seed=seed, batch_size=batch_size, extras=rep_extras, progress=progress)
    return [{"prompt_ids": list(q.prompt_ids), "completion_ids": list(q.completion_ids), "prompt": q.prompt,
             "completion": q.completion, **q.extra} for q in probe.sequences]
