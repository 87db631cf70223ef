# medseg-nb: `make demo` trains and evaluates on synthetic data; `make test` runs every check and test.
# Both create or refresh the virtual environment .venv from requirements-lock.txt first.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0

.PHONY: demo test env readme lock clean-venv

$(VENV)/.installed: requirements-lock.txt settings.ini setup.py
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] >= (3, 11), "medseg-nb needs Python 3.11 or newer, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: a looser request would pull a multi-gigabyte CUDA build
	$(BIN)/python -m pip install --quiet $(TORCH_PIN)
	$(BIN)/python -m pip install --quiet -r requirements-lock.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

env: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/medseg-nb train --dataset synthetic --iterations 600 --samples-per-image 16 --synthetic-train 12 \
		--synthetic-test 4 --output runs/demo --resume
	@echo "run folder: runs/demo (config.json, last.pt, best.pt, log.csv, metrics.json, per_image.csv, predictions/)"

test: $(VENV)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" bash tests/run_all.sh

readme: $(VENV)/.installed
	$(BIN)/python tests/make_readme.py

lock: $(VENV)/.installed
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^medseg-nb' > requirements-lock.txt

clean-venv:
	rm -rf $(VENV)
