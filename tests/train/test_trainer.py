"""train.trainer: exactness against TRL's GRPOTrainer, zero divergence at policy == base, the chunked
base-vs-policy pass against a float64 reference, a short real training run, the 'old' source, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM
from trl import GRPOConfig, GRPOTrainer

from diagnostics.callbacks import ShiftDiagnosticsCallback
from diagnostics.probe import build_probe_set
from diagnostics.shift_stats import stat_names
from train.config import DivergenceGRPOConfig
from train.launch import check_launch
from train.tiny_world import random_tiny_model
from train.trainer import DivergenceWeightedGRPOTrainer, shift_metrics
from _trainer_helpers import COMMON, dw_trainer, short_reward  # noqa: F401

def batch_of(dataset, n=4):
    return [dataset[0]] * n  # one prompt group, as TRL's RepeatSampler builds it


@pytest.mark.parametrize("reuse", [True, False], ids=["D-at-loss", "D-after-generation"])
def test_weighting_none_matches_trl_loss_and_grads(reuse, tiny_tokenizer, prompts, tmp_path):
    model = random_tiny_model(tiny_tokenizer, seed=0, hidden_size=16, num_layers=2, num_heads=2)
    ours = dw_trainer(copy.deepcopy(model), tiny_tokenizer, prompts, tmp_path / "a", weighting="none",
                      divergence_reuse_loss_forward=reuse)
    assert ours._dw_at_loss is reuse
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
    assert in_b["advantages"].abs().sum() > 0  # non-trivial advantages
    if reuse:  # (B, T) advantages are built inside the loss step, in a copy: the buffered batch keeps TRL's (B,)
        assert torch.equal(in_a["advantages"], in_b["advantages"])
    else:
        assert in_a["advantages"].shape == in_a["completion_ids"].shape  # ours is (B, T)
        assert torch.equal(in_a["advantages"], in_b["advantages"][:, None].expand_as(in_a["advantages"]))
    assert ours.last_weights.shape == in_a["completion_ids"].shape
    assert torch.equal(ours.last_weights, torch.ones_like(ours.last_weights))
    assert torch.equal(loss_a, loss_b)
    for name in g_b:
        assert torch.equal(g_a[name], g_b[name]), name


@pytest.mark.parametrize("weighting", ["sigmoid", "linear"])
@pytest.mark.parametrize("reuse", [True, False], ids=["D-at-loss", "D-after-generation"])
def test_policy_equals_base_gives_zero_divergence_and_unit_weights(weighting, reuse, tiny_model_dir, tiny_tokenizer,
                                                                    prompts, tmp_path):
    tr = dw_trainer(str(tiny_model_dir), tiny_tokenizer, prompts, tmp_path, weighting=weighting,
                    divergence_reuse_loss_forward=reuse)
    assert tr.base is not None and tr.base.model is not tr.model
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1
    torch.manual_seed(0)
    out = tr._generate_and_score_completions(batch_of(prompts))
    tr.compute_loss(tr.model, out)  # D-at-loss: the divergence, weights and metrics come from this step
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    am = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    assert torch.equal(tr.last_weights, torch.ones_like(tr.last_weights))  # exactly 1
    assert tr.last_weights.shape == out["completion_ids"].shape
    assert tr._metrics["train"]["shift/js_mean"] == [0.0]
    assert tr._metrics["train"]["shift/weight_frac_not_one"] == [0.0]
    stats = tr._base_vs_policy(ids, am, out["completion_ids"], out["completion_ids"].size(1), 2)
    assert torch.equal(stats["div"], torch.zeros_like(stats["div"]))  # exactly 0 at every token


def _loss_grads_metrics(tr, prompts, n_micro=1):
    """One optimizer step's worth of loss calls on one generated batch: losses, summed grads, shift/ metrics."""
    tr.model.train()
    tr.current_gradient_accumulation_steps = n_micro
    torch.manual_seed(7)
    tr.model.zero_grad()
    losses = []
    for i in range(n_micro):
        tr._step = i
        inputs = tr._prepare_inputs(batch_of(prompts, 4 * n_micro))  # TRL's buffer: generates at i = 0
        loss = tr.compute_loss(tr.model, inputs)
        loss.backward()
        losses.append(loss.detach())
    grads = {n: p.grad.clone() for n, p in tr.model.named_parameters()}
    return torch.stack(losses), grads, {k: v for k, v in tr._metrics["train"].items() if k.startswith("shift/")}


