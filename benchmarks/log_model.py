"""What logging a net costs: `tracking.Run.log_model` (a model from code: the
`vgg` package, JSON arguments and safetensors weights, requirements named)
against what MLflow's PyTorch guide does (`mlflow.pytorch.log_model` with an
input example: torch.export, requirements inferred by loading the model in a
subprocess). Every training run logs two models, so the difference is paid
twice per run.

    python benchmarks/log_model.py            # wall-clock seconds per logged model, and the ratio
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="models logged each way")
    args = parser.parse_args(argv)

    import mlflow
    import mlflow.pytorch

    from pipeline import tracking
    from vgg import build_vgg

    with tempfile.TemporaryDirectory() as folder:
        run = tracking.start_run("log-model", "benchmark", uri=f"sqlite:///{folder}/mlflow.db")
        model = build_vgg("A", num_classes=10, width=0.0625, crop_size=32).eval()
        example = np.zeros((2, 3, 32, 32), dtype=np.float32)
        seconds = {"mlflow.pytorch (the guide's)": 0.0, "from code (tracking.Run.log_model)": 0.0}
        for repeat in range(args.repeats):
            start = time.perf_counter()
            with mlflow.start_run(run_id=run.run_id):
                mlflow.pytorch.log_model(model, name=f"pytorch-{repeat}", input_example=example)
            seconds["mlflow.pytorch (the guide's)"] += time.perf_counter() - start
            start = time.perf_counter()
            run.log_model(model, f"from-code-{repeat}")
            seconds["from code (tracking.Run.log_model)"] += time.perf_counter() - start
        run.end()
    per_model = {name: total / args.repeats for name, total in seconds.items()}
    for name, value in per_model.items():
        print(f"{name:32s} {value:6.2f} s per logged model (wall clock)")
    ratio = (
        per_model["mlflow.pytorch (the guide's)"] / per_model["from code (tracking.Run.log_model)"]
    )
    print(f"ratio mlflow.pytorch/from code: {ratio:.1f}x")
    return per_model | {"ratio": ratio}


if __name__ == "__main__":
    main()
