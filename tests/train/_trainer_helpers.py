"""What the trainer tests share: a 2-step tiny config, a toy reward, the trainer built from them.

`prompts` (8 one-turn prompts) is the module fixture of tests/train/conftest.py.
"""

from __future__ import annotations

from train.config import DivergenceGRPOConfig
from train.trainer import DivergenceWeightedGRPOTrainer

COMMON = dict(
    use_cpu=True, per_device_train_batch_size=4, num_generations=4, max_completion_length=6, max_steps=2,
    logging_steps=1, report_to=[], learning_rate=1e-2, save_strategy="no", seed=0,
)


def short_reward(completions, **kwargs):
    """Toy reward: shorter completions are better, so the group advantages are non-zero."""
    return [-float(len(c[0]["content"] if isinstance(c, list) else c)) for c in completions]


def dw_trainer(model, tokenizer, dataset, tmp_path, **kw):
    """A `DivergenceWeightedGRPOTrainer` on `COMMON` updated by `kw`, rewarded by `short_reward`."""
    args = DivergenceGRPOConfig(output_dir=str(tmp_path), **{**COMMON, **kw})
    return DivergenceWeightedGRPOTrainer(model=model, reward_funcs=[short_reward], args=args,
                                         train_dataset=dataset, processing_class=tokenizer)
