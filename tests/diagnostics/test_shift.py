"""diagnostics.shift.analyze: zero for identical models, exact localisation of a constructed shift,
agreement with an independent float64 numpy computation, padding/batching invariance."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diagnostics.shift import COLUMNS, TOPK_COLUMNS, analyze, records_to_ids
from train.tiny_world import random_tiny_model

TRIGGER = 30  # token id after which the constructed policy differs from the base
BOOSTED = 12  # the token whose logit it raises there


class ContextShiftedPolicy(torch.nn.Module):
    """The base model, except at positions whose *input* token is TRIGGER: there the logit of
    BOOSTED is raised by 4. Logits at index j predict token j+1, so exactly the completion tokens
    that directly follow a TRIGGER token get a different next-token distribution."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, input_ids, attention_mask):
        logits = self.base(input_ids=input_ids, attention_mask=attention_mask).logits.clone()  # (B, T, V)
        hit = (input_ids == TRIGGER).unsqueeze(-1)  # (B, T, 1)
        bump = torch.zeros(logits.shape[-1])
        bump[BOOSTED] = 4.0
        return SimpleNamespace(logits=torch.where(hit, logits + bump, logits))


@pytest.fixture(scope="module")
def models(tiny_tokenizer):
    base = random_tiny_model(tiny_tokenizer, seed=0, hidden_size=16, num_layers=2, num_heads=2)
    policy = random_tiny_model(tiny_tokenizer, seed=1, hidden_size=16, num_layers=2, num_heads=2)
    return base, policy


def _records(n: int = 5, seed: int = 0) -> list[dict]:
    """Token-id records of different lengths; TRIGGER appears in some completions and prompts."""
    g = torch.Generator().manual_seed(seed)
    recs = []
    for i in range(n):
        p = torch.randint(6, 120, (3 + i,), generator=g).tolist()
        c = torch.randint(6, 120, (4 + 2 * i,), generator=g).tolist()
        if i % 2 == 0:
            c[1] = TRIGGER  # -> completion token 2 is shifted
        if i == 3:
            p[-1] = TRIGGER  # last prompt token -> completion token 0 is shifted
        recs.append({"prompt_ids": p, "completion_ids": c})
    return recs


def test_identical_models_zero_divergence_everywhere(models, tiny_tokenizer):
    base, _ = models
    recs = _records()
    table = analyze(base, base, tiny_tokenizer, recs, batch_size=2, progress=False, keep_topk=True)
    assert list(table.columns) == COLUMNS + TOPK_COLUMNS
    assert len(table) == sum(len(r["completion_ids"]) for r in recs)
    for col in ("js", "kl_forward", "kl_reverse", "tv"):
        assert table[col].abs().max() < 1e-6, col
    assert not table["top1_changed"].any()
    assert (table["base_rank_of_policy_top1"] == 0).all()
    assert np.allclose(table[[f"overlap@{k}" for k in range(1, 6)]].to_numpy(), 1.0)
    assert np.allclose(table["entropy_base"], table["entropy_policy"])
    assert np.allclose(table["logp_base_token"], table["logp_policy_token"])


def test_constructed_shift_flagged_exactly_at_its_contexts(models, tiny_tokenizer):
    base, _ = models
    recs = _records()
    table = analyze(base, ContextShiftedPolicy(base), tiny_tokenizer, recs, batch_size=3, progress=False)
    # expected: completion position t is shifted iff the token before it (the prompt's last token
    # for t = 0) is TRIGGER
    expected = []
    for r in recs:
        seq = r["prompt_ids"] + r["completion_ids"]
        p = len(r["prompt_ids"])
        expected += [seq[p + t - 1] == TRIGGER for t in range(len(r["completion_ids"]))]
    expected = np.array(expected)
    assert expected.sum() == 4  # records 0, 2, 4 (completion) + record 3 (prompt end)
    flagged = table["js"].to_numpy() > 1e-4
    np.testing.assert_array_equal(flagged, expected)
    assert table.loc[~expected, "js"].abs().max() < 1e-7
    # at the shifted positions the policy's top-1 becomes the boosted token
    assert (table.loc[expected, "top1_policy"] == BOOSTED).all()


