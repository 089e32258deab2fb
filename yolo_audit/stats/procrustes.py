"""Angular Procrustes distance between representations (Williams et al. 2021, "Generalized shape metrics on neural
representations"), streamed: no feature is kept.

For X (N, d_x) and Y (N, d_y), each centred per feature over all N images and scaled to unit Frobenius norm, the
distance is arccos(||X^T Y||_*) in radians (0: the same up to a rotation and scale; pi/2: nothing shared). What is
kept per representation is its image count, its feature means and its centred sum of squares; per compared pair, the
centred co-moment X_c^T Y_c (d_x, d_y). Batches and shards fold in with Chan's pairwise formulas (each group's own
centred moments plus a correction for the distance between the means), so the result is exact for any batching and
sharding, and a near-constant feature keeps its tiny spread (no uncentred sums to subtract).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Moments:
    """One representation's images: count, feature means (d,), centred sum of squares over all features."""

    n: int
    mean: torch.Tensor
    m2: torch.Tensor  # 0-d float64

    @classmethod
    def of(cls, x: torch.Tensor) -> Moments:
        x = x.double()
        mean = x.mean(0)
        return cls(x.shape[0], mean, (x - mean).pow(2).sum())

    def merge(self, other: Moments) -> Moments:
        n = self.n + other.n
        delta = other.mean - self.mean
        m2 = self.m2 + other.m2 + delta.pow(2).sum() * (self.n * other.n / n)
        return Moments(n, self.mean + delta * (other.n / n), m2)


@dataclass
class ProcrustesState:
    """Streaming state for the listed pairs (p, q) of P representations."""

    pairs: list[tuple[int, int]]
    moments: dict[int, Moments]
    comoments: dict[tuple[int, int], torch.Tensor]  # (d_p, d_q) centred X^T Y

    @classmethod
    def empty(cls, pairs: list[tuple[int, int]]) -> ProcrustesState:
        return cls(list(pairs), {}, {})

    def update(self, features: list[torch.Tensor]) -> None:
        """One batch: the (n, d) float64 features of every representation, in the state's fixed order. Folded in
        place: each co-moment gains the batch's own centred X^T Y plus the correction for the two means moving."""
        wanted = {i for pair in self.pairs for i in pair}
        batch = {i: Moments.of(features[i]) for i in wanted}
        centred = {i: features[i].double() - batch[i].mean for i in wanted}
        if not self.moments:
            self.moments = batch
            self.comoments = {(p, q): centred[p].T @ centred[q] for p, q in self.pairs}
            return
        for p, q in self.pairs:
            before, new = self.moments[p], batch[p]
            weight = before.n * new.n / (before.n + new.n)
            self.comoments[(p, q)].addmm_(centred[p].T, centred[q]).addr_(
                new.mean - before.mean, batch[q].mean - self.moments[q].mean, alpha=weight
            )
        self.moments = {i: self.moments[i].merge(batch[i]) for i in wanted}

    def merge(self, other: ProcrustesState) -> ProcrustesState:
        if not self.moments:
            return other
        if not other.moments:
            return self
        a, b = self.moments, other.moments
        comoments = {}
        for p, q in self.pairs:
            n = a[p].n + b[p].n
            dx, dy = b[p].mean - a[p].mean, b[q].mean - a[q].mean
            comoments[(p, q)] = (
                self.comoments[(p, q)] + other.comoments[(p, q)] + torch.outer(dx, dy) * (a[p].n * b[p].n / n)
            )
        return ProcrustesState(self.pairs, {i: a[i].merge(b[i]) for i in a}, comoments)

    def to(self, device: torch.device | str) -> ProcrustesState:
        return ProcrustesState(
            self.pairs,
            {i: Moments(m.n, m.mean.to(device), m.m2.to(device)) for i, m in self.moments.items()},
            {k: v.to(device) for k, v in self.comoments.items()},
        )

    def compute(self) -> dict[tuple[int, int], float | None]:
        """Angular Procrustes distance of every pair, in radians; None where a side does not vary."""
        out: dict[tuple[int, int], float | None] = {}
        for p, q in self.pairs:
            mp, mq = self.moments.get(p), self.moments.get(q)
            if mp is None or mq is None or float(mp.m2) <= 0 or float(mq.m2) <= 0:
                out[(p, q)] = None
                continue
            nuclear = torch.linalg.svdvals(self.comoments[(p, q)]).sum() / torch.sqrt(mp.m2 * mq.m2)
            out[(p, q)] = math.acos(min(1.0, max(-1.0, float(nuclear))))
        return out
