#!/usr/bin/env bash
# The GPU-scale benchmark run, for a lent device machine (one command, under 8 minutes on one GPU).
# Each benchmark times headstart against its own baseline in one process and prints ratios; the
# figures go into the closing note and docs/. Run from the repository root after
# `pip install -e ".[test]"`:   bash benchmarks/device_check.sh [OUT_DIR]
# Not yet run on a GPU: no device was lent to the sessions that wrote it.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-/tmp/device_check}}"
mkdir -p "$out"
python -c "import tensorflow as tf; print('devices:', tf.config.list_physical_devices())" 2>&1 | tail -1 | tee "$out/devices.txt"
run() {  # name, time limit in seconds, command...
  local name=$1 limit=$2; shift 2
  echo "== $name"
  timeout "$limit" "$@" > "$out/$name.txt" 2>&1; echo "rc=$?" >> "$out/$name.txt"
  tail -n 15 "$out/$name.txt"
}
run extract_throughput 100 python benchmarks/extract_throughput.py --images 2048 --batch-size 128 --repeats 3
run head_speed         80  python benchmarks/head_speed.py --images 1024
run finetune_overhead  100 python benchmarks/finetune_overhead.py --images 2048 --batch-size 64
run scaling            90  python benchmarks/scaling.py --images 2048
run sweep_speed        60  python benchmarks/sweep_speed.py --trials 64
run diagnose_speed     50  python benchmarks/diagnose_speed.py --out "$out/diagnose" --rows 100000
run recipe             60  python benchmarks/recipe.py --out "$out/recipe" --datasets digits  # ../shared does not travel
run top_blocks         90  python benchmarks/top_blocks.py --datasets digits --skip-accuracy --rounds 2 --out "$out/top_blocks"
