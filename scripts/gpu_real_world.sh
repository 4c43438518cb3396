#!/usr/bin/env bash
# The real world on one GPU in bf16 (~10-15 min, an estimate: this script has NOT been run yet, no GPU was
# lent while it was written). Records base vs trained GSM8K accuracy, the step-time ratio of weighting
# `none` vs JS weighting, the shift sparsity and the card into OUT/gpu_results.{json,md}.
#
#   bash scripts/gpu_real_world.sh                   # OUT = outputs/gpu-real
#   bash scripts/gpu_real_world.sh OUT --grpo-steps 20 --eval-problems 50    # extra flags go to the demo
#
# Needs: the project installed with a CUDA torch (`make setup` with TORCH_SPEC for your CUDA, or
# `pip install -e .`), and the real-world packages (scripts/setup_env.sh installs them; a machine without
# PyPI access needs them installed beforehand). What runs: `sparse-rlvr demo --world real --gpu`
# (train/real_demo.py GPU preset: 40 GRPO steps x 16 prompts x 8 completions, 320 new tokens, bf16;
# mean@8 on all 100 GSM8K test problems; shift on 100 problems x 2 policy samples; cross-sampling on
# 100 problems x 4 samples at JS > 0.02 / 0.05 / 0.1 with the random control).
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
"$PY" -m train.cli demo --world real --gpu --real-dir "$OUT/real-world" --output-dir "$OUT/demo" "$@" 2>&1 | tee "$OUT/demo.log"
end=$(date +%s)
"$PY" - "$OUT" "$((end - start))" <<'PYEOF'
import json, sys
from pathlib import Path
out, wall = Path(sys.argv[1]), int(sys.argv[2])
s = json.loads((out / "demo" / "summary.json").read_text())
steps = s["grpo_step_seconds"]
res = {"card": (out / "card.txt").read_text().strip(), "wall_seconds": wall, "k": s["k"],
       "accuracy": s["accuracy"], "pass_at_k": s["pass_at_k"], "by_template_split": s["by_template_split"],
       "step_seconds": steps, "step_time_ratio_js_vs_none": (steps["grpo-js"] / steps["grpo-none"]
                                                             if steps.get("grpo-js") and steps.get("grpo-none") else None),
       "sparsity": s["sparsity"], "cross": s["cross"], "reward_statuses": s["reward_statuses"], "config": s["config"],
       "model": s["model"]}
(out / "gpu_results.json").write_text(json.dumps(res, indent=2) + "\n")
md = [f"GPU run: {res['card']}, {wall / 60:.1f} min wall. {s['model']}.",
      f"mean@{s['k']}: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in s["accuracy"].items()),
      f"step time JS-weighted / none: {res['step_time_ratio_js_vs_none']}",
      "JS > 0.1 share: " + ", ".join(f"{k} {v.get('frac_js_gt_0.1')}" for k, v in s["sparsity"].items())]
(out / "gpu_results.md").write_text("\n".join(md) + "\n\n" + (out / "demo" / "report.md").read_text())
print("\n".join(md))
PYEOF
