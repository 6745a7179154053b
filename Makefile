# Two commands on a fresh clone: `make train` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The tested torch release. Installed first and by exact version: an unpinned torch pulls
# gigabytes of CUDA wheels onto CPU machines.
TORCH  := torch==2.13.0

.PHONY: install train test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

# The embedded default: a small GPT on the Python standard library's own source, about a minute on 2 CPU cores.
train: install
	$(BIN)/trainer train $(ARGS)

test: install
	$(BIN)/pytest -q $(ARGS)

# trainer's step against a hand-written loop on the same model, data and device.
bench: install
	$(BIN)/trainer bench $(ARGS)

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
