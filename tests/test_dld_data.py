"""Checks of the DLD texture data: HU checks, Hessian eigenvalues on analytic shapes, the synthetic generator, raster
patches, group splits, the paired-augmentation dataset and COVID-SemiSeg texture patches (skipped without the data)."""
import numpy as np
import pytest
import torch

from conftest import require_dataset
from medseg_nb.ct.covid import synthetic_covid_records
from medseg_nb.ct.io import HUCheckError
from medseg_nb.dld.data import (
    COVID_LABEL_SPACES, DLD_CLASS_NAMES, DLD_CLASSES, DLD_WINDOW, DLDPatchDataset, PairedFlipRotate, class_index,
    covid_label_map, covid_texture_patches, gaussian_derivative_kernels, geometry_view, covid_lung_region,
    hessian_eigenvalues_3d, hessian_features_2d, min_extent, raster_patches, require_hu, split_by_group,
    synthetic_dld_patches, synthetic_dld_volume, to_unit_intensity, window_standardise, window_statistics, window_unit,
)

CENTRE = (7, 20, 20)
STRONG_HU = 50.0  # a clearly curved direction at contrast 800 HU, width 2 mm, sigma 1 mm gives about 110-145 HU
FLAT_HU = 1.0


def shape_volume(kind: str, shape=(15, 41, 41), width_mm: float = 2.0, contrast: float = 800.0) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.arange(n) - n // 2 for n in shape], indexing="ij")
    squared = {"blob": x**2 + y**2 + z**2, "tube": x**2 + y**2, "plate": x**2, "constant": np.full(shape, np.inf)}[kind]
    return (-850.0 + contrast * np.exp(-squared / (2 * width_mm**2))).astype(np.float32)


@pytest.fixture(scope="module")
def patches() -> dict:
    return synthetic_dld_patches(8, seed=0, keep_hu=True)


@pytest.fixture(scope="module")
def covid_folder():
    return require_dataset("COVID-SemiSeg")


def test_classes_order_and_names():
    assert DLD_CLASSES == ("CON", "M-GGO", "HCM", "R-GGO", "EMP", "NOD", "NOR")
    assert len(DLD_CLASS_NAMES) == 7
    assert DLD_CLASS_NAMES[DLD_CLASSES.index("HCM")] == "honeycombing"


def test_class_index_accepts_three_forms():
    assert class_index("r-ggo") == 3
    assert class_index("normal") == 6
    assert class_index(np.int64(4)) == 4
    for bad in ("GGO", 7, -1, True):
        with pytest.raises(ValueError):
            class_index(bad)


@pytest.mark.parametrize("bad, message", [
    (np.linspace(0.0, 1.0, 16), "normalised to 0..1"),
    (np.arange(256, dtype=np.uint8), "8-bit"),
    (np.full(8, 1200.0), "none below 0"),
    (np.full(8, -5000.0), "CT number range"),
    (np.array([np.inf, -800.0]), "NaN or infinite"),
    (np.array([]), "empty"),
])
def test_require_hu_rejects_non_hu(bad, message):
    with pytest.raises(ValueError, match=message):
        require_hu(bad, "patch")


def test_require_hu_error_is_hu_check_error():
    with pytest.raises(HUCheckError, match=r"0\.\.1"):
        require_hu(np.linspace(0.0, 1.0, 4))
    assert require_hu(np.array([-1000, 40], dtype=np.int16)).dtype == np.float32


def test_window_unit_maps_lung_window():
    assert DLD_WINDOW == (-1350.0, 150.0)
    np.testing.assert_allclose(window_unit(np.array([-3000.0, -1350.0, -975.0, 150.0, 3000.0])),
                               [0.0, 0.0, 0.25, 1.0, 1.0])
    with pytest.raises(ValueError, match="high > low"):
        window_unit(np.array([-800.0]), window=(100.0, -100.0))


def test_window_statistics_per_position_and_scalar():
    unit = np.random.default_rng(0).uniform(size=(20, 3, 4))
    mean, std = window_statistics(unit)
    assert mean.shape == std.shape == (3, 4)
    np.testing.assert_allclose(mean, unit.mean(axis=0), rtol=1e-5)
    scalar_mean, _ = window_statistics(unit, per_position=False)
    assert scalar_mean.shape == ()
    _, floored = window_statistics(np.zeros((3, 2, 2)))
    assert (floored > 0).all()
    with pytest.raises(ValueError, match="stack"):
        window_statistics(unit[0])


