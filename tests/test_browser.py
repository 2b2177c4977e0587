"""JupyterLab as a person uses it: a real JupyterLab server, driven by headless Chromium through Selenium.

The quickstart (00) and the estimators notebook (02) are opened in JupyterLab and run with Run → Run All Cells; then no
cell may show an error, the widgets must render, and moving the κ slider of the estimator playground must redraw its
figure. The report page of a headless run (``index.html``) must open in Chromium with every image and link working,
and the rendered notebook must draw its plotly figures offline. Screenshots go to ``runs/browser-test/<timestamp>/``.

Needs Debian's ``chromium`` and ``chromium-driver`` and Selenium (``pip install selenium``). Where they are missing the
tests skip with the reason; under CI (``CI=true``) they fail instead, since CI installs them (``.ci/run``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from erlib.notebooks import NotebookResult, render_html, write_index

ROOT = Path(__file__).resolve().parent.parent
#: Flags for headless Chromium as root on a closed network (without the background-networking ones its own
#: connections to update and sync services are refused many at a time).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
]
NOTEBOOK_TIMEOUT = 420  # seconds for Run All of one notebook on a busy 2-core CPU
SERVER_TIMEOUT = 90


def _browser_tools() -> tuple[str, str]:
    """Paths of chromium and chromedriver; skip (fail under CI=true) when they or Selenium are missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", chromium), ("chromium-driver", driver)) if path is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium")
    if missing:
        how = [
            "apt-get install -y chromium chromium-driver" if chromium is None or driver is None else "",
            "pip install selenium" if missing[-1].startswith("selenium") else "",
        ]
        reason = f"browser test needs {', '.join(missing)}; install with: {' and '.join(h for h in how if h)}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)
    return chromium, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_group(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the process group of ``proc`` (started with start_new_session), SIGKILL it after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace)
    except ProcessLookupError:
        pass


def _with_parameters(source: Path, dest: Path, required: dict, optional: dict | None = None) -> Path:
    """Copy a notebook, setting values in its ``parameters`` cell (``name = value`` lines); a required name the cell
    does not assign fails the test."""
    nb = json.loads(source.read_text(encoding="utf-8"))
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    text = "".join(cell["source"])
    for name, value in {**required, **(optional or {})}.items():
        text, count = re.subn(rf"^{name}\s*=.*$", f"{name} = {value!r}", text, count=1, flags=re.M)
        assert count or name not in required, f"{source.name}: its parameters cell does not assign {name!r}"
    cell["source"] = text.splitlines(keepends=True)
    dest.write_text(json.dumps(nb, indent=1, ensure_ascii=False), encoding="utf-8")
    return dest


@dataclass
class Lab:
    """A running JupyterLab server: its URL, token and root folder."""

    url: str
    token: str
    root: Path
    log: Path


@pytest.fixture(scope="module")
def tools() -> tuple[str, str]:
    return _browser_tools()


