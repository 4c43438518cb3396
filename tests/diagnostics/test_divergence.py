"""diagnostics.divergence: hand-computed JS/KL/TV/entropy, truncation, estimators, chunked vs float64."""

from __future__ import annotations

import math

import pytest
import torch

from diagnostics.divergence import (
    DIVERGENCE_REGISTRY,
    entropy,
    get_divergence,
    get_sampled_estimator,
    log_probs,
    log_probs_,
    pair_measures,
    pair_measures_,
    register_divergence,
    token_divergence,
    token_stats,
)

LN = math.log


def _lp(probs):
    """log-probs of a hand-written distribution (0 -> -inf)."""
    return torch.tensor(probs, dtype=torch.float64).log().float()


# p = base, q = policy
# Case A: p = [1/2, 1/2], q = [1, 0]
#   m = [3/4, 1/4]
#   KL(p‖m) = ½ ln(½/¾) + ½ ln(½/¼) = ½ ln(4/3);  KL(q‖m) = ln(1/¾) = ln(4/3)
#   JS = ½·½ ln(4/3) + ½ ln(4/3) = ¾ ln(4/3)
#   KL(p‖q) = +inf (p puts mass where q has none); KL(q‖p) = 1·ln(1/½) = ln 2
#   TV = ½(|½−1| + |½−0|) = ½
# Case B: p = [1/4, 3/4], q = [1/2, 1/2]
#   KL(p‖q) = ¼ ln(½) + ¾ ln(3/2);  KL(q‖p) = ½ ln 2 + ½ ln(2/3);  TV = ½(¼ + ¼) = ¼
#   m = [3/8, 5/8]: JS = ½(¼ ln(2/3) + ¾ ln(6/5)) + ½(½ ln(4/3) + ½ ln(4/5))
CASES = [
    ([0.5, 0.5], [1.0, 0.0], {"js": 0.75 * LN(4 / 3), "kl_forward": math.inf, "kl_reverse": LN(2), "tv": 0.5}),
    (
        [0.25, 0.75],
        [0.5, 0.5],
        {
            "js": 0.5 * (0.25 * LN(2 / 3) + 0.75 * LN(6 / 5)) + 0.5 * (0.5 * LN(4 / 3) + 0.5 * LN(4 / 5)),
            "kl_forward": 0.25 * LN(0.5) + 0.75 * LN(1.5),
            "kl_reverse": 0.5 * LN(2) + 0.5 * LN(2 / 3),
            "tv": 0.25,
        },
    ),
]


@pytest.mark.parametrize("p,q,expected", CASES)
@pytest.mark.parametrize("measure", ["js", "kl_forward", "kl_reverse", "tv"])
def test_hand_computed(p, q, expected, measure):
    got = get_divergence(measure)(_lp(p), _lp(q)).item()
    if math.isinf(expected[measure]):
        assert math.isinf(got) and got > 0
    else:
        assert got == pytest.approx(expected[measure], abs=1e-6)


def test_js_disjoint_supports_is_ln2_and_identical_is_zero():
    p, q = _lp([1.0, 0.0, 0.0]), _lp([0.0, 0.5, 0.5])
    assert get_divergence("js")(p, q).item() == pytest.approx(math.log(2), abs=1e-6)  # m = ½p + ½q, each KL = ln 2
    x = torch.randn(4, 9)
    lp = log_probs(x)
    for name in DIVERGENCE_REGISTRY:
        assert torch.equal(get_divergence(name)(lp, lp), torch.zeros(4)), name


def test_no_nan_with_minus_inf_logits():
    logits = torch.tensor([[0.0, float("-inf"), 1.0], [float("-inf"), float("-inf"), 0.0]])
    other = torch.tensor([[1.0, float("-inf"), 0.0], [0.0, float("-inf"), float("-inf")]])
    for name in DIVERGENCE_REGISTRY:
        d = token_divergence(logits, other, name, chunk_size=1)
        assert not torch.isnan(d).any(), name
    js = token_divergence(logits, other, "js")
    assert (js >= 0).all() and (js <= math.log(2) + 1e-7).all()


def test_entropy_uniform():
    assert entropy(_lp([0.25] * 4)).item() == pytest.approx(math.log(4), abs=1e-6)  # −Σ ¼ ln ¼ = ln 4
    assert entropy(_lp([1.0, 0.0])).item() == 0.0  # 0·log 0 = 0


def test_top_p_truncation_hand():
    # probs [0.5, 0.3, 0.2], top_p 0.7: mass before token 2 is 0.5 < 0.7 (kept), before token 3 is 0.8 (dropped)
    # -> renormalised [0.5/0.8, 0.3/0.8, 0] = [0.625, 0.375, 0]
    lp = log_probs(torch.tensor([0.5, 0.3, 0.2]).log(), top_p=0.7)
    assert torch.allclose(lp.exp(), torch.tensor([0.625, 0.375, 0.0]), atol=1e-6)