def test_window_standardise_uses_given_statistics():
    hu = np.random.default_rng(1).normal(-600.0, 300.0, size=(40, 8, 8))
    own = window_standardise(hu)
    np.testing.assert_allclose(own.mean(axis=0), 0.0, atol=1e-4)
    mean, std = window_statistics(window_unit(hu))
    np.testing.assert_allclose(window_standardise(hu[:3], mean, std), own[:3], atol=1e-5)
    with pytest.raises(ValueError, match="both mean and std"):
        window_standardise(hu, std=0.2)
    with pytest.raises(ValueError, match="8-bit"):
        window_standardise(np.full((4, 4), 100.0))


def test_derivative_kernels_are_exact_on_polynomials():
    for sigma in (0.4, 1.0, 1.43, 2.5):
        smooth, first, second = gaussian_derivative_kernels(sigma)
        x = np.arange(len(smooth)) - len(smooth) // 2
        assert len(smooth) == min_extent(sigma)
        np.testing.assert_allclose([smooth.sum(), second.sum(), (first * x).sum(), (second * x**2 / 2).sum()],
                                   [1.0, 0.0, 1.0, 1.0], atol=1e-12)
    assert min_extent(1.0) == 7


@pytest.mark.parametrize("kind, strong", [("blob", 3), ("tube", 2), ("plate", 1), ("constant", 0)])
def test_hessian_3d_analytic_shapes(kind, strong):
    eigenvalues = hessian_eigenvalues_3d(shape_volume(kind))
    assert eigenvalues.shape == (3, 15, 41, 41)
    assert eigenvalues.dtype == np.float32
    magnitude = np.abs(eigenvalues)
    assert (magnitude[0] <= magnitude[1] + 1e-4).all()
    assert (magnitude[1] <= magnitude[2] + 1e-4).all()
    centre = eigenvalues[(slice(None),) + CENTRE]
    assert (centre[3 - strong:] < -STRONG_HU).all(), centre
    assert (np.abs(centre[:3 - strong]) < FLAT_HU).all(), centre


def test_hessian_3d_plate_matches_formula():
    # exp(-x²/2s²) smoothed by a Gaussian of sigma has curvature -A·s/(s²+σ²)^1.5 at x = 0; times σ² = 1
    centre = hessian_eigenvalues_3d(shape_volume("plate"))[(2,) + CENTRE]
    assert centre == pytest.approx(-800.0 * 2.0 / 5.0**1.5, rel=0.03)


def test_hessian_3d_dark_blob_is_positive():
    centre = hessian_eigenvalues_3d(shape_volume("blob", contrast=-100.0))[(slice(None),) + CENTRE]
    assert (centre > 5.0).all()


def test_hessian_3d_spacing_window_and_slice():
    tube = shape_volume("tube")
    windowed = hessian_eigenvalues_3d(tube, window=DLD_WINDOW)
    np.testing.assert_allclose(windowed, hessian_eigenvalues_3d(tube) / 1500.0, atol=1e-5)
    np.testing.assert_allclose(hessian_eigenvalues_3d(tube, slice_index=7), hessian_eigenvalues_3d(tube)[:, 7])
    # a tube is sampled twice as coarsely in-plane: sigma in mm keeps the physical scale, so the response stays
    coarse = hessian_eigenvalues_3d(shape_volume("tube", shape=(15, 41, 41), width_mm=1.0), spacing=(1.0, 2.0, 2.0))
    assert coarse[2, 7, 20, 20] < -STRONG_HU / 2


def test_hessian_3d_rejects_thin_volume():
    with pytest.raises(ValueError, match=r"6 voxels along Z .* needs at least 7"):
        hessian_eigenvalues_3d(shape_volume("blob", shape=(6, 41, 41)))
    with pytest.raises(ValueError, match="needs at least 13"):
        hessian_eigenvalues_3d(shape_volume("blob", shape=(9, 41, 41)), sigma_mm=2.0)


def test_hessian_3d_rejects_bad_input():
    with pytest.raises(HUCheckError, match="normalised to 0..1"):
        hessian_eigenvalues_3d(window_unit(shape_volume("blob")))
    with pytest.raises(ValueError, match="hessian_features_2d"):
        hessian_eigenvalues_3d(shape_volume("blob")[7])
    with pytest.raises(ValueError, match="one per axis"):
        hessian_eigenvalues_3d(shape_volume("blob"), spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="out of range"):
        hessian_eigenvalues_3d(shape_volume("blob"), slice_index=20)


