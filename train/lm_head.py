"""The completion tokens' logits of one model, one row chunk at a time, and the check that they are right.

    rows, head = completion_logit_rows(model, input_ids, attention_mask, c, hidden_path=True)
    with maybe_gather_lm_head_ctx(*head): logits = rows(slice(0, 256))      # (256, V)

Two ways to get the `(mb·C, V)` logits that predict a micro-batch's C completion tokens:

- **hidden-state path** (`hidden_path=True`): run the backbone only, keep its `(mb, C, H)` last hidden
  states, and project row chunks through the LM head ourselves (`hidden_rows`): never a `(mb, C, V)`
  tensor, and the policy's hidden states can be the ones TRL's own loss forward computed anyway. Exact
  only where logits are `hidden @ W^T + b`.
- **full forward**: the model's own forward with `logits_to_keep = C + 1`, one `(mb, C, V)` tensor.

`uses_hidden_path` refuses the hidden path for FSDP (root parameters are sharded outside the root forward)
and for configs known to transform logits (`LOGIT_TRANSFORMS`: soft-capping, scaling). A family that
transforms them in its forward without such an attribute, or masks vocabulary rows to -inf (padded
embedding rows, constrained vocabularies), is caught by `hidden_logits_mismatch`, run once per run on the
first batch: the trainer then switches to full forwards, which see the model's own (masked) logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from accelerate.utils import is_peft_model
from peft import PeftModel
from transformers import PreTrainedModel

# config attributes that make the logits differ from `hidden @ W_head^T`: such models use the
# (slower, more memory) full-forward path instead of the hidden-state path.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                    "logits_scaling")
# relative tolerance of the hidden-state logits vs the model's forward: float32 and 16-bit models
MISMATCH_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-4}
MISMATCH_TOLERANCE_16BIT = 2e-2

FALLBACK_WARNING = (
    "the hidden-state logits (hidden @ W^T + b) differ from the model's own forward for the {where}: its forward "
    "transforms or masks logits in a way LOGIT_TRANSFORMS (train/lm_head.py) does not list. Falling back to full "
    "forwards for the divergence (exact, more memory); add the config attribute to LOGIT_TRANSFORMS to make this "
    "explicit."
)
RowFn = Callable[..., torch.Tensor]  # rows(slice, out=None) -> (c, V) logits (written into `out` if given)


def core_model(module):
    """The bare transformers model under DDP / DeepSpeed / PEFT wrappers."""
    # (accelerate's is_peft_model looks through DDP, so test the class itself while unwrapping)
    while not isinstance(module, (PreTrainedModel, PeftModel)) and hasattr(module, "module"):
        module = module.module  # DDP, DeepSpeedEngine
    if is_peft_model(module):
        module = module.get_base_model()
    return module


def uses_hidden_path(module, *, fsdp: bool = False) -> bool:
    """Whether `module`'s logits may be computed as `hidden @ W^T + b` (no FSDP, no known logit transform)."""
    if fsdp:
        return False
    cfg = core_model(module).config.get_text_config()
    return all(getattr(cfg, name, None) in (None, 1.0) for name in LOGIT_TRANSFORMS)


def hidden_rows(core, last_hidden: torch.Tensor, c: int) -> tuple[RowFn, tuple]:
    """`(rows, head_params)` from the backbone's `(mb, L, H)` last hidden states, through `core`'s LM head.

    Position t's logits come from the hidden state at t − 1, so the completion's C tokens use hidden states
    [−C−1, −1). Rows index the flattened `(mb · C)` completion positions; the head's weight dtype sets the
    matmul's (float32 with `cast_lm_head_to_fp32`, as the head's own forward). `head_params`: the LM-head
    parameters to gather (ZeRO-3) while `rows` is used.
    """
    hidden = last_hidden[:, -c - 1 : -1]  # (mb, C, H)
    flat = hidden.reshape(-1, hidden.size(-1))  # (mb·C, H)
    head = core.get_output_embeddings()

    def rows(sl, out=None):
        x = flat[sl].to(head.weight.dtype)  # (c, H)
        if out is not None and out.dtype == x.dtype:  # straight into the caller's buffer
            if head.bias is None:
                return torch.mm(x, head.weight.t(), out=out)
            return torch.addmm(head.bias, x, head.weight.t(), out=out)
        logits = F.linear(x, head.weight, head.bias)  # (c, V)
        return logits if out is None else out.copy_(logits)

    return rows, (head.weight, head.bias)