@pytest.mark.parametrize("n_micro", [1, 2])
def test_divergence_at_loss_equals_divergence_after_generation(n_micro, tiny_model_dir, tiny_policy_dir,
                                                               tiny_tokenizer, prompts, tmp_path):
    """The loss-time path (policy hidden states captured from TRL's loss forward, one forward saved) gives the
    same loss, gradients and shift/ metrics as the separate pass after generation; with 2 micro-batches per
    generation (steps_per_generation = gradient_accumulation_steps = 2) the metrics are still logged once, over
    the whole generation batch."""
    kw = dict(base_model_name_or_path=str(tiny_model_dir), weighting="sigmoid", weighting_alpha=300.0,
              weighting_scale=1.0, gradient_accumulation_steps=n_micro, steps_per_generation=n_micro, temperature=0.8)
    runs = []
    for reuse in (True, False):
        tr = dw_trainer(str(tiny_policy_dir), tiny_tokenizer, prompts, tmp_path / str(reuse),
                        divergence_reuse_loss_forward=reuse, **kw)
        assert tr._dw_at_loss is reuse
        runs.append(_loss_grads_metrics(tr, prompts, n_micro))
    (loss_a, g_a, m_a), (loss_b, g_b, m_b) = runs
    assert torch.allclose(loss_a, loss_b, atol=1e-6, rtol=1e-5), (loss_a, loss_b)
    for name in g_b:
        assert torch.allclose(g_a[name], g_b[name], atol=1e-6, rtol=1e-4), name
    assert set(m_a) == set(m_b) and len(m_a["shift/js_mean"]) == 1  # logged once per generation batch
    assert m_a["shift/n_tokens"] == m_b["shift/n_tokens"]
    assert m_a["shift/js_mean"][0] > 1e-4 and m_a["shift/weight_frac_not_one"][0] > 0  # a real test
    for key in m_b:
        assert m_a[key] == pytest.approx(m_b[key], rel=1e-4, abs=1e-7, nan_ok=True), key


@pytest.mark.parametrize("kw,expected", [
    ({}, True),
    ({"divergence_reuse_loss_forward": False}, False),
    ({"num_iterations": 2}, False),  # the batch is reused after an optimizer step: π_old != π_θ
    ({"steps_per_generation": 2}, False),  # generation not aligned with optimizer steps (GA = 1)
    ({"steps_per_generation": 2, "gradient_accumulation_steps": 2}, True),
    ({"steps_per_generation": 2, "gradient_accumulation_steps": 2, "weighting": "top_quantile"}, False),  # ranks
    ({"steps_per_generation": 2, "gradient_accumulation_steps": 2, "weighting_renormalize": "batch"}, False),
    ({"weighting": "top_quantile", "weighting_renormalize": "batch"}, True),  # micro-batch == generation batch
    ({"divergence_source": "old", "num_iterations": 2}, False),
])
def test_divergence_at_loss_only_where_exact(kw, expected, tiny_model_dir, tiny_tokenizer, prompts, tmp_path):
    tr = dw_trainer(str(tiny_model_dir), tiny_tokenizer, prompts, tmp_path, **kw)
    assert tr._dw_at_loss is expected


