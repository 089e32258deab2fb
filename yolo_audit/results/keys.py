"""File keys: every results file is `OUT/<table>/<key>.parquet`, and the key says what produced its rows. Keys are
built here and parsed back here only, so purging a retrained run's rows cannot miss a table.

- `<checkpoint>`: one checkpoint's own rows (checkpoints, weight_stats, channel_weights)
- `<checkpoint>-<bins_id>`: its histogram on shared bins (`ref-<reference>` or `pooled-<hash>`)
- `<checkpoint>-vs-<reference>`: a comparison (weight_divergence, channel_divergence, layer_freeze)
- `<checkpoint>-<dataset_id>`: a pass over images (channel_stats, activation_hist, feature_maps, activation_passes)
- `<checkpoint>-vs-<reference>-<dataset_id>-<swap>`: one rewind validation (`a<alpha>_r<n>`: one interpolation)
- `<checkpoint>-vs-<reference>-<analysis>`: what a checkpoint was analysed against (analysed_against)
- `<dataset_id>-<hash of the checkpoints>-<pool>`: a similarity file (its rows name the checkpoints)
- `<run>`: runs and train_metrics;  `<run>-epoch<NNNN>`: train_dynamics;  `<stage>-<hash of the path>`: an errors row
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

_SAFE = re.compile(r"^[A-Za-z0-9_.=-]+$")
_NAMES = re.compile(
    r"^(?P<checkpoint>[0-9a-f]{16})"
    r"(?:-vs-(?P<reference>[0-9a-f]{16})(?:-[0-9a-f]{16}-[A-Za-z0-9_]+|-[a-z]+)?|-ref-(?P<bins_ref>[0-9a-f]{16})"
    r"|-pooled-[0-9a-f]+|-[0-9a-f]{16})?$"
)


def checkpoint_key(checkpoint_id: str) -> str:
    return checkpoint_id


def hist_key(checkpoint_id: str, bins_id: str) -> str:
    return f"{checkpoint_id}-{bins_id}"


def comparison_key(checkpoint_id: str, reference_id: str) -> str:
    return f"{checkpoint_id}-vs-{reference_id}"


def dataset_key(checkpoint_id: str, dataset_id: str) -> str:
    return f"{checkpoint_id}-{dataset_id}"


def similarity_key(dataset_id: str, checkpoint_ids: Iterable[str], pool: str) -> str:
    digest = hashlib.sha256(",".join(sorted(checkpoint_ids)).encode()).hexdigest()[:12]
    return f"{dataset_id}-{digest}-{pool}"


def rewind_key(checkpoint_id: str, reference_id: str, dataset_id: str, target: str) -> str:
    return f"{checkpoint_id}-vs-{reference_id}-{dataset_id}-{target.replace('-', '_')}"


def reference_key(checkpoint_id: str, reference_id: str, analysis: str) -> str:
    return f"{checkpoint_id}-vs-{reference_id}-{analysis}"


def interpolation_key(checkpoint_id: str, reference_id: str, dataset_id: str, alpha: float, recalibrate: int) -> str:
    return f"{checkpoint_id}-vs-{reference_id}-{dataset_id}-a{round(alpha * 1e6):07d}_r{recalibrate}"


def dynamics_key(run: str, epoch: int) -> str:
    return f"{run}-epoch{epoch:04d}"


def run_key(run: str) -> str:
    return run


def error_key(path: str, stage: str) -> str:
    return f"{stage}-" + hashlib.sha256(str(path).encode()).hexdigest()[:16]


def check(key: str) -> str:
    """A key that is safe as a file name, or ValueError."""
    if not _SAFE.match(key):
        raise ValueError(f"unsafe file key {key!r}")
    return key


def named_checkpoints(key: str) -> set[str] | None:
    """The checkpoint ids a key names (itself, the reference it was compared with, the reference its bins came from);
    None for keys that name none (runs, errors, similarity files: read their rows instead)."""
    match = _NAMES.match(key)
    if match is None:
        return None
    return {v for k, v in match.groupdict().items() if v}
