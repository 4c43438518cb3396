"""train.lm_head: the hidden-state LM-head projection and the check that it equals the model's own logits."""

from __future__ import annotations

import math

import torch

from train.lm_head import hidden_logits_mismatch, hidden_rows, logits_mismatch, uses_hidden_path
from train.tiny_world import random_tiny_model


def test_logits_mismatch_on_finite_support():
    a = torch.tensor([[1.0, 2.0, float("-inf")], [0.5, -1.0, float("-inf")]])
    assert logits_mismatch(a, a.clone()) == 0.0  # same -inf set, same finite values: inf - inf is never compared
    b = a.clone()
    b[0, 1] += 2e-4  # relative to max |ref| = 2 on the finite support: 1e-4
    assert math.isclose(logits_mismatch(b, a), 1e-4, rel_tol=1e-3)
    c = a.clone()
    c[1, 2] = 3.0  # finite where the reference is -inf: a different support, never "close"
    assert logits_mismatch(c, a) == float("inf")
    d = a.clone()
    d[0, 2] = float("inf")  # +inf vs -inf at the same position
    assert logits_mismatch(d, a) == float("inf")
    assert logits_mismatch(torch.full((1, 2), float("nan")), torch.zeros(1, 2)) == float("inf")


def test_hidden_rows_equal_the_model_logits(tiny_tokenizer):
    model = random_tiny_model(tiny_tokenizer, seed=0, hidden_size=16, num_layers=2, num_heads=2).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        full = model(input_ids=ids).logits[:, -4:-1]  # (1, 3, V): predicting the last 3 tokens
        rows, head = hidden_rows(model, model.model(input_ids=ids).last_hidden_state, 3)
        mine = rows(slice(0, 3))  # (3, V)
        buf = torch.empty_like(mine)
        rows(slice(0, 3), out=buf)
    assert head[0] is model.lm_head.weight
    assert torch.allclose(mine, full[0], atol=1e-6) and torch.equal(buf, mine)
    assert uses_hidden_path(model) and not uses_hidden_path(model, fsdp=True)
    assert hidden_logits_mismatch(model, ids, torch.ones_like(ids), 3) is None


def test_mismatch_found_for_masked_vocabulary(tiny_tokenizer):
    model = random_tiny_model(tiny_tokenizer, seed=0, hidden_size=16, num_layers=2, num_heads=2).eval()
    model.lm_head.register_forward_hook(lambda m, a, out: out.masked_fill(torch.arange(out.size(-1)) >= out.size(-1) - 8,
                                                                        float("-inf")))
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    found = hidden_logits_mismatch(model, ids, torch.ones_like(ids), 3)
    assert found is not None and "different -inf" in found
