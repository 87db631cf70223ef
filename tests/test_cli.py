"""End-to-end runs of the `medseg-nb` command line on synthetic data, and its errors for bad input."""
import json

import torch

from conftest import TINY_TRAIN_ARGS, run_cli


def test_train_then_evaluate_synthetic(tmp_path):
    output = tmp_path / "run"
    result = run_cli("train", "--dataset", "synthetic", "--iterations", "12", "--synthetic-size", "128,128",
                     "--synthetic-train", "3", "--synthetic-test", "2", "--val-count", "1", "--output", str(output),
                     *TINY_TRAIN_ARGS)
    assert result.returncode == 0, result.stderr
    assert "inside the field of view" in result.stdout
    for name in ("config.json", "last.pt", "best.pt", "log.csv", "log.json", "metrics.json", "per_image.csv"):
        assert (output / name).is_file(), name
    assert len(list((output / "predictions").glob("*_binary.png"))) == 2
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["n_images"] == 2
    assert 0.0 <= metrics["summary"]["f1"]["mean"] <= 1.0
    checkpoint = torch.load(output / "last.pt", weights_only=False)
    assert checkpoint["global_step"] == 12
    assert checkpoint["config"]["dataset"] == "synthetic"

    evaluated = run_cli("evaluate", "--checkpoint", str(output / "last.pt"), "--split", "test",
                        "--output", str(tmp_path / "again"))
    assert evaluated.returncode == 0, evaluated.stderr
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["summary"]["f1"]["mean"] == metrics["summary"]["f1"]["mean"]


def test_unknown_dataset_names_choices(tmp_path):
    result = run_cli("train", "--dataset", "drvie", "--iterations", "1", "--output", str(tmp_path / "x"))
    assert result.returncode == 2
    assert "drvie" in result.stderr
    assert "drive" in result.stderr


def test_unknown_model_names_choices(tmp_path):
    result = run_cli("train", "--model", "resnet", "--iterations", "1", "--output", str(tmp_path / "x"),
                     "--synthetic-size", "64,64", "--synthetic-train", "2", "--synthetic-test", "1", "--val-count", "0",
                     *TINY_TRAIN_ARGS)
    assert result.returncode == 2
    assert "resnet" in result.stderr
    assert "unet" in result.stderr


def test_missing_data_root_is_named(tmp_path):
    missing = tmp_path / "no_such_drive"
    result = run_cli("train", "--dataset", "drive", "--data-root", str(missing), "--iterations", "1",
                     "--output", str(tmp_path / "x"))
    assert result.returncode == 2
    assert str(missing) in result.stderr


def test_wrong_data_root_layout_is_named(tmp_path):
    (tmp_path / "DRIVE").mkdir()
    result = run_cli("train", "--dataset", "drive", "--data-root", str(tmp_path / "DRIVE"), "--iterations", "1",
                     "--output", str(tmp_path / "x"))
    assert result.returncode == 2
    assert "training" in result.stderr


def test_invalid_patch_size_names_multiple(tmp_path):
    result = run_cli("train", "--patch-size", "90", "--output", str(tmp_path / "x"))
    assert result.returncode == 2
    assert "multiple of 16" in result.stderr


def test_existing_run_needs_resume(tmp_path):
    output = tmp_path / "run"
    args = ["train", "--iterations", "2", "--synthetic-size", "64,64", "--synthetic-train", "2", "--synthetic-test", "1",
            "--val-count", "0", "--eval-split", "none", "--output", str(output), *TINY_TRAIN_ARGS]
    assert run_cli(*args).returncode == 0
    before = (output / "last.pt").read_bytes()
    second = run_cli(*args)
    assert second.returncode == 2
    assert "--resume" in second.stderr or "resume=True" in second.stderr
    assert (output / "last.pt").read_bytes() == before


def test_missing_checkpoint_is_named(tmp_path):
    result = run_cli("evaluate", "--checkpoint", str(tmp_path / "none.pt"))
    assert result.returncode == 2
    assert "none.pt" in result.stderr


def test_workers_reproducible_and_distinct():
    import torch
    from torch.utils.data import DataLoader

    from medseg_nb.core import seed_everything, worker_init_fn
    from medseg_nb.data.synthetic import synthetic_fundus_records
    from medseg_nb.transforms import FundusPatchDataset

    records = synthetic_fundus_records("train", n_images=1, size=(96, 96), seed=0)

    def first_two_batches():
        seed_everything(5)
        dataset = FundusPatchDataset(records, patch_size=32, samples_per_image=8, seed=5)
        loader = DataLoader(dataset, batch_size=4, shuffle=False, num_workers=2, worker_init_fn=worker_init_fn)
        batches = iter(loader)
        return next(batches)["image"], next(batches)["image"]

    first_run, second_run = first_two_batches(), first_two_batches()
    assert torch.equal(first_run[0], second_run[0])
    assert torch.equal(first_run[1], second_run[1])
    # batch 0 comes from worker 0 and batch 1 from worker 1, both sampling the same image
    assert not torch.equal(first_run[0], first_run[1]), "the two workers drew the same random patches"
