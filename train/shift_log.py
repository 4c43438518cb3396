"""The trainer's `shift/*` metrics: per-token columns pooled over a generation batch, gathered from every rank.

    log = ShiftLog()
    log.add("train", token_columns(div, mask, ent_base, ent_policy, weights), n_bad)   # each (micro-)batch
    local, n_bad = log.pop("train")                                                    # once per generation batch
    rows = gather_valid(accelerator, local)                                            # (N_global, 4), every rank
    metrics = shift_metrics(rows, settings.high_divergence_threshold, settings.measure)

With D computed at loss time, one generation batch arrives as `steps_per_generation` micro-batches; their
columns are pooled so the metrics describe the same token set as when D is computed once after generation
(quantiles of the whole batch, not means of per-micro-batch quantiles). The statistics and their names
are `diagnostics.shift_stats.shift_stats`'s (docs/vocabulary.md), the same as the probe's `shift_probe/*`.
"""

from __future__ import annotations

import torch

from diagnostics.shift_stats import DEFAULT_HIGH_DIVERGENCE_THRESHOLD, shift_stats

COLUMNS = ("divergence", "entropy_base", "entropy_policy", "weight")


def token_columns(div, mask, ent_base, ent_policy, weights) -> torch.Tensor:
    """`(B, C)` tensors -> `(N_valid, 4)` float32 rows [D, H_base, H_policy, w] of the tokens with mask 1.
    A missing entropy (None: source 'old' has no base) is NaN; a NaN D counts as 0 (its weight fell back to 1)."""
    valid = mask.bool()
    nan = torch.full_like(div, float("nan"), dtype=torch.float32)
    return torch.stack([
        torch.nan_to_num(div.float(), nan=0.0)[valid],
        (ent_base if ent_base is not None else nan)[valid].float(),
        (ent_policy if ent_policy is not None else nan)[valid].float(),
        weights[valid].float(),
    ], dim=-1)  # (N_local, 4)


def gather_valid(accelerator, columns: torch.Tensor) -> torch.Tensor:
    """`(N_local, k)` -> `(N_global, k)`: every rank's rows, padding rows dropped (identical on every rank)."""
    padded = accelerator.pad_across_processes(columns, dim=0, pad_index=float("nan"))
    gathered = accelerator.gather(padded)  # (world · N_max, k)
    return gathered[~torch.isnan(gathered[:, 0])]


class ShiftLog:
    """Columns waiting to be logged, per mode ('train' / 'eval')."""

    def __init__(self):
        self.pending: dict[str, list] = {"train": [], "eval": []}

    def add(self, mode: str, columns: torch.Tensor, n_nonfinite: int) -> None:
        self.pending[mode].append((columns, n_nonfinite))

    def pop(self, mode: str) -> tuple[torch.Tensor, float]:
        """The pooled `(N_local, 4)` columns and the summed non-finite-weight count of `mode`; clears them."""
        items = self.pending[mode]
        local = torch.cat([c for c, _ in items], dim=0)
        n_bad = float(sum(b for _, b in items))
        items.clear()
        return local, n_bad


def shift_metrics(rows: torch.Tensor, high_divergence_threshold: float = DEFAULT_HIGH_DIVERGENCE_THRESHOLD,
                  measure: str = "js") -> dict[str, float]:
    """The `shift/*` metrics of one batch: `diagnostics.shift_stats.shift_stats` of its token columns.

    `rows`: `(N, 4)` = [D, H_base, H_policy, weight] of the counted tokens; `measure` (the D measure's
    name) prefixes the divergence keys (`js_mean`, `frac_js_gt_0.1`, ...; docs/vocabulary.md). NaN when undefined.
    """
    return shift_stats(rows[:, 0], measure=measure, entropy_base=rows[:, 1], entropy_policy=rows[:, 2],
                       weights=rows[:, 3], high_divergence_threshold=high_divergence_threshold)


__all__ = ["COLUMNS", "ShiftLog", "gather_valid", "shift_metrics", "token_columns"]
