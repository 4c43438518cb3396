"""Per-token advantage weights from a per-token divergence: a registry of pure tensor functions.

The divergence-weighted trainer (`train/trainer.py`) turns GRPO's per-sequence advantage `Â_i` into
a per-token one, `Ã_{i,t} = w_{i,t} · Â_i`, with `w` computed here from a detached `(B, T)`
divergence `D` (Meng et al., arXiv 2603.22446, §3). Every function has the same typed signature

    fn(div: (B, T) float, mask: (B, T) 0/1, params: WeightingParams) -> weights (B, T) float32

and is registered verl-style (`@register_weighting(name)`, duplicates rejected, `get_weighting`
lists the valid names). Weights are returned detached; positions where `mask == 0` (padding,
tool output, truncated rows) get weight 1, a neutral value the loss masks out anyway.

Registered functions (D ≥ 0 for every measure except the signed `k1` estimator):

    none             w = 1                                   (exactly TRL's GRPO)
    sigmoid          w = 1 + s·(σ(α·D / scale) − ½)          (the paper's; α>0 high-, α<0 low-divergence boost)
    linear           w = clip(1 + α·D / scale, w_min, w_max)
    normalized       w = D / mean_valid(D)
    top_quantile     w = 1 on the ⌈ρ·N⌉ highest-D valid tokens, 0 elsewhere   (divergence 80/20 rule)
    random_quantile  w = 1 on ⌈ρ·N⌉ valid tokens drawn uniformly (seeded), 0 elsewhere  (control)

`compute_weights` wraps a registered function with the two things every caller needs: optional
renormalisation to mean 1 over valid tokens (per sequence or over the batch, so the effective step
size is unchanged) and the NaN/inf fallback (such weights become 1 and are counted).

`scale` (sigmoid, linear) is either absolute or, with `weighting_scale="auto"` (the default), the
running reference `D_ref` of `ScaleReference`: an EMA over steps of the q-quantile (default p99) of
|D| over every process's valid tokens. Weights then depend on `D / D_ref`, so one α means the same
on every model and measure (JS on a tiny model has p99 ≈ 0.07, a 7B model's k3 is far smaller).

Quantiles and batch means are over the tensor passed in, i.e. the local (per-process) generation
batch; the trainer passes a cross-process `all_reduce_sum` for the batch renormalisation only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = [
    "WEIGHTING_REGISTRY",
    "RENORMALIZE_MODES",
    "SCALE_FLOOR",
    "WEIGHTING_STATE_NAME",
    "call_seed",
    "load_weighting_state",
    "save_weighting_state",
    "Weighting",
    "is_scaled",
    "is_token_local",
    "scaled_weightings",
    "weighting_help",
    "weighting_parameters",
    "WeightingParams",
    "register_weighting",
    "get_weighting",
    "renormalize",
    "compute_weights",
    "ScaleReference",
    "quantile",
]


@dataclass(frozen=True)
class WeightingParams:
    """All knobs of all weighting functions; each function reads the ones it documents.

    alpha: sigmoid/linear slope α (sign chooses high- vs low-divergence boost).
    s: sigmoid amplitude s; weights lie in 1 ± s/2.
    scale: sigmoid/linear divisor of D, > 0 (`inf` makes every weight 1); the trainer passes `D_ref`
        (`ScaleReference`) when `weighting_scale="auto"`, else the absolute value.
    w_min, w_max: linear clip range.
    rho: fraction of valid tokens kept by top_quantile / random_quantile, in (0, 1].
    seed: random_quantile's generator seed (the trainer varies it per step and per process).
    """

    alpha: float = 10.0
    s: float = 1.0
    scale: float = 1.0
    w_min: float = 0.0
    w_max: float = 5.0
    rho: float = 0.2
    seed: int = 0


WeightingFn = Callable[[torch.Tensor, torch.Tensor, WeightingParams], torch.Tensor]
RENORMALIZE_MODES = ("none", "sequence", "batch")
PARAMETER_FIELDS = {"alpha": "weighting_alpha", "s": "weighting_s", "scale": "weighting_scale",
                    "w_min": "weighting_min", "w_max": "weighting_max", "rho": "weighting_rho",
                    "seed": "weighting_seed"}  # WeightingParams field -> DivergenceGRPOConfig field


@dataclass(frozen=True)
class Weighting:
    """One registered weighting: the function and everything the config, `--help` and the trainer know of it.

    fn: `fn(div (B,T), mask (B,T), params) -> (B,T)`; help: one line for `--weighting`'s help text;
    token_local: each weight depends on its own token's D only (the trainer may weight loss-time micro-batches
    separately); scaled: reads `params.scale` (so `weighting_scale='auto'` applies); parameters: the
    `WeightingParams` fields it reads (the config validates those).
    """

    name: str
    fn: WeightingFn
    help: str = ""
    token_local: bool = False
    scaled: bool = False
    parameters: tuple[str, ...] = ()

    def __call__(self, div, mask, params):
        return self.fn(div, mask, params)


WEIGHTING_REGISTRY: dict[str, Weighting] = {}


def register_weighting(name: str, *, help: str = "", token_local: bool = False, scaled: bool = False,
                       parameters: tuple[str, ...] = ()) -> Callable[[WeightingFn], WeightingFn]:
    """Register `fn(div (B,T), mask (B,T), params) -> (B,T)` under `name`; a second `name` raises.

    This registration is the single source of a weighting's facts: `help` (shown in `--weighting`'s help and the
    docs), `scaled` (reads `params.scale`, so `weighting_scale='auto'` applies), `parameters` (the
    `WeightingParams` fields it reads; the config validates their ranges) and `token_local` (each weight
    depends on its own token's D only, so the weights of a batch equal the concatenated weights of its parts
    and the trainer may weight each loss-time micro-batch separately; leave it False for anything that ranks,
    averages or samples over tokens).
    """
    unknown = set(parameters) - set(PARAMETER_FIELDS)
    if unknown:
        raise ValueError(f"weighting {name!r}: unknown parameters {sorted(unknown)}; valid: {sorted(PARAMETER_FIELDS)}")

    def deco(fn: WeightingFn) -> WeightingFn:
        if name in WEIGHTING_REGISTRY:
            raise ValueError(
                f"weighting {name!r} is already registered ({WEIGHTING_REGISTRY[name].fn.__name__}); pick another name"
            )
        params = tuple(parameters) + (("scale",) if scaled and "scale" not in parameters else ())
        WEIGHTING_REGISTRY[name] = Weighting(name, fn, help, token_local, scaled, params)
        return fn

    return deco


def get_weighting(name: str) -> Weighting:
    try:
        return WEIGHTING_REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown weighting {name!r}; valid weightings: {', '.join(sorted(WEIGHTING_REGISTRY))}"
        ) from None


def _fact(name: str, attr: str, default):
    """A registered fact of weighting `name` (a bare function put in the registry gets the defaults)."""
    return getattr(get_weighting(name), attr, default)


def is_scaled(name: str) -> bool:
    """The weighting reads `params.scale` (so `weighting_scale='auto'` applies to it)."""
    return bool(_fact(name, "scaled", False))


def is_token_local(name: str) -> bool:
    return bool(_fact(name, "token_local", False))


def weighting_parameters(name: str) -> tuple[str, ...]:
    """The `WeightingParams` fields weighting `name` reads."""
    return tuple(_fact(name, "parameters", ()))


def scaled_weightings() -> tuple[str, ...]:
    return tuple(n for n in sorted(WEIGHTING_REGISTRY) if is_scaled(n))


def weighting_help() -> str:
    """`--weighting`'s help text, from the registry (one edit in this file adds a weighting everywhere)."""
    items = [f"'{n}' {_fact(n, 'help', '') or '(no description)'}" for n in WEIGHTING_REGISTRY]
    return "Advantage-weighting function, from train.weighting's registry: " + ", ".join(items) + "."


