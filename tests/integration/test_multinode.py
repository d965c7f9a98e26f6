"""A two-node Ray cluster on this machine (two real raylets, `ray.cluster_utils`)
trains with one worker on each node. It runs in its own driver process because
the test session's own Ray instance is already connected in this one."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

DRIVER = textwrap.dedent(
    """
    import json, sys
    import ray
    from ray.cluster_utils import Cluster
    from pipeline.recipes import recipe
    from pipeline.train import train

    data, root = sys.argv[1], sys.argv[2]
    # 2 CPUs a node and 1.5 a worker: only one worker fits on each node, while
    # Ray Data's decode tasks (0.25 CPU) still find room beside it.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        config = recipe("smoke", [
            f"data={data}", f"storage_path={root}/runs", f"tracking_uri=sqlite:///{root}/mlflow.db",
            "run_name=two-nodes", "num_workers=2", "global_batch_size=32",
            "cpus_per_worker=1.5", "data_cpus_per_task=0.25", "epochs=1",
        ])
        result = train(config)
        print("RESULT " + json.dumps({"cluster_nodes": len(ray.nodes()), **result.metrics}))
    finally:
        ray.shutdown()
        cluster.shutdown()
    """
)


@pytest.mark.extra  # minutes here: make test-extra, which .ci/run runs
def test_two_node_cluster_puts_one_worker_on_each_node(demo_shards, tmp_path):
    completed = subprocess.run(
        [sys.executable, "-c", DRIVER, demo_shards, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert completed.returncode == 0 and lines, completed.stderr[-3000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["cluster_nodes"] == 2
    # The training loop gathers its workers' node ids and reports how many differ.
    assert result["nodes"] == 2
