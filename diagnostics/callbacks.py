"""`ShiftDiagnosticsCallback`: the base-vs-policy token-level shift on a fixed probe set, during training.

    from diagnostics.callbacks import ShiftDiagnosticsCallback
    from diagnostics.probe import load_probe
    trainer = GRPOTrainer(...)                                   # any transformers Trainer works
    ShiftDiagnosticsCallback(load_probe("probe.jsonl"), base_model="path/to/base",
                             every_n_steps=50).attach(trainer)   # attach: metrics via trainer.log
    trainer.train()

Every `every_n_steps` optimizer steps and at every checkpoint save, the callback teacher-forces the
base and the current policy on the probe set (`diagnostics.shift.analyze`), summarises the table
(`diagnostics.summary.summarize`) and

- logs the scalars (`scalar_metrics`, prefix `shift_probe/`; the keys of `diagnostics.shift_stats`,
  so `shift_probe/js_p99` and the trainer's `shift/js_p99` are one quantity) through `trainer.log`, so every
  `report_to` backend and `trainer.state.log_history` get them;
- when wandb is active (`wandb.run is not None`, rank 0) also logs a `wandb.Histogram` of the
  per-token JS and a `wandb.Table` of the most divergent tokens with their context;
- appends one JSONL record per evaluation to `output_dir/shift_probe.jsonl` (append-only, each line
  written + flushed + fsynced; see `diagnostics.jsonl`);
- writes `shift_probe_summary.json` (the full summary) into each `checkpoint-*` directory.

Resume-safe: at train begin the JSONL file is cut back to the records with `step <= global_step`
(the resumed step; a fresh run starts at 0, so stale records of an earlier run are dropped), one
record per step, rewritten atomically; a step is never appended twice.

Distributed: under DDP and DeepSpeed ZeRO-3 every rank runs the same forwards (ZeRO-3 gathers the
partitioned parameters inside each forward, so a rank that skipped a forward would deadlock the
others); whether to evaluate depends only on the step, never on rank-local state such as files.
Rank 0 alone writes files and talks to wandb; `trainer.log` is called on every rank, as the
Trainer itself does (the reporting integrations act on the main process only).

The base model is
- a path or hub id (loaded once at train begin, in the policy's dtype, on its device), or
- an `nn.Module` you already hold, e.g. the trainer's frozen reference model (`attach(trainer,
  base_from_trainer=True)` takes `trainer.base` (its `analysis_module()`) or `trainer.ref_model`): for large models this
  avoids a second full copy, and under ZeRO-3 a prepared reference model is partitioned too; or
- `None`: the policy's weights at the first train begin are snapshotted (gathered under ZeRO-3,
  so one full copy per rank) and saved to `output_dir/shift_probe_base/`, which a resumed run loads
  (the resumed policy is no longer the base).

Departures / choices: the probe set is built from base samples by default (no on-policy bias);
undefined metrics (NaN, e.g. reallocation shares with no high-JS token) are logged as NaN, like the
trainer's `shift/*` (the same key set at every evaluation, the same names as `shift/*`:
`diagnostics.shift_stats`), and kept as null in the JSONL record.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from diagnostics.jsonl import append_jsonl, read_jsonl, rewrite_jsonl, write_json_atomic
from diagnostics.models import check_same_vocabulary, load_model
from diagnostics.probe import ProbeSet, load_probe
from diagnostics.divergence_settings import DivergenceSettings

logger = logging.getLogger(__name__)

JSONL_NAME = "shift_probe.jsonl"
CHECKPOINT_SUMMARY_NAME = "shift_probe_summary.json"
PROBE_COPY_NAME = "shift_probe_set.jsonl"
BASE_SNAPSHOT_DIR = "shift_probe_base"
_SNAPSHOT_DONE = "SNAPSHOT_COMPLETE"  # marker written after save_pretrained finished


def _is_zero3(model) -> bool:
    """True when `model`'s parameters are DeepSpeed ZeRO-3 partitioned (they carry a `ds_id`)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def snapshot_model(model) -> torch.nn.Module:
    """A frozen, eval-mode copy of a transformers model's current weights, on the same device.

    Under ZeRO-3 the partitioned parameters are gathered first (every rank must call this).
    """
    if not hasattr(model, "config"):
        raise ValueError("base_model=None snapshots the policy, which needs a transformers model with a .config; "
                         "pass base_model= explicitly")
    if hasattr(model, "peft_config"):
        raise ValueError("base_model=None cannot snapshot a PEFT model (the adapters are the trained part). Fix: pass "
                         "base_model=PATH of the model the adapters were added to")
    param = next(model.parameters())
    with torch.random.fork_rng(devices=[]):  # the throw-away random init must not move the run's RNG stream
        copy = type(model)(model.config)
    copy.to(dtype=param.dtype)
    if _is_zero3(model):
        import deepspeed  # `deepspeed.zero` is an attribute, not an importable submodule

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    else:
        state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    copy.load_state_dict(state, strict=True)
    copy.to(param.device if param.device.type != "meta" else "cpu")
    copy.eval().requires_grad_(False)
    return copy


