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


def _check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


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
    _check_temperature(temperature)
    scaled = logits.float() if temperature == 1.0 else logits.float() / temperature
    logp = torch.log_softmax(scaled, dim=-1)  # (..., V)
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


# Implementation note. Every measure is a sum over the vocabulary of terms built from log p, log q
# and p = exp(log p), q = exp(log q). Finite chunks (the usual case) go through `_in_place_measures`:
# p, q once, every requested measure and both entropies from them with as few passes over the
# `(c, V)` arrays as possible (on CPU the cost is memory traffic and allocation, not arithmetic);
# `pair_measures` runs it on copies of its inputs, `pair_measures_` (the trainer's hot loop) on the
# inputs themselves with reused scratch buffers. One `aminmax` decides finiteness; the exact-zero test
# for identical rows runs only on rows whose JS is already tiny. Accuracy is float32 with terms
# differenced before summing (log p − log m, not H(m) − ½H(p) − ½H(q), which loses small JS). Rows with
# -inf log-probs (masked logits, top-p truncation) need the `0·log 0 = 0` convention by explicit
# masking (`torch.where`): `_masked_measures`, also used for user-registered measures.
_LOG_FLOOR = -1e30  # finite stand-in for log 0 inside log m, so 0 · (log p − log m) stays 0
_IDENTICAL_CHECK_BELOW = 1e-5  # rows with JS below this are tested for exact equality (JS(p, p) = 0)


def _all_finite(x: torch.Tensor) -> bool:
    """One reduction pass (NaN propagates through min/max); `isfinite().all()` is two and much slower."""
    if x.numel() == 0:
        return True
    lo, hi = torch.aminmax(x)
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


def _p_times(p: torch.Tensor, diff: torch.Tensor, finite: bool) -> torch.Tensor:
    """Σ_v p_v · diff_v with 0 where p_v = 0. `(..., V) -> (...)`."""
    if finite:
        return torch.linalg.vecdot(p, diff)  # multiply-sum over the vocabulary
    return torch.where(p > 0, p * diff, torch.zeros_like(p)).sum(dim=-1)


def _neg_plogp(p: torch.Tensor, logp: torch.Tensor, finite: bool) -> torch.Tensor:
    return _p_times(p, logp, finite).neg_()


def _zero_identical_rows(js: torch.Tensor, pb: torch.Tensor, pp: torch.Tensor) -> torch.Tensor:
    """log(exp(x)) != x in float: force JS(p, p) = 0 exactly where the probability rows are identical.

    Rounding leaves at most ~1e-6 on identical rows (≈ 1.2e-7 · Σ p |log p|), so only rows below
    `_IDENTICAL_CHECK_BELOW` can be identical. A chunk whose rows are all identical (policy == base,
    the first step of every run) is recognised by one `torch.equal`; otherwise rows are compared in
    place (no boolean-index copies of `(c, V)` arrays).
    """
    tiny = js < _IDENTICAL_CHECK_BELOW
    if not bool(tiny.any()):
        return js
    if bool(tiny.all()) and torch.equal(pb, pp):
        return js.zero_()
    same = (pb == pp).all(dim=-1) & tiny
    return js.masked_fill_(same, 0.0)


# Masked versions of the built-in measures, for rows with -inf log-probs (0 · log 0 = 0 by `torch.where`).
# Finite rows take `_in_place_measures`, which computes the same sums without the masks.
def _js(lb, lp, pb, pp):
    logm = torch.lerp(pb, pp, 0.5).log_().clamp_min_(_LOG_FLOOR)  # (..., V) log ½(p + q)
    js = _p_times(pb, lb - logm, False) + _p_times(pp, lp - logm, False)  # differenced before summing
    return _zero_identical_rows(js.mul_(0.5).clamp_(0.0, LN2), pb, pp)


def _kl_forward(lb, lp, pb, pp):
    return _p_times(pb, lb - lp, False).clamp_min_(0.0)


def _kl_reverse(lb, lp, pb, pp):
    return _p_times(pp, lp - lb, False).clamp_min_(0.0)


def _tv(lb, lp, pb, pp):
    return torch.sub(pb, pp).abs_().sum(dim=-1).mul_(0.5).clamp_(0.0, 1.0)


_BUILTIN = {"js": _js, "kl_forward": _kl_forward, "kl_reverse": _kl_reverse, "tv": _tv}


