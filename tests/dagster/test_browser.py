"""The product in a real browser: `scripts/dev` on the embedded default (a temp OHX_HOME, free
ports), driven by Playwright through Debian's Chromium, as a person would use it.

Dismiss the first-visit dialog, open the asset graph (Lineage), the Automation page and a backfill
(the new people's history), launch a materialization of the sync status from its asset page and
wait for the run to succeed, read the per-person sync status table, then open a partition with its
per-hour plot (the bar chart image decoded and drawn). Screenshots go to $OHX_TEST_ARTIFACTS
(default test-artifacts/browser/, gitignored), one per step, for a person to look at.

The browser is Debian's `chromium` (never a browser build downloaded by Playwright): when it is
missing the test installs it (`apt-get update && apt-get install -y chromium`, as root), and is
skipped with the reason where that cannot be done.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from assets.metadata import BAR_PX, PLOT_HEIGHT_PX

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = ("chromium", "chromium-browser")
READY_TIMEOUT_S = 180
WAIT_MS = 90_000
ISO_UTC = re.compile(r"\b20\d\d-\d\d-\d\dT\d\d:\d\d:\d\dZ\b")


def find_chromium() -> str | None:
    for name in CHROMIUM:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's Chromium, installed with apt-get when missing (root only)."""
    pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'"
    )
    found = find_chromium()
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and apt-get cannot install it here (needs root "
                    "on Debian): apt-get install chromium")  # fmt: skip
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.skip(f"could not install chromium ({' '.join(command)}): {done.stderr[-500:]}")
    found = find_chromium()
    if not found:
        pytest.skip("apt-get installed chromium, but no chromium command is on PATH")
    return found


@pytest.fixture(scope="module")
def artifacts() -> Path:
    folder = Path(os.environ.get("OHX_TEST_ARTIFACTS") or REPO / "test-artifacts") / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def graphql(url: str, query: str) -> dict[str, Any]:
    answer = httpx.post(f"{url}/graphql", json={"query": query}, timeout=30)
    answer.raise_for_status()
    return answer.json()["data"]