def test_hessian_2d_route_matches_3d_tube():
    tube = shape_volume("tube")
    planar = hessian_features_2d(tube[7])
    assert planar.shape == (3, 41, 41)
    assert not planar[0].any()
    np.testing.assert_allclose(planar[1:, 20, 20], hessian_eigenvalues_3d(tube, window=DLD_WINDOW)[1:, 7, 20, 20],
                               atol=1e-4)
    plate = hessian_features_2d(shape_volume("plate")[7])[:, 20, 20]
    assert abs(plate[1]) < 1e-4
    assert plate[2] < -0.03


def test_hessian_2d_grey_input():
    tube = shape_volume("tube")[7]
    grey = np.round(window_unit(tube) * 255).astype(np.uint8)
    np.testing.assert_allclose(hessian_features_2d(grey, input_kind="grey")[:, 20, 20],
                               hessian_features_2d(tube)[:, 20, 20], atol=2e-3)
    with pytest.raises(HUCheckError, match="8-bit"):
        hessian_features_2d(grey)
    with pytest.raises(ValueError, match="needs at least 7"):
        hessian_features_2d(grey[:6], input_kind="grey")


def test_to_unit_intensity_checks_kind():
    assert to_unit_intensity(np.array([[0, 255]], dtype=np.uint8), "grey").tolist() == [[0.0, 1.0]]
    with pytest.raises(ValueError, match="scaled to 0..1"):
        to_unit_intensity(np.array([[0.0, 0.5]]), "grey")
    with pytest.raises(ValueError, match="outside 0..255"):
        to_unit_intensity(np.array([[-900.0, 40.0]]), "grey")
    with pytest.raises(ValueError, match="input_kind"):
        to_unit_intensity(np.zeros((2, 2)), "rgb")


def test_synthetic_volume_is_seeded_hu():
    volume = synthetic_dld_volume("HCM", seed=5)
    assert volume.shape == (9, 64, 64)
    assert volume.dtype == np.float32
    np.testing.assert_array_equal(volume, synthetic_dld_volume("honeycombing", seed=5))
    assert not np.array_equal(volume, synthetic_dld_volume("HCM", seed=6))
    require_hu(volume)
    with pytest.raises(ValueError, match="three positive sizes"):
        synthetic_dld_volume("HCM", shape=(0, 64, 64))


def test_synthetic_classes_have_documented_hu():
    median = {name: float(np.median(synthetic_dld_volume(name, seed=11))) for name in DLD_CLASSES}
    assert -100 < median["CON"] < 60
    assert -900 < median["NOR"] < -800
    assert median["EMP"] < median["NOR"]
    assert -650 < median["R-GGO"] < -350
    assert np.percentile(synthetic_dld_volume("HCM", seed=11), 10) < -900
    assert np.percentile(synthetic_dld_volume("M-GGO", seed=11), 90) > -650


def test_synthetic_patches_shapes_and_normalisation(patches):
    assert patches["appearance"].shape == (56, 1, 32, 32)
    assert patches["appearance"].dtype == np.float32
    assert patches["geometry"].shape == (56, 3, 32, 32)
    assert patches["hu"].shape == (56, 9, 32, 32)
    assert np.bincount(patches["label"]).tolist() == [8] * 7
    np.testing.assert_allclose(patches["geometry"].std(axis=(0, 2, 3)), 1.0, rtol=1e-4)
    np.testing.assert_allclose(patches["appearance"].mean(axis=0), 0.0, atol=1e-4)
    # the appearance input is the middle slice of the HU stack
    expected = (window_unit(patches["hu"][:, 4]) - patches["stats"]["mean"]) / patches["stats"]["std"]
    np.testing.assert_allclose(patches["appearance"][:, 0], expected, atol=1e-4)


def test_synthetic_patches_are_deterministic(patches):
    again = synthetic_dld_patches(8, seed=0, stats=patches["stats"])
    np.testing.assert_array_equal(again["appearance"], patches["appearance"])
    other = synthetic_dld_patches(4, seed=1, classes=("EMP",), stats=patches["stats"])
    assert other["label"].tolist() == [4] * 4
    assert not np.array_equal(other["appearance"], patches["appearance"][patches["label"] == 4][:4])


def test_synthetic_patches_reject_bad_arguments():
    with pytest.raises(ValueError, match="even number"):
        synthetic_dld_patches(4, patch=33)
    with pytest.raises(ValueError, match="even number"):
        synthetic_dld_patches(4, patch=4)
    with pytest.raises(ValueError, match="needs at least 7"):
        synthetic_dld_patches(4, depth=5)
    with pytest.raises(ValueError, match="lacks"):
        synthetic_dld_patches(4, stats={"mean": 0.0, "std": 1.0})