def _is_builtin(name: str) -> bool:
    return name in _BUILTIN and getattr(get_divergence(name), "_builtin", False)


def _masked_measures(lb, lp, names, entropies) -> dict[str, torch.Tensor]:
    """-inf log-probs or user-registered measures: built-ins masked, registered functions called as they are."""
    pb, pp = lb.exp(), lp.exp()  # (..., V) each
    out: dict[str, torch.Tensor] = {}
    if entropies:
        out["entropy_base"] = _neg_plogp(pb, lb, False)
        out["entropy_policy"] = _neg_plogp(pp, lp, False)
    for name in names:
        out[name] = _BUILTIN[name](lb, lp, pb, pp) if _is_builtin(name) else get_divergence(name)(lb, lp)
    return out


def _in_place_measures(lb, lp, names, entropies, scratch) -> dict[str, torch.Tensor]:
    """Finite log-probs, built-in measures only. Overwrites `lb`, `lp`; p, q and one temporary in `scratch`."""
    if scratch is None:
        scratch = [torch.empty_like(lb) for _ in range(3)]
    pb, pp, tmp = (buf.view(-1)[: lb.numel()].view(lb.shape) for buf in scratch)  # (..., V) each
    torch.exp(lb, out=pb)
    torch.exp(lp, out=pp)
    out: dict[str, torch.Tensor] = {}
    if entropies:
        out["entropy_base"] = torch.mul(pb, lb, out=tmp).sum(dim=-1).neg_()  # −Σ p log p
        out["entropy_policy"] = torch.mul(pp, lp, out=tmp).sum(dim=-1).neg_()
    for name in names:  # measures that only read log p / log q first: JS overwrites them
        if name == "kl_forward":
            out[name] = torch.sub(lb, lp, out=tmp).mul_(pb).sum(dim=-1).clamp_min_(0.0)
        elif name == "kl_reverse":
            out[name] = torch.sub(lp, lb, out=tmp).mul_(pp).sum(dim=-1).clamp_min_(0.0)
        elif name == "tv":
            out[name] = torch.sub(pb, pp, out=tmp).abs_().sum(dim=-1).mul_(0.5).clamp_(0.0, 1.0)
    if "js" in names:
        logm = torch.lerp(pb, pp, 0.5, out=tmp).log_().clamp_min_(_LOG_FLOOR)  # (..., V) log ½(p + q)
        js = torch.sub(lb, logm, out=lb).mul_(pb).sum(dim=-1)  # Σ p (log p − log m), differenced before summing
        js += torch.sub(lp, logm, out=lp).mul_(pp).sum(dim=-1)  # Σ q (log q − log m)
        out["js"] = _zero_identical_rows(js.mul_(0.5).clamp_(0.0, LN2), pb, pp)
    return out


def _in_place_ok(lb: torch.Tensor, lp: torch.Tensor, names: tuple[str, ...]) -> bool:
    return all(_is_builtin(n) for n in names) and _all_finite(lb) and _all_finite(lp)


def pair_measures(
    logp_base: torch.Tensor, logp_policy: torch.Tensor, measures: tuple[str, ...] = ("js",), *,
    entropies: bool = False,
) -> dict[str, torch.Tensor]:
    """Several divergences (and optionally both entropies) of one chunk, sharing exp() and masks.

    Args:
        logp_base, logp_policy: `(..., V)` float32 log-probs (e.g. from `log_probs`); not modified.
        measures: names in `DIVERGENCE_REGISTRY`.
        entropies: also return `entropy_base`, `entropy_policy`.

    Returns: `{measure: (...)}` (+ entropies), float32.
    """
    names = tuple(measures)
    if _in_place_ok(logp_base, logp_policy, names):
        return _in_place_measures(logp_base.clone(), logp_policy.clone(), names, entropies, None)
    return _masked_measures(logp_base, logp_policy, names, entropies)


