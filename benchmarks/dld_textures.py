"""Benchmark the DLD texture classifiers (dual-branch ResNet, appearance-only ResNet, MSAN and its ablations).

Phases (run one or all; each merges its result into benchmarks/results/dld_textures.json):

* ``speed``: training and inference patches per second of each network at its published width (batch 32, a few
  steps), which sets what fits in the CPU budget.
* ``synthetic``: every network on the 7-class synthetic texture set: ``--n-per-class`` training patches per class
  (volumes of seed 0, 15 % of the volumes held out for validation) and ``--test-per-class`` test patches per class
  from other volumes (seed 1). Patches of one volume never fall on two sides of a split.
* ``covid``: every network on the real 3-class COVID-SemiSeg texture patches (NOR / GGO / CON). Training uses the
  official training slices (15 % of the slices held out for validation), testing the official test slices, each
  with a random cap of patches per class. Then the dense texture map of one test slice by the dual-branch network,
  saved as nbs/images/dld_dense_map_covid.png next to its reference. ``map`` redraws that figure from the saved
  network.

Every run trains for the same number of steps (``--iterations``, batch ``--batch``) with the kit's Learner
(AdamW, warm-up and cosine decay) and is tested with its final weights. The benchmark uses one CPU thread.

Usage: ``MEDSEG_NB_DATA=/path/to/data OMP_NUM_THREADS=1 nice -n 5 python benchmarks/dld_textures.py --phase all``
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import merge

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "dld_textures.json"
IMAGE = ROOT / "nbs" / "images" / "dld_dense_map_covid.png"
NETWORKS = ("dual", "appearance", "msan", "msan_no_attention", "msan_single_scale")


def _merge(key: str, value) -> None:
    merge(RESULTS, key, value, command=" ".join(["python", "benchmarks/dld_textures.py", *sys.argv[1:]]))


def phase_speed(batch: int = 32, steps: int = 3) -> dict:
    "Time `steps` training steps (after one warm-up step) and one inference pass of each network at published width."
    import torch
    import torch.nn.functional as F

    from medseg_nb.dld.networks import get_dld_network

    speeds = {}
    for name in NETWORKS:
        torch.manual_seed(0)
        network = get_dld_network(name)
        optimiser = torch.optim.AdamW(network.parameters(), lr=1e-3)
        inputs = [torch.randn(batch, 1, 32, 32)] + ([torch.randn(batch, 3, 32, 32)] if name == "dual" else [])
        labels = torch.randint(0, 7, (batch,))
        for step in range(steps + 1):
            if step == 1:
                started = time.perf_counter()
            loss = F.cross_entropy(network(*inputs), labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        train_rate = steps * batch / (time.perf_counter() - started)
        network.eval()
        with torch.no_grad():
            started = time.perf_counter()
            network(*[tensor.repeat(4, 1, 1, 1) for tensor in inputs])
            inference_rate = 4 * batch / (time.perf_counter() - started)
        speeds[name] = {"train_patches_per_second": round(train_rate, 1),
                        "inference_patches_per_second": round(inference_rate, 1)}
        print(name, speeds[name], flush=True)
    return speeds


def _load_arrays(data: str, args) -> tuple[dict, float]:
    from medseg_nb.dld.training import DLDConfig, load_dld_arrays

    started = time.perf_counter()
    per_class = args.n_per_class if data == "synthetic" else args.covid_per_class
    test_per_class = args.test_per_class if data == "synthetic" else args.covid_test_per_class
    config = DLDConfig(data=data, n_per_class=per_class, test_per_class=test_per_class, seed=args.seed)
    return load_dld_arrays(config), time.perf_counter() - started


def _counts(arrays: dict) -> dict:
    import numpy as np

    from medseg_nb.dld.data import DLD_CLASSES

    return {split: {DLD_CLASSES[label]: int(count) for label, count in zip(*np.unique(part["label"], return_counts=True))}
            for split, part in arrays.items()}


def phase_data(data: str, args) -> tuple[dict, dict]:
    "Train and test every network on one data set; return the result record and the trained models."
    from medseg_nb.dld.training import DLDConfig, train_dld

    arrays, seconds = _load_arrays(data, args)
    record = {"data_seconds": round(seconds, 1), "patches": _counts(arrays),
              "groups": {split: int(len(set(part["group"].tolist()))) for split, part in arrays.items()}, "runs": {}}
    print(data, "patches", record["patches"], f"({seconds:.0f} s)", flush=True)
    models = {}
    for name in args.networks:
        options = {"widths": args.msan_widths} if name.startswith("msan") else {}
        config = DLDConfig(network=name, data=data, n_per_class=args.n_per_class, iterations=args.iterations,
                           batch=args.batch, lr=args.lr, seed=args.seed, network_options=options,
                           output=str(ROOT / "runs" / "dld_benchmark" / data / name), device="cpu",
                           warmup_steps=args.warmup_steps)
        result = train_dld(config, arrays=arrays)
        metrics = result["metrics"]
        record["runs"][name] = {
            "accuracy": metrics["accuracy"], "f1_avg": metrics["f1_avg"], "f1": metrics["f1"],
            "confusion": metrics["confusion"], "classes": metrics["classes"], "n_test": metrics["n"],
            "parameters": result["record"]["parameters"], "network_options": options,
            "train_seconds": round(result["train_seconds"], 1),
            "val_f1_avg_last": result["history"][-1].get("val_f1_avg"),
        }
        models[name] = (result["model"], arrays["train"]["stats"])
        print(data, name, {key: round(metrics[key], 4) for key in ("accuracy", "f1_avg")},
              f"{result['train_seconds']:.0f} s", flush=True)
    return record, models


def dense_map(model, stats, stride: int) -> dict:
    "Map one COVID-SemiSeg test slice with `model`, save the PNG figure and return pixel scores inside the lung."
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import ListedColormap

    from medseg_nb.ct.covid import covid_semiseg_records
    from medseg_nb.dld.data import DLD_CLASSES
    from medseg_nb.dld.training import CLASS_COLOURS, covid_slice_inputs, dense_probability_map

    # the test slice with the most pixels of its rarest class (normal lung, GGO, CON), so that all three show
    candidates = [(record, covid_slice_inputs(record)) for record in covid_semiseg_records(split="test")]
    record, inputs = max(candidates, key=lambda pair: min(int((pair[1]["label"] == label).sum()) for label in (0, 1, 6)))
    started = time.perf_counter()
    probabilities = dense_probability_map(model, inputs["unit"], inputs["geometry"], stride=stride, stats=stats,
                                          device="cpu")
    seconds = time.perf_counter() - started
    lung = inputs["lung"]
    predicted = probabilities.argmax(axis=0)
    reference = inputs["label"]
    predicted_lesion = np.isin(predicted, [0, 1]) & lung
    reference_lesion = record.classes > 0
    dice = 2 * (predicted_lesion & reference_lesion).sum() / max(predicted_lesion.sum() + reference_lesion.sum(), 1)

    colours = ListedColormap(list(CLASS_COLOURS))
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.6))
    for axis, labels, title in ((axes[0], None, f"CT (COVID-SemiSeg test slice {record.name})"),
                                (axes[1], reference, "reference (radiologist)"),
                                (axes[2], predicted, f"dual-branch ResNet, stride {stride} px")):
        axis.imshow(record.image, cmap="gray")
        if labels is not None:
            axis.imshow(np.ma.masked_where(~lung, labels), cmap=colours, vmin=-0.5, vmax=6.5, alpha=0.45,
                        interpolation="nearest")
        axis.set_title(title, fontsize=10)
        axis.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=CLASS_COLOURS[index]) for index in (6, 1, 0)]
    figure.legend(handles, ["NOR", "GGO (M-GGO)", "CON"], loc="lower center", ncol=3, frameon=False)
    figure.tight_layout(rect=(0, 0.06, 1, 0.97))
    IMAGE.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(IMAGE, dpi=80, bbox_inches="tight")
    plt.close(figure)
    return {"slice": record.name, "shape": list(record.image.shape), "stride": stride, "seconds": round(seconds, 1),
            "pixel_accuracy_in_lung": float((predicted[lung] == reference[lung]).mean()),
            "lesion_dice_in_lung": float(dice), "image": str(IMAGE.relative_to(ROOT)),
            "predicted_fractions_in_lung": {DLD_CLASSES[i]: float((predicted[lung] == i).mean())
                                            for i in np.unique(predicted[lung])}}


def phase_map(stride: int) -> dict:
    "Redraw the dense map with the dual-branch network saved by the covid phase (runs/dld_benchmark/covid/dual)."
    import torch

    from medseg_nb.dld.data import covid_texture_patches
    from medseg_nb.dld.networks import get_dld_network

    checkpoint = ROOT / "runs" / "dld_benchmark" / "covid" / "dual" / "last.pt"
    if not checkpoint.exists():
        raise FileNotFoundError(f"{checkpoint} not found: run the covid phase first")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = get_dld_network("dual", **state["config"]["network_options"])
    model.load_state_dict(state["model"])
    # the covid phase standardised with the statistics of all training patches, before the cap per class
    stats = covid_texture_patches("train")["stats"]
    return dense_map(model, stats, stride)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", choices=("speed", "synthetic", "covid", "map", "all"), default="all",
                        help="'map' redraws the dense map from the network saved by the covid phase")
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    parser.add_argument("--iterations", type=int, default=200, help="optimiser steps per run")
    parser.add_argument("--batch", type=int, default=32, help="patches per step")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of AdamW")
    parser.add_argument("--warmup-steps", type=int, default=15, help="linear warm-up steps before the cosine decay")
    parser.add_argument("--n-per-class", type=int, default=300, help="synthetic training patches per class")
    parser.add_argument("--test-per-class", type=int, default=100, help="synthetic test patches per class")
    parser.add_argument("--covid-per-class", type=int, default=600, help="cap of COVID training patches per class")
    parser.add_argument("--covid-test-per-class", type=int, default=500, help="cap of COVID test patches per class")
    parser.add_argument("--msan-widths", type=lambda text: [int(v) for v in text.split(",")], default=[32, 64, 128],
                        help="MSAN stage widths for the training runs (published: 128,256,512)")
    parser.add_argument("--stride", type=int, default=8, help="pixels between patch centres of the dense map")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    settings = {key: value for key, value in vars(args).items() if key != "phase"}
    if args.phase in ("speed", "all"):
        _merge("speed", {"batch": 32, "widths": "published", "networks": phase_speed()})
    for data in ("synthetic", "covid"):
        if args.phase not in (data, "all"):
            continue
        record, models = phase_data(data, args)
        record["settings"] = settings
        if data == "covid" and "dual" in models:
            record["dense_map"] = dense_map(*models["dual"], stride=args.stride)
            print("dense map", record["dense_map"], flush=True)
        _merge(data, record)
    if args.phase == "map":
        # the training command and machine of the covid phase stay; the redraw records its own command
        results = json.loads(RESULTS.read_text())
        redrawn = phase_map(args.stride)
        redrawn["command"] = " ".join(["python", "benchmarks/dld_textures.py", *sys.argv[1:]])
        results["covid"]["dense_map"] = redrawn
        RESULTS.write_text(json.dumps(results, indent=1))
        print("dense map", redrawn, flush=True)
        return
    _merge(f"wall_seconds_{args.phase}", round(time.perf_counter() - started, 1))
    print(f"total {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
