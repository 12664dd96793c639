#!/usr/bin/env bash
# The GPU check, in one short run: the CUDA learner tests, then the learner benchmarks at the
# `gpu` preset (learners/presets.py), each printing its own figures.
#
#   bash benchmarks/gpu_check.sh            # on a machine with CUDA (the GPU image: torch, no Kafka/Faust)
#   bash benchmarks/gpu_check.sh --dry-run  # the same steps on the CPU at the `cpu` preset, tiny sizes
#
# Installs nothing large. Wheels of small pure-Python needs the image lacks (pydantic-settings,
# structlog, ...) may be put in .whl/ beside the repo root; they are installed into /tmp/site.
# Figures: (a) block-local vs end-to-end tokens/s and peak memory, (b) group -> weights latency
# p50/p99, (d) ELBO bits per character; each benchmark prints its ratio against its own baseline
# run in the same process.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
step() { echo; echo "== $*"; }

step "environment"
"$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
# the learner must import without any Kafka client or Faust
import learners, learners.presets, learners.probe, learners.trajectory  # noqa: F401
print("learners import cleanly")
EOF

if [ $DRY = 1 ]; then
  PRESET=cpu; DEV=cpu
  MEM="--d 64 --heads 2 --blocks 2 --layers 2 --seq 64 --batch 8 --steps 2 --warmup 1"
  LAT="--preset cpu --groups 5"
  ELBO="--d 32 --heads 2 --blocks 2 --layers 1 --seq 32 --batch 8 --e2e-steps 4 --corpus-bytes 100000"
else
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: use --dry-run on a CPU')"
  PRESET=gpu; DEV=cuda
  MEM="--d 256 --heads 4 --blocks 4 --layers 4 --seq 128 --batch 64 --steps 20 --warmup 3"
  LAT="--preset gpu --groups 200"
  ELBO="--d 256 --heads 4 --blocks 4 --layers 4 --seq 128 --batch 64 --e2e-steps 2000 --lr 1e-3"
fi
echo "preset $PRESET on $DEV"

step "CUDA learner tests (skipped on a CPU)"
"$PY" -m pytest -q -p no:cacheprovider tests/learners/test_grammar.py -k cuda -rs

step "(a) block-local vs end-to-end: speed and memory"
"$PY" benchmarks/learner_memory_throughput.py $MEM

step "(b) group -> weights latency"
"$PY" benchmarks/learner_latency.py $LAT

step "(d) bits per character"
"$PY" benchmarks/learner_elbo.py $ELBO

echo; echo "gpu_check: done ($PRESET preset on $DEV)"
