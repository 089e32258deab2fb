"""Linear CKA between many representations at once, from minibatch Gram matrices (Nguyen, Raghu & Kornblith 2021),
with its standard error and a chance baseline.

For each batch of n >= 4 images and every representation p (a layer of a checkpoint): features X_p (n, d) are
centred per feature over the batch (in float64: deep YOLO layers vary between images by 1e-5..1e-13 of their
energy, which uncentred or float32 products lose), K_p = X_p X_p^T with its diagonal zeroed, and for every pair
HSIC_1(K_p, K_q) = [sum(K_p * K_q) + (1'K_p 1)(1'K_q 1)/((n-1)(n-2)) - 2/(n-2) 1'K_p K_q 1] / (n(n-3)),
all pairs in one matrix product. The state holds sums over batches, so data shards merge exactly by adding them;
CKA(p, q) = S_pq / sqrt(S_pp S_qq), S = the sum over batches of HSIC.

Standard error: the jackknife over batches (leave one batch out), linearised so that nothing is kept per batch. With
h_b the batch's HSIC terms and c = CKA, leaving batch b out moves CKA by -u_b to first order, u_b =
h_pq/sqrt(S_pp S_qq) - c/2 (h_pp/S_pp + h_qq/S_qq), and sum_b u_b = 0; the jackknife variance (B-1)/B sum_b u_b^2
needs only the sums over batches of h_pq^2, h_pq h_pp and h_pp h_qq, which add up across shards like S does.

Chance: the same estimator with one side's images shuffled within each batch (a random n-cycle, seeded by the
batch's content, so no image meets itself or swaps with a partner; the same for any sharding): what CKA reads when
the two representations share no image, so a reader can tell noise from similarity.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields

import numpy as np
import torch

MIN_BATCH = 4
# HSIC(K, K) at or below this fraction of the layer's squared feature energy: it does not vary. float32 activations
# carry ~6e-8 relative rounding, a variance floor of ~4e-15 of the energy, so HSIC(K, K) of pure rounding noise is
# ~1e-29 of the energy squared; real layers whose between-image variance is 1e-13 of their energy sit at ~1e-26.
FLAT_FLOOR = 1e-28


def centred_gram(features: torch.Tensor) -> torch.Tensor:
    """(n, d) -> (n, n) float64 Gram of the per-feature-centred features, diagonal zeroed."""
    x = features.reshape(features.shape[0], -1).double()
    x = x - x.mean(0, keepdim=True)
    k = x @ x.T
    k.fill_diagonal_(0.0)
    return k


def hsic_matrix(grams: torch.Tensor, others: torch.Tensor | None = None) -> torch.Tensor:
    """Unbiased HSIC_1 of every pair of (P, n, n) zero-diagonal Gram matrices, a (P, P) float64 matrix; with `others`
    (Q, n, n), of every (grams[p], others[q]) pair, (P, Q)."""
    p, n, _ = grams.shape
    if n < MIN_BATCH:
        raise ValueError(f"HSIC_1 needs batches of at least {MIN_BATCH} images, got {n}")
    others = grams if others is None else others
    elementwise = grams.reshape(p, n * n) @ others.reshape(len(others), n * n).T  # sum(K * L), not trace(K @ L)
    cross = grams.sum(2) @ others.sum(2).T  # 1'K L 1 (K, L symmetric)
    totals = torch.outer(grams.sum((1, 2)), others.sum((1, 2)))  # (1'K1)(1'L1)
    return (elementwise + totals / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * cross) / (n * (n - 3))


def cycle(n: int, seed: str) -> torch.Tensor:
    """A random n-cycle of range(n), as an index (image i is paired with image perm[i]), seeded by `seed` (the batch's
    image paths): no fixed point and no 2-cycle for n >= 3, so no pair of images meets itself either way round."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "little"))
    order = rng.permutation(n)
    perm = np.empty(n, dtype=np.int64)
    perm[order] = np.roll(order, -1)
    return torch.from_numpy(perm)


@dataclass
class CKAResult:
    """(P, P) matrices: CKA (NaN where undefined), its standard error (NaN under 2 batches), the chance baseline (row
    p against column q with q's images shuffled); and the reason per pair where CKA is undefined."""

    cka: torch.Tensor
    se: torch.Tensor
    chance: torch.Tensor
    reasons: list[list[str | None]]


