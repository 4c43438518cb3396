"""`RewardSettings`: which rewards a run trains on and how answers are scored, decided once.

    settings = RewardSettings.from_args(script_args, training_args)   # train/grpo.py
    reward_funcs = settings.reward_funcs()                            # TRL's reward_funcs
    evaluate_model(model, dataset, **settings.evaluation_kwargs())    # final / demo / compare evaluations

The same settings (reward functions and weights, the accuracy reward's answer extraction and verifier
timeout, the gold format, the completion length cap) feed the TRL reward functions and every evaluation
of the run, so a run trained with `extraction: strict` is also evaluated strict. The object is saved as
`reward_settings.json` in the run folder, next to `final_eval.json`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

SETTINGS_NAME = "reward_settings.json"


@dataclass(frozen=True)
class RewardSettings:
    """The reward settings of one run (frozen).

    reward_funcs: names from `rewards.registry` ('accuracy', 'format', 'overlong'); reward_weights: one per
    function or None (TRL: all 1); extraction: 'lenient' or 'strict' (the accuracy reward's and every
    evaluation's answer extraction); timeout: seconds the verifier may spend on one completion; gold_format:
    how the dataset's gold answers are read; max_completion_length: the generation cap (completions at the cap
    without an EOS are `truncated`); overlong_buffer: L_cache of the 'overlong' reward (None = cap // 4).
    """

    reward_funcs: tuple[str, ...] = ("accuracy",)
    reward_weights: tuple[float, ...] | None = None
    extraction: str = "lenient"
    timeout: float = 5.0
    gold_format: str = "auto"
    max_completion_length: int | None = None
    overlong_buffer: int | None = None
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        from rewards.extract import EXTRACTION_MODES

        if not self.reward_funcs:
            raise ValueError("reward_funcs is empty. Fix: pass e.g. --reward_funcs accuracy")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_funcs):
            raise ValueError(
                f"reward_weights has {len(self.reward_weights)} values for {len(self.reward_funcs)} reward_funcs "
                f"{list(self.reward_funcs)}. Fix: give one weight per reward function, in the same order"
            )
        if self.extraction not in EXTRACTION_MODES:
            raise ValueError(f"extraction={self.extraction!r} is unknown; set it to one of {EXTRACTION_MODES}.")
        if not self.timeout > 0:
            raise ValueError(f"reward_timeout={self.timeout} must be > 0 seconds.")

    @classmethod
    def from_args(cls, script_args, training_args) -> RewardSettings:
        """From the entry point's `GRPOScriptArguments` and the `DivergenceGRPOConfig` (train/grpo.py)."""
        weights = training_args.reward_weights
        return cls(
            reward_funcs=tuple(script_args.reward_funcs or ()),
            reward_weights=None if weights is None else tuple(float(w) for w in weights),
            extraction=training_args.extraction,
            timeout=script_args.reward_timeout,
            gold_format=script_args.gold_format,
            max_completion_length=training_args.max_completion_length,
            overlong_buffer=script_args.overlong_buffer,
        )

    def reward_funcs_options(self) -> dict:
        """Keyword options of `rewards.registry.get_reward_funcs` for these functions."""
        options: dict = {}
        if "accuracy" in self.reward_funcs:
            options["timeout"] = self.timeout
            options["extraction"] = self.extraction
            # completions at the cap without a final EOS are `truncated`: no lenient fallback (rewards.registry)
            options["max_completion_length"] = self.max_completion_length
        if "overlong" in self.reward_funcs:
            options["max_completion_length"] = self.max_completion_length
            options["overlong_buffer"] = self.overlong_buffer
        return options

    def reward_funcs_list(self) -> list:
        """The TRL reward functions (`rewards.registry.get_reward_funcs`), in order."""
        from rewards.registry import get_reward_funcs

        return get_reward_funcs(list(self.reward_funcs), **self.reward_funcs_options())

    def evaluation_kwargs(self) -> dict:
        """The scoring keyword arguments of `train.evaluate.evaluate_model`: the training reward's extraction
        and verifier timeout."""
        return {"extraction": self.extraction, "timeout": self.timeout}

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("extra")
        out["reward_funcs"] = list(self.reward_funcs)
        out["reward_weights"] = None if self.reward_weights is None else list(self.reward_weights)
        return out

    def save(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / SETTINGS_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"format": 1, **self.to_dict()}, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> RewardSettings:
        path = Path(path)
        data = json.loads((path / SETTINGS_NAME if path.is_dir() else path).read_text())
        data.pop("format", None)
        data["reward_funcs"] = tuple(data["reward_funcs"])
        if data.get("reward_weights") is not None:
            data["reward_weights"] = tuple(data["reward_weights"])
        return cls(**data)


__all__ = ["RewardSettings", "SETTINGS_NAME"]
