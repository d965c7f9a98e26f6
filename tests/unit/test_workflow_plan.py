"""The workflow's graph, fingerprints and tables, without Ray or MLflow."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError
from pipeline.recipes import workflow_recipe
from pipeline.workflow import Net, combined_tables, nets, plan, train_config
from pipeline.workflow.scheduler import fits


@pytest.fixture
def source(tmp_path):
    (tmp_path / "train").mkdir()
    return str(tmp_path)


def _fingerprints(source, *overrides):
    return {
        s.key: s.fingerprint for s in plan(workflow_recipe("paper", [f"data={source}", *overrides]))
    }


def test_the_paper_graph_is_the_papers_recipe():
    config = workflow_recipe("paper")
    graph = {net.key: net for net in nets(config)}
    assert list(graph) == [
        "A-256",
        "A-LRN-256",
        "B-256",
        "C-256",
        "D-256",
        "E-256",
        "C-384",
        "C-256-512",
        "D-384",
        "D-256-512",
        "E-384",
        "E-256-512",
    ]
    assert graph["A-256"].start is None and graph["A-LRN-256"].start is None
    for name in "BCDE":  # the deeper nets start from net A's layers
        assert (graph[f"{name}-256"].start, graph[f"{name}-256"].start_mode) == (
            "A-256",
            "init_from",
        )
    for name in "CDE":  # 384 from 256, jittered from 384, all layers
        assert (graph[f"{name}-384"].start, graph[f"{name}-384"].start_mode) == (
            f"{name}-256",
            "resume_from",
        )
        assert graph[f"{name}-256-512"].start == f"{name}-384"
        assert graph[f"{name}-256-512"].scale == (256, 512)

    d384 = train_config(config, graph["D-384"])
    assert (d384.config, d384.scale_min, d384.scale_max, d384.lr) == ("D", 384, 384, 1e-3)
    a = train_config(config, graph["A-256"])
    assert (a.lr, a.epochs, a.init) == (1e-2, 74, "gaussian")
    jittered = train_config(config, graph["E-256-512"])
    assert (jittered.scale_min, jittered.scale_max, jittered.check_scale) == (256, 512, 384)


def test_every_stage_comes_after_the_stages_it_needs(source):
    stages = plan(workflow_recipe("paper", [f"data={source}"]))
    seen: set[str] = set()
    for stage in stages:
        assert set(stage.needs) <= seen, stage.key
        seen.add(stage.key)
    by_key = {s.key: s for s in stages}
    assert by_key["train/B-256"].needs == ("preprocess", "train/A-256")
    assert by_key["ensemble"].needs == ("preprocess", "train/D-256-512", "train/E-256-512")
    assert set(by_key["tables"].needs) == {k for k in by_key if k.startswith("evaluate/")} | {
        "ensemble"
    }
    assert len({s.run_name for s in stages}) == len(stages)


def test_fingerprints_change_with_settings_and_flow_downstream(source):
    before = _fingerprints(source)
    assert before == _fingerprints(source)  # stable: a rerun finds its stages

    # Hardware does not change what a net learns: nothing is run again.
    assert _fingerprints(source, "train_overrides=num_workers=16,use_gpu=false") == before

    longer = _fingerprints(source, "base_epochs=80")
    assert longer["preprocess"] == before["preprocess"]
    changed = {key for key in before if longer[key] != before[key]}
    # Every net descends from A at the base scale, so all of them and all that
    # follows change; only the data is reused.
    assert changed == set(before) - {"preprocess"}

    finetune = _fingerprints(source, "finetune_epochs=3")
    changed = {key for key in before if finetune[key] != before[key]}
    assert "train/A-256" not in changed and "train/D-256" not in changed
    assert {"train/D-384", "train/D-256-512", "evaluate/D-384", "ensemble", "tables"} <= changed

    other_ensemble = _fingerprints(source, "ensemble=D-384,E-384")
    changed = {key for key in before if other_ensemble[key] != before[key]}
    assert changed == {"ensemble", "tables"}

    smaller = _fingerprints(source, "max_short_side=384")
    assert smaller["preprocess"] != before["preprocess"]


def _train_fingerprints(fingerprints: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in fingerprints.items() if key.startswith("train/")}


@pytest.mark.parametrize(
    "hardware", ["micro_batch_size=64", "num_workers=16", "num_workers=4,micro_batch_size=32"]
)
def test_memory_and_worker_settings_reuse_every_trained_net(source, hardware):
    before = _train_fingerprints(_fingerprints(source))
    assert _train_fingerprints(_fingerprints(source, f"train_overrides={hardware}")) == before


def test_a_learning_rate_trains_every_net_again(source):
    before = _train_fingerprints(_fingerprints(source))
    after = _train_fingerprints(_fingerprints(source, "train_overrides=lr=0.02"))
    assert all(after[key] != before[key] for key in before)


def test_evaluation_hardware_reuses_evaluations_and_the_grid_does_not(source):
    def evaluations(*overrides):
        fingerprints = _fingerprints(source, *overrides)
        return {k: v for k, v in fingerprints.items() if k.startswith("evaluate/")} | {
            "ensemble": fingerprints["ensemble"]
        }

    before = evaluations()
    assert evaluations("eval_overrides=batch_size=8,workers=4") == before
    after = evaluations("eval_overrides=grid=3")
    assert all(after[key] != before[key] for key in before)


def test_a_prepared_dataset_is_fingerprinted_by_its_manifest(tmp_path):
    prepared = tmp_path / "shards"
    prepared.mkdir()
    (prepared / "manifest.json").write_text('{"version": 1}')
    first = plan(workflow_recipe("smoke", [f"data={prepared}"]))[0]
    assert first.prepared and first.data == str(prepared)
    (prepared / "manifest.json").write_text('{"version": 2}')
    second = plan(workflow_recipe("smoke", [f"data={prepared}"]))[0]
    assert second.fingerprint != first.fingerprint


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["ensemble=D-256,Z-256"], "ensemble names nets not in the graph: Z-256"),
        (["from_a=B", "scale_configs=E"], "scale_configs must be configs trained at base_scale"),
        (["from_a=A,B"], "from_a must be deeper configs than A"),
        (["train_overrides=num_workerz=2"], "unknown config field 'num_workerz'"),
        (["eval_overrides=grid=1"], "grid must be >= 2"),
        (["jitter_scale=512:256"], "jitter_scale must be Smin:Smax with Smin < Smax"),
        (["protocols=dense,sparse"], "protocols must be one or more of"),
    ],
)
def test_bad_settings_fail_before_any_work(source, overrides, message):
    with pytest.raises(ConfigError, match=message):
        plan(workflow_recipe("paper", [f"data={source}", *overrides]))


def test_missing_data_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        plan(workflow_recipe("paper", [f"data={tmp_path / 'nowhere'}"]))


def test_the_demo_trains_a_deep_net_from_a_and_from_random_weights():
    graph = {net.key: net for net in nets(workflow_recipe("demo"))}
    assert graph["D-72"].start == "A-72" and graph["D-72"].start_mode == "init_from"
    assert graph["D-72-random"].config == "D" and graph["D-72-random"].start is None
    assert graph["D-72-144"].start == "D-108"


def test_stages_share_the_cluster_only_when_their_resources_fit(source):
    stages = {s.key: s for s in plan(workflow_recipe("demo", [f"data={source}"]))}
    cluster = {"CPU": 2.0}
    train = stages["train/D-72"].resources(cluster)
    assert train == {"CPU": 2 * 0.5 + 0.5}
    evaluate = stages["evaluate/D-72"].resources(cluster)
    assert evaluate == {"CPU": 2.0}
    assert fits(train, {}, cluster)
    assert not fits(train, train, cluster)  # two demo trainings would oversubscribe 2 CPUs
    gpu = {s.key: s for s in plan(workflow_recipe("paper", [f"data={source}"]))}
    needs = gpu["train/B-256"].resources({"CPU": 64.0, "GPU": 8.0})
    assert needs["GPU"] == 4.0 and fits(needs, needs, {"CPU": 64.0, "GPU": 8.0})
    assert not fits(needs, {"GPU": 6.0}, {"CPU": 64.0, "GPU": 8.0})


def _row(net, protocol, scale_set, top1, members=None, **extra):
    return {
        "net": net,
        "members": members or [net],
        "protocol": protocol,
        "scale_set": scale_set,
        "test_scales": "36" if scale_set == "single" else "32,36,40",
        "train_scale": extra.get("train_scale", "36"),
        "top1_error": top1,
        "top5_error": top1 / 4,
    }


def test_combined_tables_put_the_net_from_a_beside_the_same_net_from_random():
    base = (36, 36)
    graph = [
        Net("A-36", "A", base, None, None, "base"),
        Net("D-36-random", "D", base, None, None, "base"),
        Net("D-36", "D", base, "A-36", "init_from", "base"),
    ]
    inputs = {
        f"evaluate/{net}": {
            "rows": [
                _row(net, protocol, scale_set, top1 + offset)
                for protocol, offset in (("dense", 0.0), ("multi-crop", 1.0))
                for scale_set in ("single", "multi")
            ]
        }
        for net, top1 in (("A-36", 10.0), ("D-36-random", 40.0), ("D-36", 5.0))
    }
    inputs["ensemble"] = {
        "rows": [
            _row("A-36", "dense", "multi", 10.0, members=["A-36", "D-36"]),
            _row("ensemble", "dense", "multi", 4.5, members=["A-36", "D-36"]),
        ]
    }
    tables = combined_tables(graph, inputs)
    single = tables.split("### ")[1]
    lines = [line for line in single.splitlines() if line.startswith("| ")][1:]
    assert [line.split("|")[1].strip() for line in lines] == ["A-36", "D-36-random", "D-36"]
    assert "| D-36        | D      | A-36             | 36      | 36     | 5.00" in single
    assert "| D-36-random | D      | random           | 36      | 36     | 40.00" in single
    assert "Several test scales" in tables and "Dense against multi-crop" in tables
    assert "multi-crop | 2.00" not in tables  # no row was invented
    assert "| A-36 + D-36 |" in tables and "4.50" in tables


def test_registry_names_are_what_mlflow_accepts():
    from pipeline.train.config import TrainConfig
    from pipeline.workflow import net_alias

    alias = net_alias("paper run.v2", "D-256:512")
    assert alias == "paper_run_v2-D-256_512"
    assert TrainConfig(register_as=f"vgg-D@{alias}").registered_model == ("vgg-D", alias)
    assert TrainConfig(register_as="vgg-D").registered_model == ("vgg-D", None)
    for bad in ("vgg-D@latest", "vgg-D@v2", "vgg/D", "vgg-D@my alias", "vgg-D@"):
        with pytest.raises(ConfigError, match="register_as"):
            TrainConfig(register_as=bad)
