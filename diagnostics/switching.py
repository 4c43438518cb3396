"""Switching rules for cross-sampling: at each decoding step, which sequences take their next token
from the intervention model instead of the primary one.

Meng et al. (arXiv 2603.22446, §"cross-sampling") switch where the two next-token distributions
disagree:

    S_t = 1{ JS(π_prim(·|x<t) ‖ π_int(·|x<t)) > ε },     π_mix = (1 − S_t)·π_prim + S_t·π_int

This module holds that rule and its controls in a registry (verl style: `register_rule(name)`,
`get_rule(name, **params)`, duplicates rejected, unknown names listed):

    never                 S_t = 0                      (pure primary; reference)
    always                S_t = 1                      (pure intervention; reference)
    js_threshold          JS > epsilon                 (the paper's rule)
    js_threshold_budget   JS > epsilon, at most `max_tokens` switches and at most a fraction
                          `max_fraction` of the tokens generated so far, per sequence
    random                switch with probability `p` at each position, independently of the
                          models (the control the paper lacked: same budget, random positions)
    entropy_threshold     H(π_prim) > threshold        (control: "switch where the primary is unsure")

A rule is a callable `rule(ctx: SwitchContext) -> (B,) bool`. The engine
(`diagnostics.cross_sampling.co_decode`) masks the result with `ctx.active` (finished sequences
never switch), so a rule need not. Rules are stateless: per-sequence counts come in the context,
so one rule object serves any number of batches.

Budget semantics (not published in the paper; our choice): a fraction budget `f` is enforced on
every prefix, i.e. a switch at the n-th generated token is allowed only if
`switched_so_far + 1 <= f · n`. The final share of switched tokens is then <= f whatever the final
length (which is unknown while decoding). The price: no switch is possible before token ⌈1/f⌉.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class SwitchContext:
    """Everything a rule may look at for one decoding step of a batch of B sequences.

    Attributes:
        step: 0-based index of the token being chosen (0 = first generated token).
        js: `(B,)` float32 JS(π_prim ‖ π_int) of the sampling distributions (temperature, top-p).
        entropy_primary: `(B,)` float32 entropy of the primary's sampling distribution.
        entropy_intervention: `(B,)` float32 entropy of the intervention's sampling distribution.
        num_switched: `(B,)` long, switches so far in each sequence (before this step).
        num_generated: `(B,)` long, tokens generated so far (before this step) = `step` for rows
            still active.
        active: `(B,)` bool, sequences that have not emitted EOS yet.
        uniform: `(B,)` float32 in [0, 1), a per-sequence random number for this step from the
            sequence's own seeded stream (independent of the token-sampling stream); what the
            `random` rule uses, so its choices do not depend on batch composition.
    """

    step: int
    js: torch.Tensor
    entropy_primary: torch.Tensor
    entropy_intervention: torch.Tensor
    num_switched: torch.Tensor
    num_generated: torch.Tensor
    active: torch.Tensor
    uniform: torch.Tensor


SwitchRule = Callable[[SwitchContext], torch.Tensor]
RuleFactory = Callable[..., SwitchRule]


@dataclass(frozen=True)
class RuleSpec:
    """A registered rule: its factory and the name of the parameter a sweep (`--values`) varies."""

    name: str
    factory: RuleFactory
    sweep_param: str | None
    is_threshold: bool  # a rule whose positions depend on the models: gets a random control
    help: str


RULE_REGISTRY: dict[str, RuleSpec] = {}


def register_rule(name: str, *, sweep_param: str | None = None, is_threshold: bool = False,
                  help: str = "") -> Callable[[RuleFactory], RuleFactory]:
    """Register `factory(**params) -> rule` under `name`; a second registration is an error."""

    def deco(factory: RuleFactory) -> RuleFactory:
        if name in RULE_REGISTRY:
            raise ValueError(f"switching rule {name!r} is already registered "
                             f"({RULE_REGISTRY[name].factory.__name__})")
        RULE_REGISTRY[name] = RuleSpec(name, factory, sweep_param, is_threshold,
                                       help or (factory.__doc__ or "").strip().split("\n")[0])
        return factory

    return deco


def get_rule_spec(name: str) -> RuleSpec:
    try:
        return RULE_REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown switching rule {name!r}; valid rules: {', '.join(sorted(RULE_REGISTRY))}") from None


def get_rule(name: str, **params) -> SwitchRule:
    """Build the rule `name` with `params` (e.g. `get_rule("js_threshold", epsilon=0.1)`)."""
    spec = get_rule_spec(name)
    try:
        return spec.factory(**params)
    except TypeError as err:  # wrong/missing keyword: say which rule and what it takes
        raise ValueError(f"switching rule {name!r}: {err}") from None


def budget_allows(ctx: SwitchContext, max_tokens: int | None, max_fraction: float | None) -> torch.Tensor:
    """`(B,)` bool: may this sequence switch one more token without exceeding its budget?

    count budget:    num_switched + 1 <= max_tokens
    fraction budget: num_switched + 1 <= max_fraction · (num_generated + 1)   (on every prefix)
    """
    ok = torch.ones_like(ctx.active)
    after = ctx.num_switched + 1  # (B,)
    if max_tokens is not None:
        ok &= after <= max_tokens
    if max_fraction is not None:
        # a small tolerance so that f·n landing on an integer (e.g. 0.1·10) is not lost to rounding
        ok &= after.double() <= max_fraction * (ctx.num_generated + 1).double() + 1e-9
    return ok


def _check_budget(max_tokens: int | None, max_fraction: float | None) -> None:
    if max_tokens is not None and max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
    if max_fraction is not None and not 0.0 <= max_fraction <= 1.0:
        raise ValueError(f"max_fraction must be in [0, 1], got {max_fraction}")


@register_rule("never", help="never switch: the primary model's own sampling (reference)")
def never() -> SwitchRule:
    def rule(ctx: SwitchContext) -> torch.Tensor:
        return torch.zeros_like(ctx.active)

    return rule


@register_rule("always", help="always switch: the intervention model's own sampling (reference)")
def always() -> SwitchRule:
    def rule(ctx: SwitchContext) -> torch.Tensor:
        return torch.ones_like(ctx.active)

    return rule


@register_rule("js_threshold", sweep_param="epsilon", is_threshold=True,
               help="switch where JS(π_prim ‖ π_int) > epsilon (Meng et al.; paper's high-divergence cut 0.1)")
def js_threshold(epsilon: float = 0.1) -> SwitchRule:
    if not 0.0 <= epsilon:
        raise ValueError(f"epsilon must be >= 0 (JS lies in [0, ln 2 ≈ 0.693]), got {epsilon}")

    def rule(ctx: SwitchContext) -> torch.Tensor:
        return ctx.js > epsilon

    return rule


@register_rule("js_threshold_budget", sweep_param="epsilon", is_threshold=True,
               help="JS > epsilon, capped at max_tokens switches and a fraction max_fraction per sequence")
def js_threshold_budget(epsilon: float = 0.1, max_tokens: int | None = None,
                        max_fraction: float | None = None) -> SwitchRule:
    if max_tokens is None and max_fraction is None:
        raise ValueError("js_threshold_budget needs max_tokens and/or max_fraction "
                         "(CLI: --max-switch-tokens / --max-switch-fraction); without a cap use js_threshold")
    _check_budget(max_tokens, max_fraction)
    base = js_threshold(epsilon)

    def rule(ctx: SwitchContext) -> torch.Tensor:
        return base(ctx) & budget_allows(ctx, max_tokens, max_fraction)

    return rule


@register_rule("random", sweep_param="p",
               help="switch at random positions with probability p per token (control), optional caps")
def random_positions(p: float = 0.05, max_tokens: int | None = None,
                     max_fraction: float | None = None) -> SwitchRule:
    """Bernoulli(p) per position from the sequence's own stream; E[share switched] = p (uncapped).

    Matched to a threshold run by setting `p` to that run's mean share of switched tokens.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"random rule: p must be in [0, 1], got {p}")
    _check_budget(max_tokens, max_fraction)

    def rule(ctx: SwitchContext) -> torch.Tensor:
        return (ctx.uniform < p) & budget_allows(ctx, max_tokens, max_fraction)

    return rule


@register_rule("entropy_threshold", sweep_param="threshold", is_threshold=True,
               help="switch where the primary's entropy (nats) exceeds threshold (control)")
def entropy_threshold(threshold: float = 1.0) -> SwitchRule:
    if threshold < 0 or math.isnan(threshold):
        raise ValueError(f"entropy threshold must be >= 0 nats, got {threshold}")

    def rule(ctx: SwitchContext) -> torch.Tensor:
        return ctx.entropy_primary > threshold

    return rule
