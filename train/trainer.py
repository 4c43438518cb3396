"""`DivergenceWeightedGRPOTrainer`: GRPO whose advantage is weighted per token by a divergence.

    Ã_{i,t} = w(D_{i,t}) · Â_i          (Meng et al., "Sparse but Critical", arXiv 2603.22446, §3)

`Â_i` is TRL's group-normalised advantage of completion i, `D_{i,t}` a detached per-token divergence
and `w` a function from `train/weighting.py`. TRL's loss already accepts a `(B, T)` advantage
(`_compute_loss` unsqueezes only 1-D advantages) and `shuffle_sequence_dict` / `split_tensor_dict`
permute and split every tensor along dim 0, so a `(B, T)` advantage survives the generation buffer.
TRL's loss is never copied.

This module holds one concern: where D is computed and how it rescales the advantages. The pieces it
uses live in their own modules: the base model (`train/base_model.py`, `self.base`), the LM-head
logits and their once-per-run check (`train/lm_head.py`), the divergence settings
(`diagnostics/divergence_settings.py`, `self.divergence_settings`), the weights (`train/weighting.py`)
and the statistics (`diagnostics/shift_stats.py`).

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
import os  # noqa: E402
import warnings  # noqa: E402
from contextlib import ExitStack, nullcontext
from typing import Any

import torch
from accelerate.utils import is_peft_model
from transformers import ProcessorMixin
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import maybe_gather_lm_head_ctx

from diagnostics.divergence import get_sampled_estimator, pair_rows
from diagnostics.divergence_settings import DivergenceSettings
from train.base_model import BaseModel, build_base
from train.config import UNSUPPORTED_LOSS_TYPES, DivergenceGRPOConfig
from train.launch import check_launch
from train.lm_head import (
    FALLBACK_WARNING,
    completion_logit_rows,
    core_model,
    hidden_logits_mismatch,
    hidden_rows,
    uses_hidden_path,
)
from train.rollout import maybe_bf16_rollout  # issue 19: bf16 CPU rollouts
from train.vllm_cpu import cpu_vllm_init, install_weight_sync  # issue 19: vLLM on CPU
from train.shift_log import ShiftLog, gather_valid, shift_metrics, token_columns
from train.weighting import (
    ScaleReference,
    call_seed,
    compute_weights,
    is_token_local,
    load_weighting_state,
    save_weighting_state,
)



class DivergenceWeightedGRPOTrainer(GRPOTrainer):
    """`trl.GRPOTrainer` with per-token advantages `w(D_t) · Â_i`. What it overrides, and nothing else:

    - `__init__`: validates the config (a `DivergenceGRPOConfig`), builds `self.divergence_settings` (the run's
      one `DivergenceSettings`) and, for source 'base', `self.base` (`train.base_model.build_base`: the
      policy's initial weights in the policy's precision, for every beta, with or without PEFT).
    - `_generate_and_score_completions`: calls TRL's; when D is not computed at loss time (see
      `_reuse_loss_forward`), teacher-forces base and policy on the batch, replaces `advantages` (`(B,)`)
      by `w · Â[:, None]` (`(B, T)`) and queues the `shift/*` metrics.
    - `_compute_loss` (wrapped, never copied): at loss time, hooks the policy backbone so the hidden states of
      TRL's own loss forward are captured (source 'base'), and gives TRL a shallow copy of the inputs.
    - `_get_per_token_logps_and_entropies` (wrapped): on the loss forward's call, computes D (base forward +
      captured hidden states, or source 'old': k3(π_old ‖ π_θ) from its log-probs) and rescales the advantages
      of that copy before TRL's loss reads them (TRL reads `advantages` only after this call; checked at run
      time: a TRL that skips it is an error).
    - `train` / `_save_checkpoint`: save and restore the weighting state (D_ref) with each checkpoint, and
      write `divergence_settings.json` into `output_dir`.
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
        # The base defaults to the policy's initial weights. A policy passed as an instance may exist only in
        # memory, so copy it now, before TRL patches its forward and training changes it (train/base_model.py).
        will_be_peft = kwargs.get("peft_config") is not None or (not isinstance(model, str) and is_peft_model(model))
        copy_now = args.divergence_source == "base" and args.base_model_name_or_path is None and args.beta == 0.0
        initial_copy = copy.deepcopy(model) if copy_now and not will_be_peft and not isinstance(model, str) else None
        with cpu_vllm_init(args):  # issue 19: vLLM on CPU (train/vllm_cpu.py); a no-op elsewhere
            super().__init__(model, reward_funcs, args, *pargs, **kwargs)
        install_weight_sync(self)  # issue 19: vLLM on CPU: weights through vLLM's reload_weights
        check_launch(self.accelerator, self.is_fsdp_enabled)
        if isinstance(self.processing_class, ProcessorMixin):
            raise ValueError("DivergenceWeightedGRPOTrainer supports text-only models; got a multimodal processor.")
        self.divergence_settings: DivergenceSettings = args.divergence_settings()  # the one source of D's settings
        self._dw_loss_inputs: dict | None = None  # set only while TRL's _compute_loss runs (loss-time D)
        self._dw_hidden: list[torch.Tensor] = []  # policy hidden states captured from the loss forward
        self._dw_hook = None
        self._dw_shift_log = ShiftLog()  # shift/ columns awaiting logging
        # weighting state: everything that changes the math is either derived from checkpointed state
        # (global_step) or saved in the checkpoint (D_ref; `_save_checkpoint` / `train`)
        self._dw_call_key: tuple = ()  # (mode, global_step) of the last weighting call
        self._dw_call_index = 0  # weighting calls so far at that (mode, global_step): resets every step
        self._dw_scale_ref = ScaleReference(args.weighting_scale_quantile, args.weighting_scale_ema)
        self._dw_logits_checked = False  # the once-per-run check of the hidden-state logits
        self._dw_hidden_fallback = False  # True once that check failed: full forwards from then on
        self.last_weights: torch.Tensor | None = None  # the latest (B, C) weights, for inspection only
        # "what is the base": None for source 'old' (no base model needed)
        self.base: BaseModel | None = build_base(self, model, initial_copy) if args.divergence_source == "base" \
            else None
        del initial_copy
        self._dw_at_loss = self._reuse_loss_forward()
        self._bf16_rollout = maybe_bf16_rollout(self)  # issue 19: bf16 CPU rollouts (train/rollout.py)

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
        per_micro_batch = (is_token_local(a.weighting) and a.weighting_renormalize in ("none", "sequence")) \
            or a.steps_per_generation == 1
        return (a.divergence_reuse_loss_forward and a.divergence_source == "base" and aligned and per_micro_batch
                and not getattr(a, "padding_free", False) and self._use_hidden_path(self.model))

    # ----------------------------------------------------------------------------------------------
    # D for one batch (source 'base'): base vs policy, micro-batch by micro-batch, chunk by chunk
    # ----------------------------------------------------------------------------------------------

    def _use_hidden_path(self, module) -> bool:
        """`train.lm_head.uses_hidden_path`, and not after the once-per-run logit check failed."""
        return not self._dw_hidden_fallback and uses_hidden_path(module, fsdp=self.is_fsdp_enabled)

    def _logit_rows(self, module, ids, am, c):
        return completion_logit_rows(module, ids, am, c, hidden_path=self._use_hidden_path(module),
                                     autocast=self.accelerator.autocast)

    @torch.no_grad()
    def _base_vs_policy(self, input_ids, attention_mask, completion_ids, logits_to_keep, batch_size,
                        policy_hidden=None):
        """Per completion token: D (`self.divergence_settings`), base and policy entropy. Each `(B, C)` float32.

        Micro-batches of `batch_size` sequences; within one, row chunks of `chunk_size`
        (`diagnostics.divergence.pair_rows`), so at most one `(chunk, V)` logits tensor per model and a few
        float32 `(chunk, V)` temporaries are alive. `policy_hidden`: the policy backbone's `(B, L, H)` last hidden
        states when already computed (the loss forward's); then only the base model runs a forward here.
        """
        settings, base = self.divergence_settings, self.base
        n, c = completion_ids.shape
        if not self._dw_logits_checked:
            self._check_hidden_logits(input_ids[:1], attention_mask[:1], c)
        if self._dw_hidden_fallback:
            policy_hidden = None  # captured from the loss forward, but its projection is not the model's logits
        out = {k: torch.zeros(n * c, device=input_ids.device) for k in (settings.measure, "entropy_base",
                                                                         "entropy_policy")}
        tokens = completion_ids.reshape(-1)  # (B·C,)
        runs_policy = policy_hidden is None or base.is_policy_adapter  # a forward of self.model here
        gc_ctx = disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs) \
            if runs_policy else nullcontext()
        with gc_ctx:
            for start in range(0, n, batch_size):
                end = min(start + batch_size, n)
                ids, am = input_ids[start:end], attention_mask[start:end]
                with base.context():  # PEFT: the LM head carries no adapter, so projecting later is exact
                    base_rows, base_head = self._logit_rows(base.model, ids, am, c)
                if policy_hidden is None:
                    policy_rows, policy_head = self._logit_rows(self.model, ids, am, c)
                else:
                    policy_rows, policy_head = hidden_rows(core_model(self.model), policy_hidden[start:end], c)
                heads = ExitStack()  # ZeRO-3: gather each LM head once per micro-batch, not once per chunk
                heads.enter_context(maybe_gather_lm_head_ctx(*base_head))
                heads.enter_context(maybe_gather_lm_head_ctx(*policy_head))
                with heads:
                    pair_rows(base_rows, policy_rows, (end - start) * c,
                              measures=() if settings.sampled else (settings.measure,),
                              temperature=settings.temperature, top_p=settings.top_p, chunk_size=settings.chunk_size,
                              entropies=True, tokens=tokens if settings.sampled else None,
                              sampled=settings.measure if settings.sampled else None, out=out, offset=start * c)
        return {"div": out[settings.measure].view(n, c), "ent_base": out["entropy_base"].view(n, c),
                "ent_policy": out["entropy_policy"].view(n, c)}

    def _check_hidden_logits(self, input_ids, attention_mask, c) -> None:
        """Once per run, on the first batch: do both models' `hidden @ W^T + b` logits equal their own forward's
        (`train.lm_head.hidden_logits_mismatch`: on the finite support, a different set of -inf entries fails)?
        If not, warn and use full forwards from now on. The verdict is reduced over processes (any failure ->
        all fall back), so ranks never take different paths."""
        self._dw_logits_checked = True
        no_gc = lambda: disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs)  # noqa: E731
        problems = []
        for name, module, ctx in (("policy", self.model, None), ("base", self.base.model, self.base.context())):
            if self._use_hidden_path(module):
                found = hidden_logits_mismatch(module, input_ids, attention_mask, c, context=ctx, no_checkpointing=no_gc)
                if found:
                    problems.append(f"{name} ({found})")
        bad = self.accelerator.reduce(torch.tensor(float(bool(problems)), device=input_ids.device), reduction="sum")
        if bad.item() > 0:
            self._dw_hidden_fallback = True
            warnings.warn(FALLBACK_WARNING.format(where=", ".join(problems) or "model on another process"), stacklevel=2)

    # ----------------------------------------------------------------------------------------------
    # Checkpointed weighting state (train.weighting) and the run's divergence settings
    # ----------------------------------------------------------------------------------------------

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save and os.path.isdir(folder):  # identical on every rank: rank 0 writes it
            save_weighting_state(folder, self._dw_scale_ref)

    def train(self, resume_from_checkpoint=None, *pargs, **kwargs):
        """`Trainer.train`, restoring the weighting state (D_ref) saved in the checkpoint it resumes from, after
        writing the run's `divergence_settings.json` (read by `sparse-rlvr shift` / `evolution` for defaults)."""
        if self.args.should_save:
            self.divergence_settings.save(self.args.output_dir)
        path = resume_from_checkpoint
        if isinstance(path, bool):
            path = get_last_checkpoint(self.args.output_dir) if path else None
        if path is not None:
            load_weighting_state(path, self._dw_scale_ref, warn_if_missing=self.args.auto_scale)
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
        batch["advantages"], weights, n_bad = self._weighted_advantages(batch["advantages"], div, mask, mode)
        self._log_shift(mode, div, mask, stats["ent_base"], stats["ent_policy"], weights, n_bad)

    def _weighted_advantages(self, advantages, div, mask, mode):
        """Ã = w · Â[:, None]  ((B,) , (B, C) -> (B, C)). Returns `(Ã, w (B, C), n_nonfinite_fallbacks)`.

        The random_quantile seed is a function of (weighting_seed, global step, index of this call within the
        step, mode, process index) only, and D_ref of checkpointed state, so a resumed run weights exactly as
        an uninterrupted one. D_ref (weighting_scale='auto') is the one in force for this generation batch: it
        was updated from the previous ones (`_log_shift`), so weights stay token-local and the loss-time path
        (one micro-batch at a time) equals the separate pass.
        """
        key = (mode, self.state.global_step)
        self._dw_call_index = self._dw_call_index + 1 if key == self._dw_call_key else 0
        self._dw_call_key = key
        seed = call_seed(self.args.weighting_seed, self.state.global_step, self._dw_call_index, mode,
                         self.accelerator.process_index)
        scale = self._dw_scale_ref.scale() if self.args.auto_scale else None
        weights, n_bad = compute_weights(
            self.args.weighting, div, mask, self.args.weighting_params(seed, scale), self.args.weighting_renormalize,
            all_reduce_sum=lambda t: self.accelerator.reduce(t, reduction="sum"),
        )  # (B, C)
        self.last_weights = weights  # inspection only: the metrics get the weights passed explicitly
        adv = advantages if advantages.dim() == 2 else advantages.unsqueeze(1)  # (B, 1) or (B, C)
        return weights.to(adv.dtype) * adv, weights, n_bad  # (B, C)

    def _compute_loss(self, model, inputs):
        at_loss = self.args.divergence_source == "old" or self._dw_at_loss
        if not at_loss:
            return super()._compute_loss(model, inputs)
        # The buffered batch is reused across micro-steps / num_iterations: rescale a shallow copy, never the buffer.
        inputs = dict(inputs)
        self._dw_loss_inputs = inputs
        if self._dw_at_loss and not self._dw_hidden_fallback:  # capture the policy backbone's loss-forward output
            self._dw_hook = core_model(model).base_model.register_forward_hook(self._capture_hidden)
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
        div = get_sampled_estimator(self.divergence_settings.measure)(old, logps) * mask  # (B, C)
        inputs["advantages"], weights, n_bad = self._weighted_advantages(inputs["advantages"], div, mask, mode)
        ent = entropies.detach().float() if entropies is not None else torch.full_like(div, float("nan"))
        self._log_shift(mode, div, mask, None, ent, weights, n_bad)

    # ----------------------------------------------------------------------------------------------
    # Metrics (identical on every rank: computed from all ranks' tokens; train/shift_log.py)
    # ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _log_shift(self, mode, div, mask, ent_base, ent_policy, weights, n_bad) -> None:
        """Queue this batch's per-token columns; log shift/ metrics once per generation batch (pooled)."""
        self._dw_shift_log.add(mode, token_columns(div, mask, ent_base, ent_policy, weights), n_bad)
        # at loss time in training, self._step is this micro-batch's index (TRL increments it after the step)
        if self._dw_at_loss and mode == "train" and (self._step + 1) % self.args.steps_per_generation != 0:
            return
        local, n_bad = self._dw_shift_log.pop(mode)
        bad = self.accelerator.reduce(torch.tensor(n_bad, device=div.device), reduction="sum")
        self._metrics[mode]["shift/weight_nonfinite_fallbacks"].append(bad.item())
        allrows = gather_valid(self.accelerator, local).double()  # (N, 4), every rank's tokens
        if self.args.auto_scale:
            # the D_ref these weights used (NaN while undefined), then fold this generation batch into it
            used = self._dw_scale_ref.value
            self._metrics[mode]["shift/weighting_scale"].append(float("nan") if used is None else used)
            if mode == "train":
                self._dw_scale_ref.update(allrows[:, 0])
        settings = self.divergence_settings
        for key, value in shift_metrics(allrows, settings.high_divergence_threshold, settings.measure).items():
            self._metrics[mode][f"shift/{key}"].append(value)


__all__ = ["DivergenceWeightedGRPOTrainer", "shift_metrics"]
