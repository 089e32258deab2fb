"""The Python API (notebooks, scripts): the same drivers the CLI calls, and the results as lazy Polars frames.

from yolo_audit import analyze_weights, open_results
summary = analyze_weights(["runs/detect"], "results", reference="yolov8s.pt")
frames = open_results("results")  # {table: polars.LazyFrame}
"""

from __future__ import annotations

from yolo_audit.analyses.activations.plan import analyze_activations
from yolo_audit.analyses.similarity.plan import analyze_similarity
from yolo_audit.analyses.weights.plan import analyze_weights
from yolo_audit.model.checkpoint import load_checkpoint
from yolo_audit.results.store import open_results

__all__ = ["analyze_activations", "analyze_similarity", "analyze_weights", "load_checkpoint", "open_results"]
