"""Cross-sampling (co-decoding): decode with a primary model and take some tokens from another.

Meng et al. (arXiv 2603.22446) test causally whether RL's few high-divergence token choices carry
its accuracy: decode with a **primary** policy and, where a switching rule fires, sample the token
from the **intervention** policy instead,

    S_t   = rule(step t)  e.g. 1{ JS(π_prim(·|x<t) ‖ π_int(·|x<t)) > ε }      (diagnostics.switching)
    x_t  ~ π_mix = (1 − S_t)·π_prim(·|x<t) + S_t·π_int(·|x<t)

    forward  (sufficiency): primary = base, intervention = RL
    backward (necessity):   primary = RL,   intervention = base

How the engine works (`co_decode`):
- Both models share one tokenizer (checked: `diagnostics.models.check_same_vocabulary`). Prompts are left-padded;
  the attention mask hides the pads and position ids count only real tokens
  (`pos = cumsum(mask) − 1`), so a padded row computes exactly what it would alone.
- Each model keeps its own KV cache (`DynamicCache`); per step each model runs exactly one forward
  on the one new token (the first step is the prompt prefill). No step re-reads the prefix.
- Both next-token distributions are the *sampling* distributions: softmax(logits / temperature),
  top-p truncated and renormalised (`diagnostics.divergence.log_probs`, as in HF generation).
  JS and the entropies the rules see are computed on them. `temperature=0` means greedy (argmax
  of the chosen model's logits); JS/entropy then use temperature 1.
- Randomness is per sequence: sequence i has its own seed; its token draws come from the stream
  `torch.rand(max_new_tokens, generator=Generator().manual_seed(seed_i))` (`token_uniforms`) and
  are turned into tokens by inverse-CDF sampling (x_t = first v with CDF_v > u_t). So a
  sequence's tokens do not depend on batch size or on which other prompts share its batch
  (batched == unbatched), and two runs with different rules but the same seeds use the same
  random numbers (common random numbers: a threshold run and its pure-primary reference coincide
  up to the first switch). The `random` rule draws from a second per-sequence stream
  (`rule_uniforms`: the same generator's next max_new_tokens numbers), so switching decisions
  never shift the token stream.
- A sequence stops at EOS (later positions are pad, never switched, JS 0) or at
  `max_new_tokens`; the loop ends when every sequence has stopped.

Departures from the paper (its details are unpublished): the top-p used for JS is the sampling
top-p (the paper's shift analysis used 0.7); the fraction budget is enforced on every prefix
(see `diagnostics.switching`); the random-position control is ours.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from diagnostics.divergence import entropy, get_divergence, log_probs
from diagnostics.switching import SwitchContext, SwitchRule

def _streams(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two `(n,)` float32 U[0,1) streams of a sequence: token draws, then rule draws.

    One CPU generator per sequence: the first n numbers drive token sampling, the next n the
    switching rule. (torch's CPU generator keeps only the low 32 bits of a seed, so seeds that
    differ by a multiple of 2**32 give the same streams.)
    """
    g = torch.Generator().manual_seed(int(seed))
    tok = torch.rand(n, generator=g)
    return tok, torch.rand(n, generator=g)


def token_uniforms(seed: int, n: int) -> torch.Tensor:
    """`(n,)` float32 U[0,1): the token-sampling stream, `torch.rand(n, Generator().manual_seed(seed))`."""
    return _streams(seed, n)[0]


def rule_uniforms(seed: int, n: int) -> torch.Tensor:
    """`(n,)` float32 U[0,1): the switching-rule stream (the same generator's next n numbers)."""
    return _streams(seed, n)[1]


def sample_inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Draw one token per row from `probs (B, V)` using `u (B,)` in [0, 1).

    x = first index v with CDF_v > u · CDF_V  (searchsorted, right side), so a token with zero
    probability (top-p truncated) is never chosen. Exactly categorical: P(x = v) = p_v / Σp.
    """
    cdf = probs.cumsum(dim=-1)  # (B, V)
    target = (u.to(cdf) * cdf[:, -1]).unsqueeze(-1)  # (B, 1)
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1)  # (B,)
    # guard: u·total can round up to total; fall back to the last token that has mass
    vocab = probs.shape[-1]
    last_with_mass = vocab - 1 - (probs > 0).flip(-1).int().argmax(dim=-1)  # (B,)
    return torch.where(idx >= vocab, last_with_mass, idx)


def encode_prompts(tokenizer, prompts: Sequence, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded `(input_ids, attention_mask)`, both `(B, P)`, for plain strings or conversations.

    A conversation (list of {"role", "content"}) goes through the chat template with
    `add_generation_prompt=True`; the rendered text is tokenised without adding special tokens
    again (the template already has them), as TRL does.
    """
    texts = [p if isinstance(p, str) else
             tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True) for p in prompts]
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; left padding needs one. Fix: set tokenizer.pad_token "
                         "(e.g. to the eos token) before encoding prompts")
    enc = tokenizer(texts, padding=True, padding_side="left", add_special_tokens=False, return_tensors="pt")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


