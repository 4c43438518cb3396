"""train.base_model: precision and LM-head cast of the base, and the PEFT initial-adapter copy."""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM

from train.base_model import backbone_dtype, cast_lm_head_to_fp32, keep_initial_adapter
from train.tiny_world import tiny_llama_config


def _bf16(tokenizer, tied):
    cfg = tiny_llama_config(tokenizer, hidden_size=16, num_layers=2, num_heads=2)
    cfg.tie_word_embeddings = tied
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(torch.bfloat16).eval()


def test_backbone_dtype_ignores_an_fp32_head(tiny_tokenizer):
    for tied in (True, False):
        model = _bf16(tiny_tokenizer, tied)
        cast_lm_head_to_fp32(model)
        assert model.lm_head.weight.dtype == torch.float32
        assert backbone_dtype(model) == torch.bfloat16  # model.dtype would say float32 when tied (embeddings first)
        assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
        ids = torch.tensor([[5, 6, 7]])
        with torch.no_grad():
            out = model(input_ids=ids)
            hidden = model.model(input_ids=ids).last_hidden_state
        assert out.logits.dtype == torch.float32
        assert hidden.dtype == torch.bfloat16  # tied: the float32 embedding's output is cast back
        # the head's forward is fp32(hidden) @ W^T: what the hidden-state path computes
        assert torch.equal(out.logits, hidden.float() @ model.lm_head.weight.t())


def test_keep_initial_adapter(tiny_tokenizer):
    from peft import LoraConfig, get_peft_model

    cfg = tiny_llama_config(tiny_tokenizer, hidden_size=16, num_layers=2, num_heads=2)
    zero = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=2, target_modules=["q_proj"]))
    assert keep_initial_adapter(zero) is None and "ref" not in zero.peft_config  # B = 0: no copy needed
    torch.manual_seed(0)
    live = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    assert keep_initial_adapter(live) == "ref"
    for name, p in live.named_parameters():
        if ".ref." in name:
            assert not p.requires_grad
            assert torch.equal(p, live.get_parameter(name.replace(".ref.", ".default.")))
    assert live.active_adapter == "default"
