"""Tests of medseg_nb.topology against independent computations (scipy labelling, hole filling, brute-force
distances, MONAI's soft-clDice) on drawn fixtures, random masks and the real DRIVE test labels when present."""

import math
import time

import numpy as np
import pytest
import torch
from monai.losses import DiceLoss, SoftclDiceLoss
from scipy import ndimage
from scipy.spatial.distance import cdist
from skimage.draw import circle_perimeter, line
from skimage.measure import euler_number
from skimage.morphology import disk, skeletonize

from conftest import require_dataset
from medseg_nb.data.fundus import read_binary_mask
from medseg_nb.topology import (
    DiceClDiceLoss,
    SoftClDiceLoss,
    betti_errors,
    betti_numbers,
    cal,
    centerline_from_label,
    centerline_metrics,
    cldice,
    component_error,
    count_components,
    normalised_component_error,
    remove_spurs,
    soft_skeleton,
    topology_metrics,
    topology_precision_sensitivity,
)

EIGHT_NEIGHBOURHOOD = np.ones((3, 3), dtype=bool)
FOUR_NEIGHBOURHOOD = ndimage.generate_binary_structure(2, 1)


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    return float(2 * (prediction & reference).sum() / (prediction.sum() + reference.sum()))


def vessel(width: int, size: int = 64) -> np.ndarray:
    "A diagonal-then-horizontal vessel (size,size) of `width` pixels, drawn with skimage.draw.line."
    canvas = np.zeros((size, size), dtype=bool)
    middle = size // 2
    for (r0, c0), (r1, c1) in [((6, 6), (middle, middle)), ((middle, middle), (middle, size - 6))]:
        rows, cols = line(r0, c0, r1, c1)
        canvas[rows, cols] = True
    if width > 1:
        canvas = ndimage.binary_dilation(canvas, structure=disk(width // 2))
    return canvas


def cut_gap(mask: np.ndarray, gap: int, column: int = 48) -> np.ndarray:
    "Cut a gap `gap` columns wide across the horizontal part of a 64 x 64 `vessel`."
    broken = mask.copy()
    broken[:, column:column + gap] = False
    return broken


def random_masks(count: int = 6, size: int = 48):
    rng = np.random.default_rng(42)
    for index in range(count):
        density = (0.15, 0.3, 0.45, 0.55, 0.7, 0.85)[index % 6]
        yield rng.random((size, size)) < density


def real_root(folder: str):
    "Return the real data folder, or skip the test when it is absent."
    return require_dataset(folder)


# Discriminating cases: a broken vessel against an intact one.

@pytest.mark.parametrize("width", [1, 3, 5])
@pytest.mark.parametrize("gap", [2, 4])
def test_broken_vessel_scores_worse(width, gap):
    intact = vessel(width)
    broken = cut_gap(intact, gap)
    assert count_components(broken) == 2
    assert dice(broken, intact) > 0.9
    assert cldice(intact, intact) == 1.0
    assert cldice(broken, intact) < 1.0
    assert component_error(intact, intact) == 0
    assert component_error(broken, intact) == 1
    assert betti_errors(intact, intact)["betti0_error"] == 0
    assert betti_errors(broken, intact)["betti0_error"] == 1
    assert cal(intact, intact)["cal"] == 1.0
    assert cal(broken, intact)["cal"] < 1.0


def test_ring_vessel_has_one_hole():
    ring = np.zeros((40, 40), dtype=bool)
    rows, cols = circle_perimeter(20, 20, 12)
    ring[rows, cols] = True
    ring = ndimage.binary_dilation(ring, structure=disk(1))
    assert betti_numbers(ring) == (1, 1)
    opened = ring.copy()
    opened[18:23, 28:36] = False
    assert betti_numbers(opened) == (1, 0)
    assert betti_errors(opened, ring) == {"betti0_error": 0, "betti1_error": 1}


# Agreement with independent computations.

@pytest.mark.parametrize("connectivity, structure", [(2, EIGHT_NEIGHBOURHOOD), (1, FOUR_NEIGHBOURHOOD)])
def test_components_match_scipy_label(connectivity, structure):
    for mask in random_masks():
        assert count_components(mask, connectivity) == ndimage.label(mask, structure=structure)[1]


def test_betti1_matches_filled_holes():
    for mask in random_masks():
        holes = ndimage.binary_fill_holes(mask, structure=FOUR_NEIGHBOURHOOD) & ~mask
        expected_holes = ndimage.label(holes, structure=FOUR_NEIGHBOURHOOD)[1]
        assert betti_numbers(mask)[1] == expected_holes


def test_euler_characteristic_matches_skimage():
    for mask in random_masks(count=12):
        b0, b1 = betti_numbers(mask)
        assert b0 - b1 == euler_number(mask, connectivity=2)


def test_cldice_matches_formula():
    reference = vessel(3)
    prediction = reference.copy()
    prediction[:, 40:] = False
    prediction |= np.roll(vessel(1), 6, axis=0)
    prediction_skeleton = skeletonize(prediction)
    reference_skeleton = skeletonize(reference)
    expected_precision = (prediction_skeleton & reference).sum() / prediction_skeleton.sum()
    expected_sensitivity = (reference_skeleton & prediction).sum() / reference_skeleton.sum()
    precision, sensitivity = topology_precision_sensitivity(prediction, reference)
    assert precision == pytest.approx(expected_precision)
    assert sensitivity == pytest.approx(expected_sensitivity)
    assert 0 < precision < 1
    assert 0 < sensitivity < 1
    harmonic = 2 * expected_precision * expected_sensitivity / (expected_precision + expected_sensitivity)
    assert cldice(prediction, reference) == pytest.approx(harmonic)


def test_centerline_metrics_match_brute_force():
    rng = np.random.default_rng(7)
    prediction = rng.random((30, 30)) < 0.04
    reference = rng.random((30, 30)) < 0.04
    distances = cdist(np.argwhere(prediction), np.argwhere(reference))
    for tolerance in (0, 1, 2.5, 4):
        scores = centerline_metrics(prediction, reference, tolerance=tolerance)
        assert scores["precision"] == pytest.approx(np.mean(distances.min(axis=1) <= tolerance))
        assert scores["recall"] == pytest.approx(np.mean(distances.min(axis=0) <= tolerance))


def test_cal_factors_on_shifted_line():
    reference = np.zeros((20, 40), dtype=bool)
    reference[10, 5:35] = True
    shifted = np.roll(reference, 3, axis=0)
    assert cal(shifted, reference, alpha=2, beta=2)["area"] == 0.0
    assert cal(shifted, reference, alpha=2, beta=2)["length"] == 0.0
    assert cal(shifted, reference, alpha=3, beta=3) == {"connectivity": 1.0, "area": 1.0, "length": 1.0, "cal": 1.0}
    two_pieces = reference.copy()
    two_pieces[10, 20] = False
    assert cal(two_pieces, reference)["connectivity"] == pytest.approx(1 - 1 / 30)


def test_cal_area_and_length_symmetric():
    masks = list(random_masks(4))
    for first, second in zip(masks, masks[1:]):
        forward, backward = cal(first, second), cal(second, first)
        assert forward["area"] == pytest.approx(backward["area"])
        assert forward["length"] == pytest.approx(backward["length"])
        assert cal(first, second, alpha=3)["area"] >= forward["area"]


def test_component_errors_inside_fov():
    intact = vessel(3)
    broken = cut_gap(intact, 3)
    left = np.zeros_like(intact)
    left[:, :40] = True
    assert component_error(broken, intact, fov=left) == 0
    assert component_error(broken, intact) == 1
    assert normalised_component_error(broken, intact) == 1.0
    assert topology_metrics(broken, intact, fov=left)["betti0_error"] == 0


# Empty-reference policy.

def test_empty_reference_policy():
    empty = np.zeros((32, 32), dtype=bool)
    mask = vessel(3, size=32)
    assert cldice(empty, empty) == 1.0
    assert cldice(mask, empty) == 0.0
    assert component_error(mask, empty) == count_components(mask)
    assert normalised_component_error(empty, empty) == 0.0
    assert math.isnan(normalised_component_error(mask, empty))
    assert betti_errors(mask, empty) == {"betti0_error": 1, "betti1_error": 0}
    assert cal(empty, empty)["cal"] == 1.0
    assert cal(mask, empty)["cal"] == 0.0
    assert centerline_metrics(empty, empty)["f1"] == 1.0
    assert centerline_metrics(mask, empty)["f1"] == 0.0
    row = topology_metrics(np.zeros((32, 32)), empty)
    assert (row["cldice"], row["component_error"], row["cal"]) == (1.0, 0, 1.0)


# Centerlines.

def test_spur_removal_keeps_topology():
    skeleton = skeletonize(vessel(5))
    noisy = skeleton.copy()
    assert skeleton[32, 40]
    assert skeleton[32, 50]
    assert skeleton[20, 20]
    noisy[33:36, 40] = True
    noisy[29:32, 50] = True
    noisy[21:24, 19] = True
    noisy[12, 2:10] = True
    pruned = remove_spurs(noisy, 5)
    assert not pruned[34:36, 40].any()
    assert not pruned[29:31, 50].any()
    assert not pruned[22:24, 19].any()
    assert pruned[12, 2:10].all()
    assert pruned.sum() == skeleton.sum() + 8
    assert count_components(pruned) == count_components(noisy)
    assert betti_numbers(pruned) == betti_numbers(noisy)


# Soft skeleton and losses.

def tree_target() -> torch.Tensor:
    return torch.from_numpy(vessel(3)).float()[None, None]


def test_soft_loss_backward_finite():
    logits = torch.randn(2, 1, 32, 32, dtype=torch.float64, requires_grad=True)
    target = (torch.rand(2, 1, 32, 32) > 0.7).double()
    for loss in (SoftClDiceLoss(sigmoid=True), DiceClDiceLoss(sigmoid=True, alpha=0.3)):
        logits.grad = None
        loss(logits, target).backward()
        assert torch.isfinite(logits.grad).all()
        assert logits.grad.abs().sum() > 0


def test_soft_loss_directional_derivative():
    "The analytic gradient matches a central finite difference along a random direction."
    torch.manual_seed(0)
    logits = torch.randn(1, 1, 16, 16, dtype=torch.float64, requires_grad=True)
    target = torch.from_numpy(vessel(3, size=16)).double()[None, None]
    loss_fn = SoftClDiceLoss(sigmoid=True)
    loss_fn(logits, target).backward()
    direction = torch.randn_like(logits)
    direction /= direction.norm()
    step = 1e-6
    with torch.no_grad():
        finite_difference = (loss_fn(logits + step * direction, target) - loss_fn(logits - step * direction, target)) / (2 * step)
    assert (logits.grad * direction).sum().item() == pytest.approx(finite_difference.item(), rel=1e-3, abs=1e-7)


def test_soft_loss_orders_predictions():
    target = tree_target()
    intact = vessel(3)
    values = []
    for gaps in range(4):
        mask = intact.copy()
        for column in (40, 48, 56)[:gaps]:
            mask[:, column:column + 3] = False
        logits = torch.where(torch.from_numpy(mask)[None, None], 5.0, -5.0)
        values.append(SoftClDiceLoss(sigmoid=True)(logits, target).item())
    assert values == sorted(values), values
    assert len(set(values)) == 4, values
    assert values[0] < 0.01


def test_softmax_two_channels_matches_sigmoid():
    torch.manual_seed(1)
    vessel_logits = torch.randn(2, 1, 24, 24)
    target = (torch.rand(2, 1, 24, 24) > 0.6).float()
    two_channel = torch.cat([torch.zeros_like(vessel_logits), vessel_logits], dim=1)
    one_hot_target = torch.cat([1 - target, target], dim=1)
    sigmoid_loss = SoftClDiceLoss(sigmoid=True)(vessel_logits, target)
    softmax_loss = SoftClDiceLoss(softmax=True, include_background=False)(two_channel, one_hot_target)
    assert softmax_loss.item() == pytest.approx(sigmoid_loss.item(), rel=1e-5)
    both_channels = SoftClDiceLoss(softmax=True, reduction="none")(two_channel, one_hot_target)
    assert both_channels.shape == (2, 2)
    assert SoftClDiceLoss(softmax=True, reduction="sum")(two_channel, one_hot_target).item() == pytest.approx(both_channels.sum().item())


def test_one_channel_matches_monai():
    torch.manual_seed(2)
    probability = torch.rand(3, 1, 20, 20)
    target = (torch.rand(3, 1, 20, 20) > 0.5).float()
    ours = SoftClDiceLoss(iterations=4, reduction="none")(probability, target)
    monai = SoftclDiceLoss(iter_=4, smooth_nr=1.0, smooth_dr=1.0, smooth=1e-9, reduction="none")(probability, target)
    assert torch.allclose(ours[:, 0], monai, atol=1e-5)


def test_dice_cldice_combines_parts():
    target = tree_target()
    logits = torch.randn_like(target)
    alpha = 0.25
    expected = (1 - alpha) * DiceLoss(sigmoid=True)(logits, target) + alpha * SoftClDiceLoss(sigmoid=True)(logits, target)
    assert DiceClDiceLoss(alpha=alpha, sigmoid=True)(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_soft_skeleton_of_binary_line_is_line():
    line_image = torch.zeros(1, 1, 12, 12)
    line_image[0, 0, 6, 1:11] = 1
    assert torch.equal(soft_skeleton(line_image, 5), line_image)


# Bad input.

@pytest.mark.parametrize("call, message", [
    (lambda m: cldice(m, m[:-1]), "differs from reference shape"),
    (lambda m: cldice(m * 0.5, m), "binary"),
    (lambda m: component_error(np.where(m, np.nan, 0), m), "NaN"),
    (lambda m: betti_numbers(m[None]), "2-D"),
    (lambda m: cal(m, m, fov=np.zeros_like(m)), "FOV mask is empty"),
    (lambda m: topology_metrics(m * 2.0, m), "sigmoid"),
    (lambda m: centerline_from_label(m, method="medial_axis"), "skeletonize"),
])
def test_metric_bad_input(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        call(vessel(3, size=24).astype(np.float64))


def test_loss_bad_input():
    target = tree_target()
    logits = torch.randn_like(target)
    with pytest.raises(ValueError, match="differs from input shape"):
        SoftClDiceLoss(sigmoid=True)(logits, target[..., :-1])
    with pytest.raises(ValueError, match="NaN"):
        SoftClDiceLoss(sigmoid=True)(logits * math.nan, target)
    with pytest.raises(ValueError, match="one-channel input"):
        SoftClDiceLoss(sigmoid=True, include_background=False)(logits, target)
    with pytest.raises(ValueError, match="outside"):
        SoftClDiceLoss()(logits * 10, target)
    with pytest.raises(ValueError, match="B,C,H,W"):
        SoftClDiceLoss(sigmoid=True)(logits[0], target[0])


# Real DRIVE labels.

def test_drive_labels_betti_and_speed():
    root = real_root("DRIVE")
    labels = sorted((root / "test" / "1st_manual").glob("*_manual1.gif"))
    assert len(labels) == 20
    for path in labels:
        number = path.name[:2]
        label = read_binary_mask(path)
        fov = read_binary_mask(root / "test" / "mask" / f"{number}_test_mask.gif", expected_shape=label.shape)
        inside = label & fov
        b0, b1 = betti_numbers(inside)
        assert b0 == ndimage.label(inside, structure=EIGHT_NEIGHBOURHOOD)[1]
        assert b0 - b1 == euler_number(inside, connectivity=2)
    label = read_binary_mask(labels[0])
    start = time.perf_counter()
    row = topology_metrics(label, label, fov)
    assert time.perf_counter() - start < 2.0
    assert row["cldice"] == 1.0
    assert row["component_error"] == 0
    assert row["cal"] == 1.0


def test_drive_label_gaps_detected():
    root = real_root("DRIVE")
    label = read_binary_mask(root / "test" / "1st_manual" / "01_manual1.gif")
    fov = read_binary_mask(root / "test" / "mask" / "01_test_mask.gif", expected_shape=label.shape)
    centerline = centerline_from_label(label & fov)
    rows, cols = np.nonzero(centerline)
    picks = np.random.default_rng(3).choice(rows.size, size=10, replace=False)
    broken = label.copy()
    for row, col in zip(rows[picks], cols[picks]):
        broken[max(row - 2, 0):row + 3, max(col - 2, 0):col + 3] = False
    intact_row = topology_metrics(label, label, fov)
    broken_row = topology_metrics(broken, label, fov)
    assert dice(broken & fov, label & fov) > 0.98
    assert broken_row["cldice"] < intact_row["cldice"]
    assert broken_row["component_error"] > 0
    assert broken_row["betti0_error"] > 0
    assert broken_row["cal"] < intact_row["cal"]


def test_drive_centerline_pruning_keeps_topology():
    root = real_root("DRIVE")
    label = read_binary_mask(root / "test" / "1st_manual" / "01_manual1.gif")
    skeleton = centerline_from_label(label)
    pruned = centerline_from_label(label, min_spur_length=10)
    assert pruned.sum() < skeleton.sum()
    assert count_components(pruned) == count_components(skeleton)
    assert betti_numbers(pruned) == betti_numbers(skeleton)
