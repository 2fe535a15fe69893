#!/usr/bin/env bash
# `gradwell train` (the default job) end to end: an older commit against this checkout, one after another.
#
#     bash benchmarks/bench_train_e2e.sh [BEFORE_COMMIT]     # default 26134f8, the commit before issue 16
#
# Runs, in this order: BEFORE, this checkout with an empty MNIST-1D cache (it generates the 40,000
# samples and caches them), this checkout again (cached), BEFORE again, this checkout once more. BEFORE
# runs from a git worktree through PYTHONPATH, in the same environment. Each run is
# `python -m gradwell train --json` with its output folder in a temporary directory; the table gives
# the wall time, the training time `fit` reported, and the test accuracy and loss.
set -euo pipefail
before=${1:-26134f8}
top=$(git rev-parse --show-toplevel)
scratch=$(mktemp -d)
trap 'git -C "$top" worktree remove --force "$scratch/before" >/dev/null 2>&1 || true; rm -rf "$scratch"' EXIT
git -C "$top" worktree add --detach -f "$scratch/before" "$before" >/dev/null 2>&1
export GRADWELL_DATA="$scratch/data"
cd "$scratch"
run() {
    local label=$1 source=$2 started ended
    started=$(date +%s.%N)
    PYTHONPATH="$source" python -m gradwell train --set "output.dir=$scratch/runs" --set output.progress=false \
        --json > "$scratch/$label.json"
    ended=$(date +%s.%N)
    python - "$label" "$scratch/$label.json" "$(echo "$ended - $started" | bc)" <<'PY'
import json, sys
label, path, wall = sys.argv[1], sys.argv[2], float(sys.argv[3])
result = json.load(open(path))
print(f"{label:32s} wall {wall:6.1f} s  training {result['seconds']:6.1f} s  "
      f"test accuracy {result['test']['accuracy']:.4f}  loss {result['test']['loss']:.4f}")
PY
}
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $(date -u)"
run "$before (before)" "$scratch/before/src"
run "HEAD, MNIST-1D cache cold" "$top/src"
run "HEAD, cached" "$top/src"
run "$before again" "$scratch/before/src"
run "HEAD, cached again" "$top/src"
