"""train.trainer: exactness against TRL's GRPOTrainer, zero divergence at policy == base, the chunked
base-vs-policy pass against a float64 reference, a short real training run, the 'old' source, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM
from trl import GRPOConfig, GRPOTrainer

from train.config import DivergenceGRPOConfig
from train.tiny_world import random_tiny_model
from train.trainer import DivergenceWeightedGRPOTrainer, shift_metrics

COMMON = dict(
    use_cpu=True, per_device_train_batch_size=4, num_generations=4, max_completion_length=6, max_steps=2,
    logging_steps=1, report_to=[], learning_rate=1e-2, save_strategy="no", seed=0,
)


def short_reward(completions, **kwargs):
    """Toy reward: shorter completions are better, so the group advantages are non-zero."""
    return [-float(len(c[0]["content"] if isinstance(c, list) else c)) for c in completions]


@pytest.fixture(scope="module")
def prompts():
    return Dataset.from_dict({"prompt": [[{"role": "user", "content": f"Compute {i}+{i}"}] for i in range(8)]})


def dw_trainer(model, tokenizer, dataset, tmp_path, **kw):
    args = DivergenceGRPOConfig(output_dir=str(tmp_path), **{**COMMON, **kw})
    return DivergenceWeightedGRPOTrainer(model=model, reward_funcs=[short_reward], args=args,
                                         train_dataset=dataset, processing_class=tokenizer)


def batch_of(dataset, n=4):
    return [dataset[0]] * n  # one prompt group, as TRL's RepeatSampler builds it


def test_weighting_none_matches_trl_loss_and_grads(tiny_tokenizer, prompts, tmp_path):
    model = random_tiny_model(tiny_tokenizer, seed=0, hidden_size=16, num_layers=2, num_heads=2)
    ours = dw_trainer(copy.deepcopy(model), tiny_tokenizer, prompts, tmp_path / "a", weighting="none")
    trl = GRPOTrainer(model=copy.deepcopy(model), reward_funcs=[short_reward],
                      args=GRPOConfig(output_dir=str(tmp_path / "b"), **COMMON), train_dataset=prompts,
                      processing_class=tiny_tokenizer)
    results = []
    for tr in (ours, trl):
        tr.model.train()
        tr.current_gradient_accumulation_steps = 1
        torch.manual_seed(123)
        inputs = tr._generate_and_score_completions(batch_of(prompts))
        tr.model.zero_grad()
        loss = tr.compute_loss(tr.model, inputs)
        loss.backward()
        results.append((inputs, loss.detach(), {n: p.grad.clone() for n, p in tr.model.named_parameters()}))
    (in_a, loss_a, g_a), (in_b, loss_b, g_b) = results
    assert torch.equal(in_a["completion_ids"], in_b["completion_ids"])  # same batch
    assert in_a["advantages"].shape == in_a["completion_ids"].shape  # ours is (B, T)
    assert in_b["advantages"].abs().sum() > 0  # non-trivial advantages
    assert torch.equal(in_a["advantages"], in_b["advantages"][:, None].expand_as(in_a["advantages"]))
    assert torch.equal(loss_a, loss_b)
    for name in g_b:
        assert torch.equal(g_a[name], g_b[name]), name


@pytest.mark.parametrize("weighting", ["sigmoid", "linear"])
def test_policy_equals_base_gives_zero_divergence_and_unit_weights(weighting, tiny_model_dir, tiny_tokenizer,
                                                                    prompts, tmp_path):
    tr = dw_trainer(str(tiny_model_dir), tiny_tokenizer, prompts, tmp_path, weighting=weighting)
    assert tr.base_model is not None and tr.base_model is not tr.model
    tr.model.train()
    torch.manual_seed(0)
    out = tr._generate_and_score_completions(batch_of(prompts))
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    am = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    stats = tr._base_vs_policy(ids, am, out["completion_ids"], out["completion_ids"].size(1), 2)
    assert torch.equal(stats["div"], torch.zeros_like(stats["div"]))  # exactly 0 at every token
    assert torch.equal(tr._last_weights, torch.ones_like(tr._last_weights))  # exactly 1
    assert tr._metrics["train"]["shift/divergence_mean"] == [0.0]
    assert tr._metrics["train"]["shift/weight_frac_not_one"] == [0.0]


def test_chunked_base_vs_policy_matches_float64_reference(tiny_model_dir, tiny_policy_dir, tiny_tokenizer, prompts,
                                                          tmp_path):
    """Base = tiny_model_dir, policy = another random model: the trainer's hidden-state, micro-batched,
    row-chunked JS equals JS computed in float64 from each model's full forward logits."""
    tr = dw_trainer(str(tiny_policy_dir), tiny_tokenizer, prompts, tmp_path, base_model_name_or_path=str(tiny_model_dir),
                    divergence_chunk_size=5, temperature=0.7)
    tr.model.train()
    torch.manual_seed(0)
    out = tr._generate_and_score_completions(batch_of(prompts))
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    am = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    c = out["completion_ids"].size(1)
    stats = tr._base_vs_policy(ids, am, out["completion_ids"], c, 3)  # micro-batches 3 + 1, chunks of 5 rows

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    policy = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)
    with torch.no_grad():
        # position t's distribution comes from the logits at t − 1; compare at the sampling temperature
        lb = base(input_ids=ids, attention_mask=am).logits[:, -c - 1 : -1].double() / 0.7
        lp = policy(input_ids=ids, attention_mask=am).logits[:, -c - 1 : -1].double() / 0.7
    p, q = torch.softmax(lb, -1), torch.softmax(lp, -1)
    m = 0.5 * (p + q)
    js = 0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q / m).log()).sum(-1)  # (B, C)
    h_base = -(p * p.log()).sum(-1)
    assert (js > 1e-4).all()
    # float32 logits and a float32 JS over V = 160 terms: agreement to ~1e-6 (an off-by-one position or a
    # chunk-boundary bug would show up as differences of order 1e-3, the size of D itself)
    assert torch.allclose(stats["div"].double(), js, atol=3e-6, rtol=0), (stats["div"].double() - js).abs().max()
    assert torch.allclose(stats["ent_base"].double(), h_base, atol=1e-5, rtol=0)
    # and the advantages TRL's loss reads are w · Â with w from the masked divergence
    assert out["advantages"].shape == out["completion_ids"].shape


