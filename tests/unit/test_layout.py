"""The package layout the architecture promises: every config field says
whether it changes a result, `import pipeline` stays light, the stage packages
are modules with their functions one attribute away, and the module graph has
no cycles and no oversized rooms."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import FINGERPRINT, fingerprint_fields
from pipeline.evaluation.config import EvaluateConfig
from pipeline.preprocess.config import PreprocessConfig
from pipeline.train.config import TrainConfig
from pipeline.tune.config import TuneConfig
from pipeline.workflow.config import WorkflowConfig

REPO = Path(__file__).resolve().parents[2]
STAGE_CONFIGS = (TrainConfig, EvaluateConfig, TuneConfig, WorkflowConfig, PreprocessConfig)
MOST_LINES = 450


@pytest.mark.parametrize("config", STAGE_CONFIGS, ids=lambda c: c.__name__)
def test_every_config_field_carries_the_fingerprint_mark(config):
    unmarked = [f.name for f in dataclasses.fields(config) if f.metadata.get(FINGERPRINT) is None]
    assert unmarked == []


def test_memory_and_hardware_settings_do_not_change_a_result_the_recipe_does():
    train = set(fingerprint_fields(TrainConfig))
    assert {"micro_batch_size", "num_workers", "use_gpu", "run_name", "storage_path"} <= (
        {f.name for f in dataclasses.fields(TrainConfig)} - train
    )
    assert {"lr", "config", "scale_min", "scale_max", "seed", "colour_shift_std"} <= train
    evaluate = set(fingerprint_fields(EvaluateConfig))
    assert {"protocols", "scales", "grid", "limit", "predictions"} <= evaluate
    assert not {"batch_size", "workers", "output"} & evaluate
    assert "max_rejected_fraction" not in fingerprint_fields(PreprocessConfig)


def _loaded_after(statement: str) -> list[str]:
    code = f"import sys; {statement}; print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return eval(out.stdout)  # a printed list of str literals


def test_import_pipeline_its_configs_and_the_cli_load_no_torch_ray_or_mlflow():
    assert _loaded_after("import pipeline") == []
    assert (
        _loaded_after(
            "import pipeline.train.config, pipeline.evaluation.config, pipeline.tune.config, "
            "pipeline.workflow.config, pipeline.preprocess.config, pipeline.recipes, pipeline.cli; "
            "pipeline.cli.build_parser()"
        )
        == []
    )


def test_stage_packages_are_modules_with_their_function_one_attribute_away():
    code = (
        "import types, pipeline.train, pipeline.evaluation, pipeline.tune, pipeline.workflow, "
        "pipeline.preprocess; "
        "assert all(isinstance(m, types.ModuleType) for m in (pipeline.train, pipeline.evaluation, "
        "pipeline.tune, pipeline.workflow, pipeline.preprocess)); "
        "assert all(callable(f) for f in (pipeline.train.train, pipeline.evaluation.evaluate, "
        "pipeline.tune.tune, pipeline.workflow.run, pipeline.preprocess.preprocess))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr


def _modules() -> dict[str, Path]:
    found = {}
    for package in ("pipeline", "vgg"):
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _top_level_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports when it is imported: module-level
    statements only (an import inside a function runs when called)."""
    imported = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        imported |= {name for name in names if name in modules}
    return imported


def test_no_import_cycles_among_the_projects_modules():
    modules = _modules()
    graph = {name: _top_level_imports(path, modules) for name, path in modules.items()}
    visiting, done = [], set()

    def visit(name: str) -> None:
        if name in done:
            return
        assert name not in visiting, "import cycle: " + " -> ".join([*visiting, name])
        visiting.append(name)
        for imported in graph[name] - {name}:
            # A package's __init__ importing its own submodules is no cycle.
            if not imported.startswith(name + "."):
                visit(imported)
        visiting.pop()
        done.add(name)

    for name in graph:
        visit(name)


def test_no_module_is_over_the_line_budget():
    long = {
        str(path.relative_to(REPO)): lines
        for path in _modules().values()
        if (lines := len(path.read_text().splitlines())) > MOST_LINES
    }
    assert long == {}
