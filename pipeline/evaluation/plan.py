"""The evaluation's plan: the rows of the table, and the (net, Q, view)
posteriors they need.

For each net (and for the ensemble of all of them, if asked) one row per scale
set and protocol, laid out like the paper's Tables 3 to 6. A protocol is an
average of views (PAPER.md section 3); a view's posteriors are computed once per
(net, Q) and shared by every row that needs them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.errors import ConfigError
from pipeline.evaluation.nets import TORCHVISION_ASSUMED_S, EvaluatedModel

if TYPE_CHECKING:
    from pipeline.evaluation.config import EvaluateConfig

# The views each protocol averages (keys: `config.EVALUATION_PROTOCOLS`).
PROTOCOL_VIEWS: dict[str, tuple[str, ...]] = {
    "centre": ("centre",),
    "dense": ("dense",),
    "multi-crop": ("multi-crop",),
    "dense+multi-crop": ("dense", "multi-crop"),
}


@dataclass(frozen=True)
class PlannedRow:
    members: tuple[int, ...]  # indices of the nets averaged (one, or the ensemble)
    scales: tuple[tuple[int, ...], ...]  # each member's test scales Q
    scale_set: str  # "single", "multi" or "explicit"
    protocol: str


def scales_for(
    model: EvaluatedModel, scale_set: str | tuple[int, ...], step: int
) -> tuple[int, ...]:
    """The Q of `scale_set` for `model`, derived from its training S as
    PAPER.md section 3 says (or given explicitly)."""
    from vgg.evaluation import multi_test_scales, single_test_scale

    if isinstance(scale_set, tuple):
        return scale_set
    low, high = model.train_scale or (TORCHVISION_ASSUMED_S, TORCHVISION_ASSUMED_S)
    if scale_set == "single":
        return (single_test_scale(low, high),)
    return multi_test_scales(low, high, step=step, crop_size=model.architecture.crop_size)


def plan_rows(models: Sequence[EvaluatedModel], config: EvaluateConfig) -> list[PlannedRow]:
    """Every net alone, then the ensemble if asked: one row per scale set and
    protocol, in the order of `config.scales` and `config.protocols`."""
    groups = [(i,) for i in range(len(models))]
    if config.ensemble:
        groups.append(tuple(range(len(models))))
    rows = []
    for members in groups:
        for scale_set in config.scale_sets:
            scales = tuple(scales_for(models[m], scale_set, config.scale_step) for m in members)
            for member, qs in zip(members, scales, strict=True):
                crop = models[member].architecture.crop_size
                if min(qs) < crop:
                    raise ConfigError(
                        f"scales must be >= the crop size ({crop}) of {models[member].label}; "
                        f"got {','.join(map(str, qs))}"
                    )
            name = scale_set if isinstance(scale_set, str) else "explicit"
            rows.extend(PlannedRow(members, scales, name, p) for p in config.protocols)
    return rows


def needed_views(rows: Iterable[PlannedRow]) -> dict[int, dict[int, set[str]]]:
    """Q -> net -> the views whose posteriors the rows need at that Q."""
    needs: dict[int, dict[int, set[str]]] = {}
    for row in rows:
        for member, scales in zip(row.members, row.scales, strict=True):
            for q in scales:
                needs.setdefault(q, {}).setdefault(member, set()).update(
                    PROTOCOL_VIEWS[row.protocol]
                )
    return needs


__all__ = ["PROTOCOL_VIEWS", "PlannedRow", "needed_views", "plan_rows", "scales_for"]
