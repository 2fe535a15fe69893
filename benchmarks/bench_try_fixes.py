"""`gradwell diagnose --try-fixes` end to end on the literature's 30-layer ReLU net with Glorot init.

    python benchmarks/bench_try_fixes.py [--seeds 5] [--workers N]

Runs the command a user runs, in a fresh process, and times it from start to exit (imports, the
scenario's probe, 3 configs x `seeds` runs on the worker processes, the figure and the files):

    gradwell diagnose --scenario relu-glorot-30 --try-fixes --seeds 5 --json --out DIR

then prints the wall time, the runner's own time, each run's path and each fix's paired
difference in validation accuracy with its interval and verdict. Issue 17's target: under 3
minutes on 2 cores with 5 seeds per arm.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, help="worker processes (default: the command's, one per core)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "tried"
        command = [
            "gradwell",
            "diagnose",
            "--scenario",
            "relu-glorot-30",
            "--try-fixes",
            "--seeds",
            str(args.seeds),
        ]
        command += [] if args.workers is None else ["--workers", str(args.workers)]
        command += ["--json", "--out", str(out)]
        started = time.perf_counter()
        done = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}
        )
        wall = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr}")
        shown = json.loads(done.stdout)
        paths = json.loads((out / "results.json").read_text())["paths"]
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores")
    print(f"command: {' '.join(command[:-2])}")
    print(f"wall {wall:.1f} s (the runner: {shown['seconds']:.1f} s); target < 180 s")
    for label, path in paths.items():
        print(f"  {label}: {path}")
    for trial in shown["trials"]:
        accuracy = trial["val_accuracy"]
        low, high = accuracy["ci"]
        difference = f"{accuracy['mean_difference']:+.3f} [{low:+.3f}, {high:+.3f}]"
        print(f"  {trial['label']}: val_accuracy {difference} {trial['verdict']}")
    print(f"  best: {shown['best']}")


def cpu_name() -> str:
    """The CPU's model name (Linux), else the platform's machine type."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.partition(":")[2].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.machine()


if __name__ == "__main__":
    main()
