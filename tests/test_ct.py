"""Real-data checks of the CT readers, the HU check and the lung mask on the Chest Imaging Platform (CIP) test scans.

The CIP folder contains subject 10002K as an 8x downsampled NRRD volume (64 x 64 x 79) and as the same volume written
as a DICOM series. Subject 16021S comes as two full-resolution NRRD slices, subject 25356Y as two scanner DICOM
slices. The label maps are outputs of CIP's automatic lung segmentation, coded `type * 256 + region`, so
`label % 256 > 0` is lung.
"""
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from conftest import require_dataset
from medseg_nb.ct.io import (
    CTVolume, DicomSeriesError, HUCheckError, LoadCTd, check_same_grid, list_dicom_series, read_ct, read_dicom_series,
    read_label, read_nifti, read_nrrd, write_volume,
)
from medseg_nb.ct.preprocessing import CTSliceDataset, lung_mask, mask_dice

# DICOM stores ImagePositionPatient with 3 decimals here, so origins can differ from the NRRD header by 5e-4 mm.
SPACING_TOLERANCE_MM = 1e-4
ORIGIN_TOLERANCE_MM = 1e-3
MIN_LUNG_DICE = 0.95


@pytest.fixture(scope="module")
def cip() -> Path:
    return require_dataset("CIP-chest-CT")


@pytest.fixture(scope="module")
def ct_nrrd(cip) -> CTVolume:
    return read_nrrd(cip / "10002K/ct-64.nrrd")


def test_dicom_series_matches_nrrd(cip, ct_nrrd):
    series = read_dicom_series(cip / "10002K/ct-64Dicom")
    assert series.shape == ct_nrrd.shape == (64, 64, 79)
    assert np.array_equal(series.array, ct_nrrd.array)  # identical HU, not just close
    assert np.allclose(series.spacing, ct_nrrd.spacing, atol=SPACING_TOLERANCE_MM)
    assert np.allclose(series.origin, ct_nrrd.origin, atol=ORIGIN_TOLERANCE_MM)
    assert np.allclose(series.affine, ct_nrrd.affine, atol=ORIGIN_TOLERANCE_MM)
    assert series.orientation == ct_nrrd.orientation == "PLS"
    assert series.meta["rescale"] == (1.0, 0.0)


def test_dicom_order_ignores_file_names(cip, ct_nrrd, tmp_path):
    files = sorted((cip / "10002K/ct-64Dicom").iterdir())
    permutation = np.random.default_rng(0).permutation(len(files))
    for new_index, path in zip(permutation, files):
        shutil.copy(path, tmp_path / f"slice_{new_index:03d}.dcm")
    assert np.array_equal(read_dicom_series(tmp_path).array, ct_nrrd.array)


def test_scanner_dicom_rescale_and_padding(cip):
    scanner = read_dicom_series(cip / "25356Y/simple_dicom")
    assert scanner.shape == (512, 512, 2)
    assert np.allclose(scanner.spacing, (0.703125, 0.703125, 0.625))
    assert scanner.meta["rescale"] == (1.0, -1024.0)
    assert scanner.array.min() == -1024.0  # PixelPaddingValue (-3024 HU after rescale) replaced by air
    assert -1100 <= scanner.meta["hu_check"].air_percentile <= -900
    raw = read_dicom_series(cip / "25356Y/simple_dicom", padding_hu=None)
    assert raw.array.min() == -3024.0


def test_lung_mask_dice_10002k(cip, ct_nrrd):
    reference = read_label(cip / "10002K/lm-64.nrrd").array % 256 > 0
    whole_lung = read_label(cip / "10002K/wholeLung-64.nrrd").array > 0
    predicted = lung_mask(ct_nrrd)
    dice, dice_whole = mask_dice(predicted, reference), mask_dice(predicted, whole_lung)
    print(f"10002K lung mask Dice: {dice:.4f} (lm-64), {dice_whole:.4f} (wholeLung-64)")
    assert dice >= MIN_LUNG_DICE
    assert dice_whole >= MIN_LUNG_DICE


