"""ShiftDiagnosticsCallback, the probe set and the crash-safe JSONL writer.

Unit tests drive the callback's events by hand on the random tiny models (seconds); the `slow`
test runs it inside a real TRL GRPOTrainer run (4 steps, save_steps 2) and resumes from a
checkpoint, checking records are neither duplicated nor lost and that the resumed run measures
against the step-0 base (its numbers equal the uninterrupted run's).
"""

from __future__ import annotations

import json
import math
import types

import numpy as np
import pytest
import torch

from diagnostics.callbacks import (
    CHECKPOINT_SUMMARY_NAME,
    JSONL_NAME,
    PROBE_COPY_NAME,
    ShiftDiagnosticsCallback,
    snapshot_model,
    top_divergent_rows,
)
from diagnostics.jsonl import append_jsonl, read_jsonl, rewrite_jsonl
from diagnostics.probe import build_probe_set, load_probe

# --------------------------------------------------------------------------------------------------
# JSONL
# --------------------------------------------------------------------------------------------------


def test_jsonl_append_read_and_torn_tail(tmp_path):
    path = tmp_path / "r.jsonl"
    append_jsonl(path, {"step": 1, "x": np.float32(0.5)})
    append_jsonl(path, {"step": 2, "x": float("nan")})  # NaN is not JSON: written as null
    assert read_jsonl(path) == [{"step": 1, "x": 0.5}, {"step": 2, "x": None}]
    # a crash in the middle of a write leaves a torn last line without newline
    with open(path, "a") as fh:
        fh.write('{"step": 3, "x": 0.')
    assert [r["step"] for r in read_jsonl(path)] == [1, 2]  # torn line ignored on read
    append_jsonl(path, {"step": 3, "x": 1.0})  # ... and cut before the next append
    assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3]
    assert path.read_text().count("\n") == 3 and path.read_text().endswith("\n")


def test_jsonl_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        read_jsonl(path)


