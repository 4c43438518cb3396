"""HTML report (self-contained, no URLs), plots, and `sparse-rlvr shift` end to end on the tiny
fixture models, including its one-line refusal when the vocabularies differ."""

from __future__ import annotations

import html
import json
import re

import pandas as pd
import pytest

from diagnostics.models import check_same_vocabulary
from diagnostics.plots import plot_evolution, write_shift_plots
from diagnostics.report import js_alpha, render_report
from diagnostics.shift import analyze
from diagnostics.shift_stats import stat_names
from diagnostics.summary import summarize
from train.cli import main as cli_main
from train.tiny_world import build_tokenizer, default_corpus, random_tiny_model


def _prompt(tok, text="Compute 3+4."):
    return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)


@pytest.fixture(scope="module")
def analysed(tiny_tokenizer):
    base = random_tiny_model(tiny_tokenizer, seed=0, hidden_size=16, num_layers=2, num_heads=2)
    policy = random_tiny_model(tiny_tokenizer, seed=1, hidden_size=16, num_layers=2, num_heads=2)
    recs = [{"prompt": _prompt(tiny_tokenizer), "completion": "3 + 4 = 7 <b>\n\\boxed{7}<|endoftext|>"},
            {"prompt": _prompt(tiny_tokenizer, "Compute 9-2."), "completion": "9 - 2 = 7"}]
    table = analyze(base, policy, tiny_tokenizer, recs, progress=False, keep_topk=True)
    return table, summarize(table), recs


def test_report_is_self_contained_and_shows_every_token(analysed, tmp_path, tiny_tokenizer):
    table, summary, recs = analysed
    images = write_shift_plots(table, summary, tmp_path)
    assert all(p.stat().st_size > 1000 for p in images.values())
    page = render_report(table, summary, images=images, prompts={0: recs[0]["prompt"]},
                         token_text=lambda i: tiny_tokenizer.decode([i]))
    assert not re.search(r"https?://", page)  # nothing to fetch: no CDN, no links
    assert "<script" not in page.lower() and "@import" not in page
    assert page.count("data:image/png;base64,") == len(images)
    assert page.count('class="tok') == len(table)  # every completion token is drawn
    # the completion's "<b>" is three tokens, each escaped: "<" is drawn as &lt;, never as markup
    assert '">&lt;<span class="tip">' in page and '">&gt;<span class="tip">' in page and "<b>\n" not in page
    assert "boxed" in page and html.escape("<|endoftext|>") in page
    assert "base top-5" in page  # hover boxes carry the top-5s (keep_topk=True)


def test_colour_scale_and_evolution_plot(tmp_path):
    assert js_alpha(0.0) == 0.0 and js_alpha(1e-4) == 0.0
    assert js_alpha(0.693) == pytest.approx(1.0, abs=1e-3)
    assert 0 < js_alpha(0.01) < js_alpha(0.1) < 1
    frame = pd.DataFrame({"step": [10, 0, 20], "js_p50": [0.01, 0.0, 0.02], "js_p95": [0.1, 0.0, 0.2]})
    assert plot_evolution(frame, tmp_path / "evo.png", columns=["js_p50", "js_p95"]).stat().st_size > 1000
    with pytest.raises(ValueError, match="not in the frame"):
        plot_evolution(frame, tmp_path / "x.png", columns=["gini"])


def _outputs_ok(out, n_tokens=None):
    for name in ("tokens.parquet", "summary.json", "report.html", "sequences.jsonl", "js_sparsity.png",
                 "entropy_vs_js.png", "position_profile.png", "topk_overlap.png"):
        assert (out / name).is_file(), name
    table = pd.read_parquet(out / "tokens.parquet")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_tokens"] == len(table) > 0
    # summary.json's flat scalars: diagnostics.shift_stats' names (= the trainer's shift/ and shift_probe/ names)
    assert list(summary["scalars"]) == stat_names("js") and summary["scalars"]["n_tokens"] == len(table)
    if n_tokens is not None:
        assert len(table) == n_tokens
    return table, summary


