"""The evaluation stage end to end: real Ray tasks over the demo shards, real
JPEGs, a real MLflow store (SQLite in tmp), nets from every kind of reference."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torchvision

from pipeline import checkpoints, tracking
from pipeline.cli import main
from pipeline.errors import NotFoundError
from pipeline.evaluation import evaluate, load_model
from pipeline.ingest import pixel_statistics, record_batch_pieces
from pipeline.recipes import recipe
from pipeline.shards import ShardStore
from vgg import to_fully_convolutional, whole_window_region
from vgg.evaluation import crop_posteriors, dense_posteriors
from vgg.transforms import decode_rescaled, multi_crop, to_model_input

PROTOCOLS = ("centre", "dense", "multi-crop", "dense+multi-crop")
# Two workers of half a CPU each leave a CPU of the session's two for decoding.
SMALL = {"workers": 2, "cpus_per_worker": 0.5, "data_cpus_per_task": 0.5, "progress": False}


@pytest.fixture(scope="module")
def demo_nets(new_store, demo_shards):
    """Two smoke-recipe nets (S 36, crop 32), saved as Ray Train would save them
    and tagged on their MLflow runs as training tags them: real checkpoints and
    runs without the minute of training (the figures here are not the point)."""
    root, uri = new_store("evaluate")
    nets = []
    for seed in (0, 1):
        config = recipe(
            "smoke",
            [
                f"data={demo_shards}",
                f"run_name=eval-demo-{seed}",
                f"seed={seed}",
                f"storage_path={root}",
                f"tracking_uri={uri}",
            ],
        )
        torch.manual_seed(seed)
        model = checkpoints.build_model(config, 10)
        folder = root / config.name / "checkpoint_000000"
        folder.mkdir(parents=True)
        checkpoints.save(folder, model, config, 10, {})
        run = tracking.start_run(
            config.name,
            config.experiment,
            uri=uri,
            tags={tracking.STAGE_TAG: "train"},
            config=config,
        )
        run.set_tags({tracking.BEST_CHECKPOINT_TAG: str(folder)})
        run.end()
        nets.append({"run_id": run.run_id, "checkpoint": str(folder), "config": config})
    return {"uri": uri, "data": demo_shards, "root": root, "nets": nets}


def _artifacts(run_id: str, path: str, uri: str) -> set[str]:
    return {Path(a.path).name for a in tracking.client(uri).list_artifacts(run_id, path)}


def test_every_protocol_and_an_ensemble_give_a_full_table_files_and_mlflow(demo_nets, tmp_path):
    first, second = demo_nets["nets"]
    uri = demo_nets["uri"]
    # One net by its MLflow run id, the other by its checkpoint folder.
    result = evaluate(
        [first["run_id"], second["checkpoint"]],
        data=demo_nets["data"],
        ensemble=True,
        limit=40,
        dense_batch_size=4,
        output=str(tmp_path / "table"),
        tracking_uri=uri,
        **SMALL,
    )
    rows = result.rows
    labels = ["eval-demo-0", "eval-demo-1", "eval-demo-0 + eval-demo-1"]
    assert [(r.model, r.scale_set, r.protocol) for r in rows] == [
        (label, scale_set, protocol)
        for label in labels
        for scale_set in ("single", "multi")
        for protocol in PROTOCOLS
    ]
    assert {r.test_scales for r in rows} == {"36", "32,36,68"}
    assert {(r.config, r.train_scale) for r in rows} == {("A", "36"), ("A+A", "36")}
    assert all(r.images == 40 for r in rows) and result.images == 40
    assert all(0 <= r.top5_error <= r.top1_error <= 100 for r in rows)
    # The checkpoint folder was traced back to the run that wrote it.
    assert [m.run_id for m in result.models] == [first["run_id"], second["run_id"]]
    assert result.dense_images == 2 * 40 * 3  # two nets, three test scales

    files = result.files
    assert files["markdown"].read_text().count("\n") == 2 + len(rows)
    assert len(list(csv.DictReader(files["csv"].open()))) == len(rows)
    document = json.loads(files["json"].read_text())
    assert len(document["rows"]) == len(rows) and document["images"] == 40

    # A limited evaluation and an ensemble: the whole table on the evaluation
    # run, under keys without run names; nothing on the nets' own runs.
    for run_id in (first["run_id"], second["run_id"]):
        assert not any(k.startswith("eval/") for k in tracking.get_run(run_id, uri).data.metrics)
        assert _artifacts(run_id, f"evaluation/{result.name}", uri) == set()
    evaluation = tracking.get_run(result.evaluation_run_id, uri)
    assert evaluation.data.tags[tracking.STAGE_TAG] == "evaluate"
    assert evaluation.info.status == "FINISHED"
    tables = {"table.md", "table.csv", "table.json"}
    assert _artifacts(result.evaluation_run_id, f"evaluation/{result.name}", uri) == tables | {
        "config.json"
    }
    metrics = evaluation.data.metrics
    dense_single = {
        r.model: r.top1_error / 100 for r in rows if r.protocol == "dense" and r.test_scales == "36"
    }
    assert metrics["eval/net1/dense/Q36/top1_error"] == pytest.approx(dense_single[labels[0]])
    assert metrics["eval/net2/dense/Q36/top1_error"] == pytest.approx(dense_single[labels[1]])
    assert metrics["eval/dense/Q36/top1_error"] == pytest.approx(dense_single[labels[2]])
    assert "eval/dense_and_multi-crop/Q32-36-68/top5_error" in metrics
    assert result.run_ids == [result.evaluation_run_id]
    # The evaluated data as MLflow's dataset input, digest from its manifest.
    (dataset_input,) = evaluation.inputs.dataset_inputs
    sha256 = ShardStore(demo_nets["data"]).manifest_sha256()
    assert sha256.startswith(dataset_input.dataset.digest)
    assert {(t.key, t.value) for t in dataset_input.tags} == {("mlflow.data.context", "evaluation")}
    assert json.loads(dataset_input.dataset.profile)["manifest_sha256"] == sha256


def _worker_shares(data: str, workers: int, limit: int) -> list[tuple[str, bytes, int]]:
    """The (key, JPEG, label) rows `limit` selects: each worker's first rows of
    its share, the record batches dealt out in turn (`ingest.evaluation_dataset`)."""
    store = ShardStore(data)
    pieces = record_batch_pieces(store.shards("val"))
    rows = []
    for rank in range(workers):
        wanted = limit // workers + (rank < limit % workers)
        for piece in pieces[rank::workers]:
            table = store.read_rows(piece.shard, piece.start, piece.stop, ["key", "image", "label"])
            table = table.to_pydict()
            taken = list(zip(table["key"], table["image"], table["label"], strict=True))[:wanted]
            rows += taken
            wanted -= len(taken)
    return rows


def _in_process_top5(checkpoint: str, data: str, rows, scale: int) -> dict[str, dict[str, list]]:
    """protocol -> key -> top-5 classes, image by image with the scoring
    functions: no Ray, no buckets, no shared batches."""
    loaded = checkpoints.load(checkpoint)
    model, crop = loaded.model.eval(), loaded.config.crop_size
    dense = to_fully_convolutional(model)
    mean = pixel_statistics(data).mean_rgb
    top5: dict[str, dict[str, list]] = {p: {} for p in PROTOCOLS}

    def as_input(pixels: np.ndarray) -> torch.Tensor:
        return to_model_input(torch.from_numpy(np.array(pixels)), mean)

    for key, jpeg, _ in rows:
        image = decode_rescaled(jpeg, scale)
        top, left = (image.shape[0] - crop) // 2, (image.shape[1] - crop) // 2
        with torch.no_grad():
            centre = crop_posteriors(
                model, as_input(image[None, top : top + crop, left : left + crop])[None]
            )
            # Dense sees the region its score windows tile exactly, centred.
            y, x, height, width = whole_window_region(*image.shape[:2], crop)
            whole = dense_posteriors(dense, as_input(image[None, y : y + height, x : x + width]))
            grid = crop_posteriors(model, as_input(multi_crop(image, crop))[None])
        for protocol, posteriors in zip(
            PROTOCOLS, (centre, whole, grid, (whole + grid) / 2), strict=True
        ):
            top5[protocol][key] = posteriors[0].topk(5).indices.tolist()
    return top5


def test_workers_share_the_images_and_agree_with_a_plain_loop(demo_nets, tmp_path):
    net = demo_nets["nets"][0]
    data = demo_nets["data"]
    images = 60
    result = evaluate(
        net["checkpoint"],
        data=data,
        scales=("single",),
        limit=images,
        predictions=True,
        dense_batch_size=8,  # buckets of several images, as on a GPU
        output=str(tmp_path),
        tracking_uri=demo_nets["uri"],
        **SMALL,
    )
    assert result.images == images and result.workers == 2
    selected = _worker_shares(data, 2, images)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the session's Ray workers share these two cores
    try:
        expected = _in_process_top5(net["checkpoint"], data, selected, scale=36)
    finally:
        torch.set_num_threads(threads)

    predictions = pq.read_table(result.files["predictions"]).to_pylist()
    assert len(predictions) == images * len(result.rows)
    labels = {key: label for key, _, label in selected}
    for row in result.rows:
        found = {p["key"]: p for p in predictions if p["protocol"] == row.protocol}
        # Each selected image once, under its own label.
        assert sorted(found) == sorted(labels)
        assert all(p["label"] == labels[key] for key, p in found.items())
        # The same classes image by image; batches of other sizes may round a
        # near-tie the other way, so one image may differ.
        differing = [k for k, p in found.items() if p["top5"] != expected[row.protocol][k]]
        assert len(differing) <= 1, (row.protocol, differing)
        top1_errors = sum(p["top5"][0] != p["label"] for p in found.values())
        assert row.top1_error == pytest.approx(100 * top1_errors / images)


@pytest.fixture(scope="module")
def shards_at_256(tmp_path_factory, ray_local) -> str:
    """A few demo digits stored with short sides up to 256: torchvision's nets
    take 224 crops and are tested at Q = 256, more than the session's shards keep."""
    from pipeline.demo_data import make_demo_data
    from pipeline.preprocess import preprocess

    root = tmp_path_factory.mktemp("shards-256")
    make_demo_data(root / "source", per_class=3)
    preprocess(str(root / "source"), str(root / "shards"), max_short_side=256, progress=False)
    return str(root / "shards")


