"""Tests of the lab's retinal networks (SMAN, RSGN, joint vessel-centerline) and their tasks, on tiny widths."""
import numpy as np
import pytest
import torch

import medseg_nb.networks  # noqa: F401  (registers the networks and tasks)
from medseg_nb.core import seed_everything
from medseg_nb.learner import TASKS, get_task
from medseg_nb.models import MODEL_TASKS, MODELS, count_parameters, get_model
from medseg_nb.networks import (
    RSGN, SMAN, JointVesselCenterline, MultiScaleAggregation, RecursiveTask, VesselCenterlineTask, architecture_table,
    build_joint, build_rsgn, build_sman, centerline_targets, fundus_demo_patch,
)
from medseg_nb.runs import TrainConfig, build_model, build_task, train

TINY = (8, 16, 32)
BUILDERS = {"sman": build_sman, "rsgn": build_rsgn, "joint": build_joint}
TASK_CLASSES = {"sman": "SegmentationTask", "rsgn": "RecursiveTask", "joint": "VesselCenterlineTask"}
OUTPUT_CHANNELS = {"sman": 1, "rsgn": 3, "joint": 2}


def vessel_batch(size: int = 32, batch: int = 2, seed: int = 0) -> dict:
    "A batch whose image is a noisy copy of a random binary label, so a tiny network can fit it in a few steps."
    generator = torch.Generator().manual_seed(seed)
    label = (torch.rand(batch, 1, size, size, generator=generator) > 0.7).float()
    image = label * 2 - 1 + 0.1 * torch.randn(batch, 1, size, size, generator=generator)
    return {"image": image, "label": label}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_registry_entries(name):
    assert MODELS[name] is BUILDERS[name]
    assert TASKS[MODEL_TASKS[name]].__name__ == TASK_CLASSES[name]
    assert type(get_task(MODEL_TASKS[name], loss="bce")).__name__ == TASK_CLASSES[name]


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("size", [(32, 32), (16, 48)])
def test_output_shapes(name, size):
    network = get_model(name, channels=TINY, num_res_units=0)
    output = network(torch.zeros(2, 1, *size))
    assert tuple(output.shape) == (2, OUTPUT_CHANNELS[name], *size)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_default_widths_shape(name):
    network = get_model(name).eval()
    with torch.no_grad():
        output = network(torch.zeros(1, 1, 96, 96))
    assert tuple(output.shape) == (1, OUTPUT_CHANNELS[name], 96, 96)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_rgb_input(name):
    network = get_model(name, in_channels=3, channels=TINY)
    assert network(torch.zeros(1, 3, 16, 16)).shape[-2:] == (16, 16)


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("size, fix", [((34, 32), "36x32"), ((32, 30), "32x32"), ((17, 9), "20x12")])
def test_size_not_multiple_rejected(name, size, fix):
    network = get_model(name, channels=TINY)
    with pytest.raises(ValueError, match="multiples of 4") as error:
        network(torch.zeros(1, 1, *size))
    assert fix in str(error.value)
    assert "PadToMultiple" in str(error.value)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_wrong_channel_count_rejected(name):
    network = get_model(name, channels=TINY)
    with pytest.raises(ValueError, match="in_channels=3"):
        network(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(B,C,H,W\)"):
        network(torch.zeros(1, 32, 32))


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_bad_widths_rejected(name):
    with pytest.raises(ValueError, match="at least two positive widths"):
        get_model(name, channels=(16,))
    with pytest.raises(ValueError, match="at least two positive widths"):
        get_model(name, channels=(16, 0))


@pytest.mark.parametrize("name", ["rsgn", "joint"])
def test_out_channels_must_be_one(name):
    with pytest.raises(ValueError, match="out_channels must be 1"):
        get_model(name, out_channels=2)


def test_sman_out_channels():
    assert tuple(build_sman(out_channels=3, channels=TINY)(torch.zeros(1, 1, 8, 8)).shape) == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="out_channels"):
        build_sman(out_channels=0)


