"""Tests of the DLD patch classifiers (dual-branch ResNet, MSAN), their training task, metrics and dense maps."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from medseg_nb.core import seed_everything
from medseg_nb.dld.networks import (
    DLD_NETWORKS, MSAN, AppearanceResNet, AttentionBlock, Conv2dSame, DualBranchResNet, TextureBranch,
    dld_layer_table, get_dld_network,
)
from medseg_nb.dld.training import (
    DLDConfig, PatchClassificationTask, classification_metrics, confusion_figure, covid_slice_inputs,
    dense_probability_map, opacity_map_figure, predict_patches, synthetic_texture_slice, train_dld,
)
from medseg_nb.learner import TASKS, get_task
from medseg_nb.models import count_parameters


# ---- parameter counts by hand, from the published layer lists ------------------------------------------------------
def bn(channels: int) -> int:
    return 2 * channels  # scale and shift


def conv(in_channels: int, out_channels: int, kernel: int) -> int:
    return in_channels * out_channels * kernel * kernel  # convolutions before batch norm have no bias


def linear(in_features: int, out_features: int) -> int:
    return in_features * out_features + out_features


# DB-ResNet branch: stem conv 64, then residual blocks (in, out, stride) of two 2x2 convolutions
BRANCH_BLOCKS = [(64, 64, 1), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2)]


def branch_parameters(in_channels: int) -> int:
    total = conv(in_channels, 64, 2) + bn(64)
    for block_in, block_out, stride in BRANCH_BLOCKS:
        total += conv(block_in, block_out, 2) + bn(block_out) + conv(block_out, block_out, 2) + bn(block_out)
        if stride == 2:
            total += conv(block_in, block_out, 1) + bn(block_out)  # 1x1 stride-2 projection shortcut
    return total


def fc_head_parameters(in_features: int) -> int:
    return linear(in_features, 2048) + linear(2048, 1024) + linear(1024, 7)


def attention_parameters(channels: int, reduction: int = 2) -> int:
    squeeze = channels // reduction
    return bn(channels) + linear(channels, squeeze) + linear(squeeze, channels)


def unit_parameters(in_channels: int, out_channels: int) -> int:
    return bn(in_channels) + conv(in_channels, out_channels, 3) + bn(out_channels) + conv(out_channels, out_channels, 3)


def msan_parameters(attention: bool = True, multi_scale: bool = True, widths=(128, 256, 512)) -> int:
    a, b, c = widths
    attend = attention_parameters if attention else (lambda channels: 0)
    total = conv(1, a, 3) + bn(a) + attend(a)
    total += unit_parameters(a, a) + attend(a)
    total += unit_parameters(a, b) + unit_parameters(b, b) + attend(b)
    total += unit_parameters(b, c) + attend(c)  # the zero-padding shortcuts have no parameters
    heads = (a, b, c) if multi_scale else (c,)
    return total + sum(bn(width) + linear(width, 7) for width in heads)


def test_dual_branch_parameter_count():
    expected = branch_parameters(1) + branch_parameters(3) + fc_head_parameters(1024)
    assert expected == 10_135_303
    assert count_parameters(DualBranchResNet()) == expected


def test_appearance_baseline_parameter_count():
    assert count_parameters(AppearanceResNet()) == branch_parameters(1) + fc_head_parameters(512)


@pytest.mark.parametrize("attention, multi_scale", [(True, True), (False, True), (True, False)])
def test_msan_parameter_count(attention, multi_scale):
    network = MSAN(attention=attention, multi_scale=multi_scale)
    assert count_parameters(network) == msan_parameters(attention, multi_scale)


def test_msan_layout_total():
    assert msan_parameters() == 6_275_605


# ---- layouts and shapes ---------------------------------------------------------------------------------------------
def test_branch_has_fifteen_2x2_convolutions():
    branch = TextureBranch(3)
    convolutions = [m for m in branch.modules() if isinstance(m, Conv2dSame)]
    assert len(convolutions) == 15
    assert {m.kernel_size for m in convolutions} == {(2, 2)}
    projections = [m for m in branch.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert [m.stride for m in projections] == [(2, 2)] * 3


def test_dual_branch_layer_table_shapes():
    table = dld_layer_table(DualBranchResNet()).set_index("layer")
    expected = {"appearance.stem": "(1, 64, 16, 16)", "appearance.stage1": "(1, 64, 16, 16)",
                "appearance.stage2": "(1, 128, 8, 8)", "appearance.stage3": "(1, 256, 4, 4)",
                "appearance.stage4": "(1, 512, 2, 2)", "geometry.pool": "(1, 512, 1, 1)", "head.0": "(1, 2048)",
                "head.3": "(1, 1024)", "head.6": "(1, 7)"}
    for layer, shape in expected.items():
        assert table.loc[layer, "output shape"] == shape, layer
    assert table.loc["total", "parameters"] == 10_135_303
    assert table.loc["geometry.stem", "parameters"] == conv(3, 64, 2) + bn(64)


def test_msan_layer_table_shapes():
    table = dld_layer_table(MSAN()).set_index("layer")
    assert table.loc["stem.3", "output shape"] == "(1, 128, 32, 32)"
    assert table.loc["stage1.0", "output shape"] == "(1, 128, 32, 32)"
    assert table.loc["stage2.1", "output shape"] == "(1, 256, 16, 16)"
    assert table.loc["stage3.1", "output shape"] == "(1, 512, 8, 8)"
    assert table.loc["stage3.0", "parameters"] == unit_parameters(256, 512)
    assert table.loc["total", "parameters"] == 6_275_605


def test_leaky_relu_slope_and_dropout():
    network = DualBranchResNet()
    assert [m.negative_slope for m in network.modules() if isinstance(m, nn.LeakyReLU)] == [0.9, 0.9]
    assert {m.p for m in network.modules() if isinstance(m, nn.Dropout)} == {0.2}


@pytest.mark.parametrize("name", sorted(DLD_NETWORKS))
def test_registry_networks_output_shape(name):
    options = {"widths": (8, 16, 32)} if name.startswith("msan") else {}
    network = get_dld_network(name, **options).eval()
    inputs = [torch.randn(3, 1, 32, 32)] + ([torch.randn(3, 3, 32, 32)] if name == "dual" else [])
    with torch.no_grad():
        assert tuple(network(*inputs).shape) == (3, 7)


def test_msan_ablation_switches():
    no_attention = MSAN(widths=(8, 16, 32), attention=False)
    assert not any(isinstance(m, AttentionBlock) for m in no_attention.modules())
    single = MSAN(widths=(8, 16, 32), multi_scale=False)
    assert list(single.heads) == ["stage3"]
    assert list(MSAN(widths=(8, 16, 32)).heads) == ["stage1", "stage2", "stage3"]


def test_msan_attention_weights_exposed():
    seed_everything(0)
    network = MSAN(widths=(8, 16, 32)).eval()
    with torch.no_grad():
        network(torch.randn(5, 1, 32, 32))
    weights = network.attention_weights()
    assert [tuple(w.shape) for w in weights.values()] == [(5, 8), (5, 8), (5, 16), (5, 32)]
    for value in weights.values():
        # sigmoid outputs; float32 rounds values beyond about +-17 to exactly 0 or 1
        assert ((value >= 0) & (value <= 1)).all()


def test_attention_output_formula():
    block = AttentionBlock(4, reduction=2).eval()
    features = torch.randn(2, 4, 6, 6)
    output = block(features)
    weights = block.channel_weights(features)
    assert torch.allclose(output, features * (1 + weights[:, :, None, None]), atol=1e-6)


def test_grad_cam_on_both_networks():
    from medseg_nb.viz import grad_cam

    cam = grad_cam(MSAN(widths=(8, 16, 32)).eval(), torch.randn(1, 32, 32), "stage2")
    assert tuple(cam.shape) == (32, 32)
    cam = grad_cam(DualBranchResNet().eval(), torch.randn(4, 32, 32), "geometry.stage2")
    assert tuple(cam.shape) == (32, 32)


# ---- bad input ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("network, shape", [
    (AppearanceResNet(), (2, 1, 64, 64)), (MSAN(widths=(8, 16, 32)), (2, 1, 28, 28)),
])
def test_wrong_patch_size_rejected(network, shape):
    with pytest.raises(ValueError) as error:
        network(torch.zeros(shape))
    assert str(shape) in str(error.value)
    assert "cut 32x32 patches" in str(error.value)


def test_wrong_channel_count_rejected():
    with pytest.raises(ValueError, match=r"expects 1 channel\(s\)"):
        MSAN(widths=(8, 16, 32))(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"expects 3 channel\(s\)"):
        DualBranchResNet()(torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"one tensor of shape \(2, 2, 32, 32\)"):
        DualBranchResNet()(torch.zeros(2, 2, 32, 32))
    with pytest.raises(ValueError, match=r"patches\[None\]"):
        AppearanceResNet()(torch.zeros(1, 32, 32))


# ---- task, metrics, dense maps --------------------------------------------------------------------------------------
def batch(n: int = 6) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {"appearance": torch.randn(n, 1, 32, 32, generator=generator),
            "geometry": torch.randn(n, 3, 32, 32, generator=generator), "label": torch.arange(n) % 7}


def test_task_registered():
    assert TASKS["patch_classification"] is PatchClassificationTask
    assert isinstance(get_task("patch_classification"), PatchClassificationTask)


def test_task_feeds_both_inputs():
    seed_everything(0)
    network = DualBranchResNet().eval()
    task = PatchClassificationTask()
    loss = task.training_step(network, batch())["loss"]
    expected = nn.functional.cross_entropy(network(batch()["appearance"], batch()["geometry"]), batch()["label"])
    assert torch.allclose(loss, expected)
    with pytest.raises(ValueError, match="geometry"):
        task.training_step(network, {"appearance": batch()["appearance"], "label": batch()["label"]})


def test_task_predict_softmax():
    probabilities = PatchClassificationTask().predict(MSAN(widths=(8, 16, 32)).eval(), batch())
    assert tuple(probabilities.shape) == (6, 7)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(6), atol=1e-5)


def test_predict_patches_matches_task():
    network = AppearanceResNet().eval()
    arrays = {key: value.numpy() for key, value in batch(5).items()}
    probabilities = predict_patches(network, arrays, batch_size=2, device="cpu")
    expected = PatchClassificationTask().predict(network, batch(5)).numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)


def test_metrics_against_hand_values():
    metrics = classification_metrics([6, 6, 6, 1, 1, 0], [6, 6, 1, 1, 1, 3])
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # NOR: p 1, r 2/3 -> 0.8; M-GGO: p 2/3, r 1 -> 0.8; CON: 0
    assert metrics["f1"] == pytest.approx({"CON": 0.0, "M-GGO": 0.8, "NOR": 0.8})
    assert metrics["f1_avg"] == pytest.approx(1.6 / 3)
    assert metrics["classes"] == ["CON", "M-GGO", "R-GGO", "NOR"]
    assert metrics["confusion"] == [[0, 0, 1, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 1, 0, 2]]
    assert confusion_figure(metrics).data[0].z.shape == (4, 4)


class CentreProbe(nn.Module):
    input_keys = ("appearance",)

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, patches):
        centre = patches[:, 0, 16, 16]
        return torch.stack([centre * 20, torch.zeros_like(centre)], dim=1)


@pytest.mark.parametrize("stride", [1, 3, 8])
def test_dense_map_alignment(stride):
    image = np.zeros((48, 40), dtype=np.float32)
    image[16:32, 8:24] = 1.0
    probabilities = dense_probability_map(CentreProbe(), image, stride=stride, device="cpu")
    assert probabilities.shape == (2, 48, 40)
    # at the classified centres (multiples of stride) the map contains the probe's output for that very pixel
    centres = np.ix_(np.arange(0, 48, stride), np.arange(0, 40, stride))
    np.testing.assert_array_equal(probabilities[0][centres] > 0.5, image[centres] > 0.5)
    assert probabilities[0][:8].max() < 0.51


def test_dense_map_standardises_with_stats():
    image = np.full((40, 40), 0.5, dtype=np.float32)
    stats = {"mean": np.full((32, 32), 0.5, dtype=np.float32), "std": np.ones((32, 32), dtype=np.float32),
             "geometry_scale": np.ones(3, dtype=np.float32)}
    probabilities = dense_probability_map(CentreProbe(), image, stride=4, stats=stats, device="cpu")
    np.testing.assert_allclose(probabilities[0], 0.5, atol=1e-6)


def test_synthetic_slice_map_and_figure():
    scene = synthetic_texture_slice(classes=("NOR", "HCM"), shape=(48, 64), seed=1)
    assert set(np.unique(scene["label"])) == {2, 6}
    probabilities = dense_probability_map(DualBranchResNet(), scene["unit"], scene["geometry"], stride=16,
                                          stats={"mean": 0.5, "std": 0.2, "geometry_scale": np.ones(3)}, device="cpu")
    assert probabilities.shape == (7, 48, 64)
    figure = opacity_map_figure(scene["unit"], probabilities, scene["label"])
    assert len(figure.data) >= 5


def test_covid_slice_inputs(real_data):
    from medseg_nb.ct.covid import covid_semiseg_records

    try:
        record = covid_semiseg_records(split="test")[0]
    except FileNotFoundError:
        pytest.skip("COVID-SemiSeg not found under MEDSEG_NB_DATA")
    inputs = covid_slice_inputs(record)
    assert inputs["geometry"].shape == (3,) + record.image.shape
    lesion_labels = inputs["label"][record.classes > 0]
    assert set(np.unique(lesion_labels)) <= {0, 1}
    assert (inputs["label"] >= 0).sum() == inputs["lung"].sum()


# ---- a tiny training run --------------------------------------------------------------------------------------------
def test_train_dld_writes_run(tmp_path):
    result = train_dld(DLDConfig(network="msan", n_per_class=8, test_per_class=4, iterations=4, batch=8,
                                 warmup_steps=1, output=str(tmp_path), network_options={"widths": [8, 16, 32]},
                                 device="cpu"))
    for name in ("last.pt", "best.pt", "log.csv", "log.json", "metrics.json"):
        assert (tmp_path / name).exists(), name
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test"]["n"] == 28
    assert saved["n_train"] + saved["n_val"] == 56
    assert result["history"][-1]["step"] == 4
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown network"):
        DLDConfig(network="resnet50")
    with pytest.raises(ValueError, match="unknown data"):
        DLDConfig(data="ild")
    with pytest.raises(ValueError, match="iterations"):
        DLDConfig(iterations=0)
