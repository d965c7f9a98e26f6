"""Data-parallel scaling of the real training loop: 1 and 2 Ray Train workers,
same data, same global batch, in one run; training images/s, the speed-up (the
paper reports 3.75x on 4 GPUs) and the fraction of step time spent waiting for
data. Figures come from the loop's own per-epoch metrics (the last epoch, so
Ray Data's worker start-up in the first one does not count).

    python benchmarks/scaling.py                    # demo data, the demo net, 2 epochs
    python benchmarks/scaling.py --data SHARDS --set width=0.5 --epochs 3
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> dict[int, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="prepared dataset (default: demo data made here)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)

    import ray

    from pipeline.demo_data import make_demo_data
    from pipeline.preprocess import preprocess
    from pipeline.recipes import recipe
    from pipeline.train import train

    work = Path(tempfile.mkdtemp(prefix="vggpipe-scaling-"))
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    data = args.data
    if data is None:
        make_demo_data(work / "source")
        data = str(work / "shards")
        preprocess(str(work / "source"), data, max_short_side=128, progress=False)

    results: dict[int, dict[str, float]] = {}
    for workers in args.workers:
        config = recipe(
            "demo",
            [
                f"data={data}",
                f"storage_path={work / 'runs'}",
                f"tracking_uri=sqlite:///{work / 'mlflow.db'}",
                f"run_name=scaling-{workers}",
                f"num_workers={workers}",
                f"epochs={args.epochs}",
                "cpus_per_worker=0.5",
                "data_cpus_per_task=0.5",
                *args.overrides,
            ],
        )
        results[workers] = train(config).metrics

    base = results[args.workers[0]]["images_per_second"]
    print(f"{'workers':>7}  {'images/s':>9}  {'speed-up':>8}  {'waiting on data':>15}")
    for workers, metrics in results.items():
        rate = metrics["images_per_second"]
        print(
            f"{workers:>7}  {rate:9.1f}  {rate / base:7.2f}x  "
            f"{100 * metrics['data_wait_fraction']:14.0f}%"
        )
    return results


if __name__ == "__main__":
    main()
