"""Resource requests that no node can meet: a probe before training (at once on an embedded Ray, bounded wait on a
cluster whose autoscaler may launch the node), and pending tasks stranded when the only node that could run them died.
Both end in one line naming the resources and the fix, never in a silent wait."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from yolo_audit.runtime.tasks import Task


def _probe() -> dict[str, Any]:
    import ray
    import torch

    return {"node": ray.get_runtime_context().get_node_id(), "cuda": torch.cuda.is_available(),
            "torch": torch.__version__}  # fmt: skip


def require_resources(num_cpus: float, num_gpus: float, *, timeout: float, embedded: bool) -> None:
    """Fail with one line, before any real work, when no node can run a task asking for these resources: at once on
    an embedded Ray (nothing will ever join it), else after `timeout` seconds of waiting (an autoscaler may launch such
    a node meanwhile: the probe's request is what makes it do so). A node that advertises a GPU without CUDA fails too.
    """
    import ray

    from yolo_audit.errors import AuditError

    have = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
    ask = f"{num_cpus:g} CPU and {num_gpus:g} GPU"
    if embedded and (have.get("GPU", 0) < num_gpus or have.get("CPU", 0) < num_cpus):
        raise AuditError(f"training tasks ask for {ask} but this machine has {have}; set resources.gpus_per_task: 0 "
                         "in the study file or pass --cpu-only")  # fmt: skip
    ref = ray.remote(_probe).options(num_cpus=num_cpus, num_gpus=num_gpus, name="resource-probe").remote()
    ready, _ = ray.wait([ref], timeout=timeout)
    if not ready:
        ray.cancel(ref, force=True)
        raise AuditError(f"no node took a task asking for {ask} within {timeout:g} s (the cluster has {have} now); add "
                         "such nodes (cluster.yaml), lower resources.gpus_per_task, raise --schedule-timeout or pass "
                         "--cpu-only")  # fmt: skip
    info = ray.get(ref)
    if num_gpus and not info["cuda"]:
        raise AuditError(
            f"node {info['node'][:12]} advertises a GPU but torch {info['torch']} sees no CUDA device there (no NVIDIA "
            "driver, or a CPU-only torch); fix the GPU nodes or pass --cpu-only"
        )


def check_schedulable(waiting: list[Task], since: float | None, timeout: float, stage: str) -> float | None:
    """None while some live node could run every waiting task; else when that started. Past `timeout`: one line."""
    import ray

    from yolo_audit.errors import AuditError

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    blocked = [t for t in waiting
               if not any(r.get("CPU", 0) >= t.num_cpus and r.get("GPU", 0) >= t.num_gpus for r in nodes)]  # fmt: skip
    if not blocked:
        return None
    since = since or time.monotonic()
    if time.monotonic() - since > timeout:
        need = f"{blocked[0].num_cpus:g} CPU and {blocked[0].num_gpus:g} GPU"
        raise AuditError(f"[{stage}] {len(blocked)} task(s) asking for {need} waited {timeout:g} s and no live node "
                         "can run them (a node was lost?); add such nodes, raise --schedule-timeout or pass "
                         "--cpu-only; finished work is kept and a rerun resumes")  # fmt: skip
    return since
