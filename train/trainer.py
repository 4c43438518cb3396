"""`DivergenceWeightedGRPOTrainer`: GRPO whose advantage is weighted per token by a divergence.

    Ã_{i,t} = w(D_{i,t}) · Â_i          (Meng et al., "Sparse but Critical", arXiv 2603.22446, §3)

`Â_i` is TRL's group-normalised advantage of completion i, `D_{i,t}` a detached per-token divergence
and `w` a function from `train/weighting.py`. TRL's loss already accepts a `(B, T)` advantage
(`_compute_loss` unsqueezes only 1-D advantages) and `shuffle_sequence_dict` / `split_tensor_dict`
permute and split every tensor along dim 0, so a `(B, T)` advantage survives the generation buffer.
TRL's loss is never copied.

Run it through the entry point (`train/grpo.py`) or directly:

    trainer = DivergenceWeightedGRPOTrainer(model="path/to/base", reward_funcs=[...],
                                            args=DivergenceGRPOConfig(...), train_dataset=ds)
    trainer.train()

Where this departs from the paper (see docs/trainer.md):
- The default D is the full-vocabulary JS divergence between the frozen *base* model and the policy
  that generated the batch (teacher-forced on prompt + completion); the paper's own D (k3 estimate of
  KL(π_old ‖ π_θ) on the sampled token) is `divergence_source="old"`.
- s and α of the sigmoid weight are not published; defaults s = 1, α = 10 are ours.
- Quantile-based weights (`top_quantile`, `random_quantile`) rank tokens within each process's
  generation batch, not across processes.
"""

from __future__ import annotations

from train import check_trl_version

check_trl_version()  # before importing TRL internals: this module overrides private GRPOTrainer methods

import copy  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import warnings  # noqa: E402
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import is_peft_model
from peft import PeftModel
from transformers import PreTrainedModel, ProcessorMixin
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from trl import GRPOTrainer
from trl.models import prepare_deepspeed, prepare_fsdp
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import disable_dropout_in_model, maybe_gather_lm_head_ctx, use_adapter

from diagnostics.divergence import DIVERGENCE_REGISTRY, get_sampled_estimator, pair_rows
from diagnostics.models import check_same_vocabulary, load_model
from diagnostics.shift_stats import DEFAULT_HIGH_THRESHOLD, shift_stats
from train.config import UNSUPPORTED_LOSS_TYPES, DivergenceGRPOConfig
from train.rollout import maybe_bf16_rollout  # issue 19: bf16 CPU rollouts
from train.weighting import TOKEN_LOCAL_WEIGHTINGS, ScaleReference, compute_weights

# config attributes that make the logits differ from `hidden @ W_head^T`: such models use the
# (slower, more memory) full-forward path instead of the hidden-state path.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                     "logits_scaling")
WEIGHTING_STATE_NAME = "divergence_weighting_state.json"  # in every checkpoint-* folder


