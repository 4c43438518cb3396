"""train.config: every new field documented, bad settings rejected at start-up naming the setting."""

from __future__ import annotations

import pytest

from train.config import DivergenceGRPOConfig, new_fields

BASE = dict(output_dir="/tmp/unused", use_cpu=True, per_device_train_batch_size=2, num_generations=2, report_to=[])


def make(**kw):
    return DivergenceGRPOConfig(**{**BASE, **kw})


def test_every_new_field_has_help():
    added = new_fields()
    assert len(added) >= 15
    for f in added:
        help_text = f.metadata.get("help", "")
        assert len(help_text) > 20, f"{f.name} has no help text"


def test_paper_fields_cite_arxiv():
    by_name = {f.name: f.metadata["help"] for f in new_fields()}
    for name in ("divergence_source", "divergence_measure", "weighting", "divergence_top_p"):
        assert "2603.22446" in by_name[name], name


def test_defaults_resolve_measure():
    assert make().divergence_measure == "js"
    assert make(divergence_source="old", num_iterations=2).divergence_measure == "k3"
    cfg = make(weighting_alpha=-3.0, weighting_s=0.5, weighting_rho=0.3)
    p = cfg.weighting_params(seed=7)
    assert (p.alpha, p.s, p.rho, p.seed) == (-3.0, 0.5, 0.3, 7)


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"weighting": "sigmoidal"}, r"weighting='sigmoidal' is unknown; valid weightings: .*sigmoid"),
        ({"divergence_measure": "jsd"}, r"divergence_measure='jsd' is unknown; valid measures: .*js"),
        ({"divergence_source": "ref"}, r"divergence_source='ref'"),
        ({"weighting": "top_quantile", "weighting_rho": 0.0}, r"weighting_rho=0.0 is outside \(0, 1\]"),
        ({"weighting": "random_quantile", "weighting_rho": 1.5}, r"weighting_rho=1.5 is outside"),
        ({"divergence_source": "old"}, r"divergence_source='old'.*identically 0.*num_iterations > 1"),
        ({"divergence_source": "old", "num_iterations": 2, "divergence_measure": "js"}, r"divergence_measure='js'"),
        ({"divergence_top_p": 1.5}, r"divergence_top_p=1.5"),
        ({"divergence_measure": "k3", "divergence_top_p": 0.7}, r"divergence_top_p applies"),
        ({"loss_type": "luspo", "importance_sampling_level": "sequence"}, r"loss_type='luspo'"),
        ({"loss_type": "vespo"}, r"loss_type='vespo'"),
        ({"weighting_renormalize": "token"}, r"weighting_renormalize='token'"),
        ({"weighting": "linear", "weighting_scale": 0.0}, r"weighting_scale=0.0"),
        ({"weighting_min": 2.0, "weighting_max": 1.0}, r"weighting_min=2.0 > weighting_max=1.0"),
        ({"base_model_dtype": "int8"}, r"base_model_dtype='int8'"),
        ({"divergence_chunk_size": 0}, r"divergence_chunk_size=0"),
        ({"extraction": "loose"}, r"extraction='loose' is unknown; set it to one of \('lenient', 'strict'\)"),
    ],
)
def test_bad_settings_fail_with_the_setting_named(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        make(**kwargs)


def test_accepted_combinations():
    make(loss_type="luspo", importance_sampling_level="sequence", weighting="none")  # none = plain TRL: allowed
    make(divergence_source="old", steps_per_generation=2, gradient_accumulation_steps=1)
    for loss in ("grpo", "dr_grpo", "bnpo", "cispo", "sapo"):
        make(loss_type=loss)
    make(divergence_measure="kl_forward", divergence_top_p=0.7)


def test_docs_field_table_is_current():
    from pathlib import Path

    from train.config import fields_markdown

    doc = (Path(__file__).resolve().parents[2] / "docs" / "trainer.md").read_text()
    assert fields_markdown() in doc, "docs/trainer.md field table is stale: regenerate it (see fields_markdown)"
