#!/usr/bin/env bash
# Create a separate environment with GenJAX 0.10.3 (which needs jax 0.5) plus this project, so
# that benchmarks/bench_genjax.py can time ppl, GenJAX and hand-written JAX in one process.
set -euo pipefail
VENV=${1:-/tmp/gjvenv}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q "genjax==0.10.3" "jax==0.5.3" "jaxlib==0.5.3" "numpyro==0.18.0" optax scikit-learn
"$VENV/bin/pip" install -q --no-deps -e "$ROOT"
echo "run: cd $ROOT && $VENV/bin/python -m benchmarks.bench_genjax"
