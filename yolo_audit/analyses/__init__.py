"""Analyses as small registered units. Each folder holds one analysis: `schema.py` (its tables), `job.py` (one Ray
task's work, plain functions), `plan.py` (the driver that plans the tasks, and what a study runs). Adding an analysis
is its own folder plus one `Analysis` line in `ANALYSES` below; the schema, the study and the terminal pick it up.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from yolo_audit.analyses.activations.schema import TABLES as ACTIVATION_TABLES
from yolo_audit.analyses.interpolate.schema import TABLES as INTERPOLATION_TABLES
from yolo_audit.analyses.rewind.schema import TABLES as REWIND_TABLES
from yolo_audit.analyses.similarity.schema import TABLES as SIMILARITY_TABLES
from yolo_audit.analyses.weights.schema import TABLES as WEIGHT_TABLES
from yolo_audit.results.columns import Column

if TYPE_CHECKING:
    from yolo_audit.results.errors import ErrorRecord
    from yolo_audit.results.location import Location


class Summary(Protocol):
    """What every analysis driver returns: where it wrote, what failed, and whether everything succeeded."""

    out: Location
    errors: list[ErrorRecord]

    @property
    def ok(self) -> bool: ...


@dataclass(frozen=True)
class StudyInputs:
    """What a study hands each analysis: its results location, the runs' snapshots, the base, the validation data."""

    out: Location
    snapshots: dict[str, list[str]]  # finished run -> its snapshot files, epoch order
    reference: str | None  # the base every variant started from
    data: str  # the study's dataset yaml
    imgsz: int
    batch: int
    stream: TextIO | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def last(self) -> list[str]:
        """Each finished run's last snapshot."""
        return [files[-1] for files in self.snapshots.values() if files]


@dataclass(frozen=True)
class Analysis:
    name: str
    tables: dict[str, list[Column]]
    study_step: str  # "module:function(StudyInputs) -> Summary", imported when a study runs it
    printer: str  # "module:function(Summary, stream=...)": the terminal summary

    def run_in_study(self, inputs: StudyInputs) -> Summary:
        return _resolve(self.study_step)(inputs)

    def print_summary(self, summary: Summary, *, stream: TextIO | None = None) -> None:
        _resolve(self.printer)(summary, stream=stream)


def _resolve(ref: str) -> Callable[..., Any]:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


ANALYSES: dict[str, Analysis] = {
    a.name: a
    for a in (
        Analysis("weights", WEIGHT_TABLES, "yolo_audit.analyses.weights.plan:in_study",
                 "yolo_audit.report.text:print_weights_summary"),
        Analysis("activations", ACTIVATION_TABLES, "yolo_audit.analyses.activations.plan:in_study",
                 "yolo_audit.report.text:print_activations_summary"),
        Analysis("similarity", SIMILARITY_TABLES, "yolo_audit.analyses.similarity.plan:in_study",
                 "yolo_audit.report.text:print_similarity_summary"),
        Analysis("rewind", REWIND_TABLES, "yolo_audit.analyses.rewind.plan:in_study",
                 "yolo_audit.report.text:print_rewind_summary"),
        Analysis("interpolate", INTERPOLATION_TABLES, "yolo_audit.analyses.interpolate.plan:in_study",
                 "yolo_audit.report.text:print_interpolation_summary"),
    )
}  # fmt: skip
