"""yolo-audit: what transfer learning changed inside YOLO networks.

Notebook API (imported lazily, so `import yolo_audit` stays light):
    analyze_weights(paths, out, reference=..., pairwise=..., trajectory=...) -> WeightsSummary
    open_results(out) -> {table: polars.LazyFrame}
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["AuditError", "analyze_weights", "load_checkpoint", "open_results"]

_LAZY = {
    "analyze_weights": "yolo_audit.weights_plan",
    "open_results": "yolo_audit.store",
    "load_checkpoint": "yolo_audit.checkpoints",
    "AuditError": "yolo_audit.errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
