"""Deterministic synthetic YOLO-format detection datasets (shapes on textured backgrounds), no downloads.

Two domains share the class list but differ in what a backbone has to see: domain A draws filled shapes in warm
colours on smooth blotchy backgrounds; domain B draws outlined shapes in cool colours on high-frequency stripes and
noise. Pretraining on A and fine-tuning on B makes transfer (and freezing) matter.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

from yolo_audit.errors import AuditError

CLASS_NAMES = ("square", "circle", "triangle", "diamond", "cross", "bar")
DOMAINS = ("A", "B")


def make_dataset(
    out: str | Path,
    *,
    images: int = 32,
    imgsz: int = 64,
    classes: int = 3,
    domain: str = "A",
    seed: int = 0,
    val_fraction: float = 0.25,
) -> Path:
    """Write OUT/images/{train,val}, OUT/labels/{train,val} and OUT/data.yaml; return the yaml's path."""
    if domain not in DOMAINS:
        raise AuditError(f"unknown domain {domain!r}; use A or B", path=str(out))
    if not 1 <= classes <= len(CLASS_NAMES):
        raise AuditError(f"classes must be 1..{len(CLASS_NAMES)}", path=str(out))
    if images < 2 or imgsz < 16:
        raise AuditError("need at least 2 images of at least 16 pixels", path=str(out))
    root = Path(out).resolve()
    rng = np.random.default_rng([seed, DOMAINS.index(domain)])
    n_val = max(1, int(round(images * val_fraction)))
    for i in range(images):
        split = "val" if i < n_val else "train"
        image, labels = _sample(rng, imgsz, classes, domain)
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        image.save(root / "images" / split / f"{domain.lower()}{i:05d}.png")
        lines = [f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}" for c, x, y, w, h in labels]
        (root / "labels" / split / f"{domain.lower()}{i:05d}.txt").write_text("\n".join(lines) + "\n")
    data = {
        "path": str(root),
        "train": "images/train",
        "val": "images/val",
        "names": dict(enumerate(CLASS_NAMES[:classes])),
    }
    target = root / "data.yaml"
    target.write_text(yaml.safe_dump(data, sort_keys=False))
    return target


def _background(rng: np.random.Generator, size: int, domain: str) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    if domain == "A":  # smooth warm blotches
        img = np.zeros((size, size, 3))
        for _ in range(4):
            cx, cy, r = rng.random(), rng.random(), 0.2 + 0.4 * rng.random()
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
            img += blob[..., None] * (np.array([0.8, 0.5, 0.2]) * rng.random(3) + 0.2)
        img = img / img.max() * 180 + rng.normal(0, 4, (size, size, 3))
    else:  # high-frequency cool stripes with noise
        angle, freq = rng.random() * math.pi, 6 + 10 * rng.random()
        stripes = 0.5 + 0.5 * np.sin(2 * math.pi * freq * (xx * math.cos(angle) + yy * math.sin(angle)))
        img = stripes[..., None] * np.array([40, 90, 150]) + 40 + rng.normal(0, 25, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _sample(rng: np.random.Generator, size: int, classes: int, domain: str) -> tuple[Image.Image, list[tuple]]:
    image = Image.fromarray(_background(rng, size, domain))
    draw = ImageDraw.Draw(image)
    labels = []
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.integers(0, classes))
        w = h = float(rng.uniform(0.2, 0.45)) * size
        x0, y0 = float(rng.uniform(0, size - w)), float(rng.uniform(0, size - h))
        box = (x0, y0, x0 + w, y0 + h)
        warm = tuple(int(v) for v in rng.integers(150, 256, 3) * np.array([1.0, 0.7, 0.3]))
        cool = tuple(int(v) for v in rng.integers(150, 256, 3) * np.array([0.3, 0.9, 1.0]))
        _shape(
            draw, CLASS_NAMES[cls], box, fill=warm if domain == "A" else None, outline=cool, width=max(1, size // 32)
        )
        labels.append((cls, (x0 + w / 2) / size, (y0 + h / 2) / size, w / size, h / size))
    return image, labels


def _shape(draw: ImageDraw.ImageDraw, name: str, box: tuple[float, ...], **style: object) -> None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    polygons = {
        "triangle": [(cx, y0), (x1, y1), (x0, y1)],
        "diamond": [(cx, y0), (x1, cy), (cx, y1), (x0, cy)],
        "cross": [
            (x0, cy - (y1 - y0) / 6),
            (x1, cy - (y1 - y0) / 6),
            (x1, cy + (y1 - y0) / 6),
            (x0, cy + (y1 - y0) / 6),
        ],
        "bar": [(cx - (x1 - x0) / 6, y0), (cx + (x1 - x0) / 6, y0), (cx + (x1 - x0) / 6, y1), (cx - (x1 - x0) / 6, y1)],
    }
    if name == "square":
        draw.rectangle(box, **style)
    elif name == "circle":
        draw.ellipse(box, **style)
    else:
        draw.polygon(polygons[name], **style)