def test_chunked_base_vs_policy_matches_float64_reference(tiny_model_dir, tiny_policy_dir, tiny_tokenizer, prompts,
                                                          tmp_path):
    """Base = tiny_model_dir, policy = another random model: the trainer's hidden-state, micro-batched,
    row-chunked JS equals JS computed in float64 from each model's full forward logits."""
    tr = dw_trainer(str(tiny_policy_dir), tiny_tokenizer, prompts, tmp_path, base_model_name_or_path=str(tiny_model_dir),
                    divergence_chunk_size=5, temperature=0.7, divergence_reuse_loss_forward=False)
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
    tr = dw_trainer(model, tiny_tokenizer, prompts, tmp_path, weighting="sigmoid", weighting_alpha=200.0,
                    weighting_scale=1.0)  # absolute scale: step 2 already weights (auto: see test_auto_scale_*)
    probe = build_probe_set(model, tiny_tokenizer, list(prompts["prompt"][:2]), max_new_tokens=6, progress=False)
    ShiftDiagnosticsCallback(probe, every_n_steps=1, evaluate_on_save=False).attach(tr)  # shift_probe/ each step
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    tr.train()
    changed = [n for n, p in tr.model.named_parameters() if not torch.equal(before[n], p)]
    assert len(changed) == len(before)
    logs = [h for h in tr.state.log_history if "shift/js_mean" in h]
    assert len(logs) == 2
    assert logs[0]["shift/js_mean"] == 0.0  # step 1: the policy is still the base
    assert logs[1]["shift/js_mean"] > 0.0  # step 2: one update later it has moved
    assert logs[1]["shift/weight_frac_not_one"] > 0.0
    for key in ("js_p50", "js_p90", "js_p99", "frac_js_gt_0.01", "js_top1pct_share", "js_top5pct_share",
                "js_top10pct_share", "js_gini", "entropy_base_low_mean", "entropy_policy_low_mean", "weight_mean",
                "weight_max", "weight_p99", "weight_nonfinite_fallbacks"):
        assert f"shift/{key}" in logs[1], key
    # one vocabulary: training-time shift/ and probe-time shift_probe/ carry the same statistics under the same names
    names = set(stat_names("js"))
    logged = {k for h in tr.state.log_history for k in h}
    assert {k.split("/", 1)[1] for k in logged if k.startswith("shift/")} >= names
    assert {k.split("/", 1)[1] for k in logged if k.startswith("shift_probe/")} >= names
    assert [h["step"] for h in tr.state.log_history if "shift_probe/js_p99" in h] == [1, 2]
    # the base stayed frozen at the initial weights
    base = tr.base.model
    assert all(not p.requires_grad for p in base.parameters())
    assert torch.equal(base.model.embed_tokens.weight, before["model.embed_tokens.weight"])  # tied with lm_head
    assert not torch.equal(tr.model.model.embed_tokens.weight, before["model.embed_tokens.weight"])


@pytest.mark.parametrize("base", ["trainer", "snapshot"])
def test_probe_callback_leaves_training_unchanged(base, tiny_tokenizer, prompts, tmp_path):
    """Shift monitoring only observes: the same run with and without the probe callback ends with bitwise equal
    weights and the same shift/ metrics (probe sampling and the base snapshot's throw-away init fork the RNG; its
    forwards run under no_grad). 'trainer': the trainer's frozen base (the config route, train/grpo.py)."""
    runs = []
    for probe_on in (False, True):
        model = random_tiny_model(tiny_tokenizer, seed=0, hidden_size=16, num_layers=2, num_heads=2)
        tr = dw_trainer(model, tiny_tokenizer, prompts, tmp_path / f"{base}{probe_on}", weighting="sigmoid",
                        weighting_alpha=200.0)
        if probe_on:
            cb = ShiftDiagnosticsCallback(list(prompts["prompt"][:2]), every_n_steps=1, evaluate_on_save=False,
                                          probe_generation={"max_new_tokens": 6})
            cb.attach(tr, base_from_trainer=base == "trainer")
        tr.train()
        shift = {k: v for h in tr.state.log_history for k, v in h.items() if k.startswith("shift/")}
        runs.append(({n: p.detach().clone() for n, p in tr.model.named_parameters()}, shift))
    (w_off, s_off), (w_on, s_on) = runs
    assert all(torch.equal(w_off[n], w_on[n]) for n in w_off)
    assert s_off == s_on and s_off  # TRL logs undefined values as None, so plain equality