@dataclass
class CoDecodeResult:
    """Co-decoding output for B sequences, L = the longest generated length.

    Attributes:
        tokens: `(B, L)` long, generated tokens (EOS included), pad after EOS.
        switched: `(B, L)` bool, True where the token came from the intervention model.
        js: `(B, L)` float32, JS between the two sampling distributions at each step (0 after EOS).
        lengths: `(B,)` long, generated tokens per sequence (EOS included).
        seeds: the per-sequence seeds used.
    """

    tokens: torch.Tensor
    switched: torch.Tensor
    js: torch.Tensor
    lengths: torch.Tensor
    seeds: list[int]

    @property
    def num_switched(self) -> torch.Tensor:
        """`(B,)` long, switched tokens per sequence."""
        return self.switched.sum(dim=-1)

    @property
    def share_switched(self) -> torch.Tensor:
        """`(B,)` float, switched tokens / generated tokens per sequence."""
        return self.num_switched.float() / self.lengths.clamp_min(1).float()

    def records(self, tokenizer=None, eos_token_ids: Sequence[int] | None = None) -> list[dict]:
        """One dict per sequence: tokens, switched positions, counts, share, JS per step (and, with a
        tokenizer, `text` and `finished`: the last token is one of `eos_token_ids` (default: the
        tokenizer's EOS), i.e. the sequence ended on its own rather than at `max_new_tokens`; the
        reward gives a cut-off one no lenient fallback)."""
        out = []
        for i in range(self.tokens.shape[0]):
            n = int(self.lengths[i])
            toks = self.tokens[i, :n].tolist()
            rec = {
                "seed": self.seeds[i],
                "tokens": toks,
                "switched_positions": torch.nonzero(self.switched[i, :n]).flatten().tolist(),
                "num_switched": int(self.switched[i, :n].sum()),
                "num_tokens": n,
                "share_switched": float(self.switched[i, :n].sum()) / max(n, 1),
                "js": [round(float(v), 6) for v in self.js[i, :n]],
            }
            if tokenizer is not None:
                rec["text"] = tokenizer.decode(toks, skip_special_tokens=True)
                eos = set(eos_token_ids) if eos_token_ids is not None else (
                    {tokenizer.eos_token_id} if getattr(tokenizer, "eos_token_id", None) is not None else set())
                rec["finished"] = bool(toks) and toks[-1] in eos
            out.append(rec)
        return out


class _CachedLM:
    """One model + its own KV cache; `step(ids (B, S), mask (B, T), pos (B, S)) -> last logits (B, V)`."""

    def __init__(self, model):
        from transformers import DynamicCache

        self.model = model
        params = inspect.signature(model.forward).parameters
        # transformers >= 5.2x renamed `past_key_values` to `cache`; accept both
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.keep_last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.cache = DynamicCache(config=model.config)

    def step(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                         **{self.cache_kw: self.cache}, **self.keep_last)
        return out.logits[:, -1, :]  # (B, V)


