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
from collections.abc import Callable

import torch

LN2 = math.log(2.0)

DivergenceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SampledEstimatorFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DIVERGENCE_REGISTRY: dict[str, DivergenceFn] = {}
SAMPLED_ESTIMATOR_REGISTRY: dict[str, SampledEstimatorFn] = {}


class PairMeasure:
    """A measure written once against `PairTerms` (one chunk's log p, log q, p, q and a scratch buffer).

    Registered like any measure (`DIVERGENCE_REGISTRY[name]`), callable as `fn(logp_base, logp_policy)`;
    `pair_measures` / `pair_measures_` call `pair_fn(terms)` so that several measures and both entropies
    share one exp() and, on finite chunks, run in place in reused buffers. `overwrites`: the measure may
    use `terms.lb` / `terms.lp` as output buffers (run after every other measure of the chunk).
    """

    def __init__(self, name: str, pair_fn: Callable[[PairTerms], torch.Tensor], overwrites: bool = False):
        self.name, self.pair_fn, self.overwrites = name, pair_fn, overwrites
        self.__name__, self.__doc__ = f"{name}_divergence", pair_fn.__doc__

    def __call__(self, logp_base: torch.Tensor, logp_policy: torch.Tensor) -> torch.Tensor:
        return pair_measures(logp_base, logp_policy, (self.name,))[self.name]


def register_divergence(name: str, *, pair: bool = False, overwrites: bool = False):
    """Register a measure under `name` (a second registration under one name is an error).

    Default: `fn(logp_base (..., V), logp_policy (..., V)) -> (...)`, called on unmodified log-probs.
    `pair=True`: `fn(terms: PairTerms) -> (...)` (the built-ins): shares p, q and scratch with the other
    measures of the chunk and runs in place on finite chunks; `overwrites` as in `PairMeasure`.
    """

    def deco(fn):
        if name in DIVERGENCE_REGISTRY:
            raise ValueError(f"divergence {name!r} is already registered ({DIVERGENCE_REGISTRY[name].__name__})")
        DIVERGENCE_REGISTRY[name] = PairMeasure(name, fn, overwrites) if pair else fn
        return DIVERGENCE_REGISTRY[name] if pair else fn

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
# and p = exp(log p), q = exp(log q). Each built-in is written once, against `PairTerms`, and
# registered like a user measure. `PairTerms` computes p, q once per chunk into scratch buffers; its
# sums run in place (into a reused temporary, or into the inputs for a measure that `overwrites`)
# when the chunk is finite, the usual case (on CPU the cost is memory traffic and allocation, not
# arithmetic), and with the `0·log 0 = 0` convention by explicit masking (`torch.where`) when a row
# has -inf log-probs (masked logits, top-p truncation). One `aminmax` decides finiteness; the
# exact-zero test for identical rows runs only on rows whose JS is already tiny. Accuracy is float32
# with terms differenced before summing (log p − log m, not H(m) − ½H(p) − ½H(q), which loses small JS).
_LOG_FLOOR = -1e30  # finite stand-in for log 0 inside log m, so 0 · (log p − log m) stays 0
_IDENTICAL_CHECK_BELOW = 1e-5  # rows with JS below this are tested for exact equality (JS(p, p) = 0)


def _all_finite(x: torch.Tensor) -> bool:
    """One reduction pass (NaN propagates through min/max); `isfinite().all()` is two and much slower."""
    if x.numel() == 0:
        return True
    lo, hi = torch.aminmax(x)
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


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