def test_old_source_gives_nontrivial_divergence(tiny_tokenizer, prompts, tmp_path):
    model = random_tiny_model(tiny_tokenizer, seed=0, hidden_size=16, num_layers=2, num_heads=2)
    tr = dw_trainer(model, tiny_tokenizer, prompts, tmp_path, divergence_source="old", num_iterations=2,
                    max_steps=2, weighting="sigmoid", weighting_alpha=50.0, weighting_scale=1.0)
    assert tr.base is None  # no base model is loaded for the paper's π_old ‖ π_θ source
    tr.train()
    logs = [h for h in tr.state.log_history if "shift/k3_mean" in h]
    assert logs[0]["shift/k3_mean"] == 0.0  # iteration 1: π_θ = π_old
    assert logs[1]["shift/k3_mean"] > 0.0  # iteration 2 on the same batch: k3(π_old ‖ π_θ) > 0
    assert logs[1]["shift/weight_frac_not_one"] > 0.0
    assert tr._buffered_inputs[0]["advantages"].dim() == 1  # the buffer itself is never rescaled


def _peft_step0_divergence(tr, prompts):
    """D base-vs-policy on a freshly generated batch before any update, and max |logits - backbone logits|."""
    tr.model.train()
    torch.manual_seed(0)
    out = tr._generate_and_score_completions(batch_of(prompts))
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    am = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    c = out["completion_ids"].size(1)
    stats = tr._base_vs_policy(ids, am, out["completion_ids"], c, 4)
    with torch.no_grad():
        logits = tr.model(input_ids=ids, attention_mask=am).logits
        with tr.model.disable_adapter():  # the pretrained backbone alone
            logits_off = tr.model(input_ids=ids, attention_mask=am).logits
    return stats["div"], (logits - logits_off).abs().max()


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("how", ["peft_model", "peft_config"])
def test_peft_base_is_initial_policy_for_every_beta(beta, how, tiny_model_dir, tiny_tokenizer, prompts, tmp_path):
    """Fault 2 (issue 12): a policy whose adapter starts non-zero (a trained adapter; here init_lora_weights=False)
    must be measured against its *initial* weights, adapter included, for beta = 0 as for beta > 0 (TRL's "ref"
    copy). Before the fix, beta = 0 used the adapter-disabled backbone: JS ~ 2e-3 at step 0 instead of 0."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    args = DivergenceGRPOConfig(output_dir=str(tmp_path), beta=beta, **COMMON)
    kw = dict(reward_funcs=[short_reward], args=args, train_dataset=prompts, processing_class=tiny_tokenizer)
    if how == "peft_model":
        torch.manual_seed(0)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora)
        tr = DivergenceWeightedGRPOTrainer(model=model, **kw)
    else:
        torch.manual_seed(0)
        tr = DivergenceWeightedGRPOTrainer(model=str(tiny_model_dir), peft_config=lora, **kw)
    div, adapter_effect = _peft_step0_divergence(tr, prompts)
    assert adapter_effect > 1e-3  # the adapter really changes the model: the adapter-disabled base would differ
    assert torch.equal(div, torch.zeros_like(div)), div.max()  # base == the policy's initial weights, exactly
    assert tr.base.is_policy_adapter and tr.base.model is tr.model  # no second full model...
    assert "ref" in tr.model.peft_config  # ...but a frozen copy of the initial adapter
    assert not any(p.requires_grad for n, p in tr.model.named_parameters() if ".ref." in n)
    assert any(p.requires_grad for n, p in tr.model.named_parameters() if ".default." in n)


def test_peft_zero_adapter_needs_no_copy(tiny_model_dir, tiny_tokenizer, prompts, tmp_path):
    """LoRA's default init (B = 0) is a no-op adapter: the adapter-disabled model is the initial policy, no copy."""
    from peft import LoraConfig

    args = DivergenceGRPOConfig(output_dir=str(tmp_path), **COMMON)
    tr = DivergenceWeightedGRPOTrainer(
        model=str(tiny_model_dir), reward_funcs=[short_reward], args=args, train_dataset=prompts,
        processing_class=tiny_tokenizer, peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    assert "ref" not in tr.model.peft_config
    div, adapter_effect = _peft_step0_divergence(tr, prompts)
    assert adapter_effect == 0
    assert torch.equal(div, torch.zeros_like(div))


def test_vocab_mismatch_fails_at_construction(tiny_model_dir, tiny_tokenizer, prompts, tmp_path):
    other = random_tiny_model(tiny_tokenizer, seed=0, hidden_size=16, num_layers=2, num_heads=2)
    other.resize_token_embeddings(len(tiny_tokenizer) + 8)
    other.save_pretrained(tmp_path / "bigger")
    with pytest.raises(ValueError, match=rf"models have different vocabulary sizes \({len(tiny_tokenizer) + 8} vs "
                                         rf"{len(tiny_tokenizer)} output logits\)"):
        dw_trainer(str(tiny_model_dir), tiny_tokenizer, prompts, tmp_path, base_model_name_or_path=str(tmp_path / "bigger"))


def test_refuses_plain_grpo_config(tiny_model_dir, tiny_tokenizer, prompts, tmp_path):
    with pytest.raises(TypeError, match="DivergenceGRPOConfig"):
        DivergenceWeightedGRPOTrainer(model=str(tiny_model_dir), reward_funcs=[short_reward],
                                      args=GRPOConfig(output_dir=str(tmp_path), **COMMON), train_dataset=prompts,
                                      processing_class=tiny_tokenizer)


def test_shift_metrics_hand():
    # D = [0.2, 0.0, 0.05, 0.0] (N = 4): mean 0.0625; sorted desc [0.2, 0.05, 0, 0], Σ = 0.25
    #   top1%: k = ⌈0.04⌉ = 1 -> 0.2/0.25 = 0.8; top10%: k = ⌈0.4⌉ = 1 -> 0.8
    #   p50 = linear interp of ascending [0, 0, 0.05, 0.2] at 1.5 -> 0.025
    #   frac > 0.01 = 2/4, > 0.1 = 1/4; high (D > 0.1) = token 0 -> entropy_base_high = 1.0, low = mean(2,3,4) = 3
    # the measure's name prefixes the divergence keys (k3 here: the measure of source 'old')
    rows = torch.tensor([[0.2, 1.0, 5.0, 1.5], [0.0, 2.0, 6.0, 1.0], [0.05, 3.0, 7.0, 1.0], [0.0, 4.0, 8.0, 1.0]],
                        dtype=torch.float64)
    m = shift_metrics(rows, 0.1, "k3")
    assert m["n_tokens"] == 4.0 and m["k3_mean"] == pytest.approx(0.0625)
    assert m["k3_p50"] == pytest.approx(0.025)
    assert m["k3_top1pct_share"] == pytest.approx(0.8) and m["k3_top10pct_share"] == pytest.approx(0.8)
    assert m["frac_k3_gt_0.01"] == 0.5 and m["frac_k3_gt_0.1"] == 0.25
    assert m["entropy_base_high_mean"] == 1.0 and m["entropy_base_low_mean"] == 3.0
    assert m["entropy_policy_high_mean"] == 5.0
    assert m["weight_mean"] == pytest.approx(1.125) and m["weight_max"] == 1.5 and m["weight_frac_not_one"] == 0.25
    assert not any(k.startswith("js") for k in m)


def test_evaluate_logs_shift_metrics_on_both_paths(tiny_model_dir, tiny_policy_dir, tiny_tokenizer, prompts,
                                                   tmp_path):
    """`trainer.evaluate()` (TRL generates, then calls compute_loss under no_grad) logs eval shift/ metrics, and the
    loss-time path gives the separate pass's numbers on the same generations."""
    metrics = []
    for reuse in (True, False):
        tr = dw_trainer(str(tiny_policy_dir), tiny_tokenizer, prompts, tmp_path / str(reuse),
                        base_model_name_or_path=str(tiny_model_dir), divergence_reuse_loss_forward=reuse,
                        per_device_eval_batch_size=4)
        tr.eval_dataset = prompts.select(range(2))
        torch.manual_seed(3)
        metrics.append(tr.evaluate())
    on_loss, separate = metrics
    assert on_loss["eval_shift/n_tokens"] == separate["eval_shift/n_tokens"] > 0
    assert on_loss["eval_shift/js_mean"] > 1e-4
    for key in ("eval_shift/js_mean", "eval_shift/js_p90", "eval_shift/entropy_base_low_mean",
                "eval_shift/weight_mean"):
        assert on_loss[key] == pytest.approx(separate[key], rel=1e-4), key
    assert on_loss["eval_loss"] == pytest.approx(separate["eval_loss"], rel=1e-4, abs=1e-7)


# ------------------------------------------------------------------------------------------------
# Guards against silent no-ops (issue 12)
# ------------------------------------------------------------------------------------------------

def _trl_loss_grads(tr, inputs):
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1
    tr.model.zero_grad()
    loss = tr.compute_loss(tr.model, inputs)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in tr.model.named_parameters()}


