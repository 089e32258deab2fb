"""yolo-audit: what transfer learning changed inside YOLO networks.

Notebook API (`yolo_audit.api`, imported lazily, so `import yolo_audit` stays light):
    analyze_weights(paths, out, reference=..., pairwise=..., trajectory=...) -> WeightsSummary
    analyze_activations(paths, data, out, ...), analyze_similarity(paths, data, out, ...)
    open_results(out) -> {table: polars.LazyFrame}
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["AuditError", "analyze_activations", "analyze_similarity", "analyze_weights", "load_checkpoint",
           "open_results"]  # fmt: skip

_LAZY = {name: "yolo_audit.api" for name in __all__ if name != "AuditError"} | {"AuditError": "yolo_audit.errors"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
