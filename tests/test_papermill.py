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


def test_cli_rejects_undeclared_parameter(tmp_path):
    result = run_cli("notebook", str(TEMPLATE), "--output", str(tmp_path / "x"), "-p", "itreations", "5")
    assert result.returncode == 2
    assert "itreations" in result.stderr
    assert "iterations" in result.stderr
    assert not (tmp_path / "x" / "train_vessels.ipynb").exists()


def test_wrong_parameter_type_is_rejected():
    with pytest.raises(ValueError, match="expects int"):
        check_parameters(TEMPLATE, {"iterations": "many"})