def _valid(mask: torch.Tensor) -> torch.Tensor:
    return mask.bool()


def _neutral_outside(w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Weight 1 where mask == 0, float32, detached."""
    return torch.where(_valid(mask), w.float(), torch.ones_like(w, dtype=torch.float32)).detach()


# --------------------------------------------------------------------------------------------------
# Weighting functions
# --------------------------------------------------------------------------------------------------


@register_weighting("none", token_local=True, help="(exactly TRL GRPO)")
def weight_none(div: torch.Tensor, mask: torch.Tensor, params: WeightingParams) -> torch.Tensor:
    """w = 1 everywhere: the trainer then reproduces TRL's GRPO exactly."""
    return torch.ones_like(div, dtype=torch.float32)


@register_weighting("sigmoid", token_local=True, scaled=True, parameters=("alpha", "s"),
                    help="w = 1 + s*(sigmoid(alpha*D/scale) - 1/2) (arXiv 2603.22446; alpha > 0 high-divergence boost, "
                         "alpha < 0 low-divergence boost)")
def weight_sigmoid(div: torch.Tensor, mask: torch.Tensor, params: WeightingParams) -> torch.Tensor:
    """w = 1 + s·(σ(α·D / scale) − ½)  (Meng et al. 2603.22446, with D in units of `scale`).

    D = 0 gives exactly 1 (σ(0) = ½ in float); scale = 1 is the paper's form.
    """
    if params.scale <= 0:
        raise ValueError(f"weighting_scale must be > 0 for 'sigmoid', got {params.scale}")
    w = 1.0 + params.s * (torch.sigmoid(params.alpha * (div.float() / params.scale)) - 0.5)  # (B, T)
    return _neutral_outside(w, mask)


@register_weighting("linear", token_local=True, scaled=True, parameters=("alpha", "w_min", "w_max"),
                    help="w = clip(1 + alpha*D/scale, w_min, w_max)")
def weight_linear(div: torch.Tensor, mask: torch.Tensor, params: WeightingParams) -> torch.Tensor:
    """w = clip(1 + α·D / scale, w_min, w_max). D = 0 gives exactly 1 (if 1 is inside the clip range)."""
    if params.scale <= 0:
        raise ValueError(f"weighting_scale must be > 0 for 'linear', got {params.scale}")
    w = (1.0 + params.alpha * (div.float() / params.scale)).clamp(params.w_min, params.w_max)  # (B, T)
    return _neutral_outside(w, mask)


@register_weighting("normalized", help="w = D/mean(D)")
def weight_normalized(div: torch.Tensor, mask: torch.Tensor, params: WeightingParams) -> torch.Tensor:
    """w = D / mean(D over valid tokens); mean 1 by construction. A zero mean gives NaN -> fallback 1."""
    valid = _valid(mask)
    d = div.float()
    mean = d[valid].mean() if valid.any() else d.new_tensor(float("nan"))  # ()
    return _neutral_outside(d / mean, mask)


def _keep_k(scores: torch.Tensor, mask: torch.Tensor, rho: float) -> torch.Tensor:
    """1 on the k = ⌈ρ·N_valid⌉ valid positions with the largest `scores`, 0 on the other valid ones."""
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"weighting_rho must be in (0, 1], got {rho}")
    valid = _valid(mask)
    flat_scores = scores.float().masked_fill(~valid, float("-inf")).reshape(-1)  # (B*T,)
    n_valid = int(valid.sum())
    k = min(n_valid, math.ceil(rho * n_valid - 1e-9))
    keep = torch.zeros_like(flat_scores)
    if k > 0:
        # stable descending sort: ties are kept in position order, so the choice is deterministic
        order = torch.sort(flat_scores, descending=True, stable=True).indices[:k]
        keep[order] = 1.0
    return keep.reshape(scores.shape)


