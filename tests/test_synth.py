"""Synthetic datasets: deterministic, valid YOLO labels, and two domains that really differ."""

from __future__ import annotations

import numpy as np
import yaml
from PIL import Image

from yolo_audit.study.synth import make_dataset


def test_same_seed_same_bytes_and_valid_labels(tmp_path):
    a = make_dataset(tmp_path / "a", images=6, imgsz=32, classes=3, domain="A", seed=3)
    b = make_dataset(tmp_path / "b", images=6, imgsz=32, classes=3, domain="A", seed=3)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert files_a == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    data = yaml.safe_load(a.read_text())
    assert data["names"] == {0: "square", 1: "circle", 2: "triangle"} and data["path"] == str(tmp_path / "a")
    assert len(list((tmp_path / "a" / "images" / "val").glob("*.png"))) == 2
    for label in (tmp_path / "a" / "labels").rglob("*.txt"):
        for line in label.read_text().splitlines():
            cls, *box = line.split()
            assert 0 <= int(cls) < 3 and all(0 <= float(v) <= 1 for v in box)
    assert b.exists()


def test_domains_differ(tmp_path):
    def texture(domain: str) -> tuple[float, float]:
        make_dataset(tmp_path / domain, images=8, imgsz=64, domain=domain, seed=0)
        imgs = [np.asarray(Image.open(p), dtype=float) for p in (tmp_path / domain).rglob("*.png")]
        high_freq = np.mean([np.abs(np.diff(i, axis=1)).mean() for i in imgs])
        blue_minus_red = np.mean([(i[..., 2] - i[..., 0]).mean() for i in imgs])
        return high_freq, blue_minus_red

    (hf_a, br_a), (hf_b, br_b) = texture("A"), texture("B")
    assert hf_b > 2 * hf_a and br_b > br_a + 30