def test_a_torchvision_state_dict_is_evaluated_through_interop(demo_nets, shards_at_256, tmp_path):
    torch.manual_seed(0)
    # torchvision's VGG-11 with random weights, ten classes to match the demo data.
    weights = tmp_path / "vgg11-random.pth"
    torch.save(torchvision.models.vgg11(num_classes=10).state_dict(), weights)
    result = evaluate(
        str(weights),
        data=shards_at_256,
        protocols=("centre", "dense"),
        scales=("single",),
        limit=2,
        output=str(tmp_path / "table"),
        tracking_uri=demo_nets["uri"],
        workers=1,
        cpus_per_worker=1,
        data_cpus_per_task=1,
        progress=False,
    )
    (model,) = result.models
    assert model.source == "torchvision" and model.std_rgb is not None
    assert (model.architecture.config, model.architecture.crop_size) == ("A", 224)
    assert [(r.config, r.train_scale, r.test_scales, r.images) for r in result.rows] == [
        ("A", "-", "256", 2),
        ("A", "-", "256", 2),
    ]
    # No training run to log on: an evaluation run holds the table.
    assert result.run_ids == [result.evaluation_run_id]
    assert "table.md" in _artifacts(
        result.evaluation_run_id, f"evaluation/{result.name}", demo_nets["uri"]
    )


