"""Per-token divergences between two next-token distributions, as pure tensor functions.

The trainer (`train/`), the shift analysis and cross-sampling all import from here; this module
imports nothing from the project.

Notation: `p` is the **base** (reference) distribution, `q` the **policy** distribution, both over
the vocabulary at one position. All measures take log-probabilities `(..., V)` and return `(...)`.

    JS(p, q)  = ½ KL(p‖m) + ½ KL(q‖m),   m = ½(p + q)          in [0, ln 2]   ("js")
    KL(p‖q)   = Σ_v p_v (log p_v − log q_v)                      forward KL     ("kl_forward")
    KL(q‖p)   = Σ_v q_v (log q_v − log p_v)                      reverse KL     ("kl_reverse",
                                                                  what TRL's beta penalises)
    TV(p, q)  = ½ Σ_v |p_v − q_v|                                in [0, 1]      ("tv")
    H(p)      = −Σ_v p_v log p_v

Terms with p_v = 0 contribute 0 (the `0·log 0 = 0` convention), so `-inf` logits never produce
NaN. With top-p truncation (Meng et al. used top-p 0.7, renormalised) KL can be +inf; JS and TV
cannot. Everything is computed in float32 from logits of any dtype, in row chunks, so at most one
chunk of `(chunk, V)` float32 temporaries is alive at a time instead of full `(B, T, V)` copies.

Sampled-token estimators (Schulman's k1/k3) estimate KL(sampler‖other) from the log-probs of the
token the sampler emitted; they need no vocabulary-sized tensor at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

LN2 = math.log(2.0)

DivergenceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SampledEstimatorFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DIVERGENCE_REGISTRY: dict[str, DivergenceFn] = {}
SAMPLED_ESTIMATOR_REGISTRY: dict[str, SampledEstimatorFn] = {}


def register_divergence(name: str) -> Callable[[DivergenceFn], DivergenceFn]:
    """Register `fn(logp_base (..., V), logp_policy (..., V)) -> (...)` under `name`."""

    def deco(fn: DivergenceFn) -> DivergenceFn:
        if name in DIVERGENCE_REGISTRY:
            raise ValueError(f"divergence {name!r} is already registered ({DIVERGENCE_REGISTRY[name].__name__})")
        DIVERGENCE_REGISTRY[name] = fn
        return fn

    return deco


def get_divergence(name: str) -> DivergenceFn:
    try:
        return DIVERGENCE_REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown divergence measure {name!r}; valid measures: {', '.join(sorted(DIVERGENCE_REGISTRY))}"
        ) from None


def register_sampled_estimator(name: str) -> Callable[[SampledEstimatorFn], SampledEstimatorFn]:
    """Register `fn(logp_sampler (...), logp_other (...)) -> (...)` estimating KL(sampler‖other)."""

    def deco(fn: SampledEstimatorFn) -> SampledEstimatorFn:
        if name in SAMPLED_ESTIMATOR_REGISTRY:
            raise ValueError(f"sampled estimator {name!r} is already registered")
        SAMPLED_ESTIMATOR_REGISTRY[name] = fn
        return fn

    return deco


def get_sampled_estimator(name: str) -> SampledEstimatorFn:
    try:
        return SAMPLED_ESTIMATOR_REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown sampled-token estimator {name!r}; valid estimators: "
            f"{', '.join(sorted(SAMPLED_ESTIMATOR_REGISTRY))}"
        ) from None


# --------------------------------------------------------------------------------------------------
# Distributions
# --------------------------------------------------------------------------------------------------


def log_probs(logits: torch.Tensor, temperature: float = 1.0, top_p: float | None = None) -> torch.Tensor:
    """float32 log-probabilities of `softmax(logits / temperature)`, optionally top-p truncated.

    Args:
        logits: `(..., V)` any float dtype; `-inf` entries allowed (probability 0).
        temperature: > 0.
        top_p: keep the smallest set of most likely tokens whose mass reaches `top_p` (the token
            that crosses the threshold is kept, as in HF's TopPLogitsWarper), renormalise, and give
            every other token log-probability `-inf`. `None` or `>= 1` keeps the full distribution.

    Returns:
        `(..., V)` float32.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # (..., V)
    if top_p is None or top_p >= 1.0:
        return logp
    if not 0.0 < top_p:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    sorted_logp, order = torch.sort(logp, dim=-1, descending=True)  # (..., V)
    cum = sorted_logp.exp().cumsum(dim=-1)  # (..., V)
    # keep token j if the mass strictly before it is < top_p  (so the crossing token is kept)
    keep_sorted = (cum - sorted_logp.exp()) < top_p  # (..., V)
    keep_sorted[..., 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)  # (..., V)
    truncated = logp.masked_fill(~keep, float("-inf"))
    return truncated - torch.logsumexp(truncated, dim=-1, keepdim=True)


def entropy(logp: torch.Tensor, p: torch.Tensor | None = None) -> torch.Tensor:
    """H(p) = −Σ p log p from log-probs `(..., V) -> (...)` (pass `p = exp(logp)` if at hand), 0·log 0 = 0."""
    p = logp.exp() if p is None else p
    return -(torch.where(p > 0, p * logp, torch.zeros_like(p))).sum(dim=-1)


def _plogratio(p: torch.Tensor, logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Σ_v p_v (log p_v − log q_v) given p = exp(logp) already; 0 where p_v = 0. `(..., V) -> (...)`."""
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(dim=-1)


def _js_p(lb: torch.Tensor, lp: torch.Tensor, pb: torch.Tensor, pp: torch.Tensor) -> torch.Tensor:
    # log m = log ½(p + q); where p_v = q_v exactly, log m = log p_v exactly (so JS(p, p) is exactly 0,
    # which log(exp(x)) would not give). -inf only where p = q = 0 (those terms are skipped).
    logm = torch.where(lb == lp, lb, torch.log(0.5 * (pb + pp)))  # (..., V)
    return (0.5 * _plogratio(pb, lb, logm) + 0.5 * _plogratio(pp, lp, logm)).clamp(0.0, LN2)


def _kl_forward_p(lb, lp, pb, pp):
    return _plogratio(pb, lb, lp).clamp_min(0.0)


def _kl_reverse_p(lb, lp, pb, pp):
    return _plogratio(pp, lp, lb).clamp_min(0.0)


def _tv_p(lb, lp, pb, pp):
    return (0.5 * (pb - pp).abs().sum(dim=-1)).clamp(0.0, 1.0)


# Built-in measures evaluated from log-probs AND probs, so a chunk pays exp() once per model
# (token_stats); the registered functions below are the same math from log-probs alone.
_WITH_PROBS = {"js": _js_p, "kl_forward": _kl_forward_p, "kl_reverse": _kl_reverse_p, "tv": _tv_p}


@register_divergence("js")
def js_divergence(logp_base: torch.Tensor, logp_policy: torch.Tensor) -> torch.Tensor:
    """JS(p, q) = ½ KL(p‖m) + ½ KL(q‖m), m = ½(p+q); clamped to [0, ln 2] against rounding."""
    return _js_p(logp_base, logp_policy, logp_base.exp(), logp_policy.exp())


@register_divergence("kl_forward")
def kl_forward(logp_base: torch.Tensor, logp_policy: torch.Tensor) -> torch.Tensor:
    """KL(p_base ‖ q_policy); +inf where the policy gives 0 mass to a base-supported token."""
    return _kl_forward_p(logp_base, logp_policy, logp_base.exp(), None)


@register_divergence("kl_reverse")
def kl_reverse(logp_base: torch.Tensor, logp_policy: torch.Tensor) -> torch.Tensor:
    """KL(q_policy ‖ p_base), the direction TRL's `beta` penalty estimates."""
    return _kl_reverse_p(logp_base, logp_policy, None, logp_policy.exp())


@register_divergence("tv")
def total_variation(logp_base: torch.Tensor, logp_policy: torch.Tensor) -> torch.Tensor:
    """TV(p, q) = ½ Σ |p − q| in [0, 1]."""
    return _tv_p(logp_base, logp_policy, logp_base.exp(), logp_policy.exp())


def _measure(name: str, fn: DivergenceFn, lb, lp, pb, pp) -> torch.Tensor:
    """A registered measure, reusing the chunk's probs when it is a built-in one."""
    fast = _WITH_PROBS.get(name)
    return fast(lb, lp, pb, pp) if fast is not None and DIVERGENCE_REGISTRY[name] is fn else fn(lb, lp)


# --------------------------------------------------------------------------------------------------
# Sampled-token estimators of KL(sampler ‖ other), from the emitted token's log-probs only
#   log r = log π_other(y) − log π_sampler(y),   y ~ π_sampler
#   k1 = −log r      (unbiased, can be negative)
#   k3 = r − 1 − log r   (unbiased, always ≥ 0; Schulman 2020; TRL's per-token KL uses it)
# --------------------------------------------------------------------------------------------------


@register_sampled_estimator("k1")
def k1(logp_sampler: torch.Tensor, logp_other: torch.Tensor) -> torch.Tensor:
    return (logp_sampler - logp_other).float()


@register_sampled_estimator("abs_k1")
def abs_k1(logp_sampler: torch.Tensor, logp_other: torch.Tensor) -> torch.Tensor:
    return (logp_sampler - logp_other).float().abs()


@register_sampled_estimator("k3")
def k3(logp_sampler: torch.Tensor, logp_other: torch.Tensor) -> torch.Tensor:
    log_r = (logp_other - logp_sampler).float().clamp(-20.0, 20.0)  # clamp: exp() stays finite
    return (torch.exp(log_r) - 1.0 - log_r).clamp_min(0.0)


# --------------------------------------------------------------------------------------------------
# Chunked drivers over (B, T, V) logits
# --------------------------------------------------------------------------------------------------


def _row_chunks(n: int, chunk_size: int | None) -> Iterator[slice]:
    step = n if not chunk_size or chunk_size <= 0 else chunk_size
    for start in range(0, n, max(step, 1)):
        yield slice(start, min(start + step, n))


def _check_pair(base_logits: torch.Tensor, policy_logits: torch.Tensor) -> None:
    if base_logits.shape != policy_logits.shape:
        raise ValueError(
            f"base and policy logits must have the same shape, got {tuple(base_logits.shape)} and "
            f"{tuple(policy_logits.shape)} (do the two models share a vocabulary?)"
        )


def token_divergence(
    base_logits: torch.Tensor,
    policy_logits: torch.Tensor,
    measure: str = "js",
    *,
    temperature: float = 1.0,
    top_p: float | None = None,
    chunk_size: int | None = 512,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-position divergence between two sets of logits, computed in row chunks.

    Args:
        base_logits, policy_logits: `(..., V)`, e.g. `(B, T, V)`, any float dtype.
        measure: a name in `DIVERGENCE_REGISTRY` ("js", "kl_forward", "kl_reverse", "tv").
        temperature: both distributions are `softmax(logits / temperature)`.
        top_p: optional truncation of each distribution before comparing (paper: 0.7).
        chunk_size: rows (positions) per chunk; `None` or <= 0 means all at once.
        mask: optional `(...)` bool/0-1 tensor; masked-out positions get 0.

    Returns:
        `(...)` float32, detached.
    """
    _check_pair(base_logits, policy_logits)
    fn = get_divergence(measure)
    lead, vocab = base_logits.shape[:-1], base_logits.shape[-1]
    flat_b = base_logits.detach().reshape(-1, vocab)  # (N, V) — a view, no copy
    flat_p = policy_logits.detach().reshape(-1, vocab)  # (N, V)
    out = torch.zeros(flat_b.shape[0], dtype=torch.float32, device=base_logits.device)  # (N,)
    with torch.no_grad():
        for rows in _row_chunks(flat_b.shape[0], chunk_size):
            lb = log_probs(flat_b[rows], temperature, top_p)  # (c, V) float32
            lp = log_probs(flat_p[rows], temperature, top_p)  # (c, V) float32
            out[rows] = _measure(measure, fn, lb, lp, lb.exp(), lp.exp())
            del lb, lp
    out = out.reshape(lead)
    if mask is not None:
        out = out * mask.to(out.dtype)
    return out


def token_stats(
    base_logits: torch.Tensor,
    policy_logits: torch.Tensor,
    *,
    measures: tuple[str, ...] = ("js", "kl_forward", "kl_reverse", "tv"),
    temperature: float = 1.0,
    top_p: float | None = None,
    chunk_size: int | None = 512,
    tokens: torch.Tensor | None = None,
    topk: int = 5,
) -> dict[str, torch.Tensor]:
    """Everything the shift analysis needs per position, in one chunked pass.

    Args:
        base_logits, policy_logits: `(..., V)`.
        measures: divergence names to compute (on top-p truncated distributions if `top_p`).
        tokens: optional `(...)` emitted token ids; adds `logp_base_token`, `logp_policy_token`
            (full, untruncated distributions at `temperature`).
        topk: compute top-k overlap for k = 1..topk.

    Returns: dict of `(...)` float32 tensors (ints for ids/ranks) with keys
        each measure; `entropy_base`, `entropy_policy` (full distributions);
        `top1_base`, `top1_policy` (ids); `top1_changed` (bool);
        `base_rank_of_policy_top1` (0 = base's own top-1);
        `base_prob_of_policy_top1`; `topk_overlap` `(..., topk)` = |top-k(p) ∩ top-k(q)| / k;
        and, with `tokens`, `logp_base_token`, `logp_policy_token`.
    """
    _check_pair(base_logits, policy_logits)
    fns = {m: get_divergence(m) for m in measures}
    lead, vocab = base_logits.shape[:-1], base_logits.shape[-1]
    k = min(topk, vocab)
    flat_b = base_logits.detach().reshape(-1, vocab)
    flat_p = policy_logits.detach().reshape(-1, vocab)
    n = flat_b.shape[0]
    dev = base_logits.device
    out: dict[str, torch.Tensor] = {m: torch.zeros(n, device=dev) for m in measures}
    for key in ("entropy_base", "entropy_policy", "base_prob_of_policy_top1"):
        out[key] = torch.zeros(n, device=dev)
    for key in ("top1_base", "top1_policy", "base_rank_of_policy_top1"):
        out[key] = torch.zeros(n, dtype=torch.long, device=dev)
    out["topk_overlap"] = torch.zeros(n, k, device=dev)
    flat_tok = None
    if tokens is not None:
        flat_tok = tokens.reshape(-1).to(dev)
        out["logp_base_token"] = torch.zeros(n, device=dev)
        out["logp_policy_token"] = torch.zeros(n, device=dev)
    with torch.no_grad():
        for rows in _row_chunks(n, chunk_size):
            lb_full = log_probs(flat_b[rows], temperature)  # (c, V)
            lp_full = log_probs(flat_p[rows], temperature)  # (c, V)
            pb_full, pp_full = lb_full.exp(), lp_full.exp()  # (c, V) each, computed once per chunk
            out["entropy_base"][rows] = entropy(lb_full, pb_full)
            out["entropy_policy"][rows] = entropy(lp_full, pp_full)
            if flat_tok is not None:
                tok = flat_tok[rows].unsqueeze(-1)  # (c, 1)
                out["logp_base_token"][rows] = lb_full.gather(-1, tok).squeeze(-1)
                out["logp_policy_token"][rows] = lp_full.gather(-1, tok).squeeze(-1)
            top_b = lb_full.topk(k, dim=-1).indices  # (c, k)
            top_p_ = lp_full.topk(k, dim=-1).indices  # (c, k)
            out["top1_base"][rows] = top_b[:, 0]
            out["top1_policy"][rows] = top_p_[:, 0]
            pol_top1 = top_p_[:, :1]  # (c, 1)
            base_at_pol_top1 = lb_full.gather(-1, pol_top1)  # (c, 1)
            out["base_prob_of_policy_top1"][rows] = base_at_pol_top1.squeeze(-1).exp()
            out["base_rank_of_policy_top1"][rows] = (lb_full > base_at_pol_top1).sum(-1)
            # overlap@j = |top-j(base) ∩ top-j(policy)| / j ; membership matrix (c, k, k)
            same = top_b.unsqueeze(-1) == top_p_.unsqueeze(-2)  # (c, k_b, k_p)
            for j in range(1, k + 1):
                out["topk_overlap"][rows, j - 1] = same[:, :j, :j].sum(dim=(-1, -2)).float() / j
            if top_p is not None and top_p < 1.0:
                lb = log_probs(flat_b[rows], temperature, top_p)
                lp = log_probs(flat_p[rows], temperature, top_p)
                pb, pp = lb.exp(), lp.exp()
            else:
                lb, lp, pb, pp = lb_full, lp_full, pb_full, pp_full
            for m, fn in fns.items():
                out[m][rows] = _measure(m, fn, lb, lp, pb, pp)
            del lb_full, lp_full, pb_full, pp_full, lb, lp, pb, pp
    out["top1_changed"] = out["top1_base"] != out["top1_policy"]
    return {key: (v.reshape(*lead, k) if key == "topk_overlap" else v.reshape(lead)) for key, v in out.items()}
