# longdna — set-up, tests and the demo. Every target sets up .venv/ itself (see DESIGN §9).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.longdna-installed
TORCH_CPU := torch==2.13.0
TRITON_CPU := triton==3.9.0
# Tests run the Triton kernels through the interpreter on CPU; pytest sets it too (tests/conftest.py).
export TRITON_INTERPRET ?= 1

.PHONY: install test test-fast demo demo-shards bench clean

install: $(STAMP)

# A GPU build of torch already on the system is kept (venv with system site-packages); otherwise the
# CPU wheel torch==2.13.0 is installed first so that no dependency can pull the CUDA build.
$(STAMP): pyproject.toml constraints.txt
	@set -e; \
	if $(PYTHON) -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then \
	  echo "make install: using the system's GPU build of torch"; \
	  [ -x $(PY) ] || $(PYTHON) -m venv --system-site-packages $(VENV); \
	  $(PY) -m pip install -q -c constraints.txt -e '.[test]'; \
	else \
	  [ -x $(PY) ] || $(PYTHON) -m venv $(VENV); \
	  $(PY) -m pip install -q --upgrade pip >/dev/null; \
	  $(PY) -m pip install -q $(TORCH_CPU); \
	  $(PY) -m pip install -q -c constraints.txt $(TRITON_CPU) -e '.[test]'; \
	fi
	@$(PY) -c "import torch, deepspeed, triton, webdataset, pyfaidx; print('make install: torch', torch.__version__, '| deepspeed', deepspeed.__version__, '| triton', triton.__version__)"
	@touch $(STAMP)

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

# The demo's data step, reusable by later steps: shards under $(DEMO_DATA)/shards of the real GRCh38 sample embedded
# in the repository (data/sample, offline), of GENOME=path.fa (BED= optional), or with GENOME=hg38 of hg38 chr22
# downloaded from UCSC (checksum-verified, cached under cache/).
DEMO_DATA ?= data/demo
demo-shards: install
	$(PY) -m data_prep demo-shards --out $(DEMO_DATA) $(if $(GENOME),--fasta $(GENOME)) $(if $(BED),--bed $(BED))

# The main job end to end (DESIGN §9): shards, pretraining on DEMO_PROCS CPU processes through the deepspeed
# launcher (a fresh run each time), export, held-out perplexity, and the loss plot.
DEMO_RUN ?= runs/demo
DEMO_PROCS ?= 2
demo: demo-shards
	$(PY) -m data_prep inspect $(DEMO_DATA)/shards
	rm -rf $(DEMO_RUN)
	$(VENV)/bin/deepspeed --num_gpus $(DEMO_PROCS) --master_port $$($(PY) -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') \
	  pretrain/main.py --config configs/demo_cpu.yaml data.path=$(DEMO_DATA)/shards run.out_dir=$(dir $(DEMO_RUN)) run.name=$(notdir $(DEMO_RUN))
	$(PY) -m pretrain.export $(DEMO_RUN) --out $(DEMO_RUN)/export
	$(PY) -m pretrain.evaluate $(DEMO_RUN)/export --data $(DEMO_DATA)/shards --seq-lens 1024 --out $(DEMO_RUN)/eval.json --fail-above 4
	$(PY) -m pretrain.plot $(DEMO_RUN)
	@echo "make demo: done. Loss plot: $(DEMO_RUN)/loss.png; held-out perplexity: $(DEMO_RUN)/eval.json"
	@echo "TensorBoard logs: $(DEMO_RUN)/tb   (view them with: $(VENV)/bin/tensorboard --logdir $(DEMO_RUN)/tb)"

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
