"""Training-ingest throughput per CPU core: our shards against torchvision's
ImageFolder + DataLoader on the original JPEG files, same images, one run.

torchvision side: Resize(S) (RandomResize(256, 513) for jittering),
RandomCrop(224), RandomHorizontalFlip, ToTensor, Normalize, in one process
(num_workers=0, one torch thread: one core).
Our side, also on one core: `vgg.transforms.decode_crop` over shard rows, which
returns uint8 crops (the float conversion, mean and colour shift happen on the
training device); then the same through the full Ray Data pipeline
(`pipeline.ingest.training_batches`, one training worker consuming in this
process, its epochs streamed as a training run streams them) on all cores, in
wall-clock time over `--epochs` consecutive epochs after a warm one (steady
state, epoch boundaries included), divided by the core count. Ray Data and
in-process runs take turns (`--repeats`): each Ray Data figure is compared
with the better of the in-process runs either side of it, so that load from
elsewhere does not flatter the ratio, and the repeat with the median ratio is
reported (this machine's speed drifts by a third within minutes).
Also the decode-only bound: a full Pillow decode of the stored images, and
with `--threads 2,4` the in-process decode on a thread pool of that size (what
a user might try before Ray Data; Pillow releases the GIL only while it
decodes and resamples), and with `--processes 2` split over that many forked
processes (what the cores give together with nothing in between). With
`--plain-read-tasks`, the training read tasks themselves, an epoch split
evenly into one plain Ray task per core outside Ray Data, their blocks
dropped and then put in the object store, in turns with the in-process
decode: what is lost to the read tasks' own work on busy cores, to the object
store copy, and (the rest, against the Ray Data figure) to Ray Data's
executor. Those measures live in `benchmarks/ingest_decode.py`.

    python -m benchmarks.ingest --source DIR [--epochs 2] [--repeats 3] [--only-256] [--threads 2,4] [--processes 2] [--in-ray-task] [--plain-read-tasks] [--rows-per-task N] [--cpus-per-task C]
    python -m benchmarks.ingest      # makes a photo source (benchmarks/photos.py)

SOURCE is an ILSVRC-2012 folder layout (train/<wnid>/*.JPEG). Without it the
benchmark makes one from real photographs scikit-image and scikit-learn ship
(`benchmarks/photos.py`: crops at ILSVRC's typical sizes and quirks).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.ingest_decode import (
    CROP,
    decode_only_rate,
    ours_rate,
    plain_read_tasks_rate,
    processes_rate,
    ray_tasks_rate,
    shard_rows,
    threaded_rate,
)
from benchmarks.photos import describe_source, make_photo_source
from vgg.transforms import TrainingAugmentation


def imagefolder_rate(source: Path, scale, batch: int) -> float:
    from torchvision import datasets
    from torchvision.transforms import v2

    resize = (
        v2.RandomResize(scale[0], scale[1] + 1) if isinstance(scale, tuple) else v2.Resize(scale)
    )
    transform = v2.Compose(
        [
            v2.PILToTensor(),
            resize,
            v2.RandomCrop(CROP),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    dataset = datasets.ImageFolder(str(source / "train"), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=0)
    start, count = time.perf_counter(), 0
    for images, _ in loader:
        count += len(images)
    return count / (time.perf_counter() - start)


def _process_cpu_seconds() -> dict[int, tuple[str, float]]:
    """{pid: (title, CPU seconds)} of this process and the local Ray's: its
    descendants when it started Ray itself, and Ray's daemons and workers on
    this machine when it joined one already running (a test session's)."""
    import psutil

    seconds = {}
    me = psutil.Process()
    descendants = {p.pid for p in me.children(recursive=True)}
    for process in psutil.process_iter():
        try:
            command = process.cmdline()
            if not (
                process.pid == me.pid
                or process.pid in descendants
                or any("ray::" in part or "/site-packages/ray/" in part for part in command)
            ):
                continue
            times = process.cpu_times()
            seconds[process.pid] = (" ".join(command[:1]), times.user + times.system)
        except psutil.Error:
            continue
    return seconds


def _cpu_seconds_by_role(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds spent between two `_process_cpu_seconds`, by role: "consumer"
    (this process, where the training worker would be), "read tasks" (Ray's task
    workers, titled by the task they run or IDLE between tasks: in the timed
    span only Ray Data's read tasks run), "rest of Ray" (its daemons and actors).
    What the pipeline costs, whoever else runs."""
    seconds = {"consumer": 0.0, "read tasks": 0.0, "rest of Ray": 0.0}
    for pid, (title, end) in after.items():
        start_title, start = before.get(pid, (title, 0.0))
        if pid == os.getpid():
            role = "consumer"
        elif any(word in title + start_title for word in ("ray::Read", "ray::IDLE")):
            role = "read tasks"
        else:
            role = "rest of Ray"
        seconds[role] += end - start
    return seconds


def ray_pipeline_rate(
    shards: str,
    scale,
    batch: int,
    cores: int,
    epochs: int,
    rows_per_task: int,
    cpus_per_task: float,
) -> tuple[float, float, dict[str, float]]:
    """Steady state, as a training run streams its epochs (`stop_epoch`): epoch 0
    warms Ray Data's worker processes, then `epochs` consecutive epochs are
    timed, boundaries included, from the first's first batch to the last's last;
    the stream runs on into one more epoch, untimed, so the timed span ends as
    it began, with the next epoch under way. Returns images/s per core of wall
    time, images per CPU-second of every process of the local Ray, and the CPU
    milliseconds per image of each role (`_cpu_seconds_by_role`)."""
    from pipeline.ingest import end_training_batches, training_batches

    augmentation = TrainingAugmentation(scale, CROP)
    count, start, cpu_start = 0, 0.0, {}
    for epoch in range(epochs + 1):
        if epoch == 1:
            start, count, cpu_start = time.perf_counter(), 0, _process_cpu_seconds()
        for images in training_batches(
            shards,
            epoch=epoch,
            rank=0,
            world_size=1,
            augmentation=augmentation,
            batch_size=batch,
            stop_epoch=epochs + 2,
            rows_per_task=rows_per_task,
            cpus_per_task=cpus_per_task,
        ):
            count += len(images["label"])
    wall, cpu_end = time.perf_counter() - start, _process_cpu_seconds()
    end_training_batches()
    by_role = _cpu_seconds_by_role(cpu_start, cpu_end)
    per_image = {role: seconds * 1e3 / count for role, seconds in by_role.items()}
    return count / wall / cores, 1e3 / sum(per_image.values()), per_image


def plain_read_tasks_turns(
    shards: str, rows, cores: int, repeats: int, batch: int
) -> dict[str, list[float]]:
    """`plain_read_tasks_rate` at S = 256, blocks dropped and blocks stored, in
    turns with the in-process decode: each against the better in-process run
    either side of it. The sorted ratios of each kind, one per repeat."""

    def plain(epoch: int, how: str) -> float:
        return plain_read_tasks_rate(shards, 256, cores, epoch=epoch, store=how == "stored")

    plain(0, "dropped")  # warm: Ray's worker processes and their imports
    ours = [ours_rate(rows, 256, batch)[0]]
    ratios: dict[str, list[float]] = {"dropped": [], "stored": []}
    for repeat in range(repeats):
        kinds = ("dropped", "stored") if repeat % 2 == 0 else ("stored", "dropped")
        rates = {how: plain(repeat + 1, how) for how in kinds}
        ours.append(ours_rate(rows, 256, batch)[0])
        for how, rate in rates.items():
            ratios[how].append(rate / max(ours[-2:]))
    return {how: sorted(values) for how, values in ratios.items()}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, help="ILSVRC folder layout (default: a photo set)")
    parser.add_argument("--images", type=int, default=6250, help="photo-set size (default 6250)")
    parser.add_argument(
        "--work",
        type=Path,
        help="folder for the photo set and shards (default: a new temporary one)",
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2, help="timed Ray Data epochs")
    parser.add_argument("--only-256", action="store_true", help="only S=256 from 256-px shards")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray Data pipeline figure")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="Ray Data runs per case, in turns with in-process ones (default 3; the median is kept)",
    )
    parser.add_argument(
        "--processes",
        default="",
        help="also time the in-process decode split over this many processes, e.g. 2 (S=256)",
    )
    parser.add_argument(
        "--rows-per-task",
        type=int,
        help="rows per Ray Data read task (default: training's, TRAINING_ROWS_PER_TASK)",
    )
    parser.add_argument(
        "--cpus-per-task",
        type=float,
        help="CPUs each Ray Data read task reserves (default: training's, data_cpus_per_task)",
    )
    parser.add_argument(
        "--in-ray-task",
        action="store_true",
        help="also time the in-process decode in one plain Ray task per core at once (S=256)",
    )
    parser.add_argument(
        "--plain-read-tasks",
        action="store_true",
        help="also run the read tasks as plain Ray tasks outside Ray Data, their blocks "
        "dropped and then stored, in turns with the in-process decode (S=256)",
    )
    parser.add_argument(
        "--threads",
        default="",
        help="also time the in-process decode on these thread counts, e.g. 2,4 (S=256)",
    )
    args = parser.parse_args(argv)

    import ray

    from pipeline.ingest import TRAINING_ROWS_PER_TASK
    from pipeline.preprocess import preprocess
    from pipeline.train.config import TrainConfig

    rows_per_task = TRAINING_ROWS_PER_TASK if args.rows_per_task is None else args.rows_per_task
    if rows_per_task < 1:
        parser.error(f"--rows-per-task must be at least 1; got {rows_per_task}")
    cpus_per_task = (
        TrainConfig().data_cpus_per_task if args.cpus_per_task is None else args.cpus_per_task
    )
    if not cpus_per_task > 0:
        parser.error(f"--cpus-per-task must be above 0; got {cpus_per_task}")

    torch.set_num_threads(1)
    cores = os.cpu_count() or 1
    work = args.work or Path(tempfile.mkdtemp(prefix="vggpipe-ingest-bench-"))
    source = args.source
    if source is None:
        source = work / "photos"
        make_photo_source(source, args.images)
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    # Shards stored at the largest S they serve: 256 for S = 256, 512 for jittering.
    cases = [("256", 256, 256)]
    if not args.only_256:
        cases += [("256", 256, 512), ("[256,512]", (256, 512), 512)]
    shards = {}
    for side in sorted({side for _, _, side in cases}):
        shards[side] = str(work / f"shards-{side}")
        preprocess(str(source), shards[side], max_short_side=side, progress=False)
    rows = {side: shard_rows(path) for side, path in shards.items()}

    imagefolder_rate(source, 256, args.batch)  # warm-up: imports, file cache
    results: dict[str, float] = {}
    print(
        f"{len(rows[256])} training images: {describe_source(source)}; crops {CROP}; "
        f"{cores} CPUs, load average {os.getloadavg()[0]:.2f}; images/s per core"
    )
    print(
        "S | stored | ImageFolder | ours, in-process | ratio | ours, Ray Data | Ray / in-process "
        "| per CPU-second: in-process / Ray Data (all its processes) / ratio"
    )
    print("---: | ---: | ---: | ---: | ---: | ---: | ---: | ---:")
    for label, scale, side in cases:
        baseline = imagefolder_rate(source, scale, args.batch)
        # In turns: in-process, Ray Data, in-process, ... Each Ray Data figure is
        # compared with the better of the in-process runs either side of it; the
        # repeat with the median ratio is the one reported.
        in_process = [ours_rate(rows[side], scale, args.batch)]
        turns = []
        for _ in range(0 if args.no_ray else args.repeats):
            pipeline, pipeline_cpu, per_image = ray_pipeline_rate(
                shards[side],
                scale,
                args.batch,
                cores,
                args.epochs,
                rows_per_task,
                cpus_per_task,
            )
            in_process.append(ours_rate(rows[side], scale, args.batch))
            before, after = in_process[-2:]
            turns.append(
                (
                    pipeline,
                    pipeline_cpu,
                    max(before[0], after[0]),
                    max(before[1], after[1]),
                    per_image,
                )
            )
        if turns:
            ratios = sorted(turn[0] / turn[2] for turn in turns)
            print(
                f"S={label}: Ray / in-process per repeat, sorted: "
                + ", ".join(f"{r:.2f}x" for r in ratios)
            )
            pipeline, pipeline_cpu, ours, ours_cpu, per_image = sorted(
                turns, key=lambda t: t[0] / t[2]
            )[len(turns) // 2]
            print(
                f"S={label}: CPU ms per image in that repeat: "
                + ", ".join(f"{role} {ms:.3f}" for role, ms in per_image.items())
                + f"; in-process decode {1e3 / ours_cpu:.3f}; the cores were busy "
                + f"{pipeline * sum(per_image.values()) / 1e3:.0%} of the wall time"
            )
            for role, ms in per_image.items():
                results[f"ray data {role} CPU ms per image S={label} stored={side}"] = ms
        else:
            pipeline = pipeline_cpu = float("nan")
            ours, ours_cpu = in_process[0]
        name = f"S={label} stored={side}"
        results[f"ratio {name}"] = ours / baseline
        results[f"in-process per core {name}"] = ours
        results[f"ray data per core {name}"] = pipeline
        results[f"ray data per CPU-second {name}"] = pipeline_cpu
        results[f"in-process per CPU-second {name}"] = ours_cpu
        print(
            f"{label} | {side} | {baseline:.0f} | {ours:.0f} | {ours / baseline:.2f} | "
            f"{pipeline:.0f} | {pipeline / ours:.2f}x | {ours_cpu:.0f} / {pipeline_cpu:.0f} / "
            f"{pipeline_cpu / ours_cpu:.2f}x"
        )
    if args.plain_read_tasks:
        turns = plain_read_tasks_turns(shards[256], rows[256], cores, args.repeats, args.batch)
        for how, ratios in turns.items():
            median = ratios[len(ratios) // 2]
            results[f"plain read tasks, blocks {how} / in-process S=256 stored=256"] = median
            print(
                f"the read tasks as {cores} plain Ray tasks outside Ray Data, blocks {how}, "
                f"S=256: {median:.2f}x of the in-process decode per core "
                f"({', '.join(f'{r:.2f}x' for r in ratios)})"
            )
    if args.in_ray_task:
        here = ours_rate(rows[256], 256, args.batch)[0]
        there = ray_tasks_rate(rows[256], 256, args.batch, cores)
        here = max(here, ours_rate(rows[256], 256, args.batch)[0])
        results["in plain Ray tasks per core S=256 stored=256"] = there
        print(
            f"in-process decode in {cores} plain Ray tasks at once, S=256: {there:.0f} "
            f"images/s per core, {there / here:.2f}x of this process's {here:.0f}"
        )
    for threads in [int(n) for n in args.threads.split(",") if n]:
        rate = threaded_rate(rows[256], 256, threads)
        results[f"in-process {threads} threads, all cores S=256 stored=256"] = rate
        print(f"in-process decode on {threads} threads, S=256: {rate:.0f} images/s in all")
    # After every Ray measure: a process forked from this Ray driver can upset
    # its connections to Ray (in one run, plain Ray tasks submitted after it
    # never finished).
    for processes in [int(n) for n in args.processes.split(",") if n]:
        rate = processes_rate(rows[256], 256, processes)
        results[f"in-process {processes} processes, all cores S=256 stored=256"] = rate
        print(
            f"in-process decode in {processes} processes, S=256: {rate:.0f} images/s in all, "
            f"{rate / processes:.0f} per process"
        )
    for side in shards:
        rate = decode_only_rate(rows[side])
        results[f"decode-only stored={side}"] = rate
        print(f"decode-only bound, stored short side {side}: {rate:.1f} images/s per core")
    if started_ray:
        ray.shutdown()
    return results


if __name__ == "__main__":
    main()
