"""Divergence-weighted GRPO on TRL: configs, trainer, entry points and the tiny world's base model.

`train` may import `rewards` and `diagnostics`; never the other way round.

The TRL version is checked only where private TRL methods are overridden (`train.trainer`, at its
import): `sparse-rlvr shift`, `cross-sample`, `evolution` and `eval` use no private TRL code and
run with any TRL.
"""

EXPECTED_TRL_VERSION = "1.16.0"


def check_trl_version() -> None:
    """Raise ImportError unless trl == EXPECTED_TRL_VERSION (the trainer hooks private GRPOTrainer methods)."""
    import importlib.metadata as metadata  # looked up at call time (tests fake the installed version)

    # train/trainer.py overrides private GRPOTrainer hooks (`_generate_and_score_completions`,
    # `_compute_loss`, ...), whose signatures and batch dict change between TRL releases.
    try:
        found = metadata.version("trl")
    except metadata.PackageNotFoundError as err:  # pragma: no cover - install problem
        raise ImportError(
            f"sparse-rlvr needs trl=={EXPECTED_TRL_VERSION}, but trl is not installed. "
            f"Fix: pip install 'trl=={EXPECTED_TRL_VERSION}'"
        ) from err
    if found != EXPECTED_TRL_VERSION:
        raise ImportError(
            f"sparse-rlvr's trainer is built against trl=={EXPECTED_TRL_VERSION} (it hooks private GRPOTrainer "
            f"methods), but trl=={found} is installed. Fix: pip install 'trl=={EXPECTED_TRL_VERSION}' (the analysis "
            f"commands shift / cross-sample / evolution / eval work with any trl)"
        )
