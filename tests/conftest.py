"""Shared offline fixtures.

Tiers (markers registered in pyproject.toml):
- default: unit tests, seconds each, tiny random models (hidden 16, 2 layers).
- `slow`: real (short) training runs on the tiny world; run by default and in CI.
- `distributed`: 2-process `accelerate launch` runs (gloo DDP, DeepSpeed ZeRO-2/3 on CPU); run by
  default and in CI.
- `gpu`: need CUDA; skipped on CPU machines (reported as skipped, never counted as passed).
Deselect tiers with e.g. `make test PYTEST_ARGS="-m 'not slow and not distributed'"`.

Nothing here touches the network: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE / WANDB_MODE=offline are
forced for the whole session.
"""

from __future__ import annotations

import os

for _k, _v in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "TOKENIZERS_PARALLELISM": "false",
    "DS_ACCELERATOR": "cpu",
    # tiny models: one thread per process is faster than two (and 2-process tests share 2 cores)
    "OMP_NUM_THREADS": "1",
}.items():
    os.environ[_k] = _v

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


# The vLLM-CPU engine test needs the second venv (`make test-vllm`, which CI runs after `make test`): not collected
# here, rather than a skip that would read as a pass.
from train.vllm_cpu import vllm_installed  # noqa: E402

collect_ignore = [] if vllm_installed() else ["train/test_vllm_cpu_engine.py"]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from train.tiny_world import build_tokenizer, default_corpus

    return build_tokenizer(default_corpus(n=300))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A random tiny Llama (hidden 16, 2 layers) + tokenizer saved like a hub model."""
    from train.tiny_world import random_tiny_model

    path = tmp_path_factory.mktemp("tiny_base")
    model = random_tiny_model(tiny_tokenizer, seed=0, hidden_size=16, num_layers=2, num_heads=2)
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory, tiny_tokenizer):
    """Another random tiny Llama with the same tokenizer (a 'policy' that differs from the base)."""
    from train.tiny_world import random_tiny_model

    path = tmp_path_factory.mktemp("tiny_policy")
    model = random_tiny_model(tiny_tokenizer, seed=1, hidden_size=16, num_layers=2, num_heads=2)
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_base_dir():
    """The tiny world's trained base, fast preset ("ci": competent but flawed; see docs/tiny_world.md).

    Built once into `<repo>/.cache/tiny-base-ci/` (gitignored) and reused across sessions via the
    config hash in its tiny_base.json; about 210 CPU-seconds the first time, instant afterwards.
    """
    from pathlib import Path

    from train.tiny_base import build_tiny_base

    path = Path(__file__).resolve().parent.parent / ".cache" / "tiny-base-ci"
    return build_tiny_base(path, seed=0, preset="ci", progress=False, num_threads=1)
