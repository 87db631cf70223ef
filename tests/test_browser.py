"""Browser test: JupyterLab on 127.0.0.1 driven by Playwright with Debian's Chromium runs the kit notebook
nbs/experiments/explore_errors.ipynb (a copy, in a temporary folder) and moves its threshold slider.

Needs /usr/bin/chromium (installed with apt-get when absent) and the PyPI package playwright (installed with pip when
absent; its own browser download is never used). Skips only when those installs fail. Writes a screenshot to
tests/artifacts/browser_viz.png.
"""
import importlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
KIT_NOTEBOOK = Path(__file__).resolve().parents[1] / "nbs" / "experiments" / "explore_errors.ipynb"


def ensure_tools():
    "Install Chromium (apt) and playwright (pip) when missing; skip the test when an install fails."
    if not Path(CHROMIUM).exists():
        # a fresh machine has no package lists yet, and without them apt-get cannot find chromium
        subprocess.run(["apt-get", "update"], capture_output=True, text=True, timeout=600)
        result = subprocess.run(["apt-get", "install", "-y", "chromium"], capture_output=True, text=True, timeout=600)
        if result.returncode != 0 or not Path(CHROMIUM).exists():
            pytest.skip(f"Chromium is missing and 'apt-get install -y chromium' failed: {result.stderr[-300:]}")
    try:
        importlib.import_module("playwright.sync_api")
    except ImportError:
        result = subprocess.run([sys.executable, "-m", "pip", "install", "playwright"], capture_output=True, text=True,
                                timeout=600)
        if result.returncode != 0:
            pytest.skip(f"playwright is missing and 'pip install playwright' failed: {result.stderr[-300:]}")
        importlib.invalidate_caches()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def copy_notebook(folder: Path) -> Path:
    "Copy the kit's error-exploration notebook into the server's folder, so the run never writes into the repository."
    path = folder / KIT_NOTEBOOK.name
    shutil.copyfile(KIT_NOTEBOOK, path)
    return path


@pytest.fixture
def jupyter_lab():
    "Start JupyterLab on 127.0.0.1 with token auth, isolated config folders and no outgoing requests."
    folder = Path(tempfile.mkdtemp(prefix="medseg-lab-"))
    copy_notebook(folder)
    port, token = free_port(), secrets.token_hex(16)
    environment = dict(os.environ)
    environment.pop("MEDSEG_NB_VIZ", None)
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR"):
        environment[name] = str(folder / f".{name.lower()}")
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}",
        "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly", "--LabApp.expose_app_in_browser=True",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers and CI often run as root
        command.append("--allow-root")
    log = open(folder / "lab.log", "w")
    server = subprocess.Popen(command, cwd=folder, env=environment, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if server.poll() is not None:
                break
            time.sleep(0.5)
    else:
        server.terminate()
        pytest.fail(f"JupyterLab did not answer within 90 s; log: {(folder / 'lab.log').read_text()[-2000:]}")
    if server.poll() is not None:
        pytest.fail(f"JupyterLab exited with code {server.returncode}; log: {(folder / 'lab.log').read_text()[-2000:]}")
    yield base, token, folder
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()
    shutil.rmtree(folder, ignore_errors=True)


def block_other_hosts(route):
    "Let requests to 127.0.0.1 through and abort every other request."
    if urlparse(route.request.url).hostname == "127.0.0.1":
        route.continue_()
    else:
        route.abort()


def test_error_map_slider_in_jupyterlab(jupyter_lab):
    ensure_tools()
    from playwright.sync_api import sync_playwright

    base, token, folder = jupyter_lab
    ARTIFACTS.mkdir(exist_ok=True)
    started = time.time()
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(folder / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1500, "height": 1000},
        )
        context.route("**/*", block_other_hosts)
        page = context.pages[0] if context.pages else context.new_page()
        page.goto(f"{base}/lab/tree/{KIT_NOTEBOOK.name}?token={token}")
        page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget && "
                               "window.jupyterapp.shell.currentWidget.sessionContext && "
                               "window.jupyterapp.shell.currentWidget.sessionContext.session && "
                               "window.jupyterapp.shell.currentWidget.sessionContext.session.kernel && "
                               "window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'",
                               timeout=120_000)
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        readout = page.locator(".medseg-metrics")
        readout.wait_for(timeout=120_000)
        page.wait_for_selector(".js-plotly-plot", timeout=60_000)
        assert page.get_by_text("live kernel: True").count() == 1
        before_text = readout.inner_text()
        roc_point = ("() => { const plot = document.querySelector('.js-plotly-plot');"
                     " return plot.data.find(trace => trace.name === 'ROC point').x[0]; }")
        before_x = page.evaluate(roc_point)
        handle = page.locator(".widget-slider .noUi-handle").first
        handle.click()
        for _ in range(20):
            page.keyboard.press("ArrowRight")
        # every key press moves the slider by one step (0.01) and sends the new value to the kernel
        page.wait_for_function("() => document.querySelector('.medseg-metrics').innerText.includes('threshold 0.70')",
                               timeout=30_000)
        page.wait_for_function(f"() => ({roc_point})() !== {before_x}", timeout=30_000)
        after_text = readout.inner_text()
        page.screenshot(path=str(ARTIFACTS / "browser_viz.png"), full_page=False)
        context.close()
    assert "threshold 0.50" in before_text
    assert "threshold 0.70" in after_text, after_text
    assert time.time() - started < 300
