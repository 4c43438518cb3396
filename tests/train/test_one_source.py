"""Issue 18's four faults, each one setting decided in two places that drifted apart; every test here failed on
main (1dda4e2) with the number in its docstring.

1. the probe callback's `shift_probe/*` and the trainer's `shift/*`: one `DivergenceSettings`;
2. the final evaluation scores with the training reward settings (`RewardSettings`);
3. models whose forward masks vocabulary rows to -inf: the logit check falls back, D is the masked JS;
4. `cast_lm_head_to_fp32=True`: the base is the initial policy in the policy's precision (head included).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from datasets import Dataset
from transformers import LlamaForCausalLM

from diagnostics.probe import ProbeSequence, ProbeSet
from diagnostics.shift import analyze
from train.config import DivergenceGRPOConfig
from train.tiny_world import random_tiny_model, tiny_llama_config
from train.trainer import DivergenceWeightedGRPOTrainer
from _trainer_helpers import COMMON, dw_trainer, short_reward  # noqa: F401

def generated(tr, prompts, seed=0):
    """One generated batch (one prompt group: no prompt padding) -> (ids (B, L), mask (B, L), completion_ids (B, C),
    completion_mask (B, C))."""
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1
    torch.manual_seed(seed)
    out = tr._generate_and_score_completions([prompts[0]] * 4)
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    am = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    return ids, am, out["completion_ids"], out["completion_mask"]


def js64(lb, lp, temperature=1.0):
    """float64 JS of softmax(logits / T) (0·log 0 = 0 on -inf entries)."""
    p, q = torch.softmax(lb.double() / temperature, -1), torch.softmax(lp.double() / temperature, -1)
    m = 0.5 * (p + q)
    kl = lambda a: torch.where(a > 0, a * (a / m).log(), torch.zeros_like(a)).sum(-1)  # noqa: E731
    return 0.5 * kl(p) + 0.5 * kl(q)


# ------------------------------------------------------------------------------------------------
# 1. shift_probe/* == shift/*
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [{"temperature": 0.7}, {"divergence_top_p": 0.7}], ids=["temperature0.7", "top_p0.7"])
def test_probe_js_equals_trainer_divergence_per_token(kw, tiny_model_dir, tiny_policy_dir, tiny_tokenizer, prompts,
                                                      tmp_path):
    """The probe callback, attached by the entry point (`train.grpo.attach_shift_probe`), computes the trainer's D on
    the same tokens. On main it analysed at T = 1 over the full vocabulary: max per-token difference ~1e-2."""
    from train.grpo import GRPOScriptArguments, attach_shift_probe

    tr = dw_trainer(str(tiny_policy_dir), tiny_tokenizer, prompts, tmp_path, base_model_name_or_path=str(tiny_model_dir),
                    divergence_reuse_loss_forward=False, shift_probe_every_n_steps=1,
                    shift_probe_source=str(tmp_path / "probe.jsonl"), bf16=False, **kw)
    ids, am, comp, comp_mask = generated(tr, prompts)
    d = tr._base_vs_policy(ids, am, comp, comp.size(1), 4)["div"]  # (B, C): the trainer's shift/ D
    p_len = ids.size(1) - comp.size(1)
    probe = ProbeSet([ProbeSequence(tuple(ids[b, :p_len].tolist()), tuple(comp[b, : int(comp_mask[b].sum())].tolist()))
                      for b in range(ids.size(0))])
    probe.save(tmp_path / "probe.jsonl")
    cb = attach_shift_probe(tr, GRPOScriptArguments(), tr.args, None)
    table = analyze(cb.base_model, tr.model, tiny_tokenizer, probe.records(), progress=False, **cb.analyze_kwargs)
    expected = torch.cat([d[b, : int(comp_mask[b].sum())] for b in range(ids.size(0))]).double()
    got = torch.tensor(table.sort_values(["seq_id", "position"])["js"].to_numpy(), dtype=torch.float64)
    assert expected.numel() == got.numel() > 8 and expected.max() > 1e-3
    keep = torch.ones_like(got, dtype=torch.bool)
    if tr.divergence_settings.top_p is not None:
        # Top-p truncation is discontinuous: where a token's preceding mass lies within float32 rounding of top_p,
        # any two float32 computations of the same logits may keep different nuclei (D then jumps by ~1e-2).
        # Those tokens (found in float64 from the models' forwards) are the only ones allowed to differ.
        keep = ~nucleus_is_ambiguous(cb.base_model, tr.model, ids, comp_mask, tr.divergence_settings)
        assert keep.sum() >= got.numel() - 2
    assert torch.allclose(got[keep], expected[keep], atol=1e-5, rtol=0), (got - expected).abs().max()
    assert cb.settings == tr.divergence_settings  # one object, not a second decision


def nucleus_is_ambiguous(base, policy, ids, comp_mask, settings, eps=1e-5):
    """(N,) bool over the valid completion tokens: some token's preceding probability mass is within `eps` of
    top_p in the base's or the policy's distribution (float64, softmax(logits / T))."""
    c = comp_mask.size(1)
    flags = []
    with torch.no_grad():
        for model in (base, policy):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -c - 1 : -1].double()
            probs = torch.softmax(logits / settings.temperature, -1).sort(-1, descending=True).values
            before = probs.cumsum(-1) - probs  # (B, C, V) mass strictly before each token
            flags.append(((before - settings.top_p).abs() < eps).any(-1))  # (B, C)
    amb = flags[0] | flags[1]
    return torch.cat([amb[b, : int(comp_mask[b].sum())] for b in range(ids.size(0))])


def test_run_folder_settings_are_the_cli_defaults(tmp_path):
    """`sparse-rlvr shift` / `evolution` on a run folder (or a checkpoint in it) default to the run's settings; flags
    still win."""
    import argparse

    from diagnostics.cli_args import add_analysis_arguments, resolve_analysis_settings
    from diagnostics.divergence_settings import DivergenceSettings

    run = tmp_path / "run"
    DivergenceSettings(measure="js", temperature=0.7, top_p=0.7, chunk_size=64,
                       high_divergence_threshold=0.05).save(run)
    (run / "checkpoint-2").mkdir()
    p = argparse.ArgumentParser()
    add_analysis_arguments(p)
    args = p.parse_args([])
    resolve_analysis_settings(args, run / "checkpoint-2")
    assert (args.temperature, args.top_p, args.chunk_size, args.high_divergence_threshold) == (0.7, 0.7, 64, 0.05)
    args = p.parse_args(["--temperature", "1.0", "--high-js", "0.2"])  # the deprecated spelling still works
    with pytest.warns(FutureWarning):
        args = p.parse_args(["--temperature", "1.0", "--high-js", "0.2"])
    resolve_analysis_settings(args, run)
    assert (args.temperature, args.top_p, args.high_divergence_threshold) == (1.0, 0.7, 0.2)
    args = p.parse_args([])
    resolve_analysis_settings(args, tmp_path / "elsewhere")  # no settings file: the defaults
    assert (args.temperature, args.top_p) == (1.0, None)


def test_trainer_writes_its_divergence_settings(tiny_tokenizer, prompts, tmp_path):
    from diagnostics.divergence_settings import DivergenceSettings

    model = random_tiny_model(tiny_tokenizer, seed=0, hidden_size=16, num_layers=2, num_heads=2)
    tr = dw_trainer(model, tiny_tokenizer, prompts, tmp_path, temperature=0.7, divergence_top_p=0.7, max_steps=1)
    tr.train()
    assert DivergenceSettings.from_run(tmp_path) == tr.divergence_settings
    assert tr.divergence_settings.temperature == 0.7 and tr.divergence_settings.top_p == 0.7


# ------------------------------------------------------------------------------------------------
# 2. final evaluation with the training reward settings
# ------------------------------------------------------------------------------------------------

def test_strict_trained_run_writes_strict_final_eval(tiny_model_dir, tiny_tokenizer, prompts, tmp_path, monkeypatch):
    """A completion 'so 14' (no answer marker) is right under lenient extraction (the last number) and no_answer
    under strict. A run trained strict must write a final_eval.json scored strict: mean@1 = 0. On main it scored
    lenient: mean@1 = 1.0, extraction 'lenient'."""
    import train.evaluate as ev
    import train.grpo as grpo

    test = Dataset.from_dict({"prompt": [[{"role": "user", "content": "7+7"}], [{"role": "user", "content": "3+4"}]],
                              "problem": ["7+7", "3+4"], "answer": ["14", "7"]})
    monkeypatch.setattr(grpo, "load_split", lambda script_args, split, n: test)
    monkeypatch.setattr(ev, "_generate", lambda model, tok, texts, **kw: (
        ["so 14" if "7+7" in t else "so 7" for t in texts], [True] * len(texts)))
    script = grpo.GRPOScriptArguments(eval_num_samples=1, reward_timeout=3.0)
    tr = dw_trainer(str(tiny_model_dir), tiny_tokenizer, prompts, tmp_path, extraction="strict")
    grpo.final_evaluation(tr, script, tr.args)
    final = json.loads((tmp_path / "final_eval.json").read_text())
    assert final["extraction"] == "strict" and final["mean@1"] == 0.0
    lenient = ev._score_batch(["so 14", "so 7"], ["14", "7"], "lenient", [True, True])
    assert lenient == [1.0, 1.0]  # the same completions score 1 under lenient: the setting really mattered


def test_reward_settings_feed_reward_funcs_and_evaluation():
    from train.grpo import GRPOScriptArguments
    from train.reward_settings import RewardSettings

    args = DivergenceGRPOConfig(output_dir="unused", extraction="strict", max_completion_length=12, **{
        k: v for k, v in COMMON.items() if k != "max_completion_length"})
    s = RewardSettings.from_args(GRPOScriptArguments(reward_timeout=2.0, reward_funcs=["accuracy"]), args)
    assert s.evaluation_kwargs() == {"extraction": "strict", "timeout": 2.0}
    assert s.reward_funcs_options() == {"timeout": 2.0, "extraction": "strict", "max_completion_length": 12}
    assert [f.__name__ for f in s.reward_funcs_list()] == ["accuracy"]
    with pytest.raises(ValueError, match="one weight per reward function"):
        RewardSettings(reward_funcs=("accuracy",), reward_weights=(1.0, 2.0))


# ------------------------------------------------------------------------------------------------
# 3. masked vocabulary rows (-inf logits)
# ------------------------------------------------------------------------------------------------

N_PAD = 8


def _mask_padded_rows(module, args, output):
    return output.masked_fill(torch.arange(output.size(-1)) >= output.size(-1) - N_PAD, float("-inf"))


def masked_vocab_model(tokenizer, seed):
    """A tiny Llama with 8 padded vocabulary rows that its forward masks to -inf (as models with padded embedding
    matrices do): `hidden @ W^T` gives those rows finite logits, the model's own distribution gives them 0."""
    model = random_tiny_model(tokenizer, seed=seed, hidden_size=16, num_layers=2, num_heads=2)
    model.resize_token_embeddings(len(tokenizer) + N_PAD, mean_resizing=False)
    with torch.no_grad():
        model.get_output_embeddings().weight[-N_PAD:].normal_(0.0, 3.0)  # padded rows with large logits
    model.lm_head.register_forward_hook(_mask_padded_rows)
    return model


