"""Fault tolerance: a run SIGKILLed after its first checkpoint resumes and finishes cleanly.

Run 1: 4 steps planned, checkpoint every 2, the process SIGKILLs itself right after logging step 3
(a hard crash: checkpoint-2 is on disk, step 3's work is lost). Run 2: the same command plus
`--resume_from_checkpoint true`, which picks checkpoint-2 and trains steps 3-4. The final
trainer_state.json must hold `shift/` metrics for steps 1, 2, 3, 4 exactly once each. Single
process (plain python, no launcher) to keep it to ~1 minute.
"""

from __future__ import annotations

import json
import signal

import pytest

from _dist_helpers import grpo_args, launch, read_rank_logs

pytestmark = [pytest.mark.slow]


def _shift_steps(log_history: list[dict]) -> list[int]:
    return [e["step"] for e in log_history if any(k.startswith("shift/") for k in e)]


def test_sigkill_then_resume_finishes_all_steps(tiny_model_dir, tiny_policy_dir, tmp_path):
    out, log_dir = tmp_path / "out", tmp_path / "logs"
    args = grpo_args(tiny_model_dir, out, max_steps=4, save_strategy="steps", save_steps=2,
                     base_model_name_or_path=tiny_policy_dir)

    killed = launch(None, args, rank_log_dir=log_dir, kill_at_step=3)
    assert killed.returncode == -signal.SIGKILL, f"run 1 should die by SIGKILL, got {killed.returncode}\n{killed.stderr[-4000:]}"
    assert (out / "checkpoint-2" / "trainer_state.json").exists()
    assert not (out / "checkpoint-4").exists() and not (out / "trainer_state.json").exists()

    resumed = launch(None, args + ["--resume_from_checkpoint", "true"], rank_log_dir=log_dir)
    assert resumed.returncode == 0, f"run 2 failed ({resumed.returncode})\n{resumed.stderr[-6000:]}"

    records = read_rank_logs(log_dir)[0]
    begins = [r for r in records if r["event"] == "begin"]
    assert [b["start_step"] for b in begins] == [0, 2], begins  # run 2 really started from checkpoint-2
    logged_steps = [r["step"] for r in records if r["event"] == "log" and "shift/js_mean" in r["logs"]]
    assert logged_steps == [1, 2, 3, 3, 4], logged_steps  # step 3 ran twice: killed once, redone once

    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert _shift_steps(state["log_history"]) == [1, 2, 3, 4]  # no step missing, none duplicated
    assert (out / "checkpoint-4").exists()
    # Steps 1-2 come from checkpoint-2's own history: the resumed run carried them over unchanged.
    ckpt = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    before = {e["step"]: e["shift/js_mean"] for e in ckpt["log_history"] if "shift/js_mean" in e}
    after = {e["step"]: e["shift/js_mean"] for e in state["log_history"] if "shift/js_mean" in e}
    assert before == {k: after[k] for k in (1, 2)}
