"""bench/bench_trainer.py runs end to end on a toy-sized model and reports every ratio it promises.

Not a timing test: the numbers are not checked, only that each configuration ran (in its own
subprocess), that the trainer took the loss-time divergence path by default and the separate pass
when told to, and that the ratios are positive and finite.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow]


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_trainer", REPO / "bench" / "bench_trainer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_trainer_reports_all_ratios(tmp_path, capsys):
    bench = _load_bench()
    out = tmp_path / "bench.json"
    rc = bench.main(["--vocab-size", "512", "--hidden-size", "32", "--num-layers", "1", "--batch-size", "4",
                     "--num-generations", "2", "--prompt-length", "4", "--completion-length", "8", "--steps", "2",
                     "--pass-repeats", "1", "--threads", "1", "--json", str(out)])
    assert rc == 0
    results = json.loads(out.read_text())
    assert results["dw_js"]["divergence_at_loss"] is True
    assert results["dw_js_separate"]["divergence_at_loss"] is False
    for key in ("ratio:dw_js/trl_beta0.04", "ratio:dw_js_separate/trl_beta0.04", "ratio:pass_dw/pass_ref",
                "ratio:pass_dw_separate/pass_ref"):
        assert 0 < results[key]["time"] < math.inf, key
    printed = capsys.readouterr().out
    assert "step: divergence-weighted (JS, beta=0) / TRL (beta=0.04)" in printed and "<= 1.10x" in printed
