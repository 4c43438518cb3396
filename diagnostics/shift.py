"""Two-model teacher-forced shift analysis: one table row per completion token.

    from diagnostics.shift import analyze
    table = analyze(base, policy, tokenizer, [{"prompt": "<|user|>...<|assistant|>", "completion": "..."}])

Both models read the same sequences (prompt + completion, teacher forcing) and, for every
completion token y_t, we compare the two next-token distributions that predicted it,
p = π_base(·|x, y_<t) and q = π_policy(·|x, y_<t), with `diagnostics.divergence.token_stats`
(JS, KL both ways, TV, entropies, top-1s, ranks, top-k overlap). This module only batches,
pads, runs the forwards and lays the results out as a table; the math lives in `divergence.py`.

Design choices:
- Only `model(input_ids=..., attention_mask=...)` is called (no `.generate`, no hidden-state
  tricks), so the same code runs on plain models and on DDP / DeepSpeed ZeRO-3 wrapped ones,
  where every rank must join every forward.
- Sequences are right-padded: prompt + completion are left-aligned, so default position ids are
  right and padding (at the end, causally after every real token) never affects real tokens.
- The completion rows of one sequence, `logits[b, P_b-1 : P_b-1+C_b]`, are a contiguous view
  of the `(B, T, V)` logits, so nothing vocabulary-sized is copied; `token_stats` then works in
  `(chunk_size, V)` float32 row chunks. Peak memory ≈ the two models' `(B, T, V)` logits (set by
  `batch_size`) + a few `(chunk_size, V)` float32 temporaries, never `k · B·T·V` float32 copies.
- Sequences are processed sorted by length (less padding); rows come back in record order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from diagnostics.divergence import log_probs, token_stats

logger = logging.getLogger(__name__)

TOPK = 5  # overlap@1..5 and the top-5 kept for the HTML hover

# Column order of the table `analyze` returns (the top-5 columns only with keep_topk=True).
COLUMNS = [
    "seq_id", "position", "rel_position", "token_id", "token",
    "js", "kl_forward", "kl_reverse", "tv", "entropy_base", "entropy_policy",
    "logp_base_token", "logp_policy_token", "top1_base", "top1_policy", "top1_changed",
    "base_rank_of_policy_top1", "base_prob_of_policy_top1",
    *[f"overlap@{k}" for k in range(1, TOPK + 1)],
]
TOPK_COLUMNS = ["base_top5_ids", "base_top5_probs", "policy_top5_ids", "policy_top5_probs"]


def records_to_ids(tokenizer, records: Sequence[Mapping]) -> list[tuple[list[int], list[int]]]:
    """`records` -> [(prompt_ids, completion_ids)].

    A record is `{"prompt": str, "completion": str}` (prompt already chat-templated; both parts are
    tokenized separately without special tokens added, as TRL does) or
    `{"prompt_ids": [...], "completion_ids": [...]}`.
    """
    out = []
    for i, rec in enumerate(records):
        if "prompt_ids" in rec and "completion_ids" in rec:
            p_ids, c_ids = list(map(int, rec["prompt_ids"])), list(map(int, rec["completion_ids"]))
        elif "prompt" in rec and "completion" in rec:
            if not isinstance(rec["prompt"], str) or not isinstance(rec["completion"], str):
                raise ValueError(
                    f"record {i}: 'prompt' and 'completion' must be strings (apply the chat template to "
                    f"conversational prompts first), got {type(rec['prompt']).__name__} and "
                    f"{type(rec['completion']).__name__}"
                )
            p_ids = tokenizer(rec["prompt"], add_special_tokens=False)["input_ids"]
            c_ids = tokenizer(rec["completion"], add_special_tokens=False)["input_ids"]
        else:
            raise ValueError(
                f"record {i} has keys {sorted(rec)}; each record needs 'prompt' and 'completion' (text) or "
                f"'prompt_ids' and 'completion_ids' (token ids)"
            )
        if len(p_ids) == 0:
            raise ValueError(f"record {i}: the prompt is empty; at least one prompt token is needed to predict "
                             f"the first completion token")
        out.append((p_ids, c_ids))
    return out


def _model_device(model) -> torch.device:
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    return next(model.parameters()).device


def _forward_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """`(B, T)` ids -> `(B, T, V)` logits, with the plain forward signature only."""
    dev = _model_device(model)
    out = model(input_ids=input_ids.to(dev), attention_mask=attention_mask.to(dev))
    return out.logits if hasattr(out, "logits") else out[0]


def _pad_right(batch: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad prompt+completion sequences. Returns ids `(B, T)` and attention mask `(B, T)`."""
    lengths = [len(p) + len(c) for p, c in batch]
    t_max = max(lengths)
    ids = torch.full((len(batch), t_max), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(batch), t_max), dtype=torch.long)  # (B, T)
    for b, (p, c) in enumerate(batch):
        ids[b, : lengths[b]] = torch.tensor(p + c, dtype=torch.long)
        mask[b, : lengths[b]] = 1
    return ids, mask


