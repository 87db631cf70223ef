"""Tests of the local-region and memory-bank contrastive task on tiny U-Nets and synthetic data."""
import json
import math

import pytest
import torch

import medseg_nb.contrastive as contrastive
from conftest import ROOT, TINY_TRAIN_ARGS, run_cli
from medseg_nb.contrastive import (
    ContrastiveTask, PixelMemoryBank, ablation_arms, add_overheads, decoder_layer, local_contrastive_loss,
    memory_bank_loss, push_to_bank,
)
from medseg_nb.core import seed_everything
from medseg_nb.experiments import run_notebook
from medseg_nb.learner import TASKS, Callback, SegmentationTask, StopTraining
from medseg_nb.models import PadToMultiple, build_unet, count_parameters
from medseg_nb.runs import TrainConfig, build_model, build_task, load_checkpoint_model, train

TINY = (8, 16, 32)
TEMPLATE = ROOT / "nbs" / "experiments" / "contrastive_ablation.ipynb"
RUN_SETTINGS = {"model": "unet", "task": "contrastive", "task_options": {"local_weight": 0.2, "bank_weight": 0.2,
                "queue_size": 96, "embedding_dim": 16}, "iterations": 16, "patch_size": 32, "batch_size": 4,
                "samples_per_image": 4, "channels": TINY, "num_res_units": 1, "synthetic_size": (96, 96),
                "synthetic_train": 3, "synthetic_test": 1, "val_count": 1, "roi_size": 32, "warmup_steps": 3,
                "seed": 5, "device": "cpu", "progress": False, "save_images": False, "eval_split": "none"}


def tiny_unet() -> torch.nn.Module:
    return PadToMultiple(build_unet(channels=TINY, num_res_units=1), 4)


def vessel_batch(label: torch.Tensor, seed: int = 0) -> dict:
    "A batch whose image is a noisy copy of `label` (B,1,H,W)."
    generator = torch.Generator().manual_seed(seed)
    return {"image": label * 2 - 1 + 0.3 * torch.randn(label.shape, generator=generator), "label": label}


def striped_label(batch: int = 2, size: int = 32) -> torch.Tensor:
    label = torch.zeros(batch, 1, size, size)
    label[:, :, size // 4:size // 4 + 3, :] = 1.0
    return label


def assert_finite_step(task: ContrastiveTask, model: torch.nn.Module, batch: dict) -> dict:
    "Run one training step with backward; check the loss, every output and every gradient are finite."
    outputs = task.training_step(model, batch)
    outputs["loss"].backward()
    for name, value in outputs.items():
        assert math.isfinite(float(value.detach() if isinstance(value, torch.Tensor) else value)), name
    modules = [model, *task.extra_modules()]
    for module in modules:
        for name, parameter in module.named_parameters():
            if parameter.grad is not None:
                assert torch.isfinite(parameter.grad).all(), name
    return outputs


def log_losses(output) -> list[float]:
    return [row["train_loss"] for row in json.loads((output / "log.json").read_text())]


def test_task_registered_through_runs():
    config = TrainConfig(**{**RUN_SETTINGS, "output": "unused"})
    assert TASKS["contrastive"] is ContrastiveTask
    task = build_task(config)
    assert isinstance(task, ContrastiveTask)
    assert (task.local_weight, task.bank_weight, task.bank.queue.shape[1]) == (0.2, 0.2, 96)


def test_model_has_only_unet_parameters():
    config = TrainConfig(**{**RUN_SETTINGS, "output": "unused"})
    model, task = build_model(config), build_task(config)
    seed_everything(0)
    task.training_step(model, vessel_batch(striped_label()))
    assert count_parameters(model) == count_parameters(build_unet(channels=TINY, num_res_units=1))
    assert count_parameters(task.head) > 0
    assert not any(parameter is head_parameter for parameter in model.parameters() for head_parameter in task.head.parameters())
    model.eval()
    images = torch.randn(1, 1, 37, 50)
    assert torch.equal(task.predict(model, images), torch.sigmoid(model(images)))


def test_hook_reads_top_decoder_level():
    model = tiny_unet()
    layer = decoder_layer(model)
    captured = []
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.append(output.shape))
    model(torch.zeros(1, 1, 30, 30))
    handle.remove()
    assert tuple(captured[0]) == (1, 2 * TINY[0], 16, 16)  # padded to 32, then half resolution
    task = ContrastiveTask(embedding_dim=8)
    task.training_step(model, vessel_batch(striped_label(size=30)))
    assert len(layer._forward_hooks) == 0


