"""The experiment notebook runs under papermill into a run folder, and undeclared parameters are rejected."""
import json
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT, run_cli
from medseg_nb.experiments import check_parameters, run_notebook

TEMPLATE = ROOT / "nbs" / "experiments" / "train_vessels.ipynb"


def test_train_notebook_writes_run_folder(tmp_path):
    output = tmp_path / "nb_run"
    executed = run_notebook(TEMPLATE, output, {"dataset": "synthetic", "iterations": 10, "smoke": True}, progress=False)
    assert executed == output / "train_vessels.ipynb"
    notebook = nbformat.read(executed, as_version=4)
    injected = [cell for cell in notebook.cells if "injected-parameters" in cell.metadata.get("tags", [])]
    assert len(injected) == 1
    assert "iterations = 10" in injected[0].source
    for name in ("metrics.json", "per_image.csv", "last.pt", "log.csv", "parameters.yaml"):
        assert (output / name).is_file(), name
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["protocol"]["region"] == "fov"


def test_relative_output_lands_in_one_folder(tmp_path):
    # the kernel runs in the caller's folder, so a relative --output contains the executed notebook and the run files
    result = run_cli("notebook", str(TEMPLATE), "--output", "runs/relative", "-p", "iterations", "4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runs" / "relative" / "train_vessels.ipynb").is_file()
    assert (tmp_path / "runs" / "relative" / "metrics.json").is_file()
    assert not (TEMPLATE.parent / "runs" / "relative").exists()


def test_failing_notebook_reports_one_line(tmp_path):
    result = run_cli("notebook", str(TEMPLATE), "--output", str(tmp_path / "bad"), "-p", "dataset", "drvie")
    assert result.returncode == 2
    assert "drvie" in result.stderr
    assert "Traceback" not in result.stderr
    assert str(tmp_path / "bad" / "train_vessels.ipynb") in result.stderr


def test_cli_rejects_undeclared_parameter(tmp_path):
    result = run_cli("notebook", str(TEMPLATE), "--output", str(tmp_path / "x"), "-p", "itreations", "5")
    assert result.returncode == 2
    assert "itreations" in result.stderr
    assert "iterations" in result.stderr
    assert not (tmp_path / "x" / "train_vessels.ipynb").exists()


def test_wrong_parameter_type_is_rejected():
    with pytest.raises(ValueError, match="expects int"):
        check_parameters(TEMPLATE, {"iterations": "many"})
