"""`sparse-rlvr evolution` on a run directory of hand-made checkpoints.

Checkpoints are the tiny base with its weights perturbed by growing noise (checkpoint-2 < 4 < 6), so
the shift must grow step by step; no training is needed, which keeps this test at seconds.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from diagnostics.evolution import build_parser, high_positions, jaccard, js_stats, main, run_evolution
from diagnostics.shift_stats import stat_names


def _save_checkpoint(base_dir, run_dir, step: int, noise: float, tokenizer) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    gen = torch.Generator().manual_seed(step)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn(p.shape, generator=gen))
    path = run_dir / f"checkpoint-{step}"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "optimizer.pt").write_bytes(b"not weights")  # trainer files are ignored by the cache key


def test_jaccard_and_js_stats_by_hand():
    assert jaccard({(0, 1), (0, 2)}, {(0, 2), (1, 0)}) == pytest.approx(1 / 3)  # |{(0,2)}| / |3 positions|
    assert jaccard({(0, 1)}, {(0, 1)}) == 1.0
    assert math.isnan(jaccard(set(), set()))  # undefined, not "perfect"
    table = pd.DataFrame({"seq_id": [0, 0, 1, 1], "position": [0, 1, 0, 1], "js": [0.0, 0.2, 0.06, 0.5]})
    assert high_positions(table, 0.1) == {(0, 1), (1, 1)}
    s = js_stats(table["js"].to_numpy())
    # mean = (0 + .2 + .06 + .5) / 4 = 0.19; > .01: 3 of 4; > .05: 3 of 4; > .1: 2 of 4
    assert s["js_mean"] == pytest.approx(0.19)
    assert (s["frac_js_gt_0.01"], s["frac_js_gt_0.05"], s["frac_js_gt_0.1"], s["n_high"]) == (0.75, 0.75, 0.5, 2)
    # numpy 'linear' p50 of [0, .06, .2, .5] = (.06 + .2) / 2
    assert s["js_p50"] == pytest.approx(0.13)


def test_evolution_csv_plots_and_incremental_rerun(tiny_model_dir, tiny_tokenizer, tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "evo"
    for step, noise in ((2, 0.02), (4, 0.2)):
        _save_checkpoint(tiny_model_dir, run, step, noise, tiny_tokenizer)
    (run / "checkpoint-3").mkdir()  # a broken checkpoint (no config.json): skipped and counted
    argv = ["--policy", str(run), "--base", str(tiny_model_dir), "--output-dir", str(out), "--dataset", "tiny",
            "--limit", "6", "--max-new-tokens", "12", "--device", "cpu", "--no-progress"]

    res = run_evolution(build_parser().parse_args(argv))
    assert res.analyzed == ["checkpoint-2", "checkpoint-4"] and res.cached == []
    assert list(res.skipped) == ["checkpoint-3"]
    frame = pd.read_csv(out / "evolution.csv")
    assert list(frame["step"]) == [2, 4]
    # the CSV's lead columns: diagnostics.shift_stats' names (those of shift/ and shift_probe/), then ours
    assert list(frame.columns[2:]) [: len(stat_names("js")) + 2] == [*stat_names("js"), "n_high", "jaccard_final"]
    assert frame["entropy_base_mean"].notna().all() and frame["js_gini"].notna().all()
    assert frame["js_mean"].iloc[0] < frame["js_mean"].iloc[1]  # 10x the noise -> larger shift
    assert (frame["js_p99"] >= frame["js_p95"]).all() and (frame["js_p95"] >= frame["js_p50"]).all()
    assert frame["n_high"].iloc[1] > 0 and frame["jaccard_final"].iloc[1] == 1.0  # the final set vs itself
    assert 0.0 <= np.nan_to_num(frame["jaccard_final"].iloc[0]) <= 1.0
    for name in ("evolution_sparsity.png", "evolution_quantiles.png", "evolution_jaccard.png"):
        assert (out / name).stat().st_size > 1000
    probe_bytes = (out / "probe.jsonl").read_bytes()

    # one new checkpoint: only it is analysed; the probe is reused, the others come from the cache
    _save_checkpoint(tiny_model_dir, run, 6, 0.5, tiny_tokenizer)
    assert main(argv) == 0
    assert "1 analysed, 2 from cache, 1 skipped" in capsys.readouterr().out
    assert (out / "probe.jsonl").read_bytes() == probe_bytes
    frame2 = pd.read_csv(out / "evolution.csv")
    assert list(frame2["step"]) == [2, 4, 6]
    pd.testing.assert_series_equal(frame2["js_mean"].iloc[:2], frame["js_mean"], check_names=False)
    assert frame2["jaccard_final"].iloc[2] == 1.0

    # a rewritten checkpoint (new weights, same name) is analysed again
    _save_checkpoint(tiny_model_dir, run, 2, 0.3, tiny_tokenizer)
    res = run_evolution(build_parser().parse_args(argv))
    assert res.analyzed == ["checkpoint-2"] and res.cached == ["checkpoint-4", "checkpoint-6"]


def test_evolution_uses_the_run_probe_and_reports_missing_one(tiny_model_dir, tiny_tokenizer, tmp_path):
    from diagnostics.callbacks import PROBE_COPY_NAME
    from diagnostics.probe import ProbeSequence, ProbeSet

    run = tmp_path / "run"
    _save_checkpoint(tiny_model_dir, run, 1, 0.1, tiny_tokenizer)
    argv = ["--policy", str(run), "--base", str(tiny_model_dir), "--output-dir", str(tmp_path / "o"),
            "--device", "cpu", "--no-plots", "--no-progress"]
    with pytest.raises(ValueError, match="no probe set"):
        run_evolution(build_parser().parse_args(argv))
    ids = tiny_tokenizer("<|user|>Compute 1+2.<|assistant|>1+2=3", add_special_tokens=False)["input_ids"]
    ProbeSet([ProbeSequence(tuple(ids[:-5]), tuple(ids[-5:]))]).save(run / PROBE_COPY_NAME)
    res = run_evolution(build_parser().parse_args(argv))
    assert res.frame["n_tokens"].tolist() == [5]
    with pytest.raises(FileNotFoundError, match="not a directory"):
        run_evolution(build_parser().parse_args(["--policy", str(tmp_path / "nope"), "--base", str(tiny_model_dir),
                                                 "--output-dir", str(tmp_path / "o")]))


def test_every_flag_has_help():
    parser = build_parser()
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help text"
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