def test_a_registered_model_is_evaluated_on_its_run_and_a_quick_check_leaves_it_so(
    demo_nets, tmp_path
):
    uri = demo_nets["uri"]
    config = demo_nets["nets"][1]["config"]
    model = checkpoints.load(demo_nets["nets"][1]["checkpoint"]).model
    run = tracking.start_run("eval-registered", config.experiment, uri=uri, config=config)
    run.log_model(model, "best_model", registered_model_name="eval-demo")
    run.end()
    run_id = run.run_id

    loaded, weights = load_model("eval-demo/1", tracking.tracking_uri(uri))
    assert (loaded.label, loaded.run_id, loaded.train_scale) == ("eval-demo/v1", run_id, (36, 36))
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())

    def centre(**settings):
        return evaluate(
            "models:/eval-demo/1",
            protocols=("centre",),
            scales=("single",),
            output=str(tmp_path / str(settings)),
            tracking_uri=uri,
            **SMALL | settings,
        )

    # The full evaluation of its own validation split (its training data by
    # default) is the net's record, on its run alone.
    full = centre()
    (row,) = full.rows
    assert (row.model, row.train_scale, row.test_scales) == ("eval-demo/v1", "36", "36")
    assert row.images == ShardStore(demo_nets["data"]).manifest().splits["val"].rows
    assert full.run_ids == [run_id] and full.evaluation_run_id is None
    key = "eval/centre/Q36/top1_error"

    def history():
        points = tracking.client(uri).get_metric_history(run_id, key)
        return [(m.step, m.value, m.timestamp) for m in points]

    recorded = history()
    assert [point[:2] for point in recorded] == [(0, pytest.approx(row.top1_error / 100))]

    # A quick check on three images goes on an evaluation run of its own and
    # leaves the net's figures as they were.
    quick = centre(limit=3)
    assert quick.rows[0].images == 3
    assert quick.run_ids == [quick.evaluation_run_id]
    assert history() == recorded
    evaluation = tracking.get_run(quick.evaluation_run_id, uri).data.metrics
    assert evaluation[key] == pytest.approx(quick.rows[0].top1_error / 100)


