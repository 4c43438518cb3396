"""Load and run a whole, ordinary model inside one process of a ZeRO-3 or FSDP run.

Under DeepSpeed ZeRO-3, `TrainingArguments` registers its DeepSpeed config globally, so every later
`from_pretrained` in the process builds the model inside `deepspeed.zero.Init`: parameters are
partitioned at construction and broadcast from rank 0, a collective that every rank must join. A load
done by one rank alone after training (the final evaluation, a probe's base model) then waits on, or
crashes into, ranks that have already left ("Connection closed by peer" under gloo), and even when all
ranks join, the result is a partitioned model that cannot run a forward outside a DeepSpeed engine.
Under FSDP with `fsdp_cpu_ram_efficient_loading`, `from_pretrained` on a non-zero local rank loads
onto the meta device (weights come later from FSDP's broadcast). And `generate` defaults to
`synced_gpus=True` under ZeRO-3 (and for FSDP-managed modules): an `all_reduce` per new token, which
fails the same way when one rank generates alone (the second crash of the final evaluation).

`standalone()` lifts all three for the duration of the block: inside it, `from_pretrained` builds a
complete model in this process only and `generate` runs without collectives. Use it around every load
and generation that is not the training model itself (final evaluation, probes, sampling).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["standalone", "load_standalone_model"]

_FSDP_ENV = ("ACCELERATE_USE_FSDP", "FSDP_CPU_RAM_EFFICIENT_LOADING")


@contextmanager
def standalone() -> Iterator[None]:
    """Inside: `from_pretrained` neither partitions (ZeRO-3 `zero.Init`) nor meta-loads (FSDP), and `generate`
    on a model that is not FSDP-managed does not sync across ranks; the global settings are restored after."""
    from transformers.integrations import deepspeed as hf_ds

    saved_ref = hf_ds._hf_deepspeed_config_weak_ref
    saved_env = {k: os.environ.get(k) for k in _FSDP_ENV}
    hf_ds.unset_hf_deepspeed_config()
    for k in _FSDP_ENV:
        if saved_env[k] is not None:
            os.environ[k] = "false"
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved_ref
        for k, v in saved_env.items():
            if v is not None:
                os.environ[k] = v


def load_standalone_model(path, *, dtype=None, device=None):
    """`AutoModelForCausalLM.from_pretrained(path, dtype=dtype)` inside `standalone_loading()`, moved to
    `device`, in eval mode. Raises FileNotFoundError (naming the fix) when `path` holds no loadable weights.
    Generate with it inside `standalone()` too."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    folder = Path(path)
    if folder.is_dir() and not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise FileNotFoundError(
            f"{folder} holds no model weights (*.safetensors / *.bin). Under ZeRO-3 set "
            "`zero3_save_16bit_model: true` in the accelerate config (stage3_gather_16bit_weights_on_model_save), "
            "under FSDP `fsdp_state_dict_type: FULL_STATE_DICT`, so that the trained model is saved whole."
        )
    with standalone():
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    if device is not None:
        model.to(device)
    return model.eval()