def top_divergent_rows(table, probe: ProbeSet, tokenizer, k: int = 20, context_tokens: int = 12) -> list[list]:
    """The `k` highest-JS tokens of an analysis table with their preceding context.

    Returns rows `[seq_id, position, token, js, entropy_base, entropy_policy, p_base(token),
    p_policy(token), base top-1, policy top-1, context]`; `context` is the decoded text of the
    `context_tokens` tokens before the token, then the token itself in `[[...]]`.
    """
    if len(table) == 0:
        return []
    top = table.nlargest(min(k, len(table)), "js")
    rows = []
    for r in top.itertuples(index=False):
        seq = probe.sequences[int(r.seq_id)]
        ids = list(seq.prompt_ids) + list(seq.completion_ids)
        at = len(seq.prompt_ids) + int(r.position)  # index of the token in prompt + completion
        ctx = tokenizer.decode(ids[max(0, at - context_tokens): at], skip_special_tokens=False)
        rows.append([
            int(r.seq_id), int(r.position), str(r.token), float(r.js), float(r.entropy_base), float(r.entropy_policy),
            math.exp(float(r.logp_base_token)), math.exp(float(r.logp_policy_token)),
            tokenizer.decode([int(r.top1_base)]), tokenizer.decode([int(r.top1_policy)]),
            f"{ctx}[[{r.token}]]",
        ])
    return rows


TOP_TOKEN_COLUMNS = ["seq_id", "position", "token", "js", "entropy_base", "entropy_policy", "p_base_token",
                     "p_policy_token", "base_top1", "policy_top1", "context"]


