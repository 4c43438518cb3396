#!/usr/bin/env bash
# The real world on one GPU (an estimate of ~15-25 min: this script has NOT been run yet, no GPU was lent
# while it was written). SmolLM2-135M-Instruct (4-bit GGUF, de-quantized) learning reasoning-gym chain_sum:
# base vs GRPO vs divergence-weighted GRPO accuracy on the 200 held-out problems with 95% paired-bootstrap
# CIs, the GSM8K transfer report, shift sparsity, cross-sampling at the run's own JS quantiles with the
# random control, shift_probe/* across checkpoints, 3 training seeds; the step-time ratio JS / none and
# the card -> OUT/gpu_results.{json,md}.
#
#   bash scripts/gpu_real_world.sh                   # OUT = outputs/gpu-real
#   bash scripts/gpu_real_world.sh OUT --grpo-steps 50 --seeds 1   # extra flags go to the demo
#
# Needs: the project installed with a CUDA torch (`make setup` with TORCH_SPEC for your CUDA, or
# `pip install -e .`), and the real-world packages (scripts/setup_env.sh installs them; a machine without
# PyPI access needs them installed beforehand). What runs: `sparse-rlvr demo --world real --gpu --seeds 3`
# (train/real_demo.py GPU preset: 200 GRPO steps x 16 prompts x 16 completions of <= 16 new tokens in bf16
# weights; mean@16 on the 200 held-out problems; GSM8K transfer on 100 problems x 4; shift on 200 x 4;
# cross-sampling on 200 x 4 at the JS p90 / p95 / p99 of the run). The CPU path's bf16 rollout copy
# (train/rollout.py) is not used on a GPU (the policy is bf16 already); vLLM is not needed at this size.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/gpu-real}
shift || true
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=${WANDB_MODE:-offline} TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this script is for a GPU machine')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/card.txt"
"$PY" -m train.cli real-world setup --output-dir "$OUT/real-world"
start=$(date +%s)
"$PY" -m train.cli demo --world real --gpu --seeds 3 --real-dir "$OUT/real-world" --output-dir "$OUT/demo" "$@" 2>&1 | tee "$OUT/demo.log"
end=$(date +%s)
"$PY" - "$OUT" "$((end - start))" <<'PYEOF'
import json, sys
from pathlib import Path
out, wall = Path(sys.argv[1]), int(sys.argv[2])
s = json.loads((out / "demo" / "summary.json").read_text())
steps = s["grpo_step_seconds"]
k = s["k"]
res = {"card": (out / "card.txt").read_text().strip(), "wall_seconds": wall, "k": k, "seeds": s["seeds"],
       "accuracy": s["accuracy"], "js_vs_none": s["js_vs_none"], "seed_spread": s["seed_spread"],
       "transfer": s["transfer"], "step_seconds": steps,
       "step_time_ratio_js_vs_none": (steps["grpo-js"] / steps["grpo-none"]
                                      if steps.get("grpo-js") and steps.get("grpo-none") else None),
       "sparsity": s["sparsity"], "cross": s["cross"], "shift_probe": s["shift_probe"],
       "reward_statuses": s["reward_statuses"], "config": s["config"], "model": s["model"]}
(out / "gpu_results.json").write_text(json.dumps(res, indent=2) + "\n")
acc = s["accuracy"]
md = [f"GPU run: {res['card']}, {wall / 60:.1f} min wall. {s['model']}.",
      f"mean@{k} on {s['data']['eval']}: " + ", ".join(
          f"{n} {100 * a[f'mean@{k}']:.1f}%" + (f" (gain {100 * a['gain_vs_base']['mean']:+.1f} pts, 95% CI "
          f"[{100 * a['gain_vs_base']['ci_low']:+.1f}, {100 * a['gain_vs_base']['ci_high']:+.1f}])" if "gain_vs_base" in a else "")
          for n, a in acc.items()),
      f"step time JS-weighted / none: {res['step_time_ratio_js_vs_none']}",
      "JS > 0.1 share: " + ", ".join(f"{n} {v.get('frac_js_gt_0.1')}" for n, v in s["sparsity"].items())]
(out / "gpu_results.md").write_text("\n".join(md) + "\n\n" + (out / "demo" / "report.md").read_text())
print("\n".join(md))
PYEOF
