"""Compare the U-Net baseline with the lab's three vessel networks (SMAN, RSGN, joint) under one budget.

Every arm trains with the same settings (iterations, patch size, batch, learning-rate schedule, seed, patches drawn
in the same order) through ``medseg_nb.compare.compare_runs`` and is evaluated under the fundus protocol (inside the
FOV, first observer, threshold 0.5, no test-time augmentation). Runs land in ``--output/<dataset>/<arm>``; a
stopped benchmark continues where it stopped when started again with the same arguments.

Phases:

* ``train``: the comparison on the data sets given; rows are merged into the results file per data set.
* ``report``: one bar chart per data set (PNG under ``nbs/images``) and the markdown tables of the docs page.
* ``timing``: full-image sliding-window inference time of every network, measured side by side in interleaved
  rounds in one process on a 584 x 565 image (the DRIVE size) and a 960 x 999 image (the CHASE_DB1 size).

Usage: ``MEDSEG_NB_DATA=/path/to/data python benchmarks/compare_networks.py --phase train --datasets drive
--iterations 800 --threads 1``
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _common import merge

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "compare_networks.json"


def _command() -> str:
    "The command line as run, with the run folder written relative (no paths of the machine in the results)."
    words = ["python", "benchmarks/compare_networks.py"]
    arguments = sys.argv[1:]
    for index, word in enumerate(arguments):
        previous = arguments[index - 1] if index else ""
        words.append("runs/compare_networks" if previous == "--output" else word)
    return " ".join(words)


def _report(output: str) -> None:
    "Draw one figure per data set from the results file and print the markdown tables (paired ones from `output`)."
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    from medseg_nb.compare import comparison_markdown, paired_comparison

    results = json.loads(RESULTS.read_text())
    images = HERE.parent / "nbs" / "images"
    for key in sorted(name for name in results if name.startswith("train_")):
        table = pd.DataFrame(results[key]["rows"])
        dataset = key[len("train_"):]
        print(f"\n### {dataset}\n")
        print(comparison_markdown(table))
        if (Path(output) / dataset).is_dir():
            print("\n| arm | F1 better / n (mean diff) | clDice | component error | Betti-1 error |\n|---|---|---|---|---|")
            paired = [paired_comparison(output, dataset, metric=name, higher_is_better=higher)
                      for name, higher in (("f1", True), ("cldice", True), ("component_error", False),
                                           ("betti1_error", False))]
            for index, arm in enumerate(paired[0]["arm"]):
                cells = []
                for frame, digits in zip(paired, (3, 3, 1, 1)):
                    row = frame.iloc[index]
                    cells.append(f"{row['better']}/{row['n']} ({row['mean_difference']:+.{digits}f})")
                print(f"| {arm} | " + " | ".join(cells) + " |")
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
        arms = list(table["arm"])
        x = np.arange(len(arms))
        for offset, (name, label) in zip((-0.27, 0, 0.27), (("f1", "F1"), ("auc_roc", "AUC-ROC"), ("cldice", "clDice"))):
            axes[0].bar(x + offset, table[name], 0.26, yerr=table[name + "_sd"], label=label, capsize=2)
        axes[0].set_xticks(x, arms)
        axes[0].set_ylim(0.5, 1.0)
        axes[0].legend(loc="lower right", fontsize=8)
        axes[0].set_title(f"{dataset}: pixel and skeleton scores (higher is better)", fontsize=9)
        for offset, (name, label) in zip((-0.27, 0, 0.27), (("component_error", "components"),
                                                             ("betti0_error", "Betti-0"), ("betti1_error", "Betti-1"))):
            axes[1].bar(x + offset, table[name], 0.26, yerr=table[name + "_sd"], label=label, capsize=2)
        axes[1].set_xticks(x, arms)
        axes[1].legend(fontsize=8)
        axes[1].set_title(f"{dataset}: topology errors per image (lower is better)", fontsize=9)
        fig.tight_layout()
        fig.savefig(images / f"compare_networks_{dataset}.png", dpi=110)
        plt.close(fig)
    if "timing" in results:
        for size, rows in results["timing"]["rows"].items():
            print(f"\n### inference {size}\n")
            print("| network | parameters | seconds | ratio to U-Net |\n|---|---|---|---|")
            for row in rows:
                print(f"| {row['arm']} | {row['parameters']:,} | {row['seconds']:.2f} | {row['ratio']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", choices=("train", "timing", "report"), default="train")
    parser.add_argument("--datasets", default="drive,chase_db1,stare")
    parser.add_argument("--models", default="unet,sman,rsgn,joint")
    parser.add_argument("--iterations", type=int, default=800)
    parser.add_argument("--patch-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="runs/compare_networks")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from medseg_nb.compare import compare_runs, time_inference

    models = [name.strip() for name in args.models.split(",")]
    base = {"iterations": args.iterations, "patch_size": args.patch_size, "batch_size": args.batch_size,
            "seed": args.seed, "val_count": 0, "progress": False, "save_images": False, "device": "cpu"}
    if args.phase == "report":
        _report(args.output)
        return
    if args.phase == "train":
        for dataset in args.datasets.split(","):
            table = compare_runs(models, [dataset], base, args.output)
            value = {"command": _command(), "settings": base, "rows": table.to_dict("records")}
            key = f"train_{dataset}" if args.seed == 0 else f"seed{args.seed}_{dataset}"
            merge(RESULTS, key, value)
            print(json.dumps(value, indent=1, default=str), flush=True)
    else:
        rows = {}
        for size in ((584, 565), (960, 999)):
            table = time_inference(models, base, image_size=size, rounds=3, device="cpu")
            rows[f"{size[0]}x{size[1]}"] = table.to_dict("records")
            print(table.to_string(), flush=True)
        merge(RESULTS, "timing", {"command": _command(), "rows": rows})


if __name__ == "__main__":
    main()