def completion_logit_rows(module, input_ids, attention_mask, c: int, *, hidden_path: bool,
                          autocast=None) -> tuple[RowFn, tuple]:
    """`(rows, head_params)` for one micro-batch: `rows(slice, out=None) -> (c, V)` logits predicting its
    completion tokens (hidden-state path, or one `(mb, C, V)` full forward), see the module docstring.
    `autocast`: a context factory (e.g. `accelerator.autocast`) around the forward."""
    ctx = autocast() if autocast is not None else torch.autocast(input_ids.device.type, enabled=False)
    if hidden_path:
        core = core_model(module)
        with ctx:
            hidden = core.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return hidden_rows(core, hidden.last_hidden_state, c)
    with ctx:
        logits = module(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=c + 1,
                        use_cache=False).logits[:, :-1]  # (mb, C, V) model dtype
    flat = logits.reshape(-1, logits.size(-1))  # (mb·C, V)
    return (lambda sl, out=None: flat[sl] if out is None else out.copy_(flat[sl])), ()


def logits_mismatch(mine: torch.Tensor, reference: torch.Tensor) -> float:
    """Relative difference `max |mine − ref| / max |ref|` on the finite support of two `(N, V)` logits tensors.

    +inf when they disagree on which entries are non-finite (e.g. the model's forward masks padded vocabulary
    rows to −inf and `hidden @ W^T` does not): the distributions then differ in support, not by rounding.
    NaN anywhere is a mismatch too. 0 for two empty tensors.
    """
    a, b = mine.float(), reference.float()
    fa, fb = torch.isfinite(a), torch.isfinite(b)
    if not torch.equal(fa, fb) or torch.isnan(a).any() or torch.isnan(b).any():
        return float("inf")
    if not torch.equal(a[~fa], b[~fb]):  # +inf vs -inf at the same position
        return float("inf")
    if not bool(fa.any()):
        return 0.0
    scale = b[fb].abs().max().clamp_min(1e-30)
    return ((a[fa] - b[fb]).abs().max() / scale).item()


def tolerance(dtype: torch.dtype) -> float:
    """`logits_mismatch` tolerance for a model computing its logits in `dtype` (1e-4 float32, 2e-2 16-bit)."""
    return MISMATCH_TOLERANCE.get(dtype, MISMATCH_TOLERANCE_16BIT)


@torch.no_grad()
def hidden_logits_mismatch(module, input_ids, attention_mask, c: int, *, context=None,
                           no_checkpointing=None) -> str | None:
    """Do `module`'s hidden-state logits equal its own forward's on `input_ids` (e.g. one sequence)? Returns None
    if they do, else a one-line description (class, relative difference, tolerance).

    Both run in the model's own precision, without mixed-precision autocast (which would run the full forward's
    LM head in 16 bits), dropout off. `context`: entered around both forwards (PEFT: the base adapter);
    `no_checkpointing`: a context factory disabling gradient checkpointing (TRL's `disable_gradient_checkpointing`).
    """
    from contextlib import nullcontext

    from trl.trainer.utils import maybe_gather_lm_head_ctx

    core = core_model(module)
    was_training = core.training
    core.train(False)
    no_autocast = torch.autocast(device_type=input_ids.device.type, enabled=False)
    try:
        with (context or nullcontext()), no_autocast, (no_checkpointing() if no_checkpointing else nullcontext()):
            # the class's forward, not accelerate's autocast-patched attribute
            full = type(core).forward(core, input_ids=input_ids, attention_mask=attention_mask,
                                      logits_to_keep=c + 1, use_cache=False).logits[:, :-1]  # (n, C, V)
            hidden = core.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            rows, head = hidden_rows(core, hidden.last_hidden_state, c)
            with maybe_gather_lm_head_ctx(*head):
                mine = rows(slice(0, full.size(0) * c))  # (n·C, V)
    finally:
        core.train(was_training)
    rel = logits_mismatch(mine, full.reshape(-1, full.size(-1)))
    tol = tolerance(full.dtype)
    if rel <= tol:
        return None
    what = "different -inf/non-finite entries" if rel == float("inf") else f"relative difference {rel:.2e} > {tol:g}"
    return f"{type(core).__name__}: {what}"


__all__ = ["FALLBACK_WARNING", "LOGIT_TRANSFORMS", "completion_logit_rows", "core_model", "hidden_logits_mismatch", "hidden_rows",
           "logits_mismatch", "tolerance", "uses_hidden_path"]
