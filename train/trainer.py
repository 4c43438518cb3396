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

import copy
import math
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import is_peft_model
from transformers import PreTrainedModel, ProcessorMixin
from trl import GRPOTrainer
from trl.models import prepare_deepspeed, prepare_fsdp
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import create_model_from_path, disable_dropout_in_model, maybe_gather_lm_head_ctx, use_adapter

from diagnostics.divergence import (
    DIVERGENCE_REGISTRY,
    get_divergence,
    get_sampled_estimator,
    log_probs,
    pair_measures,
)
from train.config import UNSUPPORTED_LOSS_TYPES, DivergenceGRPOConfig
from train.weighting import compute_weights

# config attributes that make the logits differ from `hidden @ W_head^T`: such models use the
# (slower, more memory) full-forward path instead of the hidden-state path.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                     "logits_scaling")
QUANTILES = (0.5, 0.9, 0.99)
SPARSITY_THRESHOLDS = (0.01, 0.05, 0.1)
TOP_SHARES = (0.01, 0.05, 0.2)


class DivergenceWeightedGRPOTrainer(GRPOTrainer):
    """`trl.GRPOTrainer` with per-token advantages `w(D_t) · Â_i`. What it changes, and nothing else:

    - `__init__`: validates the config (a `DivergenceGRPOConfig`), then loads and freezes the base model
      even when `beta == 0`, in the policy's dtype: `base_model_name_or_path` if set; else TRL's
      reference model when `beta > 0`; else, with PEFT, the adapter-disabled policy (no second copy);
      else a copy of the policy's initial weights. Prepared for DeepSpeed / FSDP like TRL's reference
      model. A base whose vocabulary differs from the policy's is an error naming both sizes.
    - `_generate_and_score_completions`: calls TRL's, then (source `base`) computes the detached
      `(B, T)` divergence base vs policy on every completion token and replaces `advantages` by the
      weighted `(B, T)` tensor; logs `shift/*` metrics.
    - `_compute_loss` / `_get_per_token_logps_and_entropies` (source `old` only): wrap TRL's to capture
      the current per-token log-probs at loss time, compute D = k3(π_old ‖ π_θ) on the sampled token,
      and rescale the advantages in (a copy of) the inputs before TRL's loss reads them. No extra
      forward pass and no copy of TRL's loss: `_compute_loss` reads `inputs["advantages"]` only after
      its single `_get_per_token_logps_and_entropies` call.
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
        if isinstance(self.processing_class, ProcessorMixin):
            raise ValueError("DivergenceWeightedGRPOTrainer supports text-only models; got a multimodal processor.")
        self._dw_loss_inputs: dict | None = None  # set only while TRL's _compute_loss runs (source 'old')
        self._dw_calls = 0
        self.base_model = None  # None + PEFT: the adapter-disabled policy; None + 'old': no base needed
        self._base_is_policy_adapterless = False
        if args.divergence_source == "base":
            self._setup_base_model(model, initial_copy)

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

    def _load_base(self, path: str, policy_dtype: torch.dtype):
        kwargs = dict(self.args.model_init_kwargs or {})
        kwargs.pop("quantization_config", None)
        dt = self.args.base_model_dtype
        kwargs["dtype"] = policy_dtype if dt == "policy" else dt
        if self.args.distributed_state.distributed_type in ("MULTI_GPU", "DEEPSPEED"):
            kwargs["device_map"] = None
        kwargs.setdefault("trust_remote_code", self.args.trust_remote_code)
        try:
            return create_model_from_path(path, **kwargs)
        except OSError as err:
            raise FileNotFoundError(
                f"base_model_name_or_path={path!r} could not be loaded ({err}); point it at a local model directory "
                "sharing the policy's tokenizer."
            ) from None

    def _check_vocab(self, base) -> None:
        v_base = base.config.get_text_config().vocab_size
        v_pol = self.accelerator.unwrap_model(self.model).config.get_text_config().vocab_size
        if v_base != v_pol:
            raise ValueError(
                f"base model vocabulary ({v_base} tokens) differs from the policy's ({v_pol} tokens); the per-token "
                "divergence needs one shared vocabulary: set base_model_name_or_path to a model with the policy's "
                "tokenizer."
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
        while not isinstance(module, PreTrainedModel) and not is_peft_model(module) and hasattr(module, "module"):
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
        if self.is_fsdp_enabled:
            return False
        cfg = self._core(module).config.get_text_config()
        return all(getattr(cfg, name, None) in (None, 1.0) for name in _LOGIT_TRANSFORMS)

    def _completion_logit_rows(self, module, input_ids, attention_mask, logits_to_keep):
        """Return `(rows, head_params)`: `rows(slice) -> (c, V)` logits predicting this micro-batch's
        completion tokens, and the LM-head parameters to gather (ZeRO-3) while `rows` is used.

        Rows index the flattened `(mb · C)` completion positions. Position t's logits come from the
        hidden state at t − 1, so the completion's C tokens use hidden states [−C−1, −1).
        """
        c = logits_to_keep
        if self._use_hidden_path(module):
            core = self._core(module)
            with self.accelerator.autocast():
                hidden = core.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            hidden = hidden.last_hidden_state[:, -c - 1 : -1]  # (mb, C, H)
            flat = hidden.reshape(-1, hidden.size(-1))  # (mb·C, H)
            head = core.get_output_embeddings()

            def rows(sl):
                return F.linear(flat[sl].to(head.weight.dtype), head.weight, head.bias)  # (c, V)

            return rows, (head.weight, head.bias)
        with self.accelerator.autocast():
            logits = module(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=c + 1,
                            use_cache=False).logits[:, :-1]  # (mb, C, V) model dtype
        flat = logits.reshape(-1, logits.size(-1))  # (mb·C, V)
        return (lambda sl: flat[sl]), ()

    @torch.no_grad()
    def _base_vs_policy(self, input_ids, attention_mask, completion_ids, logits_to_keep, batch_size):
        """Per completion token: D (the configured measure), base and policy entropy. Each `(B, C)` float32.

        Micro-batches of `batch_size` sequences; within one, row chunks of `divergence_chunk_size`, so at most
        one `(chunk, V)` logits tensor per model and a few float32 `(chunk, V)` temporaries are alive.
        """
        args = self.args
        temp = args.divergence_temperature or self.temperature
        measure = args.divergence_measure
        sampled = measure not in DIVERGENCE_REGISTRY
        fn = get_sampled_estimator(measure) if sampled else get_divergence(measure)
        n, c = completion_ids.shape
        out = {k: torch.zeros(n * c, device=input_ids.device) for k in ("div", "ent_base", "ent_policy")}
        tokens = completion_ids.reshape(-1)  # (B·C,)
        gc_ctx = disable_gradient_checkpointing(self.model, args.gradient_checkpointing_kwargs)
        with gc_ctx:
            for start in range(0, n, batch_size):
                end = min(start + batch_size, n)
                ids, am = input_ids[start:end], attention_mask[start:end]
                with self._as_base():  # PEFT: the LM head carries no adapter, so projecting later is exact
                    base_rows, base_head = self._completion_logit_rows(self._base_module(), ids, am, c)
                policy_rows, policy_head = self._completion_logit_rows(self.model, ids, am, c)
                n_rows = (end - start) * c
                heads = ExitStack()  # ZeRO-3: gather each LM head once per micro-batch, not once per chunk
                heads.enter_context(maybe_gather_lm_head_ctx(*base_head))
                heads.enter_context(maybe_gather_lm_head_ctx(*policy_head))
                with heads:
                    self._chunk_loop(out, base_rows, policy_rows, tokens, start * c, n_rows, temp, fn, sampled)
        return {k: v.view(n, c) for k, v in out.items()}

    def _chunk_loop(self, out, base_rows, policy_rows, tokens, offset, n_rows, temp, fn, sampled) -> None:
        """Fill `out[...]` rows [offset, offset + n_rows) chunk by chunk (see `_base_vs_policy`)."""
        args = self.args
        for r0 in range(0, n_rows, args.divergence_chunk_size):
            sl = slice(r0, min(r0 + args.divergence_chunk_size, n_rows))
            glob = slice(offset + sl.start, offset + sl.stop)
            lb = log_probs(base_rows(sl), temp)  # (c, V) float32
            lp = log_probs(policy_rows(sl), temp)  # (c, V) float32
            if sampled:
                ent = pair_measures(lb, lp, (), entropies=True)
                tok = tokens[glob].unsqueeze(-1)  # (c, 1)
                # the policy sampled the token: estimate KL(policy ‖ base)
                out["div"][glob] = fn(lp.gather(-1, tok).squeeze(-1), lb.gather(-1, tok).squeeze(-1))
            elif args.divergence_top_p is not None and args.divergence_top_p < 1.0:
                ent = pair_measures(lb, lp, (), entropies=True)  # entropies of the full distributions
                # log_softmax of log-probs is the identity, so this truncates without a second matmul
                trunc = pair_measures(log_probs(lb, 1.0, args.divergence_top_p),
                                      log_probs(lp, 1.0, args.divergence_top_p), (args.divergence_measure,))
                out["div"][glob] = trunc[args.divergence_measure]
            else:  # one pass: divergence and both entropies share exp() (diagnostics.divergence.pair_measures)
                ent = pair_measures(lb, lp, (args.divergence_measure,), entropies=True)
                out["div"][glob] = ent[args.divergence_measure]
            out["ent_base"][glob] = ent["entropy_base"]
            out["ent_policy"][glob] = ent["entropy_policy"]
            del lb, lp

    # ----------------------------------------------------------------------------------------------
    # Overrides
    # ----------------------------------------------------------------------------------------------

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        if self.args.divergence_source != "base":
            return output
        mode = "train" if self.model.training else "eval"
        prompt_ids, completion_ids = output["prompt_ids"], output["completion_ids"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (B, P+C)
        attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)  # (B, P+C)
        mask = output["completion_mask"]
        if "tool_mask" in output:
            mask = mask * output["tool_mask"]  # (B, C)
        default_bs = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        stats = self._base_vs_policy(input_ids, attention_mask, completion_ids, completion_ids.size(1),
                                     self.args.divergence_batch_size or default_bs)
        div = stats["div"] * mask  # (B, C); 0 off-mask
        output["advantages"] = self._weighted_advantages(output["advantages"], div, mask, mode)
        self._log_shift(mode, div, mask, stats["ent_base"], stats["ent_policy"])
        return output

    def _weighted_advantages(self, advantages, div, mask, mode):
        """Ã = w · Â[:, None]  ((B,) , (B, C) -> (B, C)); also logs the weight statistics."""
        self._dw_calls += 1
        seed = (self.args.weighting_seed * 1_000_003 + self.state.global_step * 7_919 + self._dw_calls * 31
                + self.accelerator.process_index)
        weights, n_bad = compute_weights(
            self.args.weighting, div, mask, self.args.weighting_params(seed), self.args.weighting_renormalize,
            all_reduce_sum=lambda t: self.accelerator.reduce(t, reduction="sum"),
        )  # (B, C)
        self._last_weights = weights
        bad = self.accelerator.reduce(torch.tensor(float(n_bad), device=div.device), reduction="sum")
        self._metrics[mode]["shift/weight_nonfinite_fallbacks"].append(bad.item())
        adv = advantages if advantages.dim() == 2 else advantages.unsqueeze(1)  # (B, 1) or (B, C)
        return weights.to(adv.dtype) * adv  # (B, C)

    def _compute_loss(self, model, inputs):
        if self.args.divergence_source != "old":
            return super()._compute_loss(model, inputs)
        # The buffered batch is reused across num_iterations: rescale a shallow copy, never the buffer.
        inputs = dict(inputs)
        self._dw_loss_inputs = inputs
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._dw_loss_inputs = None

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *pargs, **kw):
        out = super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                         *pargs, **kw)
        inputs = self._dw_loss_inputs
        if inputs is not None:  # the policy forward of TRL's _compute_loss: advantages not read yet
            self._dw_loss_inputs = None
            self._rescale_with_old(inputs, out[0].detach(), out[1])
        return out

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
        allrows = self._gather_valid(cols).double()  # (N, 4)
        for key, value in shift_metrics(allrows, self.args.high_divergence_threshold).items():
            self._metrics[mode][f"shift/{key}"].append(value)


def shift_metrics(rows: torch.Tensor, high_threshold: float = 0.1) -> dict[str, float]:
    """Summary of one batch's per-token divergence. `rows`: `(N, 4)` = [D, H_base, H_policy, weight].

    divergence_mean, divergence_p{50,90,99}; frac_above_{0.01,0.05,0.1} (sparsity); top{1,5,20}pct_share
    = Σ of the top ⌈q·N⌉ D / Σ D (concentration); entropy_{base,policy}_{high,low} = mean entropy on
    tokens with D > high_threshold vs the rest; weight_{mean,max,frac_not_one}. NaN when undefined.
    """
    nan = float("nan")
    n = rows.size(0)
    if n == 0:
        return {"num_tokens": 0.0}
    d = rows[:, 0]
    d_sorted = torch.sort(d, descending=True).values  # (N,)
    total = d_sorted.sum()
    m: dict[str, float] = {"num_tokens": float(n), "divergence_mean": d.mean().item()}
    for q in QUANTILES:
        # lower "nearest-rank"-free linear interpolation, like torch.quantile (which caps its input size)
        pos = q * (n - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        asc_lo, asc_hi = d_sorted[n - 1 - lo], d_sorted[n - 1 - hi]
        m[f"divergence_p{round(q * 100)}"] = (asc_lo + (asc_hi - asc_lo) * (pos - lo)).item()
    for t in SPARSITY_THRESHOLDS:
        m[f"frac_above_{t:g}"] = (d > t).double().mean().item()
    for q in TOP_SHARES:
        k = max(1, math.ceil(q * n))
        m[f"top{round(q * 100)}pct_share"] = (d_sorted[:k].sum() / total).item() if total > 0 else nan
    high = d > high_threshold
    for j, name in ((1, "base"), (2, "policy")):
        ent = rows[:, j]
        m[f"entropy_{name}_high"] = ent[high].mean().item() if high.any() else nan
        m[f"entropy_{name}_low"] = ent[~high].mean().item() if (~high).any() else nan
    w = rows[:, 3]
    m["weight_mean"] = w.mean().item()
    m["weight_max"] = w.max().item()
    m["weight_frac_not_one"] = (w != 1.0).double().mean().item()
    return m


__all__ = ["DivergenceWeightedGRPOTrainer", "shift_metrics"]
