"""Benchmark: a small local job end to end, as users run it, against the hand-written script it replaces.

Builds a base and N perturbed YOLOv8s checkpoints (Ultralytics' fp16 layout), then, alternating the two (median of
--repeats, whole processes, fresh results folder each time):
- `yolo-audit weights CKPTS --reference BASE --out OUT` (no --address: in process, no Ray start-up)
- `python benchmarks/handwritten_weights.py BASE CKPTS...` (torch.load, per-tensor stats, a histogram, L2 and
  relative difference to the base)
It also times an unchanged rerun of the same command (everything skipped) against start-up alone (importing what
the command imports), and records the peak memory of the whole command (all its processes).
Then `similarity` of 5 checkpoints and `activations` of 3 (yolov8s, --images synthetic images at each --imgsz: 320
and the commands' default 640): the command end to end (a fresh process) against the same analysis in a warm process
(imports done, run once before).
Last line: {"benchmark": "small_jobs", "ratio_3": ..., "ratio_20": ..., "similarity_e2e_over_in_process": ... (at the
first --imgsz), "similarity_e2e_over_in_process_640": ..., ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import parse

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
MEASURE = r"""
import subprocess, sys, time
def tree(pid):
    try:
        kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        return [pid]
    return [pid] + [p for k in kids for p in tree(int(k))]
def pss_kb(pid):
    try:
        return next(int(line.split()[1]) for line in open(f"/proc/{pid}/smaps_rollup") if line.startswith("Pss:"))
    except (OSError, StopIteration):
        return 0
poll = sys.argv[1] == "memory"
t = time.perf_counter()
proc = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
peak = 0
while poll and proc.poll() is None:
    peak = max(peak, sum(pss_kb(p) for p in tree(proc.pid)))
    time.sleep(0.02)
proc.wait()
print(time.perf_counter() - t, peak, proc.returncode)
"""


# The environment the benchmark was started with: every command runs in it. Building the checkpoints imports
# Ultralytics, which sets OMP_NUM_THREADS=1 in this process; inherited, it would hold the hand-written script to one
# thread (yolo-audit sets its own threads), and the comparison would flatter us.
CLEAN_ENV = dict(os.environ)


def measure(cmd: list[str], *, memory: bool = False) -> tuple[float, float]:
    """Wall seconds of a command, and with `memory` its peak memory (GB): the sum of the proportional set sizes (PSS:
    shared pages divided among the processes sharing them) of the command and every process under it, sampled every
    20 ms (the sum of RSS would count pages a forked worker shares with its parent twice). Sampling is not free:
    reading /proc/PID/smaps_rollup walks the page tables under the process's memory-map lock, which doubled the
    time of `similarity` (measured 2026-12-02), so timed runs do not sample and the memory run is not timed."""
    out = subprocess.run([sys.executable, "-c", MEASURE, "memory" if memory else "time", *cmd], capture_output=True,
                         text=True, check=True, env=CLEAN_ENV).stdout  # fmt: skip
    seconds, pss_kb, rc = out.split()
    assert rc == "0", cmd
    return float(seconds), int(pss_kb) / 2**20


def build(root: Path, n: int, model: str) -> tuple[Path, list[Path]]:
    from yolo_audit.env import prepare

    prepare()
    from yolo_audit.model.synthetic import build_model, perturb, save_ultralytics

    net = build_model(model, seed=0)
    base = save_ultralytics(net, root / "base.pt", train_args={"name": "base"}, epoch=-1, key="model")
    paths = []
    for i in range(n):
        perturb(net, range(10, 23), scale=0.01, seed=i)
        paths.append(save_ultralytics(net, root / "ckpts" / f"epoch{i + 1}.pt", train_args={"name": "r"},
                                      epoch=i + 1, key="ema"))  # fmt: skip
    return base, paths


WARM = r"""
import io, sys, time
from yolo_audit.env import prepare
prepare()
from yolo_audit.analyses.activations.job import ActivationOptions
from yolo_audit.analyses.activations.plan import analyze_activations
from yolo_audit.analyses.similarity.plan import SimilarityOptions, analyze_similarity
kind, data, out, imgsz, *ckpts = sys.argv[1:]
imgsz = int(imgsz)
def run(target):
    if kind == "similarity":
        analyze_similarity(ckpts, data, target, opts=SimilarityOptions(imgsz=imgsz, batch=8), split="train",
                           force=True, stream=io.StringIO())
    else:
        # maps=4: the command's default (the dataclass's is 0); the same analysis on both sides
        analyze_activations(ckpts, data, target, opts=ActivationOptions(imgsz=imgsz, batch=8, maps=4), split="train",
                            force=True, stream=io.StringIO())
