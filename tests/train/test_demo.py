"""A shortened `sparse-rlvr demo` end to end, and the consistency of its report."""

import json
import math

import pytest


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path, tiny_base_dir):
    from train.demo import main

    out = tmp_path / "demo"
    # 0.7 > ln 2: a JS threshold above the maximum possible JS never switches, so that setting must
    # reproduce the pure primary model exactly (same per-answer seeds).
    assert main(["--output-dir", str(out), "--quick", "--base-dir", str(tiny_base_dir),
                 "--cross-values", "0.05,0.7"]) == 0
    s = json.loads((out / "summary.json").read_text())
    for name in ("base", "grpo-none", "grpo-sigmoid", "sft"):
        assert 0.0 <= s["accuracy"][name] <= 1.0
    for name, frac in s["sparsity_js_gt_0.1"].items():
        assert 0.0 <= frac <= 1.0, name
    refs = s["cross"]["references"]
    for direction, primary in (("forward", "base"), ("backward", "rl")):
        for row in s["cross"][direction] + s["cross"][f"{direction}_random"]:
            assert 0.0 <= row["share"] <= 1.0 and row["tokens"] >= 0 and 0.0 <= row["accuracy"] <= 1.0
        never = [r for r in s["cross"][direction] if math.isclose(r["value"], 0.7)]
        assert never and never[0]["share"] == 0.0 and never[0]["tokens"] == 0.0
        assert never[0]["accuracy"] == pytest.approx(refs[primary])
    # shift monitoring is on in the recipe: every saved checkpoint of every GRPO run has its shift_probe/ metrics
    # (in trainer_state.json, i.e. every report_to backend, wandb included) and its probe summary
    for run in ("grpo-none", "grpo-sigmoid"):
        state = json.loads((out / run / "trainer_state.json").read_text())
        probe_steps = {e["step"] for e in state["log_history"] if "shift_probe/js_mean" in e}
        checkpoints = sorted(int(p.name.split("-")[1]) for p in (out / run).glob("checkpoint-*"))
        assert checkpoints and set(checkpoints) <= probe_steps, (run, checkpoints, probe_steps)
        for step in checkpoints:
            assert (out / run / f"checkpoint-{step}" / "shift_probe_summary.json").exists()
    md = (out / "report.md").read_text()
    assert "RL improves accuracy" in md and "cross-sampling" in md
    html = (out / "report.html").read_text()
    assert "<table>" in html and "data:image/png;base64," in html and "http://" not in html
    # a second call reuses every finished stage
    assert main(["--output-dir", str(out), "--quick", "--base-dir", str(tiny_base_dir),
                 "--cross-values", "0.05,0.7"]) == 0
