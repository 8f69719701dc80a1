# The README's two commands: `make demo` (the viewer on a demo slide with the bundled model, live
# saliency; headless: demo-output/) and `make test` (ruff, the import contracts, then the whole
# pytest suite). `make check-exact`: the engine's float64 exactness check.
# Both create .venv and install through constraints-ci.txt, so pip takes the CPU torch
# wheel instead of a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo check-exact lint test bench clean

$(STAMP): pyproject.toml constraints-ci.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints-ci.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m viewer.demo

check-exact: $(STAMP)
	$(PY) -m engine demo

lint: $(STAMP)
	$(VENV)/bin/ruff check engine viewer tests bench resources
	$(VENV)/bin/lint-imports --no-cache

test: lint
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/streaming.py --quick

clean:
	rm -rf $(VENV) build *.egg-info