def test_a_model_a_run_logged_loads_by_its_runs_uri(demo_nets):
    """`runs:/<run id>/best_model`, as MLflow's UI and guides name a logged model."""
    uri = demo_nets["uri"]
    config = demo_nets["nets"][0]["config"]
    model = checkpoints.load(demo_nets["nets"][0]["checkpoint"]).model
    run = tracking.start_run("eval-logged", config.experiment, uri=uri, config=config)
    run.log_model(model, "best_model")
    run.end()

    loaded, weights = load_model(f"runs:/{run.run_id}/best_model", tracking.tracking_uri(uri))
    assert (loaded.label, loaded.run_id, loaded.source) == ("eval-logged", run.run_id, "run")
    assert loaded.train_scale == (config.scale_min, config.scale_max)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    with pytest.raises(NotFoundError, match="no MLflow run"):
        load_model(f"runs:/{'0' * 32}/best_model", tracking.tracking_uri(uri))
    with pytest.raises(NotFoundError, match="nothing"):
        load_model(f"runs:/{run.run_id}/nothing", tracking.tracking_uri(uri))


def test_cli_prints_the_table_and_fails_in_one_line(demo_nets, tmp_path, capsys):
    checkpoint = demo_nets["nets"][0]["checkpoint"]
    code = main(
        [
            "evaluate",
            checkpoint,
            "--protocols",
            "centre,dense",
            "--scales",
            "single",
            "--scales",
            "40,48",
            "--limit",
            "8",
            "--workers",
            "1",
            "--cpus-per-worker",
            "0.5",
            "--data-cpus-per-task",
            "0.5",
            "--output",
            str(tmp_path / "cli"),
            "--tracking-uri",
            demo_nets["uri"],
            "--no-progress",
        ]
    )
    # Cells padded to their column's width: compare them with single spaces.
    out = re.sub(" +", " ", capsys.readouterr().out)
    assert code == 0
    assert "| model | config | train S | test Q | protocol |" in out
    assert "| eval-demo-0 | A | 36 | 40,48 | dense |" in out
    assert (tmp_path / "cli" / "table.csv").exists()

    assert main(["evaluate", str(tmp_path / "missing"), "--data", demo_nets["data"]]) == 2
    assert main(["evaluate", checkpoint, "--protocols", "ten-crop"]) == 2
    assert main(["evaluate", checkpoint, "--scales", "16", "--tracking-uri", demo_nets["uri"]]) == 2
    assert main(["evaluate", "0" * 32, "--tracking-uri", demo_nets["uri"]]) == 2
    # The demo shards keep short sides up to 128: Q = 160 would test on upsampled pixels.
    assert (
        main(["evaluate", checkpoint, "--scales", "160", "--tracking-uri", demo_nets["uri"]]) == 2
    )
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 5 and all(line.startswith("vggpipe evaluate: error:") for line in errors)
    assert "protocols must be" in errors[1] and "crop size (32)" in errors[2]
    assert f"no MLflow run {'0' * 32}" in errors[3]
    assert errors[4].endswith(
        f"scales 160 is above the 128-pixel short side that {demo_nets['data']} stores "
        "(its max_short_side); preprocess again with max_short_side >= 160"
    )


def test_a_relative_checkpoint_path_loads_and_finds_its_run(demo_nets):
    net = demo_nets["nets"][0]
    model, weights = load_model(os.path.relpath(net["checkpoint"]), demo_nets["uri"])
    assert (model.source, model.run_id, model.label) == ("checkpoint", net["run_id"], "eval-demo-0")
    assert model.architecture.crop_size == 32 and "classifier.6.weight" in weights