@pytest.fixture(scope="module")
def shots() -> Path:
    """runs/browser-test/<timestamp>/: the screenshots of this run."""
    path = ROOT / "runs" / "browser-test" / datetime.now().strftime("%Y%m%d-%H%M%S")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def lab(tools, tmp_path_factory) -> Iterator[Lab]:
    """The venv's JupyterLab on 127.0.0.1 (free port, random token), rooted in a temporary folder that holds copies of
    notebooks 00 and 02 writing their figures and runs there; no user configuration is read."""
    base = tmp_path_factory.mktemp("jupyterlab")
    root = base / "root"
    root.mkdir()
    _with_parameters(
        ROOT / "notebooks" / "00_quickstart.ipynb",
        root / "00_quickstart.ipynb",
        {"output_dir": str(root / "figures" / "00_quickstart"), "runs_dir": str(root / "runs")},
        {"epochs": 1},
    )
    _with_parameters(
        ROOT / "notebooks" / "02_estimators.ipynb",
        root / "02_estimators.ipynb",
        {"output_dir": str(root / "figures" / "02_estimators")},
    )
    settings = base / "settings"
    for plugin, values in {
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    }.items():
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(base / "config"),
        "JUPYTER_DATA_DIR": str(base / "data"),
        "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(base / "workspaces"),
        "IPYTHONDIR": str(base / "ipython"),
        "MPLCONFIGDIR": str(base / "matplotlib"),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    token, port = secrets.token_hex(16), _free_port()
    log = base / "jupyterlab.log"
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--allow-root",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.extension_manager=readonly",
        "--ServerApp.terminals_enabled=False",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                request = urllib.request.Request(f"{url}/api/status", headers={"Authorization": f"token {token}"})
                with urllib.request.urlopen(request, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer within {SERVER_TIMEOUT} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield Lab(url, token, root, log)
    finally:
        _stop_group(proc)


@pytest.fixture(scope="module")
def browser(tools, tmp_path_factory):
    """Headless Chromium (a new, empty profile) driven by chromedriver; both stopped at the end whatever happens."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = tools
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    service = Service(executable_path=chromedriver, log_output=str(tmp_path_factory.mktemp("chromedriver") / "log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(90)
    try:
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            process = getattr(service, "process", None)
            if process is not None and process.poll() is None:
                process.kill()


# ----------------------------------------------------------------------------------------------------------------------
# Driving JupyterLab
# ----------------------------------------------------------------------------------------------------------------------


def _wait(condition: Callable[[], object], timeout: float, what: str, poll: float = 0.5):
    """The first truthy value of ``condition()`` within ``timeout`` seconds; a test failure naming ``what`` after.

    An element that JupyterLab or plotly replaced while ``condition`` read it (a redraw) counts as "not yet"."""
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except StaleElementReferenceException:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def _css(driver, selector: str) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def _prompts(driver) -> list[str]:
    """The input prompts ('[ ]:', '[*]:', '[3]:') of the open notebook's code cells, read in one script call."""
    return driver.execute_script(
        "return [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputArea-prompt')]"
        ".map(e => e.textContent.trim())"
    )


def _kernel_idle(driver) -> bool:
    return bool(_css(driver, '.jp-Notebook-ExecutionIndicator[data-status="idle"]'))


def _menu(driver, menu: str, command: str) -> None:
    """Click a menu of the menu bar, then one of its items (by JupyterLab command id)."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.XPATH, f'//li[contains(@class, "lm-MenuBar-item")][normalize-space()="{menu}"]').click()
    _wait(lambda: _css(driver, f'li.lm-Menu-item[data-command="{command}"]'), 10, f"{menu} → {command}")[0].click()


def _open_and_run_all(driver, lab: Lab, name: str, shots: Path) -> float:
    """Open ``name`` in JupyterLab, wait for its kernel, Run → Run All Cells, wait until the kernel is idle with no
    cell queued or running. Returns the seconds Run All took."""
    driver.get(f"{lab.url}/lab/tree/{name}?reset&token={lab.token}")  # reset: no tab of an earlier test
    _wait(lambda: len(_prompts(driver)) > 1 and _kernel_idle(driver), 120, f"{name} to open with an idle kernel")
    start = time.monotonic()
    # JupyterLab marks queued cells "[*]:" as soon as it sends them; on a loaded machine the first click can land
    # before the notebook panel takes commands, so click again (at most every 30 s) until a cell is queued
    clicked = -1e9
    while not any(p != "[ ]:" for p in _prompts(driver)):
        if time.monotonic() - start > NOTEBOOK_TIMEOUT:
            pytest.fail(f"timed out after {NOTEBOOK_TIMEOUT} s waiting for {name}: Run All to start")
        if time.monotonic() - clicked > 30:
            _menu(driver, "Run", "runmenu:run-all")
            clicked = time.monotonic()
        time.sleep(0.5)
    stable = [0]

    def finished() -> bool:
        done = _kernel_idle(driver) and not any(p == "[*]:" for p in _prompts(driver))
        stable[0] = stable[0] + 1 if done else 0
        return stable[0] >= 3  # idle with nothing queued for three polls in a row

    _wait(finished, NOTEBOOK_TIMEOUT, f"{name}: all cells to finish", poll=1.0)
    seconds = time.monotonic() - start
    driver.save_screenshot(str(shots / f"{Path(name).stem}-after-run-all.png"))
    return seconds


def _save(driver, lab: Lab, name: str) -> dict:
    """File → Save Notebook; the notebook as written to disk."""
    path = lab.root / name
    before = path.stat().st_mtime_ns
    _menu(driver, "File", "docmanager:save")
    _wait(lambda: path.stat().st_mtime_ns != before, 30, f"{name} to be saved")
    time.sleep(0.5)
    return json.loads(path.read_text(encoding="utf-8"))


def _close_and_shut_down(driver) -> None:
    """File → Close and Shut Down Notebook, confirming the dialog: the next test starts with no kernel running."""
    _menu(driver, "File", "filemenu:close-and-cleanup")
    _wait(lambda: _css(driver, ".jp-Dialog .jp-mod-accept"), 10, "the shut-down dialog")[0].click()
    _wait(lambda: not _css(driver, ".jp-Notebook"), 30, "the notebook to close")


def _errors_on_screen(driver) -> list[str]:
    """Texts of the outputs JupyterLab draws as errors (tracebacks render with the stderr MIME type)."""
    outputs = _css(driver, '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
    return [e.text[:500] for e in outputs if re.search(r"Traceback|Error\b", e.text)]


def _error_outputs(nb: dict) -> list[str]:
    return [
        f"{o.get('ename')}: {o.get('evalue')}"
        for c in nb["cells"]
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]


# ----------------------------------------------------------------------------------------------------------------------
# The tests
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class EstimatorsSession:
    """What notebook 02 left after Run All in JupyterLab (shared by the slider and the report-page tests)."""

    saved: dict
    seconds: float
    errors_on_screen: list[str]


@pytest.fixture(scope="module")
def estimators(lab, browser, shots) -> EstimatorsSession:
    seconds = _open_and_run_all(browser, lab, "02_estimators.ipynb", shots)
    errors = _errors_on_screen(browser)
    return EstimatorsSession(_save(browser, lab, "02_estimators.ipynb"), seconds, errors)


def test_quickstart_runs_all_cells_in_jupyterlab(lab, browser, shots):
    seconds = _open_and_run_all(browser, lab, "00_quickstart.ipynb", shots)
    assert not _errors_on_screen(browser), _errors_on_screen(browser)
    saved = _save(browser, lab, "00_quickstart.ipynb")
    assert not _error_outputs(saved), _error_outputs(saved)
    prompts = _prompts(browser)
    assert all(re.fullmatch(r"\[\d+\]:", p) for p in prompts), f"cells not run: {prompts}"
    # the live dashboard is a widget holding a plotly figure, and the run went where the parameters said
    dashboards = _css(browser, ".widget-output .js-plotly-plot")
    assert dashboards, "the training dashboard shows no figure"
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", dashboards[0])
    time.sleep(1)
    dashboards[0].screenshot(str(shots / "00_quickstart-dashboard.png"))
    assert list((lab.root / "runs").glob("*/metrics.jsonl")), "no training run under the runs_dir parameter"
    assert sorted(p.stem for p in (lab.root / "figures" / "00_quickstart").glob("*.png"))
    _close_and_shut_down(browser)
    print(f"00_quickstart: Run All took {seconds:.0f} s in JupyterLab")


def test_estimators_widgets_render_and_slider_redraws_the_figure(lab, browser, shots, estimators):
    from selenium.webdriver.common.action_chains import ActionChains

    assert not estimators.errors_on_screen, estimators.errors_on_screen
    assert not _error_outputs(estimators.saved), _error_outputs(estimators.saved)
    sliders = _css(browser, ".widget-slider")
    assert len(sliders) >= 3, f"the playground shows {len(sliders)} sliders"
    kappa = next(s for s in sliders if "κ" in s.text)
    figure = _wait(lambda: _css(browser, ".widget-output .js-plotly-plot .main-svg"), 30, "the playground figure")[0]
    playground = _css(browser, ".widget-vbox")[0]
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", playground)
    time.sleep(1)
    playground.screenshot(str(shots / "02_estimators-playground-before.png"))
    readout = kappa.find_element("css selector", ".widget-readout").text
    before = figure.get_attribute("innerHTML")
    handle = kappa.find_element("css selector", ".noUi-handle")
    ActionChains(browser).click_and_hold(handle).move_by_offset(40, 0).release().perform()
    _wait(lambda: kappa.find_element("css selector", ".widget-readout").text != readout, 20, "the κ readout to move")
    after = _wait(
        lambda: [
            f.get_attribute("innerHTML")
            for f in _css(browser, ".widget-output .js-plotly-plot .main-svg")
            if f.get_attribute("innerHTML") != before
        ],
        60,
        "the playground figure to redraw",
    )
    assert after and after[0] != before
    time.sleep(1)
    _css(browser, ".widget-vbox")[0].screenshot(str(shots / "02_estimators-playground-after.png"))
    new = kappa.find_element("css selector", ".widget-readout").text
    assert float(new) > float(readout), f"dragging the κ handle right moved κ from {readout} to {new}"
    print(f"02_estimators: Run All took {estimators.seconds:.0f} s in JupyterLab; κ {readout} -> {new}")


def test_report_page_opens_in_chromium_and_figures_work_offline(lab, browser, shots, estimators, tmp_path):
    # the report of a headless run, built from the notebook JupyterLab just executed and saved
    run_dir = tmp_path / "report"
    run_dir.mkdir()
    executed = run_dir / "02_estimators.ipynb"
    executed.write_text(json.dumps(estimators.saved), encoding="utf-8")
    figures = run_dir / "02_estimators"
    shutil.copytree(lab.root / "figures" / "02_estimators", figures)
    result = NotebookResult("02_estimators", "ok", estimators.seconds / 60, executed, figures)
    result.html = render_html(executed, run_dir / "02_estimators.html")
    index = write_index([result], run_dir, preset="tiny")

    browser.get(index.as_uri())
    _wait(lambda: browser.execute_script("return document.readyState") == "complete", 30, "index.html to load")
    images = _css(browser, "img")
    assert len(images) == len(list(figures.glob("*.png"))) >= 2
    broken = [
        i.get_attribute("src")
        for i in images
        if not browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)
    ]
    assert not broken, f"images that did not load: {broken}"
    browser.save_screenshot(str(shots / "index.png"))

    browser.get((run_dir / "02_estimators.html").as_uri())
    plots = _wait(lambda: _css(browser, ".js-plotly-plot .main-svg"), 60, "plotly figures in the rendered notebook")
    figures_in_notebook = sum(
        1
        for c in estimators.saved["cells"]
        for o in c.get("outputs", [])
        if "application/vnd.plotly.v1+json" in o.get("data", {})
    )
    assert (
        len({p.find_element("xpath", "ancestor::div[contains(@class, 'js-plotly-plot')]").id for p in plots})
        == figures_in_notebook
    )
    browser.save_screenshot(str(shots / "02_estimators-rendered.png"))

    interactive = next(figures.glob("*.html"))
    browser.get(interactive.as_uri())
    _wait(lambda: _css(browser, ".js-plotly-plot .main-svg"), 30, f"{interactive.name} to draw")
    browser.save_screenshot(str(shots / f"figure-{interactive.stem}.png"))
