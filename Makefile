# Two commands do everything on a fresh machine with Python 3.11:
#   make book   -> .venv, every notebook executed (quick profile), HTML in _build/html
#   make test   -> .venv, pytest (package, notebooks, book checks)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
REQS   := requirements.txt requirements-dev.txt constraints-ci.txt pyproject.toml

.PHONY: venv test test-fast book bench clean notebooks-sync toc browser book-screenshots stored-results

venv: $(STAMP)

$(STAMP): $(REQS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt -c constraints-ci.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	-$(PY) -m sapa.build   # the C++ CPU kernel, built once here (a failure only means the slower fallback)
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) -m sapa.bench

clean:
	rm -rf _build .pytest_cache

# ---- the book (Jupyter Book 1.x) ------------------------------------------------------
# `make book`: write _toc.yml from the chapters that exist, execute every notebook (quick
# profile unless SAPA_PROFILE is set), build the HTML into _build/html with every Sphinx
# warning turned into an error. MathJax is copied from the django-static-mathjax package.
SAPA_PROFILE ?= quick
export SAPA_PROFILE
JB := $(VENV)/bin/jupyter-book

toc: $(STAMP)
	$(PY) book/make_toc.py

book: $(STAMP)
	$(PY) book/make_toc.py
	$(JB) build . --all -W -n --keep-going --builder html

# Chapters are written as jupytext MyST Markdown (notebooks/NN_name.md), each paired with its
# .ipynb (kept without outputs for Colab and nbmake). After editing a .md, rewrite its .ipynb:
notebooks-sync: $(STAMP)
	$(VENV)/bin/jupytext --sync notebooks/*.md

# Headless Chromium (Debian's package) for the browser test of the rendered book.
CHROMIUM ?= /usr/bin/chromium
browser:
	test -x $(CHROMIUM) || { apt-get update && apt-get install -y --no-install-recommends chromium; }

# The browser checks of every page, and screenshots at 1280 and 400 px in _build/screenshots
# (needs `make book` first).
book-screenshots: $(STAMP) browser
	SAPA_BOOK_PREBUILT=1 $(PY) -m pytest -q tests/test_book.py -k "browser or screenshots"

# The book's stored results (book/results: main.csv, mechanism.csv, SAPA-D's rows in main.csv,
# table6.csv, then statistics.csv: the weak-guide task of issue 27), in that order, each with the
# command `python -m sapa.lab.sweep --print-commands` prints. Every command is append-only and
# resumable: rerun this target to continue after an interruption (Ctrl-C records the invocation in
# the JSON beside the CSV); finished stages end at once. Status 2026-12-07 (session 5): main and
# mechanism complete, SAPA-D seeds 0-1 stored (seed 2 running), table6 started (70 runs of about
# 5-6 min each on an idle core: about 3 h on two workers), statistics not started (its --estimate:
# about 2.1 h on two workers).
stored-results: $(STAMP)
	for name in main mechanism main+sapa-d table6 statistics; do \
	  cmd=$$($(PY) -m sapa.lab.sweep --print-commands | sed -n "s/^$$name: python //p"); \
	  echo "$$name: python $$cmd"; $(PY) $$cmd || exit $$?; \
	done
