"""Checks of the COVID-SemiSeg reader, the 3-class metrics, the burden and the lesion-present units.

Real-data tests read the COVID-SemiSeg folder under $MEDSEG_NB_DATA and skip when it is absent.
"""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import require_dataset
from medseg_nb.ct.burden import burden_table, lesion_burden, lesion_present_units, roc_auc, severity_score
from medseg_nb.ct.covid import (
    COVID_LAYOUT, CovidConfig, CovidSliceDataset, covid_semiseg_records, covid_slice_metrics, evaluate_covid,
    summarize_covid_metrics, synthetic_covid_records, train_covid,
)

MIN_MEDIAN_LESION_COVERAGE = 0.9  # measured median 0.96 on the 48 test slices


@pytest.fixture(scope="module")
def covid_root() -> Path:
    return require_dataset("COVID-SemiSeg")


def write_split(folder: Path, names=("3",), image_shape=(20, 24), mask_shape=None) -> Path:
    image_dir, classes_dir, binary_dir = (folder / part for part in COVID_LAYOUT["test"])
    for directory in (image_dir, classes_dir, binary_dir):
        directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(np.full(image_shape, 90, np.uint8)).save(image_dir / f"{name}.jpg")
        classes = np.zeros(mask_shape or image_shape, np.uint8)
        classes[2:6, 2:6] = 1
        classes[8:10, 8:12] = 2
        Image.fromarray(classes).save(classes_dir / f"{name}.png")
        Image.fromarray(np.where(classes > 0, 255, 0).astype(np.uint8)).save(binary_dir / f"{name}.png")
    return folder


def test_real_splits_counts_and_consistency(covid_root):
    train = covid_semiseg_records(covid_root, "train")
    test = covid_semiseg_records(covid_root, "test")
    assert len(train) == 50
    assert len(test) == 48
    assert {r.name for r in test} >= {"6", "7", "8", "9", "99"}
    assert not {r.name for r in train} & {r.name for r in test}
    for record in train + test:
        assert record.image.dtype == np.uint8
        assert record.image.shape == record.classes.shape == record.infection.shape
        assert np.array_equal(record.infection, record.classes > 0)
    assert sum(not (r.classes == 2).any() for r in test) == 10  # slices the empty-reference policy touches


def test_reader_sorts_numerically(tmp_path):
    records = covid_semiseg_records(write_split(tmp_path, names=("10", "2", "1")), "test")
    assert [r.name for r in records] == ["1", "2", "10"]
    assert records[0].classes.max() == 2


def test_reader_shape_mismatch_names_both_files(tmp_path):
    with pytest.raises(ValueError, match=r"3\.png has shape \(20, 23\).*3\.jpg"):
        covid_semiseg_records(write_split(tmp_path, mask_shape=(20, 23)), "test")


def test_reader_missing_mask_names_file(tmp_path):
    folder = write_split(tmp_path)
    (folder / COVID_LAYOUT["test"][1] / "3.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"MultiClassInfection-Test/GT/3\.png not found"):
        covid_semiseg_records(folder, "test")


def test_reader_missing_and_empty_folders(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="Expected layout"):
        covid_semiseg_records(tmp_path / "nowhere", "test")
    with pytest.raises(FileNotFoundError, match="LungInfection-Test/GT not found"):
        (tmp_path / COVID_LAYOUT["test"][0]).mkdir(parents=True)
        (tmp_path / COVID_LAYOUT["test"][1]).mkdir(parents=True)
        covid_semiseg_records(tmp_path, "test")
    (tmp_path / COVID_LAYOUT["test"][2]).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="contains no .jpg or .png images"):
        covid_semiseg_records(tmp_path, "test")
    monkeypatch.setenv("MEDSEG_NB_DATA", str(tmp_path / "empty_home"))
    with pytest.raises(FileNotFoundError, match="set MEDSEG_NB_DATA"):
        covid_semiseg_records(None, "test")


