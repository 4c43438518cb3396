"""What the base model is: one decision, made once per run, that everything else asks.

    base = build_base(trainer, model_arg, initial_copy)      # DivergenceWeightedGRPOTrainer.__init__ does this
    with base.context(): logits = base.module(input_ids=...).logits

The base D is measured against is **the policy's initial weights, in the policy's precision**, for every
`beta` and with or without PEFT (Meng et al., arXiv 2603.22446, measure the shift from the model RL
started from):

- `base_model_name_or_path` set: that model, loaded through `diagnostics.models.load_model`;
- else `beta > 0`: TRL's reference model (already the initial weights, frozen and prepared by TRL);
- else PEFT: the policy itself with its *initial* adapter: adapter disabled when the adapter starts as a
  no-op (LoRA's default B = 0), else a frozen copy of the initial adapter named "ref" (`keep_initial_adapter`,
  as TRL makes for `beta > 0`), activated by `BaseModel.context()`;
- else a copy of the policy's initial weights (a deep copy of a model passed as an object, taken before TRL
  touches it; a second load of a model passed as a path).

Precision: the policy's backbone dtype (`backbone_dtype`, not the LM head's: `cast_lm_head_to_fp32=True`
casts only the head to float32), then the same fp32 head cast the policy got (`cast_lm_head_to_fp32`, TRL's
semantics: with tied embeddings the shared weight is float32 and the embedding output is cast back), so
base and initial policy compute bit-identical logits and D is exactly 0 at step 0. With tied embeddings the
base therefore holds the same float32 embedding as the policy, not a whole float32 model.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from accelerate.utils import is_peft_model
from trl.models import prepare_deepspeed, prepare_fsdp
from trl.trainer.utils import disable_dropout_in_model, use_adapter

from diagnostics.models import check_same_vocabulary, load_model


@dataclass
class BaseModel:
    """The answer to "what is the base" (`DivergenceWeightedGRPOTrainer.base`).

    Attributes:
        model: the frozen base `nn.Module` (prepared like TRL's reference model), or the policy itself when
            `adapter_context` is set (PEFT: no second copy).
        adapter: PEFT only: None = the policy with adapters disabled, "ref" = the frozen initial-adapter copy;
            meaningful only when `is_policy_adapter`.
        is_policy_adapter: the base is the (PEFT) policy with `adapter` active instead of its trained one.
        dtype: the base's backbone precision (the policy's unless `base_model_dtype` says otherwise).
        lm_head_fp32: the LM head was cast to float32 (`cast_lm_head_to_fp32=True`, as the policy's).
        source: a human-readable description, for error messages and logs.
    """

    model: torch.nn.Module
    dtype: torch.dtype
    lm_head_fp32: bool = False
    is_policy_adapter: bool = False
    adapter: str | None = None
    source: str = ""

    def context(self):
        """Inside, `self.model`'s forward is the base (PEFT: the initial adapter active); a no-op otherwise."""
        if not self.is_policy_adapter:
            return nullcontext()
        return _adapter_ctx(self.model, self.adapter)

    def analysis_module(self) -> torch.nn.Module:
        """A module whose forward is the base, for code that only calls `model(input_ids=..., ...)` (the probe
        callback, `diagnostics.shift.analyze`): `self.model` itself, or (PEFT) a view of the policy that runs
        each forward inside `context()`; no second copy of the weights either way."""
        return _AdapterView(self) if self.is_policy_adapter else self.model


class _AdapterView(torch.nn.Module):
    """The PEFT policy seen as its base: every forward runs with the base adapter (`BaseModel.context`)."""

    def __init__(self, base: BaseModel):
        super().__init__()
        self.policy = base.model
        self._base = base

    def forward(self, *args, **kwargs):
        with self._base.context():
            return self.policy(*args, **kwargs)

    def get_output_embeddings(self):
        from train.lm_head import core_model

        return core_model(self.policy).get_output_embeddings()

    @property
    def config(self):
        from train.lm_head import core_model

        return core_model(self.policy).config


@contextmanager
def _adapter_ctx(policy, adapter):
    from accelerate.utils import extract_model_from_parallel

    peft_model = extract_model_from_parallel(policy)
    with use_adapter(peft_model, adapter_name=adapter):
        yield


def backbone_dtype(model: torch.nn.Module) -> torch.dtype:
    """The model's precision, ignoring its input/output embeddings (`cast_lm_head_to_fp32` makes them float32
    while every other weight stays 16-bit): the dtype holding most floating-point elements of the rest."""
    skip = set()
    for get in ("get_output_embeddings", "get_input_embeddings"):
        emb = getattr(model, get, lambda: None)()
        if emb is not None:
            skip.update(id(p) for p in emb.parameters())
    counts: Counter = Counter()
    for p in model.parameters():
        if p.is_floating_point() and id(p) not in skip:
            counts[p.dtype] += p.numel() or 1  # ZeRO-3 partitioned parameters have numel 0 here
    if not counts:
        return next(p.dtype for p in model.parameters() if p.is_floating_point())
    return counts.most_common(1)[0][0]


def cast_lm_head_to_fp32(model: torch.nn.Module) -> None:
    """TRL's `cast_lm_head_to_fp32=True` (trl `GRPOTrainer.__init__`), for a model TRL does not cast itself.

    The LM head's weights become float32 and its forward computes `fp32(hidden) @ W^T (+ b)`; with tied word
    embeddings the shared weight is float32 too and the embedding's output is cast back to the original dtype,
    so the rest of the network runs exactly as in the policy.
    """
    head = model.get_output_embeddings()
    original = head.weight.dtype
    head.float()

    def fp32_forward(hidden_states):
        return torch.nn.functional.linear(hidden_states.to(torch.float32), head.weight.to(torch.float32),
                                          None if head.bias is None else head.bias.to(torch.float32))

    head.forward = fp32_forward
    if getattr(model.config, "tie_word_embeddings", False) and original != torch.float32:
        model.get_input_embeddings().register_forward_hook(lambda module, args, output: output.to(original))


def keep_initial_adapter(peft_model) -> str | None:
    """Make the PEFT base the policy's *initial* weights, whatever its adapter starts as. Returns the adapter
    `BaseModel.context()` activates: None (adapters disabled) or "ref".

    With the adapter disabled the model is the pretrained backbone, which equals the initial policy only when
    the adapter starts as a no-op (LoRA's default zero B). A policy that arrives with a trained (or randomly
    initialised, `init_lora_weights=False`) adapter gets a frozen copy of it named "ref", as TRL does for
    `beta > 0`; TRL's KL reference uses the same "ref" adapter, so base and reference agree for every beta.
    """
    if "ref" in peft_model.peft_config:
        return "ref"  # TRL already made the copy (beta > 0 with a PEFT model passed in)
    lora_b = [p for n, p in peft_model.named_parameters() if ".default." in n and "lora_B" in n]
    others = [n for n, p in peft_model.named_parameters() if ".default." in n and "lora_" not in n]
    if lora_b and not others and all(not p.detach().any() for p in lora_b):
        return None  # LoRA with B = 0: the adapter-disabled model is exactly the initial policy, no copy needed
    peft_model.add_adapter("ref", peft_model.peft_config["default"])
    for name, param in peft_model.named_parameters():
        if ".default." in name:
            ref = peft_model.get_parameter(name.replace(".default.", ".ref."))
            ref.data.copy_(param.data)
            ref.requires_grad_(False)
    peft_model.set_adapter("default")  # train the policy's adapter, not the copy
    return "ref"


def load_base(path: str, dtype: torch.dtype | str, args, accelerator):
    """The base through the project's one loader (`diagnostics.models.load_model`), with TRL's model kwargs."""
    kwargs = dict(args.model_init_kwargs or {})
    kwargs.pop("quantization_config", None)
    kwargs.pop("dtype", None)
    if args.distributed_state.distributed_type in ("MULTI_GPU", "DEEPSPEED"):
        kwargs["device_map"] = None
    # as TRL's create_model_from_path: no device_map on CPU (the accelerator places the model)
    kwargs.setdefault("device_map", None if accelerator.device.type in ("cpu", "mps") else "auto")
    kwargs.setdefault("trust_remote_code", args.trust_remote_code)
    return load_model(path, dtype=dtype, device=None, flag="base_model_name_or_path", **kwargs)


def build_base(trainer, model_arg, initial_copy) -> BaseModel:
    """Decide and build the base for `trainer` (a `DivergenceWeightedGRPOTrainer` after TRL's `__init__`).

    Args:
        model_arg: the `model` the trainer was given (a path or an `nn.Module`).
        initial_copy: a deep copy of a model passed as an object, taken before TRL's `__init__`, or None.

    Raises:
        ValueError: the base's vocabulary differs from the policy's (both sizes named).
    """
    args, acc = trainer.args, trainer.accelerator
    policy = acc.unwrap_model(trainer.model)
    fp32_head = bool(getattr(args, "cast_lm_head_to_fp32", False))
    policy_dtype = backbone_dtype(policy)
    dtype = {"policy": policy_dtype, "auto": "auto"}.get(args.base_model_dtype) or getattr(torch, args.base_model_dtype)
    if args.base_model_name_or_path is None and args.beta != 0.0 and trainer.ref_model is not None:
        # TRL's reference model: the initial weights, frozen, prepared and head-cast by TRL itself
        return BaseModel(trainer.ref_model, backbone_dtype(acc.unwrap_model(trainer.ref_model)), fp32_head,
                         source="TRL's reference model")
    if args.base_model_name_or_path is None and is_peft_model(policy):
        adapter = keep_initial_adapter(policy)
        return BaseModel(trainer.model, policy_dtype, fp32_head, is_policy_adapter=True, adapter=adapter,
                         source="the policy's initial adapter" if adapter else "the adapter-disabled policy")
    if args.base_model_name_or_path is not None:
        base, source = load_base(args.base_model_name_or_path, dtype, args, acc), args.base_model_name_or_path
    elif initial_copy is not None:
        base, source = initial_copy, "the policy's initial weights"
        if dtype != "auto":
            base = base.to(dtype)
    else:  # the policy was given as a path: load its initial weights again
        path = model_arg if isinstance(model_arg, str) else policy.config._name_or_path
        base, source = load_base(path, dtype, args, acc), "the policy's initial weights"
    if fp32_head:  # the policy's head precision too: the base computes the initial policy's logits exactly
        cast_lm_head_to_fp32(base)
    tok = trainer.processing_class
    check_same_vocabulary(tok, tok, base, policy, policy_name="policy",
                          base_name=(f"base_model_name_or_path={args.base_model_name_or_path}"
                                     if args.base_model_name_or_path else source))
    base.eval()
    base.requires_grad_(False)
    if args.disable_dropout:
        disable_dropout_in_model(base)
    if trainer.is_deepspeed_enabled:
        base = prepare_deepspeed(base, acc)
    elif trainer.is_fsdp_enabled:
        base = prepare_fsdp(base, acc)
    else:
        base = acc.prepare_model(base, evaluation_mode=True)
    return BaseModel(base, backbone_dtype(acc.unwrap_model(base)), fp32_head, source=source)


__all__ = ["BaseModel", "backbone_dtype", "build_base", "cast_lm_head_to_fp32", "keep_initial_adapter", "load_base"]
