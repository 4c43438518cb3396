"""train.weighting: every weighting function on hand-built tensors, renormalisation, NaN fallback."""

from __future__ import annotations

import math

import pytest
import torch

from train import weighting as W
from train.weighting import WeightingParams, compute_weights, get_weighting, register_weighting, renormalize

DIV = torch.tensor([[0.0, 0.1, 0.4, 9.0], [0.2, 0.0, 0.3, 0.0]])  # (2, 4); last two of row 1 are padding
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])


def test_none_is_all_ones():
    assert torch.equal(get_weighting("none")(DIV, MASK, WeightingParams()), torch.ones(2, 4))


def test_sigmoid_hand():
    # w = 1 + s(σ(αD) − ½), α = 10, s = 1:
    #   D = 0 -> 1 exactly; D = 0.1 -> 1 + σ(1) − ½ = 1.2310586; D = 0.4 -> 1 + σ(4) − ½ = 1.4820138
    #   D = 0.2 -> 1 + σ(2) − ½ = 1.3807971; padding -> 1
    w = get_weighting("sigmoid")(DIV, MASK, WeightingParams(alpha=10.0, s=1.0))
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = torch.tensor([[1.0, 0.5 + sig(1), 0.5 + sig(4), 1.0], [0.5 + sig(2), 1.0, 1.0, 1.0]])
    assert torch.allclose(w, expected, atol=1e-6)
    assert w[0, 0].item() == 1.0 and w[1, 1].item() == 1.0  # exact at D = 0
    # α < 0 (low-divergence boost): D = 0.1 -> 1 + σ(−1) − ½ = 0.7689414 < 1
    w_low = get_weighting("sigmoid")(DIV, MASK, WeightingParams(alpha=-10.0, s=1.0))
    assert w_low[0, 1].item() == pytest.approx(0.5 + sig(-1), abs=1e-6)


def test_linear_hand():
    # w = clip(1 + αD/scale, w_min, w_max), α = 10, scale = 2, clip [0.5, 2.5]:
    #   D = 0 -> 1; 0.1 -> 1.5; 0.4 -> 3 -> clipped 2.5; 0.2 -> 2.0
    w = get_weighting("linear")(DIV, MASK, WeightingParams(alpha=10.0, scale=2.0, w_min=0.5, w_max=2.5))
    assert torch.allclose(w, torch.tensor([[1.0, 1.5, 2.5, 1.0], [2.0, 1.0, 1.0, 1.0]]), atol=1e-6)
    # α < 0: 0.4 -> 1 − 2 = −1 -> clipped to 0.5
    w = get_weighting("linear")(DIV, MASK, WeightingParams(alpha=-10.0, scale=2.0, w_min=0.5, w_max=2.5))
    assert w[0, 2].item() == 0.5


def test_normalized_hand():
    # valid D = {0, 0.1, 0.4, 0.2, 0}, mean = 0.7 / 5 = 0.14 -> w = D / 0.14; padding -> 1
    w = get_weighting("normalized")(DIV, MASK, WeightingParams())
    expected = torch.tensor([[0.0, 0.1 / 0.14, 0.4 / 0.14, 1.0], [0.2 / 0.14, 0.0, 1.0, 1.0]])
    assert torch.allclose(w, expected, atol=1e-5)
    assert (w[MASK.bool()].mean() - 1).abs() < 1e-6


def test_top_quantile_hand():
    # 5 valid tokens, ρ = 0.4 -> k = ⌈2⌉ = 2: the two largest valid D are 0.4 (0,2) and 0.2 (1,0).
    # The padded 9.0 is never chosen.
    w = get_weighting("top_quantile")(DIV, MASK, WeightingParams(rho=0.4))
    assert torch.equal(w, torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 1.0, 1.0]]))
    # ρ = 0.5 -> k = ⌈2.5⌉ = 3: adds 0.1 at (0,1); ρ = 1 keeps all valid tokens
    w = get_weighting("top_quantile")(DIV, MASK, WeightingParams(rho=0.5))
    assert w[MASK.bool()].sum().item() == 3 and w[0, 1].item() == 1.0
    assert torch.equal(get_weighting("top_quantile")(DIV, MASK, WeightingParams(rho=1.0)), torch.ones(2, 4))


