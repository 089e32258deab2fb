"""Linear CKA between many representations at once, from minibatch Gram matrices (Nguyen, Raghu & Kornblith 2021).

For each batch of n >= 4 images and every representation p (a layer of a checkpoint): features X_p (n, d) are
centred per feature over the batch (in float64: deep YOLO layers vary between images by 1e-5..1e-13 of their
energy, which uncentred or float32 products lose), K_p = X_p X_p^T with its diagonal zeroed, and for every pair
HSIC_1(K_p, K_q) = [sum(K_p * K_q) + (1'K_p 1)(1'K_q 1)/((n-1)(n-2)) - 2/(n-2) 1'K_p K_q 1] / (n(n-3)),
all pairs in one matrix product. The state holds sums over batches, so data shards merge exactly by adding them;
CKA(p, q) = sum HSIC(p, q) / sqrt(sum HSIC(p, p) * sum HSIC(q, q)).
"""

from __future__ import annotations

from dataclasses import dataclass

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


def hsic_matrix(grams: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC_1 of every pair of (P, n, n) zero-diagonal Gram matrices: a (P, P) float64 matrix."""
    p, n, _ = grams.shape
    if n < MIN_BATCH:
        raise ValueError(f"HSIC_1 needs batches of at least {MIN_BATCH} images, got {n}")
    flat = grams.reshape(p, n * n)
    elementwise = flat @ flat.T  # sum(K * L): the elementwise sum, not trace(K @ L)
    totals = grams.sum((1, 2))  # 1'K1
    rows = grams.sum(2)  # K1
    cross = rows @ rows.T  # 1'K L 1 (K, L symmetric)
    return (elementwise + torch.outer(totals, totals) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * cross) / (n * (n - 3))


@dataclass
class CKAState:
    """Sums over batches for P representations: HSIC of every pair, and each one's squared feature energy."""

    hsic: torch.Tensor  # (P, P) float64
    energy: torch.Tensor  # (P,) sum over batches of (||X||_F^2 / n)^2, the scale HSIC(K, K) is judged against
    batches: int = 0
    images: int = 0

    @classmethod
    def empty(cls, p: int, device: torch.device | str = "cpu") -> CKAState:
        """Zero sums on `device`: on a GPU the sums stay there (no host synchronisation per batch) until `to`."""
        return cls(
            torch.zeros(p, p, dtype=torch.float64, device=device), torch.zeros(p, dtype=torch.float64, device=device)
        )

    def update(self, features: list[torch.Tensor]) -> None:
        """One batch: the features (n, ...) of every representation, in the state's fixed order, on the state's
        device."""
        n = features[0].shape[0]
        grams = torch.stack([centred_gram(f) for f in features])
        self.hsic += hsic_matrix(grams)
        self.energy += torch.stack([(f.double().pow(2).sum() / n) ** 2 for f in features])
        self.batches += 1
        self.images += n

    def to(self, device: torch.device | str) -> CKAState:
        """The same sums on `device` (the CPU before a state leaves its task)."""
        return CKAState(self.hsic.to(device), self.energy.to(device), self.batches, self.images)

    def merge(self, other: CKAState) -> CKAState:
        return CKAState(self.hsic + other.hsic, self.energy + other.energy, self.batches + other.batches,
                        self.images + other.images)  # fmt: skip

    def compute(self) -> tuple[torch.Tensor, list[list[str | None]]]:
        """(P, P) CKA with NaN where undefined, and the reason per pair (None where defined)."""
        diag = self.hsic.diagonal()
        flat = diag <= FLAT_FLOOR * self.energy.clamp_min(1e-300)
        cka = self.hsic / torch.sqrt(torch.outer(diag.clamp_min(1e-300), diag.clamp_min(1e-300)))
        reasons: list[list[str | None]] = []
        p = diag.numel()
        for i in range(p):
            row: list[str | None] = []
            for j in range(p):
                if self.batches == 0:
                    row.append("no batch of at least 4 images")
                elif flat[i] or flat[j]:
                    row.append("layer does not vary across images (HSIC(K, K) ~ 0)")
                else:
                    row.append(None)
            reasons.append(row)
        undefined = flat[:, None] | flat[None, :] | (self.batches == 0)
        return torch.where(undefined, torch.full_like(cka, float("nan")), cka), reasons
