"""The evaluation stage's config, plan, tables and naming, without Ray."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import replace

import numpy as np
import pytest

from pipeline.config import ConfigError
from pipeline.evaluation.config import EvaluateConfig
from pipeline.evaluation.driver import evaluation_name
from pipeline.evaluation.nets import EvaluatedModel
from pipeline.evaluation.plan import needed_views, plan_rows, scales_for
from pipeline.evaluation.results import TableRow, csv_table, markdown_table, table_rows
from pipeline.evaluation.worker import centre_crop
from vgg.evaluation import Architecture


def _model(label: str, config: str, train_scale, crop: int = 224) -> EvaluatedModel:
    return EvaluatedModel(
        label=label,
        reference=label,
        source="checkpoint",
        architecture=Architecture(config, 1.0, 1000, crop),
        train_scale=train_scale,
        mean_rgb=(120.0, 115.0, 100.0),
        std_rgb=None,
        run_id=None,
        data=None,
    )


D_JITTER = _model("d-jitter", "D", (256, 512))
E_JITTER = _model("e-jitter", "E", (256, 512))
B_256 = _model("b-256", "B", (256, 256))
TORCHVISION = _model("vgg16", "D", None)


def test_config_names_the_bad_field():
    with pytest.raises(ConfigError, match="protocols must be one or more of"):
        EvaluateConfig(models=("x",), protocols=("dense", "ten-crop"))
    with pytest.raises(ConfigError, match="ensemble must be False with a single model"):
        EvaluateConfig(models=("x",), ensemble=True)
    with pytest.raises(ConfigError, match="scales must be 'single', 'multi' or comma-separated"):
        EvaluateConfig(models=("x",), scales=("big",))
    with pytest.raises(ConfigError, match="grid must be >= 2"):
        EvaluateConfig(models=("x",), grid=1)
    with pytest.raises(ConfigError, match="models must be one or more models"):
        EvaluateConfig(models=())
    with pytest.raises(ConfigError, match="limit must be >= 1"):
        EvaluateConfig(models=("x",), limit=0)


def test_config_takes_lists_and_canonical_scale_sets():
    config = EvaluateConfig(models=["a", "b"], scales=["MULTI", "384, 256,512", "256"])
    assert config.models == ("a", "b")
    assert config.scales == ("multi", "256,384,512", "256")
    assert config.scale_sets == ("multi", (256, 384, 512), (256,))
    assert EvaluateConfig.from_dict(config.to_dict()) == config


def test_scales_follow_the_training_scale():
    assert scales_for(B_256, "single", 32) == (256,)
    assert scales_for(B_256, "multi", 32) == (224, 256, 288)
    assert scales_for(D_JITTER, "single", 32) == (384,)
    assert scales_for(D_JITTER, "multi", 32) == (256, 384, 512)
    assert scales_for(D_JITTER, (300, 400), 32) == (300, 400)
    # torchvision's nets have no S: its own evaluation's 256 stands in.
    assert scales_for(TORCHVISION, "single", 32) == (256,)
    demo = _model("demo", "A", (36, 36), crop=32)
    assert scales_for(demo, "multi", 32) == (32, 36, 68)


def test_plan_has_every_net_then_the_ensemble_per_scale_set_and_protocol():
    config = EvaluateConfig(models=("d", "e"), ensemble=True)
    rows = plan_rows([D_JITTER, E_JITTER], config)
    assert len(rows) == 3 * 2 * 4
    assert [r.members for r in rows[:8]] == [(0,)] * 8
    assert [r.members for r in rows[-8:]] == [(0, 1)] * 8
    assert [(r.scale_set, r.protocol) for r in rows[:8]] == [
        (s, p)
        for s in ("single", "multi")
        for p in ("centre", "dense", "multi-crop", "dense+multi-crop")
    ]
    assert rows[-1].scales == ((256, 384, 512), (256, 384, 512))
    needs = needed_views(rows)
    assert sorted(needs) == [256, 384, 512]
    assert needs[384] == {
        0: {"centre", "dense", "multi-crop"},
        1: {"centre", "dense", "multi-crop"},
    }
    dense_only = needed_views(
        plan_rows([D_JITTER], EvaluateConfig(models=("d",), protocols=("dense",)))
    )
    assert dense_only == {384: {0: {"dense"}}, 256: {0: {"dense"}}, 512: {0: {"dense"}}}


def test_plan_refuses_a_test_scale_below_the_crop():
    with pytest.raises(ConfigError, match=r"scales must be >= the crop size \(224\) of b-256"):
        plan_rows([B_256], EvaluateConfig(models=("b",), scales=("200,256",)))


def test_tables_read_like_the_papers():
    config = EvaluateConfig(
        models=("d", "e"), ensemble=True, protocols=("dense",), scales=("multi",)
    )
    rows = plan_rows([D_JITTER, E_JITTER], config)
    table = table_rows(
        [D_JITTER, E_JITTER], rows, [(248, 75, 1000), (248, 75, 1000), (240, 71, 1000)]
    )
    assert table[0] == TableRow(
        model="d-jitter",
        config="D",
        train_scale="[256;512]",
        test_scales="256,384,512",
        protocol="dense",
        top1_error=24.8,
        top5_error=7.5,
        images=1000,
        scale_set="multi",
        run_id=None,
    )
    assert (table[2].model, table[2].config, table[2].top1_error) == (
        "d-jitter + e-jitter",
        "D+E",
        24.0,
    )

    mixed = table_rows(
        [B_256, D_JITTER],
        plan_rows(
            [B_256, D_JITTER],
            EvaluateConfig(
                models=("b", "d"), ensemble=True, scales=("single",), protocols=("dense",)
            ),
        ),
        [(1, 1, 4)] * 3,
    )
    assert (mixed[2].train_scale, mixed[2].test_scales) == ("256 / [256;512]", "256 / 384")

    # Cells padded to their column's width: compare them with single spaces.
    markdown = [re.sub(" +", " ", line) for line in markdown_table(table).splitlines()]
    assert markdown[0].startswith("| model | config | train S | test Q | protocol | top-1 err. (%)")
    assert (
        "| d-jitter + e-jitter | D+E | [256;512] | 256,384,512 | dense | 24.00 | 7.10 | 1000 |"
        in markdown
    )
    parsed = list(csv.DictReader(io.StringIO(csv_table(table))))
    assert [row["config"] for row in parsed] == ["D", "E", "D+E"]
    assert float(parsed[0]["top5_error"]) == pytest.approx(7.5)


def test_metric_names_are_valid_mlflow_names():
    row = TableRow("m", "D", "[256;512]", "256 / 384", "dense+multi-crop", 1.0, 1.0, 10, "single")
    prefix = row.metric_prefix()
    assert prefix == "eval/dense_and_multi-crop/Q256_384"
    assert re.fullmatch(r"[/\w.\- :]*", prefix)


def test_the_evaluation_name_follows_the_settings_that_change_the_figures():
    config = EvaluateConfig(models=("a",))
    name = evaluation_name(config, "/data")
    assert name.startswith("evaluate-")
    # Hardware and paths give the same figures: a rerun continues the same run.
    assert evaluation_name(replace(config, workers=3, batch_size=8, output="x"), "/data") == name
    # A fingerprinted field, or other resolved data, is another evaluation.
    assert evaluation_name(replace(config, predictions=True), "/data") != name
    assert evaluation_name(config, "/other") != name
    assert evaluation_name(replace(config, run_name="mine"), "/data") == "mine"


def test_the_centre_crop_is_cut_from_the_rescaled_image():
    image = np.arange(40 * 60 * 3).reshape(40, 60, 3)
    assert np.array_equal(centre_crop(image, 32), image[4:36, 14:46])
    assert np.array_equal(centre_crop(image, 40), image[:, 10:50])
