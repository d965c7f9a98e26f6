"""The evaluation's results: the table as the paper prints it (config,
training S, test Q, protocol, top-1 and top-5 error), written as Markdown, CSV
and JSON through `pipeline.tables`, and each image's top-5 classes as Parquet.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import tables
from pipeline.evaluation.nets import EvaluatedModel
from pipeline.evaluation.plan import PlannedRow

if TYPE_CHECKING:
    from pipeline.evaluation.config import EvaluateConfig
    from pipeline.evaluation.worker import ShareResult


@dataclass(frozen=True)
class TableRow:
    """One line of the paper's tables: errors in percent, as it prints them."""

    model: str
    config: str
    train_scale: str  # S: "256" or "[256;512]"; "-" when unknown
    test_scales: str  # Q: "256" or "256,384,512"
    protocol: str
    top1_error: float  # percent
    top5_error: float  # percent
    images: int
    scale_set: str  # "single", "multi" or "explicit"
    run_id: str | None = None  # where its metrics went

    def metric_prefix(self) -> str:
        """`eval/<protocol>/Q<scales>`: MLflow names allow no '+' or ','."""
        protocol = self.protocol.replace("+", "_and_")
        return f"eval/{protocol}/Q{self.test_scales.replace(',', '-').replace(' / ', '_')}"


# (TableRow field, Markdown title); the CSV keeps every field under its own name.
TABLE_COLUMNS = (
    ("model", "model"),
    ("config", "config"),
    ("train_scale", "train S"),
    ("test_scales", "test Q"),
    ("protocol", "protocol"),
    ("top1_error", "top-1 err. (%)"),
    ("top5_error", "top-5 err. (%)"),
    ("images", "images"),
)
LEFT_ALIGNED = ("model", "protocol")


def _joined(values: Sequence[str]) -> str:
    """One value when the members agree, else each member's, as the paper's
    Table 3 writes '256 / 384 / [256;512]'."""
    return values[0] if len(set(values)) == 1 else " / ".join(values)


def table_rows(
    models: Sequence[EvaluatedModel],
    rows: Sequence[PlannedRow],
    counts: Sequence[tuple[int, int, int]],
) -> list[TableRow]:
    """The planned rows with their summed (top-1 errors, top-5 errors, images)."""
    table = []
    for row, (top1, top5, images) in zip(rows, counts, strict=True):
        members = [models[i] for i in row.members]
        table.append(
            TableRow(
                model=" + ".join(m.label for m in members),
                config="+".join(m.architecture.config for m in members),
                train_scale=_joined([m.scale_text for m in members]),
                test_scales=_joined([",".join(map(str, qs)) for qs in row.scales]),
                protocol=row.protocol,
                top1_error=100.0 * top1 / images if images else float("nan"),
                top5_error=100.0 * top5 / images if images else float("nan"),
                images=images,
                scale_set=row.scale_set,
                run_id=members[0].run_id if len(members) == 1 else None,
            )
        )
    return table


def markdown_table(rows: Sequence[TableRow]) -> str:
    """The table as the paper prints it: errors to two places, numbers right-aligned."""
    return tables.markdown(
        [title for _, title in TABLE_COLUMNS],
        [[getattr(row, name) for name, _ in TABLE_COLUMNS] for row in rows],
        numeric=[title for name, title in TABLE_COLUMNS if name not in LEFT_ALIGNED],
    )


def csv_table(rows: Sequence[TableRow]) -> str:
    """Every field of every row, errors to four places, no run id as an empty cell."""
    return tables.csv_text(
        [f.name for f in dataclasses.fields(TableRow)],
        [
            [f"{v:.4f}" if isinstance(v, float) else v for v in dataclasses.astuple(row)]
            for row in rows
        ],
    )


@dataclass
class EvaluationResult:
    """What `evaluate` returns: the table, where it was written and logged."""

    name: str  # the evaluation's name: its output folder and MLflow artifact folder
    rows: list[TableRow]
    models: list[EvaluatedModel]
    data: str
    images: int  # distinct images evaluated (each through every net, Q and view)
    output: Path
    files: dict[str, Path]  # "markdown", "csv", "json"
    run_ids: list[str] = field(default_factory=list)  # runs the results were logged on
    evaluation_run_id: str | None = None  # the new evaluation run, if one was made
    seconds: float = 0.0
    workers: int = 1
    dense_images: int = 0
    dense_passes: int = 0

    def markdown(self) -> str:
        return markdown_table(self.rows)

    def summary(self) -> str:
        lines = [
            f"Evaluated {len(self.models)} net(s) on {self.images:,} images of {self.data} "
            f"in {self.seconds:.1f} s ({self.workers} worker(s)).",
            "",
            self.markdown(),
        ]
        if self.dense_passes:
            lines.append(
                f"Dense evaluation: {self.dense_images:,} images in {self.dense_passes:,} forward "
                f"passes (images of equal rescaled size batched together: "
                f"{self.dense_images / self.dense_passes:.1f} per pass)."
            )
        lines += [f"  {kind:11s} {path}" for kind, path in self.files.items()]
        if self.run_ids:
            lines.append("Logged to MLflow run(s) " + ", ".join(self.run_ids))
        return "\n".join(lines)


def _json_document(
    result: EvaluationResult, config: EvaluateConfig, rows: Sequence[TableRow]
) -> dict:
    return {
        "name": result.name,
        "data": result.data,
        "split": config.split,
        "images": result.images,
        "config": config.to_dict(),
        "models": [
            {
                "label": m.label,
                "reference": m.reference,
                "source": m.source,
                "run_id": m.run_id,
                **dataclasses.asdict(m.architecture),
                "train_scale": m.scale_text,
            }
            for m in result.models
        ],
        "rows": [dataclasses.asdict(row) for row in rows],
        "seconds": result.seconds,
        "dense_images": result.dense_images,
        "dense_passes": result.dense_passes,
    }


def write_tables(
    folder: Path,
    result: EvaluationResult,
    config: EvaluateConfig,
    rows: Sequence[TableRow] | None = None,
) -> dict[str, Path]:
    """The table (or only `rows` of it) as table.md, table.csv and table.json in `folder`."""
    rows = result.rows if rows is None else rows
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "markdown": folder / "table.md",
        "csv": folder / "table.csv",
        "json": folder / "table.json",
    }
    files["markdown"].write_text(markdown_table(rows))
    files["csv"].write_text(csv_table(rows))
    files["json"].write_text(json.dumps(_json_document(result, config, rows), indent=1) + "\n")
    return files


def write_predictions(path: Path, rows: Sequence[TableRow], shares: Sequence[ShareResult]) -> Path:
    """Every image's top-5 classes under every row of the table, one line per
    (image, row): for error analysis, and for comparing nets image by image."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, list] = {
        k: [] for k in ("key", "label", "row", "model", "test_scales", "protocol", "top5")
    }
    for share in shares:
        for index, row in enumerate(rows):
            columns["key"] += share.keys
            columns["label"] += share.labels
            columns["row"] += [index] * len(share.keys)
            columns["model"] += [row.model] * len(share.keys)
            columns["test_scales"] += [row.test_scales] * len(share.keys)
            columns["protocol"] += [row.protocol] * len(share.keys)
            columns["top5"] += share.top5[index].tolist()
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


__all__ = [
    "TABLE_COLUMNS",
    "EvaluationResult",
    "TableRow",
    "csv_table",
    "markdown_table",
    "table_rows",
    "write_predictions",
    "write_tables",
]
