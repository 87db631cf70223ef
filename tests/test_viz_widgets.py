"""Headless tests of the live forms of medseg_nb.viz: build each app, move its controls, check the figure changed."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from medseg_nb.viz import (
    TrainingDashboard, embedding_view, error_map_view, feature_explorer, gallery_view, in_live_kernel, overlay_view,
    threshold_metrics, viz_check, volume_view,
)


@pytest.fixture
def vessel_case():
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:90, :120]
    distance = np.abs(rows - (45 + 15 * np.sin(cols / 15)))
    label = (distance < 3).astype(int)
    probability = np.clip(np.exp(-distance / 4) + rng.normal(0, 0.1, distance.shape), 0, 1)
    fov = ((rows - 45) ** 2 / 45**2 + (cols - 60) ** 2 / 60**2 <= 1).astype(int)
    return probability, label, fov


def plotly_json(figure) -> dict:
    return json.loads(json.dumps(figure.to_plotly_json(), default=lambda value: np.asarray(value).tolist()))


def test_headless_process_is_static():
    assert in_live_kernel() is False
    assert type(overlay_view(np.zeros((8, 8)))).__name__ == "Figure"


def test_overlay_opacity_and_toggles():
    image = np.random.default_rng(1).random((64, 80))
    label = np.zeros((64, 80), dtype=int)
    label[10:30, 10:30], label[40:50, 50:70] = 1, 2
    app = overlay_view(image, label, label, static=False)
    app.controls["opacity"].value = 0.8
    assert {trace.opacity for trace in app.figure.data if trace.meta} == {0.8}
    app.controls["class_2"].value = False
    hidden = [trace.visible for trace in app.figure.data if trace.meta and trace.meta["class"] == 2]
    assert hidden == [False, False]
    filled = np.nansum(np.asarray(app.figure.data[1].z, dtype=float))
    app.controls["style"].value = "contour"
    assert np.nansum(np.asarray(app.figure.data[1].z, dtype=float)) < filled


def test_overlay_side_by_side_adds_panel():
    image = np.zeros((32, 32))
    label = np.eye(32, dtype=int)
    app = overlay_view(image, label, label, static=False)
    assert "xaxis2" not in plotly_json(app.figure)["layout"]
    app.controls["layout"].value = "side"
    assert "xaxis2" in plotly_json(app.figure)["layout"]


def test_error_map_threshold_updates_metrics(vessel_case):
    probability, label, fov = vessel_case
    app = error_map_view(probability, probability, label, fov, threshold=0.5, static=False)
    before = np.asarray(app.figure.data[0].z).copy()
    app.controls["threshold"].value = 0.9
    after = np.asarray(app.figure.data[0].z)
    assert (after == 3).sum() > (before == 3).sum()  # more false negatives at a higher threshold
    expected = threshold_metrics(probability, label, fov, 0.9)
    assert f"sensitivity {expected['sensitivity']:.4f}" in app.readout.value
    roc_point = app.figure.data[-3]
    assert roc_point.y[0] == pytest.approx(expected["sensitivity"])


def test_error_map_bad_inputs(vessel_case):
    probability, label, fov = vessel_case
    with pytest.raises(ValueError, match="shape"):
        error_map_view(probability, probability[:10], label)
    nan_probability = probability.copy()
    nan_probability[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        error_map_view(probability, nan_probability, label)
    with pytest.raises(ValueError, match="fov is empty"):
        error_map_view(probability, probability, label, np.zeros_like(fov))


def test_volume_slider_window_and_axis():
    volume = np.tile(np.arange(20, dtype=np.float32), (30, 40, 1)) - 1000  # HU = slice index - 1000
    mask = np.zeros(volume.shape, dtype=np.uint16)
    mask[5:25, 5:35, 5:15] = 522  # a CIP-style code, renumbered for colouring
    app = volume_view(volume, spacing=(0.8, 0.8, 2.0), mask=mask, static=False)
    app.controls["slice"].value = 3
    assert float(np.asarray(app.figure.data[0].z)[0, 0]) == -997.0
    assert "slice 3" in app.figure.data[0].hovertemplate
    app.controls["window"].value = "mediastinum"
    assert (app.figure.data[0].zmin, app.figure.data[0].zmax) == (-125.0, 225.0)
    app.controls["axis"].value = "sagittal"
    assert np.asarray(app.figure.data[0].z).shape == (20, 30)
    assert app.controls["slice"].max == 39
    app.controls["opacity"].value = 0.9
    assert app.figure.data[1].opacity == 0.9


def test_volume_decimates_large_planes():
    volume = np.zeros((600, 300, 4), dtype=np.int16)
    figure = volume_view(volume, max_side=200, static=True)
    assert np.asarray(figure.data[0].z).shape == (200, 100)
    assert list(figure.data[0].x[:2]) == [0, 3]  # true column indices of the kept pixels


def test_feature_explorer_layer_and_channel():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1))
    app = feature_explorer(model, torch.rand(1, 24, 24), layer="0", static=False)
    first = np.asarray(app.figure.data[1].z).copy()
    app.controls["channel"].value = 3
    assert not np.allclose(first, np.asarray(app.figure.data[1].z))
    app.controls["layer"].value = "2"
    assert app.controls["channel"].max == 5


def test_gallery_pages():
    app = gallery_view(np.random.default_rng(2).random((5, 16, 16)), labels=[0, 1, 0, 1, 1], per_page=2, static=False)
    assert len(app.figure.data) == 2
    app.controls["page"].value = 2
    assert len(app.figure.data) == 1


def test_embedding_recolour():
    features = torch.randn(40, 8)
    app = embedding_view(features, labels=[0, 1] * 20, domains=["a"] * 20 + ["b"] * 20, static=False)
    assert [trace.name for trace in app.figure.data] == ["label 0", "label 1"]
    app.controls["colour"].value = "domain"
    assert [trace.name for trace in app.figure.data] == ["domain a", "domain b"]


def test_dashboard_in_learner_fit():
    from medseg_nb.learner import Learner, SegmentationTask
    from medseg_nb.models import build_unet

    batches = [{"image": torch.rand(2, 1, 32, 32), "label": (torch.rand(2, 1, 32, 32) > 0.8).float()} for _ in range(3)]
    board = TrainingDashboard(batches[0]["image"][0], batches[0]["label"][0, 0], static=False)
    model = build_unet(channels=(4, 8), num_res_units=0)
    Learner(model, SegmentationTask("dice_ce"), batches, device="cpu", progress=False, callbacks=[board]).fit(max_epochs=2)
    assert board.redraws == 2
    assert len(board.figure.data[0].y) == 6  # one step loss per batch
    assert np.asarray(board.figure.data[-2].z).shape == (32, 32)  # sample prediction
    assert model.training  # the dashboard restored train mode after predicting


def test_viz_check_reports_packages():
    report = viz_check()
    assert report["versions"]["ipywidgets"].startswith("8")
    assert report["lab_extensions"]["@jupyter-widgets/jupyterlab-manager"]
