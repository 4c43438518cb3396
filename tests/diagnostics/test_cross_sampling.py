"""Co-decoding engine (diagnostics.cross_sampling) and switching rules (diagnostics.switching).

The engine is checked against independent reference loops written here: one sequence at a time,
no padding, no KV cache (the whole prefix is re-run every step), HF's own top-p warper and a
hand-written inverse-CDF draw. Models are tiny random Llamas with a large init (std 0.3) so their
next-token distributions are peaked and differ: greedy argmaxes are not near-ties and JS values
spread over a useful range.
"""

from __future__ import annotations

import pytest
import torch

from diagnostics.cross_sampling import (
    co_decode,
    encode_prompts,
    rule_uniforms,
    sample_inverse_cdf,
    token_uniforms,
)
from diagnostics.divergence import js_divergence, log_probs
from diagnostics.models import check_same_vocabulary
from diagnostics.switching import RULE_REGISTRY, get_rule, register_rule

PROMPTS = ["Compute 12+3.", "Compute 45-6+7-2.", [{"role": "user", "content": "Compute 9+1-4."}]]
N_NEW = 12


def _peaked_model(tokenizer, seed: int):
    from transformers import LlamaForCausalLM

    from train.tiny_world import tiny_llama_config

    cfg = tiny_llama_config(tokenizer, hidden_size=16, num_layers=2, num_heads=2)
    cfg.initializer_range = 0.3
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def pair(tiny_tokenizer):
    return _peaked_model(tiny_tokenizer, 0), _peaked_model(tiny_tokenizer, 1)


@pytest.fixture(scope="module")
def batch(tiny_tokenizer):
    ids, mask = encode_prompts(tiny_tokenizer, PROMPTS)
    assert (mask == 0).any(), "prompts of different lengths: left padding must be exercised"
    return ids, mask


def _decode(pair, batch, tok, rule, *, seeds=(11, 12, 13), eos=True, **kw):
    kw = {"max_new_tokens": N_NEW, "temperature": 0.8, "top_p": 0.9, **kw}
    return co_decode(pair[0], pair[1], *batch, rule, seeds=list(seeds), pad_token_id=tok.pad_token_id,
                     eos_token_id=tok.eos_token_id if eos else None, **kw)


def _prompt_ids(tok, prompt) -> list[int]:
    ids, _ = encode_prompts(tok, [prompt])
    return ids[0].tolist()


# ---------------------------------------------------------------------------------------------
# Independent references: unbatched, unpadded, no cache
# ---------------------------------------------------------------------------------------------


def _ref_sample(model, prompt_ids, seed, *, temperature, top_p, eos, n) -> list[int]:
    """Plain single-model sampling: full forward each step, HF TopPLogitsWarper, inverse-CDF draw
    with the sequence's stream u_t = torch.rand(n, Generator().manual_seed(seed))[t]."""
    from transformers.generation.logits_process import TopPLogitsWarper

    u = torch.rand(n, generator=torch.Generator().manual_seed(seed))
    seq, out = list(prompt_ids), []
    for t in range(n):
        with torch.no_grad():
            logits = model(torch.tensor([seq])).logits[0, -1]  # (V,)
        scores = logits / temperature
        if top_p < 1:
            scores = TopPLogitsWarper(top_p)(torch.tensor([seq]), scores[None])[0]
        probs = torch.softmax(scores, -1)  # (V,)
        cdf = probs.cumsum(0)
        tok = int((cdf > u[t] * cdf[-1]).nonzero()[0])  # first v with CDF_v > u·total
        out.append(tok)
        if tok == eos:
            break
        seq.append(tok)
    return out


def _ref_greedy_codecode(primary, intervention, prompt_ids, epsilon, *, eos, n):
    """No-cache greedy co-decoding: both models re-run the full prefix each step; JS at T=1."""
    seq, toks, sw, jss = list(prompt_ids), [], [], []
    for _ in range(n):
        with torch.no_grad():
            lp_logits = primary(torch.tensor([seq])).logits[0, -1]
            li_logits = intervention(torch.tensor([seq])).logits[0, -1]
        js = float(js_divergence(log_probs(lp_logits), log_probs(li_logits)))
        s = js > epsilon
        tok = int((li_logits if s else lp_logits).argmax())
        toks.append(tok), sw.append(s), jss.append(js)
        if tok == eos:
            break
        seq.append(tok)
    return toks, sw, jss