@register_weighting("top_quantile", parameters=("rho",),
                    help="(only the top rho fraction of tokens by D carry the advantage; cf. the 80/20 entropy rule, "
                         "arXiv 2506.01939)")
def weight_top_quantile(div: torch.Tensor, mask: torch.Tensor, params: WeightingParams) -> torch.Tensor:
    """Only the ⌈ρ·N⌉ highest-divergence valid tokens carry the advantage (w = 1), the rest w = 0.

    NaN divergences sort last (they are treated as the lowest), so they are never selected.
    """
    scores = torch.nan_to_num(div.float(), nan=float("-inf"))
    return _neutral_outside(_keep_k(scores, mask, params.rho), mask)


@register_weighting("random_quantile", parameters=("rho", "seed"),
                    help="(same rho, random tokens: the control)")
def weight_random_quantile(div: torch.Tensor, mask: torch.Tensor, params: WeightingParams) -> torch.Tensor:
    """The control for `top_quantile`: the same number ⌈ρ·N⌉ of valid tokens, chosen uniformly at random."""
    gen = torch.Generator(device="cpu").manual_seed(int(params.seed))
    scores = torch.rand(div.shape, generator=gen).to(div.device)  # (B, T) i.i.d. U(0,1)
    return _neutral_outside(_keep_k(scores, mask, params.rho), mask)


