"""The package installs, the console script dispatches, and the tokenizer survives a save/load."""

import os
import subprocess
import sys
from pathlib import Path


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


def test_trl_version_is_checked_only_by_the_trainer():
    """shift / cross-sample / evolution / eval import with any TRL; the trainer (private TRL hooks) refuses it."""
    code = (
        "import importlib.metadata as md\n"
        "real = md.version\n"
        "md.version = lambda name: '0.0.1' if name == 'trl' else real(name)\n"
        "import diagnostics.cli_shift, diagnostics.cross_sampling_cli, diagnostics.evolution, train.evaluate, "
        "train.cli, train.sft\n"
        "for name in ('shift', 'cross-sample', 'evolution', 'eval'):\n"
        "    try:\n"
        "        train.cli.main([name, '--help'])\n"
        "    except SystemExit as exit_:\n"
        "        assert exit_.code == 0, name\n"
        "try:\n"
        "    import train.trainer\n"
        "except ImportError as err:\n"
        "    print('REFUSED:', err)\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "REFUSED: sparse-rlvr's trainer is built against trl==1.16.0" in proc.stdout
    assert "but trl==0.0.1 is installed" in proc.stdout