LOCATIONS = "{ repositoriesOrError { ... on RepositoryConnection { nodes { name } } } }"


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`scripts/dev` on a temp OHX_HOME and free ports, until the UI serves the code location."""
    home = tmp_path_factory.mktemp("browser") / "home"
    ui, webhooks = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OHX_", "DAGSTER_"))}
    env.update(OHX_HOME=str(home), OHX_UI_PORT=str(ui), OHX_WEBHOOK_PORT=str(webhooks))
    log_path = home.parent / "dev.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["scripts/dev"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{ui}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert process.poll() is None, log_path.read_text()[-3000:]
            try:
                if graphql(url, LOCATIONS)["repositoriesOrError"].get("nodes"):
                    break
            except (httpx.HTTPError, KeyError, TypeError, ValueError):
                pass
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(1)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def materialized_partition(url: str, asset: str) -> str | None:
    query = (
        f'{{ assetOrError(assetKey: {{path: ["{asset}"]}}) {{ ... on Asset {{ '
        "assetMaterializations(limit: 1) { partition } } } }"
    )
    found = graphql(url, query)["assetOrError"].get("assetMaterializations") or []
    return found[0]["partition"] if found else None


def wait_for(check, what: str, timeout_s: float = WAIT_MS / 1000) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"waited {timeout_s:.0f} s for {what}"
        time.sleep(1)


def nav_link(page: Any, label: str) -> Any:
    """A link of the left navigation (its accessible name is the icon's, then the label)."""
    return page.get_by_role("link", name=re.compile(rf"(^|\s){label}$")).first


def test_a_person_uses_the_ui(dev: str, chromium: str, artifacts: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)

    shots: list[Path] = []

    def shot(page, name: str) -> None:
        path = artifacts / f"{len(shots) + 1:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        shots.append(path)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(WAIT_MS)
        try:
            # First visit: Dagster's community dialog, dismissed.
            page.goto(dev + "/")
            dialog = page.get_by_role("dialog")
            expect(dialog).to_contain_text("Join the Dagster community")
            shot(page, "first-visit-dialog")
            dialog.get_by_role("button", name="Skip").click()
            expect(dialog).to_have_count(0)
            # Dagster 1.13's left navigation, as the README names its pages.
            for label in ("Overview", "Runs", "Catalog", "Jobs", "Automation", "Lineage"):
                expect(nav_link(page, label)).to_be_visible()

            # The asset graph: Lineage -> Global asset lineage, the groups of this product.
            nav_link(page, "Lineage").click()
            expect(page.get_by_text("Global asset lineage")).to_be_visible()
            for group in ("sync", "aggregates", "fhir", "status"):
                expect(page.get_by_text(group, exact=True).first).to_be_visible()
            shot(page, "asset-graph")

            # Automation: the schedules and sensors, running.
            nav_link(page, "Automation").click()
            for name in ("sync_status_schedule", "hourly_incremental_sync", "webhook_sensor",
                         "new_user_sensor", "republish_sensor"):  # fmt: skip
                expect(page.get_by_text(name, exact=True).first).to_be_visible()
            shot(page, "automation")

            # A backfill: the new people's history, which new_user_sensor launched at start.
            page.goto(dev + "/runs?view=backfills")
            backfill = page.locator("a[href*='/runs/b/']").first
            expect(backfill).to_be_visible()
            backfill.click()
            # 30 days of lookback and today, for every asset of the sync chain.
            expect(page.get_by_text("31 partitions").first).to_be_visible()
            for asset in ("raw_health_records", "fhir_observations", "fhir_delivery"):
                expect(page.get_by_text(asset, exact=True).first).to_be_visible()
            shot(page, "backfill")

            # Launch a materialization from the UI: the sync status, and wait for the run.
            page.goto(dev + "/assets/sync_status/simulated")
            page.get_by_role("button", name=re.compile(r"(^|\s)Materialize$")).first.click()
            launched = page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}")).first
            expect(launched).to_be_visible()
            run_id = re.search(r"[0-9a-f]{8}", launched.inner_text()).group(0)  # type: ignore[union-attr]
            page.get_by_role("link", name="View").first.click()
            expect(page).to_have_url(re.compile(rf"/runs/{run_id}"))
            expect(page.get_by_text("Success", exact=True).first).to_be_visible(timeout=120_000)
            shot(page, "materialization-succeeded")

            # The sync status: one row per person and type, ISO times, with its checks.
            page.goto(dev + "/assets/sync_status/simulated")
            table = page.locator("table", has_text="covered_until").last
            expect(table).to_be_visible()
            text = table.inner_text()
            # People by their salted subject (12 hex digits), never by id (issue 19).
            for person in ("sim-001", "sim-002", "sim-003"):
                assert person not in text, text[:2000]
            assert len(set(re.findall(r"\b[0-9a-f]{12}\b", text))) == 3, text[:2000]
            assert ISO_UTC.search(text), text[:2000]
            assert not re.search(r"\b\d{13,}\b", text), "epoch microseconds in the status table"
            expect(page.get_by_text("Latest check results")).to_be_visible()
            shot(page, "sync-status")

            # A partition with its per-hour plot, once the backfill has materialized one.
            key = wait_for(
                lambda: materialized_partition(dev, "hourly_aggregates"), "a materialized partition"
            )
            page.goto(dev + f"/assets/hourly_aggregates?view=partitions&partition={key}")
            expect(page.get_by_text(key).first).to_be_visible()
            plot = page.locator("tr", has_text="records_per_hour").first
            expect(plot).to_contain_text("heart_rate")
            assert re.search(r"[·▁▂▃▄▅▆▇█]{24}", plot.inner_text()), plot.inner_text()
            # Its bar chart, inline in the metadata table: a PNG the browser decoded and drew.
            row = page.locator("tr", has_text="records_per_hour/heart_rate").first
            chart = row.locator("img[alt='heart_rate records per UTC hour, 00 to 23 h']")
            expect(chart).to_be_visible()
            assert (chart.get_attribute("src") or "").startswith("data:image/png;base64,")
            drawn = chart.evaluate("img => [img.complete, img.naturalWidth, img.naturalHeight]")
            assert drawn == [True, 24 * BAR_PX, PLOT_HEIGHT_PX], drawn
            box = chart.bounding_box()
            assert box is not None and box["width"] >= 24 * BAR_PX / 2, box
            shot(page, "partition")
        except Exception:
            shot(page, "failure")
            raise
        finally:
            browser.close()
    assert [p.name for p in shots] == [
        "01-first-visit-dialog.png",
        "02-asset-graph.png",
        "03-automation.png",
        "04-backfill.png",
        "05-materialization-succeeded.png",
        "06-sync-status.png",
        "07-partition.png",
    ]
    assert all(p.stat().st_size > 10_000 for p in shots)
    day = datetime.fromisoformat(key.split("|")[0]).replace(tzinfo=UTC)
    assert datetime.now(UTC) - day < timedelta(days=32)