class ShiftDiagnosticsCallback(TrainerCallback):
    """Measure the base-vs-policy shift on a fixed probe set every N steps and at every save.

    Args:
        probe: a `ProbeSet`, a path to a probe JSONL file (see `diagnostics.probe`), or a list of prompts
            (chat-templated text or message lists): then the probe set is sampled once at the first train
            begin from the policy (= the base at step 0), seeded, with `probe_generation` settings
            (`max_new_tokens`, `temperature`, `top_p`, `seed`, `batch_size` of `build_probe_set`), and a
            resumed run reloads the copy it saved (`output_dir/shift_probe_set.jsonl`).
        base_model: path / hub id, a loaded model, or None (snapshot the policy at the first train
            begin; see the module docstring).
        tokenizer: decodes tokens for tables; default: the trainer's `processing_class`.
        every_n_steps: evaluate when `global_step % every_n_steps == 0`; 0 = only at saves.
        evaluate_on_save: also evaluate at every checkpoint save (and write the checkpoint summary).
        divergence: the run's `DivergenceSettings` (temperature, top-p, chunk size, high-divergence threshold,
            measure), so `shift_probe/*` is the same computation as the trainer's `shift/*`. Default: the
            trainer's `divergence_settings` at `attach`, else `DivergenceSettings()` (T = 1, full vocabulary).
        batch_size: sequences per forward of `diagnostics.shift.analyze`.
        top_tokens: rows of the wandb table of most divergent tokens.
        prefix: metric-name prefix.
        progress: tqdm bar inside each evaluation (rank 0).
    """

    def __init__(
        self,
        probe: ProbeSet | str | Path,
        base_model=None,
        *,
        tokenizer=None,
        every_n_steps: int = 50,
        evaluate_on_save: bool = True,
        divergence: DivergenceSettings | None = None,
        batch_size: int = 8,
        top_tokens: int = 20,
        prefix: str = "shift_probe/",
        progress: bool = False,
        probe_generation: dict | None = None,
    ):
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps must be >= 0 (0 = only at checkpoint saves), got {every_n_steps}")
        if every_n_steps == 0 and not evaluate_on_save:
            raise ValueError("ShiftDiagnosticsCallback would never run: set every_n_steps > 0 or evaluate_on_save=True")
        self._probe_arg = probe
        self.probe: ProbeSet | None = probe if isinstance(probe, ProbeSet) else None
        self._probe_prompts = list(probe) if isinstance(probe, (list, tuple)) else None
        if self._probe_prompts is not None and not self._probe_prompts:
            raise ValueError("the probe prompt list is empty. Fix: pass at least one prompt")
        self.probe_generation = dict(probe_generation or {})
        self._base_arg = base_model
        self.base_model = base_model if isinstance(base_model, torch.nn.Module) else None
        self.tokenizer = tokenizer
        self.every_n_steps = every_n_steps
        self.evaluate_on_save = evaluate_on_save
        self.divergence = divergence
        self.batch_size = batch_size
        self.top_tokens = top_tokens
        self.prefix = prefix
        self.progress = progress
        self.trainer = None
        self._results: dict[int, dict] = {}  # step -> {"metrics", "summary"} of this process' evaluations
        self._recorded_steps: set[int] = set()  # steps already in the JSONL file (rank 0)
        self._pending_logs: dict[str, float] = {}  # fallback path without attach(): merged in on_log
        self.num_evaluations = 0

    # ---- wiring ---------------------------------------------------------------------------------
    def attach(self, trainer, *, base_from_trainer: bool = False) -> ShiftDiagnosticsCallback:
        """Register with `trainer` and log through `trainer.log` (every backend + log_history).

        `base_from_trainer=True` uses the trainer's base: `trainer.base.analysis_module()` (the divergence-weighted
        trainer's public answer to "what is the base", PEFT adapter context included), else `trainer.ref_model`
        (TRL loads it only when `beta > 0`). Without `divergence=`, the trainer's `divergence_settings` are used.
        """
        if self.divergence is None:
            self.divergence = getattr(trainer, "divergence_settings", None)
        if base_from_trainer:
            trainer_base = getattr(trainer, "base", None)
            base = trainer_base.analysis_module() if trainer_base is not None else getattr(trainer, "ref_model", None)
            if base is None:
                raise ValueError("base_from_trainer=True but the trainer has neither a `base` nor a `ref_model` "
                                 "(TRL's GRPOTrainer loads ref_model only with beta > 0). Fix: pass base_model=PATH")
            self.base_model = base
            self._base_arg = base
        self.trainer = trainer
        trainer.add_callback(self)
        # A probe step's metrics join that step's regular log entry (loss, grad_norm, TRL's metrics) instead of
        # a separate `trainer.log` call from `on_step_end`: such a call resets `control.should_log` and takes
        # over the step's accumulated TRL metrics, so loss and grad_norm were never logged at probe steps.
        trainer_log = trainer.log

        def log_with_probe(logs, *args, **kwargs):
            if self._pending_logs:
                logs = {**logs, **self._pending_logs}
                self._pending_logs = {}
            return trainer_log(logs, *args, **kwargs)

        trainer.log = log_with_probe
        return self

    def _output_dir(self, args) -> Path:
        return Path(args.output_dir)

    # ---- events ---------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.tokenizer is None:
            self.tokenizer = processing_class
        if self.tokenizer is None:
            raise ValueError("ShiftDiagnosticsCallback needs a tokenizer: pass tokenizer= (the trainer has no "
                             "processing_class)")
        out = self._output_dir(args)
        if self.probe is None and self._probe_prompts is not None:
            self.probe = self._probe_from_prompts(state, model, out)
        elif self.probe is None:
            self.probe = load_probe(self._probe_arg, self.tokenizer)
        if len(self.probe) == 0:
            raise ValueError("the probe set is empty. Fix: build it from at least one prompt")
        self._prepare_base(args, state, model, out)
        if state.is_world_process_zero:
            self._save_probe_copy(out)
            self._truncate_records(out / JSONL_NAME, state.global_step)
        if self.trainer is None:
            logger.warning("ShiftDiagnosticsCallback was not attached with .attach(trainer): shift_probe/ metrics are "
                           "added to the logs in on_log, so only reporting callbacks after it see them and "
                           "trainer.state.log_history does not. Use callback.attach(trainer).")

    def _probe_from_prompts(self, state, model, out: Path) -> ProbeSet:
        """Sample the probe once (every rank the same: seeded); a resumed run reloads the saved copy."""
        saved = out / PROBE_COPY_NAME
        if state.global_step > 0 and saved.exists():
            return load_probe(saved, self.tokenizer)
        if model is None:
            raise ValueError("ShiftDiagnosticsCallback got no model at train begin to sample the probe set from")
        from diagnostics.probe import build_probe_set

        return build_probe_set(model, self.tokenizer, self._probe_prompts, progress=False, **self.probe_generation)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every_n_steps and state.global_step > 0 and state.global_step % self.every_n_steps == 0:
            self._evaluate(args, state, model, defer=True)
            control.should_log = True  # this step's log entry carries the probe metrics (with loss, grad_norm)
        return control

    def on_save(self, args, state, control, model=None, **kwargs):
        if not self.evaluate_on_save:
            return control
        result = self._evaluate(args, state, model)
        if state.is_world_process_zero:
            ckpt = self._output_dir(args) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                write_json_atomic(ckpt / CHECKPOINT_SUMMARY_NAME, {
                    "step": state.global_step, "probe_fingerprint": self.probe.fingerprint(),
                    "metrics": result["metrics"], "summary": result["summary"],
                })
            else:
                logger.warning("shift probe: checkpoint directory %s not found; its summary was not written", ckpt)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._pending_logs and logs is not None:
            logs.update(self._pending_logs)
            self._pending_logs = {}
        return control

    # ---- work -----------------------------------------------------------------------------------
    @property
    def settings(self) -> DivergenceSettings:
        """The divergence settings in force (`divergence=`, the trainer's, or the defaults)."""
        return self.divergence if self.divergence is not None else DivergenceSettings()

    @property
    def analyze_kwargs(self) -> dict:
        """The keyword arguments of `diagnostics.shift.analyze` this callback uses (from `settings`)."""
        s = self.settings
        return dict(chunk_size=s.chunk_size, top_p=s.top_p, temperature=s.temperature, batch_size=self.batch_size)

    def analyze(self, model, progress: bool = False):
        """The per-token table (`diagnostics.shift.analyze`) of base vs `model` on the probe set."""
        from diagnostics.shift import analyze

        return analyze(self.base_model, model, self.tokenizer, self.probe.records(), progress=progress,
                       **self.analyze_kwargs)

    def _evaluate(self, args, state, model, defer: bool = False) -> dict:
        """Analyse the probe set at this step on every rank (once per step); rank 0 writes and logs."""
        step = state.global_step
        if step in self._results:
            return self._results[step]
        if model is None:
            raise ValueError("ShiftDiagnosticsCallback got no model in the callback event; it needs a Trainer")
        from diagnostics.shift_stats import shift_stats
        from diagnostics.summary import scalar_metrics, summarize

        t0 = time.perf_counter()
        show = self.progress and state.is_world_process_zero
        table = self.analyze(model, progress=show)
        settings = self.settings
        summary = summarize(table, high_divergence_threshold=settings.high_divergence_threshold)
        metrics = scalar_metrics(summary)
        if settings.measure != "js" and settings.measure in table.columns:  # the trainer's measure too
            extra = shift_stats(table[settings.measure].to_numpy(), measure=settings.measure)
            metrics.update({k: v for k, v in extra.items() if settings.measure in k})  # its D keys only
        seconds = time.perf_counter() - t0
        result = {"metrics": metrics, "summary": summary}
        self._results = {step: result}  # keep only the latest step (the on_save reuse case)
        self.num_evaluations += 1

        if state.is_world_process_zero:
            self._write_record(args, state, metrics, summary, seconds)
            self._log_wandb(args, state, table)
        logs = {f"{self.prefix}{k}": float(v) for k, v in metrics.items()}  # NaN kept: stable keys, as shift/*
        logs[f"{self.prefix}seconds"] = seconds
        if self.trainer is not None and not defer:  # on_save: the step's log entry was already written
            self.trainer.log(logs)
        else:
            self._pending_logs.update(logs)
        return result

    def _write_record(self, args, state, metrics, summary, seconds) -> None:
        step = state.global_step
        if step in self._recorded_steps:
            logger.info("shift probe: step %d is already recorded; not appending it again", step)
            return
        append_jsonl(self._output_dir(args) / JSONL_NAME, {
            "step": step, "epoch": state.epoch, "time": time.time(), "seconds": seconds,
            "probe_fingerprint": self.probe.fingerprint(), "metrics": metrics, "summary": summary,
        })
        self._recorded_steps.add(step)

    def _log_wandb(self, args, state, table) -> None:
        wandb = sys.modules.get("wandb")  # never import it ourselves: active only if the run uses it
        if wandb is None or getattr(wandb, "run", None) is None:
            return
        rows = top_divergent_rows(table, self.probe, self.tokenizer, self.top_tokens)
        wandb.log({
            f"{self.prefix}js_histogram": wandb.Histogram(table["js"].to_numpy()),
            f"{self.prefix}top_tokens": wandb.Table(columns=TOP_TOKEN_COLUMNS, data=rows),
            "train/global_step": state.global_step,
        })

    def _truncate_records(self, path: Path, global_step: int) -> None:
        """Keep records with step <= global_step, one per step; rewrite atomically if anything changes."""
        records = read_jsonl(path)
        kept, seen, dropped = [], set(), 0
        for rec in records:
            step = rec.get("step")
            if not isinstance(step, int) or step > global_step or step in seen:
                dropped += 1
                continue
            seen.add(step)
            kept.append(rec)
        if dropped or (path.exists() and path.read_bytes()[-1:] not in (b"", b"\n")):
            rewrite_jsonl(path, kept)
            logger.warning("shift probe: %s: kept %d records up to step %d, dropped %d (later steps or duplicates)",
                           path, len(kept), global_step, dropped)
        self._recorded_steps = seen

    def _save_probe_copy(self, out: Path) -> None:
        """Keep the probe set next to the run (evolution reuses it); warn if a different one is there."""
        path = out / PROBE_COPY_NAME
        if path.exists():
            old = load_probe(path, self.tokenizer).fingerprint()
            if old != self.probe.fingerprint():
                logger.warning("shift probe: %s holds a different probe set (%s) than this run's (%s); earlier "
                               "records are not comparable. Overwriting it.", path, old, self.probe.fingerprint())
            else:
                return
        self.probe.save(path)

    def _prepare_base(self, args, state, model, out: Path) -> None:
        if self.base_model is None:
            self.base_model = self._load_base(state, model, out)
        check_same_vocabulary(self.tokenizer, self.tokenizer, self.base_model, model,
                              base_name=str(self._base_arg if self._base_arg is not None else BASE_SNAPSHOT_DIR))

    def _load_base(self, state, model, out: Path):
        param = next(model.parameters())
        if self._base_arg is not None:  # a path or hub id
            return load_model(str(self._base_arg), dtype=param.dtype, device=param.device, flag="base_model")
        snap_dir = out / BASE_SNAPSHOT_DIR
        if state.global_step == 0:
            base = snapshot_model(model)
            if state.is_world_process_zero:
                base.save_pretrained(snap_dir)
                (snap_dir / _SNAPSHOT_DONE).write_text(f"policy weights at step 0, saved {time.ctime()}\n")
            return base
        if not (snap_dir / _SNAPSHOT_DONE).exists():
            raise ValueError(f"resuming at step {state.global_step} with base_model=None, but the step-0 snapshot "
                             f"{snap_dir} is missing. Fix: pass base_model=PATH_OF_THE_BASE")
        return load_model(str(snap_dir), dtype=param.dtype, device=param.device, flag="shift probe base snapshot")