@pytest.mark.parametrize("weighting", ["sigmoid", "top_quantile"])
@pytest.mark.parametrize("reuse", [True, False], ids=["D-at-loss", "D-after-generation"])
def test_weighted_loss_equals_trl_loss_with_injected_advantages(weighting, reuse, tiny_model_dir, tiny_policy_dir,
                                                                 tiny_tokenizer, prompts, tmp_path):
    """Our loss and gradients == plain trl.GRPOTrainer's on the same batch with our (B, T) advantages
    w · Â injected after `_generate_and_score_completions`. A TRL upgrade that reads the advantages before our
    hook (or copies them elsewhere) makes ours the unweighted loss and fails here (the weights are far from 1,
    so the unweighted loss differs)."""
    policy = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)
    ours = dw_trainer(copy.deepcopy(policy), tiny_tokenizer, prompts, tmp_path / "a", weighting=weighting,
                      base_model_name_or_path=str(tiny_model_dir), divergence_reuse_loss_forward=reuse,
                      weighting_alpha=10.0, weighting_rho=0.3)
    assert ours._dw_at_loss is reuse
    if weighting == "sigmoid":  # weighting_scale='auto' (the default) with D_ref already known
        ours._dw_scale_ref.value = 2e-3
    trl = GRPOTrainer(model=copy.deepcopy(policy), reward_funcs=[short_reward],
                      args=GRPOConfig(output_dir=str(tmp_path / "b"), **COMMON), train_dataset=prompts,
                      processing_class=tiny_tokenizer)
    ours.model.train()
    torch.manual_seed(5)
    inputs = ours._generate_and_score_completions(batch_of(prompts))
    plain_adv = inputs["advantages"]  # (B,) at loss time; (B, T) already weighted after generation
    loss_ours, g_ours = _trl_loss_grads(ours, inputs)
    weights = ours.last_weights  # (B, T): what our trainer applied
    assert weights.shape == inputs["completion_ids"].shape
    mask = inputs["completion_mask"].bool()
    assert (weights[mask] - 1).abs().max() > 0.2  # far from a no-op
    injected = dict(inputs)
    injected["advantages"] = plain_adv if plain_adv.dim() == 2 else weights * plain_adv[:, None]  # (B, T)
    loss_trl, g_trl = _trl_loss_grads(trl, injected)
    assert torch.allclose(loss_ours, loss_trl, rtol=1e-6, atol=1e-8), (loss_ours, loss_trl)
    for name in g_trl:
        assert torch.allclose(g_ours[name], g_trl[name], rtol=1e-5, atol=1e-8), name
    if plain_adv.dim() == 1:  # the teeth: TRL's loss on the unweighted (B,) advantages is a different number
        loss_unweighted, _ = _trl_loss_grads(trl, inputs)
        assert not torch.allclose(loss_unweighted, loss_ours, rtol=1e-3)


