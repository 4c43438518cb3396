"""One short console line per logging step instead of TRL's ~60-key metrics dict.

    from train.console import use_one_line_console
    use_one_line_console(trainer)        # before trainer.train()

transformers prints every `logs` dict on the console (`ProgressCallback.on_log` through the tqdm bar,
or `PrinterCallback` with `disable_tqdm`); a GRPO step with `shift/*` logs about 60 keys. This swaps
those two callbacks for `OneLineConsoleCallback`: the same tqdm bar (or none with `disable_tqdm`) and,
per logging step, one line of the few numbers a person watches (`CONSOLE_KEYS`, the metric names as
logged). Only the console changes: every `report_to` backend, `trainer.state.log_history` and the
reports still get every key (this callback reads the logs, never modifies them).
"""

from __future__ import annotations

from transformers import PrinterCallback, ProgressCallback, TrainerCallback

# (logged metric name, short label on the console), in print order; missing keys are skipped
CONSOLE_KEYS = (("loss", "loss"), ("reward", "reward"), ("reward_std", "reward_std"),
                ("frac_reward_zero_std", "zero_std"), ("rewards/accuracy/mean", "acc"),
                ("completions/mean_length", "len"), ("completions/clipped_ratio", "clipped"),
                ("shift/js_mean", "js_mean"), ("shift/frac_js_gt_0.1", "js>0.1"),
                ("shift_probe/js_mean", "probe_js"), ("grad_norm", "grad"), ("step_time", "s/step"),
                ("eval_loss", "eval_loss"), ("train_runtime", "runtime_s"))


def one_line(logs: dict, step: int, max_steps: int | None = None) -> str:
    """`step 3/40 | loss 0.012 | reward 0.25 | ...` from a logs dict (numbers with 4 significant digits)."""
    head = f"step {step}/{max_steps}" if max_steps else f"step {step}"
    parts = [head]
    for key, label in CONSOLE_KEYS:
        value = logs.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(f"{label} {value:.4g}")
    return " | ".join(parts)


class OneLineConsoleCallback(ProgressCallback):
    """transformers' progress bar, with `one_line` instead of the whole logs dict at each log."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and self.training_bar is not None:
            self.training_bar.write(one_line(logs, state.global_step, state.max_steps))


class OneLinePrinterCallback(TrainerCallback):
    """`disable_tqdm=True`: no bar, `one_line` printed at each log (transformers' PrinterCallback prints the dict)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            print(one_line(logs, state.global_step, state.max_steps), flush=True)


def use_one_line_console(trainer) -> TrainerCallback:
    """Replace `trainer`'s console printer (ProgressCallback / PrinterCallback) by the one-line version."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    callback = OneLinePrinterCallback() if trainer.args.disable_tqdm else OneLineConsoleCallback()
    trainer.add_callback(callback)
    return callback