class DivergenceWeightedGRPOTrainer(GRPOTrainer):
    """`trl.GRPOTrainer` with per-token advantages `w(D_t) · Â_i`. What it changes, and nothing else:

    - `__init__`: validates the config (a `DivergenceGRPOConfig`), then loads and freezes the base model
      even when `beta == 0`, in the policy's dtype: `base_model_name_or_path` if set; else TRL's
      reference model when `beta > 0`; else, with PEFT, the policy with its initial adapter (the
      adapter-disabled model when the adapter starts as a no-op, else a frozen "ref" copy of the initial
      adapter, as TRL's beta > 0 reference); else a copy of the policy's initial weights. In every case
      the base is the policy's initial weights. Prepared for DeepSpeed / FSDP like TRL's reference
      model. A base whose vocabulary differs from the policy's is an error naming both sizes.
    - D for source `base` (a detached `(B, T)` divergence base vs policy on every completion token,
      replacing `advantages` by the weighted `(B, T)` tensor, and `shift/*` metrics) is computed where it
      costs least and stays exact (see `_reuse_loss_forward`):
      * at loss time (default): `_compute_loss` hooks the policy backbone, so the hidden states of TRL's
        own loss forward are captured, and `_get_per_token_logps_and_entropies` (wrapped) runs only the
        base forward, then rescales the advantages in a copy of the inputs before TRL's loss reads them;
      * otherwise in `_generate_and_score_completions`, after TRL's, with a no-grad policy forward.
    - Source `old`: the same wrappers capture the current per-token log-probs at loss time and compute
      D = k3(π_old ‖ π_θ) on the sampled token. No extra forward pass.
    No copy of TRL's loss: `_compute_loss` reads `inputs["advantages"]` only after its single
    `_get_per_token_logps_and_entropies` call (checked at run time: a TRL that skips it is an error).
    """

    _tag_names = ["trl", "grpo", "divergence-weighted"]

    def __init__(self, model, reward_funcs=None, args: DivergenceGRPOConfig | None = None, *pargs, **kwargs):
        if args is None:
            raise ValueError("DivergenceWeightedGRPOTrainer needs args=DivergenceGRPOConfig(...); got None.")
        if not isinstance(args, DivergenceGRPOConfig):
            raise TypeError(
                f"args must be a DivergenceGRPOConfig (train.config), got {type(args).__name__}; build it with "
                "DivergenceGRPOConfig(**your_grpo_config.to_dict()) or use trl.GRPOTrainer."
            )
        if args.loss_type in UNSUPPORTED_LOSS_TYPES and args.weighting != "none":  # re-check: fields are mutable
            raise ValueError(f"loss_type={args.loss_type!r} does not support (B, T) advantages; use 'dapo' or 'grpo'.")
        peft_config = kwargs.get("peft_config")
        will_be_peft = peft_config is not None or (not isinstance(model, str) and is_peft_model(model))
        # The base defaults to the policy's initial weights. A policy passed as an instance may exist only in
        # memory, so copy it now, before TRL patches its forward and training changes it.
        initial_copy = None
        if (
            args.divergence_source == "base"
            and args.base_model_name_or_path is None
            and args.beta == 0.0
            and not will_be_peft
            and not isinstance(model, str)
        ):
            initial_copy = copy.deepcopy(model)
        super().__init__(model, reward_funcs, args, *pargs, **kwargs)
        self._check_launch()
        if isinstance(self.processing_class, ProcessorMixin):
            raise ValueError("DivergenceWeightedGRPOTrainer supports text-only models; got a multimodal processor.")
        self._dw_loss_inputs: dict | None = None  # set only while TRL's _compute_loss runs (loss-time D)
        self._dw_hidden: list[torch.Tensor] = []  # policy hidden states captured from the loss forward
        self._dw_hook = None
        self._dw_pending: dict[str, list] = {"train": [], "eval": []}  # shift/ columns awaiting logging
        # weighting state: everything that changes the math is either derived from checkpointed state
        # (global_step) or saved in the checkpoint (D_ref; `_save_checkpoint` / `train`)
        self._dw_call_key: tuple = ()  # (mode, global_step) of the last weighting call
        self._dw_call_index = 0  # weighting calls so far at that (mode, global_step): resets every step
        self._dw_scale_ref = ScaleReference(args.weighting_scale_quantile, args.weighting_scale_ema)
        self._dw_logits_checked = False  # the once-per-run check of the hidden-state logits (_check_hidden_logits)
        self._dw_hidden_fallback = False  # True once that check failed: full forwards from then on
        self.base_model = None  # None + PEFT: the adapter-disabled policy; None + 'old': no base needed
        self._base_is_policy_adapterless = False
        if args.divergence_source == "base":
            self._setup_base_model(model, initial_copy)
        self._dw_at_loss = self._reuse_loss_forward()
        self._bf16_rollout = maybe_bf16_rollout(self)  # issue 19: bf16 CPU rollouts (train/rollout.py)

    def _check_launch(self) -> None:
        """Refuse a launch whose distributed setup silently differs from the one asked for.

        accelerate enables FSDP only on accelerator devices (GPU/XPU/...): `accelerate launch` with an FSDP config
        on CPU gives plain DDP with `use_cpu` (every rank a full model copy) and, without it, independent
        single-process runs (no process group at all).
        """
        state = self.accelerator.state
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not self.is_fsdp_enabled:
            raise ValueError(
                f"the accelerate config asks for FSDP but accelerate set up {state.distributed_type} (device "
                f"{self.accelerator.device}): this accelerate enables FSDP on GPUs only. On CPU use "
                "accelerate_configs/cpu_ddp.yaml or cpu_zero3.yaml (sharded parameters)."
            )
        if world > 1 and state.num_processes == 1:
            raise ValueError(
                f"launched as {world} processes (WORLD_SIZE) but accelerate set up {state.distributed_type} with one "
                "process each: the ranks would train independently. On CPU pass --use_cpu true with a "
                "MULTI_GPU/DeepSpeed config (accelerate_configs/cpu_*.yaml)."
            )

    # ----------------------------------------------------------------------------------------------
    # Base model
    # ----------------------------------------------------------------------------------------------

    def _setup_base_model(self, model_arg, initial_copy) -> None:
        args = self.args
        policy = self.model
        policy_dtype = policy.dtype
        base = None
        if args.base_model_name_or_path is not None:
            base = self._load_base(args.base_model_name_or_path, policy_dtype)
        elif args.beta != 0.0 and self.ref_model is not None:
            self.base_model = self.ref_model  # already frozen and prepared by TRL
        elif is_peft_model(policy):
            self._base_is_policy_adapterless = True
            self._keep_initial_adapter(policy)
        elif initial_copy is not None:
            base = initial_copy
            if args.base_model_dtype == "policy":
                base = base.to(policy_dtype)
            elif args.base_model_dtype not in ("auto",):
                base = base.to(getattr(torch, args.base_model_dtype))
        else:  # the policy was given as a path: load its initial weights again
            base = self._load_base(model_arg if isinstance(model_arg, str) else policy.config._name_or_path,
                                   policy_dtype)
        if base is not None:
            self._check_vocab(base)
            base.eval()
            base.requires_grad_(False)
            if args.disable_dropout:
                disable_dropout_in_model(base)
            if self.is_deepspeed_enabled:
                base = prepare_deepspeed(base, self.accelerator)
            elif self.is_fsdp_enabled:
                base = prepare_fsdp(base, self.accelerator)
            else:
                base = self.accelerator.prepare_model(base, evaluation_mode=True)
            self.base_model = base

    @staticmethod
    def _keep_initial_adapter(peft_model) -> None:
        """Make the PEFT base the policy's *initial* weights, whatever its adapter starts as.

        With the adapter disabled the model is the pretrained backbone, which equals the initial policy only
        when the adapter starts as a no-op (LoRA's default zero B). A policy that arrives with a trained (or
        randomly initialised, `init_lora_weights=False`) adapter gets a frozen copy of it under the name
        "ref", as TRL does for `beta > 0`; `_as_base` then switches to that copy. TRL's KL reference (beta > 0)
        uses the same "ref" adapter, so base and reference agree for every beta.
        """
        if "ref" in peft_model.peft_config:
            return  # TRL already made the copy (beta > 0 with a PEFT model passed in)
        lora_b = [p for n, p in peft_model.named_parameters() if ".default." in n and "lora_B" in n]
        others = [n for n, p in peft_model.named_parameters() if ".default." in n and "lora_" not in n]
        if lora_b and not others and all(not p.detach().any() for p in lora_b):
            return  # LoRA with B = 0: the adapter-disabled model is exactly the initial policy, no copy needed
        default_config = peft_model.peft_config["default"]
        peft_model.add_adapter("ref", default_config)
        for name, param in peft_model.named_parameters():
            if ".default." in name:
                ref = peft_model.get_parameter(name.replace(".default.", ".ref."))
                ref.data.copy_(param.data)
                ref.requires_grad_(False)
        peft_model.set_adapter("default")  # train the policy's adapter, not the copy

    def _load_base(self, path: str, policy_dtype: torch.dtype):
        """The base through the project's one loader (`diagnostics.models.load_model`), with TRL's model kwargs."""
        kwargs = dict(self.args.model_init_kwargs or {})
        kwargs.pop("quantization_config", None)
        dt = self.args.base_model_dtype
        dtype = policy_dtype if dt == "policy" else dt
        kwargs.pop("dtype", None)
        if self.args.distributed_state.distributed_type in ("MULTI_GPU", "DEEPSPEED"):
            kwargs["device_map"] = None
        # as TRL's create_model_from_path: no device_map on CPU (the accelerator places the model)
        kwargs.setdefault("device_map", None if self.accelerator.device.type in ("cpu", "mps") else "auto")
        kwargs.setdefault("trust_remote_code", self.args.trust_remote_code)
        return load_model(path, dtype=dtype, device=None, flag="base_model_name_or_path", **kwargs)

    def _check_vocab(self, base) -> None:
        """`diagnostics.models.check_same_vocabulary` (the one check) on base vs policy, with the policy's tokenizer."""
        tok = self.processing_class
        check_same_vocabulary(tok, tok, base, self.accelerator.unwrap_model(self.model),
                              base_name=(f"base_model_name_or_path={self.args.base_model_name_or_path}"
                                         if self.args.base_model_name_or_path else "the policy's initial weights"),
                              policy_name="policy")

    @property
    def divergence_timing(self) -> str:
        """'loss': D comes from TRL's loss step (captured hidden states or log-probs, no extra policy forward);
        'generation': a separate pass right after generation."""
        return "loss" if self._dw_at_loss or self.args.divergence_source == "old" else "generation"

    def _reuse_loss_forward(self) -> bool:
        """Whether source 'base' computes D at loss time from the loss forward's hidden states (exact here).

        Exact when the policy computing the loss is the one that generated the batch (no optimizer step in
        between: TRL then stores no old log-probs either), the policy's logits are `hidden @ W^T + b`, and the
        weights of a micro-batch equal its rows of the generation batch's weights.
        """
        a = self.args
        aligned = a.num_iterations == 1 and a.gradient_accumulation_steps % a.steps_per_generation == 0
        per_micro_batch = (
            a.weighting in TOKEN_LOCAL_WEIGHTINGS and a.weighting_renormalize in ("none", "sequence")
        ) or a.steps_per_generation == 1
        return (
            a.divergence_reuse_loss_forward
            and a.divergence_source == "base"
            and aligned
            and per_micro_batch
            and not getattr(a, "padding_free", False)
            and self._use_hidden_path(self.model)
        )

    # ----------------------------------------------------------------------------------------------
    # Logits of the completion tokens, for one micro-batch, one row chunk at a time
    # ----------------------------------------------------------------------------------------------

    @contextmanager
    def _as_base(self):
        """Inside: `self._base_module()`'s forward is the base model (adapter disabled for PEFT)."""
        if self._base_is_policy_adapterless:
            peft_model = self.accelerator.unwrap_model(self.model)
            with use_adapter(peft_model, adapter_name="ref" if "ref" in peft_model.peft_config else None):
                yield
        else:
            yield

    def _base_module(self):
        return self.model if self._base_is_policy_adapterless else self.base_model

    @staticmethod
    def _core(module):
        """The bare transformers model under DDP / DeepSpeed / PEFT wrappers."""
        # (accelerate's is_peft_model looks through DDP, so test the class itself while unwrapping)
        while not isinstance(module, (PreTrainedModel, PeftModel)) and hasattr(module, "module"):
            module = module.module  # DDP, DeepSpeedEngine
        if is_peft_model(module):
            module = module.get_base_model()
        return module

    def _use_hidden_path(self, module) -> bool:
        """Hidden-state path: run the backbone, project row chunks through the LM head ourselves.

        Memory-lean (only `(mb, C, H)` hidden states per model are kept), valid when logits are exactly
        `hidden @ W^T + b`. FSDP keeps the root's parameters sharded outside the root forward, so FSDP and
        models with logit scaling/soft-capping use the full forward with `logits_to_keep` instead.
        """
        if self.is_fsdp_enabled or self._dw_hidden_fallback:
            return False
        cfg = self._core(module).config.get_text_config()
        return all(getattr(cfg, name, None) in (None, 1.0) for name in _LOGIT_TRANSFORMS)

    def _completion_logit_rows(self, module, input_ids, attention_mask, logits_to_keep):
        """Return `(rows, head_params)`: `rows(slice, out=None) -> (c, V)` logits predicting this micro-batch's
        completion tokens (written into `out`, a float32 `(c, V)` buffer, when given), and the LM-head
        parameters to gather (ZeRO-3) while `rows` is used.

        Rows index the flattened `(mb · C)` completion positions. Position t's logits come from the
        hidden state at t − 1, so the completion's C tokens use hidden states [−C−1, −1).
        """
        c = logits_to_keep
        if self._use_hidden_path(module):
            core = self._core(module)
            with self.accelerator.autocast():
                hidden = core.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            return self._hidden_rows(core, hidden.last_hidden_state, c)
        with self.accelerator.autocast():
            logits = module(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=c + 1,
                            use_cache=False).logits[:, :-1]  # (mb, C, V) model dtype
        flat = logits.reshape(-1, logits.size(-1))  # (mb·C, V)
        return (lambda sl, out=None: flat[sl] if out is None else out.copy_(flat[sl])), ()

    @staticmethod
    def _hidden_rows(core, last_hidden, c):
        """`_completion_logit_rows` from the backbone's `(mb, L, H)` last hidden states, through `core`'s LM head."""
        hidden = last_hidden[:, -c - 1 : -1]  # (mb, C, H): position t's logits come from the state at t − 1
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

    @torch.no_grad()
    def _base_vs_policy(self, input_ids, attention_mask, completion_ids, logits_to_keep, batch_size,
                        policy_hidden=None):
        """Per completion token: D (the configured measure), base and policy entropy. Each `(B, C)` float32.

        Micro-batches of `batch_size` sequences; within one, row chunks of `divergence_chunk_size`, so at most
        one `(chunk, V)` logits tensor per model and a few float32 `(chunk, V)` temporaries are alive.
        `policy_hidden`: the policy backbone's `(B, L, H)` last hidden states when already computed (the loss
        forward's); then only the base model runs a forward here.
        """
        args = self.args
        temp = args.divergence_temperature or self.temperature
        measure = args.divergence_measure
        sampled = measure not in DIVERGENCE_REGISTRY
        n, c = completion_ids.shape
        if not self._dw_logits_checked:
            self._check_hidden_logits(input_ids[:1], attention_mask[:1], c)
        if self._dw_hidden_fallback:
            policy_hidden = None  # captured from the loss forward, but its projection is not the model's logits
        out = {k: torch.zeros(n * c, device=input_ids.device) for k in ("div", "ent_base", "ent_policy")}
        tokens = completion_ids.reshape(-1)  # (B·C,)
        runs_policy = policy_hidden is None or self._base_is_policy_adapterless  # a forward of self.model here
        gc_ctx = nullcontext()
        if runs_policy:
            gc_ctx = disable_gradient_checkpointing(self.model, args.gradient_checkpointing_kwargs)
        with gc_ctx:
            for start in range(0, n, batch_size):
                end = min(start + batch_size, n)
                ids, am = input_ids[start:end], attention_mask[start:end]
                with self._as_base():  # PEFT: the LM head carries no adapter, so projecting later is exact
                    base_rows, base_head = self._completion_logit_rows(self._base_module(), ids, am, c)
                if policy_hidden is None:
                    policy_rows, policy_head = self._completion_logit_rows(self.model, ids, am, c)
                else:
                    policy_rows, policy_head = self._hidden_rows(self._core(self.model), policy_hidden[start:end], c)
                n_rows = (end - start) * c
                heads = ExitStack()  # ZeRO-3: gather each LM head once per micro-batch, not once per chunk
                heads.enter_context(maybe_gather_lm_head_ctx(*base_head))
                heads.enter_context(maybe_gather_lm_head_ctx(*policy_head))
                with heads:
                    self._chunk_loop(out, base_rows, policy_rows, tokens, start * c, n_rows, temp, measure, sampled)
        return {k: v.view(n, c) for k, v in out.items()}

    @torch.no_grad()
    def _check_hidden_logits(self, input_ids, attention_mask, c) -> None:
        """Once per run, on the first batch: do `hidden @ W^T + b` logits equal the models' own forward?

        `_LOGIT_TRANSFORMS` lists the config attributes known to transform logits (soft-capping, scaling); a
        family doing something else in its forward would silently get a wrong D. So both models (policy and
        base) project their first sequence both ways; if the largest difference exceeds 1e-4 of the largest
        |logit| (float32; 2e-2 for 16-bit models), a warning names it and every later D uses full forwards
        (`logits_to_keep`, more memory). The verdict is reduced over processes (any failure -> all fall back),
        so ranks never take different paths.
        """
        self._dw_logits_checked = True
        worst, where = 0.0, ""
        modules = [("policy", self.model, nullcontext)] + (
            [("base", self._base_module(), self._as_base)] if self._base_module() is not None else [])
        for name, module, ctx in modules:
            if not self._use_hidden_path(module):
                continue
            core = self._core(module)
            was_training = core.training
            core.train(False)  # no dropout: the two forwards must see the same network
            # In the model's own precision, without mixed-precision autocast (which would run the LM head of
            # the full forward in 16 bits): the class's forward, not accelerate's autocast-patched attribute.
            no_autocast = torch.autocast(device_type=input_ids.device.type, enabled=False)
            try:
                with ctx(), no_autocast, disable_gradient_checkpointing(self.model,
                                                                        self.args.gradient_checkpointing_kwargs):
                    full = type(core).forward(core, input_ids=input_ids, attention_mask=attention_mask,
                                              logits_to_keep=c + 1, use_cache=False).logits[:, :-1]  # (1, C, V)
                    hidden = core.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
                    rows, head = self._hidden_rows(core, hidden.last_hidden_state, c)
                    with maybe_gather_lm_head_ctx(*head):
                        mine = rows(slice(0, c)).float()  # (C, V)
            finally:
                core.train(was_training)
            ref = full.reshape(-1, full.size(-1)).float()  # (C, V)
            rel = ((mine - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
            tol = 1e-4 if full.dtype == torch.float32 else 2e-2
            if not rel <= tol and rel / tol > worst:
                worst, where = rel / tol, f"{name} ({type(core).__name__}: relative difference {rel:.2e} > {tol:g})"
        bad = self.accelerator.reduce(torch.tensor(float(worst > 0), device=input_ids.device), reduction="sum")
        if bad.item() > 0:
            self._dw_hidden_fallback = True
            warnings.warn(
                "the hidden-state logits (hidden @ W^T + b) differ from the model's own forward for the "
                f"{where or 'model on another process'}: its family transforms logits in a way _LOGIT_TRANSFORMS "
                "(train/trainer.py) does not list. Falling back to full forwards for the divergence (exact, more "
                "memory); add the config attribute to _LOGIT_TRANSFORMS to make this explicit.",
                stacklevel=2,
            )

    def _chunk_loop(self, out, base_rows, policy_rows, tokens, offset, n_rows, temp, measure, sampled) -> None:
        """Fill `out[...]` rows [offset, offset + n_rows) through `diagnostics.divergence.pair_rows`, the one
        chunked base-vs-policy driver (five reused float32 `(chunk, V)` buffers for full distributions)."""
        args = self.args
        top_p = args.divergence_top_p if args.divergence_top_p is not None and args.divergence_top_p < 1.0 else None
        pair_rows(base_rows, policy_rows, n_rows, measures=() if sampled else (measure,), temperature=temp,
                  top_p=top_p, chunk_size=args.divergence_chunk_size, entropies=True,
                  tokens=tokens if sampled else None, sampled=measure if sampled else None,
                  out={measure: out["div"], "entropy_base": out["ent_base"], "entropy_policy": out["ent_policy"]},
                  offset=offset)

    # ----------------------------------------------------------------------------------------------
    # Checkpointed weighting state
    # ----------------------------------------------------------------------------------------------

    def weighting_state_dict(self) -> dict:
        """The weighting state that is not a function of the config and `global_step`: D_ref (auto scale)."""
        return {"format": 1, "scale_reference": self._dw_scale_ref.state_dict()}

    def load_weighting_state_dict(self, state: dict) -> None:
        self._dw_scale_ref.load_state_dict(state.get("scale_reference", {}))

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:  # identical on every rank: rank 0 writes it
            name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            folder = os.path.join(self._get_output_dir(trial=trial), name)
            if os.path.isdir(folder):
                with open(os.path.join(folder, WEIGHTING_STATE_NAME), "w") as f:
                    json.dump(self.weighting_state_dict(), f, indent=2)

    def train(self, resume_from_checkpoint=None, *pargs, **kwargs):
        """`Trainer.train`, restoring the weighting state (D_ref) saved in the checkpoint it resumes from."""
        path = resume_from_checkpoint
        if isinstance(path, bool):
            path = get_last_checkpoint(self.args.output_dir) if path else None
        if path is not None:
            state_file = os.path.join(path, WEIGHTING_STATE_NAME)
            if os.path.isfile(state_file):
                with open(state_file) as f:
                    self.load_weighting_state_dict(json.load(f))
            elif self.args.auto_scale:
                warnings.warn(
                    f"{path} has no {WEIGHTING_STATE_NAME} (a checkpoint from an older version): D_ref of "
                    "weighting_scale='auto' restarts from the next batch, so this run differs from an uninterrupted "
                    "one.",
                    stacklevel=2,
                )
        return super().train(resume_from_checkpoint, *pargs, **kwargs)

    # ----------------------------------------------------------------------------------------------
    # Overrides
    # ----------------------------------------------------------------------------------------------

    def _generate_single_turn(self, *pargs, **kwargs):  # issue 19: bf16 CPU rollouts (train/rollout.py)
        if self._bf16_rollout is None:
            return super()._generate_single_turn(*pargs, **kwargs)
        with self._bf16_rollout.generating(self):
            return super()._generate_single_turn(*pargs, **kwargs)

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        if self.args.divergence_source != "base" or self._dw_at_loss:
            return output  # D is computed at loss time (_compute_loss)
        mode = "train" if self.model.training else "eval"
        prompt_ids, completion_ids = output["prompt_ids"], output["completion_ids"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (B, P+C)
        attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)  # (B, P+C)
        default_bs = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        stats = self._base_vs_policy(input_ids, attention_mask, completion_ids, completion_ids.size(1),
                                     self.args.divergence_batch_size or default_bs)
        self._apply_base_divergence(output, stats, mode)
        return output

    def _apply_base_divergence(self, batch, stats, mode) -> None:
        """Replace `batch["advantages"]` by the weighted `(B, C)` advantages; queue the shift/ metrics."""
        mask = batch["completion_mask"]
        if "tool_mask" in batch:
            mask = mask * batch["tool_mask"]  # (B, C)
        div = stats["div"] * mask  # (B, C); 0 off-mask
        batch["advantages"] = self._weighted_advantages(batch["advantages"], div, mask, mode)
        self._log_shift(mode, div, mask, stats["ent_base"], stats["ent_policy"])

    def _weighted_advantages(self, advantages, div, mask, mode):
        """Ã = w · Â[:, None]  ((B,) , (B, C) -> (B, C)); keeps the weights for the shift/ metrics.

        The random_quantile seed is a function of (weighting_seed, global step, index of this call within the
        step, mode, process index) only, and D_ref of checkpointed state, so a resumed run weights exactly as
        an uninterrupted one. D_ref (weighting_scale='auto') is the one in force for this generation batch: it
        was updated from the previous ones (`_log_shift`), so weights stay token-local and the loss-time path
        (one micro-batch at a time) equals the separate pass.
        """
        key = (mode, self.state.global_step)
        self._dw_call_index = self._dw_call_index + 1 if key == self._dw_call_key else 0
        self._dw_call_key = key
        seed = (self.args.weighting_seed * 1_000_003 + self.state.global_step * 7_919 + self._dw_call_index * 31
                + (0 if mode == "train" else 104_729) + self.accelerator.process_index * 15_485_863) % (2**63 - 1)
        scale = self._dw_scale_ref.scale() if self.args.auto_scale else None
        weights, n_bad = compute_weights(
            self.args.weighting, div, mask, self.args.weighting_params(seed, scale), self.args.weighting_renormalize,
            all_reduce_sum=lambda t: self.accelerator.reduce(t, reduction="sum"),
        )  # (B, C)
        self._last_weights = weights
        self._last_nonfinite = n_bad
        adv = advantages if advantages.dim() == 2 else advantages.unsqueeze(1)  # (B, 1) or (B, C)
        return weights.to(adv.dtype) * adv  # (B, C)

    def _compute_loss(self, model, inputs):
        at_loss = self.args.divergence_source == "old" or self._dw_at_loss
        if not at_loss:
            return super()._compute_loss(model, inputs)
        # The buffered batch is reused across micro-steps / num_iterations: rescale a shallow copy, never the buffer.
        inputs = dict(inputs)
        self._dw_loss_inputs = inputs
        if self._dw_at_loss and not self._dw_hidden_fallback:  # capture the policy backbone's loss-forward output
            self._dw_hook = self._core(model).base_model.register_forward_hook(self._capture_hidden)
        try:
            loss = super()._compute_loss(model, inputs)
            missed = self._dw_loss_inputs is not None
        finally:
            self._remove_hook()
            self._dw_loss_inputs = None
            self._dw_hidden = []
        if missed:
            raise RuntimeError(
                "TRL's _compute_loss did not call _get_per_token_logps_and_entropies, so the per-token advantages "
                "were not applied; this trl version is unsupported (pin the version in pyproject.toml)."
            )
        return loss

    def _capture_hidden(self, module, args, output) -> None:
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        self._dw_hidden.append(hidden.detach())  # (mb, L, H)

    def _remove_hook(self) -> None:
        if self._dw_hook is not None:
            self._dw_hook.remove()
            self._dw_hook = None

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *pargs, **kw):
        out = super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                         *pargs, **kw)
        inputs = self._dw_loss_inputs
        if inputs is not None:  # the policy forward of TRL's _compute_loss: advantages not read yet
            self._dw_loss_inputs = None
            if self.args.divergence_source == "old":
                self._rescale_with_old(inputs, out[0].detach(), out[1])
            else:
                self._remove_hook()  # before the base forward (with PEFT it is the same module)
                self._rescale_with_base(inputs, input_ids, attention_mask, logits_to_keep)
        return out

    @torch.no_grad()
    def _rescale_with_base(self, inputs, input_ids, attention_mask, logits_to_keep) -> None:
        """Source 'base' at loss time: D from the captured policy hidden states and a base forward."""
        if self._dw_hidden_fallback or not self._dw_hidden:  # no valid capture: _base_vs_policy runs the policy
            hidden = None
        else:
            hidden = torch.cat(self._dw_hidden, dim=0) if len(self._dw_hidden) > 1 else self._dw_hidden[0]
        self._dw_hidden = []
        if hidden is not None and hidden.shape[:2] != input_ids.shape:
            raise RuntimeError(
                f"captured policy hidden states {tuple(hidden.shape)} do not match the loss batch "
                f"{tuple(input_ids.shape)}; set divergence_reuse_loss_forward=False."
            )
        mode = "train" if self.model.training else "eval"
        bs = self.args.divergence_batch_size or input_ids.size(0)
        stats = self._base_vs_policy(input_ids, attention_mask, inputs["completion_ids"], logits_to_keep, bs,
                                     policy_hidden=hidden)
        self._apply_base_divergence(inputs, stats, mode)

    @torch.no_grad()
    def _rescale_with_old(self, inputs, logps, entropies) -> None:
        """Source 'old': D = k3 estimate of KL(π_old ‖ π_θ) on the sampled token (the paper's D)."""
        mode = "train" if self.model.training else "eval"
        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]  # (B, C)
        old = inputs.get("old_per_token_logps")
        old = logps if old is None else old  # TRL's convention: no stored old log-probs means π_old = π_θ
        div = get_sampled_estimator(self.args.divergence_measure)(old, logps) * mask  # (B, C)
        inputs["advantages"] = self._weighted_advantages(inputs["advantages"], div, mask, mode)
        ent = entropies.detach().float() if entropies is not None else torch.full_like(div, float("nan"))
        self._log_shift(mode, div, mask, None, ent)

    # ----------------------------------------------------------------------------------------------
    # Metrics (identical on every rank: computed from all ranks' tokens)
    # ----------------------------------------------------------------------------------------------

    def _gather_valid(self, columns: torch.Tensor) -> torch.Tensor:
        """`(N_local, k)` -> `(N_global, k)`: every rank's rows, padding rows dropped."""
        padded = self.accelerator.pad_across_processes(columns, dim=0, pad_index=float("nan"))
        gathered = self.accelerator.gather(padded)  # (world · N_max, k)
        return gathered[~torch.isnan(gathered[:, 0])]

    @torch.no_grad()
    def _log_shift(self, mode, div, mask, ent_base, ent_policy) -> None:
        """Queue this batch's per-token columns; log shift/ metrics once per generation batch.

        With D computed at loss time, one generation batch arrives as `steps_per_generation` micro-batches:
        their columns are pooled so that the metrics describe the same token set as when D is computed once
        after generation (quantiles of the whole batch, not means of per-micro-batch quantiles).
        """
        valid = mask.bool()
        nan = torch.full_like(div, float("nan"))
        cols = torch.stack(
            [
                torch.nan_to_num(div.float(), nan=0.0)[valid],
                (ent_base if ent_base is not None else nan)[valid].float(),
                (ent_policy if ent_policy is not None else nan)[valid].float(),
                self._last_weights[valid].float(),
            ],
            dim=-1,
        )  # (N_local, 4)
        pending = self._dw_pending[mode]
        pending.append((cols, self._last_nonfinite))
        # at loss time in training, self._step is this micro-batch's index (TRL increments it after the step)
        if self._dw_at_loss and mode == "train" and (self._step + 1) % self.args.steps_per_generation != 0:
            return
        local = torch.cat([c for c, _ in pending], dim=0)
        n_bad = float(sum(b for _, b in pending))
        pending.clear()
        bad = self.accelerator.reduce(torch.tensor(n_bad, device=div.device), reduction="sum")
        self._metrics[mode]["shift/weight_nonfinite_fallbacks"].append(bad.item())
        allrows = self._gather_valid(local).double()  # (N, 4), every rank's tokens: identical on every rank
        if self.args.auto_scale:
            # the D_ref these weights used (NaN while undefined), then fold this generation batch into it
            used = self._dw_scale_ref.value
            self._metrics[mode]["shift/weighting_scale"].append(float("nan") if used is None else used)
            if mode == "train":
                self._dw_scale_ref.update(allrows[:, 0])
        for key, value in shift_metrics(allrows, self.args.high_divergence_threshold,
                                       self.args.divergence_measure).items():
            self._metrics[mode][f"shift/{key}"].append(value)


def shift_metrics(rows: torch.Tensor, high_threshold: float = DEFAULT_HIGH_THRESHOLD,
                  measure: str = "js") -> dict[str, float]:
    """The `shift/*` metrics of one batch: `diagnostics.shift_stats.shift_stats` of its token columns.

    `rows`: `(N, 4)` = [D, H_base, H_policy, weight] of the counted tokens; `measure` (the D measure's
    name) prefixes the divergence keys (`js_mean`, `frac_js_gt_0.1`, ...; docs/vocabulary.md). NaN when undefined.
    """
    return shift_stats(rows[:, 0], measure=measure, entropy_base=rows[:, 1], entropy_policy=rows[:, 2],
                       weights=rows[:, 3], high_threshold=high_threshold)


__all__ = ["DivergenceWeightedGRPOTrainer", "shift_metrics"]