def test_jsonl_rewrite_is_atomic_replace(tmp_path):
    path = tmp_path / "r.jsonl"
    rewrite_jsonl(path, [{"step": s} for s in (1, 2, 3)])
    rewrite_jsonl(path, [{"step": 1}])
    assert read_jsonl(path) == [{"step": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["r.jsonl"]  # no temp files left behind


# --------------------------------------------------------------------------------------------------
# Probe set
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tiny_model_dir, tiny_policy_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    policy = AutoModelForCausalLM.from_pretrained(tiny_policy_dir).eval()
    return base, policy, tok


@pytest.fixture(scope="module")
def probe(models):
    base, _, tok = models
    prompts = [[{"role": "user", "content": f"Compute {a}+{b}."}] for a, b in ((12, 3), (40, 7), (75, 1))]
    return build_probe_set(base, tok, prompts, max_new_tokens=10, seed=0, progress=False)


def test_probe_generation_is_seeded_and_round_trips(models, probe, tmp_path):
    base, _, tok = models
    prompts = [s.prompt for s in probe.sequences]  # templated text works as input too
    again = build_probe_set(base, tok, prompts, max_new_tokens=10, seed=0, progress=False)
    assert again.fingerprint() == probe.fingerprint()
    other = build_probe_set(base, tok, prompts, max_new_tokens=10, seed=1, progress=False)
    assert other.fingerprint() != probe.fingerprint()
    for s in probe.sequences:
        assert s.prompt.endswith("<|assistant|>") and 0 < len(s.completion_ids) <= 10
        # cut after the first eos, which is kept
        eos = tok.eos_token_id
        assert eos not in s.completion_ids[:-1]
    path = probe.save(tmp_path / "p.jsonl")
    loaded = load_probe(path)
    assert loaded.fingerprint() == probe.fingerprint() and loaded.records() == probe.records()


def test_probe_from_text_needs_tokenizer(tmp_path, tiny_tokenizer):
    path = tmp_path / "t.jsonl"
    rewrite_jsonl(path, [{"prompt": "<|user|>Compute 1+2.<|assistant|>", "completion": "1+2=3 \\boxed{3}"}])
    with pytest.raises(ValueError, match="pass a tokenizer"):
        load_probe(path)
    p = load_probe(path, tiny_tokenizer)
    assert tiny_tokenizer.decode(list(p.sequences[0].completion_ids)) == "1+2=3 \\boxed{3}"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_probe(tmp_path / "missing.jsonl")


# --------------------------------------------------------------------------------------------------
# Callback, events driven by hand
# --------------------------------------------------------------------------------------------------


def _events(tmp_path, step=0):
    from transformers import TrainerControl, TrainerState

    args = types.SimpleNamespace(output_dir=str(tmp_path), report_to=[])
    state = TrainerState()
    state.global_step = step
    return args, state, TrainerControl()


def test_callback_without_trainer_dedupes_step_and_writes_checkpoint_summary(models, probe, tmp_path):
    base, policy, tok = models
    cb = ShiftDiagnosticsCallback(probe, base, every_n_steps=2)
    args, state, control = _events(tmp_path)
    cb.on_train_begin(args, state, control, model=policy, processing_class=tok)
    assert load_probe(tmp_path / PROBE_COPY_NAME).fingerprint() == probe.fingerprint()

    state.global_step = 1
    cb.on_step_end(args, state, control, model=policy)
    assert cb.num_evaluations == 0  # 1 % 2 != 0
    state.global_step = 2
    control = cb.on_step_end(args, state, control, model=policy)
    assert cb.num_evaluations == 1 and control.should_log  # not attached: ask the trainer to log now
    logs = {"loss": 1.0}
    cb.on_log(args, state, control, logs=logs)
    assert logs["loss"] == 1.0 and logs["shift_probe/js_mean"] > 0 and "shift_probe/js_p99" in logs

    # the save at the same step reuses the evaluation: no second forward, no second record
    (tmp_path / "checkpoint-2").mkdir()
    cb.on_save(args, state, control, model=policy)
    assert cb.num_evaluations == 1
    records = read_jsonl(tmp_path / JSONL_NAME)
    assert [r["step"] for r in records] == [2]
    assert records[0]["probe_fingerprint"] == probe.fingerprint()
    assert math.isclose(records[0]["metrics"]["js_mean"], logs["shift_probe/js_mean"], rel_tol=1e-9)
    ckpt = json.loads((tmp_path / "checkpoint-2" / CHECKPOINT_SUMMARY_NAME).read_text())
    assert ckpt["step"] == 2 and ckpt["summary"]["n_tokens"] == probe.num_completion_tokens


def test_callback_identical_base_and_policy_gives_zero(models, probe, tmp_path):
    base, _, tok = models
    cb = ShiftDiagnosticsCallback(probe, base, every_n_steps=1, tokenizer=tok)
    args, state, control = _events(tmp_path)
    cb.on_train_begin(args, state, control, model=base)
    state.global_step = 1
    cb.on_step_end(args, state, control, model=base)
    rec = read_jsonl(tmp_path / JSONL_NAME)[0]
    assert rec["metrics"]["js_max"] == 0.0 and rec["metrics"]["frac_js_gt_0.01"] == 0.0


def test_resume_truncates_later_and_duplicate_records(models, probe, tmp_path):
    base, policy, tok = models
    path = tmp_path / JSONL_NAME
    # a crashed run: steps 2, 4, 6 recorded, 4 twice (e.g. a writer bug), and a torn last line
    rewrite_jsonl(path, [{"step": 2, "tag": "a"}, {"step": 4, "tag": "b"}, {"step": 4, "tag": "dup"},
                         {"step": 6, "tag": "c"}])
    with open(path, "a") as fh:
        fh.write('{"step": 8, "met')
    cb = ShiftDiagnosticsCallback(probe, base, every_n_steps=2)
    args, state, control = _events(tmp_path, step=4)  # resumed from checkpoint-4
    cb.on_train_begin(args, state, control, model=policy, processing_class=tok)
    assert [(r["step"], r["tag"]) for r in read_jsonl(path)] == [(2, "a"), (4, "b")]
    assert path.read_text().endswith("\n")
    # step 4 is recorded already: an evaluation there (e.g. a save right after resuming) is not re-written
    cb.on_save(args, state, control, model=policy)
    state.global_step = 6
    cb.on_step_end(args, state, control, model=policy)
    assert [r["step"] for r in read_jsonl(path)] == [2, 4, 6]


def test_fresh_run_drops_stale_records(models, probe, tmp_path):
    base, policy, tok = models
    rewrite_jsonl(tmp_path / JSONL_NAME, [{"step": 5}])
    cb = ShiftDiagnosticsCallback(probe, base, every_n_steps=2)
    cb.on_train_begin(*_events(tmp_path, step=0), model=policy, processing_class=tok)
    assert read_jsonl(tmp_path / JSONL_NAME) == []


def test_wandb_histogram_and_top_token_table(models, probe, tmp_path, monkeypatch):
    from diagnostics.shift import analyze

    base, policy, tok = models
    logged = []
    fake = types.SimpleNamespace(run=object(), log=logged.append,
                                 Histogram=lambda values: ("hist", np.asarray(values)),
                                 Table=lambda columns, data: ("table", columns, data))
    monkeypatch.setitem(__import__("sys").modules, "wandb", fake)
    cb = ShiftDiagnosticsCallback(probe, base, every_n_steps=1, top_tokens=4)
    args, state, control = _events(tmp_path)
    cb.on_train_begin(args, state, control, model=policy, processing_class=tok)
    state.global_step = 1
    cb.on_step_end(args, state, control, model=policy)
    (payload,) = logged
    kind, values = payload["shift_probe/js_histogram"]
    assert kind == "hist" and len(values) == probe.num_completion_tokens
    _, columns, rows = payload["shift_probe/top_tokens"]
    assert len(rows) == 4 and payload["train/global_step"] == 1
    js_col = columns.index("js")
    assert [r[js_col] for r in rows] == sorted(values, reverse=True)[:4]  # the 4 largest, descending
    # context = the tokens before the flagged one, then the token in [[...]]
    table = analyze(base, policy, tok, probe.records(), progress=False)
    top = top_divergent_rows(table, probe, tok, k=1, context_tokens=3)[0]
    seq = probe.sequences[top[0]]
    at = len(seq.prompt_ids) + top[1]
    ids = list(seq.prompt_ids) + list(seq.completion_ids)
    assert top[-1] == tok.decode(ids[at - 3: at]) + f"[[{tok.decode([ids[at]])}]]"


def test_snapshot_copies_weights_and_is_independent(models):
    _, policy, _ = models
    snap = snapshot_model(policy)
    for (name, a), (_, b) in zip(policy.state_dict().items(), snap.state_dict().items()):
        assert torch.equal(a, b), name
    assert not any(p.requires_grad for p in snap.parameters()) and not snap.training
    ids = torch.tensor([[3, 20, 21, 4]])
    before = snap(input_ids=ids).logits.clone()
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.0)  # in-place op on the original: must not alias the snapshot
        policy.model.embed_tokens.weight[20] += 1.0
    try:
        assert torch.equal(snap(input_ids=ids).logits, before)
    finally:
        with torch.no_grad():
            policy.model.embed_tokens.weight[20] -= 1.0


def test_callback_argument_errors(probe):
    with pytest.raises(ValueError, match="would never run"):
        ShiftDiagnosticsCallback(probe, every_n_steps=0, evaluate_on_save=False)
    with pytest.raises(ValueError, match="every_n_steps must be >= 0"):
        ShiftDiagnosticsCallback(probe, every_n_steps=-1)
    trainer = types.SimpleNamespace(ref_model=None, add_callback=lambda cb: None)
    with pytest.raises(ValueError, match="beta > 0"):
        ShiftDiagnosticsCallback(probe).attach(trainer, base_from_trainer=True)


# --------------------------------------------------------------------------------------------------
# Inside a real GRPO run, then resumed
# --------------------------------------------------------------------------------------------------


def digit_reward(completions, **kwargs):
    """Toy reward: number of digits in the completion (any signal that moves the policy will do)."""
    return [float(sum(ch.isdigit() for ch in c[0]["content"])) for c in completions]


def run_grpo(model_dir, output_dir, probe, *, resume=None, max_steps=4, per_device_batch=4, **cb_kwargs):
    """A 4-step TRL GRPO run on the tiny random model with the callback attached; returns (trainer, cb)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from rewards.tiny_task import tiny_math_dataset

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ds = tiny_math_dataset("train", 32, 0)
    ds = ds.map(lambda r: {"prompt": [{"role": "user", "content": r["problem"]}]})
    cfg = GRPOConfig(output_dir=str(output_dir), use_cpu=True, max_steps=max_steps, save_steps=2, logging_steps=1,
                     per_device_train_batch_size=per_device_batch, num_generations=4, max_completion_length=12,
                     learning_rate=1e-2, report_to=[], seed=0, disable_tqdm=True)
    trainer = GRPOTrainer(model=model, reward_funcs=digit_reward, args=cfg, train_dataset=ds, processing_class=tok)
    cb = ShiftDiagnosticsCallback(probe, **cb_kwargs).attach(trainer)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return trainer, cb


@pytest.mark.slow
def test_callback_in_grpo_run_and_resume(tiny_model_dir, probe, tmp_path):
    out = tmp_path / "run"
    # base_model=None: the policy's step-0 weights are the base (snapshot saved for resuming)
    trainer, cb = run_grpo(tiny_model_dir, out, probe, every_n_steps=3)
    # evaluations: save at 2, every_n at 3, save at 4 (the final step is saved too)
    assert cb.num_evaluations == 3
    first = read_jsonl(out / JSONL_NAME)
    assert [r["step"] for r in first] == [2, 3, 4]
    js = [r["metrics"]["js_mean"] for r in first]
    assert all(v > 0 for v in js)  # the policy moved away from its own step-0 snapshot
    logged = {h["step"]: h for h in trainer.state.log_history if "shift_probe/js_mean" in h}
    assert sorted(logged) == [2, 3, 4]
    # every step keeps its loss and grad_norm (logging_steps=1): a probe step's metrics join that step's entry
    # (step 3, on_step_end) instead of a separate log call that reset should_log and ate TRL's step metrics
    assert sorted(h["step"] for h in trainer.state.log_history if "loss" in h and "grad_norm" in h) == [1, 2, 3, 4]
    assert "loss" in logged[3] and "grad_norm" in logged[3] and "reward" in logged[3]
    for r in first:
        assert math.isclose(logged[r["step"]]["shift_probe/js_mean"], r["metrics"]["js_mean"], rel_tol=1e-9)
    for step in (2, 4):
        summary = json.loads((out / f"checkpoint-{step}" / CHECKPOINT_SUMMARY_NAME).read_text())
        assert summary["step"] == step and math.isclose(summary["metrics"]["js_mean"], js[step - 2], rel_tol=1e-9)

    # crash after step 4 was recorded, mid-write of another record; resume from checkpoint-2
    with open(out / JSONL_NAME, "a") as fh:
        fh.write('{"step": 5, "metr')
    _, cb2 = run_grpo(tiny_model_dir, out, probe, resume=out / "checkpoint-2", every_n_steps=3)
    assert cb2.num_evaluations == 2  # steps 3 and 4 again
    second = read_jsonl(out / JSONL_NAME)
    assert [r["step"] for r in second] == [2, 3, 4]  # nothing duplicated, nothing lost
    assert second[0] == first[0]  # the record before the resume point is kept as it was
    # the resumed run compares against the step-0 snapshot (not the resumed weights): same numbers
    for a, b in zip(first[1:], second[1:]):
        assert math.isclose(a["metrics"]["js_mean"], b["metrics"]["js_mean"], rel_tol=1e-3, abs_tol=1e-9)
