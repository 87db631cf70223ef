"""Benchmark the kit's U-Net recipe on DRIVE against a minimal plain-MONAI loop, on the machine at hand.

Phases (run one or all; each prints JSON and merges it into the results file):

* ``throughput``: training patches per second of (a) the kit's Learner, (b) a minimal plain-MONAI loop in
  PyTorch's default memory format and (c) the same plain loop in the channels-last format that the Learner uses.
  Same model (MONAI U-Net 16-256, 2 residual units), same patch data set and DataLoader, batch 8. The variants run
  in alternating subprocesses, several rounds, so a ratio compares runs made side by side; each subprocess also
  reports its peak resident memory.
* ``dashboard``: the Learner's throughput with and without the live training dashboard (``medseg_nb.viz``) in
  its live form, on epochs of 80 steps, in alternating subprocesses.
* ``train``: the kit's full recipe (``medseg_nb.runs.train``) on the 20 DRIVE training images for a fixed step
  budget, then evaluation on the 20 test images inside the FOV against the first observer, with and without flip
  test-time augmentation.

Usage: ``MEDSEG_NB_DATA=/path/to/data python benchmarks/drive_unet.py --phase all --iterations 24000``
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import merge

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "drive_unet.json"


def _merge(key: str, value) -> None:
    merge(RESULTS, key, value)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _patch_loader(seed: int = 0):
    from torch.utils.data import DataLoader

    from medseg_nb.data.fundus import fundus_records
    from medseg_nb.transforms import FundusPatchDataset

    records = fundus_records("drive", split="train")
    dataset = FundusPatchDataset(records, patch_size=96, samples_per_image=64, seed=seed)
    return DataLoader(dataset, batch_size=8, shuffle=True, drop_last=True, num_workers=0)


def _unet():
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2),
                num_res_units=2)


def measure_variant(variant: str, steps: int) -> dict:
    "Train `steps` steps with one variant and return patches per second (after 20 warm-up steps) and peak memory."
    import tempfile

    import torch
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    loader = _patch_loader()
    model = _unet()
    warmup = 20
    if variant == "kit":
        from medseg_nb.learner import Callback, Learner, SegmentationTask

        class Clock(Callback):
            def on_batch_end(self, learner, outputs):
                if learner.global_step == warmup:
                    self.started = time.perf_counter()

        clock = Clock()
        learner = Learner(model, SegmentationTask("dice_ce"), loader, output_dir=tempfile.mkdtemp(), lr=1e-3,
                          progress=False, callbacks=[clock], device="cpu")
        learner.fit(max_steps=steps + warmup)
        seconds = time.perf_counter() - clock.started
    else:
        channels_last = variant == "plain_channels_last"
        loss_function = DiceCELoss(sigmoid=True)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        done = 0
        started = None
        while done < steps + warmup:
            for batch in loader:
                images, labels = batch["image"], batch["label"]
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                optimizer.zero_grad()
                loss = loss_function(model(images), labels)
                loss.backward()
                optimizer.step()
                done += 1
                if done == warmup:
                    started = time.perf_counter()
                if done == steps + warmup:
                    break
        seconds = time.perf_counter() - started
    return {"variant": variant, "steps": steps, "seconds": seconds, "patches_per_second": steps * 8 / seconds,
            "peak_rss_mb": _peak_rss_mb()}


def measure_dashboard(with_dashboard: bool, epochs: int = 3) -> dict:
    "Fit `epochs` epochs of 80 steps with or without the live dashboard; return patches per second after epoch 1."
    import os
    import tempfile

    import torch
    from torch.utils.data import DataLoader

    from medseg_nb.data.fundus import fundus_records
    from medseg_nb.learner import Callback, Learner, SegmentationTask
    from medseg_nb.transforms import FundusPatchDataset, fundus_eval_transforms

    os.environ["MEDSEG_NB_VIZ"] = "live"
    torch.manual_seed(0)
    records = fundus_records("drive", split="train")
    dataset = FundusPatchDataset(records, patch_size=96, samples_per_image=32, seed=0)
    loader = DataLoader(dataset, batch_size=8, shuffle=True, drop_last=True)
    callbacks = []
    if with_dashboard:
        from medseg_nb.viz import TrainingDashboard

        sample = fundus_eval_transforms()(fundus_records("drive", split="test")[0].as_dict())
        callbacks.append(TrainingDashboard(sample_image=sample["image"][:, 200:328, 200:328],
                                           sample_label=sample["label"][0, 200:328, 200:328], static=False))

    class Clock(Callback):
        order = 100

        def on_epoch_end(self, learner, row):
            if learner.epoch == 1:
                self.started, self.step = time.perf_counter(), learner.global_step

    clock = Clock()
    learner = Learner(_unet(), SegmentationTask("dice_ce"), loader, output_dir=tempfile.mkdtemp(), progress=False,
                      callbacks=[*callbacks, clock], device="cpu", validate=lambda lrn: {"f1": 0.0})
    learner.fit(max_epochs=epochs)
    seconds = time.perf_counter() - clock.started
    steps = learner.global_step - clock.step
    return {"dashboard": with_dashboard, "steps": steps, "seconds": seconds, "patches_per_second": steps * 8 / seconds}


def phase_dashboard(rounds: int) -> dict:
    runs: dict[str, list] = {"without": [], "with": []}
    for round_index in range(rounds):
        order = ["without", "with"] if round_index % 2 == 0 else ["with", "without"]
        for name in order:
            completed = subprocess.run([sys.executable, __file__, "--measure-dashboard", name], capture_output=True,
                                       text=True, check=True)
            result = json.loads(completed.stdout.strip().splitlines()[-1])
            runs[name].append(result)
            print(json.dumps(result), flush=True)
    with_median = statistics.median(r["patches_per_second"] for r in runs["with"])
    without_median = statistics.median(r["patches_per_second"] for r in runs["without"])
    return {"ratio_with_over_without": with_median / without_median, "with_median": with_median,
            "without_median": without_median, "runs": runs,
            "settings": {"epochs_timed": 2, "steps_per_epoch": 80, "dashboard": "live FigureWidget, 128 px sample"}}


def phase_throughput(steps: int, rounds: int) -> dict:
    variants = ["kit", "plain_default", "plain_channels_last"]
    runs: dict[str, list] = {name: [] for name in variants}
    for round_index in range(rounds):
        order = variants if round_index % 2 == 0 else list(reversed(variants))
        for variant in order:
            completed = subprocess.run([sys.executable, __file__, "--measure", variant, "--steps", str(steps)],
                                       capture_output=True, text=True, check=True)
            result = json.loads(completed.stdout.strip().splitlines()[-1])
            runs[variant].append(result)
            print(json.dumps(result), flush=True)
    summary = {name: {"patches_per_second_median": statistics.median(r["patches_per_second"] for r in rs),
                      "peak_rss_mb_max": max(r["peak_rss_mb"] for r in rs), "runs": rs} for name, rs in runs.items()}
    kit = summary["kit"]["patches_per_second_median"]
    summary["ratio_kit_over_plain_channels_last"] = kit / summary["plain_channels_last"]["patches_per_second_median"]
    summary["ratio_kit_over_plain_default"] = kit / summary["plain_default"]["patches_per_second_median"]
    summary["settings"] = {"steps_per_run": steps, "warmup_steps": 20, "rounds": rounds, "batch_size": 8,
                           "patch_size": 96, "model": "MONAI UNet 16-32-64-128-256, 2 residual units"}
    return summary


def phase_train(iterations: int, output: Path) -> dict:
    from medseg_nb.runs import TrainConfig, evaluate, train

    config = TrainConfig(dataset="drive", output=str(output), iterations=iterations, samples_per_image=128,
                         val_count=2, val_every=5, progress=False, save_images=True, device="cpu")
    started = time.perf_counter()
    result = train(config)
    wall = time.perf_counter() - started
    train_seconds = result["train_seconds"]
    started = time.perf_counter()
    with_tta = evaluate(output / "last.pt", tta=True, output=output / "eval_tta", progress=False)
    tta_seconds = time.perf_counter() - started
    report = result["report"]

    def brief(rep):
        return {"mean": {k: v["mean"] for k, v in rep["summary"].items()},
                "sd": {k: v["sd"] for k, v in rep["summary"].items()},
                "pooled": {k: rep["pooled"][k] for k in ("accuracy", "sensitivity", "specificity", "f1", "auc_roc", "auc_pr")},
                "protocol": rep["protocol"]["description"],
                "inference_seconds_per_image": statistics.mean(row["seconds"] for row in rep["per_image"])}

    return {"config": {"iterations": iterations, "samples_per_image": 128, "val_count": 2, "val_every": 5,
                       "patch_size": 96, "batch_size": 8, "lr": config.lr, "channels": list(config.channels)},
            "train_seconds_including_validation": train_seconds, "wall_seconds_train_and_eval": wall,
            "peak_rss_mb": _peak_rss_mb(), "test": brief(report), "test_tta": brief(with_tta),
            "tta_eval_seconds": tta_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=["throughput", "dashboard", "train", "all"], default="all")
    parser.add_argument("--iterations", type=int, default=24000, help="training steps of the train phase")
    parser.add_argument("--steps", type=int, default=150, help="timed steps per throughput run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three throughput variants")
    parser.add_argument("--output", type=Path, default=Path("runs/benchmark_drive"), help="run folder of the train phase")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--measure-dashboard", choices=["with", "without"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure_variant(args.measure, args.steps)))
        return
    if args.measure_dashboard:
        print(json.dumps(measure_dashboard(args.measure_dashboard == "with")))
        return
    if args.phase in ("throughput", "all"):
        summary = phase_throughput(args.steps, args.rounds)
        _merge("throughput", summary)
        print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, dict) or "runs" not in v}, indent=1))
    if args.phase in ("dashboard", "all"):
        summary = phase_dashboard(args.rounds)
        _merge("dashboard", summary)
        print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))
    if args.phase in ("train", "all"):
        summary = phase_train(args.iterations, args.output)
        _merge("train", summary)
        print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