def _double_logits_hook(module, args, output):
    return output * 2.0  # a logit transform no config attribute announces (e.g. a custom scaled head)


@pytest.mark.parametrize("reuse", [True, False], ids=["D-at-loss", "D-after-generation"])
def test_hidden_logit_check_falls_back_to_full_forward(reuse, tiny_model_dir, tiny_policy_dir, tiny_tokenizer,
                                                      prompts, tmp_path):
    """A policy whose forward transforms the logits in a way `LOGIT_TRANSFORMS` does not know: the check on the
    first batch warns, switches to full forwards, and D then equals JS of the models' real (transformed) logits."""
    policy = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)
    policy.lm_head.register_forward_hook(_double_logits_hook)
    tr = dw_trainer(policy, tiny_tokenizer, prompts, tmp_path, base_model_name_or_path=str(tiny_model_dir),
                    divergence_reuse_loss_forward=reuse, temperature=0.7, weighting_scale=1.0)
    assert tr._dw_at_loss is reuse  # the config alone cannot tell
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="LOGIT_TRANSFORMS"):
        inputs = tr._prepare_inputs(batch_of(prompts))
        tr.compute_loss(tr.model, inputs)
    assert tr._dw_hidden_fallback and not tr._use_hidden_path(tr.model)
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    am = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    c = inputs["completion_ids"].size(1)
    stats = tr._base_vs_policy(ids, am, inputs["completion_ids"], c, 4)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        lb = base(input_ids=ids, attention_mask=am).logits[:, -c - 1 : -1].double() / 0.7
        lp = policy(input_ids=ids, attention_mask=am).logits[:, -c - 1 : -1].double() / 0.7  # hook included
    p, q = torch.softmax(lb, -1), torch.softmax(lp, -1)
    m = 0.5 * (p + q)
    js = 0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q / m).log()).sum(-1)  # (B, C)
    # the test's autocast (bf16 on this CPU) runs the full forward's LM head in 16 bits: ~1e-4 on D ~ 1e-2
    assert torch.allclose(stats["div"].double(), js, atol=5e-4, rtol=0), (stats["div"].double() - js).abs().max()
    if reuse:  # the weights applied at loss time came from that D (after generation, rows were shuffled since)
        assert torch.allclose(tr.last_weights[inputs["completion_mask"].bool()].double(),
                              (1 + torch.sigmoid(10 * stats["div"].double()) - 0.5)[inputs["completion_mask"].bool()],
                              atol=2e-3)


