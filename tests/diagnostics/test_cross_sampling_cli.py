"""`sparse-rlvr cross-sample` end to end on the tiny fixture models, plus its input errors."""

from __future__ import annotations

import json

import pytest

from diagnostics.cross_sampling_cli import metrics_of
from train.cli import main as cli_main


def test_cli_end_to_end_writes_summary_and_png(tiny_model_dir, tiny_policy_dir, tmp_path):
    out = tmp_path / "cross"
    # the fixture models are random with a small init: their JS is ~1e-3, so 0.0005 and 0.002 switch
    # some tokens; 0.7 > ln 2 never switches (JS <= ln 2 ≈ 0.693)
    rc = cli_main(["cross-sample", "--base", str(tiny_model_dir), "--policy", str(tiny_policy_dir), "--direction", "both",
                   "--rule", "js_threshold", "--values", "0.0005,0.002,0.7", "--num-samples", "2",
                   "--output-dir", str(out), "--dataset", "tiny", "--split", "test", "--limit", "2",
                   "--max-new-tokens", "6", "--batch-size", "3", "--seed", "1", "--device", "cpu"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "cross_sampling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    refs = summary["references"]
    assert set(refs) == {"base", "rl"} and all(0.0 <= r["accuracy"] <= 1.0 for r in refs.values())
    assert refs["base"]["effective_share"] == 0.0 and refs["rl"]["effective_share"] == 0.0
    runs = summary["runs"]
    assert len(runs) == 2 * 3 * 2  # directions x values x (threshold run + random control)
    for direction, primary in (("forward", "base"), ("backward", "rl")):
        main_runs = [r for r in runs if r["direction"] == direction and not r["control"]]
        controls = [r for r in runs if r["direction"] == direction and r["control"]]
        assert [r["value"] for r in main_runs] == [0.0005, 0.002, 0.7]
        assert all(r["primary"] == primary for r in main_runs + controls)
        for run, ctrl in zip(main_runs, controls):
            assert ctrl["rule"] == "random" and ctrl["matched_to"]["value"] == run["value"]
            assert ctrl["p"] == pytest.approx(run["effective_share"])  # the matched budget
            assert 0.0 <= run["effective_share"] <= 1.0
            assert run["mean_switched_tokens"] == pytest.approx(run["pooled_share"] * run["mean_length"])
        assert main_runs[0]["effective_share"] > 0  # JS > 0.0005 somewhere
        assert main_runs[0]["effective_share"] >= main_runs[1]["effective_share"]  # larger ε, fewer switches
        assert main_runs[2]["effective_share"] == 0.0
    lines = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == (2 + 12) * 4  # runs x (2 problems x 2 samples)
    by_run: dict[str, list[dict]] = {}
    for line in lines:
        by_run.setdefault(line["run"], []).append(line)
    # common random numbers: ε above ln 2 never switches, so it IS the primary's own sampling
    assert [x["text"] for x in by_run["forward_js_threshold_0.7"]] == [x["text"] for x in by_run["pure_base"]]
    assert [x["text"] for x in by_run["backward_js_threshold_0.7"]] == [x["text"] for x in by_run["pure_rl"]]
    for rows in by_run.values():
        for x in rows:
            assert x["num_switched"] == len(x["switched_positions"]) <= x["num_tokens"] <= 6


def test_metrics_hand_computed():
    # 3 problems x K=2: scores (1,0) (0,0) (1,1) -> mean@2 = 3/6 = 0.5, pass@2 = 2/3
    # shares 1/4, 0, 0, 2/4, 0, 0 -> mean per-answer share = 0.75/6 = 0.125; pooled 3/24
    rows = [{"num_tokens": 4, "num_switched": s, "share_switched": s / 4, "js": [0.1] * 4} for s in (1, 0, 0, 2, 0, 0)]
    m = metrics_of([1, 0, 0, 0, 1, 1], rows, num_problems=3, k=2)
    assert m["accuracy"] == 0.5 and m["pass_at_k"] == pytest.approx(2 / 3)
    assert m["effective_share"] == pytest.approx(0.125) and m["pooled_share"] == pytest.approx(3 / 24)
    assert m["mean_switched_tokens"] == pytest.approx(0.5) and m["mean_js"] == pytest.approx(0.1)


@pytest.mark.parametrize("extra,message", [
    (["--values", "a,b"], "not a comma-separated list"),
    ([], "needs --values"),
    (["--values", "0.1", "--max-switch-tokens", "3"], "does not apply to rule 'js_threshold'"),
    (["--values", "0.1", "--num-samples", "0"], "--num-samples 0 is out of range"),
])
def test_cli_input_errors(tmp_path, extra, message):
    with pytest.raises(SystemExit, match=message):
        cli_main(["cross-sample", "--base", "x", "--policy", "y", "--output-dir", str(tmp_path), *extra])


def test_cli_missing_model_path_is_one_line(tmp_path, capsys):
    rc = cli_main(["cross-sample", "--base", str(tmp_path / "nope"), "--policy", str(tmp_path / "nope"),
                   "--values", "0.1", "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "does not exist" in err and len(err.splitlines()) == 1


def test_cli_help_lists_rules(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["cross-sample", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--random-control", "--max-switch-fraction", "js_threshold_budget", "entropy_threshold"):
        assert flag in out
