"""What the pipelines (`sparse-rlvr demo`, `demo --world real`, `compare`) share: one way to launch a GRPO
run, resumable stages, the reporting backend and the HTML report shell.

    from train.pipeline import run_grpo
    run_grpo("train/recipes/tiny_grpo.yaml", {"model_name_or_path": base, "weighting": "none",
                                              "max_steps": 30, "output_dir": out})

A GRPO run is a separate `python -m train.grpo` process (each run owns its accelerate state, its
memory is returned to the system, and a crash leaves the pipeline's other stages intact), but its
arguments are a dict of **field names** of the entry point's three argument groups
(`GRPOScriptArguments`, `DivergenceGRPOConfig`, TRL's `ModelConfig`), checked against those
dataclasses *before* anything runs (`grpo_command`): a renamed or misspelt setting fails at once,
naming the close matches, instead of after an hour of the previous stages. `grpo_command` is the
only place that turns settings into `train.grpo` command-line arguments.
"""

from __future__ import annotations

import base64
import difflib
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

logger = logging.getLogger("train.pipeline")


# --------------------------------------------------------------------------------------------------
# GRPO runs
# --------------------------------------------------------------------------------------------------


def grpo_field_names() -> set[str]:
    """Every setting `train/grpo.py` accepts: the fields of its three TrlParser argument groups, plus `config`."""
    from trl import ModelConfig

    from train.config import DivergenceGRPOConfig
    from train.grpo import GRPOScriptArguments

    return {f.name for group in (GRPOScriptArguments, DivergenceGRPOConfig, ModelConfig) for f in fields(group)}


def _check_names(names, where: str) -> None:
    valid = grpo_field_names()
    unknown = [n for n in names if n not in valid]
    if unknown:
        hints = {n: difflib.get_close_matches(n, valid, n=3) for n in unknown}
        raise ValueError(f"{where}: unknown train.grpo setting(s) {hints} (name: close matches). Fix: use the field "
                         "names of GRPOScriptArguments / DivergenceGRPOConfig / ModelConfig (`sparse-rlvr grpo --help`)")


def _as_args(name: str, value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bool):
        return [f"--{name}", "true" if value else "false"]
    if isinstance(value, (list, tuple)):
        return [f"--{name}", *map(str, value)] if value else []
    return [f"--{name}", str(value)]


def grpo_command(config: str | os.PathLike | None, settings: Mapping[str, Any], extra: Sequence[str] = (), *,
                 python: str = sys.executable) -> list[str]:
    """The `python -m train.grpo` command for a recipe plus `settings` (field name -> value; None values are left
    to the recipe, lists become several values, bools `true`/`false`) plus `extra` raw arguments (a user's
    `-- --max_steps 100`).

    Raises:
        ValueError: a name in `settings` or a `--flag` in `extra` that the entry point does not define.
    """
    _check_names(list(settings), "settings")
    _check_names([a[2:].split("=", 1)[0] for a in extra if a.startswith("--")], "extra arguments")
    cmd = [python, "-m", "train.grpo"]
    if config is not None:
        cmd += ["--config", str(config)]
    for name, value in settings.items():
        cmd += _as_args(name, value)
    return cmd + list(extra)


def run_grpo(config, settings: Mapping[str, Any], extra: Sequence[str] = (), *, tag: str = "pipeline") -> None:
    """Run one GRPO training (`grpo_command`) to completion; raises `subprocess.CalledProcessError` if it fails."""
    cmd = grpo_command(config, settings, extra)
    logger.info("[%s] %s", tag, shlex.join(cmd))
    subprocess.run(cmd, check=True)


# --------------------------------------------------------------------------------------------------
# Stages and reporting
# --------------------------------------------------------------------------------------------------


class Stages:
    """Runs named stages once: a stage is done when `<out>/<name>/.done` exists."""

    def __init__(self, out: Path, force: bool):
        self.out, self.force, self.times = out, force, {}

    def run(self, name: str, fn) -> Path:
        path = self.out / name
        done = path / ".done"
        if done.exists() and not self.force:
            logger.info("[demo] %s: already done, reusing %s", name, path)
            return path
        logger.info("[demo] %s: starting", name)
        start = time.monotonic()
        path.mkdir(parents=True, exist_ok=True)
        fn(path)
        self.times[name] = round(time.monotonic() - start, 1)
        done.write_text(json.dumps({"seconds": self.times[name]}))
        logger.info("[demo] %s: done in %.0f s", name, self.times[name])
        return path


def _wandb_mode() -> str | None:
    """'online' if the user is logged in, 'offline' if wandb is installed but not set up, None if absent."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        return None
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    netrc = Path.home() / ".netrc"
    logged_in = bool(os.environ.get("WANDB_API_KEY")) or (netrc.exists() and "api.wandb.ai" in netrc.read_text())
    return "online" if logged_in else "offline"


def reporting_backend(out: Path, project: str) -> str:
    """`report_to` for the pipelines' training runs: wandb (online if logged in, else offline under `out`),
    or tensorboard when wandb is absent or `WANDB_MODE=disabled`. Sets the WANDB_* variables it needs."""
    wandb_mode = _wandb_mode()
    if wandb_mode is None:
        return "tensorboard"
    os.environ["WANDB_MODE"] = wandb_mode
    os.environ.setdefault("WANDB_DIR", str(out))
    os.environ.setdefault("WANDB_PROJECT", project)
    return "wandb" if wandb_mode != "disabled" else "tensorboard"


def _img(path: Path) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img src="data:image/png;base64,{data}" style="max-width:720px"><figcaption>{path.parent.name}/' \
           f'{path.name}</figcaption></figure>'


def report_page(title: str, body: str, summary: dict, *, shifts_dirs: dict, cross_dir: Path) -> str:
    """One self-contained HTML report: `body` (already HTML), links to each shift run's token report,
    every PNG of the shift and cross-sampling folders inlined, and `summary` as JSON. Both demos use it."""
    import html

    figs = [_img(p) for d in shifts_dirs.values() for p in sorted(d.glob("*.png"))] + \
           [_img(p) for p in sorted(cross_dir.glob("*.png"))]
    links = "".join(f'<li><a href="{d.name}/report.html">{d.name}: token-level report</a></li>'
                    for d in shifts_dirs.values())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto}td,th{border:1px solid #ccc;padding:4px}"
            "table{border-collapse:collapse}pre{white-space:pre-wrap}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>{body}<h2>Token-level reports</h2><ul>{links}</ul>"
            f"<h2>Plots</h2>{''.join(figs)}<h2>summary.json</h2><pre>{html.escape(json.dumps(summary, indent=2))}"
            "</pre></body></html>")


__all__ = ["Stages", "grpo_command", "grpo_field_names", "report_page", "reporting_backend", "run_grpo"]