def test_sampled_estimators_hand():
    # sampler gave its token prob ½, the other ¼: log r = ln(¼/½) = −ln 2
    # k1 = −log r = ln 2; |k1| = ln 2; k3 = r − 1 − log r = ½ − 1 + ln 2
    s, o = torch.tensor([LN(0.5)]), torch.tensor([LN(0.25)])
    assert get_sampled_estimator("k1")(s, o).item() == pytest.approx(LN(2), abs=1e-6)
    assert get_sampled_estimator("abs_k1")(o, s).item() == pytest.approx(LN(2), abs=1e-6)  # k1 = −ln 2 there
    assert get_sampled_estimator("k3")(s, o).item() == pytest.approx(-0.5 + LN(2), abs=1e-6)
    assert get_sampled_estimator("k3")(s, s).item() == 0.0


def _reference64(base, policy, measure):
    """Unchunked float64 reference written independently of the module."""
    p = torch.softmax(base.double(), -1)
    q = torch.softmax(policy.double(), -1)
    if measure == "tv":
        return 0.5 * (p - q).abs().sum(-1)
    if measure == "kl_forward":
        return (p * (p.log() - q.log())).sum(-1)
    if measure == "kl_reverse":
        return (q * (q.log() - p.log())).sum(-1)
    m = 0.5 * (p + q)
    return 0.5 * (p * (p.log() - m.log())).sum(-1) + 0.5 * (q * (q.log() - m.log())).sum(-1)


@pytest.mark.parametrize("measure", ["js", "kl_forward", "kl_reverse", "tv"])
def test_chunked_equals_float64_reference(measure):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 5, 50, generator=g) * 2
    policy = base + torch.randn(3, 5, 50, generator=g)
    chunked = token_divergence(base, policy, measure, chunk_size=4)  # 15 rows -> chunks of 4,4,4,3
    ref = _reference64(base, policy, measure)
    assert chunked.shape == (3, 5)
    assert torch.allclose(chunked.double(), ref, atol=1e-6, rtol=0), (chunked.double() - ref).abs().max()
    # the same through token_stats, with top-p truncation chunked vs unchunked
    stats = token_stats(base, policy, measures=(measure,), chunk_size=3, top_p=0.7)
    unchunked = token_divergence(base, policy, measure, chunk_size=None, top_p=0.7)
    assert torch.equal(stats[measure].isinf(), unchunked.isinf())
    finite = ~unchunked.isinf()
    assert torch.allclose(stats[measure][finite], unchunked[finite], atol=1e-6)


def test_mask_zeroes_positions_and_bf16_input():
    base, policy = torch.randn(2, 3, 10).bfloat16(), torch.randn(2, 3, 10).bfloat16()
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    d = token_divergence(base, policy, "js", mask=mask)
    assert d.dtype == torch.float32 and (d[mask == 0] == 0).all() and (d[mask == 1] > 0).all()


def test_registry_rejects_duplicates_and_lists_names():
    with pytest.raises(ValueError, match="already registered"):
        register_divergence("js")(lambda a, b: a)
    with pytest.raises(ValueError, match="valid measures: .*js"):
        get_divergence("jsd")
    with pytest.raises(ValueError, match="valid estimators: .*k3"):
        get_sampled_estimator("k2")


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_in_place_path_equals_pair_measures_and_reuses_scratch(temperature):
    """`pair_measures_` (the trainer's hot path) gives `pair_measures`' numbers, computes in the scratch it is
    given (larger than one chunk, reused across chunks), and overwrites only its inputs."""
    g = torch.Generator().manual_seed(1)
    base, policy = torch.randn(7, 40, generator=g) * 3, torch.randn(7, 40, generator=g) * 3
    policy[2] = base[2]  # an identical row: JS exactly 0 on both paths
    names = ("kl_forward", "kl_reverse", "tv", "js")
    ref = pair_measures(log_probs(base, temperature), log_probs(policy, temperature), names, entropies=True)
    scratch = [torch.full((10, 40), float("nan")) for _ in range(3)]  # 10 rows: more than the 4-row chunks
    ids = [buf.data_ptr() for buf in scratch]
    got = {k: [] for k in ref}
    for r0 in (0, 4):  # chunks of 4 and 3 rows through the same scratch
        b = log_probs_(base[r0:r0 + 4].clone(), temperature)
        assert torch.equal(b, log_probs(base[r0:r0 + 4], temperature))  # in-place log-softmax is exact
        out = pair_measures_(b, log_probs_(policy[r0:r0 + 4].clone(), temperature), names, entropies=True,
                             scratch=scratch)
        for k, v in out.items():
            got[k].append(v)
    assert [buf.data_ptr() for buf in scratch] == ids
    for k, v in ref.items():
        assert torch.allclose(torch.cat(got[k]), v, atol=1e-6, rtol=0), k
    assert torch.cat(got["js"])[2].item() == 0.0 and v.shape == (7,)


def test_in_place_path_falls_back_on_minus_inf_logits():
    lb = log_probs(torch.tensor([[0.0, float("-inf"), 1.0]]))
    lp = log_probs(torch.tensor([[1.0, float("-inf"), 0.0]]))
    expected = pair_measures(lb, lp, ("js", "kl_forward"))
    got = pair_measures_(lb.clone(), lp.clone(), ("js", "kl_forward"))
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    with pytest.raises(TypeError, match="float32"):
        log_probs_(torch.zeros(2, 3, dtype=torch.bfloat16))
