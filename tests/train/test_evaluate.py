"""train.evaluate: batched sampling, mean@K / pass@K arithmetic, the CLI and its one-line errors.

Unit tests use the random tiny model (`tiny_model_dir`, hidden 16): its accuracy is ~0, so the
metric arithmetic is checked with a patched scorer whose scores are fixed by hand.
"""

from __future__ import annotations

import json

import pytest
import torch

from rewards.data import load_math_dataset
from train import evaluate
from train.cli import main as cli_main
from train.evaluate import evaluate_model


@pytest.fixture(scope="module")
def four_problems():
    return load_math_dataset("tiny", "test", num_samples=4, seed=0)


def test_mean_and_pass_at_k_hand_computed(tiny_model_dir, four_problems, monkeypatch):
    # 4 problems x K=2 samples, problem-major order. Scores by hand:
    #   p0: [1, 1]  p1: [1, 0]  p2: [0, 0]  p3: [0, 1]
    # mean@2 = (2 + 1 + 0 + 1) / 8 = 0.5 ; pass@2 = (1 + 1 + 0 + 1) / 4 = 0.75
    fixed = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    seen = {}

    def fake_score(completions, golds, extraction="lenient", finished=None, timeout=None):
        seen["golds"], seen["finished"] = golds, finished
        return fixed[:len(completions)]

    monkeypatch.setattr(evaluate, "_score_batch", fake_score)
    out = evaluate_model(tiny_model_dir, four_problems, num_samples=2, max_new_tokens=4, batch_size=3,
                         progress=False)
    assert out["mean@2"] == pytest.approx(0.5)
    assert out["pass@2"] == pytest.approx(0.75)
    assert (out["num_problems"], out["num_samples"]) == (4, 2)
    # golds repeated K times, problem-major, so sample j of problem i is scored against gold i
    g = four_problems["answer"]
    assert seen["golds"] == [g[0], g[0], g[1], g[1], g[2], g[2], g[3], g[3]]
    assert [p["scores"] for p in out["problems"]] == [[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]
    assert all(len(p["completions"]) == 2 for p in out["problems"])
    # one bool per completion handed to the reward, and saved per problem
    assert len(seen["finished"]) == 8 and all(isinstance(f, bool) for f in seen["finished"])
    assert [f for p in out["problems"] for f in p["finished"]] == seen["finished"]


def test_real_scoring_seeded_and_greedy(tiny_model_dir, four_problems):
    kw = dict(num_samples=3, max_new_tokens=8, batch_size=5, seed=7, progress=False)
    a = evaluate_model(tiny_model_dir, four_problems, greedy=True, **kw)
    b = evaluate_model(tiny_model_dir, four_problems, **kw)
    assert 0.0 <= a["mean@3"] <= a["pass@3"] <= 1.0
    assert 0.0 <= a["greedy"] <= 1.0 and "greedy" not in b
    # same seed and batch size -> the same samples
    assert [p["completions"] for p in a["problems"]] == [p["completions"] for p in b["problems"]]


def test_problem_only_dataset_and_model_object(tiny_model_dir):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ds = Dataset.from_dict({"problem": ["Compute 10+1+2."], "answer": ["13"]})
    out = evaluate_model(model, ds, tokenizer=tok, num_samples=1, max_new_tokens=4, progress=False)
    assert out["num_problems"] == 1 and out["problems"][0]["problem"] == "Compute 10+1+2."


def test_api_errors(tiny_model_dir, four_problems):
    from datasets import Dataset

    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        evaluate_model(tiny_model_dir, four_problems, num_samples=0)
    with pytest.raises(ValueError, match="is empty"):
        evaluate_model(tiny_model_dir, four_problems.select([]))
    with pytest.raises(ValueError, match="needs columns 'answer'"):
        evaluate_model(tiny_model_dir, Dataset.from_dict({"question": ["q"], "gold": ["1"]}))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate_model("/no/such/model", four_problems)


def test_cli_writes_json(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    rc = cli_main(["eval", "--model", str(tiny_model_dir), "--limit", "3", "--num-samples", "2",
                   "--max-new-tokens", "4", "--output", str(out), "--no-progress", "--greedy"])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["num_problems"] == 3 and result["num_samples"] == 2 and result["split"] == "test"
    assert {"mean@2", "pass@2", "greedy", "problems"} <= set(result)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["mean@2"] == result["mean@2"] and "problems" not in summary


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("case", ["missing_model", "missing_columns", "empty_dataset", "zero_samples"])
def test_cli_bad_input_is_one_line(case, tiny_model_dir, tmp_path, capsys):
    model = str(tiny_model_dir)
    args = ["--limit", "2", "--no-progress"]
    if case == "missing_model":
        args += ["--model", str(tmp_path / "nope")]
        expect = "does not exist"
    elif case == "missing_columns":
        data = _write_jsonl(tmp_path / "d.jsonl", [{"question": "1+1?", "answer": "#### 2"}])
        args += ["--model", model, "--dataset", data]
        expect = "--problem-column"
    elif case == "empty_dataset":
        data = tmp_path / "empty.json"
        data.write_text("[]")
        args += ["--model", model, "--dataset", str(data)]
        expect = "empty"
    else:
        args += ["--model", model, "--num-samples", "0"]
        expect = "--num-samples must be >= 1"
    try:
        rc = cli_main(["eval", *args])
    except SystemExit as err:  # argparse's parser.error exits with status 2
        rc = err.code
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert expect in err[-1], err
    assert not any("Traceback" in line for line in err)
    assert "Fix" in err[-1]


# --------------------------------------------------------------------------------------------------
# Generation stops on every end-of-turn id: the generation config's and the tokenizer's
# --------------------------------------------------------------------------------------------------


def _scripted_lm(tokenizer, script: list[int]):
    """A causal LM that writes `script` after the prompt's last `<|assistant|>`, whatever the prompt says.

    Greedy and sampled decoding both follow it (the scripted token has logit +30, every other -30);
    `use_cache=False` so that every forward sees the whole sequence and can count what it wrote.
    """
    from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
    from transformers.modeling_outputs import CausalLMOutputWithPast

    marker = tokenizer.convert_tokens_to_ids("<|assistant|>")

    class ScriptedConfig(PretrainedConfig):
        model_type = "scripted_test_lm"

    class ScriptedLM(PreTrainedModel, GenerationMixin):
        config_class = ScriptedConfig

        def __init__(self, config):
            super().__init__(config)
            self.anchor = torch.nn.Parameter(torch.zeros(1))  # a parameter, for .device / .dtype
            self.post_init()

        def forward(self, input_ids=None, attention_mask=None, **kwargs):
            b, t = input_ids.shape
            logits = torch.full((b, t, self.config.vocab_size), -30.0)  # (B, T, V)
            for i in range(b):
                row = input_ids[i].tolist()
                written = t - 1 - max(j for j, x in enumerate(row) if x == marker)  # tokens after the marker
                logits[i, -1, script[min(written, len(script) - 1)]] = 30.0
            return CausalLMOutputWithPast(logits=logits)

    model = ScriptedLM(ScriptedConfig(vocab_size=len(tokenizer)))
    model.generation_config.use_cache = False
    return model


def test_generation_stops_on_the_generation_configs_eos(tiny_tokenizer):
    """Chat models end a turn with a token that is not the tokenizer's eos (Llama-3's <|eot_id|>): their
    generation_config lists it. A model that writes `\\boxed{5}<end-of-turn>\\boxed{7}` is graded on 5."""
    import copy

    from datasets import Dataset

    from diagnostics.models import eos_token_ids

    tok = copy.deepcopy(tiny_tokenizer)
    tok.add_tokens(["<end-of-turn>"], special_tokens=True)
    eot = tok.convert_tokens_to_ids("<end-of-turn>")
    ids = tok(r"\boxed{5}", add_special_tokens=False)["input_ids"]
    script = ids + [eot] + tok(r"\boxed{7}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    model = _scripted_lm(tok, script)
    model.generation_config.eos_token_id = [eot]  # the turn ends here; the tokenizer's eos is another id
    assert eos_token_ids(model, tok) == sorted({eot, tok.eos_token_id})
    ds = Dataset.from_dict({"problem": ["Compute 2+3."], "answer": ["5"]})
    for temperature in (0.0, 1.0):
        out = evaluate_model(model, ds, tokenizer=tok, num_samples=2, temperature=temperature, max_new_tokens=16,
                             progress=False)
        assert out["problems"][0]["completions"] == [r"\boxed{5}"] * 2, out["problems"][0]["completions"]
        assert out["mean@2"] == 1.0
