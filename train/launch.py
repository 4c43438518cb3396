"""Refuse a launch whose distributed setup silently differs from the one asked for (docs/launch.md)."""

from __future__ import annotations

import os


def check_launch(accelerator, fsdp_enabled: bool) -> None:
    """Raise ValueError when accelerate set up something other than what the launch asked for.

    accelerate enables FSDP only on accelerator devices (GPU/XPU/...): `accelerate launch` with an FSDP config
    on CPU gives plain DDP with `use_cpu` (every rank a full model copy) and, without it, independent
    single-process runs (no process group at all). Both exit 0, so the trainer checks at start-up.
    """
    state = accelerator.state
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not fsdp_enabled:
        raise ValueError(
            f"the accelerate config asks for FSDP but accelerate set up {state.distributed_type} (device "
            f"{accelerator.device}): this accelerate enables FSDP on GPUs only. On CPU use "
            "accelerate_configs/cpu_ddp.yaml or cpu_zero3.yaml (sharded parameters)."
        )
    if world > 1 and state.num_processes == 1:
        raise ValueError(
            f"launched as {world} processes (WORLD_SIZE) but accelerate set up {state.distributed_type} with one "
            "process each: the ranks would train independently. On CPU pass --use_cpu true with a "
            "MULTI_GPU/DeepSpeed config (accelerate_configs/cpu_*.yaml)."
        )


__all__ = ["check_launch"]
