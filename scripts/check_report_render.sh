#!/usr/bin/env bash
# Render a shift report.html in headless Chromium (offline) and save a screenshot to look at.
#
#   bash scripts/check_report_render.sh                      # builds a tiny report first, then renders it
#   bash scripts/check_report_render.sh out/report.html shot.png
#
# Not part of CI (needs Debian's `chromium`; installs it with apt-get if missing and allowed).
# The report must render with networking off: the flags below disable every background fetch, and
# the report itself has no URLs (tests/diagnostics/test_report.py checks that).
set -euo pipefail
cd "$(dirname "$0")/.."

REPORT="${1:-}"
SHOT="${2:-/tmp/sparse_rlvr_report.png}"

if [[ -z "$REPORT" ]]; then
  WORK="$(mktemp -d)"
  # a tiny base and a "policy" whose output head is perturbed, so the colours show something
  HF_HUB_OFFLINE=1 python - "$WORK" <<'EOF'
import sys, torch
from train.tiny_world import build_tokenizer, default_corpus, random_tiny_model
work = sys.argv[1]
tok = build_tokenizer(default_corpus(n=300))
for seed, name, scale in ((0, "base", 0.0), (0, "policy", 0.5)):
    m = random_tiny_model(tok, seed=seed, hidden_size=32, num_layers=2, num_heads=2)
    with torch.no_grad():
        m.model.embed_tokens.weight.mul_(25.0)  # sharper, more peaked distributions
        g = torch.Generator().manual_seed(1)
        m.model.embed_tokens.weight.add_(scale * 25.0 * torch.randn(m.model.embed_tokens.weight.shape, generator=g)
                                         * (torch.rand(m.model.embed_tokens.weight.shape[0], 1, generator=g) < 0.15))
    m.save_pretrained(f"{work}/{name}"); tok.save_pretrained(f"{work}/{name}")
EOF
  HF_HUB_OFFLINE=1 sparse-rlvr shift --base "$WORK/base" --policy "$WORK/policy" --dataset tiny --limit 3 \
    --generate-with policy --num-samples 2 --max-new-tokens 40 --output-dir "$WORK/out" --no-progress
  REPORT="$WORK/out/report.html"
fi

BROWSER="$(command -v chromium || command -v chromium-browser || true)"
if [[ -z "$BROWSER" ]]; then
  echo "chromium not found; installing Debian's chromium package" >&2
  apt-get install -y chromium >/dev/null
  BROWSER="$(command -v chromium)"
fi

"$BROWSER" --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$(mktemp -d)" \
  --screenshot="$SHOT" --window-size=1280,2000 "file://$(realpath "$REPORT")" 2>/dev/null
test -s "$SHOT"
echo "rendered $REPORT -> $SHOT ($(stat -c %s "$SHOT") bytes)"