# ---------------------------------------------------------------------------------------------
# Must show
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule_name,which", [("never", 0), ("always", 1)])
def test_never_and_always_reproduce_each_models_own_sampling(pair, batch, tiny_tokenizer, rule_name, which):
    """never == primary's own sampling, always == intervention's, token for token (same seeds)."""
    seeds = (11, 12, 13)
    res = _decode(pair, batch, tiny_tokenizer, get_rule(rule_name), seeds=seeds)
    for i, (prompt, seed) in enumerate(zip(PROMPTS, seeds)):
        ref = _ref_sample(pair[which], _prompt_ids(tiny_tokenizer, prompt), seed, temperature=0.8, top_p=0.9,
                          eos=tiny_tokenizer.eos_token_id, n=N_NEW)
        n = int(res.lengths[i])
        assert res.tokens[i, :n].tolist() == ref
        assert (res.tokens[i, n:] == tiny_tokenizer.pad_token_id).all()
        assert int(res.num_switched[i]) == (n if rule_name == "always" else 0)


def test_always_equals_never_with_roles_swapped(pair, batch, tiny_tokenizer):
    a = _decode(pair, batch, tiny_tokenizer, get_rule("always"))
    b = _decode(pair[::-1], batch, tiny_tokenizer, get_rule("never"))
    assert torch.equal(a.tokens, b.tokens)


