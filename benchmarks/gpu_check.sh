#!/usr/bin/env bash
# Every check that needs a GPU, in one run of about 8 minutes on one H100/H200 (`make gpu-check`).
#
# On the lent GPU machine there is no internet and no .venv: its python3 has torch (with CUDA),
# rich, tensorboard, transformers and pytest; hydra-core, omegaconf and antlr4 travel as wheels
# (`make gpu-wheels` puts them in .whl/, which the run carries). Logs go to $OUT (default gpu-check/).
#   1. the unit and integration tiers on the GPU (trainer.device=auto picks it): fp16 with its
#      GradScaler and bf16 autocast on CUDA, the no-host-sync test under set_sync_debug_mode("error");
#   2. torch.compile of the model on CUDA, against the eager losses;
#   3. with two GPUs or more, the many-process tests on NCCL (with one, they need a GPU per rank);
#   4. the benchmark: the default GPT in bf16 and fp16, and the tiny preset (per-step overhead,
#      aten ops per step = kernel launches).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu-check: no CUDA GPU here')" || exit 1
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(), torch.cuda.device_count(), 'GPU(s)')" \
    | tee "$OUT/device.txt"
status=0
"$PY" -m pytest -q -p no:cacheprovider -m "not slow" 2>&1 | tee "$OUT/tests.log" || status=1
"$PY" -m pytest -q -p no:cacheprovider -m slow -k compile tests/test_loop.py 2>&1 | tee -a "$OUT/tests.log" || status=1
if [ "$("$PY" -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
    "$PY" -m pytest -q -p no:cacheprovider tests/test_distributed.py 2>&1 | tee -a "$OUT/tests.log" || status=1
fi
for args in "--steps 30 --repeats 9 amp=bf16" "--steps 30 --repeats 9 amp=fp16" "--preset tiny"; do
    # shellcheck disable=SC2086
    "$PY" -m trainer bench $args 2>&1 | tee -a "$OUT/bench.log" || status=1
done
exit $status