def test_lung_mask_dice_16021s(cip):
    crop = read_nrrd(cip / "16021S/crop_ct_2slices.nrrd")
    labels = read_label(cip / "16021S/crop_ct_partialLungLabelMap.nrrd")
    assert crop.shape == (349, 443, 2)
    assert labels.shape == (349, 443, 96)
    # the two CT slices are slices 60 and 61 of the label map: their origins differ by 60 x 0.5 mm
    assert np.isclose(crop.origin[2] - labels.origin[2], 60 * 0.5)
    reference = labels.array[:, :, 60:62] % 256 > 0
    dice = mask_dice(lung_mask(crop), reference)
    print(f"16021S lung mask Dice: {dice:.4f}")
    assert dice >= MIN_LUNG_DICE


def test_right_lung_on_image_left(cip):
    region = read_label(cip / "10002K/lm-64.nrrd").array % 256
    right_columns = np.nonzero(np.isin(region, [12, 13, 14]))[1]  # right upper/middle/lower thirds
    left_columns = np.nonzero(np.isin(region, [9, 10, 11]))[1]
    assert right_columns.mean() < left_columns.mean()
    superior = np.nonzero(np.isin(region, [9, 12]))[2].mean()
    inferior = np.nonzero(np.isin(region, [11, 14]))[2].mean()
    assert superior > inferior  # slices grow toward the head


def test_missing_slice_names_the_gap(cip, tmp_path):
    shutil.copytree(cip / "10002K/ct-64Dicom", tmp_path / "series")
    (tmp_path / "series/IMG0040.dcm").unlink()
    with pytest.raises(DicomSeriesError, match="IMG0039.dcm and IMG0041.dcm") as error:
        read_dicom_series(tmp_path / "series")
    assert "1 slice(s) are missing" in str(error.value)
    assert "allow_uneven=True" in str(error.value)
    assert read_dicom_series(tmp_path / "series", allow_uneven=True).shape == (64, 64, 78)


