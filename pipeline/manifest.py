"""The description of a prepared dataset (`manifest.json`): its splits and
shards with their checksums, classes, rejected images and pixel statistics.
`pipeline.shards.ShardStore.manifest()` reads it (and checks what it names)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.errors import ConfigError

FORMAT = "vggpipe-shards"
# Version 2 added the per-row checksum column; version 1 shards (without it)
# are still read, their rows unchecked.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


@dataclass(frozen=True)
class ShardInfo:
    split: str
    path: str  # relative to the output root
    rows: int
    sha256: str  # of the whole file
    bytes: int


@dataclass(frozen=True)
class ClassEntry:
    index: int
    wnid: str
    name: str  # "" when the source names no classes


@dataclass(frozen=True)
class Rejection:
    split: str
    key: str
    reason: str


@dataclass(frozen=True)
class ColourStatistics:
    """Pixel statistics of the training images, in 0-255 RGB units.

    `eigenvectors[i]` is the unit eigenvector of the RGB covariance that belongs
    to `eigenvalues[i]`; eigenvalues are in decreasing order. The paper's colour
    shift (from AlexNet) adds `sum_i alpha_i * eigenvalues[i] * eigenvectors[i]`.
    """

    images: int  # images sampled
    pixels: int  # pixels those images hold
    sample: str  # how the images were chosen
    mean_rgb: list[float]
    std_rgb: list[float]
    eigenvalues: list[float]
    eigenvectors: list[list[float]]


@dataclass
class SplitInfo:
    rows: int
    shards: list[ShardInfo]


@dataclass
class Manifest:
    """The single description of a prepared dataset (`manifest.json`)."""

    source: dict[str, Any]  # uri, layout, where validation labels came from
    params: dict[str, Any]  # the preprocessing parameters that shaped the shards
    splits: dict[str, SplitInfo]
    classes: list[ClassEntry]
    rejected: list[Rejection]
    statistics: ColourStatistics | None
    software: dict[str, str] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    def require_scale(self, scale: int, field_name: str, data: str) -> None:
        """Refuse a training or test scale above the short side the shards keep:
        the images would be upsampled from what preprocessing shrank them to,
        silently training or testing on blurred pixels. (An image that was
        smaller than that in the original is fine: the paper upsamples those.)"""
        stored = self.params.get("max_short_side")
        if stored is not None and scale > stored:
            raise ConfigError(
                f"{field_name} {scale} is above the {stored}-pixel short side that {data} "
                f"stores (its max_short_side); preprocess again with max_short_side >= {scale}"
            )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        if raw.get("format") != FORMAT or raw.get("format_version") not in READABLE_VERSIONS:
            raise ValueError(
                f"not a {FORMAT} manifest of version {' or '.join(map(str, READABLE_VERSIONS))} "
                f"(format {raw.get('format')!r}, version {raw.get('format_version')!r})"
            )
        statistics = raw.get("statistics")
        return cls(
            source=raw["source"],
            params=raw["params"],
            splits={
                split: SplitInfo(
                    rows=info["rows"], shards=[ShardInfo(**shard) for shard in info["shards"]]
                )
                for split, info in raw["splits"].items()
            },
            classes=[ClassEntry(**entry) for entry in raw["classes"]],
            rejected=[Rejection(**entry) for entry in raw["rejected"]],
            statistics=ColourStatistics(**statistics) if statistics else None,
            software=raw.get("software", {}),
        )