def test_parameter_counts_default_widths():
    # counts at channels (16, 32, 64, 128, 256); a change here means the architecture changed
    assert count_parameters(build_sman()) == 4_168_177
    assert count_parameters(build_rsgn()) == 2_200_193
    assert count_parameters(build_joint()) == 5_233_234


def test_multiscale_block_reach():
    block = MultiScaleAggregation(2, dilations=(1, 3, 5)).eval()
    impulse = torch.zeros(1, 2, 21, 21)
    impulse[..., 10, 10] = 1.0
    with torch.no_grad():
        responses = [branch[0](impulse).abs().sum(dim=(0, 1)) > 0 for branch in block.branches]
    rows = [torch.nonzero(response)[:, 0] for response in responses]
    assert [int(r.max() - r.min()) + 1 for r in rows] == [3, 7, 11]
    assert [int(response.sum()) for response in responses] == [9, 9, 9]
    with pytest.raises(ValueError, match="at least one rate"):
        MultiScaleAggregation(2, dilations=())


def test_sman_without_bottleneck_smaller():
    full, plain = build_sman(channels=TINY), build_sman(channels=TINY, dilations=())
    assert count_parameters(full) - count_parameters(plain) == count_parameters(full.encoder.bottleneck)


@pytest.mark.parametrize("iterations", [1, 2, 5])
def test_rsgn_parameters_independent_of_iterations(iterations):
    assert count_parameters(build_rsgn(iterations=iterations)) == count_parameters(build_rsgn(iterations=3))
    assert count_parameters(build_rsgn(channels=TINY, iterations=iterations)) == count_parameters(build_rsgn(channels=TINY))


def test_rsgn_shared_core_runs_each_pass():
    table = architecture_table(build_rsgn(channels=TINY, iterations=4), (1, 1, 32, 32))
    assert set(table.iloc[:-1]["calls"]) == {4}
    assert int(table.iloc[:-1]["parameters"].sum()) == int(table.iloc[-1]["parameters"])


def test_rsgn_passes_feed_back():
    seed_everything(0)
    network = build_rsgn(channels=TINY, iterations=3).eval()
    images = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        logits = network(images)
        first = network.core(torch.cat([images, torch.zeros_like(images)], dim=1))
        second = network.core(torch.cat([images, torch.sigmoid(first)], dim=1))
        longer = network(images, iterations=5)
    assert torch.allclose(logits[:, :1], first, atol=1e-5)
    assert torch.allclose(logits[:, 1:2], second, atol=1e-5)
    assert not torch.allclose(logits[:, 0], logits[:, 1])
    assert torch.allclose(longer[:, :3], logits, atol=1e-5)
    with pytest.raises(ValueError, match="iterations"):
        network(images, iterations=0)
    with pytest.raises(ValueError, match="iterations"):
        build_rsgn(iterations=0)


def test_rsgn_detach_feedback_changes_gradients():
    seed_everything(0)
    attached = build_rsgn(channels=TINY)
    detached = build_rsgn(channels=TINY, detach_feedback=True)
    detached.load_state_dict(attached.state_dict())
    batch = vessel_batch()
    for network in (attached, detached):
        RecursiveTask().training_step(network, batch)["loss"].backward()
    assert not torch.allclose(attached.core.head.weight.grad, detached.core.head.weight.grad)


def test_recursive_task_weights():
    seed_everything(0)
    network = build_rsgn(channels=TINY)
    batch = vessel_batch()
    outputs = RecursiveTask().training_step(network, batch)
    mean = sum(outputs[f"loss_iteration_{step}"] for step in (1, 2, 3)) / 3
    assert torch.allclose(outputs["loss"], mean)
    last_only = RecursiveTask(weights=(0, 0, 1)).training_step(network, batch)
    assert torch.allclose(last_only["loss"], last_only["loss_iteration_3"])
    with pytest.raises(ValueError, match="one weight per iteration"):
        RecursiveTask(weights=(1, 1)).training_step(network, batch)
    with pytest.raises(ValueError, match="non-negative"):
        RecursiveTask(weights=(1, -1, 1))
    with pytest.raises(ValueError, match="non-negative"):
        RecursiveTask(weights=())