@pytest.mark.parametrize("reuse", [True, False], ids=["D-at-loss", "D-after-generation"])
def test_masked_vocabulary_divergence_is_js_of_masked_distributions(reuse, tiny_tokenizer, prompts, tmp_path):
    """On main the logit check compared inf/inf = NaN, never failed (no warning), and D (hidden-state logits, padded
    rows unmasked) averaged 0.530 against a true JS of 0.0134 (this model, seed 0, after-generation path). Now: a
    warning, full forwards, D == float64 JS on both paths."""
    policy = masked_vocab_model(tiny_tokenizer, seed=0)
    tr = dw_trainer(policy, tiny_tokenizer, prompts, tmp_path, divergence_reuse_loss_forward=reuse, temperature=0.7,
                    weighting_scale=1.0)
    base = copy.deepcopy(tr.base.model)  # the initial weights (the forward hook comes along)
    with torch.no_grad():  # move the policy away from the base
        torch.manual_seed(1)
        for p in tr.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="different -inf"):
        inputs = tr._prepare_inputs([prompts[0]] * 4)
        tr.compute_loss(tr.model, inputs)
    assert tr._dw_hidden_fallback
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    am = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    c = inputs["completion_ids"].size(1)
    with torch.no_grad():
        lb = base(input_ids=ids, attention_mask=am).logits[:, -c - 1 : -1]
        lp = tr.model(input_ids=ids, attention_mask=am).logits[:, -c - 1 : -1]
    assert torch.isinf(lp[..., -N_PAD:]).all()
    expected = js64(lb, lp, 0.7)  # (B, C)
    mask = inputs["completion_mask"].bool()
    # the D this step's loss used (logged from the same pass; at loss time after the fallback)
    logged = tr._metrics["train"]["shift/js_mean"][-1]
    assert logged == pytest.approx(expected[mask].mean().item(), abs=5e-4)  # bf16 autocast of the full forward
    stats = tr._base_vs_policy(ids, am, inputs["completion_ids"], c, 4)
    assert torch.allclose(stats["div"].double()[mask], expected[mask], atol=5e-4, rtol=0)
    assert expected[mask].mean() < 0.1  # a real, small shift; the unmasked hidden-state D is far larger