# --------------------------------------------------------------------------------------------------
# Scale reference (weighting_scale="auto")
# --------------------------------------------------------------------------------------------------

SCALE_FLOOR = 1e-6  # D quantiles at or below this are numerical noise, never a D_ref (see ScaleReference)


def quantile(values: torch.Tensor, q: float) -> float:
    """The q-quantile of a 1-D tensor, linear interpolation (as `numpy.quantile`), in float64.

    Unlike `torch.quantile` it has no input-size cap. Raises ValueError on an empty tensor or q outside [0, 1].
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile q={q} must be in [0, 1]")
    n = values.numel()
    if n == 0:
        raise ValueError("quantile of an empty tensor")
    v = torch.sort(values.reshape(-1).double()).values  # (N,) ascending
    pos = q * (n - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return float(v[lo] + (v[hi] - v[lo]) * (pos - lo))


class ScaleReference:
    """`D_ref`: the running scale of D that `weighting_scale="auto"` divides D by.

    Each training update (the trainer makes one per generation batch, after weighting it, so a batch's
    weights use the D_ref of the batches before it) takes `b = quantile(|D| over valid tokens, q)`, then
        D_ref ← b                              (first update with b > 0)
        D_ref ← (1 − r)·D_ref + r·b            (later ones; r = `ema`, the EMA rate)
    A batch whose quantile is not above `floor` (default `SCALE_FLOOR` = 1e-6) or not finite leaves D_ref
    unchanged: step 1 of a run whose base is the policy itself has D ≡ 0, and a base that differs from the
    policy by rounding only (e.g. a 16-bit base against a policy whose LM head runs in float32) gives D of
    order 1e-8, which as D_ref would saturate every weight at the next step. Float32 JS carries about 1e-7
    of rounding per token, so 1e-6 is the smallest D quantile that says something about the models; while D_ref is undefined `scale()` is `inf`, i.e. every weight is 1.
    The caller passes the same values on every process (the trainer gathers them), so `D_ref` is identical
    on every rank; `state_dict` / `load_state_dict` carry it across checkpoints.

    Args:
        q: quantile in (0, 1] (default 0.99).
        ema: EMA rate r in (0, 1] (1 = the current batch's quantile only).
        floor: batch quantiles <= floor are ignored (numerical noise), >= 0.
    """

    def __init__(self, q: float = 0.99, ema: float = 0.1, floor: float = SCALE_FLOOR):
        if not 0.0 < q <= 1.0:
            raise ValueError(f"weighting_scale_quantile={q} must be in (0, 1]")
        if not 0.0 < ema <= 1.0:
            raise ValueError(f"weighting_scale_ema={ema} must be in (0, 1]")
        if not floor >= 0.0:
            raise ValueError(f"ScaleReference floor={floor} must be >= 0")
        self.q, self.ema, self.floor = q, ema, floor
        self.value: float | None = None  # D_ref
        self.num_updates = 0  # updates that changed D_ref

    def update(self, div: torch.Tensor) -> float | None:
        """Fold one batch's valid D values (1-D, any sign; non-finite ones are ignored) into D_ref; return it."""
        d = div.detach().reshape(-1).abs()
        d = d[torch.isfinite(d)]
        if d.numel() == 0:
            return self.value
        b = quantile(d, self.q)
        if not (math.isfinite(b) and b > self.floor):
            return self.value
        self.value = b if self.value is None else (1.0 - self.ema) * self.value + self.ema * b
        self.num_updates += 1
        return self.value

    def scale(self) -> float:
        """D_ref, or inf while it is undefined (then every scaled weight is exactly 1)."""
        return self.value if self.value is not None else math.inf

    def state_dict(self) -> dict:
        return {"value": self.value, "num_updates": self.num_updates, "q": self.q, "ema": self.ema}

    def load_state_dict(self, state: dict) -> None:
        self.value = None if state.get("value") is None else float(state["value"])
        self.num_updates = int(state.get("num_updates", 0))


WEIGHTING_STATE_NAME = "divergence_weighting_state.json"  # in every checkpoint-* folder


def call_seed(weighting_seed: int, global_step: int, call_index: int, mode: str, process_index: int) -> int:
    """The seed of one weighting call (random_quantile): a function of checkpointed or fixed state only (the
    config's seed, the global step, the call's index within that step, train/eval, the process), so a resumed
    run draws the same tokens as an uninterrupted one."""
    return (weighting_seed * 1_000_003 + global_step * 7_919 + call_index * 31 + (0 if mode == "train" else 104_729)
            + process_index * 15_485_863) % (2**63 - 1)


def save_weighting_state(folder, scale_reference: ScaleReference) -> None:
    """Write the weighting state that is not a function of the config and the global step (D_ref) into a
    `checkpoint-*` folder, so a resumed run weights exactly as an uninterrupted one."""
    import json
    import os

    with open(os.path.join(folder, WEIGHTING_STATE_NAME), "w") as f:
        json.dump({"format": 1, "scale_reference": scale_reference.state_dict()}, f, indent=2)


def load_weighting_state(checkpoint, scale_reference: ScaleReference, *, warn_if_missing: bool) -> bool:
    """Restore D_ref from `checkpoint`'s weighting state; returns False (warning if `warn_if_missing`: the run
    then differs from an uninterrupted one) when the checkpoint has none (an older version's)."""
    import json
    import os
    import warnings

    path = os.path.join(checkpoint, WEIGHTING_STATE_NAME)
    if not os.path.isfile(path):
        if warn_if_missing:
            warnings.warn(f"{checkpoint} has no {WEIGHTING_STATE_NAME} (a checkpoint from an older version): D_ref "
                          "of weighting_scale='auto' restarts from the next batch, so this run differs from an "
                          "uninterrupted one.", stacklevel=3)
        return False
    with open(path) as f:
        scale_reference.load_state_dict(json.load(f).get("scale_reference", {}))
    return True


# --------------------------------------------------------------------------------------------------
# Renormalisation and the safe entry point
# --------------------------------------------------------------------------------------------------


def renormalize(
    weights: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "none",
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Rescale weights to mean 1 over valid tokens, so the effective step size is unchanged.

    sequence:  w_{i,t} / ( Σ_t m_{i,t} w_{i,t} / Σ_t m_{i,t} )   per row; a row whose weights sum to
               0 (e.g. top_quantile picked none of its tokens) stays 0: it has no signal to rescale.
    batch:     w / ( Σ m w / Σ m ) over the whole batch, summed across processes by `all_reduce_sum`
               (a function summing a tensor over ranks) when given.
    """
    if mode == "none":
        return weights
    m = mask.to(weights.dtype)  # (B, T)
    if mode == "sequence":
        total = (weights * m).sum(-1, keepdim=True)  # (B, 1)
        count = m.sum(-1, keepdim=True)  # (B, 1)
        mean = torch.where(total != 0, total / count.clamp(min=1.0), torch.ones_like(total))  # (B, 1)
        out = weights / mean
    elif mode == "batch":
        stats = torch.stack([(weights * m).sum(), m.sum()])  # (2,)
        if all_reduce_sum is not None:
            stats = all_reduce_sum(stats)
        mean = stats[0] / stats[1].clamp(min=1.0)
        out = weights / mean if mean != 0 else weights
    else:
        raise ValueError(f"unknown weighting_renormalize {mode!r}; valid modes: {', '.join(RENORMALIZE_MODES)}")
    return torch.where(mask.bool(), out, torch.ones_like(out))


def compute_weights(
    name: str,
    div: torch.Tensor,
    mask: torch.Tensor,
    params: WeightingParams | None = None,
    renormalize_mode: str = "none",
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, int]:
    """Weights for `div` by the registered function `name`, renormalised, with no NaN/inf left.

    Args:
        div: `(B, T)` detached divergence (may contain inf, e.g. KL on top-p truncated distributions).
        mask: `(B, T)` 1 on tokens the loss uses.

    Returns:
        (weights `(B, T)` float32 detached and finite, number of valid tokens whose weight was NaN/inf
        and was replaced by 1).
    """
    params = params or WeightingParams()
    with torch.no_grad():
        w = get_weighting(name)(div.detach(), mask, params)  # (B, T)
        w = renormalize(w, mask, renormalize_mode, all_reduce_sum)
        bad = ~torch.isfinite(w)  # (B, T)
        n_bad = int((bad & mask.bool()).sum())
        w = torch.where(bad, torch.ones_like(w), w)
    return w.float().detach(), n_bad