def test_random_quantile_same_count_seeded():
    # Same k = 2 as top_quantile with ρ = 0.4, positions random but reproducible per seed, never padding.
    f = get_weighting("random_quantile")
    a = f(DIV, MASK, WeightingParams(rho=0.4, seed=3))
    b = f(DIV, MASK, WeightingParams(rho=0.4, seed=3))
    assert torch.equal(a, b)
    assert a[MASK.bool()].sum().item() == 2
    assert torch.equal(a[~MASK.bool()], torch.ones(3))
    picks = {tuple(f(DIV, MASK, WeightingParams(rho=0.4, seed=s))[MASK.bool()].tolist()) for s in range(20)}
    assert len(picks) > 1  # the seed matters


def test_quantile_rejects_bad_rho():
    with pytest.raises(ValueError, match="weighting_rho"):
        get_weighting("top_quantile")(DIV, MASK, WeightingParams(rho=0.0))


def test_renormalize_sequence_and_batch():
    w = torch.tensor([[2.0, 1.0, 0.0, 7.0], [0.0, 0.0, 5.0, 5.0]])
    # sequence: row 0 valid mean (2+1+0)/3 = 1 -> unchanged; row 1 valid sum 0 -> stays 0 (no signal)
    out = renormalize(w, MASK, "sequence")
    assert torch.equal(out[0, :3], w[0, :3]) and torch.equal(out[1, :2], torch.zeros(2))
    assert torch.equal(out[~MASK.bool()], torch.ones(3))
    # batch: valid mean (2+1+0+0+0)/5 = 0.6 -> w / 0.6
    out = renormalize(w, MASK, "batch")
    assert torch.allclose(out[MASK.bool()], torch.tensor([2.0, 1.0, 0.0, 0.0, 0.0]) / 0.6)
    # batch with a cross-process sum: pretend another rank holds 5 tokens of weight 1 -> mean (3 + 5)/10 = 0.8
    out = renormalize(w, MASK, "batch", all_reduce_sum=lambda t: t + torch.tensor([5.0, 5.0]))
    assert torch.allclose(out[0, 0], torch.tensor(2.0 / 0.8))
    with pytest.raises(ValueError, match="valid modes"):
        renormalize(w, MASK, "token")


