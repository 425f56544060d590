#!/usr/bin/env bash
# The prepared GPU check (about 5 minutes on one GPU; not part of the tests):
#   1. td3.py's compiled update, and the compiled one replayed as CUDA graphs (--cudagraphs), equal the eager update;
#   2. td3.py's aggregate expert-steps/s (an environment step and a TD3 update per context, hidden 256 256, batch 256)
#      for K = 1, 8, 32 and 128 contexts trained together: eager, --compile and --cudagraphs, beside K independent
#      CleanRL-style learners for K <= 8.
# Usage: bash benchmarks/gpu.sh        (PYTHON=... picks the interpreter; it needs torch with CUDA and requirements.txt)
# On a machine without a CUDA device it refuses in one line and exits 2, as every stage does on bad input.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if ! $PY -c "import torch" 2>/dev/null; then
  echo "error: benchmarks/gpu.sh: $PY cannot import torch; install requirements.txt (or give PYTHON=.venv/bin/python)" >&2
  exit 2
fi
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: benchmarks/gpu.sh: no CUDA device (torch.cuda.is_available() is false); run it on a machine with a GPU" >&2
  exit 2
fi
T0=$(date +%s)
$PY -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())"
$PY benchmarks/td3_throughput.py --check-only --device cuda
timeout 420 $PY benchmarks/td3_throughput.py --device cuda --hidden 256 --ks 1 8 32 128 --modes env+update \
  --steps 200 --warmup 20 --skip-independent-above 8
echo "benchmarks/gpu.sh: done in $(( $(date +%s) - T0 )) s"