def test_mean_hu_alone_does_not_solve_synthetic_task(patches):
    from sklearn.tree import DecisionTreeClassifier

    test = synthetic_dld_patches(8, seed=1, keep_hu=True, stats=patches["stats"])
    feature = lambda arrays: arrays["hu"][:, 4].mean(axis=(1, 2))[:, None]
    tree = DecisionTreeClassifier(max_depth=3, random_state=0).fit(feature(patches), patches["label"])
    accuracy = float((tree.predict(feature(test)) == test["label"]).mean())
    assert 0.3 < accuracy < 0.9, accuracy


def test_raster_patches_keep_labelled_centres():
    image = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    mask = np.full((64, 64), -1)
    mask[10:30, 10:50] = 2
    mask[40:60, 5:25] = 0
    cut, centres, labels = raster_patches(image, mask, patch=16, stride=4)
    assert len(cut) > 0
    np.testing.assert_array_equal(labels, mask[centres[:, 0], centres[:, 1]])
    np.testing.assert_array_equal(cut[:, 8, 8], image[centres[:, 0], centres[:, 1]])
    assert ((centres - 8) % 4 == 0).all()
    assert set(labels.tolist()) == {0, 2}


def test_raster_patches_min_fraction_and_stack():
    image = np.random.default_rng(0).normal(size=(3, 48, 48)).astype(np.float32)
    mask = np.full((48, 48), -1)
    mask[8:40, 8:40] = 5
    loose = raster_patches(image, mask, patch=16, stride=8)
    strict = raster_patches(image, mask, patch=16, stride=8, min_fraction=1.0)
    assert loose[0].shape[1:] == (3, 16, 16)
    assert 0 < len(strict[0]) < len(loose[0])
    for row, column in strict[1]:
        assert (mask[row - 8:row + 8, column - 8:column + 8] == 5).all()
    ignored = raster_patches(image[0], np.where(mask == 5, 0, 1), patch=16, ignore_index=0)
    assert set(ignored[2].tolist()) == {1}


@pytest.mark.parametrize("kwargs, message", [
    ({"patch": 49}, "does not fit"),
    ({"patch": 1}, "does not fit"),
    ({"stride": 0}, "stride"),
    ({"min_fraction": -0.1}, "min_fraction"),
])
def test_raster_patches_reject_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        raster_patches(np.zeros((48, 48)), np.zeros((48, 48), dtype=int), **kwargs)


def test_raster_patches_reject_mismatched_mask():
    with pytest.raises(ValueError, match="same grid"):
        raster_patches(np.zeros((48, 48)), np.zeros((40, 48), dtype=int))
    with pytest.raises(ValueError, match="integer labels"):
        raster_patches(np.zeros((48, 48)), np.zeros((48, 48)))


@pytest.mark.parametrize("seed", range(5))
def test_split_by_group_keeps_groups_whole(seed):
    groups = np.repeat(np.arange(17), np.random.default_rng(seed).integers(1, 9, size=17))
    train_index, test_index = split_by_group(groups, test_fraction=0.3, seed=seed)
    assert not set(groups[train_index]) & set(groups[test_index])
    assert sorted(np.concatenate([train_index, test_index]).tolist()) == list(range(len(groups)))
    assert len(set(groups[test_index])) == round(0.3 * 17)


def test_split_by_group_rejects_bad_arguments():
    with pytest.raises(ValueError, match="one group"):
        split_by_group(["scan-1"] * 4)
    with pytest.raises(ValueError, match="strictly between"):
        split_by_group(["a", "b"], test_fraction=0.0)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        split_by_group([])


def test_paired_flip_rotate_moves_inputs_together():
    transform = PairedFlipRotate()
    transform.set_random_state(seed=3)
    base = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    seen = set()
    for _ in range(30):
        item = transform({"appearance": base, "geometry": np.concatenate([base, 2 * base, -base])})
        np.testing.assert_array_equal(item["geometry"][1], 2 * item["appearance"][0])
        expected = np.rot90(base[..., ::-1] if item["flip"] else base, item["rotation"], axes=(-2, -1))
        np.testing.assert_array_equal(item["appearance"], expected)
        seen.add((item["flip"], item["rotation"]))
    assert len(seen) == 8


def test_dataset_items_and_batches(patches):
    dataset = DLDPatchDataset(patches, augment=True, seed=0)
    item = dataset[3]
    assert item["appearance"].shape == (1, 32, 32)
    assert item["appearance"].dtype == torch.float32
    assert item["geometry"].shape == (3, 32, 32)
    assert item["label"].item() == patches["label"][3]
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=16, shuffle=True)))
    assert batch["appearance"].shape == (16, 1, 32, 32)
    assert batch["label"].dtype == torch.int64
    plain = DLDPatchDataset(patches)
    np.testing.assert_array_equal(plain[3]["geometry"].numpy(), patches["geometry"][3])


