# Two commands on a fresh clone: `make train` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The tested torch release. Installed first and by exact version: an unpinned torch pulls
# gigabytes of CUDA wheels onto CPU machines.
TORCH  := torch==2.13.0

.PHONY: install train test test-fast bench bench-startup docs clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

# The embedded default: a small GPT on the Python standard library's own source, about a minute on 2 CPU cores.
train: install
	$(BIN)/trainer train $(ARGS)

# Every tier (CI runs this). test-fast: the unit tier alone, under a minute.
test: install
	$(BIN)/pytest -q $(ARGS)

test-fast: install
	$(BIN)/pytest -q -m unit $(ARGS)

# trainer's loop against a hand-written loop, and clipping's cost: the default GPT with bf16 autocast
# and norm clipping, at a batch (4 x 64 tokens) that takes under two minutes on 2 CPU cores.
BENCH := --steps 10 --repeats 9 amp=bf16 data.batch_size=4 data.seq_len=64
bench: install
	$(BIN)/trainer bench $(or $(ARGS),$(BENCH))

# --help, config errors and a one-step run, each a whole process (median of 7); about two minutes.
bench-startup: install
	$(BIN)/python benchmarks/startup.py $(ARGS)

# The README's key table, rendered from the schema (trainer/config.py) and conf/.
docs: install
	$(BIN)/python -m trainer.keytable

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
