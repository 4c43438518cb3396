"""The package installs, the console script dispatches, and the tokenizer survives a save/load."""

import subprocess
import sys


def test_console_script_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "train.cli", "--help"], capture_output=True, text=True, check=True)
    for name in ("tiny-base", "eval", "shift", "cross-sample", "demo", "compare"):
        assert name in out.stdout


def test_unknown_subcommand_is_one_line_error():
    out = subprocess.run([sys.executable, "-m", "train.cli", "nope"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "unknown subcommand 'nope'" in out.stderr and "Traceback" not in out.stderr


def test_autotokenizer_reproduces_ids(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(tiny_model_dir)
    for text in ["Compute 65-6+4-9.", "65-6=59 59+4=63 63-9=54 \\boxed{54}", "You are a careful calculator."]:
        assert loaded(text).input_ids == tiny_tokenizer(text).input_ids
        assert loaded.decode(loaded(text).input_ids) == text
    # every digit is a single token
    for d in "0123456789":
        assert len(loaded(d).input_ids) == 1
    msgs = [{"role": "user", "content": "Compute 1+2."}]
    prompt = loaded.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    full = loaded.apply_chat_template(msgs + [{"role": "assistant", "content": "1+2=3 \\boxed{3}"}], tokenize=False)
    assert full.startswith(prompt) and full.endswith(loaded.eos_token)
    assert loaded.pad_token_id is not None and loaded.pad_token_id != loaded.eos_token_id
