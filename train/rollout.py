"""Rollouts on CPU in bf16: a bf16 copy of the policy generates, the fp32 policy trains under bf16 autocast.

    sparse-rlvr grpo --config train/recipes/smollm2_chain_sum_grpo.yaml        # bf16: true in the recipe
    python bench/bench_rollout.py --model outputs/real-world/model            # the measured speed-ups

Why (issue 19): HF `generate` in fp32 reaches ~35-80 tokens/s on this 2-core CPU (SmolLM2-135M),
which has AVX-512 and AMX with bf16. With `bf16=True` on CPU, transformers/accelerate wrap the
policy's forward in `torch.autocast("cpu", torch.bfloat16)`: the loss forward/backward runs its
matmuls in bf16 on fp32 master weights. TRL's regular (non-vLLM) generation calls that same
forward once per new token, and autocast re-casts every weight matrix on every call (its cast cache
lives only inside one autocast region), so decoding pays a full fp32 -> bf16 weight copy per token.
`BF16Rollout` keeps a second, pure-bf16 copy of the policy for generation only, re-synced from the
fp32 weights once per optimizer step (one `load_state_dict`, ~0.1-0.3 s for 135M parameters).

What changes for the algorithm: the completions are sampled from the bf16 copy, while the loss (and
`old_per_token_logps`, the divergence D and `shift/*`) are computed by the trained policy under
autocast; the two differ by bf16 rounding (issue 19 measured per-token |Δlogp| autocast vs fp32:
mean 0.028, max 0.23). That is the same slight off-policy-ness as TRL's vLLM path without
importance-sampling correction. Nothing else in the trainer changes. (The trainer already runs the
base's divergence forward under the same autocast, so `shift/*` compares like with like: the JS of
the bf16-rounded weights. bench/bench_rollout.py shows its size: after one step at lr 1e-6,
`shift/js_mean` 0.0028 in bf16 vs 0.000008 in fp32, as small updates flip weights across bf16 steps.)

When it is used (`maybe_bf16_rollout`): `bf16=True`, the policy on CPU in fp32, one process, no vLLM, no
continuous batching, no PEFT adapter (an adapter would need merging into the copy), no
`cast_lm_head_to_fp32` (TRL keeps its fp32 head consistent with a forward patch the copy lacks). Elsewhere TRL's
own path runs unchanged. Used by `DivergenceWeightedGRPOTrainer` through three marked lines
(train/trainer.py, "issue 19").
"""

from __future__ import annotations

import contextlib
import logging

import torch

logger = logging.getLogger(__name__)


class BF16Rollout:
    """A pure-bf16 copy of `model` for generation, synced from it when the optimizer step changes.

    Args:
        model: the (unwrapped) policy, a `PreTrainedModel` in fp32.
    """

    def __init__(self, model):
        # A fresh model from the config, not copy.deepcopy: accelerate patches the policy's `forward`
        # with an autocast closure that would still point at the original model in a deep copy.
        self.copy = type(model)(model.config).to(torch.bfloat16).eval()
        self.copy.generation_config = model.generation_config
        self.synced_step: int | None = None
        self.num_syncs = 0
        for p in self.copy.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def sync(self, model, step: int) -> None:
        """Copy `model`'s weights into the bf16 copy (cast on copy) unless already done at `step`."""
        if step == self.synced_step:
            return
        self.copy.load_state_dict(model.state_dict(), strict=True)
        self.copy.tie_weights()
        self.synced_step = step
        self.num_syncs += 1

    @contextlib.contextmanager
    def generating(self, trainer):
        """While TRL generates, `trainer.model_wrapped` is the synced bf16 copy (restored afterwards)."""
        policy = trainer.accelerator.unwrap_model(trainer.model)
        self.sync(policy, trainer.state.global_step)
        wrapped = trainer.model_wrapped
        trainer.model_wrapped = self.copy
        try:
            yield self.copy
        finally:
            trainer.model_wrapped = wrapped


def maybe_bf16_rollout(trainer) -> BF16Rollout | None:
    """A `BF16Rollout` for `trainer` when the bf16 CPU path applies (module docstring), else None."""
    args = trainer.args
    if not getattr(args, "bf16", False) or getattr(trainer, "use_vllm", False):
        return None
    if getattr(trainer, "use_transformers_continuous_batching", False) or trainer.accelerator.num_processes != 1:
        return None
    policy = trainer.accelerator.unwrap_model(trainer.model)
    params = list(policy.parameters())
    if params[0].device.type != "cpu" or getattr(policy, "peft_config", None):
        return None
    # fp32 master weights only: a policy already (partly) in bf16 generates in bf16 itself. With TRL's
    # `cast_lm_head_to_fp32` the head (and, when tied, the embedding) is fp32 inside a bf16 model, kept
    # consistent by TRL's own forward patch, which a fresh copy would not have: TRL's path runs unchanged.
    if any(p.dtype != torch.float32 for p in params if p.is_floating_point()) or getattr(args, "cast_lm_head_to_fp32",
                                                                                       False):
        return None
    rollout = BF16Rollout(policy)
    logger.info("bf16 CPU rollouts: a bf16 copy of the policy generates, the fp32 policy trains under autocast "
                "(train/rollout.py)")
    return rollout
