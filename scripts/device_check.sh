#!/usr/bin/env bash
# The GPU check in one go (`make device-check`): install what is missing, run the tests marked
# `cuda`, print `bench train` on the device, train the CT and MRI priors from the shipped weights
# for DEVICE_CHECK_MINUTES in all (default 5, so that the whole check fits one 10-minute command),
# and write float16 EMA weights, summary.json, logs.tar.gz and this log to $OUT (default
# device_check_out). See src/scoreinv/bench/device_check.py for every setting.
#
# Python: $PYTHON if set; else python3 when its torch sees a CUDA device (a GPU machine's own
# image); else .venv/bin/python (made by `make install` when missing). Missing packages come
# from .whl/*.whl when that folder exists (machines without network), else from PyPI.
#
# CPU dry run (what tests/test_device_check.py runs):
#   DEVICE_CHECK_MINUTES=0.1 DEVICE_CHECK_BATCH=2 DEVICE_CHECK_BENCH_GROUPS= bash scripts/device_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-device_check_out}"
mkdir -p "$OUT"
exec > >(tee "$OUT/device_check.log") 2>&1
stamp() { echo "# $(date '+%H:%M:%S') $*"; }

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if command -v python3 >/dev/null && python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    PY=python3
  else
    [ -x .venv/bin/python ] || make install
    PY=.venv/bin/python
  fi
fi
stamp "python: $PY ($("$PY" --version 2>&1))"

NEED="omegaconf pydicom nibabel nilearn pytest"
missing=$("$PY" - $NEED <<'EOF'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
  stamp "installing: $missing"
  if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/scoreinv_site .whl/*.whl
    export PYTHONPATH="/tmp/scoreinv_site${PYTHONPATH:+:$PYTHONPATH}"
  else
    "$PY" -m pip install -q $missing
  fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true

stamp "tests marked cuda"
tests_rc=0
"$PY" -m pytest tests/test_cuda.py -m cuda -q -p no:cacheprovider -o addopts="" -rs || tests_rc=$?

stamp "bench train and training"
"$PY" -m scoreinv.bench.device_check --out "$OUT"
stamp "done (cuda tests exit status $tests_rc)"
exit "$tests_rc"
