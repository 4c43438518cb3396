"""Divergence-weighted GRPO on TRL: configs, trainer, entry points and the tiny world's base model.

`train` may import `rewards` and `diagnostics`; never the other way round.
"""

from importlib.metadata import PackageNotFoundError, version

EXPECTED_TRL_VERSION = "1.16.0"


def _check_trl_version() -> None:
    # train/trainer.py overrides private GRPOTrainer hooks (`_generate_and_score_completions`),
    # whose signature and batch dict change between TRL releases: refuse any other version early.
    try:
        found = version("trl")
    except PackageNotFoundError as err:  # pragma: no cover - install problem
        raise ImportError(
            f"sparse-rlvr needs trl=={EXPECTED_TRL_VERSION}, but trl is not installed. "
            f"Fix: pip install 'trl=={EXPECTED_TRL_VERSION}'"
        ) from err
    if found != EXPECTED_TRL_VERSION:
        raise ImportError(
            f"sparse-rlvr is built against trl=={EXPECTED_TRL_VERSION} (it hooks private GRPOTrainer "
            f"methods), but trl=={found} is installed. Fix: pip install 'trl=={EXPECTED_TRL_VERSION}'"
        )


_check_trl_version()
