#!/usr/bin/env bash
# The GPU run (bench/gpu.py has the details): on one H100/H200, in under 8 minutes, training-step and
# sampling throughput of TarFlowLM against GPT-2 in bf16, eager and compiled, with peak memory; it checks its own
# outputs (finite losses, z → u → z, ids in range) before timing, and writes gpu.json after every section.
#
#   bash bench/gpu.sh                  # GPU: writes $OUT/gpu.json if $OUT is set, else bench/results/gpu.json
#   bash bench/gpu.sh --dry DIR        # tiny sizes on the CPU in seconds, into DIR (what the test runs)
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--dry" ]]; then
    exec python -m bench.gpu --dry --device cpu --output_dir "${2:?--dry needs an output folder}"
fi
output_dir="${1:-${OUT:-bench/results}}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
# The deadline inside gpu.py (450 s) skips whole sections; the timeout is the backstop for a hung one.
timeout 470 python -m bench.gpu --output_dir "$output_dir" --budget_seconds 450
echo "-> $output_dir/gpu.json"