def test_hidden_logit_check_passes_for_plain_models(tiny_model_dir, tiny_policy_dir, tiny_tokenizer, prompts,
                                                    tmp_path):
    tr = dw_trainer(str(tiny_policy_dir), tiny_tokenizer, prompts, tmp_path,
                    base_model_name_or_path=str(tiny_model_dir))
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1
    torch.manual_seed(0)
    inputs = tr._prepare_inputs(batch_of(prompts))
    tr.compute_loss(tr.model, inputs)
    assert tr._dw_logits_checked and not tr._dw_hidden_fallback and tr._use_hidden_path(tr.model)


@pytest.mark.parametrize("env,state,match", [
    ({"ACCELERATE_USE_FSDP": "true"}, ("DistributedType.MULTI_CPU", 2), "FSDP on GPUs only"),
    ({"WORLD_SIZE": "2"}, ("DistributedType.NO", 1), "the ranks would train independently"),
])
def test_launch_that_silently_differs_is_refused(env, state, match, monkeypatch):
    """accelerate on CPU turns an FSDP config into DDP (use_cpu) or into independent processes (no use_cpu), and
    both exit 0 (tried: docs/launch.md); the trainer refuses them at start-up instead."""
    from types import SimpleNamespace

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    fake = SimpleNamespace(state=SimpleNamespace(distributed_type=state[0], num_processes=state[1]), device="cpu")
    with pytest.raises(ValueError, match=match):
        check_launch(fake, False)
    monkeypatch.delenv(next(iter(env)))
    ddp = SimpleNamespace(state=SimpleNamespace(distributed_type="DistributedType.MULTI_GPU", num_processes=2),
                          device="cpu")
    check_launch(ddp, False)  # a proper 2-process DDP run passes
