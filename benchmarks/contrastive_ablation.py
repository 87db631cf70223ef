"""Ablate the local-region and memory-bank contrastive losses of `medseg_nb.contrastive` on DRIVE and CHASE_DB1.

Four arms per data set, the same budget and seed: the U-Net alone, + local loss, + memory bank, + both. Every arm
runs `medseg_nb.runs.train` with the `contrastive` task in its own spawned process (so its peak resident memory is
its own) on one CPU thread, and is evaluated on the data set's test split under the fundus protocol.

Phases:

* ``speed``: steps per second of every arm over a few steps, in alternating order over several rounds, to size the
  budget and to measure the overhead with less noise from other jobs on the machine.
* ``ablation``: the four arms on each data set in ``--datasets``. The rows go into the results file under the data
  set's name, so the data sets can run as separate commands.

Usage: ``MEDSEG_NB_DATA=/path/to/data OMP_NUM_THREADS=1 nice -n 5 python benchmarks/contrastive_ablation.py
--phase ablation --datasets drive --iterations 600``
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from _common import merge

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "contrastive_ablation.json"


def base_settings(iterations: int, patch_size: int, batch_size: int, seed: int) -> dict:
    "The TrainConfig settings that all arms share."
    return {"iterations": iterations, "patch_size": patch_size, "batch_size": batch_size, "seed": seed,
            "samples_per_image": 32, "val_count": 0, "warmup_steps": 50, "device": "cpu", "progress": False,
            "save_images": False}


def store(key: str, value) -> None:
    "Store `value` under `key` in the results file, keeping the other keys."
    merge(RESULTS, key, value)


def phase_speed(dataset: str, steps: int, rounds: int, settings: dict) -> dict:
    """Time `steps` steps of every arm, `rounds` times in alternating order; return the medians and ratios to `unet`.

    Each run is a fresh process without evaluation, and alternating the order spreads changes in the load of a
    shared machine over all arms.
    """
    from medseg_nb.contrastive import ABLATION_ARMS, ablation_arms, run_ablation

    base = {**settings, "iterations": steps, "eval_split": "none"}
    measured: dict[str, list[float]] = {arm: [] for arm in ABLATION_ARMS}
    for round_index in range(rounds):
        # a new folder per round, because train() rejects a folder that already contains a run
        runs = ablation_arms(base, [dataset], tempfile.mkdtemp())
        ordered = runs if round_index % 2 == 0 else runs[::-1]
        for row in run_ablation(ordered, isolate=True, threads=1):
            measured[row["arm"]].append(row["steps_per_second"])
    medians = {arm: statistics.median(values) for arm, values in measured.items()}
    return {"steps": steps, "rounds": rounds, "steps_per_second": measured, "median_steps_per_second": medians,
            "time_ratio_of_medians": {arm: round(medians["unet"] / value, 3) for arm, value in medians.items()}}


def phase_ablation(dataset: str, settings: dict, output: Path, local_weight: float, bank_weight: float) -> dict:
    "Run the four arms on `dataset` and return the settings, the rows with overhead ratios and the wall time."
    from medseg_nb.contrastive import ablation_arms, add_overheads, run_ablation

    started = time.perf_counter()
    runs = ablation_arms(settings, [dataset], str(output), local_weight=local_weight, bank_weight=bank_weight)
    rows = add_overheads(run_ablation(runs, isolate=True, threads=1))
    return {"settings": {**settings, "local_weight": local_weight, "bank_weight": bank_weight},
            "rows": rows, "wall_seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=["speed", "ablation"], default="ablation")
    parser.add_argument("--datasets", default="drive,chase_db1", help="comma-separated data set names")
    parser.add_argument("--iterations", type=int, default=600, help="optimiser steps per arm")
    parser.add_argument("--speed-steps", type=int, default=80, help="steps per arm and round of the speed phase")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the four arms in the speed phase")
    parser.add_argument("--patch-size", type=int, default=64, help="training patch side, pixels")
    parser.add_argument("--batch-size", type=int, default=8, help="patches per step")
    parser.add_argument("--seed", type=int, default=0, help="run seed shared by all arms")
    parser.add_argument("--local-weight", type=float, default=0.1, help="weight of the local-region loss")
    parser.add_argument("--bank-weight", type=float, default=0.1, help="weight of the memory-bank loss")
    parser.add_argument("--output", type=Path, default=Path("runs/contrastive_ablation"), help="folder of the runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = base_settings(args.iterations, args.patch_size, args.batch_size, args.seed)
    for dataset in [name.strip() for name in args.datasets.split(",") if name.strip()]:
        if args.phase == "speed":
            summary = phase_speed(dataset, args.speed_steps, args.rounds, settings)
            store(f"speed_{dataset}", summary)
        else:
            summary = phase_ablation(dataset, settings, args.output, args.local_weight, args.bank_weight)
            summary["command"] = "OMP_NUM_THREADS=1 nice -n 5 python benchmarks/contrastive_ablation.py " + " ".join(
                f"--{name.replace('_', '-')} {value}" for name, value in vars(args).items() if name != "output")
            store(dataset, summary)
        print(json.dumps(summary, indent=1), flush=True)


if __name__ == "__main__":
    main()