def _np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_independent_float64_numpy(models, tiny_tokenizer, temperature):
    base, policy = models
    rec = _records(n=1, seed=3)[0]
    table = analyze(base, policy, tiny_tokenizer, [rec], temperature=temperature, chunk_size=3, progress=False)
    ids = torch.tensor([rec["prompt_ids"] + rec["completion_ids"]])
    with torch.no_grad():
        lb = base(input_ids=ids).logits[0].double().numpy()  # (T, V)
        lq = policy(input_ids=ids).logits[0].double().numpy()
    p_len, c_len = len(rec["prompt_ids"]), len(rec["completion_ids"])
    rows = slice(p_len - 1, p_len - 1 + c_len)
    logp, logq = _np_log_softmax(lb[rows] / temperature), _np_log_softmax(lq[rows] / temperature)  # (C, V)
    p, q = np.exp(logp), np.exp(logq)
    m = 0.5 * (p + q)
    js = 0.5 * (p * np.log(p / m)).sum(-1) + 0.5 * (q * np.log(q / m)).sum(-1)
    np.testing.assert_allclose(table["js"], js, rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(table["kl_forward"], (p * (logp - logq)).sum(-1), rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(table["kl_reverse"], (q * (logq - logp)).sum(-1), rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(table["tv"], 0.5 * np.abs(p - q).sum(-1), rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(table["entropy_base"], -(p * logp).sum(-1), rtol=1e-5)
    tok = np.array(rec["completion_ids"])
    np.testing.assert_allclose(table["logp_policy_token"], logq[np.arange(c_len), tok], rtol=1e-5)
    np.testing.assert_array_equal(table["top1_base"], logp.argmax(-1))
    np.testing.assert_array_equal(table["top1_policy"], logq.argmax(-1))


def test_batching_and_padding_do_not_change_results(models, tiny_tokenizer):
    base, policy = models
    recs = _records(n=6, seed=1)
    one = analyze(base, policy, tiny_tokenizer, recs, batch_size=1, progress=False)
    many = analyze(base, policy, tiny_tokenizer, recs, batch_size=4, chunk_size=2, progress=False)
    assert (one["seq_id"].to_numpy() == many["seq_id"].to_numpy()).all()
    np.testing.assert_allclose(one["js"], many["js"], atol=1e-6)
    # rows come back in record order with positions 0..C-1 and rel_position = t / C
    first = many[many["seq_id"] == 0]
    c = len(recs[0]["completion_ids"])
    assert first["position"].tolist() == list(range(c))
    np.testing.assert_allclose(first["rel_position"], np.arange(c) / c)


def test_text_records_and_bad_records(models, tiny_tokenizer):
    base, policy = models
    prompt = tiny_tokenizer.apply_chat_template([{"role": "user", "content": "Compute 3+4."}],
                                                tokenize=False, add_generation_prompt=True)
    rec = {"prompt": prompt, "completion": "3+4=7. \\boxed{7}<|endoftext|>"}
    table = analyze(base, policy, tiny_tokenizer, [rec, {"prompt": prompt, "completion": ""}], progress=False)
    c_ids = tiny_tokenizer(rec["completion"], add_special_tokens=False)["input_ids"]
    assert table["token_id"].tolist() == c_ids  # the empty completion adds no rows
    assert "".join(table["token"]) == rec["completion"]
    assert table["token"].iloc[-1] == "<|endoftext|>"
    with pytest.raises(ValueError, match="record 0 has keys"):
        records_to_ids(tiny_tokenizer, [{"text": "x"}])
    with pytest.raises(ValueError, match="prompt is empty"):
        records_to_ids(tiny_tokenizer, [{"prompt_ids": [], "completion_ids": [5]}])