def test_bad_feature_layer_rejected():
    task = ContrastiveTask(feature_layer="model.7")
    with pytest.raises(ValueError, match="no submodule 'model.7'"):
        task.training_step(tiny_unet(), vessel_batch(striped_label()))


@pytest.mark.parametrize("options", [{"local_weight": -0.1}, {"bank_weight": -1}, {"temperature": 0.0},
                                     {"window_size": 0}, {"boundary_width": -1}, {"queue_size": 0}])
def test_invalid_options_rejected(options):
    with pytest.raises(ValueError):
        ContrastiveTask(**options)


def test_zero_weight_skips_computation(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a switched-off term was computed")

    batch = vessel_batch(striped_label())
    model = tiny_unet()
    monkeypatch.setattr(contrastive, "local_contrastive_loss", forbidden)
    outputs = ContrastiveTask(local_weight=0.0, bank_weight=0.1, embedding_dim=8).training_step(model, batch)
    assert "loss_local" not in outputs
    assert "loss_bank" in outputs
    monkeypatch.undo()
    monkeypatch.setattr(contrastive, "memory_bank_loss", forbidden)
    monkeypatch.setattr(contrastive, "push_to_bank", forbidden)
    bank_off = ContrastiveTask(local_weight=0.1, bank_weight=0.0, embedding_dim=8)
    outputs = bank_off.training_step(model, batch)
    assert "loss_bank" not in outputs
    assert "loss_local" in outputs
    assert int(bank_off.bank.filled.sum()) == 0
    monkeypatch.setattr(contrastive, "local_contrastive_loss", forbidden)
    both_off = ContrastiveTask(local_weight=0.0, bank_weight=0.0)
    outputs = both_off.training_step(model, batch)
    assert sorted(outputs) == ["loss", "loss_segmentation"]
    assert both_off.extra_modules() == []
    assert torch.equal(outputs["loss"], outputs["loss_segmentation"])


def test_zero_weights_match_segmentation_task():
    model = tiny_unet()
    batch = vessel_batch(striped_label())
    plain = SegmentationTask("dice_ce").training_step(model, batch)["loss"]
    switched_off = ContrastiveTask(local_weight=0.0, bank_weight=0.0).training_step(model, batch)["loss"]
    assert torch.equal(plain, switched_off)


def test_loss_is_weighted_sum():
    seed_everything(1)
    task = ContrastiveTask(local_weight=0.3, bank_weight=0.7, embedding_dim=8)
    model = tiny_unet()
    task.training_step(model, vessel_batch(striped_label(), seed=1))  # fills the bank
    outputs = task.training_step(model, vessel_batch(striped_label(), seed=2))
    assert outputs["bank_anchors"] > 0
    assert outputs["local_anchors"] > 0
    expected = outputs["loss_segmentation"] + 0.3 * outputs["loss_local"] + 0.7 * outputs["loss_bank"]
    assert torch.allclose(outputs["loss"].detach(), expected)


@pytest.mark.parametrize("case", ["no_vessel", "no_background", "vessel_in_one_window"])
def test_degenerate_labels_finite(case):
    label = torch.zeros(2, 1, 64, 64)
    if case == "no_background":
        label[:] = 1.0
    if case == "vessel_in_one_window":
        label[:, :, 4:7, 2:20] = 1.0  # only the top-left 16 x 16 window of the 32 x 32 grid has vessels
    seed_everything(0)
    task = ContrastiveTask(local_weight=0.5, bank_weight=0.5, embedding_dim=8)
    model = tiny_unet()
    for step in range(2):  # the second step meets a bank filled with one class only (or both)
        outputs = assert_finite_step(task, model, vessel_batch(label, seed=step))
        model.zero_grad(set_to_none=True)
    if case != "vessel_in_one_window":
        assert outputs["local_anchors"] == 0
        assert outputs["bank_anchors"] == 0
        assert outputs["loss_local"] == 0.0
        assert outputs["loss_bank"] == 0.0


def test_window_without_vessel_gives_no_anchor():
    embeddings = torch.nn.functional.normalize(torch.randn(1, 4, 32, 32), dim=1)
    label = torch.zeros(1, 1, 32, 32)
    label[:, :, 2:4, 2:10] = 1.0
    hard = torch.ones(1, 1, 32, 32, dtype=torch.bool)
    loss, count = local_contrastive_loss(embeddings, label, hard, window_size=16, max_anchors=8)
    assert count == 8  # only the first of four windows has both classes
    assert torch.isfinite(loss)


def test_empty_and_one_class_bank():
    embeddings = torch.nn.functional.normalize(torch.randn(2, 4, 16, 16, requires_grad=True), dim=1)
    label = striped_label(size=16)
    hard = torch.zeros_like(label, dtype=torch.bool)
    bank = PixelMemoryBank(embedding_dim=4, queue_size=32)
    loss, count = memory_bank_loss(embeddings, label, hard, bank)
    assert (float(loss.detach()), count) == (0.0, 0)
    push_to_bank(embeddings, torch.ones_like(label), bank, per_class=8)  # vessel entries only
    assert bank.filled.tolist() == [0, 8]
    loss, count = memory_bank_loss(embeddings, label, hard, bank)
    assert (float(loss.detach()), count) == (0.0, 0)
    push_to_bank(embeddings, label, bank, per_class=8)
    loss, count = memory_bank_loss(embeddings, label, hard, bank, anchors_per_class=5)
    assert count == 10
    loss.backward()


def test_bank_fifo_and_state_round_trip():
    bank = PixelMemoryBank(embedding_dim=2, queue_size=4)
    for value in range(6):
        bank.push(torch.tensor([[float(value), 0.0]]), torch.tensor([1]))
    assert bank.queue[1, :, 0].tolist() == [4.0, 5.0, 2.0, 3.0]
    assert bank.filled.tolist() == [0, 4]
    task = ContrastiveTask(queue_size=4, embedding_dim=2)
    task.bank.load_state_dict(bank.state_dict())
    restored = ContrastiveTask(queue_size=4, embedding_dim=2)
    restored.load_state_dict({"memory_bank": task.state_dict()["memory_bank"]})
    assert torch.equal(restored.bank.queue, bank.queue)
    assert restored.bank.pointer.tolist() == [0, 2]


def test_mixed_precision_step_finite():
    seed_everything(0)
    task = ContrastiveTask(local_weight=0.5, bank_weight=0.5, embedding_dim=8)
    model = tiny_unet()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        outputs = task.training_step(model, vessel_batch(striped_label()))
    assert outputs["loss"].dtype == torch.float32
    assert torch.isfinite(outputs["loss"])


class StopAfterEpoch(Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, learner, row):
        if learner.epoch == self.epoch:
            raise StopTraining


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("contrastive") / "straight"
    train({**RUN_SETTINGS, "output": str(output)})
    return output


def test_same_seed_same_loss_curve(straight_run, tmp_path):
    again = tmp_path / "again"
    train({**RUN_SETTINGS, "output": str(again)})
    first, second = log_losses(straight_run), log_losses(again)
    assert len(first) == len(second) >= 3
    assert first == pytest.approx(second, abs=1e-6)
    first_state = torch.load(straight_run / "last.pt", weights_only=False)["task"]["memory_bank"]
    second_state = torch.load(again / "last.pt", weights_only=False)["task"]["memory_bank"]
    assert torch.equal(first_state["queue"], second_state["queue"])


def test_resume_matches_uninterrupted(straight_run, tmp_path):
    resumed = tmp_path / "resumed"
    train({**RUN_SETTINGS, "output": str(resumed)}, callbacks=[StopAfterEpoch(2)])
    interrupted = torch.load(resumed / "last.pt", weights_only=False)
    assert interrupted["epoch"] == 2
    assert interrupted["global_step"] < RUN_SETTINGS["iterations"]
    assert int(interrupted["task"]["memory_bank"]["filled"].sum()) > 0
    train({**RUN_SETTINGS, "output": str(resumed)}, resume=True)
    assert log_losses(resumed) == pytest.approx(log_losses(straight_run), abs=1e-6)
    final = torch.load(resumed / "last.pt", weights_only=False)
    expected = torch.load(straight_run / "last.pt", weights_only=False)
    assert torch.allclose(final["task"]["memory_bank"]["queue"], expected["task"]["memory_bank"]["queue"], atol=1e-6)


def test_resume_without_bank_differs(straight_run, tmp_path):
    "The memory bank matters for resume: a run that resumes with an emptied bank follows another loss curve."
    emptied = tmp_path / "emptied"
    train({**RUN_SETTINGS, "output": str(emptied)}, callbacks=[StopAfterEpoch(2)])
    state = torch.load(emptied / "last.pt", weights_only=False)
    state["task"].pop("memory_bank")
    torch.save(state, emptied / "last.pt")
    train({**RUN_SETTINGS, "output": str(emptied)}, resume=True)
    assert log_losses(emptied) != pytest.approx(log_losses(straight_run), abs=1e-6)


def test_checkpoint_evaluates_as_plain_unet(straight_run):
    model, config = load_checkpoint_model(straight_run / "last.pt", device="cpu")
    assert config.task == "contrastive"
    assert count_parameters(model) == count_parameters(build_unet(channels=TINY, num_res_units=1))


def test_cli_trains_contrastive_task(tmp_path):
    output = tmp_path / "cli"
    result = run_cli("train", "--model", "unet", "--task", "contrastive", "--task-options",
                     "{local_weight: 0.1, bank_weight: 0.1, embedding_dim: 16}", "--dataset", "synthetic",
                     "--iterations", "6", "--synthetic-size", "96,96", "--synthetic-train", "3", "--synthetic-test", "1",
                     "--val-count", "1", "--output", str(output), *TINY_TRAIN_ARGS)
    assert result.returncode == 0, result.stderr
    checkpoint = torch.load(output / "last.pt", weights_only=False)
    assert checkpoint["config"]["task_options"] == {"local_weight": 0.1, "bank_weight": 0.1, "embedding_dim": 16}
    assert "memory_bank" in checkpoint["task"]


def test_ablation_arms_and_overheads():
    runs = ablation_arms({"iterations": 5}, ["drive", "chase_db1"], "out", local_weight=0.2, bank_weight=0.3)
    assert [(run["dataset"], run["arm"]) for run in runs][:4] == [("drive", "unet"), ("drive", "local"),
                                                                  ("drive", "bank"), ("drive", "local+bank")]
    assert runs[2]["config"]["task_options"] == {"local_weight": 0.0, "bank_weight": 0.3}
    assert runs[7]["config"]["output"] == "out/chase_db1/local_bank"
    assert all(run["config"]["task"] == "contrastive" and run["config"]["iterations"] == 5 for run in runs)
    rows = add_overheads([{"dataset": "d", "arm": "unet", "fit_seconds": 10.0, "peak_rss_mb": 500.0},
                          {"dataset": "d", "arm": "local", "fit_seconds": 15.0, "peak_rss_mb": 550.0}])
    assert (rows[1]["time_ratio"], rows[1]["memory_ratio"]) == (1.5, 1.1)
    with pytest.raises(ValueError, match="unknown ablation arm"):
        ablation_arms({}, ["drive"], "out", arms=["everything"])


def test_ablation_notebook_runs(tmp_path):
    output = tmp_path / "ablation"
    executed = run_notebook(TEMPLATE, output, {"datasets": ["synthetic"], "iterations": 4, "smoke": True,
                                                "isolate": False}, progress=False)
    assert executed.is_file()
    rows = json.loads((output / "ablation.json").read_text())["rows"]
    assert [row["arm"] for row in rows] == ["unet", "local", "bank", "local+bank"]
    assert all(0.0 <= row["f1"] <= 1.0 for row in rows)
    assert rows[0]["time_ratio"] == 1.0
