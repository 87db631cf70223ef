"""Helpers shared by the benchmark scripts: a description of the machine and a safe merge into a results file.

The scripts run as `python benchmarks/<name>.py`, so this folder is on `sys.path` and they import it as `_common`.
"""
from __future__ import annotations

import fcntl
import json
import os
import platform
from pathlib import Path


def cpu_model() -> str:
    "Return the CPU model name from /proc/cpuinfo, or the platform's machine type where that file is missing."
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine() or "unknown"


def machine() -> dict:
    "Describe the CPU, core and thread counts, the load and the library versions."
    import monai
    import torch

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average": [round(value, 2) for value in os.getloadavg()], "torch": torch.__version__,
            "monai": monai.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def merge(results: Path, key: str, value, **extra) -> None:
    """Store `value` under `key` in the JSON file `results`, keeping its other keys, and refresh its `machine`.

    The file is locked while it is read and replaced atomically, so two benchmark processes can share it. The
    `extra` keys (a command line, say) are stored next to `key`.
    """
    results = Path(results)
    results.parent.mkdir(parents=True, exist_ok=True)
    with open(results.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        content = json.loads(results.read_text()) if results.exists() else {}
        content[key] = value
        content.update(extra)
        content["machine"] = machine()
        temporary = results.with_suffix(".tmp")
        temporary.write_text(json.dumps(content, indent=1, default=str) + "\n")
        temporary.replace(results)