def pair_measures_(
    logp_base: torch.Tensor, logp_policy: torch.Tensor, measures: tuple[str, ...] = ("js",), *,
    entropies: bool = False, scratch: list[torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """`pair_measures` for hot loops: the same numbers, no copies and no allocation. OVERWRITES its inputs.

    `p`, `q` and one temporary live in `scratch` (three float32 tensors with at least as many elements
    as the inputs, reused across chunks, so no `(c, V)` array is allocated per chunk: on CPU fresh
    large allocations cost page faults comparable to the arithmetic). `logp_base` / `logp_policy` are
    overwritten by `log p − log m` / `log q − log m` for JS. Rows with -inf entries and measures that
    are not built in go through the masked path, inputs untouched.
    """
    names = tuple(measures)
    if _in_place_ok(logp_base, logp_policy, names):
        return _in_place_measures(logp_base, logp_policy, names, entropies, scratch)
    return _masked_measures(logp_base, logp_policy, names, entropies)


def entropy(logp: torch.Tensor) -> torch.Tensor:
    """H(p) = −Σ p log p from log-probs `(..., V) -> (...)`, 0·log 0 = 0."""
    return _neg_plogp(logp.exp(), logp, _all_finite(logp))


def log_probs_(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """In-place `log_probs` (no top-p) for a float32 logits tensor the caller owns; returns it."""
    _check_temperature(temperature)
    if logits.dtype != torch.float32:
        raise TypeError(f"log_probs_ needs float32 logits, got {logits.dtype}; use log_probs (it copies).")
    if temperature != 1.0:
        logits.div_(temperature)
    return torch.log_softmax(logits, dim=-1, out=logits)


def _registered_builtin(name: str, doc: str) -> DivergenceFn:
    def fn(logp_base: torch.Tensor, logp_policy: torch.Tensor) -> torch.Tensor:
        return pair_measures(logp_base, logp_policy, (name,))[name]

    fn.__name__, fn.__doc__, fn._builtin = f"{name}_divergence", doc, True
    return register_divergence(name)(fn)


js_divergence = _registered_builtin(
    "js", "JS(p, q) = ½ KL(p‖m) + ½ KL(q‖m), m = ½(p+q); clamped to [0, ln 2] against rounding.")
kl_forward = _registered_builtin(
    "kl_forward", "KL(p_base ‖ q_policy); +inf where the policy gives 0 mass to a base-supported token.")
kl_reverse = _registered_builtin("kl_reverse", "KL(q_policy ‖ p_base), the direction TRL's `beta` penalty estimates.")
total_variation = _registered_builtin("tv", "TV(p, q) = ½ Σ |p − q| in [0, 1].")


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
    get_divergence(measure)  # fail early on an unknown name
    lead, vocab = base_logits.shape[:-1], base_logits.shape[-1]
    flat_b = base_logits.detach().reshape(-1, vocab)  # (N, V) — a view, no copy
    flat_p = policy_logits.detach().reshape(-1, vocab)  # (N, V)
    out = torch.zeros(flat_b.shape[0], dtype=torch.float32, device=base_logits.device)  # (N,)
    full = top_p is None or top_p >= 1.0
    scratch = None
    with torch.no_grad():
        for rows in _row_chunks(flat_b.shape[0], chunk_size):
            if not full:
                lb = log_probs(flat_b[rows], temperature, top_p)  # (c, V) float32
                lp = log_probs(flat_p[rows], temperature, top_p)  # (c, V) float32
                out[rows] = pair_measures(lb, lp, (measure,))[measure]
                continue
            # own float32 copies (the inputs are never modified), then in place with reused scratch
            lb = log_probs_(flat_b[rows].to(torch.float32, copy=True), temperature)  # (c, V)
            lp = log_probs_(flat_p[rows].to(torch.float32, copy=True), temperature)  # (c, V)
            scratch = scratch or [torch.empty_like(lb) for _ in range(3)]
            out[rows] = pair_measures_(lb, lp, (measure,), scratch=scratch)[measure]
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
    for m in measures:
        get_divergence(m)  # fail early on an unknown name
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
            truncate = top_p is not None and top_p < 1.0
            full = pair_measures(lb_full, lp_full, () if truncate else measures, entropies=True)
            if truncate:  # divergences on top-p truncated distributions; entropies stay on the full ones
                full.update(pair_measures(log_probs(flat_b[rows], temperature, top_p),
                                          log_probs(flat_p[rows], temperature, top_p), measures))
            for key, val in full.items():
                out[key][rows] = val
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
            del lb_full, lp_full, full
    out["top1_changed"] = out["top1_base"] != out["top1_policy"]
    return {key: (v.reshape(*lead, k) if key == "topk_overlap" else v.reshape(lead)) for key, v in out.items()}