def test_short_training_run_logs_shift_and_updates(tiny_tokenizer, prompts, tmp_path):
    model = random_tiny_model(tiny_tokenizer, seed=0, hidden_size=16, num_layers=2, num_heads=2)
    tr = dw_trainer(model, tiny_tokenizer, prompts, tmp_path, weighting="sigmoid", weighting_alpha=200.0)
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    tr.train()
    changed = [n for n, p in tr.model.named_parameters() if not torch.equal(before[n], p)]
    assert len(changed) == len(before)
    logs = [h for h in tr.state.log_history if "shift/divergence_mean" in h]
    assert len(logs) == 2
    assert logs[0]["shift/divergence_mean"] == 0.0  # step 1: the policy is still the base
    assert logs[1]["shift/divergence_mean"] > 0.0  # step 2: one update later it has moved
    assert logs[1]["shift/weight_frac_not_one"] > 0.0
    for key in ("divergence_p50", "divergence_p90", "divergence_p99", "frac_above_0.01", "top1pct_share",
                "top5pct_share", "top20pct_share", "entropy_base_low", "entropy_policy_low", "weight_mean",
                "weight_max", "weight_nonfinite_fallbacks"):
        assert f"shift/{key}" in logs[1], key
    # the base stayed frozen at the initial weights
    base = tr.base_model
    assert all(not p.requires_grad for p in base.parameters())
    assert torch.equal(base.model.embed_tokens.weight, before["model.embed_tokens.weight"])  # tied with lm_head
    assert not torch.equal(tr.model.model.embed_tokens.weight, before["model.embed_tokens.weight"])


def test_old_source_gives_nontrivial_divergence(tiny_tokenizer, prompts, tmp_path):
    model = random_tiny_model(tiny_tokenizer, seed=0, hidden_size=16, num_layers=2, num_heads=2)
    tr = dw_trainer(model, tiny_tokenizer, prompts, tmp_path, divergence_source="old", num_iterations=2,
                    max_steps=2, weighting="sigmoid", weighting_alpha=50.0)
    assert tr.base_model is None  # no base model is loaded for the paper's π_old ‖ π_θ source
    tr.train()
    logs = [h for h in tr.state.log_history if "shift/divergence_mean" in h]
    assert logs[0]["shift/divergence_mean"] == 0.0  # iteration 1: π_θ = π_old
    assert logs[1]["shift/divergence_mean"] > 0.0  # iteration 2 on the same batch: k3(π_old ‖ π_θ) > 0
    assert logs[1]["shift/weight_frac_not_one"] > 0.0
    assert tr._buffered_inputs[0]["advantages"].dim() == 1  # the buffer itself is never rescaled


