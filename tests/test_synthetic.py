"""Checks of the synthetic fundus generator that span modules or need the DRIVE folder. The notebook tests the rest."""

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from conftest import require_dataset
from medseg_nb.data.fundus import compute_fov, fundus_records, load_fundus
from medseg_nb.data.synthetic import synthetic_fundus, synthetic_fundus_records

SMALL = (128, 120)


def test_records_load_through_fundus_loader():
    for record in synthetic_fundus_records("all", n_images=1, size=SMALL):
        loaded = load_fundus(record)
        assert loaded["id"] == record.id
        assert loaded["dataset"] == "synthetic"
        assert np.array_equal(loaded["image"], record.image)
        assert np.array_equal(loaded["label"], record.label)
        assert np.array_equal(loaded["fov"], record.fov)


def test_fundus_records_dispatches_to_synthetic():
    direct = synthetic_fundus_records("test", n_images=2, size=SMALL, seed=5)
    through_registry = fundus_records("synthetic", split="test", n_images=2, size=SMALL, seed=5)
    assert [r.id for r in through_registry] == [r.id for r in direct]
    assert np.array_equal(through_registry[1].image, direct[1].image)


def test_default_split_sizes():
    assert len(synthetic_fundus_records("train", size=(64, 64))) == 20
    assert len(synthetic_fundus_records("test", size=(64, 64))) == 10


def test_computed_fov_matches_returned_fov():
    sample = synthetic_fundus(seed=7)
    computed = compute_fov(sample["image"])
    agreement = (computed == sample["fov"]).mean()
    assert agreement > 0.99, f"compute_fov agrees with the generator's FOV on only {agreement:.4f} of pixels"


def test_same_seed_same_geometry_across_sizes():
    small, large = synthetic_fundus((292, 282), seed=9)["params"], synthetic_fundus((584, 565), seed=9)["params"]
    assert small["eye"] == large["eye"]
    assert small["n_branches"] == large["n_branches"]
    assert small["n_trees"] == large["n_trees"]
    ratio = large["fov_radius"] / small["fov_radius"]
    assert large["disc_radius"] == pytest.approx(small["disc_radius"] * ratio)


def test_vessels_only_darken_inside_fov():
    with_vessels = synthetic_fundus(seed=3, noise_sigma=0)
    without = synthetic_fundus(seed=3, noise_sigma=0, draw_vessels=False)
    changed = (with_vessels["image"] != without["image"]).any(-1)
    beyond_rim = ~ndi.binary_dilation(with_vessels["fov"])  # the pixel ring next to the FOV is anti-aliased
    assert not changed[beyond_rim].any()
    assert changed[with_vessels["label"]].mean() > 0.9


def test_mean_colour_near_drive():
    root = require_dataset("DRIVE")
    drive_means = []
    for number in range(1, 21):
        image = np.asarray(Image.open(root / f"test/images/{number:02d}_test.tif").convert("RGB"))
        fov = np.asarray(Image.open(root / f"test/mask/{number:02d}_test_mask.gif").convert("L")) > 127
        drive_means.append(image[fov].mean(0))
    drive_low, drive_high = np.min(drive_means, 0), np.max(drive_means, 0)
    for seed in range(5):
        sample = synthetic_fundus(seed=seed)
        mean = sample["image"][sample["fov"]].mean(0)
        assert np.all(mean >= drive_low), f"seed {seed}: mean RGB {mean} below DRIVE's minimum {drive_low}"
        assert np.all(mean <= drive_high), f"seed {seed}: mean RGB {mean} above DRIVE's maximum {drive_high}"
