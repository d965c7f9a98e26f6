"""The MLflow UI as a user browses the smoke workflow's record: `mlflow server`
on loopback over the workflow's store, its pages opened in headless Chromium
(Debian's package, which `make test` installs, driven by Playwright: no browser
is downloaded), the workflow's parent run with its stages nested, a training
run's per-step loss chart, the tables artifact, the registered net and its
alias. Each test leaves a screenshot of its page, passed or failed, in
test-artifacts/mlflow-ui/ (git-ignored; the folder is printed at the end)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.mlflow_server import MlflowServer

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-artifacts" / "mlflow-ui"
CHROMIUM = Path("/usr/bin/chromium")
# Besides Playwright's own: this closed network refuses Chromium's background
# connections (updates, sync, QUIC probes), each a wait that slows the pages.
CHROMIUM_FLAGS = [
    "--no-sandbox",  # root in a container: Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Pages render in seconds; on two busy cores several times that.
PAGE_TIMEOUT_MS = 60_000

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def mlflow_ui(request, smoke_workflow_store) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 over the smoke workflow's SQLite store, the
    workflow finished; its URL."""
    root, uri = smoke_workflow_store
    server = MlflowServer(uri, root / "mlflow-server.log")
    try:
        # The server boots (seconds of imports) while the workflow runs, when no
        # test has run it yet.
        request.getfixturevalue("smoke_workflow")
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def workflow(mlflow_ui, request):
    """The finished smoke workflow the UI shows. Through `mlflow_ui`: pytest sets
    up a test's session fixtures before its module ones, so a test asking for
    `smoke_workflow` itself would run the workflow before the server starts."""
    return request.getfixturevalue("smoke_workflow")


@pytest.fixture(scope="module")
def chromium(request):
    """Debian's Chromium, headless, through Playwright (never `playwright install`)."""
    if not CHROMIUM.exists():
        pytest.fail(f"no {CHROMIUM}: `make test` installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()  # a stale page must not pass for this run's
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        yield browser
        browser.close()
    # On the console, passed or failed: pytest keeps a fixture's output for the
    # report of a failed test only.
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\nMLflow UI screenshots: {SCREENSHOTS}")


@pytest.fixture(scope="module")
def tab(chromium, mlflow_ui):
    """A tab with a fresh browser profile on the UI, tall enough for a page's
    content. One for all the tests: loading the UI's scripts is most of a fresh
    tab's first page, which moving between pages of a loaded UI skips."""
    from playwright.sync_api import expect

    context = chromium.new_context(base_url=mlflow_ui, viewport={"width": 1400, "height": 1000})
    # A user who has seen the MLflow Assistant once: on a first visit from
    # localhost it opens a side panel that narrows every page. Should MLflow
    # rename the key, the panel shows in the screenshots and nothing else changes.
    context.add_init_script(
        "window.localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true')"
    )
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    expect.set_options(timeout=PAGE_TIMEOUT_MS)
    yield context.new_page()
    context.close()


@contextmanager
def screenshot_after(tab, name: str):
    """Saves the page as SCREENSHOTS/<name>.png once the checks ran, failed or not."""
    try:
        yield
    finally:
        tab.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def _run_name(run_id: str, uri: str) -> str:
    from pipeline import tracking

    return tracking.get_run(run_id, uri).info.run_name


def test_workflow_parent_run_lists_its_stage_runs_nested_under_it(tab, workflow):
    from playwright.sync_api import expect

    result = workflow.result
    stage_runs = [_run_name(stage.run_id, result.tracking_uri) for stage in result.stages]
    with screenshot_after(tab, "1-workflow-runs-nested"):
        tab.goto(f"/#/experiments/{result.experiment_id}/runs")
        parent = tab.get_by_role("link", name=result.name, exact=True)
        expect(parent).to_be_visible()
        # Collapsed under the parent until the user opens it.
        for name in stage_runs:
            expect(tab.get_by_role("link", name=name, exact=True)).to_have_count(0)
        tab.get_by_role("row").filter(has=parent).get_by_role("button").click()
        for name in stage_runs:
            expect(tab.get_by_role("link", name=name, exact=True)).to_be_visible()


def test_training_run_charts_its_loss_per_step(tab, workflow):
    from playwright.sync_api import expect

    result = workflow.result
    run_id = workflow.stage_run_id("train/A-36")
    with screenshot_after(tab, "2-training-run-loss-chart"):
        tab.goto(f"/#/experiments/{result.experiment_id}/runs/{run_id}/model-metrics")
        tab.get_by_placeholder("Search metric charts").fill("train_loss")
        chart = tab.get_by_test_id("experiment-view-compare-runs-card").filter(
            has=tab.get_by_text("train_loss", exact=True)
        )
        expect(chart).to_be_visible()
        # A metric logged at step 0 only is drawn as a bar; others as a line
        # over the step axis (the global training step), within moments of the
        # card. The points it draws, read from the plot, are the history.
        expect(
            chart.get_by_text("Step", exact=True), "train_loss is not drawn over steps"
        ).to_be_visible(timeout=15_000)
        plot = chart.locator(".js-plotly-plot")
        steps = plot.evaluate("plot => plot.data[0].x")
        assert len(steps) > workflow.config.base_epochs, steps
        assert steps == sorted(set(steps)), steps


def test_parent_run_artifacts_show_the_tables(tab, workflow):
    from playwright.sync_api import expect

    result = workflow.result
    with screenshot_after(tab, "3-workflow-tables-artifact"):
        tab.goto(f"/#/experiments/{result.experiment_id}/runs/{result.parent_run_id}/artifacts")
        tab.get_by_text("tables.md", exact=True).click()
        # Rendered as Markdown: the paper's tables with their rows.
        expect(tab.get_by_text("Single test scale (Table 3)")).to_be_visible()
        for net in ("A-36", "B-36", "A-44", "A-36 + B-36"):
            expect(tab.get_by_role("cell", name=net, exact=True).first).to_be_visible()


def test_registered_net_carries_the_workflow_alias(tab, workflow):
    from playwright.sync_api import expect

    with screenshot_after(tab, "4-registered-net-alias"):
        tab.goto("/#/models/vgg-A")
        heading = tab.get_by_role("heading", name="vgg-A", exact=True)
        expect(heading.or_(tab.get_by_text("Model vgg-A does not exist"))).to_be_visible()
        expect(heading, "no registered model vgg-A").to_be_visible(timeout=1_000)
        # A version with an alias ("@ <alias>") naming the workflow (its parent
        # run's name); not its tags, which the versions table shows too.
        alias = tab.get_by_text(re.compile(rf"^@\s*{re.escape(workflow.result.name)}"))
        version = tab.get_by_role("row").filter(has=alias).first
        expect(version.get_by_role("link", name=re.compile(r"^Version \d+$"))).to_be_visible()
