"""The paper's tables 3-6 over the workflow's nets, from the rows its
evaluation stages returned, written through the one table writer
(`pipeline.tables`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pipeline.tables import markdown
from pipeline.workflow.graph import Net

ERRORS = ("top-1", "top-5")  # percent


def _errors(row: Mapping) -> list[str]:
    return [f"{row['top1_error']:.2f}", f"{row['top5_error']:.2f}"]


def _widest(rows: Sequence[Mapping]) -> str:
    """The paper compares protocols and ensembles at its best setting: several
    test scales, where they were measured."""
    return "multi" if any(r["scale_set"] == "multi" for r in rows) else "single"


def _section(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return f"### {title}\n\n" + markdown(header, rows).rstrip("\n")


def combined_tables(nets: Sequence[Net], inputs: Mapping[str, Mapping]) -> str:
    """The paper's tables 3-6 over the workflow's `nets`: single test scale,
    several test scales, dense against multi-crop, the ensemble. Errors in %.
    `inputs` are the outputs of the evaluation stages, each with its rows."""
    by_key = {net.key: net for net in nets}
    order = {net.key: i for i, net in enumerate(nets)}
    rows = [row for outputs in inputs.values() for row in outputs["rows"]]
    per_net = [row for row in rows if row["net"] != "ensemble" and len(row["members"]) == 1]
    protocols = list(dict.fromkeys(row["protocol"] for row in per_net))
    main = "dense" if "dense" in protocols else (protocols[0] if protocols else "")

    sections = []
    for scale_set, title in (
        ("single", "Single test scale (Table 3): Q = S, or the middle of [Smin; Smax]"),
        ("multi", "Several test scales, posteriors averaged (Table 4)"),
    ):
        chosen = sorted(
            (r for r in per_net if r["scale_set"] == scale_set and r["protocol"] == main),
            key=lambda r: order[r["net"]],
        )
        if chosen:
            nets_of = [by_key[r["net"]] for r in chosen]
            sections.append(
                _section(
                    f"{title}; {main} evaluation",
                    ["net", "config", "initialised from", "train S", "test Q", *ERRORS],
                    [
                        [n.key, n.config, n.initialised_from, n.train_scale, r["test_scales"]]
                        + _errors(r)
                        for n, r in zip(nets_of, chosen, strict=True)
                    ],
                )
            )
    if len(protocols) > 1:
        widest = _widest(per_net)
        chosen = sorted(
            (r for r in per_net if r["scale_set"] == widest),
            key=lambda r: (order[r["net"]], protocols.index(r["protocol"])),
        )
        nets_of = [by_key[r["net"]] for r in chosen]
        sections.append(
            _section(
                f"Dense against multi-crop evaluation (Table 5); {widest} test scale(s)",
                ["net", "config", "train S", "test Q", "protocol", *ERRORS],
                [
                    [n.key, n.config, n.train_scale, r["test_scales"], r["protocol"]] + _errors(r)
                    for n, r in zip(nets_of, chosen, strict=True)
                ],
            )
        )
    ensemble = [row for row in rows if len(row["members"]) > 1]
    widest = _widest(ensemble)
    ensemble = [row for row in ensemble if row["scale_set"] == widest]
    if ensemble:
        sections.append(
            _section(
                f"Ensemble: posteriors of the nets averaged (Table 6); {widest} test scale(s)",
                ["nets", "train S", "test Q", "protocol", *ERRORS],
                [
                    [
                        r["net"] if r["net"] != "ensemble" else " + ".join(r["members"]),
                        r["train_scale"],
                        r["test_scales"],
                        r["protocol"],
                    ]
                    + _errors(r)
                    for r in ensemble
                ],
            )
        )
    return "\n\n".join(sections) + "\n"


__all__ = ["combined_tables"]
