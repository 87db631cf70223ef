"""Train a 3-class COVID-19 lesion network on the 50 COVID-SemiSeg training slices and score it on the 48 test slices.

Usage (one model per process, one CPU thread):
    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/covid_semiseg.py --model unet --iterations 1200
    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/covid_semiseg.py --model sman --iterations 260

Each run adds its entry to benchmarks/results/covid_semiseg.json (segmentation metrics, burden agreement,
lesion-present AUC, timing and environment). Needs the COVID-SemiSeg folder under $MEDSEG_NB_DATA.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import machine

import numpy as np
import torch

from medseg_nb.ct.burden import burden_agreement, burden_table, lesion_present_units, lung_mask_8bit, roc_auc
from medseg_nb.ct.covid import CovidConfig, covid_semiseg_records, evaluate_covid, train_covid

RESULTS = Path(__file__).parent / "results" / "covid_semiseg.json"
PUBLISHED = {  # infection Dice on this 48-slice test split, Fan et al., IEEE TMI 39(8):2626-2637, 2020
    "Inf-Net": 0.682, "Semi-Inf-Net": 0.739, "U-Net (as reported by Fan et al.)": 0.439,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unet", help="a name in medseg_nb.models.MODELS (unet, sman)")
    parser.add_argument("--iterations", type=int, default=1200, help="optimiser steps")
    parser.add_argument("--size", type=int, default=256, help="square side the slices are resized to, pixels")
    parser.add_argument("--batch-size", type=int, default=4, help="slices per step")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="runs/benchmark_covid", help="parent folder of the run folders")
    args = parser.parse_args()
    torch.set_num_threads(1)

    output = Path(args.output) / args.model
    if (output / "last.pt").exists():
        raise SystemExit(f"{output} already contains a run: delete it or pass another --output")
    config = CovidConfig(model=args.model, iterations=args.iterations, size=args.size, batch_size=args.batch_size,
                         lr=args.lr, seed=args.seed, data="covid_semiseg", output=str(output), progress=False)
    started = time.perf_counter()
    run = train_covid(config)
    test_records = covid_semiseg_records(split="test")
    evaluated = time.perf_counter()
    report = evaluate_covid(output / "last.pt", test_records, keep_probabilities=True)
    eval_seconds = time.perf_counter() - evaluated
    probabilities = report.pop("probabilities")
    lungs = [lung_mask_8bit(record.image) for record in test_records]
    predicted = [probability.argmax(0).astype(np.uint8) for probability in probabilities]
    table = burden_table(test_records, predicted, lungs)
    detection = {}
    for unit in ("hemithorax", "tile"):
        units = lesion_present_units(test_records, probabilities, unit=unit, lungs=lungs)
        detection[unit] = {"positives": int(units["label"].sum()), "negatives": int((units["label"] == 0).sum()),
                           "auc_area": roc_auc(units["label"], units["area"]),
                           "auc_max_prob": roc_auc(units["label"], units["max_prob"])}
    entry = {
        "model": args.model, "iterations": args.iterations, "size": args.size, "batch_size": args.batch_size,
        "lr": args.lr, "seed": args.seed, "train_seconds": run["train_seconds"], "eval_seconds": round(eval_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "segmentation": report["mean"], "empty_reference": report["empty_reference"],
        "burden": burden_agreement(table),
        "lesion_in_lung_mask": {"mean": float(table["lesion_in_mask"].mean()),
                                "min": float(table["lesion_in_mask"].min())},
        "lesion_present": detection,
        "final_train_loss": run["history"][-1]["train_loss"],
        "command": f"OMP_NUM_THREADS=1 nice -n 5 python benchmarks/covid_semiseg.py --model {args.model} "
                   f"--iterations {args.iterations} --size {args.size} --batch-size {args.batch_size}",
        "machine": machine(),
    }
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["published_infection_dice"] = PUBLISHED
    results.setdefault("runs", {})[args.model] = entry
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(entry, indent=1))


if __name__ == "__main__":
    main()
