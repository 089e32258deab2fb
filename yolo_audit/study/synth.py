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
TASKS = ("detect", "segment")


def make_dataset(
    out: str | Path,
    *,
    images: int = 32,
    imgsz: int = 64,
    classes: int = 3,
    domain: str = "A",
    seed: int = 0,
    val_fraction: float = 0.25,
    task: str = "detect",
) -> Path:
    """Write OUT/images/{train,val}, OUT/labels/{train,val} and OUT/data.yaml; return the yaml's path. `task`:
    detect (boxes) or segment (each shape's outline as a polygon label); the images are the same."""
    if domain not in DOMAINS:
        raise AuditError(f"unknown domain {domain!r}; use A or B", path=str(out))
    if task not in TASKS:
        raise AuditError(f"unknown task {task!r}; use one of {', '.join(TASKS)}", path=str(out))
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
        if task == "segment":
            lines = [f"{c} " + " ".join(f"{x / imgsz:.6f} {y / imgsz:.6f}" for x, y in _outline(name, box))
                     for c, name, box in labels]  # fmt: skip
        else:
            lines = [
                f"{c} {(x0 + x1) / 2 / imgsz:.6f} {(y0 + y1) / 2 / imgsz:.6f} {(x1 - x0) / imgsz:.6f} "
                f"{(y1 - y0) / imgsz:.6f}"
                for c, _, (x0, y0, x1, y1) in labels
            ]
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
    """An image and its shapes as (class, shape name, box)."""
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
        labels.append((cls, CLASS_NAMES[cls], box))
    return image, labels


def _outline(name: str, box: tuple[float, ...]) -> list[tuple[float, float]]:
    """The shape's outline in pixels (a circle as a 24-gon), for polygon labels."""
    x0, y0, x1, y1 = box
    if name == "square":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if name == "circle":
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
        return [(cx + r * math.cos(2 * math.pi * k / 24), cy + r * math.sin(2 * math.pi * k / 24)) for k in range(24)]
    return _polygons(box)[name]


def _polygons(box: tuple[float, ...]) -> dict[str, list[tuple[float, float]]]:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return {
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


def _shape(draw: ImageDraw.ImageDraw, name: str, box: tuple[float, ...], **style: object) -> None:
    if name == "square":
        draw.rectangle(box, **style)
    elif name == "circle":
        draw.ellipse(box, **style)
    else:
        draw.polygon(_polygons(box)[name], **style)
