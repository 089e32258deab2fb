"""yolo-audit: what transfer learning changed inside YOLO networks.

The Python API (`yolo_audit.api`, imported lazily, so `import yolo_audit` stays light) has one function per command,
with the command's options as keywords: analyze_weights, analyze_activations, analyze_similarity, analyze_rewind,
analyze_interpolation, rank_gradient_flow; attach(model, out=...) records a training's gradients live (integrations);
rank_dead_units, rank_divergence, rank_drift, rank_rewind, query, write_report, compact, run_study, run_demo,
make_data, convert, schema, clear_cache; and open_results(out) -> {table: polars.LazyFrame}, load_checkpoint(path).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["AuditError", "analyze_activations", "analyze_interpolation", "analyze_rewind", "analyze_similarity",
           "analyze_weights", "attach", "clear_cache", "compact", "convert", "load_checkpoint", "make_data",
           "open_results", "query", "rank_dead_units", "rank_divergence", "rank_drift", "rank_gradient_flow",
           "rank_rewind", "run_demo", "run_study", "schema", "write_report"]  # fmt: skip

_LAZY = {name: "yolo_audit.api" for name in __all__} | {
    "AuditError": "yolo_audit.errors", "attach": "yolo_audit.integrations.ultralytics"
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