def _topk_probs(logits: torch.Tensor, temperature: float, k: int, chunk_size: int | None):
    """Top-k ids and probabilities of `softmax(logits / T)` for `(N, V)` logits, chunked."""
    n = logits.shape[0]
    step = chunk_size if chunk_size and chunk_size > 0 else max(n, 1)
    ids, probs = [], []
    for s in range(0, n, step):
        lp = log_probs(logits[s: s + step], temperature)  # (c, V) float32
        top = lp.topk(k, dim=-1)
        ids.append(top.indices.cpu())
        probs.append(top.values.exp().cpu())
        del lp
    return torch.cat(ids), torch.cat(probs)  # (N, k), (N, k)


def _token_strings(tokenizer, token_ids: np.ndarray) -> np.ndarray:
    """Decode each token id on its own (cached per unique id); what the HTML report shows."""
    uniq = np.unique(token_ids)
    texts = tokenizer.batch_decode([[int(u)] for u in uniq], skip_special_tokens=False)
    lookup = dict(zip(uniq.tolist(), texts))
    return np.array([lookup[int(t)] for t in token_ids], dtype=object)


def analyze(
    base_model,
    policy_model,
    tokenizer,
    records: Sequence[Mapping],
    *,
    chunk_size: int | None = 512,
    top_p: float | None = None,
    temperature: float = 1.0,
    batch_size: int = 8,
    progress: bool = True,
    keep_topk: bool = False,
) -> pd.DataFrame:
    """Teacher-force both models on every record; one row per completion token.

    Args:
        base_model, policy_model: causal LMs sharing `tokenizer`'s vocabulary (any module whose
            `forward(input_ids=, attention_mask=)` returns `.logits` `(B, T, V)`).
        tokenizer: used to tokenize text records, for the pad id and to decode tokens.
        records: dicts `{"prompt", "completion"}` (text; prompt already chat-templated) or
            `{"prompt_ids", "completion_ids"}`.
        chunk_size: positions per chunk in the divergence computation (bounds temporaries).
        top_p: compare top-p truncated distributions (paper: 0.7); entropies, token log-probs,
            top-1s, ranks and overlaps always use the full distributions.
        temperature: both distributions are `softmax(logits / temperature)`.
        batch_size: sequences per forward (bounds the `(B, T, V)` logits).
        progress: tqdm bar over batches.
        keep_topk: also keep base and policy top-5 ids and probabilities per token (HTML hover).

    Returns:
        DataFrame with `COLUMNS` (+ `TOPK_COLUMNS` with `keep_topk`), ordered by
        `(seq_id, position)`. `position` is the index within the completion, `rel_position =
        position / completion_length` in [0, 1). Empty completions contribute no rows (counted in
        the log).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pairs = records_to_ids(tokenizer, records)
    n_empty = sum(1 for _, c in pairs if len(c) == 0)
    if n_empty:
        logger.warning("shift analysis: %d of %d records have an empty completion and contribute no rows",
                       n_empty, len(pairs))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        pad_id = 0  # padding sits after every real token and is masked: its id never matters
    order = sorted((i for i, (_, c) in enumerate(pairs) if len(c) > 0),
                   key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    batches = [order[s: s + batch_size] for s in range(0, len(order), batch_size)]

    per_seq: dict[int, dict[str, torch.Tensor]] = {}
    was_training = (base_model.training, policy_model.training)
    base_model.eval()
    policy_model.eval()
    try:
        iterator = batches
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(batches, desc="shift analysis", unit="batch")
        with torch.no_grad():
            for idx in iterator:
                batch = [pairs[i] for i in idx]
                ids, mask = _pad_right(batch, pad_id)  # (B, T), (B, T)
                base_logits = _forward_logits(base_model, ids, mask)  # (B, T, V)
                policy_logits = _forward_logits(policy_model, ids, mask)  # (B, T, V)
                if base_logits.shape[-1] != policy_logits.shape[-1]:
                    raise ValueError(
                        f"base and policy output {base_logits.shape[-1]} and {policy_logits.shape[-1]} logits per "
                        f"position: the models must share one vocabulary"
                    )
                dev = policy_logits.device
                base_logits = base_logits.to(dev)
                for b, i in enumerate(idx):
                    p_len, c_len = len(batch[b][0]), len(batch[b][1])
                    # logits at index j predict token j+1: completion token t (at p_len+t) <- row p_len+t-1
                    rows = slice(p_len - 1, p_len - 1 + c_len)
                    lb, lq = base_logits[b, rows], policy_logits[b, rows]  # (C, V) views, no copy
                    tokens = ids[b, p_len: p_len + c_len].to(dev)  # (C,)
                    stats = token_stats(lb, lq, temperature=temperature, top_p=top_p, chunk_size=chunk_size,
                                        tokens=tokens, topk=TOPK)
                    stats = {k: v.cpu() for k, v in stats.items()}
                    stats["token_id"] = tokens.cpu()
                    if keep_topk:
                        stats["base_top_ids"], stats["base_top_probs"] = _topk_probs(lb, temperature, TOPK, chunk_size)
                        stats["policy_top_ids"], stats["policy_top_probs"] = _topk_probs(
                            lq, temperature, TOPK, chunk_size)
                    per_seq[i] = stats
                del base_logits, policy_logits
    finally:
        base_model.train(was_training[0])
        policy_model.train(was_training[1])
    return _to_table(per_seq, tokenizer, keep_topk)


def _to_table(per_seq: dict[int, dict[str, torch.Tensor]], tokenizer, keep_topk: bool) -> pd.DataFrame:
    """Concatenate per-sequence stats (in seq_id order) into the token table."""
    seq_ids = sorted(per_seq)
    if not seq_ids:
        empty = {c: pd.Series(dtype="float32") for c in COLUMNS + (TOPK_COLUMNS if keep_topk else [])}
        return pd.DataFrame(empty)

    def cat(key: str) -> np.ndarray:
        return torch.cat([per_seq[i][key] for i in seq_ids]).numpy()

    lengths = [len(per_seq[i]["token_id"]) for i in seq_ids]
    position = np.concatenate([np.arange(n) for n in lengths])
    token_ids = cat("token_id").astype(np.int64)
    cols: dict[str, np.ndarray] = {
        "seq_id": np.repeat(np.asarray(seq_ids, dtype=np.int64), lengths),
        "position": position.astype(np.int64),
        "rel_position": np.concatenate([np.arange(n) / n for n in lengths]),  # float64: exact deciles
        "token_id": token_ids,
        "token": _token_strings(tokenizer, token_ids),
    }
    for key in ("js", "kl_forward", "kl_reverse", "tv", "entropy_base", "entropy_policy",
                "logp_base_token", "logp_policy_token", "base_prob_of_policy_top1"):
        cols[key] = cat(key).astype(np.float32)
    for key in ("top1_base", "top1_policy", "base_rank_of_policy_top1"):
        cols[key] = cat(key).astype(np.int64)
    cols["top1_changed"] = cat("top1_changed").astype(bool)
    overlap = cat("topk_overlap")  # (N, TOPK)
    for k in range(1, TOPK + 1):
        cols[f"overlap@{k}"] = overlap[:, k - 1].astype(np.float32)
    table = pd.DataFrame({c: cols[c] for c in COLUMNS})
    if keep_topk:
        for name, key in zip(TOPK_COLUMNS, ("base_top_ids", "base_top_probs", "policy_top_ids", "policy_top_probs")):
            arr = cat(key)  # (N, 5)
            table[name] = list(arr.astype(np.int64) if "ids" in key else arr.astype(np.float32))
    return table