def test_synthetic_records_are_seeded():
    first = synthetic_covid_records(3, seed=5, size=96)
    second = synthetic_covid_records(3, seed=5, size=96)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first, second))
    assert all(r.infection.any() for r in first)
    assert not np.array_equal(first[0].image, synthetic_covid_records(1, seed=6, size=96)[0].image)


def test_slice_metrics_empty_reference_policy():
    reference = np.zeros((12, 12), np.uint8)
    reference[2:6, 2:6] = 1
    perfect = covid_slice_metrics(reference.copy(), reference)
    assert perfect["consolidation_dice"] == 1.0
    assert np.isnan(perfect["consolidation_sensitivity"])
    wrong = reference.copy()
    wrong[10, 10] = 2
    scored = covid_slice_metrics(wrong, reference)
    assert scored["consolidation_dice"] == 0.0
    assert scored["ggo_dice"] == 1.0
    assert scored["infection_specificity"] == pytest.approx(1 - 1 / (144 - 16))
    summary = summarize_covid_metrics([perfect, scored])
    assert summary["empty_reference"]["consolidation"] == 2
    assert summary["mean"]["consolidation_dice"] == 0.5


def test_burden_and_severity():
    lung = np.zeros((30, 40), bool)
    lung[:, :] = True
    classes = np.zeros((30, 40), np.uint8)
    classes[:, :20] = 2  # one half fully consolidated
    burden = lesion_burden(classes, lung)
    assert burden["consolidation_percent"] == pytest.approx(50.0)
    assert (burden["side1_score"], burden["side2_score"], burden["severity"]) == (5, 0, 5)
    assert [severity_score(p) for p in (0, 4.9, 5, 25.1, 50, 75.1)] == [0, 1, 2, 3, 4, 5]


def test_lung_mask_covers_real_lesions(covid_root):
    records = covid_semiseg_records(covid_root, "test")[:12]
    table = burden_table(records)
    assert table["lesion_in_mask"].median() >= MIN_MEDIAN_LESION_COVERAGE
    assert (table["ref_lesion_percent"] > 0).all()


def test_roc_auc_matches_ranking():
    assert roc_auc([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8]) == 1.0
    assert roc_auc([0, 1, 0, 1], [0.9, 0.1, 0.8, 0.2]) == 0.0


def test_tiny_training_run_writes_files(tmp_path):
    config = CovidConfig(channels=(4, 8, 16), size=48, iterations=4, batch_size=2, warmup_steps=1, data="synthetic",
                         synthetic_train=4, synthetic_test=2, synthetic_size=96, output=str(tmp_path / "run"))
    result = train_covid(config)
    assert {p.name for p in (tmp_path / "run").iterdir()} >= {"last.pt", "log.csv", "config.json", "metrics.json"}
    assert result["report"]["n_slices"] == 2
    again = evaluate_covid(tmp_path / "run" / "last.pt")
    assert again["mean"]["infection_dice"] == pytest.approx(result["report"]["mean"]["infection_dice"])
    with pytest.raises(FileExistsError, match="already contains a run"):
        train_covid(config)
    probabilities = evaluate_covid(tmp_path / "run" / "last.pt", keep_probabilities=True)["probabilities"]
    units = lesion_present_units(synthetic_covid_records(2, seed=100_000, size=96), probabilities, unit="tile", tile=16)
    assert set(units["label"]) <= {0, 1}
    assert len(units) > 0


def test_dataset_resizes_and_keeps_classes():
    dataset = CovidSliceDataset(synthetic_covid_records(2, seed=0, size=96), size=32)
    sample = dataset[1]
    assert sample["image"].shape == (1, 32, 32)
    assert set(torch.unique(sample["label"]).tolist()) <= {0.0, 1.0, 2.0}
    with pytest.raises(ValueError, match="no slices"):
        CovidSliceDataset([], size=32)