class PairTerms:
    """One chunk of base/policy log-probs `lb`, `lp` `(..., V)`, their probabilities `pb`, `pq`, and the sums
    the measures are built from. Finite chunks: in place, in `tmp` (or a given buffer); otherwise masked."""

    def __init__(self, lb, lp, scratch=None, *, may_overwrite: bool = False):
        if scratch is None:
            scratch = [torch.empty_like(lb) for _ in range(3)]
        self.pb, self.pp, self.tmp = (buf.view(-1)[: lb.numel()].view(lb.shape) for buf in scratch)  # (..., V)
        torch.exp(lb, out=self.pb)
        torch.exp(lp, out=self.pp)
        self.lb, self.lp = lb, lp
        self.finite = _all_finite(lb) and _all_finite(lp)
        self.may_overwrite = may_overwrite and self.finite  # the masked path never writes into its inputs

    def p_sum(self, p: torch.Tensor, a: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Σ_v p_v · a_v, with 0 where p_v = 0. `(..., V) -> (...)`."""
        if self.finite:
            return torch.mul(p, a, out=self.tmp if out is None else out).sum(dim=-1)
        return torch.where(p > 0, p * a, torch.zeros_like(p)).sum(dim=-1)

    def p_diff(self, p: torch.Tensor, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None):
        """Σ_v p_v · (a_v − b_v), with 0 where p_v = 0, differenced before summing. `(..., V) -> (...)`."""
        if self.finite:
            return torch.sub(a, b, out=self.tmp if out is None else out).mul_(p).sum(dim=-1)
        return torch.where(p > 0, p * (a - b), torch.zeros_like(p)).sum(dim=-1)

    def input_buffers(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """`(lb, lp)` as output buffers for an overwriting measure, or `(None, None)` (allocate)."""
        return (self.lb, self.lp) if self.may_overwrite else (None, None)


@register_divergence("kl_forward", pair=True)
def kl_forward(t: PairTerms) -> torch.Tensor:
    """KL(p_base ‖ q_policy); +inf where the policy gives 0 mass to a base-supported token."""
    return t.p_diff(t.pb, t.lb, t.lp).clamp_min_(0.0)


@register_divergence("kl_reverse", pair=True)
def kl_reverse(t: PairTerms) -> torch.Tensor:
    """KL(q_policy ‖ p_base), the direction TRL's `beta` penalty estimates."""
    return t.p_diff(t.pp, t.lp, t.lb).clamp_min_(0.0)


@register_divergence("tv", pair=True)
def total_variation(t: PairTerms) -> torch.Tensor:
    """TV(p, q) = ½ Σ |p − q| in [0, 1]."""
    return torch.sub(t.pb, t.pp, out=t.tmp).abs_().sum(dim=-1).mul_(0.5).clamp_(0.0, 1.0)


@register_divergence("js", pair=True, overwrites=True)
def js_divergence(t: PairTerms) -> torch.Tensor:
    """JS(p, q) = ½ KL(p‖m) + ½ KL(q‖m), m = ½(p+q); clamped to [0, ln 2] against rounding."""
    logm = torch.lerp(t.pb, t.pp, 0.5, out=t.tmp).log_().clamp_min_(_LOG_FLOOR)  # (..., V) log ½(p + q)
    out_b, out_p = t.input_buffers()
    if out_b is None and t.finite:  # tmp holds log m: the differences need their own buffers
        out_b, out_p = torch.empty_like(t.lb), torch.empty_like(t.lp)
    js = t.p_diff(t.pb, t.lb, logm, out=out_b) + t.p_diff(t.pp, t.lp, logm, out=out_p)  # Σ p(log p − log m) + ...
    return _zero_identical_rows(js.mul_(0.5).clamp_(0.0, LN2), t.pb, t.pp)


def _measures(lb, lp, names, entropies, scratch, may_overwrite) -> dict[str, torch.Tensor]:
    """The one implementation behind `pair_measures` / `pair_measures_`: every measure through the registry."""
    t = PairTerms(lb, lp, scratch, may_overwrite=may_overwrite)
    out: dict[str, torch.Tensor] = {}
    if entropies:
        out["entropy_base"] = t.p_sum(t.pb, lb).neg_()  # −Σ p log p
        out["entropy_policy"] = t.p_sum(t.pp, lp).neg_()
    fns = {name: get_divergence(name) for name in names}
    # measures that read the inputs as they are first; one that writes into them (JS) last
    for name in sorted(names, key=lambda n: getattr(fns[n], "overwrites", False)):
        fn = fns[name]
        out[name] = fn.pair_fn(t) if isinstance(fn, PairMeasure) else fn(lb, lp).float()
    return out


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
    return _measures(logp_base, logp_policy, tuple(measures), entropies, None, may_overwrite=False)


def pair_measures_(
    logp_base: torch.Tensor, logp_policy: torch.Tensor, measures: tuple[str, ...] = ("js",), *,
    entropies: bool = False, scratch: list[torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """`pair_measures` for hot loops: the same numbers, no copies and no allocation. OVERWRITES its inputs.

    `p`, `q` and one temporary live in `scratch` (three float32 tensors with at least as many elements
    as the inputs, reused across chunks, so no `(c, V)` array is allocated per chunk: on CPU fresh
    large allocations cost page faults comparable to the arithmetic). `logp_base` / `logp_policy` are
    overwritten by `log p − log m` / `log q − log m` for JS. Rows with -inf entries go through the
    masked sums, inputs untouched.
    """
    return _measures(logp_base, logp_policy, tuple(measures), entropies, scratch, may_overwrite=True)


def entropy(logp: torch.Tensor) -> torch.Tensor:
    """H(p) = −Σ p log p from log-probs `(..., V) -> (...)`, 0·log 0 = 0."""
    p = logp.exp()
    if _all_finite(logp):
        return torch.linalg.vecdot(p, logp).neg_()
    return torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(dim=-1).neg_()


def log_probs_(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """In-place `log_probs` (no top-p) for a float32 logits tensor the caller owns; returns it."""
    _check_temperature(temperature)
    if logits.dtype != torch.float32:
        raise TypeError(f"log_probs_ needs float32 logits, got {logits.dtype}; use log_probs (it copies).")
    if temperature != 1.0:
        logits.div_(temperature)
    return torch.log_softmax(logits, dim=-1, out=logits)


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


RowSource = Callable[..., torch.Tensor]  # rows(slice, out=None) -> (c, V) logits (written into `out` if given)


def tensor_rows(logits: torch.Tensor) -> RowSource:
    """A `RowSource` over a `(N, V)` logits tensor of any dtype (rows are views; `out` gets a float32 copy)."""
    return lambda sl, out=None: logits[sl] if out is None else out.copy_(logits[sl])


def pair_rows(
    base_rows: RowSource | torch.Tensor,
    policy_rows: RowSource | torch.Tensor,
    n_rows: int,
    *,
    measures: tuple[str, ...] = ("js",),
    temperature: float = 1.0,
    top_p: float | None = None,
    chunk_size: int | None = 512,
    entropies: bool = True,
    tokens: torch.Tensor | None = None,
    sampled: str | None = None,
    per_chunk: Callable[[slice, torch.Tensor, torch.Tensor], None] | None = None,
    out: dict[str, torch.Tensor] | None = None,
    offset: int = 0,
) -> dict[str, torch.Tensor]:
    """The one chunked base-vs-policy driver (the trainer, `token_divergence`, `token_stats`, the callbacks).

    For rows [0, n_rows) of two logits sources, `chunk_size` rows at a time: both distributions
    softmax(logits / temperature), then the registered `measures` (on top-p truncated distributions if
    `top_p` < 1), both full-distribution entropies, the emitted tokens' log-probs and a sampled-token
    estimator. Full distributions (no top-p) run in five float32 `(chunk, V)` buffers allocated once: both
    models' logits are written into two of them and turned into log-probs in place, and `pair_measures_`
    keeps p, q and its temporary in the other three, so nothing vocabulary-sized is allocated per chunk.

    Args:
        base_rows, policy_rows: `(N, V)` tensors or `RowSource`s (e.g. the trainer's hidden-state LM-head
            projection); row r of both predicts the same token.
        measures: names in `DIVERGENCE_REGISTRY`.
        entropies: add `entropy_base`, `entropy_policy` (full distributions, nats).
        tokens: `(offset + n_rows,)` emitted token ids: adds `logp_base_token`, `logp_policy_token` (full).
        sampled: a `SAMPLED_ESTIMATOR_REGISTRY` name: adds `{sampled}` = estimate of KL(policy ‖ base) from
            the policy-sampled `tokens` (needs `tokens`).
        per_chunk: `fn(rows, logp_base, logp_policy)` called with each chunk's full `(c, V)` log-probs (read
            only, before the measures run), for statistics of its own.
        out: `{key: (total,) tensor}` to fill rows [offset, offset + n_rows) of (keys it lacks are allocated
            with offset + n_rows rows). Default: new tensors.

    Returns:
        `out`: `{key: (rows,) float32}` for each measure, the entropies, token log-probs and `sampled`.
    """
    for m in measures:
        get_divergence(m)  # fail early on an unknown name
    est = get_sampled_estimator(sampled) if sampled is not None else None
    if est is not None and tokens is None:
        raise ValueError(f"the sampled estimator {sampled!r} needs the emitted tokens; pass tokens=")
    rows_b = tensor_rows(base_rows) if isinstance(base_rows, torch.Tensor) else base_rows
    rows_p = tensor_rows(policy_rows) if isinstance(policy_rows, torch.Tensor) else policy_rows
    truncate = top_p is not None and top_p < 1.0
    step = n_rows if not chunk_size or chunk_size <= 0 else min(chunk_size, n_rows)
    out = {} if out is None else out
    bufs: list[torch.Tensor] = []

    def put(key: str, value: torch.Tensor, glob: slice) -> None:
        if key not in out:
            out[key] = torch.zeros(offset + n_rows, dtype=value.dtype, device=value.device)
        out[key][glob] = value

    with torch.no_grad():
        for r0 in range(0, n_rows, max(step, 1)):
            sl = slice(r0, min(r0 + step, n_rows))
            glob = slice(offset + sl.start, offset + sl.stop)
            c = sl.stop - sl.start
            if truncate:
                lb = log_probs(rows_b(sl), temperature)  # (c, V) float32
                lp = log_probs(rows_p(sl), temperature)  # (c, V) float32
            else:
                if not bufs:  # the vocabulary size is known from the first chunk's logits
                    first = rows_b(sl)  # (c, V) model dtype
                    bufs = [torch.empty(step, first.size(-1), dtype=torch.float32, device=first.device)
                            for _ in range(5)]
                    lb = bufs[0][:c].copy_(first)
                    del first
                else:
                    lb = rows_b(sl, out=bufs[0][:c])
                lb = log_probs_(lb, temperature)  # (c, V) float32, in place
                lp = log_probs_(rows_p(sl, out=bufs[1][:c]), temperature)  # (c, V) float32, in place
            if tokens is not None:
                tok = tokens[glob].to(lb.device).unsqueeze(-1)  # (c, 1)
                tb, tp = lb.gather(-1, tok).squeeze(-1), lp.gather(-1, tok).squeeze(-1)  # (c,) each
                put("logp_base_token", tb, glob)
                put("logp_policy_token", tp, glob)
                if est is not None:  # the policy sampled the token: estimate KL(policy ‖ base)
                    put(sampled, est(tp, tb), glob)
            if per_chunk is not None:
                per_chunk(glob, lb, lp)
            if truncate:  # entropies on the full distributions, measures on the truncated ones
                res = pair_measures(lb, lp, (), entropies=entropies)
                if measures:
                    res.update(pair_measures(log_probs(lb, 1.0, top_p), log_probs(lp, 1.0, top_p), measures))
            else:  # one pass: measures and both entropies share exp(), in the reused buffers
                res = pair_measures_(lb, lp, measures, entropies=entropies, scratch=bufs[2:])
            for key, value in res.items():
                put(key, value, glob)
            del lb, lp
    return out


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
    lead, vocab = base_logits.shape[:-1], base_logits.shape[-1]
    flat_b = base_logits.detach().reshape(-1, vocab)  # (N, V) — a view, no copy; never modified
    flat_p = policy_logits.detach().reshape(-1, vocab)  # (N, V)
    n = flat_b.shape[0]
    if n == 0:
        get_divergence(measure)
        return torch.zeros(lead, dtype=torch.float32, device=base_logits.device)
    stats = pair_rows(flat_b, flat_p, n, measures=(measure,), temperature=temperature, top_p=top_p,
                      chunk_size=chunk_size, entropies=False)
    out = stats[measure].reshape(lead)
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

    def reallocation(rows: slice, lb_full: torch.Tensor, lp_full: torch.Tensor) -> None:
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

    if n:
        pair_rows(flat_b, flat_p, n, measures=tuple(measures), temperature=temperature, top_p=top_p,
                  chunk_size=chunk_size, entropies=True, tokens=flat_tok, per_chunk=reallocation, out=out)
    else:
        for m in measures:
            get_divergence(m)
    out["top1_changed"] = out["top1_base"] != out["top1_policy"]
    return {key: (v.reshape(*lead, k) if key == "topk_overlap" else v.reshape(lead)) for key, v in out.items()}