def test_compute_weights_nan_fallback_counted():
    # normalized with all-zero D: mean 0 -> 0/0 = NaN on the 5 valid tokens -> 1, counted
    w, n_bad = compute_weights("normalized", torch.zeros(2, 4), MASK)
    assert n_bad == 5 and torch.equal(w, torch.ones(2, 4))
    # inf divergence (KL under truncation) with linear: clipped, finite, not a fallback
    div = torch.tensor([[math.inf, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    w, n_bad = compute_weights("linear", div, MASK, WeightingParams(w_max=3.0))
    assert n_bad == 0 and w[0, 0].item() == 3.0
    # NaN divergence with sigmoid -> NaN weight -> 1, counted once
    div = torch.tensor([[math.nan, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    w, n_bad = compute_weights("sigmoid", div, MASK)
    assert n_bad == 1 and torch.isfinite(w).all()


def test_registry(monkeypatch):
    with pytest.raises(ValueError, match="already registered"):
        register_weighting("sigmoid")(lambda d, m, p: d)
    with pytest.raises(ValueError, match="valid weightings: .*top_quantile"):
        get_weighting("sigmoidal")
    monkeypatch.setitem(W.WEIGHTING_REGISTRY, "double", lambda d, m, p: 2 * torch.ones_like(d))
    w, _ = compute_weights("double", DIV, MASK)
    assert torch.equal(w, 2 * torch.ones(2, 4))


def test_one_registration_adds_a_weighting_everywhere(monkeypatch, tmp_path):
    """A weighting's facts live in its registration only: the config's validation and auto-scale decision, the
    `--weighting` help text, the trainer's loss-time decision (token_local) and compare's variants read them."""
    from train.config import DivergenceGRPOConfig, new_fields

    cubic = W.Weighting("cubic", lambda d, m, p: 1.0 + p.alpha * (d.float() / p.scale) ** 3, help="w = 1 + alpha*D^3",
                        token_local=True, scaled=True, parameters=("alpha", "scale"))
    monkeypatch.setitem(W.WEIGHTING_REGISTRY, "cubic", cubic)
    assert "'cubic' w = 1 + alpha*D^3" in W.weighting_help()
    assert W.is_scaled("cubic") and W.is_token_local("cubic") and "cubic" in W.scaled_weightings()
    cfg = DivergenceGRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], weighting="cubic")
    assert cfg.auto_scale  # weighting_scale='auto' applies because the registration says scaled=True
    w, _ = compute_weights("cubic", DIV, MASK, cfg.weighting_params(scale=0.1))
    assert w[0, 1].item() == pytest.approx(1.0 + 10.0 * 1.0)  # D / scale = 1 at the second token
    monkeypatch.setitem(W.WEIGHTING_REGISTRY, "cubic", W.Weighting("cubic", cubic.fn, parameters=("rho",)))
    with pytest.raises(ValueError, match="weighting_rho"):  # validated because it declares rho
        DivergenceGRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], weighting="cubic", weighting_rho=2.0)
    # the config's help for `weighting` is the registry's text (built when train.config is imported)
    help_text = next(f.metadata["help"] for f in new_fields() if f.name == "weighting")
    assert all(f"'{name}'" in help_text for name in ("none", "sigmoid", "linear", "top_quantile"))


def test_registration_records_facts():
    assert W.weighting_parameters("top_quantile") == ("rho",)
    assert W.is_scaled("sigmoid") and not W.is_scaled("normalized")
    assert W.is_token_local("linear") and not W.is_token_local("random_quantile")
    with pytest.raises(ValueError, match="unknown parameters"):
        register_weighting("bad", parameters=("gamma",))


# ------------------------------------------------------------------------------------------------
# Scale reference (weighting_scale="auto")
# ------------------------------------------------------------------------------------------------

def test_quantile_matches_numpy_linear_interpolation():
    # sorted [0, 1, 2, 10]: q = 0.5 -> position 1.5 -> 1.5; q = 0.99 -> position 2.97 -> 2 + 0.97 * 8 = 9.76
    v = torch.tensor([10.0, 0.0, 2.0, 1.0])
    assert W.quantile(v, 0.5) == pytest.approx(1.5)
    assert W.quantile(v, 0.99) == pytest.approx(9.76)
    assert W.quantile(v, 0.0) == 0.0 and W.quantile(v, 1.0) == 10.0
    with pytest.raises(ValueError):
        W.quantile(torch.tensor([]), 0.5)


def test_scale_reference_ema_hand():
    ref = W.ScaleReference(q=0.5, ema=0.25)
    assert ref.scale() == math.inf  # undefined: every scaled weight is 1
    assert ref.update(torch.zeros(8)) is None  # D = 0 everywhere (policy == base): no information, no update
    assert ref.update(torch.tensor([1.0, 3.0])) == pytest.approx(2.0)  # first non-zero median initialises
    # EMA: (1 - 0.25) * 2 + 0.25 * median(|[-6, 6, inf]| finite) = 1.5 + 1.5 = 3
    assert ref.update(torch.tensor([-6.0, 6.0, float("inf")])) == pytest.approx(3.0)
    assert ref.num_updates == 2
    other = W.ScaleReference(q=0.5, ema=0.25)
    other.load_state_dict(ref.state_dict())
    assert other.state_dict() == ref.state_dict()
    with pytest.raises(ValueError, match="weighting_scale_ema"):
        W.ScaleReference(q=0.5, ema=0.0)


@pytest.mark.parametrize("name", W.scaled_weightings())
def test_auto_scale_makes_weights_invariant_to_the_unit_of_d(name):
    """The point of weighting_scale='auto': D and c·D (another model, another measure) give the same weights."""
    gen = torch.Generator().manual_seed(0)
    d = torch.rand(4, 6, generator=gen) ** 4 * 0.07  # heavy-tailed, like JS on the tiny world
    mask = torch.ones_like(d)
    weights = []
    for c in (1.0, 1e-3):
        ref = W.ScaleReference(q=0.99, ema=0.1)
        ref.update(c * d)
        w, _ = compute_weights(name, c * d, mask, WeightingParams(alpha=10.0, scale=ref.scale()))
        weights.append(w)
    assert torch.allclose(weights[0], weights[1], atol=1e-6)
    assert (weights[0] - 1).abs().max() > 0.3  # at D = D_ref the weight is far from 1


def test_sigmoid_with_scale_hand():
    # D / scale = 0.5 / 0.25 = 2: w = 1 + 1 * (sigmoid(1 * 2) - 0.5) = 0.5 + 0.880797 = 1.380797
    w, _ = compute_weights("sigmoid", torch.tensor([[0.5]]), torch.ones(1, 1), WeightingParams(alpha=1.0, scale=0.25))
    assert w.item() == pytest.approx(1.380797, abs=1e-6)
    w, _ = compute_weights("sigmoid", torch.tensor([[0.5]]), torch.ones(1, 1), WeightingParams(scale=math.inf))
    assert w.item() == 1.0  # D_ref undefined -> weight exactly 1
