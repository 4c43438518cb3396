"""The tiny world's tokenizer and model architecture (built locally, nothing downloads).

Tokenizer: a BPE trained on the task's own text. Every non-letter character (digits, operators,
braces, spaces) is its own pre-token, so each digit is a single token; merges happen only inside
letter runs ("Compute", "boxed"). Chat template with system/user/assistant turns, eos
`<|endoftext|>` closing every assistant turn, pad `<|pad|>`. Saved as a plain `tokenizers` backend
(`tokenizer_class: TokenizersBackend`), so `AutoTokenizer.from_pretrained` reproduces the ids
exactly (transformers 5 would otherwise rebuild e.g. a Qwen2 tokenizer with its own pre-tokenizer).

Model: a Llama config (RMSNorm, RoPE, SwiGLU), tied embeddings, a few hundred thousand to a few
million parameters.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

SPECIAL_TOKENS = ["<|pad|>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|unk|>"]
PAD, EOS, UNK = "<|pad|>", "<|endoftext|>", "<|unk|>"

# <|role|>content ... ; assistant turns end with eos. Rendering a prompt with
# add_generation_prompt=True is a strict prefix of rendering prompt + completion (TRL relies on it).
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}<|endoftext|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 160):
    """Train the tiny world's tokenizer on `corpus`; returns a transformers fast tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[A-Za-z]+|[^A-Za-z]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    alphabet = [c for c in string.printable if c not in "\t\r\x0b\x0c"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(list(corpus), trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK)
    hf.chat_template = CHAT_TEMPLATE
    hf.padding_side = "left"
    return hf


def default_corpus(n: int = 2000, seed: int = 0) -> list[str]:
    """Problems, solutions (with and without slips) and a system prompt: the tokenizer's corpus."""
    import random

    from rewards.tiny_task import generate_problems, sample_slip, solution_text

    rng = random.Random(seed)
    texts = ["You are a careful calculator. Put the final answer in \\boxed{}."]
    for p in generate_problems("train", n, seed):
        texts += [p.text, solution_text(p), solution_text(p, sample_slip(p, rng))]
    return texts


def tiny_llama_config(tokenizer, hidden_size: int = 128, num_layers: int = 4, num_heads: int = 4,
                      intermediate_size: int | None = None, max_position_embeddings: int = 256):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )


def random_tiny_model(tokenizer, seed: int = 0, **config_kwargs):
    """A randomly initialised tiny Llama for unit tests (hidden 8–32, seconds to build)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(tokenizer, **config_kwargs))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