run(out + "-warm")
t = time.perf_counter()
run(out)
print(time.perf_counter() - t)
"""


def images_vs_warm(
    root: Path, ckpts: list[Path], images: int, imgsz: int, repeats: int, suffix: str = ""
) -> dict[str, float]:
    """`similarity` (5 checkpoints) and `activations` (3): the CLI end to end vs the same call in a warm process."""
    from yolo_audit.study.synth import make_dataset

    data = make_dataset(root / f"data{imgsz}", images=images, imgsz=imgsz, seed=5)
    audit = str(VENV_BIN / "yolo-audit")
    out: dict[str, float] = {}
    for kind, chosen in (("similarity", ckpts[:5]), ("activations", ckpts[:3])):
        e2e, warm = [], []
        for r in range(repeats):
            target = root / f"{kind}-{imgsz}-{r}"
            e2e.append(measure([audit, kind, *map(str, chosen), "--data", str(data), "--split", "train", "--imgsz",
                                str(imgsz), "--batch", "8", "--out", str(target)])[0])  # fmt: skip
            warm_out = str(root / f"w{kind}{imgsz}-{r}")
            warm.append(float(subprocess.run([sys.executable, "-c", WARM, kind, str(data), warm_out, str(imgsz),
                                              *map(str, chosen)], capture_output=True, text=True, check=True,
                                             env=CLEAN_ENV).stdout.split()[-1]))  # fmt: skip
        a, b = statistics.median(e2e), statistics.median(warm)
        print(f"{kind} of {len(chosen)} checkpoints, {images} images at {imgsz}: end to end {a:.2f} s, in a warm "
              f"process {b:.2f} s, ratio {a / b:.2f}")  # fmt: skip
        out[f"{kind}_e2e_seconds{suffix}"], out[f"{kind}_in_process_seconds{suffix}"] = round(a, 2), round(b, 2)
        out[f"{kind}_e2e_over_in_process{suffix}"] = round(a / b, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="yolov8s.yaml")
    parser.add_argument("--sizes", default="3,20")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument(
        "--imgsz", default="320,640", help="image sizes for similarity and activations, comma-separated"
    )
    parser.add_argument("--skip-weights", action="store_true")
    parser.add_argument("--skip-images", action="store_true", help="only the weights command")
    args = parse(parser, {"model": "yolov8n.yaml", "sizes": "2", "repeats": 1, "images": 8, "imgsz": "64"})
    import compileall

    compileall.compile_dir(str(HERE.parent / "yolo_audit"), quiet=1)  # bytecode, as a regular install writes it
    result: dict[str, object] = {"benchmark": "small_jobs", "goal_3": 1.2, "goal_20": 1.0, "goal_peak_gb": 1.5}
    audit = str(VENV_BIN / "yolo-audit")
    for n in [] if args.skip_weights else (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            base, ckpts = build(root, n, args.model)
            ours, script = [], []
            for r in range(args.repeats):
                out = root / f"out{r}"
                ours.append(measure([audit, "weights", str(root / "ckpts"), "--reference", str(base), "--out",
                                     str(out)])[0])  # fmt: skip
                script.append(measure([sys.executable, str(HERE / "handwritten_weights.py"), str(base),
                                       *map(str, ckpts)])[0])  # fmt: skip
                if r < args.repeats - 1:
                    shutil.rmtree(out)
            peak = measure([audit, "weights", str(root / "ckpts"), "--reference", str(base), "--out",
                            str(root / "memory")], memory=True)[1]  # fmt: skip
            script_peak = measure([sys.executable, str(HERE / "handwritten_weights.py"), str(base),
                                   *map(str, ckpts)], memory=True)[1]  # fmt: skip
            rerun = [measure([audit, "weights", str(root / "ckpts"), "--reference", str(base), "--out",
                              str(root / f"out{args.repeats - 1}")])[0] for _ in range(args.repeats)]  # fmt: skip
            startup = [measure([sys.executable, "-c", "import yolo_audit.cli, yolo_audit.analyses.weights.plan, "
                                "yolo_audit.report.text, ultralytics.nn.tasks"])[0]
                       for _ in range(args.repeats)]  # fmt: skip
        a, b = statistics.median(ours), statistics.median(script)
        print(f"{n} checkpoints of {args.model}: yolo-audit weights {a:.2f} s (peak {peak:.2f} GB), "
              f"hand-written script {b:.2f} s (peak {script_peak:.2f} GB), ratio {a / b:.2f}; unchanged rerun "
              f"{statistics.median(rerun):.2f} s, start-up alone {statistics.median(startup):.2f} s")  # fmt: skip
        result[f"ratio_{n}"] = round(a / b, 3)
        result[f"seconds_{n}"] = round(a, 2)
        result[f"script_seconds_{n}"] = round(b, 2)
        result[f"peak_gb_{n}"] = round(peak, 2)
        result[f"script_peak_gb_{n}"] = round(script_peak, 2)
        result[f"rerun_seconds_{n}"] = round(statistics.median(rerun), 2)
        result[f"startup_seconds_{n}"] = round(statistics.median(startup), 2)
        time.sleep(0.1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if not args.skip_images:
            _, ckpts = build(root, 5, args.model)
            for i, size in enumerate(int(s) for s in args.imgsz.split(",")):
                result.update(
                    images_vs_warm(root, ckpts, args.images, size, args.repeats, "" if i == 0 else f"_{size}")
                )
    result["goal_similarity_e2e_over_in_process"] = 1.5
    print(json.dumps(result))


if __name__ == "__main__":
    main()
