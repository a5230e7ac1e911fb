#!/usr/bin/env bash
# GPU check (issue 9), for a machine with an NVIDIA GPU (CUDA 12 driver); meant to finish in < 8 minutes
# after the install:
#   1. install '.[cuda12,dev]' into a venv (jax with the CUDA 12 plugin; torch as the parity reference);
#   2. the golden and parity tests on the GPU in fp32 (JAX_PLATFORMS=cuda, full-precision matmuls: the
#      tests' own tolerances, logits <= 1e-4);
#   3. bf16 greedy ids of the golden cases on the GPU equal those on the CPU backend;
#   4. bench/gpu_bench.py: a 7B-shaped random model in bf16 at 256 and 2048 frames, ratio 16: prefill
#      time, model FLOPs utilisation, decode ms/token, peak device memory (a table).
#
#   bash bench/gpu_check.sh                    # venv .venv-gpu (VENV=...; PYTHON=python3.12 to build it)
#   bash bench/gpu_check.sh --no-install       # use $PYTHON (default python3) as it is, repo on PYTHONPATH
#   ATTENTIONS="xla cudnn" bash bench/gpu_check.sh   # bench each attention backend (default: xla)
# Environment: GOLDEN (golden outputs, default ../shared/golden), OUT (where the bench's JSON lines go,
# default runs/gpu_check).
set -euo pipefail
cd "$(dirname "$0")/.."

GOLDEN=${GOLDEN:-../shared/golden}
OUT=${OUT:-runs/gpu_check}
ATTENTIONS=${ATTENTIONS:-xla}
mkdir -p "$OUT"
start=$SECONDS
step() { echo; echo "== $1 (at $((SECONDS - start)) s)"; }

if [ "${1:-}" = "--no-install" ]; then
  PY=${PYTHON:-python3}
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  VENV=${VENV:-.venv-gpu}
  step "install '.[cuda12,dev]' into $VENV"
  [ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
  "$VENV/bin/pip" install -q -e '.[cuda12,dev]'
  PY=$VENV/bin/python
  start=$SECONDS  # the < 8 minutes are counted from here
fi

"$PY" - <<'EOF'
import jax
devs = jax.devices()
print(f"jax {jax.__version__}: {devs}")
if devs[0].platform != "gpu":
    raise SystemExit("no GPU visible to jax (is the CUDA plugin installed and a driver present?)")
EOF

failed=0
step "golden + parity tests on the GPU, fp32"
export VXL_GOLDEN_DIR="$GOLDEN"
JAX_PLATFORMS=cuda JAX_DEFAULT_MATMUL_PRECISION=highest \
  "$PY" -m pytest -q tests/test_golden_*.py tests/test_parity_*.py || failed=1

step "bf16 greedy ids: GPU vs CPU backend"
"$PY" bench/gpu_bench.py --bf16-ids "$GOLDEN" || failed=1

for attention in $ATTENTIONS; do
  step "7B-shaped bf16 bench, attention=$attention"
  "$PY" bench/gpu_bench.py --attention "$attention" --json "$OUT/gpu_bench_$attention.jsonl" || failed=1
done

echo
echo "gpu_check: $((SECONDS - start)) s after the install; $([ "$failed" -eq 0 ] && echo "all steps passed" || echo "SOME STEPS FAILED")"
exit "$failed"
