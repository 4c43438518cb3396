"""train/vllm_cpu.py without a vLLM engine: when it applies, the environment, the `LLM` wrapper and the weight sync.

The engine itself is exercised in tests/train/test_vllm_cpu_engine.py (the vLLM venv, `make test-vllm`).
"""

from __future__ import annotations

import os

import pytest
import torch
import trl.generation.vllm_generation as vllm_generation

from train import vllm_cpu
from train.config import DivergenceGRPOConfig


def _args(tmp_path, **kw):
    return DivergenceGRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], **kw)


def test_applies_only_to_vllm_on_cpu(tmp_path):
    assert not vllm_cpu.applies(_args(tmp_path))
    assert vllm_cpu.applies(_args(tmp_path, use_vllm=True, vllm_mode="colocate"))


def test_server_mode_on_cpu_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match=r"vllm_mode='server' cannot train on CPU.*NCCL.*vllm_mode='colocate'"):
        vllm_cpu.applies(_args(tmp_path, use_vllm=True, vllm_mode="server"))


def test_environment_keeps_what_the_user_set(monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "7")
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    new = vllm_cpu.set_environment()
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "7" and "VLLM_CPU_KVCACHE_SPACE" not in new
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and new == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def test_engine_in_a_child_process_is_refused(monkeypatch):
    """With =1 the engine runs in a child process: the in-place weight reload would fail at the first step."""
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    with pytest.raises(ValueError, match=r"VLLM_ENABLE_V1_MULTIPROCESSING='1'.*Fix: unset it"):
        vllm_cpu.set_environment()


@pytest.mark.parametrize("kw, match", [
    ({"vllm_mode": "colocated"}, r"'colocated' is not a vLLM mode.*vllm_mode='colocate'"),
    ({"vllm_enable_sleep_mode": True}, r"vllm_enable_sleep_mode=True on CPU.*Fix: vllm_enable_sleep_mode=False"),
    ({"vllm_tensor_parallel_size": 2}, r"vllm_tensor_parallel_size=2 on CPU.*Fix: vllm_tensor_parallel_size=1"),
])
def test_settings_the_cpu_sync_cannot_handle_are_refused(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        vllm_cpu.applies(_args(tmp_path, use_vllm=True, **kw))


@pytest.mark.parametrize("bf16, dtype", [(True, "bfloat16"), (False, "float32")])
def test_llm_is_built_eager_in_the_training_dtype_then_restored(tmp_path, monkeypatch, bf16, dtype):
    built = []

    def fake_llm(**kwargs):
        built.append(kwargs)

    monkeypatch.setattr(vllm_generation, "LLM", fake_llm, raising=False)
    with vllm_cpu.cpu_vllm_init(_args(tmp_path, use_vllm=True, bf16=bf16)):
        vllm_generation.LLM(model="m", max_model_len=64)  # what TRL's VLLMGeneration calls
    assert built == [{"model": "m", "max_model_len": 64, "enforce_eager": True, "dtype": dtype}]
    assert vllm_generation.LLM is fake_llm


def test_missing_vllm_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.delattr(vllm_generation, "LLM", raising=False)
    with pytest.raises(ImportError, match=r"make setup-vllm.*use_vllm=False"):
        with vllm_cpu.cpu_vllm_init(_args(tmp_path, use_vllm=True)):
            pass


def test_weight_sync_goes_through_reload_weights(tmp_path):
    """TRL's parameter iterator, each tensor cloned while current, handed to vLLM's reload_weights; cache reset."""
    w = torch.ones(2)

    class FakeLLM:
        def __init__(self):
            self.calls = []
            runner = type("Runner", (), {"model": torch.nn.Linear(2, 2)})()
            self.llm_engine = type("Engine", (), {"model_executor": type("Executor", (), {
                "driver_worker": type("Worker", (), {"model_runner": runner})()})()})()

        def collective_rpc(self, method, kwargs):
            self.calls.append((method, list(kwargs["weights_iterator"])))

        def reset_prefix_cache(self):
            self.calls.append(("reset_prefix_cache", None))

    class FakeGeneration:
        llm = FakeLLM()

        def _iter_named_params(self):
            yield "model.embed_tokens.weight", w

        def sync_weights(self):
            raise AssertionError("TRL's load_weights path must not run on CPU")

    class FakeTrainer:
        args = _args(tmp_path, use_vllm=True)
        vllm_generation = FakeGeneration()

    trainer = FakeTrainer()
    assert vllm_cpu.install_weight_sync(trainer)
    trainer.vllm_generation.sync_weights()
    (method, weights), reset = trainer.vllm_generation.llm.calls
    assert method == "reload_weights" and reset == ("reset_prefix_cache", None)
    assert [n for n, _ in weights] == ["model.embed_tokens.weight"]
    assert torch.equal(weights[0][1], w) and weights[0][1].data_ptr() != w.data_ptr()  # a copy, not the shard


def test_no_vllm_no_change(tmp_path):
    class FakeTrainer:
        args = _args(tmp_path)
        vllm_generation = None

    assert not vllm_cpu.install_weight_sync(FakeTrainer())


def test_tied_layers_get_their_kernel_rebuilt():
    """A tied LM head gets no weight in vLLM's reload: its CPU kernel must be rebuilt from the shared weight."""
    rebuilt = []

    class Method:
        def process_weights_after_loading(self, layer):
            rebuilt.append(layer.name)

    def layer(name, weight):
        m = torch.nn.Module()
        m.name, m.weight, m.cpu_linear, m.quant_method = name, weight, None, Method()
        return m

    shared = torch.nn.Parameter(torch.ones(4, 2))
    model = torch.nn.ModuleList([layer("embed_tokens", shared), layer("q_proj", torch.nn.Parameter(torch.ones(2, 2))),
                                 layer("lm_head", shared)])
    assert vllm_cpu.refresh_tied_kernels(model) == 2 and rebuilt == ["embed_tokens", "lm_head"]
