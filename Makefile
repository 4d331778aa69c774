# Two commands for a newcomer: `make demo` and `make test`. Both create .venv when missing.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# torch first and pinned to the build this machine keeps on disk; override for another machine,
# e.g. `make test TORCH_PKGS="torch torchvision"`
TORCH_PKGS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# test processes (pytest-xdist): the suite is mostly single-threaded, so 2 workers use both cores of a small CI machine
TEST_WORKERS ?= 2

.PHONY: setup test test-docs demo lint format docs clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PKGS)
	$(PY) -m pip install -q -e '.[all,dev]'
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS)

# every Python block of README.md and docs/*.md, the slow ones (<!-- test: slow -->) included
test-docs: setup
	$(PY) -m pytest -q -m "" tests/test_docs.py $(PYTEST_ARGS)

# ruff (configured in pyproject.toml): lint and check the formatting; `make format` fixes what it can
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# the docs site (mkdocs.yml) into site/, with strict link and anchor checks
docs: setup
	$(PY) -m mkdocs build --strict

demo: setup
	$(PY) -m timm_aconv.demo

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache site
