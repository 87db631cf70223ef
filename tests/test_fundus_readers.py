"""Tests of the fundus readers: the real DRIVE, CHASE_DB1 and STARE copies under $MEDSEG_NB_DATA when present, and
small fixtures in the real file formats of STARE, HRF and DRIVE written into tmp_path."""

import gzip
import logging
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import require_dataset
from medseg_nb.core import DATA_ENV_VAR
from medseg_nb.data.fundus import (
    FUNDUS_DATASETS,
    STARE_TEST_IDS,
    STARE_TRAIN_IDS,
    FundusDataError,
    FundusRecord,
    chase_db1_records,
    compute_fov,
    drive_records,
    fundus_records,
    hrf_records,
    load_fundus,
    read_binary_mask,
    read_rgb,
    stare_records,
)


def real_root(folder: str) -> Path:
    "Return the real data folder, or skip the test when it is absent."
    return require_dataset(folder)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def fake_fundus(height: int = 48, width: int = 56):
    "Return a fake (H,W,3) uint8 photograph, its (H,W) bool vessel label and its (H,W) bool FOV disc."
    rows, cols = np.mgrid[:height, :width]
    fov = (rows - height / 2) ** 2 + (cols - width / 2) ** 2 < (0.45 * min(height, width)) ** 2
    vessels = fov & ((np.abs(rows - cols) < 2) | (np.abs(rows - height // 3) < 1))
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[fov] = (170, 80, 40)
    rgb[vessels] = (90, 30, 20)
    return rgb, vessels, fov


def write_drive(root: Path, sub: str = "training", numbers=(21, 22)) -> Path:
    "Write a DRIVE-layout fixture: LZW TIFF images, GIF labels and GIF FOV masks."
    rgb, vessels, fov = fake_fundus()
    for folder in ("images", "1st_manual", "mask"):
        (root / sub / folder).mkdir(parents=True, exist_ok=True)
    for n in numbers:
        Image.fromarray(rgb).save(root / sub / "images" / f"{n:02d}_{sub}.tif", compression="tiff_lzw")
        Image.fromarray(np.uint8(vessels) * 255).save(root / sub / "1st_manual" / f"{n:02d}_manual1.gif")
        Image.fromarray(np.uint8(fov) * 255).save(root / sub / "mask" / f"{n:02d}_{sub}_mask.gif")
    return root


def write_stare(root: Path, ids, gzipped=()) -> Path:
    """Write a STARE-layout fixture: P6 PPM images and P5 PGM labels named .ah.ppm (ids in `gzipped` as .ppm.gz),
    plus observer-2 labels as labels-vk-recovered/*.vk.png."""
    rgb, vessels, _ = fake_fundus()
    for folder in ("stare-images", "labels-ah", "labels-vk-recovered"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for stare_id in ids:
        image_path = root / "stare-images" / f"{stare_id}.ppm"
        label_path = root / "labels-ah" / f"{stare_id}.ah.ppm"
        Image.fromarray(rgb).save(image_path, format="PPM")
        Image.fromarray(np.uint8(vessels) * 255).save(label_path, format="PPM")
        Image.fromarray(np.uint8(~vessels) * 255).save(root / "labels-vk-recovered" / f"{stare_id}.vk.png")
        if stare_id in gzipped:
            for path in (image_path, label_path):
                Path(f"{path}.gz").write_bytes(gzip.compress(path.read_bytes()))
                path.unlink()
    return root


def write_hrf(root: Path, numbers=(1, 6), categories=("h", "dr", "g")) -> Path:
    "Write an HRF-layout fixture: .JPG images, TIFF labels and RGB TIFF FOV masks."
    rgb, vessels, fov = fake_fundus()
    for folder in ("images", "manual1", "mask"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for n in numbers:
        for category in categories:
            stem = f"{n:02d}_{category}"
            Image.fromarray(rgb).save(root / "images" / f"{stem}.JPG", quality=95)
            Image.fromarray(np.uint8(vessels) * 255).save(root / "manual1" / f"{stem}.tif")
            Image.fromarray(np.repeat(np.uint8(fov)[..., None] * 255, 3, axis=-1)).save(root / "mask" / f"{stem}_mask.tif")
    return root


# ---------------------------------------------------------------- real DRIVE, CHASE_DB1, STARE


def test_drive_real_counts_and_ids():
    root = real_root("DRIVE")
    train, test = drive_records(root, "train"), drive_records(root, "test")
    assert len(train) == 20
    assert len(test) == 20
    assert train[0].id == "drive/21_training"
    assert test[-1].id == "drive/20_test"
    assert all(r.fov is not None and r.fov.name.endswith("_mask.gif") for r in train + test)
    assert [r.id for r in drive_records(root, "all")] == sorted(r.id for r in train + test)


def test_drive_real_sample_content():
    root = real_root("DRIVE")
    sample = load_fundus(drive_records(root, "train")[0])
    assert sample["image"].shape == (584, 565, 3)
    assert sample["image"].dtype == np.uint8
    assert sample["label"].dtype == bool
    assert sample["fov"].dtype == bool
    assert 0.68 < sample["fov"].mean() < 0.70
    assert 0.08 < sample["label"][sample["fov"]].mean() < 0.20
    assert sample["split"] == "train"
    assert sample["observer"] == 1


def test_drive_real_second_observer_png():
    root = real_root("DRIVE")
    records = fundus_records("DRIVE", root=root, split="test", observer=2)
    assert len(records) == 20
    first = load_fundus(records[0])
    reference = load_fundus(drive_records(root, "test", observer=1)[0])
    inside = first["fov"]
    agreement = (first["label"][inside] == reference["label"][inside]).mean()
    assert 0.9 < agreement < 0.99  # two observers agree closely but not exactly


def test_compute_fov_matches_drive_masks():
    root = real_root("DRIVE")
    scores = [dice(compute_fov(read_rgb(r.image)), read_binary_mask(r.fov)) for r in drive_records(root, "all")]
    assert len(scores) == 40
    assert np.mean(scores) > 0.99, f"mean Dice {np.mean(scores):.4f}"
    assert np.min(scores) > 0.98, f"min Dice {np.min(scores):.4f}"


def test_chase_db1_real_split():
    root = real_root("CHASE_DB1")
    train, test = chase_db1_records(root, "train"), chase_db1_records(root, "test")
    assert len(train) == 20
    assert len(test) == 8
    assert train[0].id == "chase_db1/Image_01L"
    assert train[-1].id == "chase_db1/Image_10R"
    assert [r.id for r in test][:1] == ["chase_db1/Image_11L"]
    assert all(r.fov is None for r in train + test)
    assert test[0].label.name == "Image_11L_1stHO.png"
    assert chase_db1_records(root, "test", observer=2)[0].label.name == "Image_11L_2ndHO.png"


def test_chase_db1_real_sample_and_fov():
    root = real_root("CHASE_DB1")
    sample = load_fundus(chase_db1_records(root, "test")[0])
    assert sample["image"].shape == (960, 999, 3)
    assert sample["label"].shape == (960, 999)
    assert 0.6 < sample["fov"].mean() < 0.72
    lost = (sample["label"] & ~sample["fov"]).sum() / sample["label"].sum()
    assert lost < 0.02, f"{lost:.3%} of the vessel pixels lie outside the computed FOV"


def test_stare_real_split_skips_missing(caplog):
    root = real_root("STARE")
    present = {p.name.split(".")[0] for p in (root / "stare-images").iterdir()}
    with caplog.at_level(logging.WARNING, logger="medseg_nb.data.fundus"):
        test = stare_records(root, "test")
    assert [r.id for r in test] == [f"stare/{i}" for i in STARE_TEST_IDS if i in present]
    missing = [i for i in STARE_TEST_IDS if i not in present]
    if missing:
        assert all(i in caplog.text for i in missing)
    train = stare_records(root, "train")
    assert len(train) == sum(i in present for i in STARE_TRAIN_IDS)


def test_stare_real_sample_both_observers():
    root = real_root("STARE")
    ah = load_fundus(stare_records(root, "train", observer=1)[0])
    vk = load_fundus(stare_records(root, "train", observer=2)[0])
    assert ah["image"].shape == (605, 700, 3)
    assert ah["label"].shape == (605, 700)
    assert ah["id"] == "stare/im0001"
    assert not (ah["label"] & ~ah["fov"]).any()
    assert vk["observer"] == 2
    assert vk["label"].sum() != ah["label"].sum()


# ---------------------------------------------------------------- fixtures in the real formats


def test_stare_fixture_ppm_and_gzip(tmp_path, caplog):
    root = write_stare(tmp_path / "STARE", ["im0001", "im0002", "im0162"], gzipped=("im0002",))
    assert (root / "stare-images/im0002.ppm.gz").is_file()
    assert (root / "stare-images/im0001.ppm").read_bytes()[:2] == b"P6"
    assert (root / "labels-ah/im0001.ah.ppm").read_bytes()[:2] == b"P5"
    with caplog.at_level(logging.WARNING, logger="medseg_nb.data.fundus"):
        train = stare_records(root, "train")
    assert [r.id for r in train] == ["stare/im0001", "stare/im0002"]
    assert "im0003" in caplog.text
    rgb, vessels, _ = fake_fundus()
    for record in train:
        sample = load_fundus(record)
        np.testing.assert_array_equal(sample["image"], rgb)
        np.testing.assert_array_equal(sample["label"], vessels)
    assert [r.id for r in stare_records(root, "test")] == ["stare/im0162"]
    second = load_fundus(stare_records(root, "test", observer=2)[0])
    np.testing.assert_array_equal(second["label"], ~vessels)


def test_stare_fixture_missing_label(tmp_path):
    root = write_stare(tmp_path / "STARE", ["im0001"])
    (root / "labels-ah/im0001.ah.ppm").unlink()
    with pytest.raises(FileNotFoundError, match=r"im0001\.ah\.ppm"):
        stare_records(root, "train")


def test_hrf_fixture_split_and_content(tmp_path):
    root = write_hrf(tmp_path / "HRF")
    train, test = hrf_records(root, "train"), hrf_records(root, "test")
    assert [r.id for r in train] == ["hrf/01_dr", "hrf/01_g", "hrf/01_h"]
    assert [r.id for r in test] == ["hrf/06_dr", "hrf/06_g", "hrf/06_h"]
    assert train[0].image.suffix == ".JPG"
    sample = load_fundus(train[0])
    rgb, vessels, fov = fake_fundus()
    np.testing.assert_array_equal(sample["label"], vessels)
    np.testing.assert_array_equal(sample["fov"], fov)
    assert np.abs(sample["image"].astype(int) - rgb).mean() < 4  # JPEG is lossy
    with pytest.raises(ValueError, match="observer"):
        hrf_records(root, observer=2)


def test_hrf_fixture_missing_mask(tmp_path):
    root = write_hrf(tmp_path / "HRF", numbers=(2,), categories=("g",))
    (root / "mask/02_g_mask.tif").unlink()
    with pytest.raises(FileNotFoundError, match=r"02_g_mask\.tif"):
        hrf_records(root)


def test_drive_fixture_records_and_sample(tmp_path):
    root = write_drive(tmp_path / "DRIVE")
    records = fundus_records("drive", root=root)
    assert [r.id for r in records] == ["drive/21_training", "drive/22_training"]
    assert isinstance(records[0], FundusRecord)
    as_dict = records[0].as_dict()
    assert set(as_dict) == {"image", "label", "fov", "id", "dataset", "split", "observer"}
    sample = load_fundus(as_dict)
    rgb, vessels, fov = fake_fundus()
    np.testing.assert_array_equal(sample["image"], rgb)
    np.testing.assert_array_equal(sample["label"], vessels)
    np.testing.assert_array_equal(sample["fov"], fov)


def test_read_rgb_formats(tmp_path):
    rgb, vessels, _ = fake_fundus()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "a.gif")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.tif")
    np.testing.assert_array_equal(read_rgb(tmp_path / "a.png"), rgb)
    assert read_rgb(tmp_path / "a.gif").shape == rgb.shape
    grey = read_rgb(tmp_path / "grey.tif")
    assert grey.shape == rgb.shape
    np.testing.assert_array_equal(grey[..., 2], rgb[..., 0])


def test_read_binary_mask_accepted_encodings(tmp_path):
    _, vessels, _ = fake_fundus()
    Image.fromarray(vessels).save(tmp_path / "one_bit.png")
    Image.fromarray(np.where(vessels, 253, 3).astype(np.uint8)).save(tmp_path / "levels_3_253.png")
    Image.fromarray(np.uint8(vessels) * 255).save(tmp_path / "levels_0_255.gif")
    Image.fromarray(np.zeros((48, 56), np.uint8)).save(tmp_path / "empty.png")
    for name in ("one_bit.png", "levels_3_253.png", "levels_0_255.gif"):
        np.testing.assert_array_equal(read_binary_mask(tmp_path / name, expected_shape=(48, 56, 3)), vessels)
    assert not read_binary_mask(tmp_path / "empty.png").any()


def test_compute_fov_rule_on_fixture():
    rgb, _, fov = fake_fundus(80, 90)
    estimated = compute_fov(rgb)
    assert estimated[fov].all()
    assert dice(estimated, fov) > 0.9
    assert dice(compute_fov(rgb, threshold=85), fov) > 0.97  # half the disc's red level sits on the rim


# ---------------------------------------------------------------- bad inputs


def test_missing_data_root_names_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        fundus_records("drive")
    message = str(error.value)
    assert str(tmp_path / "DRIVE") in message
    assert DATA_ENV_VAR in message
    assert "datasets/DRIVE.md" in message


def test_root_argument_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        chase_db1_records(tmp_path / "no_such_folder")


def test_wrong_root_names_missing_layout(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match=r"training/images"):
        drive_records(tmp_path)
    with pytest.raises(FileNotFoundError, match="stare-images"):
        stare_records(tmp_path)
    with pytest.raises(FileNotFoundError, match="manual1"):
        hrf_records(tmp_path)
    with pytest.raises(FileNotFoundError, match="Image_01L.jpg"):
        chase_db1_records(tmp_path)


def test_truncated_image_file(tmp_path):
    rgb, _, _ = fake_fundus()
    for name in ("cut.tif", "cut.ppm", "cut.jpg", "cut.png"):
        Image.fromarray(rgb).save(tmp_path / name)
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 3])
        with pytest.raises(FundusDataError, match=name.replace(".", r"\.")):
            read_rgb(tmp_path / name)
    Path(tmp_path / "cut.ppm.gz").write_bytes(gzip.compress((tmp_path / "cut.ppm").read_bytes())[:40])
    with pytest.raises(FundusDataError, match=r"cut\.ppm\.gz"):
        read_rgb(tmp_path / "cut.ppm.gz")


def test_label_of_another_size(tmp_path):
    root = write_drive(tmp_path / "DRIVE", numbers=(21,))
    Image.fromarray(np.zeros((40, 56), np.uint8)).save(root / "training/1st_manual/21_manual1.gif")
    with pytest.raises(FundusDataError) as error:
        load_fundus(drive_records(root)[0])
    message = str(error.value)
    assert "21_manual1.gif" in message
    assert "21_training.tif" in message
    assert "(40, 56)" in message
    assert "(48, 56)" in message


def test_non_binary_label_jpeg_and_ramp(tmp_path):
    _, vessels, _ = fake_fundus()
    Image.fromarray(np.uint8(vessels) * 255).save(tmp_path / "label.jpg", quality=75)
    ramp = np.tile(np.arange(56, dtype=np.uint8) * 4, (48, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    for name in ("label.jpg", "ramp.png"):
        with pytest.raises(FundusDataError, match=rf"{name.replace('.', '[.]')} is not a two-level mask.*lossless"):
            read_binary_mask(tmp_path / name)
    Image.fromarray(np.uint8(vessels)).save(tmp_path / "zero_one.png")
    with pytest.raises(FundusDataError, match="0 and 255"):
        read_binary_mask(tmp_path / "zero_one.png")


def test_non_binary_label_through_reader(tmp_path):
    root = write_stare(tmp_path / "STARE", ["im0001"])
    ramp = np.tile(np.arange(56, dtype=np.uint8) * 4, (48, 1))
    Image.fromarray(ramp).save(root / "labels-ah/im0001.ah.ppm", format="PPM")
    with pytest.raises(FundusDataError, match=r"im0001\.ah\.ppm"):
        load_fundus(stare_records(root)[0])


def test_drive_missing_fov_mask(tmp_path):
    root = write_drive(tmp_path / "DRIVE")
    (root / "training/mask/22_training_mask.gif").unlink()
    with pytest.raises(FileNotFoundError) as error:
        drive_records(root)
    message = str(error.value)
    assert "22_training_mask.gif" in message
    assert "22_training.tif" in message
    assert "datasets/DRIVE.md" in message


def test_drive_observer_two_needs_test_split(tmp_path):
    root = write_drive(tmp_path / "DRIVE")
    with pytest.raises(ValueError, match="only for the test images"):
        drive_records(root, split="train", observer=2)


def test_unknown_dataset_name():
    with pytest.raises(ValueError) as error:
        fundus_records("Messidor")
    message = str(error.value)
    assert "'Messidor'" in message
    for name in FUNDUS_DATASETS:
        assert name in message


def test_invalid_split_and_observer(tmp_path):
    root = write_drive(tmp_path / "DRIVE")
    with pytest.raises(ValueError, match="'val'"):
        fundus_records("drive", root=root, split="val")
    with pytest.raises(ValueError, match="observer 3"):
        fundus_records("drive", root=root, observer=3)
    with pytest.raises(ValueError, match="n_images"):
        fundus_records("drive", root=root, n_images=3)


def test_name_is_case_insensitive(tmp_path):
    root = write_drive(tmp_path / "DRIVE")
    assert [r.id for r in fundus_records("DrIvE", root=root)] == [r.id for r in drive_records(root)]


def test_synthetic_dispatch_passes_split_and_kwargs(monkeypatch):
    calls = []

    def fake_reader(split, **kwargs):
        calls.append((split, kwargs))
        return ["sentinel"]

    module = types.ModuleType("medseg_nb.data.synthetic")
    module.synthetic_fundus_records = fake_reader
    monkeypatch.setitem(sys.modules, "medseg_nb.data.synthetic", module)
    assert fundus_records("Synthetic", split="test", n_images=4) == ["sentinel"]
    assert calls == [("test", {"n_images": 4})]


def test_load_fundus_in_memory_record():
    rgb, vessels, fov = fake_fundus()
    record = FundusRecord("synthetic/0", "synthetic", "train", 1, rgb, vessels.astype(np.uint8), fov)
    sample = load_fundus(record)
    assert sample["label"].dtype == bool
    np.testing.assert_array_equal(sample["label"], vessels)
    np.testing.assert_array_equal(sample["fov"], fov)
    bad = FundusRecord("synthetic/1", "synthetic", "train", 1, rgb, vessels.astype(np.uint8) * 7, fov)
    with pytest.raises(FundusDataError, match="synthetic/1"):
        load_fundus(bad)
    with pytest.raises(FundusDataError, match=r"\(H,W,3\) uint8"):
        load_fundus(FundusRecord("synthetic/2", "synthetic", "train", 1, rgb[..., 0], None, None))