def test_cli_with_data_file(tiny_model_dir, tiny_policy_dir, tiny_tokenizer, tmp_path):
    data = tmp_path / "seqs.jsonl"
    recs = [{"prompt": [{"role": "user", "content": "Compute 3+4."}], "completion": "3+4=7. \\boxed{7}<|endoftext|>"},
            {"prompt": _prompt(tiny_tokenizer, "Compute 5*2."), "completion": "5*2=10"}]
    data.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    n_tok = sum(len(tiny_tokenizer(r["completion"], add_special_tokens=False)["input_ids"]) for r in recs)
    out = tmp_path / "out"
    rc = cli_main(["shift", "--base", str(tiny_model_dir), "--policy", str(tiny_policy_dir), "--data", str(data),
                   "--output-dir", str(out), "--no-progress", "--top-p", "0.9"])
    assert rc == 0
    table, summary = _outputs_ok(out, n_tok)
    assert summary["settings"]["top_p"] == 0.9
    assert table["js"].gt(0).all()  # two different random models differ everywhere


def test_cli_generates_with_base(tiny_model_dir, tiny_policy_dir, tmp_path):
    out = tmp_path / "gen"
    rc = cli_main(["shift", "--base", str(tiny_model_dir), "--policy", str(tiny_policy_dir), "--dataset", "tiny",
                   "--split", "test", "--limit", "2", "--generate-with", "base", "--num-samples", "2",
                   "--max-new-tokens", "6", "--output-dir", str(out), "--no-progress"])
    assert rc == 0
    table, summary = _outputs_ok(out)
    assert summary["n_sequences"] == 4  # 2 prompts x 2 samples
    seqs = [json.loads(line) for line in (out / "sequences.jsonl").read_text().splitlines()]
    assert [(s["prompt_index"], s["sample"]) for s in seqs] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(1 <= len(s["completion_ids"]) <= 6 for s in seqs)
    assert len(table) == sum(len(s["completion_ids"]) for s in seqs)


def test_cli_refuses_different_vocabularies_in_one_line(tiny_model_dir, tmp_path, capsys):
    other_tok = build_tokenizer(default_corpus(n=300), vocab_size=110)  # fewer merges: 110 tokens, not 139
    other = random_tiny_model(other_tok, seed=0, hidden_size=16, num_layers=2, num_heads=2)
    other.save_pretrained(tmp_path / "other")
    other_tok.save_pretrained(tmp_path / "other")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt_ids": [5, 6], "completion_ids": [7]}) + "\n")
    capsys.readouterr()  # drop save_pretrained's progress output
    rc = cli_main(["shift", "--base", str(tiny_model_dir), "--policy", str(tmp_path / "other"), "--data", str(data),
                   "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("sparse-rlvr shift: error:") and "tokenizers differ" in err[0]
    assert "Fix:" in err[0]
    assert not (tmp_path / "o").exists()


def test_vocabulary_check_catches_remapped_ids(tiny_tokenizer):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    check_same_vocabulary(tiny_tokenizer, build_tokenizer(default_corpus(n=300)))  # rebuilt identically: accepted
    # same size, but "a" and "b" swap ids: every per-token comparison would be meaningless
    spec = json.loads(tiny_tokenizer.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]
    swapped = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                      pad_token="<|pad|>", eos_token="<|endoftext|>", unk_token="<|unk|>")
    assert len(swapped) == len(tiny_tokenizer)
    with pytest.raises(ValueError, match="map tokens to different ids"):
        check_same_vocabulary(tiny_tokenizer, swapped)
    with pytest.raises(ValueError, match="differ in size"):
        check_same_vocabulary(tiny_tokenizer, build_tokenizer(default_corpus(n=300), vocab_size=110))


def test_cli_usage_errors(tiny_model_dir, tmp_path):
    with pytest.raises(SystemExit) as exc:
        cli_main(["shift", "--base", str(tiny_model_dir), "--policy", str(tiny_model_dir), "--dataset", "tiny",
                  "--output-dir", str(tmp_path)])
    assert exc.value.code == 2  # --dataset without --generate-with
    rc = cli_main(["shift", "--base", str(tiny_model_dir), "--policy", str(tiny_model_dir), "--data",
                   str(tmp_path / "missing.jsonl"), "--output-dir", str(tmp_path / "o")])
    assert rc == 2
