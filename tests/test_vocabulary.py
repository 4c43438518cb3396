"""docs/vocabulary.md names exactly the shift/ and shift_probe/ keys the code logs (one name per quantity)."""

from __future__ import annotations

import re
from pathlib import Path

from datasets import Dataset

from diagnostics.shift_stats import DEFAULT_QUANTILES, DEFAULT_THRESHOLDS, DEFAULT_TOP_SHARES

ROOT = Path(__file__).resolve().parents[1]


def documented_keys(measure: str = "js") -> set[str]:
    """Every key in the tables of docs/vocabulary.md's "Shift statistics" section, templates expanded."""
    text = (ROOT / "docs" / "vocabulary.md").read_text()
    section = text.split("## Shift statistics", 1)[1].split("\n## ", 1)[0]
    keys: set[str] = set()
    for row in section.splitlines():
        if not row.startswith("| `"):
            continue
        for name in re.findall(r"`([^`]+)`", row.split("|")[1]):
            names = [name.replace("{m}", measure)]
            for field, values in (("{t}", [f"{t:g}" for t in DEFAULT_THRESHOLDS]), ("{k}", DEFAULT_TOP_SHARES),
                                  ("{d}", range(10)), ("{j}", range(1, 6))):
                names = [n.replace(field, str(v)) for n in names for v in (values if field in n else [None])]
            keys.update(names)
    return keys


def test_documented_table_expands_the_defaults():
    keys = documented_keys()
    assert {f"js_p{q}" for q in DEFAULT_QUANTILES} <= keys and "frac_js_gt_0.01" in keys and "js_top5pct_share" in keys


def test_logged_names_are_the_documented_ones(tiny_tokenizer, tmp_path):
    from diagnostics.callbacks import ShiftDiagnosticsCallback
    from diagnostics.probe import build_probe_set
    from train.config import DivergenceGRPOConfig
    from train.tiny_world import random_tiny_model
    from train.trainer import DivergenceWeightedGRPOTrainer

    prompts = Dataset.from_dict({"prompt": [[{"role": "user", "content": f"Compute {i}+{i}"}] for i in range(4)]})
    model = random_tiny_model(tiny_tokenizer, seed=0, hidden_size=16, num_layers=2, num_heads=2)
    args = DivergenceGRPOConfig(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=4,
                                num_generations=4, max_completion_length=6, max_steps=2, logging_steps=1,
                                report_to=[], save_strategy="no", learning_rate=1e-2)
    tr = DivergenceWeightedGRPOTrainer(model=model, reward_funcs=[lambda completions, **kw: [float(len(c[0]["content"]))
                                                                                           for c in completions]],
                                       args=args, train_dataset=prompts, processing_class=tiny_tokenizer)
    probe = build_probe_set(model, tiny_tokenizer, list(prompts["prompt"][:2]), max_new_tokens=6, progress=False)
    ShiftDiagnosticsCallback(probe, every_n_steps=1, evaluate_on_save=False).attach(tr, base_from_trainer=True)
    tr.train()
    logged = {k for h in tr.state.log_history for k in h}
    shift = {k.split("/", 1)[1] for k in logged if k.startswith("shift/")}
    probe_keys = {k.split("/", 1)[1] for k in logged if k.startswith("shift_probe/")}
    doc = documented_keys()
    assert shift and probe_keys
    assert (shift | probe_keys) - doc == set(), "logged but not in docs/vocabulary.md"
    assert doc - (shift | probe_keys) == set(), "in docs/vocabulary.md but never logged"