# ------------------------------------------------------------------------------------------------
# 4. cast_lm_head_to_fp32: the base in the policy's precision
# ------------------------------------------------------------------------------------------------

def bf16_model(tokenizer, tied: bool):
    cfg = tiny_llama_config(tokenizer, hidden_size=16, num_layers=2, num_heads=2)
    cfg.tie_word_embeddings = tied
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


@pytest.mark.parametrize("how", ["tied-object", "tied-path", "untied-object", "untied-path"])
def test_fp32_head_base_is_initial_policy_exactly(how, tiny_tokenizer, prompts, tmp_path):
    """beta 0, cast_lm_head_to_fp32=True, a bf16 policy: step-0 D is exactly 0 and the base holds each weight in the
    policy's dtype (same bytes). On main (object): step-0 D max 2.1e-8 tied / 2.7e-8 untied; the tied base was
    float32 throughout (41,984 bytes vs the policy's 25,440), the untied one had a bf16 head (25,440 vs 29,888)."""
    tied = how.startswith("tied")
    model = bf16_model(tiny_tokenizer, tied)
    if how.endswith("path"):
        model.save_pretrained(tmp_path / "m")
        tiny_tokenizer.save_pretrained(tmp_path / "m")
        model = str(tmp_path / "m")
    tr = dw_trainer(model, tiny_tokenizer, prompts, tmp_path / "run", cast_lm_head_to_fp32=True,
                    model_init_kwargs={"dtype": "bfloat16"} if how.endswith("path") else None)
    base, policy = tr.base.model, tr.model
    assert tr.base.lm_head_fp32 and tr.base.dtype == torch.bfloat16
    assert policy.lm_head.weight.dtype == torch.float32 == base.lm_head.weight.dtype
    dtypes = lambda m: {n: p.dtype for n, p in m.named_parameters()}  # noqa: E731
    assert dtypes(base) == dtypes(policy)  # base memory == policy memory (no float32 copy of the backbone)
    nbytes = lambda m: sum(p.numel() * p.element_size() for p in m.parameters())  # noqa: E731
    assert nbytes(base) == nbytes(policy)
    ids, am, comp, _ = generated(tr, prompts)
    d = tr._base_vs_policy(ids, am, comp, comp.size(1), 4)["div"]
    assert torch.equal(d, torch.zeros_like(d)), d.abs().max()