def test_peft_uses_adapter_disabled_base(tiny_model_dir, tiny_tokenizer, prompts, tmp_path):
    from peft import LoraConfig

    args = DivergenceGRPOConfig(output_dir=str(tmp_path), **COMMON)
    tr = DivergenceWeightedGRPOTrainer(
        model=str(tiny_model_dir), reward_funcs=[short_reward], args=args, train_dataset=prompts,
        processing_class=tiny_tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    assert tr.base_model is None and tr._base_is_policy_adapterless  # no second copy
    tr.model.train()
    torch.manual_seed(0)
    out = tr._generate_and_score_completions(batch_of(prompts))
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    am = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    stats = tr._base_vs_policy(ids, am, out["completion_ids"], out["completion_ids"].size(1), 4)
    assert (stats["div"] > 0).all()  # random non-zero LoRA: policy != adapter-disabled base
    with tr.model.disable_adapter():  # with the adapter off in the policy too, the divergence vanishes
        stats0 = tr._base_vs_policy(ids, am, out["completion_ids"], out["completion_ids"].size(1), 4)
    assert torch.equal(stats0["div"], torch.zeros_like(stats0["div"]))


def test_vocab_mismatch_fails_at_construction(tiny_model_dir, tiny_tokenizer, prompts, tmp_path):
    other = random_tiny_model(tiny_tokenizer, seed=0, hidden_size=16, num_layers=2, num_heads=2)
    other.resize_token_embeddings(len(tiny_tokenizer) + 8)
    other.save_pretrained(tmp_path / "bigger")
    with pytest.raises(ValueError, match=rf"base model vocabulary \({len(tiny_tokenizer) + 8} tokens\) differs from "
                                         rf"the policy's \({len(tiny_tokenizer)} tokens\)"):
        dw_trainer(str(tiny_model_dir), tiny_tokenizer, prompts, tmp_path, base_model_name_or_path=str(tmp_path / "bigger"))


def test_refuses_plain_grpo_config(tiny_model_dir, tiny_tokenizer, prompts, tmp_path):
    with pytest.raises(TypeError, match="DivergenceGRPOConfig"):
        DivergenceWeightedGRPOTrainer(model=str(tiny_model_dir), reward_funcs=[short_reward],
                                      args=GRPOConfig(output_dir=str(tmp_path), **COMMON), train_dataset=prompts,
                                      processing_class=tiny_tokenizer)


def test_shift_metrics_hand():
    # D = [0.2, 0.0, 0.05, 0.0] (N = 4): mean 0.0625; sorted desc [0.2, 0.05, 0, 0], Σ = 0.25
    #   top1%: k = ⌈0.04⌉ = 1 -> 0.2/0.25 = 0.8; top20%: k = ⌈0.8⌉ = 1 -> 0.8
    #   p50 = linear interp of ascending [0, 0, 0.05, 0.2] at 1.5 -> 0.025
    #   frac > 0.01 = 2/4, > 0.1 = 1/4; high (D > 0.1) = token 0 -> entropy_base_high = 1.0, low = mean(2,3,4) = 3
    rows = torch.tensor([[0.2, 1.0, 5.0, 1.5], [0.0, 2.0, 6.0, 1.0], [0.05, 3.0, 7.0, 1.0], [0.0, 4.0, 8.0, 1.0]],
                        dtype=torch.float64)
    m = shift_metrics(rows, 0.1)
    assert m["divergence_mean"] == pytest.approx(0.0625)
    assert m["divergence_p50"] == pytest.approx(0.025)
    assert m["top1pct_share"] == pytest.approx(0.8) and m["top20pct_share"] == pytest.approx(0.8)
    assert m["frac_above_0.01"] == 0.5 and m["frac_above_0.1"] == 0.25
    assert m["entropy_base_high"] == 1.0 and m["entropy_base_low"] == 3.0 and m["entropy_policy_high"] == 5.0
    assert m["weight_mean"] == pytest.approx(1.125) and m["weight_max"] == 1.5 and m["weight_frac_not_one"] == 0.25
