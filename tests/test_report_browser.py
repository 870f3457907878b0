"""The report of a small real job, opened from disk in headless Chromium (Debian `chromium` and
`chromium-driver`, installed by scripts/test.sh): gallery, errors and charts render, and the page
loads nothing but itself and its data: URIs."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from conftest import imgbatch_env, run_cli

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    # Never a skip: without a browser the acceptance check has not run.
    assert browser and driver, (
        "chromium and chromedriver are needed: apt-get install chromium chromium-driver"
    )
    return browser, driver


def _job_id(proc) -> str:  # type: ignore[no-untyped-def]
    found = re.search(r"job ([0-9a-f]{32}):", proc.stdout)
    assert found, proc.stdout
    return found.group(1)


@pytest.fixture
def report(tmp_path: Path, photo_dir: Path, model_path: Path) -> tuple[Path, str, str]:
    """Two real embedded runs over the sample photos plus broken files; swap.jpg changes content
    between them and gone.jpg is deleted after them. Returns (report of job B vs A, A, B)."""
    root = tmp_path / "photos"
    shutil.copytree(photo_dir, root)
    shutil.copy(photo_dir / "cat.jpg", root / "swap.jpg")
    shutil.copy(photo_dir / "coffee.jpg", root / "gone.jpg")
    (root / "empty.jpg").write_bytes(b"")
    (root / "random.jpg").write_bytes(bytes(range(256)) * 64)
    data = (photo_dir / "coffee.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 3])
    env = imgbatch_env(tmp_path, IMGBATCH_MODEL=str(model_path))
    first = run_cli(["run", str(root), "--workers", "1", "--batch-size", "4"], env)
    assert first.returncode == 0, first.stderr
    shutil.copy(photo_dir / "coffee.jpg", root / "swap.jpg")
    second = run_cli(["run", str(root), "--workers", "1", "--batch-size", "4"], env)
    assert second.returncode == 0, second.stderr
    job_a, job_b = _job_id(first), _job_id(second)
    assert job_a != job_b
    (root / "gone.jpg").unlink()
    out = tmp_path / "report.html"
    proc = run_cli(["report", job_b[:8], "--compare", job_a, "-o", str(out)], env, timeout=180)
    assert proc.returncode == 0, proc.stderr
    return out, job_a, job_b


def test_report_renders_in_headless_chromium_without_network(
    report: tuple[Path, str, str], tmp_path: Path
) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    out, job_a, job_b = report
    html = out.read_text()
    # Statically: nothing that could reach out (the CSP forbids it too: default-src 'none').
    assert not re.search(r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:|//|file:)""", html, re.I)
    assert "<script" not in html and "<link" not in html and "url(" not in html and "@import" not in html
    assert "default-src 'none'" in html

    browser, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in [
        *CHROMIUM_FLAGS,
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1280,900",
    ]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        started = time.monotonic()
        driver.get(out.as_uri())
        load_s = time.monotonic() - started
        page = driver.execute_script(
            """
            const imgs = (sel) => Array.from(document.querySelectorAll(sel));
            return {
              title: document.title,
              groups: imgs('#gallery details.group').map(d => d.querySelector('summary').textContent),
              galleryThumbs: imgs('#gallery details[open] .card img').length,
              missing: imgs('#gallery .pic.missing').length,
              lowest: imgs('#doubtful .card').length,
              errors: document.querySelector('#errors').innerText,
              changes: document.querySelector('#changes') ? document.querySelector('#changes').innerText : '',
              charts: imgs('img.chart').map(i => ({id: i.id, ok: i.complete && i.naturalWidth > 0,
                                                  w: i.naturalWidth})),
              resources: performance.getEntriesByType('resource').map(e => e.name),
              loadMs: performance.timing.loadEventEnd - performance.timing.navigationStart,
              height: document.documentElement.scrollHeight,
            };
            """
        )
        # Every thumbnail in an open group decodes (scroll them into view: they are lazy).
        decoded = driver.execute_script(
            """
            const all = Array.from(document.querySelectorAll('#gallery details[open] .card img'));
            return Promise.all(all.map(i => {
              i.loading = 'eager';
              return i.decode().then(() => i.naturalWidth, () => 0);
            }));
            """
        )
        # (documentURL, url) of every request the browser made, its own start-up pages included.
        requested = [
            (params.get("documentURL", ""), params["request"]["url"])
            for entry in driver.get_log("performance")
            if '"Network.requestWillBeSent"' in entry["message"]
            for params in [json.loads(entry["message"])["message"]["params"]]
        ]
        console = driver.get_log("browser")
        driver.set_window_size(1280, min(int(page["height"]) + 40, 6000))
        driver.save_screenshot(str(tmp_path / "report.png"))
    finally:
        driver.quit()

    print(
        f"report {out.stat().st_size} bytes, loaded in {load_s:.2f} s ({page['loadMs']} ms by Navigation "
        f"Timing); screenshot {tmp_path / 'report.png'}"
    )
    assert job_b[:8] in page["title"]
    # Gallery: groups by label, the missing file shown as such.
    assert len(page["groups"]) >= 5, page["groups"]
    assert page["galleryThumbs"] >= 3 and decoded and all(w > 0 for w in decoded), decoded
    assert page["missing"] == 1  # gone.jpg
    assert page["lowest"] >= 5
    # Errors grouped by reason, with file names.
    for needle in ("empty file", "not a decodable image", "empty.jpg", "random.jpg", "truncated.jpg"):
        assert needle in page["errors"], page["errors"]
    # Charts: four matplotlib SVGs that the browser decoded.
    assert {c["id"] for c in page["charts"]} == {
        "chart-stages",
        "chart-throughput",
        "chart-scores",
        "chart-labels",
    }
    assert all(c["ok"] for c in page["charts"]), page["charts"]
    # Comparison: swap.jpg was a cat in job A and coffee in job B.
    assert "swap.jpg" in page["changes"] and "gone.jpg" not in page["changes"], page["changes"]
    # No external resource: the page itself and data: URIs only, nothing refused by the CSP.
    assert all(r.startswith("data:") for r in page["resources"]), page["resources"]
    ours = [url for doc, url in requested if doc == out.as_uri()]
    assert out.as_uri() in ours and all(u == out.as_uri() or u.startswith("data:") for u in ours), ours
    assert not [url for _, url in requested if re.match(r"(?:https?|wss?|ftp):", url)], requested
    assert not [m for m in console if "Content Security Policy" in m["message"]], console
