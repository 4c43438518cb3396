"""`DivergenceSettings`: how a base-vs-policy divergence is measured, decided once per run.

    from diagnostics.divergence_settings import DivergenceSettings
    settings = training_args.divergence_settings()     # train.config.DivergenceGRPOConfig builds it
    settings.save(output_dir)                          # output_dir/divergence_settings.json
    DivergenceSettings.from_run("runs/grpo/checkpoint-200")   # the run folder's settings (or None)

The trainer's `shift/*` metrics and the probe callback's `shift_probe/*` share their names
(docs/vocabulary.md), so they must be one computation: the same measure on the same distributions,
softmax(logits / temperature), top-p truncated when `top_p` is set. One frozen object holds these
settings; the trainer's D, the probe callback and the defaults of `sparse-rlvr shift` / `evolution`
(when `--policy` is a run folder or one of its checkpoints) all read it, nothing decides them again.

Fields:
    measure: the divergence's registry name (`diagnostics.divergence`): 'js', 'kl_forward', 'kl_reverse',
        'tv' (full distributions) or a sampled-token estimator 'k1', 'abs_k1', 'k3'.
    temperature: > 0; both distributions are softmax(logits / temperature) (the trainer's default is the
        sampling temperature, as TRL's log-probs).
    top_p: None (full vocabulary) or in (0, 1): compare top-p truncated, renormalised distributions
        (the paper used 0.7). 1.0 is stored as None.
    chunk_size: token rows per chunk of the vocabulary math (bounds `(chunk, V)` float32 temporaries).
    high_divergence_threshold: D above which a token counts as "high divergence" (the paper's JS > 0.1).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from diagnostics.shift_stats import DEFAULT_HIGH_DIVERGENCE_THRESHOLD

SETTINGS_NAME = "divergence_settings.json"  # in the run folder (the trainer's output_dir)
DEFAULT_CHUNK_SIZE = 256


@dataclass(frozen=True)
class DivergenceSettings:
    """The divergence measurement settings (see the module docstring); frozen, validated on construction."""

    measure: str = "js"
    temperature: float = 1.0
    top_p: float | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    high_divergence_threshold: float = DEFAULT_HIGH_DIVERGENCE_THRESHOLD

    def __post_init__(self):
        from diagnostics.divergence import DIVERGENCE_REGISTRY, SAMPLED_ESTIMATOR_REGISTRY

        if self.measure not in DIVERGENCE_REGISTRY and self.measure not in SAMPLED_ESTIMATOR_REGISTRY:
            valid = sorted(DIVERGENCE_REGISTRY) + sorted(SAMPLED_ESTIMATOR_REGISTRY)
            raise ValueError(f"divergence measure {self.measure!r} is unknown; valid measures: {', '.join(valid)}.")
        if not self.temperature > 0:
            raise ValueError(f"divergence temperature={self.temperature} must be > 0.")
        if self.top_p is not None:
            if not 0.0 < self.top_p <= 1.0:
                raise ValueError(f"divergence top_p={self.top_p} must be in (0, 1] or None (full vocabulary).")
            if self.top_p >= 1.0:
                object.__setattr__(self, "top_p", None)  # 1.0 keeps every token: the full distribution
        if self.top_p is not None and self.sampled:
            raise ValueError(f"top_p applies to full-vocabulary measures, not to the sampled estimator "
                             f"{self.measure!r}; unset top_p or pick 'js'/'kl_forward'/'kl_reverse'/'tv'.")
        if self.chunk_size < 1:
            raise ValueError(f"divergence chunk_size={self.chunk_size} must be >= 1.")

    @property
    def sampled(self) -> bool:
        """True for a sampled-token estimator (k1, abs_k1, k3): no vocabulary-sized distribution is compared."""
        from diagnostics.divergence import DIVERGENCE_REGISTRY

        return self.measure not in DIVERGENCE_REGISTRY

    def replace(self, **changes) -> DivergenceSettings:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write `folder/divergence_settings.json` (atomic); returns its path."""
        from diagnostics.jsonl import write_json_atomic

        path = Path(folder) / SETTINGS_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"format": 1, **self.to_dict()})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> DivergenceSettings:
        """Read a `divergence_settings.json` file (or the folder holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / SETTINGS_NAME
        data = json.loads(path.read_text())
        data.pop("format", None)
        return cls(**data)

    @classmethod
    def from_run(cls, path: str | os.PathLike | None) -> DivergenceSettings | None:
        """The settings saved by the training run `path` belongs to: `path` itself (the run folder) or its
        parent (a `checkpoint-*` folder inside it). None when neither holds a `divergence_settings.json`
        (a hub id, a model that was not trained here)."""
        if path is None:
            return None
        folder = Path(path)
        for candidate in (folder, folder.parent):
            if (candidate / SETTINGS_NAME).is_file():
                return cls.load(candidate / SETTINGS_NAME)
        return None


__all__ = ["DivergenceSettings", "SETTINGS_NAME", "DEFAULT_CHUNK_SIZE"]
