# Two commands on a fresh clone: `make train` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The tested torch release. Installed first and by exact version: an unpinned torch pulls
# gigabytes of CUDA wheels onto CPU machines.
TORCH  := torch==2.13.0

.PHONY: install train test test-fast bench bench-startup stability gpu-check gpu-wheels docs clean

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
# and norm clipping, at a batch (4 x 64 tokens) that takes under two minutes on 2 CPU cores; then
# the tiny preset, where the loop's own per-step cost shows (under a minute), in 50-step blocks and in
# 300-step blocks: a long run's steady state, where log steps judge train/spike_score's full window and
# the default checkpoint.every=100 saves twice a block (the raw loop saves nothing; add checkpoint.every=0).
BENCH := --steps 10 --repeats 9 amp=bf16 data.batch_size=4 data.seq_len=64
bench: install
ifdef ARGS
	$(BIN)/trainer bench $(ARGS)
else
	$(BIN)/trainer bench $(BENCH)
	$(BIN)/trainer bench --preset tiny
	$(BIN)/trainer bench --preset tiny --steps 300 --repeats 6
endif

# --help, config errors and a one-step run, each a whole process (median of 7); about two minutes.
bench-startup: install
	$(BIN)/python benchmarks/startup.py $(ARGS)

# The instability benchmark (recipes/stability.md): 84 runs of the default GPT, about 50 minutes on
# 2 CPU cores, then one row per policy. OUT=DIR keeps the runs elsewhere. A sweep whose jobs fail
# (the spike guard gives up on a diverged run: exit code 1) still goes on to the report ("-").
OUT ?= multirun/stability
stability: install
	-$(BIN)/trainer train -m +recipes=stability hydra.sweep.dir=$(OUT)/policies
	-$(BIN)/trainer train -m +recipes=stability clip=norm clip.controller=true guard.skip=false hydra.sweep.dir=$(OUT)/controller
	-$(BIN)/trainer train -m +recipes=stability clip=norm guard.spike=true guard.skip=false hydra.sweep.dir=$(OUT)/guard
	$(BIN)/trainer report --stability $(OUT)

# Every check that needs a GPU (see "Performance": the GPU plan). On the lent GPU machine, which has
# torch but no internet: `make gpu-wheels` here first, then carry .whl/ and run `make gpu-check` there.
gpu-check:
	bash benchmarks/gpu_check.sh

# What the GPU machine's python3 (3.12, with torch) lacks, as pure-Python wheels it installs offline
# (the versions this checkout's .venv tests with; antlr4 is an sdist on PyPI, so pip builds its wheel).
GPU_WHEELS := hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3
gpu-wheels:
	$(PYTHON) -m pip wheel --quiet --no-deps -w .whl $(GPU_WHEELS)

# The README's key table, rendered from the schema (trainer/config.py) and conf/.
docs: install
	$(BIN)/python -m trainer.keytable

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
