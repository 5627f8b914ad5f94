# The two README commands: `make quickstart` (install + main job on its embedded default) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
CONSTRAINTS := requirements/constraints.txt

.PHONY: install quickstart test lint bench freeze clean

$(BIN)/omnilv: pyproject.toml $(CONSTRAINTS)
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	# CPU build of torch first, so nothing below pulls a multi-GB CUDA build.
	$(PIP) install -q -c $(CONSTRAINTS) torch==2.13.0
	# DeepSpeed ships an sdist; build it against the torch above, with no CUDA ops.
	DS_BUILD_OPS=0 $(PIP) install -q --no-build-isolation -c $(CONSTRAINTS) deepspeed
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[test,text]'
	$(PIP) install -q -e examples/plugin-template
	touch $@

install: $(BIN)/omnilv

quickstart: install
	$(BIN)/omnilv quickstart

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python bench/degradations.py
	$(BIN)/python bench/corpus_build.py
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/ingest.py

freeze:
	$(PIP) freeze --exclude-editable | grep -v '^omnilv' > /tmp/constraints.txt && mv /tmp/constraints.txt $(CONSTRAINTS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
