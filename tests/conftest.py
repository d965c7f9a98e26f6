"""Shared fixtures: one local Ray instance per test session, started only when a
test asks for it, so unit tests never pay Ray's start-up."""

from __future__ import annotations

import os
import tempfile

import pytest

from pipeline.cli.workflow import DEMO_HEALTH_CHECK_SECONDS

# What `import pipeline` sets (see pipeline/__init__.py), for test modules that
# import mlflow before pipeline.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# Ray's temp folder of this test session, inherited by every process it starts:
# `ray.init()` with no address joins the cluster that <temp>/ray_current_cluster
# names, and one a crashed run left in /tmp/ray would capture (and hang) every
# `vggpipe` the tests start. Short, because Ray's socket paths must fit in 107
# bytes. Left in place: .ci/ray-log-digest reads its logs after a failed run.
# One per process: pytest-xdist's workers each run their own Ray.
if "RAY_TMPDIR" not in os.environ or os.environ.get("VGGPIPE_TESTS_SET_RAY_TMPDIR"):
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="vggpipe-ray-", dir="/tmp")
    os.environ["VGGPIPE_TESTS_SET_RAY_TMPDIR"] = "1"

# Ray Train's controller polls its workers every 2 s by default, at the start and
# the end of every training run: seconds per run that the suite's many
# seconds-long runs (and the commands they start, which inherit this) need not
# pay. The same setting `vggpipe demo` uses.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", DEMO_HEALTH_CHECK_SECONDS)

from tests.ray_head import ray_head  # noqa: F401 (a fixture: a Ray head with the Jobs API)
from tests.smoke_workflow import (  # noqa: F401 (fixtures: the finished smoke workflow, its store)
    smoke_workflow,
    smoke_workflow_store,
)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance shared by every test of the session.

    Two CPUs match this project's machines; the dashboard is off because the
    tests never read it and it costs a process and a port.
    """
    import ray

    # Tests must never join a cluster a developer happens to have exported.
    os.environ.pop("RAY_ADDRESS", None)
    if not ray.is_initialized():
        # "local": a fresh instance even when a `ray start` head runs on this
        # machine (the Jobs API test starts one), never that head.
        ray.init(
            address="local",
            num_cpus=int(os.environ.get("VGGPIPE_TEST_RAY_CPUS", "2")),
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def new_store(tmp_path_factory):
    """Makes a fresh folder holding a SQLite MLflow store: `new_store(name)`
    gives (folder, tracking URI). Module fixtures share one; tests that must
    not see others' runs make their own."""

    def make(name: str):
        root = tmp_path_factory.mktemp(name)
        return root, f"sqlite:///{root / 'mlflow.db'}"

    return make


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory, ray_local) -> str:
    """The demo data set (all 1,797 digits, 10 classes) preprocessed once per
    session into shards of 500 rows with short sides up to 128: several shards
    and record batches per split, so ingest tests see real boundaries."""
    from pipeline.demo_data import make_demo_data
    from pipeline.preprocess import preprocess

    root = tmp_path_factory.mktemp("demo")
    make_demo_data(root / "source")
    output = str(root / "shards")
    preprocess(str(root / "source"), output, max_short_side=128, shard_rows=500, progress=False)
    return output


def pytest_addoption(parser):
    parser.addoption(
        "--chaos-rounds", type=int, default=1,
        help="rounds of tests/chaos (kill a command at a random point, run it again); "
        "make test runs 1",
    )  # fmt: skip
    parser.addoption("--chaos-seed", default="0", help="seed of the chaos rounds' draws")
