"""The web app (``brainsegfounder web``) driven by a real browser: Debian's Chromium through Playwright.

The server runs on 127.0.0.1 with the shipped sample case in its cases folder and the shipped demo
model; the test clicks through the workflow a radiologist would, and checks what the page shows
against the engine's own summary of the same case and what Save wrote on disk. A screenshot of
each step goes to the test's folder.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from test_case_files import study_zip

from helpers import ROOT, tree_state, wait_until

pytest.importorskip("trame_slicer", reason="the web extra is not installed (pip install '.[web]')")
playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (test extra)")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium)"),
]

SAMPLE = ROOT / "Resources" / "SampleData"
INPUTS = {"flair": "t2f", "t1ce": "t1c", "t1": "t1n", "t2": "t2w"}  # BraTS 2023 file tags of the sample
START_S, SEGMENT_S, STEP_S = 90, 240, 30  # bounds for a busy 2-core machine
# The product's own CPU runtime (OpenVINO), not the suite's PyTorch: the browser sees what users
# get, and the 8 flips of the uncertainty map take seconds there rather than minutes.
PRODUCT_ENV = {k: v for k, v in os.environ.items() if k != "BRAINSEGFOUNDER_CPU_RUNTIME"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


FINETUNE_QUICK = ("train.steps_per_epoch=1", "train.warmup_epochs=0", "validation.overlap=0", "data.cache=none")
SERVED = ROOT / "Resources" / "Models" / "brats-synthetic-demo.pt"  # a real checkpoint to serve


def _serve_model(folder):
    """A loopback HTTP server holding a model file (nothing in the tests reaches out)."""
    folder.mkdir()
    shutil.copy(SERVED, folder / "served.pt")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/served.pt"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def _registry_with_served(root, url):
    """The shipped model list plus one model served from loopback, given with --registry."""
    shipped = json.loads((ROOT / "Resources" / "models.json").read_text())
    shipped["models"].append(
        {
            "id": "served", "name": "Served model", "version": "1", "task": "brats",
            "inputs": ["flair", "t1ce", "t1", "t2"], "label_schema": "brats_regions", "file": "served.pt",
            "url": url, "sha256": hashlib.sha256(SERVED.read_bytes()).hexdigest(),
            "size_bytes": SERVED.stat().st_size, "license": "Apache-2.0",
        }
    )  # fmt: skip
    path = root / "models.json"
    path.write_text(json.dumps(shipped))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``brainsegfounder web`` on a free loopback port, its folders in a temporary place."""
    root = tmp_path_factory.mktemp("web")
    cases = root / "cases" / "sample"
    cases.mkdir(parents=True)
    for tag in INPUTS.values():
        shutil.copy(SAMPLE / f"BrainSegFounderGlioma-{tag}.nii.gz", cases)
    (root / "tmp").mkdir()
    served = _serve_model(root / "served")
    # BrainSegFounder's BraTS weights where a download puts them (a stand-in file: its licence,
    # the UK Biobank MTA, must be accepted before first use; it is never run here)
    (root / "home" / "downloads").mkdir(parents=True)
    torch.save({"w": torch.zeros(2)}, root / "home" / "downloads" / "model_weights_BRATS-finetune.pt")
    env = dict(PRODUCT_ENV, BRAINSEGFOUNDER_HOME=str(root / "home"), TMPDIR=str(root / "tmp"))
    command = ["--device", "cpu", "--cases", str(root / "cases"), "--save-to", str(root / "saved")]
    command += ["--max-upload-mb", "5", "--registry", str(_registry_with_served(root, served.url))]
    for setting in FINETUNE_QUICK:  # one step an epoch: a run takes seconds on a CPU
        command += ["--finetune-set", setting]
    try:
        with _web_app(command, env, root / "server.log") as front:
            # One session (its own app process and scene, behind the front) that every test here goes back to
            with urllib.request.urlopen(front, timeout=START_S) as answer:
                url = answer.geturl()
            assert url.startswith(front + "s/")
            assert url.endswith("/")
            yield dict(url=url, root=root, saved=root / "saved", tmp=root / "tmp", served=served)
    finally:
        served.shutdown()


