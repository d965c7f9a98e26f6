"""What a training run costs beyond its steps: wall-clock seconds of
`pipeline.train.train` for the smoke recipe (2 epochs of 4 steps on the demo
digits) with Ray Train's default worker poll (every 2 s) against the 0.5 s that
`vggpipe demo` and the tests set (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S), in one
run. Each setting gets its own process and local Ray (the controller reads the
variable when it starts); the first training of each is Ray's warm-up and is
reported apart.

    python benchmarks/train_overhead.py             # 3 runs per setting
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SETTINGS = {"Ray Train's default (2 s)": None, "vggpipe demo's (0.5 s)": "0.5"}

ONE_SETTING = """
import json, sys, time, ray
from pipeline.recipes import recipe
from pipeline.train import train
data, work, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
seconds = []
for index in range(runs):
    config = recipe("smoke", [f"data={data}", f"storage_path={work}/runs",
                              f"tracking_uri=sqlite:///{work}/mlflow.db", f"run_name=run-{index}"])
    start = time.perf_counter()
    train(config)
    seconds.append(time.perf_counter() - start)
print("SECONDS", json.dumps(seconds))
"""


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runs", type=int, default=3, help="trainings per setting (first: warm-up)"
    )
    args = parser.parse_args(argv)

    from pipeline.demo_data import make_demo_data
    from pipeline.preprocess import preprocess

    work = Path(tempfile.mkdtemp(prefix="vggpipe-train-overhead-"))
    make_demo_data(work / "source", per_class=40)
    data = str(work / "shards")
    preprocess(str(work / "source"), data, max_short_side=64, progress=False)

    warm: dict[str, float] = {}
    for name, interval in SETTINGS.items():
        env = {k: v for k, v in os.environ.items() if k != "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"}
        if interval:
            env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = interval
        folder = tempfile.mkdtemp(dir=work)
        done = subprocess.run(
            [sys.executable, "-c", ONE_SETTING, data, folder, str(args.runs)],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        [line] = [line for line in done.stdout.splitlines() if line.startswith("SECONDS")]
        seconds = json.loads(line.removeprefix("SECONDS"))
        warm[name] = sum(seconds[1:]) / max(len(seconds) - 1, 1)
        print(
            f"{name:28s} first {seconds[0]:5.1f} s, then {warm[name]:5.1f} s per smoke training"
            " (wall clock)"
        )
    default, ours = warm.values()
    print(f"ratio default/0.5 s: {default / ours:.2f}x")
    return warm | {"ratio": default / ours}


if __name__ == "__main__":
    main()
