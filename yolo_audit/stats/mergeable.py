"""The one protocol every streaming statistic follows (as in torchmetrics): `update` with a batch, `merge` two states
into a new one equal to a single pass over both inputs, `compute` the results. States are sums, never means, so data
shards merge exactly, in any grouping."""

from __future__ import annotations

from typing import Any, Protocol, TypeVar, runtime_checkable

S = TypeVar("S", bound="Mergeable")


@runtime_checkable
class Mergeable(Protocol):
    def update(self, batch: Any) -> None: ...

    def merge(self: S, other: S) -> S: ...

    def compute(self) -> Any: ...