def test_dataset_augmentation_is_reproducible(patches):
    dataset = DLDPatchDataset(patches, augment=True, seed=0)
    dataset.transform.set_random_state(seed=42)
    first = [(dataset[i]["flip"], dataset[i]["rotation"]) for i in range(12)]
    dataset.transform.set_random_state(seed=42)
    assert [(dataset[i]["flip"], dataset[i]["rotation"]) for i in range(12)] == first


def test_dataset_rejects_bad_arrays(patches):
    with pytest.raises(ValueError, match="lacks"):
        DLDPatchDataset({"label": patches["label"]})
    with pytest.raises(ValueError, match=r"\(N, 1, P, P\)"):
        DLDPatchDataset({**patches, "appearance": patches["appearance"][:-1]})
    with pytest.raises(ValueError, match=r"\(N, 3, P, P\)"):
        DLDPatchDataset({**patches, "geometry": patches["geometry"][..., :16]})
    with pytest.raises(IndexError):
        DLDPatchDataset(patches)[100]


def test_covid_lung_region_on_phantom_slices():
    for record in synthetic_covid_records(n=2, seed=1, size=160):
        lung = covid_lung_region(record)
        assert lung[record.classes > 0].all()
        assert 0.1 < lung.mean() < 0.7
        assert not lung[0].any()
        assert not lung[-1].any()


def test_covid_label_map_keeps_normal_away_from_lesions():
    classes = np.zeros((80, 80), dtype=np.uint8)
    classes[30:40, 30:40] = 1
    classes[60:70, 10:20] = 2
    labels = covid_label_map(classes, np.ones((80, 80), dtype=bool), patch=16)
    assert labels[35, 35] == DLD_CLASSES.index("M-GGO")
    assert labels[65, 15] == DLD_CLASSES.index("CON")
    assert labels[35, 45] == -1
    assert labels[5, 75] == DLD_CLASSES.index("NOR")
    assert covid_label_map(classes, np.ones((80, 80), dtype=bool), label_space="covid3")[65, 15] == 2
    assert COVID_LABEL_SPACES["covid3"] == (0, 1, 2)
    with pytest.raises(ValueError, match="label_space"):
        covid_label_map(classes, np.ones((80, 80), dtype=bool), label_space="dld6")


def test_covid_patches_from_phantom_records():
    arrays = covid_texture_patches(records=synthetic_covid_records(n=2, seed=0, size=160), stride=16)
    assert set(arrays["label"].tolist()) <= {0, 1, 6}
    assert arrays["geometry"].shape[1:] == (3, 32, 32)
    assert not arrays["geometry"][:, 0].any()
    assert arrays["centre"].shape == (len(arrays["label"]), 2)
    with pytest.raises(ValueError, match="even number"):
        covid_texture_patches(records=[], patch=20.5)
    with pytest.raises(ValueError, match="no patch"):
        covid_texture_patches(records=[])


def test_covid_semiseg_patch_counts(covid_folder):
    train = covid_texture_patches("train", root=covid_folder)
    test = covid_texture_patches("test", root=covid_folder, stats=train["stats"])
    for arrays, slices in ((train, 50), (test, 48)):
        counts = np.bincount(arrays["label"], minlength=7)
        assert counts[[0, 1, 6]].min() > 1000, counts
        assert counts[[2, 3, 4, 5]].sum() == 0
        assert len(set(arrays["group"])) == slices
    assert not set(train["group"]) & set(test["group"])
    np.testing.assert_array_equal(test["stats"]["mean"], train["stats"]["mean"])
    assert np.isfinite(test["appearance"]).all()
    assert np.isfinite(test["geometry"]).all()


def test_covid_semiseg_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        covid_texture_patches("train", root=tmp_path / "absent")


def test_geometry_view_static_and_live(patches):
    figure = geometry_view(patches, cls="R-GGO", static=True)
    assert len(figure.data) == 4
    assert "R-GGO" in figure.layout.title.text
    app = geometry_view(patches, cls="CON", static=False)
    app.controls["class"].value = DLD_CLASSES.index("NOD")
    assert "NOD" in app.figure.layout.title.text
    with pytest.raises(ValueError, match="out of range"):
        geometry_view(patches, cls="NOR", index=8, static=True)