def test_greedy_cached_equals_nocache_reference(pair, batch, tiny_tokenizer):
    # ε = median JS seen along the pure-primary greedy run, so the rule fires at some steps only
    probe = _decode(pair, batch, tiny_tokenizer, get_rule("never"), temperature=0.0, top_p=1.0, eos=False)
    eps = float(probe.js.flatten().median())
    res = _decode(pair, batch, tiny_tokenizer, get_rule("js_threshold", epsilon=eps), temperature=0.0, top_p=1.0)
    assert 0 < int(res.switched.sum()) < int(res.lengths.sum()), "test needs both switched and kept steps"
    for i, prompt in enumerate(PROMPTS):
        toks, sw, jss = _ref_greedy_codecode(pair[0], pair[1], _prompt_ids(tiny_tokenizer, prompt), eps,
                                             eos=tiny_tokenizer.eos_token_id, n=N_NEW)
        n = int(res.lengths[i])
        assert res.tokens[i, :n].tolist() == toks
        assert res.switched[i, :n].tolist() == sw
        torch.testing.assert_close(res.js[i, :n], torch.tensor(jss), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("rule", [("js_threshold", {"epsilon": 0.3}), ("random", {"p": 0.3}),
                                  ("entropy_threshold", {"threshold": 3.0})], ids=lambda r: r[0])
def test_batched_equals_unbatched(pair, tiny_tokenizer, rule):
    """Per-sequence streams: a sequence's tokens and switches don't depend on its batch-mates."""
    prompts, seeds = PROMPTS * 2, [5, 6, 7, 8, 9, 10]
    full = co_decode(*pair, *encode_prompts(tiny_tokenizer, prompts), get_rule(rule[0], **rule[1]), seeds=seeds,
                     max_new_tokens=N_NEW, temperature=1.0, top_p=0.95, eos_token_id=tiny_tokenizer.eos_token_id,
                     pad_token_id=tiny_tokenizer.pad_token_id)
    assert full.switched.any()
    for i, (prompt, seed) in enumerate(zip(prompts, seeds)):
        one = co_decode(*pair, *encode_prompts(tiny_tokenizer, [prompt]), get_rule(rule[0], **rule[1]), seeds=[seed],
                        max_new_tokens=N_NEW, temperature=1.0, top_p=0.95,
                        eos_token_id=tiny_tokenizer.eos_token_id, pad_token_id=tiny_tokenizer.pad_token_id)
        n = int(one.lengths[0])
        assert int(full.lengths[i]) == n
        assert full.tokens[i, :n].tolist() == one.tokens[0, :n].tolist()
        assert full.switched[i, :n].tolist() == one.switched[0, :n].tolist()
        torch.testing.assert_close(full.js[i, :n], one.js[0, :n], atol=1e-5, rtol=1e-4)


def test_one_forward_per_model_per_step(pair, batch, tiny_tokenizer):
    calls = [0, 0]
    hooks = [m.register_forward_hook(lambda *_, j=j: calls.__setitem__(j, calls[j] + 1)) for j, m in enumerate(pair)]
    try:
        res = _decode(pair, batch, tiny_tokenizer, get_rule("js_threshold", epsilon=0.2), eos=False)
    finally:
        for h in hooks:
            h.remove()
    # N tokens: prefill gives token 0, one cached forward per later token -> N forwards per model
    assert res.tokens.shape[1] == N_NEW
    assert calls == [N_NEW, N_NEW]


@pytest.mark.parametrize("name,params", [
    ("js_threshold_budget", {"epsilon": 0.0, "max_tokens": 3}),
    ("js_threshold_budget", {"epsilon": 0.0, "max_fraction": 0.25}),
    ("js_threshold_budget", {"epsilon": 0.1, "max_tokens": 2, "max_fraction": 0.5}),
    ("random", {"p": 0.9, "max_tokens": 4}),
    ("random", {"p": 1.0, "max_fraction": 0.2}),
])
def test_budgets_never_exceeded(pair, tiny_tokenizer, name, params):
    prompts, seeds = PROMPTS * 3, list(range(9))
    res = co_decode(*pair, *encode_prompts(tiny_tokenizer, prompts), get_rule(name, **params), seeds=seeds,
                    max_new_tokens=N_NEW, eos_token_id=tiny_tokenizer.eos_token_id,
                    pad_token_id=tiny_tokenizer.pad_token_id)
    assert res.switched.any()
    cum = res.switched.long().cumsum(-1)  # (B, L) switches within each prefix
    prefix_len = torch.arange(1, res.tokens.shape[1] + 1)  # (L,)
    if "max_tokens" in params:
        assert (res.num_switched <= params["max_tokens"]).all()
    if "max_fraction" in params:
        assert (cum.double() <= params["max_fraction"] * prefix_len.double() + 1e-9).all()  # every prefix
        assert (res.share_switched <= params["max_fraction"] + 1e-9).all()
    assert not (res.switched & (torch.arange(res.tokens.shape[1]) >= res.lengths[:, None])).any()  # none after EOS


def test_fraction_budget_switches_exactly_when_allowed(pair, tiny_tokenizer):
    # ε = 0 wants every token; f = 0.25 allows switch #k at the n-th token only if k <= 0.25·n:
    # n = 4 -> 1st, n = 8 -> 2nd, n = 12 -> 3rd, i.e. 0-based positions 3, 7, 11.
    res = co_decode(*pair, *encode_prompts(tiny_tokenizer, PROMPTS[:1]),
                    get_rule("js_threshold_budget", epsilon=0.0, max_fraction=0.25), seeds=[0],
                    max_new_tokens=N_NEW, eos_token_id=None, pad_token_id=tiny_tokenizer.pad_token_id)
    assert res.records()[0]["switched_positions"] == [3, 7, 11]
    # max_tokens = 2 with ε = 0: the first two tokens, then none
    res = co_decode(*pair, *encode_prompts(tiny_tokenizer, PROMPTS[:1]),
                    get_rule("js_threshold_budget", epsilon=0.0, max_tokens=2), seeds=[0],
                    max_new_tokens=N_NEW, eos_token_id=None, pad_token_id=tiny_tokenizer.pad_token_id)
    assert res.records()[0]["switched_positions"] == [0, 1]


def test_random_rule_uses_its_own_stream(pair, tiny_tokenizer):
    """random(p) switches exactly where the sequence's rule stream is < p (no EOS: full length)."""
    seeds = [3, 4, 5]
    res = _decode(pair, encode_prompts(tiny_tokenizer, PROMPTS), tiny_tokenizer, get_rule("random", p=0.4),
                  seeds=seeds, eos=False)
    for i, s in enumerate(seeds):
        assert res.switched[i].tolist() == (rule_uniforms(s, N_NEW) < 0.4).tolist()
    # and the token stream is the sampler's, independent of the rule's
    assert not torch.equal(token_uniforms(3, N_NEW), rule_uniforms(3, N_NEW))


def test_entropy_threshold_extremes(pair, batch, tiny_tokenizer):
    low = _decode(pair, batch, tiny_tokenizer, get_rule("entropy_threshold", threshold=0.0), top_p=1.0)
    high = _decode(pair, batch, tiny_tokenizer, get_rule("entropy_threshold", threshold=100.0), top_p=1.0)
    assert torch.equal(low.num_switched, low.lengths)  # full-vocabulary entropy is > 0 everywhere
    assert int(high.num_switched.sum()) == 0


def test_js_threshold_switches_exactly_where_js_exceeds_epsilon(pair, batch, tiny_tokenizer):
    res = _decode(pair, batch, tiny_tokenizer, get_rule("js_threshold", epsilon=0.3))
    valid = torch.arange(res.tokens.shape[1]) < res.lengths[:, None]  # (B, L)
    assert torch.equal(res.switched, (res.js > 0.3) & valid)


def test_sample_inverse_cdf_hand_computed():
    # probs (0.2, 0, 0.5, 0.3): CDF (0.2, 0.2, 0.7, 1.0); pick the first v with CDF_v > u
    probs = torch.tensor([[0.2, 0.0, 0.5, 0.3]]).repeat(6, 1)
    u = torch.tensor([0.0, 0.1, 0.2, 0.69, 0.7, 0.9999])
    assert sample_inverse_cdf(probs, u).tolist() == [0, 0, 2, 2, 3, 3]  # token 1 (p = 0) never drawn
    # unnormalised rows are fine (u is scaled by the total): (2, 0, 5, 3) is the same distribution
    assert sample_inverse_cdf(probs * 10, u).tolist() == [0, 0, 2, 2, 3, 3]
    # a trailing zero-probability token is never drawn even at the rounding edge u -> 1
    edge = sample_inverse_cdf(torch.tensor([[0.5, 0.5, 0.0]]), torch.tensor([1.0 - 2**-24]))
    assert edge.tolist() == [1]


def test_inverse_cdf_frequencies_match_probs():
    torch.manual_seed(0)
    p = torch.tensor([0.1, 0.6, 0.0, 0.3])
    draws = sample_inverse_cdf(p.repeat(20000, 1), torch.rand(20000))
    freq = torch.bincount(draws, minlength=4).float() / 20000
    torch.testing.assert_close(freq, p, atol=0.015, rtol=0)  # 3σ of a binomial at n = 20000 is < 0.011


# ---------------------------------------------------------------------------------------------
# Refusals and registry
# ---------------------------------------------------------------------------------------------


def test_refuses_models_or_tokenizers_that_differ(pair, tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    from train.tiny_world import build_tokenizer

    other = LlamaForCausalLM(LlamaConfig(vocab_size=len(tiny_tokenizer) + 7, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    # cross-sampling uses the project's one vocabulary check (diagnostics.models)
    with pytest.raises(ValueError, match="different vocabulary sizes"):
        check_same_vocabulary(tiny_tokenizer, tiny_tokenizer, pair[0], other)
    other_tok = build_tokenizer(["zzzz yyyy xyxy zyzy"] * 20)  # other merges: a different vocabulary
    with pytest.raises(ValueError, match="same tokenizer"):
        check_same_vocabulary(tiny_tokenizer, other_tok, pair[0], pair[1])
    check_same_vocabulary(tiny_tokenizer, tiny_tokenizer, pair[0], pair[1])  # same: accepted


def test_rule_registry(monkeypatch):
    with pytest.raises(ValueError, match="already registered"):
        register_rule("never")(lambda: None)
    with pytest.raises(ValueError, match="valid rules: .*js_threshold"):
        get_rule("no_such_rule")
    with pytest.raises(ValueError, match="max_tokens and/or max_fraction"):
        get_rule("js_threshold_budget", epsilon=0.1)
    with pytest.raises(ValueError, match="'js_threshold'.*unexpected keyword"):
        get_rule("js_threshold", eps=0.1)
    monkeypatch.setitem(RULE_REGISTRY, "dummy", RULE_REGISTRY["never"])
    assert get_rule("dummy") is not None
    assert {"never", "always", "js_threshold", "js_threshold_budget", "random", "entropy_threshold"} <= set(RULE_REGISTRY)


def test_records_say_whether_the_sequence_finished():
    from diagnostics.cross_sampling import CoDecodeResult

    class Tok:
        eos_token_id = 2

        def decode(self, toks, skip_special_tokens=True):
            return " ".join(str(t) for t in toks if t != 2)

    # row 0 ended on EOS (length 3, last token 2); row 1 ran to the cap (length 3, no EOS)
    res = CoDecodeResult(tokens=torch.tensor([[5, 6, 2], [5, 6, 7]]), switched=torch.zeros(2, 3, dtype=torch.bool),
                         js=torch.zeros(2, 3), lengths=torch.tensor([3, 3]), seeds=[0, 1])
    recs = res.records(Tok())
    assert [r["finished"] for r in recs] == [True, False] and recs[0]["text"] == "5 6"
    assert "finished" not in res.records()[0]  # no tokenizer, no EOS id: not said
    assert [r["finished"] for r in res.records(Tok(), [2, 7])] == [True, True]  # the EOS union: 7 ends a turn too
