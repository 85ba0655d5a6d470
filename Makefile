# sacvit — two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
FMNIST ?= /usr/share/datasets/fashion-mnist

.PHONY: help venv test demo bench clean constraints

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-6s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)  ## create .venv and install sacvit with its test extras, at the tested versions (constraints.txt)

constraints: $(STAMP)  ## pin what .venv holds now as the tested versions (after upgrading and a green make test)
	{ echo "# The versions the sacvit test suite was run with (pip install -c constraints.txt -e '.[test]')."; \
	  echo "# pyproject.toml states the supported ranges; regenerate with 'make constraints'."; \
	  $(PY) -m pip freeze --exclude-editable | grep -v '^#'; } > constraints.txt

test: $(STAMP)  ## run the test suite
	$(PY) -m pytest

fmnist:  ## install Debian's dataset-fashion-mnist when missing (root) or say how
	@if [ ! -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist' (Debian) or pass --data-dir"; exit 1; fi; fi

demo: $(STAMP) fmnist  ## train SAC-ViT + baseline on Cluttered Fashion-MNIST, sweep η, plot (runs/demo/)
	$(VENV)/bin/sacvit demo --out runs/demo --data-dir $(FMNIST)

bench: $(STAMP)  ## wall-clock benchmark: DeiT, SAC-ViT, ToMe, EViT on one backbone (runs/bench/)
	$(VENV)/bin/sacvit bench --out runs/bench

clean:  ## remove the virtualenv and run outputs
	rm -rf $(VENV) runs