@dataclass
class CKAState:
    """Sums over batches for P representations: HSIC of every pair, the jackknife's sums of products, the shuffled
    pairs' HSIC, and each one's squared feature energy."""

    hsic: torch.Tensor  # (P, P) float64: S
    squares: torch.Tensor  # (P, P): sum_b h_pq^2
    with_own: torch.Tensor  # (P, P): sum_b h_pq h_pp (row p's own term)
    own_pairs: torch.Tensor  # (P, P): sum_b h_pp h_qq
    shuffled: torch.Tensor  # (P, P): sum_b HSIC(K_p, L_q with images cycled)
    energy: torch.Tensor  # (P,) sum over batches of (||X||_F^2 / n)^2, the scale HSIC(K, K) is judged against
    batches: int = 0
    images: int = 0

    @classmethod
    def empty(cls, p: int, device: torch.device | str = "cpu") -> CKAState:
        """Zero sums on `device`: on a GPU the sums stay there (no host synchronisation per batch) until `to`."""
        zeros = [torch.zeros(p, p, dtype=torch.float64, device=device) for _ in range(5)]
        return cls(*zeros, torch.zeros(p, dtype=torch.float64, device=device))

    def _sums(self) -> list[torch.Tensor]:
        return [getattr(self, f.name) for f in fields(self) if f.name not in ("batches", "images")]

    def update(self, features: list[torch.Tensor], seed: str = "") -> None:
        """One batch: the features (n, ...) of every representation, in the state's fixed order, on the state's
        device; `seed` names the batch (its image paths) and fixes its shuffle for the chance baseline."""
        n = features[0].shape[0]
        grams = torch.stack([centred_gram(f) for f in features])
        h = hsic_matrix(grams)
        own = h.diagonal()
        perm = cycle(n, seed)
        if grams.device.type == "cuda":  # from pinned memory without waiting: no host synchronisation per batch
            perm = perm.pin_memory().to(grams.device, non_blocking=True)
        self.hsic += h
        self.squares += h * h
        self.with_own += h * own[:, None]
        self.own_pairs += torch.outer(own, own)
        self.shuffled += hsic_matrix(grams, grams[:, perm][:, :, perm])
        self.energy += torch.stack([(f.double().pow(2).sum() / n) ** 2 for f in features])
        self.batches += 1
        self.images += n

    def to(self, device: torch.device | str) -> CKAState:
        """The same sums on `device` (the CPU before a state leaves its task)."""
        return CKAState(*[t.to(device) for t in self._sums()], self.batches, self.images)

    def merge(self, other: CKAState) -> CKAState:
        return CKAState(*[a + b for a, b in zip(self._sums(), other._sums(), strict=True)],
                        self.batches + other.batches, self.images + other.images)  # fmt: skip

    def compute(self) -> CKAResult:
        diag = self.hsic.diagonal()
        flat = diag <= FLAT_FLOOR * self.energy.clamp_min(1e-300)
        s_p = diag.clamp_min(1e-300)
        scale = torch.sqrt(torch.outer(s_p, s_p))
        cka = self.hsic / scale
        b = self.batches
        spread = (
            self.squares / scale**2
            + cka**2 / 4 * (self.own_pairs.diagonal()[:, None] / s_p[:, None] ** 2
                            + self.own_pairs.diagonal()[None, :] / s_p[None, :] ** 2
                            + 2 * self.own_pairs / torch.outer(s_p, s_p))
            - cka / scale * (self.with_own / s_p[:, None] + self.with_own.T / s_p[None, :])
        )  # fmt: skip
        se = torch.sqrt(((b - 1) / b * spread).clamp_min(0.0)) if b >= 2 else torch.full_like(cka, float("nan"))
        se.diagonal().zero_()  # itself: 1 on any subset of batches (the sum above cancels only to ~1e-8)
        undefined = flat[:, None] | flat[None, :] | (b == 0)
        reasons = [
            [
                "no batch of at least 4 images" if b == 0
                else "layer does not vary across images (HSIC(K, K) ~ 0)" if flat[i] or flat[j] else None
                for j in range(len(diag))
            ]
            for i in range(len(diag))
        ]  # fmt: skip
        nan = torch.full_like(cka, float("nan"))
        return CKAResult(
            torch.where(undefined, nan, cka), torch.where(undefined, nan, se),
            torch.where(undefined, nan, self.shuffled / scale), reasons,
        )  # fmt: skip