@contextlib.contextmanager
def _web_app(options, env, log_path):
    """``brainsegfounder web OPTIONS`` on a free loopback port, until its /status answers: its address."""
    port = _free_port()
    command = [sys.executable, "-m", "brainsegfounder", "web", "--port", str(port), *options]
    front = f"http://127.0.0.1:{port}/"
    with log_path.open("w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(lambda: process.poll() is not None or _answers(front + "status"), START_S, "the web app", 0.5)
            if process.poll() is not None:
                pytest.fail(f"the web app stopped at start:\n{log_path.read_text()[-3000:]}")
            yield front
        finally:
            os.killpg(process.pid, signal.SIGTERM)  # its group: the sessions' apps and their engine runs too
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def page(server, tmp_path):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(STEP_S * 1000)
            page.goto(server["url"], timeout=START_S * 1000)
            page.get_by_test_id("segment").wait_for()
            yield page
        finally:
            browser.close()


def _volume_table(page) -> dict:
    """Region -> volume (mL) as the page shows it."""
    rows = page.get_by_test_id("volumes").locator("tr").all_inner_texts()[1:]
    return {row.split("\t")[0]: float(row.split("\t")[-1]) for row in rows}


def _engine_summary(tmp_path) -> subprocess.Popen:
    """The engine's own summary of the sample case with the demo model (the CLI, as a user runs
    it), started beside the web app's run to save time; ``.wait()`` it, then read engine.json."""
    command = [sys.executable, "-m", "brainsegfounder", "segment", "--model", "brats-synthetic-demo", "--device", "cpu"]
    for modality, tag in INPUTS.items():
        command += ["--input", f"{modality}={SAMPLE / f'BrainSegFounderGlioma-{tag}.nii.gz'}"]
    command += ["--output", str(tmp_path / "engine.nii.gz"), "--summary", str(tmp_path / "engine.json")]
    return subprocess.Popen(
        [*command, "--progress", "none"], env=PRODUCT_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def test_a_case_is_segmented_corrected_and_saved_from_the_browser(server, page, tmp_path):
    shot = iter(range(1, 100))

    def screenshot(step):
        page.screenshot(path=str(tmp_path / f"{next(shot):02d}-{step}.png"))

    page.get_by_test_id("case-pick").click()
    page.get_by_role("option", name="sample").click()
    page.get_by_test_id("load-case").click()
    page.get_by_test_id("message").filter(has_text="Loaded 4 volumes").wait_for()
    for modality, tag in INPUTS.items():  # the inputs were assigned from the file names
        assert f"BrainSegFounderGlioma-{tag}" in page.get_by_test_id(f"input-{modality}").inner_text()
    assert "licence: Apache-2.0" in page.get_by_test_id("model-text").inner_text()
    screenshot("loaded")

    engine = _engine_summary(tmp_path)
    try:
        page.get_by_test_id("segment").click()
        page.get_by_test_id("volumes").wait_for(timeout=SEGMENT_S * 1000)
        screenshot("segmented")
        assert engine.wait(timeout=SEGMENT_S) == 0
    finally:
        engine.kill()
    regions = json.loads((tmp_path / "engine.json").read_text())["regions"]
    shown = _volume_table(page)
    for key in ("NCR", "ED", "ET"):
        assert shown[regions[key]["name"]] == pytest.approx(regions[key]["volume_ml"], abs=0.006)
    for key in ("TC", "WT"):
        assert shown[f"{key} (region)"] == pytest.approx(regions[key]["volume_ml"], abs=0.006)
    listed = page.locator("input").evaluate_all("fields => fields.map(f => f.value)")  # the editor's list
    assert {regions[key]["name"] for key in ("NCR", "ED", "ET")} <= set(listed)

    # A correction: paint with the active (first) segment across the axial view's centre.
    page.get_by_role("button").filter(has=page.locator("i.mdi-brush")).last.click()
    view = page.locator(".remote-controlled-area").first.bounding_box()
    x, y = view["x"] + view["width"] / 2, view["y"] + view["height"] / 2
    page.mouse.move(x - 60, y)
    page.mouse.down()
    page.mouse.move(x + 60, y, steps=20)
    page.mouse.up()
    ncr = regions["NCR"]["name"]
    wait_until(lambda: _volume_table(page)[ncr] > shown[ncr], STEP_S, "the painted voxels in the volume table", 0.3)
    corrected = _volume_table(page)
    screenshot("painted")

    page.get_by_label("Case id").fill("web-sample")
    page.get_by_test_id("save").click()
    page.get_by_test_id("message").filter(has_text="Saved web-sample revision 1").wait_for()
    page.get_by_test_id("save").click()
    page.get_by_test_id("message").filter(has_text="Saved web-sample revision 2").wait_for()
    screenshot("saved")
    # Segment again and cancel: the process ends, the corrected segmentation stays.
    page.get_by_test_id("segment").click()
    page.get_by_test_id("progress").wait_for()
    page.get_by_test_id("cancel").click()
    page.get_by_test_id("message").filter(has_text="Cancelled").wait_for(timeout=SEGMENT_S * 1000)
    assert _volume_table(page) == corrected

    revision = server["saved"] / "web-sample" / "r002"
    info = json.loads((revision / "case.json").read_text())
    assert info["revision"] == 2
    assert info["source_model"]["version"] == "20261123-e40"
    label = sitk.ReadImage(str(revision / "label.nii.gz"))
    voxel_ml = np.prod(label.GetSpacing()) / 1000.0
    painted_ml = np.count_nonzero(sitk.GetArrayViewFromImage(label) == 1) * voxel_ml
    assert painted_ml == pytest.approx(corrected[ncr], abs=0.01)
    assert (server["saved"] / "datalist.json").is_file()

    # Fine-tune the demo model on the saved cases (a second one: training and validation need one
    # each): a live plot, then the new version in the model list.
    page.get_by_label("Case id").fill("web-sample-b")
    page.get_by_test_id("save").click()
    page.get_by_test_id("message").filter(has_text="Saved web-sample-b revision 1").wait_for()
    page.get_by_test_id("ft-epochs").locator("input").fill("1")
    page.get_by_test_id("ft-name").locator("input").fill("web-ft")
    page.get_by_test_id("ft-start").click()
    plot = page.get_by_test_id("ft-plot")
    plot.locator("polyline[data-series=dice]").wait_for(state="attached", timeout=SEGMENT_S * 1000)  # may be flat
    page.get_by_test_id("ft-text").filter(has_text="web-ft").wait_for(timeout=SEGMENT_S * 1000)  # done
    picker = page.locator(".v-select").filter(has_text="Model").first
    wait_until(lambda: "web-ft (local" in picker.inner_text(), STEP_S, "the new version chosen in the picker", 0.3)
    screenshot("fine-tuned")
    assert "held-out Dice" in plot.inner_text()
    assert (server["root"] / "home" / "models" / "web-ft.pt").is_file()
    assert page.get_by_test_id("error").count() == 0


def test_uploads_a_bad_one_refused_with_one_line_and_nothing_written_then_good_ones_loaded(server, page, tmp_path):
    files = tmp_path / "upload"
    files.mkdir()
    (files / "case-t2f.nii.gz").write_text("this is a text file, not an image\n")
    (files / "big-t2f.nii.gz").write_bytes(bytes(6 * 10**6))  # over the server's --max-upload-mb 5
    folders = (server["saved"], server["tmp"], server["root"] / "cases")  # tmp: the session's uploads
    before = tree_state(*folders)
    chooser = page.get_by_test_id("upload").locator("input[type=file]")
    error = page.get_by_test_id("error")
    for name, says in [("case-t2f.nii.gz", "is not a readable NIfTI, NRRD or MHA image"), ("big-t2f.nii.gz", "limit")]:
        chooser.set_input_files(str(files / name))
        error.filter(has_text=says).wait_for()
        page.screenshot(path=str(tmp_path / f"refused-{name}.png"))
        text = error.inner_text().strip()
        assert "\n" not in text
        assert name in text or "MB" in text
        assert str(server["root"]) not in text  # the server's folders are not the user's business
        assert tree_state(*folders) == before

    chooser.set_input_files([str(SAMPLE / f"BrainSegFounderGlioma-{tag}.nii.gz") for tag in INPUTS.values()])
    page.get_by_test_id("message").filter(has_text="Loaded 4 volumes").wait_for()
    assert error.count() == 0
    for modality, tag in INPUTS.items():
        assert f"BrainSegFounderGlioma-{tag}" in page.get_by_test_id(f"input-{modality}").inner_text()
    page.screenshot(path=str(tmp_path / "uploaded.png"))

    # a DICOM study, zipped: the series the model needs are picked from their headers, and why is shown
    archive, _ = study_zip(tmp_path)
    chooser.set_input_files(str(archive))
    message = page.get_by_test_id("message").filter(has_text="FLAIR (T2-FLAIR): series 1")
    message.wait_for()
    assert "Loaded 4 volumes." in message.inner_text()
    assert error.count() == 0
    for modality in INPUTS:
        assert f"{modality} - series" in page.get_by_test_id(f"input-{modality}").inner_text()
    page.screenshot(path=str(tmp_path / "uploaded-study.png"))


def _load_sample(page) -> None:
    page.get_by_test_id("case-pick").click()
    page.get_by_role("option", name="sample").click()
    page.get_by_test_id("load-case").click()
    page.get_by_test_id("message").filter(has_text="Loaded 4 volumes").wait_for()


def test_the_uncertainty_map_is_shown_with_a_threshold_and_its_regions_are_visited_largest_first(page, tmp_path):
    _load_sample(page)
    page.get_by_test_id("uncertainty").locator("input").check()
    page.get_by_test_id("segment").click()
    page.get_by_test_id("uncertainty-tools").wait_for(timeout=SEGMENT_S * 1000)
    page.screenshot(path=str(tmp_path / "uncertainty.png"))
    text = page.get_by_test_id("uncertain-text")
    page.get_by_test_id("next-uncertain").click()
    text.filter(has_text="more to review").wait_for()
    first = text.inner_text()
    page.get_by_test_id("next-uncertain").click()
    wait_until(lambda: text.inner_text() != first, STEP_S, "the next region", 0.3)
    volumes = [float(t.split(" mL")[0].split()[-1]) for t in (first, text.inner_text()) if " mL" in t]
    assert volumes == sorted(volumes, reverse=True)  # the largest region first


def test_a_licence_that_needs_acceptance_is_asked_for_once_in_the_browser(server, page):
    page.locator(".v-select").filter(has_text="Model").first.click()
    page.get_by_role("option", name="BrainSegFounder: glioma regions (BraTS 2021)").click()
    licence = page.get_by_test_id("licence")
    licence.wait_for()
    assert "uk-biobank-mta" in licence.inner_text()
    assert "must be accepted before its first use" in page.get_by_test_id("model-text").inner_text()
    page.get_by_test_id("segment").click()  # refused until accepted: one line, nothing started
    page.get_by_test_id("error").filter(has_text="accept the licence").wait_for()
    page.get_by_test_id("accept-licence").click()
    licence.wait_for(state="detached")
    accepted = json.loads((server["root"] / "home" / "licences.json").read_text())
    assert "brainsegfounder-brats" in json.dumps(accepted)
    assert "must be accepted" not in page.get_by_test_id("model-text").inner_text()


def test_a_model_is_downloaded_with_progress_and_its_checksum_checked(server, page, tmp_path):
    """A registry model served from loopback: Download, its progress line, then the model ready."""
    page.locator(".v-select").filter(has_text="Model").first.click()
    page.get_by_role("option", name="Served model").click()
    page.get_by_test_id("model-text").filter(has_text="version 1; licence: Apache-2.0; not downloaded").wait_for()
    page.get_by_test_id("download").click()
    page.get_by_test_id("download-text").filter(has_text="SHA-256 verified").wait_for()
    page.get_by_test_id("model-text").filter(has_text="ready").wait_for()
    page.screenshot(path=str(tmp_path / "downloaded.png"))
    downloaded = server["root"] / "home" / "downloads" / "served.pt"
    assert downloaded.read_bytes() == SERVED.read_bytes()
    assert page.get_by_test_id("download").count() == 0  # nothing left to download


def _status(front) -> dict:
    with urllib.request.urlopen(front + "status", timeout=10) as answer:
        return json.loads(answer.read())


def _refusal(url) -> tuple:
    """The HTTP status and text of a request the front refuses."""
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=START_S)
    return refused.value.code, refused.value.read().decode()


def test_each_browser_session_has_its_own_scene_up_to_the_limit_and_ends_when_closed(tmp_path):
    """Two visitors, two app processes: a case loaded in one is not in the other; a third is told
    that every session is in use; a closed page's session ends after --session-idle and frees its place."""
    (tmp_path / "cases" / "sample").mkdir(parents=True)
    for tag in INPUTS.values():
        shutil.copy(SAMPLE / f"BrainSegFounderGlioma-{tag}.nii.gz", tmp_path / "cases" / "sample")
    env = dict(PRODUCT_ENV, BRAINSEGFOUNDER_HOME=str(tmp_path / "home"))
    options = ["--device", "cpu", "--cases", str(tmp_path / "cases"), "--sessions", "2", "--session-idle", "3"]
    with _web_app(options, env, tmp_path / "server.log") as front, playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            first, second = (browser.new_page(viewport={"width": 1400, "height": 900}) for _ in range(2))
            for page in (first, second):
                page.set_default_timeout(STEP_S * 1000)
                page.goto(front, timeout=START_S * 1000)
                page.get_by_test_id("segment").wait_for(timeout=START_S * 1000)
            assert first.url != second.url
            assert first.url.startswith(front + "s/")
            assert _status(front)["sessions"] == 2
            code, text = _refusal(front)
            assert code == 503
            assert text.strip().splitlines() == [text.strip()]
            assert "all 2 sessions" in text

            first.get_by_test_id("case-pick").click()
            first.get_by_role("option", name="sample").click()
            first.get_by_test_id("load-case").click()
            first.get_by_test_id("message").filter(has_text="Loaded 4 volumes").wait_for()
            assert "BrainSegFounderGlioma-t2f" in first.get_by_test_id("input-flair").inner_text()
            second.reload()  # what the second visitor's page shows after the first one's load
            second.get_by_test_id("segment").wait_for(timeout=START_S * 1000)
            assert "BrainSegFounderGlioma" not in second.get_by_test_id("input-flair").inner_text()
            assert second.get_by_test_id("message").count() == 0  # no "Loaded ..." there: nothing was loaded

            ended = first.url
            first.close()
            wait_until(lambda: _status(front)["sessions"] == 1, START_S, "the closed page's session to end", 0.5)
            code, text = _refusal(ended)
            assert code == 404
            assert "session has ended" in text
            with urllib.request.urlopen(front, timeout=START_S) as answer:  # its place is free again
                assert answer.status == 200
                assert answer.geturl() not in (ended, second.url)
        finally:
            browser.close()