def test_fp32_head_auto_scale_no_saturated_weights_at_step_2(tiny_tokenizer, prompts, tmp_path):
    """weighting_scale='auto': on main step 1's D was 7.5e-9 of rounding noise (shift/js_mean; this test failed there),
    which seeded D_ref, so step-2 weights saturated towards 1 + s/2 = 1.5. Now step 1's D is exactly 0, D_ref stays
    undefined (and the floor keeps noise out of it), and no step-2 weight saturates."""
    tr = dw_trainer(bf16_model(tiny_tokenizer, tied=False), tiny_tokenizer, prompts, tmp_path,
                    cast_lm_head_to_fp32=True)
    tr.train()
    logs = [h for h in tr.state.log_history if "shift/js_mean" in h]
    assert logs[0]["shift/js_mean"] == 0.0
    assert logs[1]["shift/weight_max"] < 1.0 + 0.5 - 1e-3


def test_scale_reference_ignores_numerical_noise():
    from train.weighting import SCALE_FLOOR, ScaleReference

    ref = ScaleReference(q=0.99, ema=0.1)
    assert ref.update(torch.full((100,), 2e-8)) is None  # rounding noise of a 16-bit base: no D_ref
    assert ref.update(torch.full((100,), SCALE_FLOOR)) is None  # the floor itself is still noise
    assert ref.update(torch.full((100,), 1e-3)) == pytest.approx(1e-3)  # a real shift seeds it
