"""Storage tiers: the resolutions Tally aggregates into, their retention and partitioning.

Every tier's buckets are aligned to the Unix epoch (UTC), and each resolution divides the
next coarser one, so a coarse bucket is exactly the union of the finer buckets it rolls up
from (1s -> 10s -> 1m -> 1h -> 1d).  ``partition_seconds`` is the time span of one
Cassandra partition (tenant, series, partition start): it keeps every partition at a
bounded number of rows (at most 8640) however long a series lives.  Partitions are
fixed-width epoch-aligned spans too - the 1d tier's "year" is 365 days, not a calendar
year - so a partition start is pure arithmetic, no calendar or time zone involved.

All times are integer epoch milliseconds.
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass
from typing import Mapping, Sequence

__all__ = [
    "DEFAULT_TIERS",
    "Tier",
    "bucket_start_ms",
    "parent_of",
    "partition_start_ms",
    "tier_by_name",
    "tiers_with_retention",
]

_DAY_SECONDS = 86_400


@dataclass(frozen=True)
class Tier:
    """One resolution: bucket width, how long buckets are kept, and partition span."""

    name: str
    resolution_seconds: int
    retention_days: int
    partition_seconds: int

    def __post_init__(self) -> None:
        for field in ("resolution_seconds", "retention_days", "partition_seconds"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(
                    f"tier {self.name!r}: {field} must be a positive int, got {value!r}"
                )
        # A bucket straddling two partitions would have no single row to live in.
        if self.partition_seconds % self.resolution_seconds:
            raise ValueError(
                f"tier {self.name!r}: partition_seconds {self.partition_seconds} is not a "
                f"multiple of resolution_seconds {self.resolution_seconds}"
            )

    @property
    def resolution_ms(self) -> int:
        """Bucket width in milliseconds."""
        return self.resolution_seconds * 1000

    @property
    def partition_ms(self) -> int:
        """Partition span in milliseconds."""
        return self.partition_seconds * 1000

    @property
    def retention_seconds(self) -> int:
        """Retention in seconds, e.g. for a Cassandra ``default_time_to_live``."""
        return self.retention_days * _DAY_SECONDS


DEFAULT_TIERS: tuple[Tier, ...] = (
    Tier("1s", 1, 7, 3_600),
    Tier("10s", 10, 30, _DAY_SECONDS),
    Tier("1m", 60, 180, _DAY_SECONDS),
    Tier("1h", 3_600, 730, 30 * _DAY_SECONDS),
    Tier("1d", _DAY_SECONDS, 1_825, 365 * _DAY_SECONDS),
)


def bucket_start_ms(time_ms: int, tier: Tier) -> int:
    """Start of the ``tier`` bucket containing ``time_ms`` (floor, also before 1970)."""
    time_ms = operator.index(time_ms)  # floats would silently misalign; reject them
    return time_ms - time_ms % tier.resolution_ms


def partition_start_ms(time_ms: int, tier: Tier) -> int:
    """Start of the ``tier`` partition containing ``time_ms``; buckets never straddle one."""
    time_ms = operator.index(time_ms)
    return time_ms - time_ms % tier.partition_ms


def tier_by_name(name: str, tiers: Sequence[Tier] = DEFAULT_TIERS) -> Tier:
    """Return the tier called ``name``; KeyError naming the known tiers otherwise."""
    for tier in tiers:
        if tier.name == name:
            return tier
    known = ", ".join(tier.name for tier in tiers)
    raise KeyError(f"unknown tier {name!r}; known tiers: {known}")


def parent_of(tier: Tier, tiers: Sequence[Tier] = DEFAULT_TIERS) -> Tier | None:
    """Return the finer tier that ``tier`` rolls up from, or None for the finest tier.

    ``tiers`` is ordered finest first; matching is by name, so tiers with overridden
    retention work too.
    """
    names = [t.name for t in tiers]
    if tier.name not in names:
        raise KeyError(f"unknown tier {tier.name!r}; known tiers: {', '.join(names)}")
    index = names.index(tier.name)
    return tiers[index - 1] if index > 0 else None


def tiers_with_retention(
    overrides: Mapping[str, int], tiers: Sequence[Tier] = DEFAULT_TIERS
) -> tuple[Tier, ...]:
    """Return ``tiers`` with retention_days replaced per tier name in ``overrides``.

    Unknown tier names raise KeyError (a typo must not silently keep the default) and
    non-positive retentions raise ValueError.
    """
    known = {tier.name for tier in tiers}
    unknown = sorted(set(overrides) - known)
    if unknown:
        names = ", ".join(tier.name for tier in tiers)
        raise KeyError(
            f"unknown tier(s) {', '.join(unknown)} in retention overrides; known tiers: {names}"
        )
    return tuple(
        dataclasses.replace(tier, retention_days=overrides[tier.name])
        if tier.name in overrides
        else tier
        for tier in tiers
    )
