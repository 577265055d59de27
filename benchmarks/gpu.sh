#!/usr/bin/env bash
# GPU benchmark: paper ResNet-18, 224x224, T=6, batch 32 -- ours (Triton kernels, fused op)
# against SpikingJelly 2.0's fastest LIF implementations available on the machine, plus the ANN
# at batch B*T. Step time (median of 10) and peak CUDA memory per contender, each in its own
# process; about 2-4 minutes on one H100. Results: benchmarks/results/gpu.{json,md}.
#
#   bash benchmarks/gpu.sh                 # uses python3 (or $PYTHON) with a CUDA build of torch
#   PYTHON=.venv/bin/python bash benchmarks/gpu.sh --steps 20
#
# Needs: a CUDA torch (not installed here: a CPU wheel would replace it) and triton (ships with
# CUDA torch wheels). Installs with --no-deps from PyPI, when reachable, whatever else is missing:
# spikebridge's own light dependencies and the SpikingJelly peer (+ loguru, which it imports).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

"$PY" - <<'EOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"gpu.sh: torch {torch.__version__} sees no CUDA device; run this on a GPU machine")
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
EOF

need() {  # need MODULE PIP_SPEC...: pip install --no-deps when MODULE does not import
  local module="$1"; shift
  if ! "$PY" -c "import $module" >/dev/null 2>&1; then
    echo "gpu.sh: installing $* (--no-deps)"
    "$PY" -m pip install -q --no-deps "$@" || echo "gpu.sh: could not install $* (offline?); continuing"
  fi
}
need triton triton
need numpy numpy
need safetensors safetensors
need yaml pyyaml
need tqdm tqdm
need loguru loguru
need spikingjelly "spikingjelly==2.0.0"

"$PY" -c "import spikebridge" || { echo "gpu.sh: spikebridge does not import"; exit 1; }
exec "$PY" benchmarks/gpu_bench.py --batch 32 --T 6 --size 224 "$@"
