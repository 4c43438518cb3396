"""`DivergenceGRPOConfig`: TRL's `GRPOConfig` plus the divergence-weighting settings.

Only new fields are added, each with help text (`--help` of the entry point shows it); everything
else is TRL's. `__post_init__` rejects bad settings at start-up with a message naming the setting
and the fix, so a bad recipe fails before the first (expensive) generation step.

Divergence-weighted GRPO (Meng et al., "Sparse but Critical", arXiv 2603.22446, §3):
    Ã_{i,t} = w(D_{i,t}) · Â_i,   D detached,
with D either the base-vs-policy divergence (`divergence_source="base"`, this project's default)
or the paper's own sampled-token k3 estimate of KL(π_old ‖ π_θ) (`divergence_source="old"`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from trl import GRPOConfig

from diagnostics.divergence import DIVERGENCE_REGISTRY, SAMPLED_ESTIMATOR_REGISTRY
from diagnostics.divergence_settings import DivergenceSettings
from diagnostics.shift_stats import DEFAULT_HIGH_DIVERGENCE_THRESHOLD
from rewards.extract import EXTRACTION_MODES
from train.weighting import (
    RENORMALIZE_MODES,
    WEIGHTING_REGISTRY,
    WeightingParams,
    is_scaled,
    weighting_help,
    weighting_parameters,
)

PAPER = "arXiv 2603.22446"
DIVERGENCE_SOURCES = ("base", "old")
BASE_DTYPES = ("policy", "auto", "float32", "bfloat16", "float16")
# A (B, T) advantage is meaningless or unsupported for these TRL loss types:
# - luspo: a sequence-level objective (GSPO variant, requires importance_sampling_level="sequence") that
#   scales each sequence's loss by its length; per-token weights break its length accounting.
# - vespo: sequence-level gamma weights φ(w) chosen by the sign of a per-sequence advantage.
UNSUPPORTED_LOSS_TYPES = ("luspo", "vespo")


@dataclass
class DivergenceGRPOConfig(GRPOConfig):
    """GRPOConfig + divergence-weighted advantages (see `docs/trainer.md` for the field table)."""

    divergence_source: str = field(
        default="base",
        metadata={
            "help": "Where the per-token divergence D comes from. 'base': the frozen base model vs the policy "
            "that generated the batch, teacher-forced on prompt+completion (full-vocabulary measure, this "
            "project's default). 'old': the paper's sampled-token estimate of KL(pi_old || pi_theta) at loss time "
            f"({PAPER}); non-trivial only when the policy changes between generation and loss, i.e. "
            "num_iterations > 1 or steps_per_generation > gradient_accumulation_steps."
        },
    )
    divergence_measure: str | None = field(
        default=None,
        metadata={
            "help": "Divergence measure. Full-vocabulary (source 'base' only): 'js' (Jensen-Shannon, in [0, ln 2], "
            f"the paper's analysis measure, {PAPER}), 'kl_forward' KL(base||policy), 'kl_reverse' KL(policy||base), "
            "'tv' (total variation). Sampled-token estimators of KL(sampler||other) (either source): 'k1', "
            "'abs_k1', 'k3' (Schulman). Default: 'js' for source 'base', 'k3' for source 'old' (the paper's)."
        },
    )
    divergence_top_p: float | None = field(
        default=None,
        metadata={
            "help": "Compare top-p-truncated, renormalised distributions instead of the full ones (the paper "
            f"used 0.7 for memory, {PAPER}); None = full vocabulary. KL can be +inf under truncation (its weight "
            "then falls back to 1 and is counted); JS and TV stay bounded."
        },
    )
    divergence_temperature: float | None = field(
        default=None,
        metadata={
            "help": "Temperature at which base and policy distributions are compared, softmax(logits / T). "
            "None = the sampling `temperature`, as TRL's log-probs use."
        },
    )
    divergence_chunk_size: int = field(
        default=256,
        metadata={
            "help": "Token rows per chunk of the full-vocabulary divergence pass: at most `chunk x vocab` float32 "
            "logits of each model are alive at once (never a full (B, T, V) copy). Lower it if memory is tight."
        },
    )
    divergence_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Sequences per forward micro-batch of the divergence pass. None = per_device_train_batch_size "
            "(as TRL's own reference pass)."
        },
    )
    divergence_reuse_loss_forward: bool = field(
        default=True,
        metadata={
            "help": "Compute the base-vs-policy divergence inside TRL's loss step, from the hidden states of the "
            "policy forward that the loss runs anyway: one forward per step saved (only the base forward remains, "
            "as for TRL's beta > 0). Used only where it is exact: divergence_source='base', the policy that "
            "generated the batch is the one being trained (gradient_accumulation_steps a multiple of "
            "steps_per_generation, num_iterations=1), logits = hidden @ W (no soft-capping/scaling), no FSDP, and "
            "weights computable per micro-batch (a token-local weighting with renormalize "
            "'none'/'sequence', or steps_per_generation=1). Otherwise, or with False, a separate no-grad policy "
            "forward runs after generation."
        },
    )
    high_divergence_threshold: float = field(
        default=DEFAULT_HIGH_DIVERGENCE_THRESHOLD,
        metadata={
            "help": "D above which a token counts as 'high divergence' (the paper's JS > 0.1, "
            f"{PAPER}): the shift/ and shift_probe/ high/low entropy metrics, the probe summary, and the default of "
            "`sparse-rlvr shift` / `evolution` --high-divergence-threshold on this run (divergence_settings.json)."
        },
    )
    base_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "The frozen base model D is measured against. None = the policy's own initial weights (the "
            "model being trained; with PEFT the adapter-disabled model, no second copy; with beta > 0 TRL's "
            "reference model is reused). Must share the policy's vocabulary."
        },
    )
    base_model_dtype: str = field(
        default="policy",
        metadata={
            "help": "dtype of the base model: 'policy' (the policy's dtype, default), 'auto' (the checkpoint's), "
            "'float32', 'bfloat16' or 'float16'."
        },
    )
    weighting: str = field(
        default="sigmoid",
        metadata={"help": weighting_help()},  # built from train.weighting's registry, the single source
    )
    weighting_alpha: float = field(
        default=10.0,
        metadata={
            "help": "alpha of 'sigmoid' and 'linear' (applied to D / weighting_scale). The paper does not publish "
            "its value; alpha = 10 maps D = 0.1 D_ref (weighting_scale='auto') to sigmoid(1), and D = D_ref (the p99 "
            "token) to weight 1 + s (sigmoid(10) - 1/2) ~ 1 + s/2."
        },
    )
    weighting_s: float = field(
        default=1.0,
        metadata={"help": "s of 'sigmoid': weights lie in 1 +/- s/2 (not published by the paper)."},
    )
    weighting_scale: str = field(
        default="auto",
        metadata={
            "help": "Unit of D for 'sigmoid' and 'linear' (they read D / scale). 'auto' (default): D_ref, a running "
            "EMA over the previous generation batches of the weighting_scale_quantile of |D| over all processes' "
            "tokens, "
            "identical on every rank and saved in checkpoints, so one alpha means the same on every model and measure "
            "(weights are 1 until a batch with non-zero D has been seen, e.g. step 1 when the base is the policy's "
            "initial weights). A number > 0: an absolute scale (1 = the paper's sigmoid(alpha * D))."
        },
    )
    weighting_scale_quantile: float = field(
        default=0.99,
        metadata={"help": "Quantile q of |D| that defines D_ref for weighting_scale='auto', in (0, 1]."},
    )
    weighting_scale_ema: float = field(
        default=0.1,
        metadata={
            "help": "EMA rate r of D_ref across training updates, in (0, 1]: D_ref <- (1 - r) D_ref + r * quantile "
            "(the first non-zero quantile initialises it; 1 = the current batch only)."
        },
    )
    weighting_min: float = field(default=0.0, metadata={"help": "w_min of 'linear' (lower clip)."})
    weighting_max: float = field(default=5.0, metadata={"help": "w_max of 'linear' (upper clip), >= w_min."})
    weighting_rho: float = field(
        default=0.2,
        metadata={"help": "Fraction of valid tokens kept by 'top_quantile' / 'random_quantile', in (0, 1]."},
    )
    weighting_seed: int = field(
        default=0,
        metadata={
            "help": "Seed of 'random_quantile', combined with the global step, the call's index within the step and "
            "the process index: all checkpointed or fixed, so a resumed run draws the same tokens."
        },
    )
    weighting_renormalize: str = field(
        default="none",
        metadata={
            "help": "Rescale weights to mean 1 over valid tokens so the effective step size is unchanged: 'none', "
            "'sequence' (per completion) or 'batch' (over the global generation batch, summed across processes)."
        },
    )
    shift_probe_every_n_steps: int = field(
        default=0,
        metadata={
            "help": "Shift monitoring: every N optimizer steps and at each checkpoint save, teacher-force the base and "
            "the current policy on a fixed probe set and log shift_probe/* (the same names as shift/*; "
            "diagnostics.callbacks.ShiftDiagnosticsCallback; also shift_probe.jsonl and a summary per checkpoint). "
            "0 = off."
        },
    )
    shift_probe_num_prompts: int = field(
        default=16,
        metadata={"help": "Prompts in the shift probe set (shift_probe_source 'eval'): completions sampled once from "
                          "the initial policy (= the base), seeded, at the training temperature."},
    )
    shift_probe_source: str = field(
        default="eval",
        metadata={"help": "Where the shift probe set comes from: 'eval' (the first shift_probe_num_prompts problems of "
                          "dataset_test_split) or the path of a probe-set JSONL file (prompt_ids/completion_ids or "
                          "chat-templated prompt/completion text; e.g. an earlier run's shift_probe_set.jsonl)."},
    )
    extraction: str = field(
        default="lenient",
        metadata={
            "help": "Answer extraction of the 'accuracy' reward: 'lenient' (a \\boxed{} or 'the answer is' marker, "
            "else the completion's last math expression or number, as math-verify) or 'strict' (markers only; "
            "a completion without one scores 0 with status no_answer). See docs/rewards.md."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.extraction not in EXTRACTION_MODES:
            raise ValueError(f"extraction={self.extraction!r} is unknown; set it to one of {EXTRACTION_MODES}.")
        if self.shift_probe_every_n_steps < 0:
            raise ValueError(f"shift_probe_every_n_steps={self.shift_probe_every_n_steps} must be >= 0 (0 = off).")
        if self.shift_probe_num_prompts < 1:
            raise ValueError(f"shift_probe_num_prompts={self.shift_probe_num_prompts} must be >= 1.")
        if self.shift_probe_source != "eval" and not self.shift_probe_source.endswith(".jsonl"):
            raise ValueError(f"shift_probe_source={self.shift_probe_source!r} is neither 'eval' nor a .jsonl probe "
                             "file; set one of them.")
        if self.divergence_source not in DIVERGENCE_SOURCES:
            raise ValueError(
                f"divergence_source={self.divergence_source!r} is unknown; set it to one of {DIVERGENCE_SOURCES}."
            )
        sampled = tuple(sorted(SAMPLED_ESTIMATOR_REGISTRY))
        full = tuple(sorted(DIVERGENCE_REGISTRY))
        if self.divergence_measure is None:
            self.divergence_measure = "js" if self.divergence_source == "base" else "k3"
        if self.divergence_measure not in sampled + full:
            raise ValueError(
                f"divergence_measure={self.divergence_measure!r} is unknown; valid measures: "
                f"{', '.join(full + sampled)}."
            )
        if self.divergence_source == "old" and self.divergence_measure not in sampled:
            raise ValueError(
                f"divergence_measure={self.divergence_measure!r} needs full distributions, but divergence_source="
                f"'old' only has the sampled token's log-probs; set divergence_measure to one of {sampled} "
                "(the paper's is 'k3') or divergence_source='base'."
            )
        if self.divergence_top_p is not None and not 0.0 < self.divergence_top_p <= 1.0:
            raise ValueError(f"divergence_top_p={self.divergence_top_p} must be in (0, 1] or None (full vocabulary).")
        if self.divergence_top_p is not None and self.divergence_measure in sampled:
            raise ValueError(
                f"divergence_top_p applies to full-vocabulary measures, not to the sampled estimator "
                f"{self.divergence_measure!r}; unset divergence_top_p or pick 'js'/'kl_forward'/'kl_reverse'/'tv'."
            )
        if self.divergence_temperature is not None and self.divergence_temperature <= 0:
            raise ValueError(f"divergence_temperature={self.divergence_temperature} must be > 0 (or None).")
        if self.divergence_chunk_size < 1:
            raise ValueError(f"divergence_chunk_size={self.divergence_chunk_size} must be >= 1.")
        if self.divergence_batch_size is not None and self.divergence_batch_size < 1:
            raise ValueError(f"divergence_batch_size={self.divergence_batch_size} must be >= 1 or None.")
        if self.base_model_dtype not in BASE_DTYPES:
            raise ValueError(f"base_model_dtype={self.base_model_dtype!r} is unknown; set one of {BASE_DTYPES}.")
        if self.weighting not in WEIGHTING_REGISTRY:
            raise ValueError(
                f"weighting={self.weighting!r} is unknown; valid weightings: {', '.join(sorted(WEIGHTING_REGISTRY))}."
            )
        if "rho" in weighting_parameters(self.weighting) and not 0.0 < self.weighting_rho <= 1.0:
            raise ValueError(
                f"weighting_rho={self.weighting_rho} is outside (0, 1]; set the fraction of tokens "
                f"{self.weighting!r} keeps, e.g. weighting_rho=0.2."
            )
        self.weighting_scale = parse_weighting_scale(self.weighting_scale)
        if not 0.0 < self.weighting_scale_quantile <= 1.0:
            raise ValueError(
                f"weighting_scale_quantile={self.weighting_scale_quantile} is outside (0, 1]; e.g. 0.99 (p99 of D)."
            )
        if not 0.0 < self.weighting_scale_ema <= 1.0:
            raise ValueError(f"weighting_scale_ema={self.weighting_scale_ema} is outside (0, 1]; e.g. 0.1.")
        if self.weighting_min > self.weighting_max:
            raise ValueError(
                f"weighting_min={self.weighting_min} > weighting_max={self.weighting_max}; swap them."
            )
        if self.weighting_renormalize not in RENORMALIZE_MODES:
            raise ValueError(
                f"weighting_renormalize={self.weighting_renormalize!r} is unknown; set one of {RENORMALIZE_MODES}."
            )
        if self.loss_type in UNSUPPORTED_LOSS_TYPES and self.weighting != "none":
            raise ValueError(
                f"loss_type={self.loss_type!r} is a sequence-level objective where a per-token (B, T) advantage is "
                f"meaningless; use loss_type 'dapo', 'grpo', 'dr_grpo', 'bnpo', 'cispo' or 'sapo', or weighting='none'."
            )
        if getattr(self, "use_liger_loss", False):
            raise ValueError(
                "use_liger_loss=True never materialises the logits this trainer needs and ignores (B, T) advantages; "
                "set use_liger_loss=False."
            )
        if self.use_liger_kernel and (self.liger_kernel_config or {}).get("fused_linear_cross_entropy"):
            raise ValueError(
                'liger_kernel_config={"fused_linear_cross_entropy": True} replaces the model forward the divergence '
                "pass needs; set it to False."
            )
        if self.divergence_source == "old" and self.weighting != "none" and not self.old_policy_differs:
            raise ValueError(
                "divergence_source='old' measures KL(pi_old || pi_theta), which is identically 0 when each generation "
                f"batch is used for one optimizer step (num_iterations={self.num_iterations}, steps_per_generation="
                f"{self.steps_per_generation}, gradient_accumulation_steps={self.gradient_accumulation_steps}); set "
                "num_iterations > 1 (or steps_per_generation > gradient_accumulation_steps), or use "
                "divergence_source='base'."
            )

    @property
    def old_policy_differs(self) -> bool:
        """True when TRL computes π_old log-probs, i.e. the policy moves between generation and loss.

        TRL stores `old_per_token_logps` computed at generation time when gradient_accumulation_steps %
        (steps_per_generation · num_iterations) != 0; otherwise (even when vLLM's importance-sampling
        correction makes it store them) no optimizer step happens between generation and loss, π_old = π_θ.
        """
        generate_every = self.steps_per_generation * self.num_iterations
        return self.gradient_accumulation_steps % generate_every != 0

    def divergence_settings(self) -> DivergenceSettings:
        """The one `DivergenceSettings` of this run (measure, temperature, top-p, chunk size, high-divergence
        threshold): the trainer's D, the probe callback and `sparse-rlvr shift` / `evolution` (through the run
        folder's `divergence_settings.json`) all use it. Temperature: `divergence_temperature`, else the
        sampling `temperature` (as TRL's log-probs)."""
        return DivergenceSettings(
            measure=self.divergence_measure,
            temperature=self.divergence_temperature or self.temperature,
            top_p=self.divergence_top_p,
            chunk_size=self.divergence_chunk_size,
            high_divergence_threshold=self.high_divergence_threshold,
        )

    @property
    def auto_scale(self) -> bool:
        """True when the weights read D / D_ref (weighting_scale='auto' and a weighting that uses a scale)."""
        return self.weighting_scale == "auto" and is_scaled(self.weighting)

    def weighting_params(self, seed: int | None = None, scale: float | None = None) -> WeightingParams:
        """The weighting knobs; `scale` overrides weighting_scale (the trainer passes D_ref when it is 'auto')."""
        if scale is None:
            scale = 1.0 if self.weighting_scale == "auto" else self.weighting_scale
        return WeightingParams(
            alpha=self.weighting_alpha,
            s=self.weighting_s,
            scale=scale,
            w_min=self.weighting_min,
            w_max=self.weighting_max,
            rho=self.weighting_rho,
            seed=self.weighting_seed if seed is None else seed,
        )


def parse_weighting_scale(value) -> str | float:
    """'auto' or a number > 0 (from YAML, the command line or Python) -> 'auto' or a float; else ValueError."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        scale = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"weighting_scale={value!r} is neither 'auto' nor a number; set 'auto' or e.g. 0.693."
        ) from None
    if not (scale > 0 and scale != float("inf")):
        raise ValueError(f"weighting_scale={value!r} must be 'auto' or a finite number > 0.")
    return scale


def new_fields() -> list:
    """The dataclass fields DivergenceGRPOConfig adds to GRPOConfig (docs table, help-text test)."""
    parent = {f.name for f in fields(GRPOConfig)}
    return [f for f in fields(DivergenceGRPOConfig) if f.name not in parent]


def fields_markdown() -> str:
    """The Markdown table of the new fields (name, default, help) that docs/trainer.md embeds.

    Regenerate the docs table with `python -c "from train.config import fields_markdown; print(fields_markdown())"`;
    tests/train/test_config.py fails when docs/trainer.md drifts from it.
    """
    lines = ["| field | default | what it does |", "|---|---|---|"]
    for f in new_fields():
        help_text = f.metadata["help"].replace("|", "\\|")
        lines.append(f"| `{f.name}` | `{f.default!r}` | {help_text} |")
    return "\n".join(lines)