def test_mixed_series_lists_uids(cip, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(cip / "10002K/ct-64Dicom", folder)
    for path in (cip / "25356Y/simple_dicom").iterdir():
        shutil.copy(path, folder / f"scanner_{path.name}")
    series = list_dicom_series(folder)
    assert [entry["files"] for entry in series] == [79, 2]
    with pytest.raises(DicomSeriesError, match="series_uid=") as error:
        read_dicom_series(folder)
    for entry in series:
        assert entry["series_uid"] in str(error.value)
    chosen = read_dicom_series(folder, series_uid=series[1]["series_uid"])
    assert chosen.shape == (512, 512, 2)


def test_edited_series_uid_is_detected(cip, tmp_path):
    folder = tmp_path / "edited"
    shutil.copytree(cip / "10002K/ct-64Dicom", folder)
    for path in sorted(folder.iterdir())[:5]:
        dataset = pydicom.dcmread(path)
        dataset.SeriesInstanceUID = "1.2.826.0.1.3680043.99.1"
        dataset.save_as(path)
    with pytest.raises(DicomSeriesError, match="mixes 2 DICOM series") as error:
        read_dicom_series(folder)
    assert "1.2.826.0.1.3680043.99.1 (5 files" in str(error.value)


def test_empty_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no DICOM image slices found"):
        read_dicom_series(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        read_ct(tmp_path / "absent.nrrd")


def test_windowed_volume_fails_hu_check(ct_nrrd, tmp_path):
    grey = np.clip((ct_nrrd.array + 1350) / 1500 * 255, 0, 255).round().astype(np.uint8)
    windowed = CTVolume(grey, ct_nrrd.spacing, ct_nrrd.affine, source="windowed")
    write_volume(windowed, tmp_path / "windowed.nrrd")
    with pytest.raises(HUCheckError, match="windowed.nrrd does not look like Hounsfield units") as error:
        read_nrrd(tmp_path / "windowed.nrrd")
    assert "8-bit" in str(error.value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        volume = read_nrrd(tmp_path / "windowed.nrrd", hu_check="warn")
    assert volume.is_hu is False
    assert any(issubclass(item.category, UserWarning) for item in caught)


def test_missing_intercept_fails_hu_check(ct_nrrd, tmp_path):
    stored = CTVolume(ct_nrrd.array + 1024, ct_nrrd.spacing, ct_nrrd.affine, source="stored")
    write_volume(stored, tmp_path / "stored.nii.gz")
    with pytest.raises(HUCheckError, match="RescaleIntercept"):
        read_nifti(tmp_path / "stored.nii.gz")


def test_mask_shape_mismatch_raises(cip, ct_nrrd):
    crop_labels = read_label(cip / "16021S/crop_ct_partialLungLabelMap.nrrd")
    with pytest.raises(ValueError, match="crop_ct_partialLungLabelMap.nrrd has shape") as error:
        check_same_grid(ct_nrrd, crop_labels)
    assert "ct-64.nrrd" in str(error.value)
    with pytest.raises(ValueError, match="resample"):
        LoadCTd()({"image": cip / "10002K/ct-64.nrrd", "label": cip / "16021S/crop_ct_partialLungLabelMap.nrrd"})
    with pytest.raises(ValueError, match="mask 'label' has shape"):
        CTSliceDataset([{"image": ct_nrrd, "label": crop_labels}])


def test_load_ctd_pairs_image_and_label(cip):
    sample = LoadCTd()({"image": cip / "10002K/ct-64Dicom", "label": cip / "10002K/lm-64.nrrd"})
    assert tuple(sample["image"].shape) == (1, 64, 64, 79)
    assert tuple(sample["label"].shape) == (1, 64, 64, 79)
    assert sample["image"].meta["is_hu"] is True


def test_nifti_roundtrip_with_oblique_affine(ct_nrrd, tmp_path):
    # Store the volume flipped and permuted on disk, with a 10 degree rotation about the body axis.
    stored = np.flip(ct_nrrd.array.transpose(2, 1, 0), axis=0).astype(np.int16)  # axes: slice (flipped), column, row
    angle = np.deg2rad(10)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    spacing = ct_nrrd.spacing
    columns_lps = np.column_stack([[0, 0, -spacing[2]], [spacing[1], 0, 0], [0, spacing[0], 0]])  # S down, L, P
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = rotation @ columns_lps
    affine_lps[:3, 3] = [12.0, -30.0, 80.0]
    nib.save(nib.Nifti1Image(stored, np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps), tmp_path / "oblique.nii.gz")

    volume = read_nifti(tmp_path / "oblique.nii.gz")
    assert volume.meta["file_orientation"] == "ILP"
    assert volume.orientation == "PLS"
    assert np.array_equal(volume.array, ct_nrrd.array)
    assert np.allclose(volume.spacing, spacing, atol=1e-5)
    # every voxel keeps its world position: compare the corners through both affines
    for corner in np.ndindex(2, 2, 2):
        canonical_index = np.array(corner) * (np.array(volume.shape) - 1)
        row, column, slice_index = canonical_index
        stored_index = [stored.shape[0] - 1 - slice_index, column, row]
        assert np.allclose(volume.affine @ [*canonical_index, 1], affine_lps @ [*stored_index, 1], atol=1e-4)


def test_covid_jpeg_is_not_hu():
    covid = require_dataset("COVID-SemiSeg")
    volume = read_ct(covid / "TrainingSet/LungInfection-Train/Doctor-label/Imgs/0.jpg")
    assert volume.is_hu is False
    assert volume.shape[2] == 1
    with pytest.raises(ValueError, match="is not in HU"):
        lung_mask(volume)