def test_recursive_task_predicts_last_pass():
    network = build_rsgn(channels=TINY).eval()
    images = torch.randn(2, 1, 16, 16)
    task = RecursiveTask()
    final = task.predict(network, images)
    every = task.predict_iterations(network, images)
    assert tuple(final.shape) == (2, 1, 16, 16)
    assert tuple(every.shape) == (2, 3, 16, 16)
    assert torch.allclose(final, every[:, -1:])


def test_recursive_task_shape_mismatch():
    batch = vessel_batch()
    with pytest.raises(ValueError, match="do not match"):
        RecursiveTask().training_step(build_rsgn(channels=TINY), {**batch, "label": batch["label"][..., :16]})


def test_centerline_targets_bar():
    bar = torch.zeros(2, 1, 9, 20)
    bar[..., 3:6, 2:18] = 1
    skeleton = centerline_targets(bar)
    assert skeleton.shape == bar.shape
    assert skeleton.dtype == bar.dtype
    assert skeleton[0, 0, 4, 4:15].tolist() == [1.0] * 11
    assert int(skeleton[0, 0, [0, 1, 2, 5, 6, 7, 8]].sum()) == 0
    assert bool((skeleton <= bar).all())
    with pytest.raises(ValueError, match=r"\(B,1,H,W\)"):
        centerline_targets(torch.zeros(2, 9, 9))


def test_centerline_targets_spur_pruning():
    cross = torch.zeros(1, 1, 21, 21)
    cross[..., 9:12, 2:19] = 1
    cross[..., 12:15, 9:12] = 1
    full = centerline_targets(cross)
    pruned = centerline_targets(cross, min_spur_length=5)
    assert float(pruned.sum()) < float(full.sum())
    with pytest.raises(ValueError, match="medial"):
        centerline_targets(cross, method="medial")


def test_centerline_targets_empty_label():
    assert float(centerline_targets(torch.zeros(1, 1, 16, 16)).sum()) == 0.0


def test_vessel_centerline_task_parts():
    seed_everything(0)
    network = build_joint(channels=TINY)
    batch = vessel_batch()
    outputs = VesselCenterlineTask(centerline_weight=0.5).training_step(network, batch)
    assert sorted(outputs) == ["centerline_loss", "loss", "vessel_loss"]
    assert torch.allclose(outputs["loss"], outputs["vessel_loss"] + 0.5 * outputs["centerline_loss"])
    task = VesselCenterlineTask()
    assert torch.equal(task.centerline_target(batch), centerline_targets(batch["label"]))
    supplied_centerline = torch.zeros_like(batch["label"])
    assert task.centerline_target({**batch, "centerline": supplied_centerline}) is supplied_centerline
    thinned = VesselCenterlineTask(centerline_method="thin").centerline_target(batch)
    assert torch.equal(thinned, centerline_targets(batch["label"], method="thin"))
    with pytest.raises(ValueError, match="centerline_weight"):
        VesselCenterlineTask(centerline_weight=-0.1)
    with pytest.raises(ValueError, match=r"\(B,2,H,W\)"):
        task.training_step(build_sman(channels=TINY), batch)


def test_vessel_centerline_task_predictions():
    network = build_joint(channels=TINY).eval()
    images = torch.randn(1, 1, 16, 16)
    task = VesselCenterlineTask()
    with torch.no_grad():
        logits = network(images)
    assert torch.allclose(task.predict(network, images), torch.sigmoid(logits[:, :1]))
    assert torch.allclose(task.predict_centerline(network, images), torch.sigmoid(logits[:, 1:2]))


