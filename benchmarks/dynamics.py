"""Benchmark: what recording the training dynamics live (`integrations.ultralytics.attach`) costs a training epoch.

Trains the same model on the same synthetic data (--images at --imgsz, batch --batch, nbs = batch: an optimizer step
per batch, the most hooks per image) for --epochs, alternating runs with and without `attach`, --repeats times each.
The epoch time is taken from the start of on_train_epoch_start to the end of on_train_epoch_end (the training
passes, every optimizer step's hook, the epoch-start copies and the epoch-end rows; validation is the same either
way and left out). Medians compared; also the time spent inside the recorder itself.
Last line: {"benchmark": "dynamics", "ratio": with / without, "hook_share": recorder seconds / epoch seconds,
"goal": 1.05}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import parse

from yolo_audit.env import prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="yolov8s.yaml")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parse(parser, {"model": "yolov8n.yaml", "images": 16, "imgsz": 64, "batch": 4, "epochs": 1,
                          "repeats": 1})  # fmt: skip
    prepare()
    import os

    from ultralytics import YOLO

    from yolo_audit.integrations.ultralytics import attach
    from yolo_audit.runtime.devices import set_threads
    from yolo_audit.study.synth import make_dataset

    set_threads(os.cpu_count() or 1, load_numba=False)
    times: dict[bool, list[float]] = {False: [], True: []}
    shares: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = str(make_dataset(root / "data", images=args.images * 4 // 3, imgsz=args.imgsz, domain="B", seed=1))
        for r in range(args.repeats):
            for recorded in (False, True):
                model = YOLO(args.model)
                epochs: list[float] = []
                started: list[float] = []
                model.add_callback("on_train_epoch_start", lambda trainer, s=started: s.append(time.perf_counter()))
                dynamics = attach(model, out=root / f"out{r}") if recorded else None
                model.add_callback(
                    "on_train_epoch_end", lambda trainer, s=started, e=epochs: e.append(time.perf_counter() - s[-1])
                )
                model.train(data=data, epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, nbs=args.batch,
                            workers=0, amp=False, device="cpu", plots=False, project=str(root / "runs"),
                            name=f"r{r}{recorded}", exist_ok=True, verbose=False, val=False)  # fmt: skip
                times[recorded].append(sum(epochs) / len(epochs))
                if dynamics is not None:
                    shares.append(dynamics.seconds / sum(epochs))
            print(f"repeat {r}: epoch {times[False][-1]:.2f} s without, {times[True][-1]:.2f} s with the recorder",
                  flush=True)  # fmt: skip
    plain, recorded_s = statistics.median(times[False]), statistics.median(times[True])
    print(
        f"{args.model} at {args.imgsz} px, batch {args.batch}: epoch {plain:.2f} s, recorded {recorded_s:.2f} s "
        f"(medians of {args.repeats}); inside the recorder {statistics.median(shares):.1%} of an epoch"
    )
    print(json.dumps({"benchmark": "dynamics", "ratio": round(recorded_s / plain, 3),
                      "hook_share": round(statistics.median(shares), 4), "epoch_seconds": round(plain, 3),
                      "goal": 1.05}))  # fmt: skip


if __name__ == "__main__":
    main()