@torch.no_grad()
def co_decode(
    primary,
    intervention,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    rule: SwitchRule,
    *,
    seeds: Sequence[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int = 0,
    divergence: str = "js",
) -> CoDecodeResult:
    """Co-decode B sequences with `primary` and `intervention`, switching where `rule` says.

    Args:
        primary, intervention: causal LMs sharing a tokenizer, on the same device, in eval mode.
        input_ids, attention_mask: `(B, P)` left-padded prompts (`encode_prompts`).
        rule: a `diagnostics.switching` rule, `rule(SwitchContext) -> (B,) bool`.
        seeds: B per-sequence seeds (token stream and rule stream, see module docstring).
        max_new_tokens: at most this many tokens per sequence (EOS included).
        temperature: sampling temperature; 0 = greedy.
        top_p: nucleus truncation of both sampling distributions (1 = none).
        eos_token_id: an id or ids that stop a sequence (pass `diagnostics.models.eos_token_ids(...)`, the
            generation config's and tokenizer's union); None: always run to max_new_tokens.
        pad_token_id: fills positions after EOS.
        divergence: the measure handed to the rule as `ctx.js` (default JS, the paper's).

    Returns:
        `CoDecodeResult`.
    """
    bsz, _ = input_ids.shape
    if len(seeds) != bsz:
        raise ValueError(f"need one seed per sequence: got {len(seeds)} seeds for {bsz} prompts")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    device = input_ids.device
    div_fn = get_divergence(divergence)
    eos_ids = None
    if eos_token_id is not None:
        ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        eos_ids = torch.tensor(ids, dtype=torch.long, device=device) if ids else None
    greedy = temperature == 0
    t_dist = 1.0 if greedy else temperature
    streams = [_streams(s, max_new_tokens) for s in seeds]
    u_tok = torch.stack([a for a, _ in streams]).to(device)  # (B, N)
    u_rule = torch.stack([b for _, b in streams]).to(device)  # (B, N)

    mask = attention_mask.to(device=device, dtype=torch.long)  # (B, P)
    pos = (mask.cumsum(-1) - 1).clamp_min(0)  # (B, P): real tokens 0..n-1, pads 0 (masked anyway)
    lm_p, lm_i = _CachedLM(primary), _CachedLM(intervention)
    logits_p = lm_p.step(input_ids, mask, pos)  # (B, V)  prefill = step 0's forward
    logits_i = lm_i.step(input_ids, mask, pos)  # (B, V)
    next_pos = pos[:, -1:] + 1  # (B, 1)

    tokens = torch.full((bsz, max_new_tokens), pad_token_id, dtype=torch.long, device=device)  # (B, N)
    switched = torch.zeros(bsz, max_new_tokens, dtype=torch.bool, device=device)  # (B, N)
    js_rec = torch.zeros(bsz, max_new_tokens, dtype=torch.float32, device=device)  # (B, N)
    active = torch.ones(bsz, dtype=torch.bool, device=device)  # (B,)
    num_switched = torch.zeros(bsz, dtype=torch.long, device=device)  # (B,)
    num_generated = torch.zeros(bsz, dtype=torch.long, device=device)  # (B,)
    steps = 0
    for t in range(max_new_tokens):
        lp_p = log_probs(logits_p, t_dist, top_p)  # (B, V) float32 sampling distribution
        lp_i = log_probs(logits_i, t_dist, top_p)  # (B, V)
        js = div_fn(lp_p, lp_i)  # (B,)
        ctx = SwitchContext(step=t, js=js, entropy_primary=entropy(lp_p), entropy_intervention=entropy(lp_i),
                            num_switched=num_switched, num_generated=num_generated, active=active,
                            uniform=u_rule[:, t])
        s_t = rule(ctx).to(torch.bool) & active  # (B,)
        if greedy:
            tok = torch.where(s_t, logits_i.argmax(-1), logits_p.argmax(-1))  # (B,)
        else:
            # π_mix = (1 − S_t)·π_prim + S_t·π_int with S_t ∈ {0, 1}: the chosen model's distribution
            probs = torch.where(s_t.unsqueeze(-1), lp_i.exp(), lp_p.exp())  # (B, V)
            tok = sample_inverse_cdf(probs, u_tok[:, t])  # (B,)
        tok = torch.where(active, tok, torch.full_like(tok, pad_token_id))
        tokens[:, t] = tok
        switched[:, t] = s_t
        js_rec[:, t] = torch.where(active, js, torch.zeros_like(js))
        num_switched += s_t.long()
        num_generated += active.long()
        if eos_ids is not None:
            active = active & ~torch.isin(tok, eos_ids)
        steps = t + 1
        if t == max_new_tokens - 1 or not bool(active.any()):
            break
        mask = torch.cat([mask, torch.ones(bsz, 1, dtype=mask.dtype, device=device)], dim=-1)  # (B, P+t+1)
        ids = tok.unsqueeze(-1)  # (B, 1)
        logits_p = lm_p.step(ids, mask, next_pos)  # (B, V)
        logits_i = lm_i.step(ids, mask, next_pos)  # (B, V)
        next_pos = next_pos + 1
    return CoDecodeResult(tokens=tokens[:, :steps], switched=switched[:, :steps], js=js_rec[:, :steps],
                          lengths=num_generated, seeds=[int(s) for s in seeds])