def test_joint_branches_exchange_features():
    seed_everything(0)
    joint = build_joint(channels=TINY).eval()
    separate = build_joint(channels=TINY, cross_task=False)
    assert len(separate.exchange) == 0
    assert count_parameters(joint) - count_parameters(separate) == sum(2 * (w * w + 2 * w) for w in (8, 16))
    # perturbing only the centerline decoder changes the vessel output when (and only when) the branches exchange
    images = torch.randn(1, 1, 16, 16)
    separate.load_state_dict({k: v for k, v in joint.state_dict().items() if not k.startswith("exchange")})
    separate.eval()
    with torch.no_grad():
        before_joint, before_separate = joint(images)[:, 0], separate(images)[:, 0]
        for network in (joint, separate):
            for parameter in network.centerline_decoder.parameters():
                parameter.add_(0.5)
        after_joint, after_separate = joint(images)[:, 0], separate(images)[:, 0]
    assert not torch.allclose(before_joint, after_joint)
    assert torch.allclose(before_separate, after_separate)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_gradients_reach_every_parameter(name):
    seed_everything(0)
    network = get_model(name, channels=TINY)
    task = get_task(MODEL_TASKS[name])
    task.training_step(network, vessel_batch())["loss"].backward()
    missing = [key for key, parameter in network.named_parameters()
               if parameter.grad is None or not parameter.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_tiny_overfit_loss_decreases(name):
    seed_everything(0)
    network = get_model(name, channels=TINY)
    task = get_task(MODEL_TASKS[name])
    batch = vessel_batch()
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = task.training_step(network, batch)["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_run_builds_padded_model_and_task(name):
    config = TrainConfig(model=name, channels=TINY, patch_size=32)
    model, task = build_model(config).eval(), build_task(config)
    assert type(task).__name__ == TASK_CLASSES[name]
    probability = task.predict(model, torch.rand(1, 1, 37, 50))
    assert tuple(probability.shape) == (1, 1, 37, 50)
    assert float(probability.min()) >= 0.0
    assert float(probability.max()) <= 1.0


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_train_and_evaluate_run(name, tmp_path):
    config = TrainConfig(model=name, output=str(tmp_path / name), iterations=4, patch_size=32, batch_size=2,
                         samples_per_image=2, channels=TINY, synthetic_size=(64, 64), synthetic_train=3,
                         synthetic_test=1, val_count=1, roi_size=32, warmup_steps=1, progress=False, save_images=False)
    result = train(config)
    assert result["report"]["n_images"] == 1
    assert 0.0 <= result["report"]["summary"]["auc_roc"]["mean"] <= 1.0
    assert "val_f1" in result["history"][-1]


def test_architecture_table_counts():
    network = build_sman(channels=TINY)
    table = architecture_table(network, (1, 1, 32, 32), depth=1)
    assert list(table["layer"]) == ["encoder", "decoder.0", "decoder.1", "head", "total"]
    assert int(table.iloc[:-1]["parameters"].sum()) == count_parameters(network)
    assert table.set_index("layer").loc["head", "output shape"] == "(1, 1, 32, 32)"
    assert network.training
    with pytest.raises(ValueError, match="depth"):
        architecture_table(network, depth=0)


def test_demo_patch_synthetic():
    patch = fundus_demo_patch(64, dataset="synthetic", top_left=(8, 16))
    assert patch["top_left"] == (8, 16)
    assert patch["source"].startswith("synthetic/")
    for key in ("image", "label", "fov"):
        assert tuple(patch[key].shape) == (1, 64, 64)
    with pytest.raises(ValueError, match="outside"):
        fundus_demo_patch(64, dataset="synthetic", top_left=(1000, 0))


def test_demo_patch_drive(real_data):
    if not (real_data / "DRIVE").is_dir():
        pytest.skip("DRIVE is not in the real-data folder")
    patch = fundus_demo_patch(96)
    assert patch["source"].startswith("drive/")
    assert tuple(patch["image"].shape) == (1, 96, 96)
    # the patch with the most vessel pixels among the candidate positions is chosen
    assert float(patch["label"].mean()) > 0.1
    assert tuple(build_sman(channels=TINY).eval()(patch["image"][None]).shape) == (1, 1, 96, 96)
    with pytest.raises(ValueError, match="exceeds the image size 584x565"):
        fundus_demo_patch(600)

