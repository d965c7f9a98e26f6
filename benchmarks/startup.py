"""How long `vggpipe` takes to answer without running a stage (`--help`, a
stage's `--help`, a config error, `--print-config`) against the import of
torch, Ray and MLflow that a running stage pays, side by side in one run.

Each command is a fresh Python process, run ROUNDS times in turn with the
others (so a busy machine slows them alike); the minimum of each is reported,
and its ratio to `python -c "import torch, ray, mlflow"`.

    python benchmarks/startup.py
    python benchmarks/startup.py --rounds 10
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

HEAVY = [sys.executable, "-c", "import torch, ray, mlflow"]
COMMANDS = {
    "vggpipe --help": ["--help"],
    "vggpipe train --help": ["train", "--help"],
    "vggpipe evaluate --help": ["evaluate", "--help"],
    "vggpipe train (config error)": ["train", "--recipe", "smoke", "--set", "lr=-1"],
    "vggpipe train --print-config": ["train", "--recipe", "smoke", "--print-config"],
}


def seconds(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, capture_output=True, check=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="runs of each (default 5)")
    args = parser.parse_args()
    commands = {"import torch, ray, mlflow": HEAVY} | {
        name: [sys.executable, "-m", "pipeline.cli", *argv] for name, argv in COMMANDS.items()
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.rounds):
        for name, command in commands.items():
            times[name].append(seconds(command))
    heavy = min(times["import torch, ray, mlflow"])
    print(f"{'command':32s} {'min s':>7s} {'of heavy':>9s}  ({args.rounds} rounds)")
    for name, measured in times.items():
        print(f"{name:32s} {min(measured):7.3f} {min(measured) / heavy:9.2f}")


if __name__ == "__main__":
    main()
