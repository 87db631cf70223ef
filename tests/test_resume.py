"""A training run killed in the middle of an epoch resumes from its last checkpoint without gaps or duplicates."""
import json
import os
import signal
import subprocess
import time

import torch

from conftest import CLI, ROOT, TINY_TRAIN_ARGS, run_cli

RUN_ARGS = ["train", "--dataset", "synthetic", "--iterations", "120", "--synthetic-size", "160,160",
            "--synthetic-train", "4", "--synthetic-test", "1", "--val-count", "1", "--samples-per-image", "10",
            "--eval-split", "none", "--seed", "3"]


def epochs_logged(output):
    log = output / "log.json"
    if not log.exists():
        return []
    return [row["epoch"] for row in json.loads(log.read_text())]


def test_killed_run_resumes_exactly(tmp_path):
    args = [*RUN_ARGS, *TINY_TRAIN_ARGS[:-2]]
    killed = tmp_path / "killed"
    process = subprocess.Popen([str(CLI), *args, "--output", str(killed), "--progress", "false"], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while len(epochs_logged(killed)) < 2 and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    assert process.poll() is None, "the run ended before it could be killed: raise --iterations"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    logged_at_kill = epochs_logged(killed)
    state_at_kill = torch.load(killed / "last.pt", weights_only=False)
    assert state_at_kill["epoch"] == logged_at_kill[-1]
    assert state_at_kill["global_step"] < 120

    resumed = run_cli(*args, "--output", str(killed), "--resume", "--progress", "false")
    assert resumed.returncode == 0, resumed.stderr
    epochs = epochs_logged(killed)
    assert epochs == list(range(1, len(epochs) + 1)), f"gap or duplicate in the epoch log: {epochs}"
    assert len(epochs) > len(logged_at_kill)
    csv_rows = (killed / "log.csv").read_text().strip().splitlines()[1:]
    assert [int(row.split(",")[0]) for row in csv_rows] == epochs
    final = torch.load(killed / "last.pt", weights_only=False)
    assert final["global_step"] == 120
    assert not list(killed.glob(".*.tmp-*")), "a temporary checkpoint file was left behind"

    straight = tmp_path / "straight"
    uninterrupted = run_cli(*args, "--output", str(straight), "--progress", "false")
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    straight_log = json.loads((straight / "log.json").read_text())
    resumed_log = json.loads((killed / "log.json").read_text())
    assert [row["epoch"] for row in straight_log] == epochs
    for a, b in zip(straight_log, resumed_log):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-4, (a, b)
    evaluated = run_cli("evaluate", "--checkpoint", str(killed / "last.pt"), "--split", "test")
    assert evaluated.returncode == 0, evaluated.stderr
