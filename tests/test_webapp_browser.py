"""The web app in a real browser: the system's headless Chromium driven by Playwright.

Runs the views tab's one-click example with the network cut off (every request that does not go to
the app is aborted, as on an offline machine), waits for the 3D viewer, checks that its canvas shows
something (pixel spread of a screenshot of the canvas) and that the GLB download is a mesh, and that
closing the page removes the session's files. Screenshots go to ``$SD3D_TEST_ARTIFACTS`` (else the
test's temporary folder).

Only Chromium from the system is used (Debian: ``apt-get install chromium``), never a browser
downloaded by ``playwright install``; without it the test skips and says so.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path(os.environ.get("SD3D_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(), reason=f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
)
pytest.importorskip("gradio", reason="the web app needs the app extra: pip install 'sd3d[app]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (pip)")

from support.webapp import served  # noqa: E402

from sd3d.webapp.handlers import ServeOptions, WebApp  # noqa: E402

# A blank canvas (background, label and buttons only) has a pixel spread of a few grey levels; the
# rendered cow has tens.
MIN_CANVAS_STD = 15.0


def _artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("SD3D_TEST_ARTIFACTS") or tmp_path / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _spread(png: bytes) -> float:
    return float(np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float64).std())


def _wait(condition, timeout: float, step: float = 0.5):
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > end:
            return value
        time.sleep(step)


def test_views_example_in_the_browser(tmp_path, monkeypatch):
    import trimesh

    monkeypatch.setenv("GRADIO_HEARTBEAT_INTERVAL", "1")  # notice the closed page within a second
    artifacts = _artifacts(tmp_path)
    work = tmp_path / "work"
    app = WebApp(ServeOptions(device="cpu", weights_dir=tmp_path / "no-weights", work_dir=work))
    outside: list[str] = []
    with served(app) as server, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
            page = context.new_page()

            def offline(route):
                if route.request.url.startswith(server.url):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", offline)
            page.goto(server.url)
            # without weights the photo tab says how to get them
            sync_api.expect(page.locator("#weights-note")).to_contain_text(
                "sd3d weights download syncdreamer"
            )

            page.get_by_role("tab", name="Views → mesh").click()
            page.locator("#views-steps input").fill("20")  # a short fit; the rest stays at the defaults
            page.locator("#views-steps input").press("Tab")
            page.locator("#views-example").click()

            canvas = page.locator("#views-model canvas")
            canvas.wait_for(state="visible", timeout=150_000)
            spread = _wait(lambda: (s := _spread(canvas.screenshot())) > MIN_CANVAS_STD and s, timeout=30)
            (artifacts / "webapp-views-canvas.png").write_bytes(canvas.screenshot())
            page.screenshot(path=str(artifacts / "webapp-views.png"), full_page=True)
            assert spread, f"the 3D viewer's canvas stayed blank (pixel spread <= {MIN_CANVAS_STD})"
            sync_api.expect(page.locator("#views-summary")).to_contain_text("faces, textured")
            sync_api.expect(page.locator("#views-command")).to_contain_text(
                "sd3d reconstruct views/ -o mesh.glb --steps 20 --device cpu"
            )

            link = page.locator("#views-downloads a[download='mesh.glb']")
            with page.expect_download() as download:
                link.click()
            glb = tmp_path / "downloaded.glb"
            download.value.save_as(glb)
            mesh = trimesh.load(glb, force="mesh")
            assert len(mesh.faces) > 0 and np.isfinite(mesh.vertices).all()

            assert len([d for d in work.iterdir() if d.is_dir()]) == 1  # this page's session
            context.close()  # the page goes: its session's files go with it
            assert _wait(lambda: not any(work.iterdir()), timeout=20), list(work.iterdir())
        finally:
            browser.close()
    (artifacts / "webapp-outside-requests.txt").write_text("".join(f"{u}\n" for u in outside))
