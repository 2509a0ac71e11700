# Two commands do everything on a fresh machine with Python 3.11:
#   make book   -> .venv, every notebook executed (quick profile), HTML in _build/html
#   make test   -> .venv, pytest (package, notebooks, book checks)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
REQS   := requirements.txt requirements-dev.txt constraints-ci.txt pyproject.toml

.PHONY: venv test test-fast book bench clean

venv: $(STAMP)

$(STAMP): $(REQS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt -c constraints-ci.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) -m sapa.bench

clean:
	rm -rf _build .pytest_cache
