"""The network comparison runs every network through the shared loop and protocol, from the CLI and papermill."""
import csv
import json

import nbformat
import pytest
import torch

from conftest import ROOT, TINY_TRAIN_ARGS, run_cli
from medseg_nb.compare import arm_config, compare_runs
from medseg_nb.experiments import run_notebook
from medseg_nb.learner import Callback
from medseg_nb.runs import load_checkpoint_model, train

TEMPLATE = ROOT / "nbs" / "experiments" / "compare_networks.ipynb"
TINY_SYNTHETIC = ["--synthetic-size", "96,96", "--synthetic-train", "3", "--synthetic-test", "2", "--val-count", "0",
                  "--save-images", "false"]


def test_cli_compares_all_networks(tmp_path):
    output = tmp_path / "compare"
    result = run_cli("compare", "--models", "unet,sman,rsgn,joint", "--datasets", "synthetic", "--iterations", "4",
                     "--output", str(output), *TINY_TRAIN_ARGS, *TINY_SYNTHETIC)
    assert result.returncode == 0, result.stderr
    with open(output / "comparison.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["arm"] for row in rows] == ["unet", "sman", "rsgn", "joint"]
    for row in rows:
        assert 0.0 <= float(row["auc_roc"]) <= 1.0
        assert float(row["parameters"]) > 0
        report = json.loads((output / "synthetic" / row["arm"] / "metrics.json").read_text())
        assert report["protocol"]["region"] == "fov"            # the same protocol for every network
        assert "cldice" in report["summary"]
        assert "betti1_error" in report["summary"]
        config = json.loads((output / "synthetic" / row["arm"] / "config.json").read_text())
        assert (config["iterations"], config["patch_size"], config["seed"]) == (4, 32, 0)
    assert "| synthetic | joint |" in result.stdout


def test_cli_arms_file_sets_model_options(tmp_path):
    arms = tmp_path / "arms.yaml"
    arms.write_text("rsgn2:\n  model: rsgn\n  model_options: {iterations: 2}\n"
                    "joint_half:\n  model: joint\n  task_options: {centerline_weight: 0.5}\n")
    output = tmp_path / "compare"
    result = run_cli("compare", "--arms", str(arms), "--datasets", "synthetic", "--iterations", "2",
                     "--output", str(output), *TINY_TRAIN_ARGS, *TINY_SYNTHETIC)
    assert result.returncode == 0, result.stderr
    config = json.loads((output / "synthetic" / "rsgn2" / "config.json").read_text())
    assert config["model_options"] == {"iterations": 2}
    model, _ = load_checkpoint_model(output / "synthetic" / "rsgn2" / "last.pt", device="cpu")
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)     # two recursive passes, not the default three
    config = json.loads((output / "synthetic" / "joint_half" / "config.json").read_text())
    assert config["task_options"] == {"centerline_weight": 0.5}


def test_cli_rejects_arm_that_sets_dataset(tmp_path):
    arms = tmp_path / "arms.yaml"
    arms.write_text("odd:\n  model: unet\n  dataset: drive\n")
    result = run_cli("compare", "--arms", str(arms), "--datasets", "synthetic", "--output", str(tmp_path / "c"))
    assert result.returncode == 2
    assert "odd" in result.stderr
    assert "dataset" in result.stderr


class PowerCut(Callback):
    "Fail like a killed process in the middle of the second epoch (the first epoch's last.pt is on disk)."

    def on_batch_end(self, learner, outputs):
        if learner.global_step == 4:
            raise RuntimeError("power cut")


def test_interrupted_comparison_resumes(tmp_path):
    base = {"channels": (8, 16, 32), "num_res_units": 1, "iterations": 6, "patch_size": 32, "batch_size": 2,
            "samples_per_image": 2, "roi_size": 64, "warmup_steps": 1, "synthetic_size": (96, 96), "synthetic_train": 3,
            "synthetic_test": 2, "val_count": 0, "save_images": False, "progress": False}
    whole = compare_runs(["unet"], ["synthetic"], base, tmp_path / "whole")
    part = tmp_path / "part" / "synthetic" / "unet"
    config = arm_config(base, "unet", {"model": "unet"}, "synthetic", part)
    with pytest.raises(RuntimeError, match="power cut"):
        train(config, callbacks=[PowerCut()])
    assert (part / "last.pt").is_file()
    assert not (part / "metrics.json").exists()
    resumed = compare_runs(["unet"], ["synthetic"], base, tmp_path / "part")
    assert resumed["f1"].iloc[0] == pytest.approx(whole["f1"].iloc[0], abs=1e-6)
    assert resumed["auc_roc"].iloc[0] == pytest.approx(whole["auc_roc"].iloc[0], abs=1e-6)


def test_compare_notebook_runs_under_papermill(tmp_path):
    output = tmp_path / "nb"
    executed = run_notebook(TEMPLATE, output, {"models": ["unet", "rsgn"], "iterations": 4, "smoke": True},
                            progress=False)
    notebook = nbformat.read(executed, as_version=4)
    assert any("injected-parameters" in cell.metadata.get("tags", []) for cell in notebook.cells)
    with open(output / "comparison.csv") as handle:
        assert [row["arm"] for row in csv.DictReader(handle)] == ["unet", "rsgn"]
