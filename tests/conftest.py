"""Shared fixtures: the real-data folder, the command-line runner and small-run settings."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medseg_nb.core import dataset_folder

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).with_name("medseg-nb")

# A network and budget small enough that a full train-and-evaluate run takes seconds on a CPU.
TINY_TRAIN_ARGS = ["--channels", "8,16,32", "--num-res-units", "1", "--patch-size", "32", "--batch-size", "4",
                   "--samples-per-image", "4", "--roi-size", "64", "--warmup-steps", "2", "--progress", "false"]


def run_cli(*args: str, timeout: int = 600, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    "Run `medseg-nb ARGS` in a subprocess from `cwd` and return the completed process (stdout and stderr as text)."
    merged = {**os.environ, **(env or {})}
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=timeout, env=merged, cwd=cwd)


def require_dataset(folder: str) -> Path:
    "Return the data set folder `folder` under the data home, or skip the test when it is not there."
    root = dataset_folder(folder)
    if root is None:
        pytest.skip(f"{folder} not found under $MEDSEG_NB_DATA: set it to the folder that contains {folder}/ "
                    f"(datasets/{folder}.md says how to obtain it)")
    return root


@pytest.fixture
def real_data() -> Path:
    "The folder named by MEDSEG_NB_DATA; tests that need real images skip when it is not set."
    configured = os.environ.get("MEDSEG_NB_DATA")
    if not configured or not Path(configured).is_dir():
        pytest.skip("real data sets not available: set MEDSEG_NB_DATA to the folder holding DRIVE/ and CHASE_DB1/")
    return Path(configured)
