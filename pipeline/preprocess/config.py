"""The preprocessing stage's config: how source images become shards. Each
field says whether it changes the output (`pipeline.config.option`); a rerun
whose fingerprinted fields match a finished manifest does nothing."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import ConfigError, Serialised, option


@dataclass(frozen=True)
class PreprocessConfig(Serialised):
    # Pixels: the shorter side is shrunk to at most this, never enlarged
    max_short_side: int = option(512, fingerprint=True)
    jpeg_quality: int = option(90, fingerprint=True)  # Pillow JPEG quality for re-encoded images
    # Most rows per shard; a split's shards differ by at most one row
    shard_rows: int = option(1000, fingerprint=True)
    seed: int = option(0, fingerprint=True)  # fixes the order of rows across shards
    # Fraction of the source's images that may be rejected (undecodable or
    # unlabelled) before the run fails; ImageNet itself has none that are.
    max_rejected_fraction: float = option(0.01, fingerprint=False)
    # Training images sampled for the colour statistics: at this size the
    # standard error of a channel mean is well under one grey level.
    stats_images: int = option(10_000, fingerprint=True)

    def __post_init__(self) -> None:
        if not 16 <= self.max_short_side <= 65_535:
            raise ConfigError(f"max_short_side must be 16-65535 pixels, not {self.max_short_side}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be 1-100, not {self.jpeg_quality}")
        if self.shard_rows < 1:
            raise ConfigError(f"shard_rows must be at least 1, not {self.shard_rows}")
        if self.seed < 0:
            raise ConfigError(f"seed must be 0 or more, not {self.seed}")
        if not 0 <= self.max_rejected_fraction <= 1:
            raise ConfigError(
                f"max_rejected_fraction must be between 0 and 1, not {self.max_rejected_fraction}"
            )
        if self.stats_images < 1:
            raise ConfigError(f"stats_images must be at least 1, not {self.stats_images}")

    def shaping(self) -> dict[str, int]:
        """The parameters that shape the output: a rerun with the same ones does nothing."""
        return self.fingerprint_dict()
