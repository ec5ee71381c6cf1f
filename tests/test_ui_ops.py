"""The dashboard's operator views in headless Chromium against a real ``chronoq dev`` on the
handlers of ``tests/apps/journal.py``: a running task's log lines and progress bar in the
task view (pushed over its event socket, not polled), and draining a worker from the Workers view.

Screenshots go to ``tests/artifacts/ui-*.png`` (not committed), as in tests/test_ui.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import Proc, free_port, wait_ready, wait_status
from tests.test_ui import Page, browser, chromium_path, expect  # noqa: F401 - fixtures

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

APP = "tests.apps.journal:app"


def start_dev(folder: Path, *flags: str) -> tuple[str, Proc]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = Proc(
        [
            "dev",
            "--app",
            APP,
            "--port",
            str(port),
            "--database-url",
            f"sqlite:///{folder / 'ui.db'}",
            *flags,
        ],
        {"CHRONOQ_HEARTBEAT_SECONDS": "0.3", "CHRONOQ_LOG_FORMAT": "text"},
        folder / "dev.log",
    )
    wait_ready(url, proc)
    return url, proc


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[str]:
    url, proc = start_dev(tmp_path)
    try:
        yield url
    finally:
        if proc.popen.poll() is None:
            proc.terminate()


@pytest.fixture
def tab(browser: Any, dev: str) -> Iterator[Page]:  # noqa: F811 - browser is a fixture
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = Page(context.new_page(), dev)
    yield page
    context.close()
    assert page.errors == [], f"JavaScript errors on the page: {page.errors}"


def submit(url: str, name: str, **payload: Any) -> str:
    answer = httpx.post(f"{url}/v1/tasks", json={"name": name, "payload": payload}, timeout=5)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def status(url: str, task_id: str) -> str:
    return str(httpx.get(f"{url}/v1/tasks/{task_id}", timeout=5).json()["status"])


def test_log_lines_and_progress_appear_while_the_task_runs(tab: Page, dev: str) -> None:
    task_id = submit(dev, "journal.steps", steps=8, pause=0.6, tag="live")
    wait_status(dev, task_id, "running")
    pushed: list[str] = []  # the frames the task view's log socket received

    def on_socket(ws: Any) -> None:
        if "types=log" in ws.url:
            ws.on("framereceived", lambda frame: pushed.append(str(frame)))

    tab.page.on("websocket", on_socket)
    page = tab.open(f"#/tasks?task={task_id}")
    panel = page.locator("aside.detail .task-log")
    expect(
        panel.locator(".log-line", has_text="INFO tests.journal: live step 1 of 8")
    ).to_be_visible()
    expect(panel.locator(".log-line", has_text="live printed 1")).to_be_visible()
    assert status(dev, task_id) == "running"  # seen while it runs, not read afterwards

    def reads() -> int:
        return sum(f"/v1/tasks/{task_id}/logs" in url for url in tab.requests)

    assert reads() == 1  # what was there when the socket opened; the rest is pushed
    expect(panel.locator(".log-line", has_text="live step 4 of 8")).to_be_visible()
    assert status(dev, task_id) == "running"
    assert reads() == 1, "the task view asked for the lines again instead of hearing them"
    assert any("live step 4 of 8" in frame for frame in pushed), pushed
    bar = panel.locator(".progress")
    expect(bar).to_be_visible()
    first = int(bar.get_attribute("aria-valuenow") or "0")
    assert 0 < first < 100
    expect(bar).to_have_attribute("aria-valuenow", re.compile(rf"^(?!{first}$)\d+$"))
    later = int(bar.get_attribute("aria-valuenow") or "0")
    assert later > first
    assert status(dev, task_id) == "running"
    tab.screenshot("task-logs-running")
    expect(bar).to_have_attribute("aria-valuenow", "100", timeout=20_000)
    expect(panel.locator(".progress-label")).to_contain_text("step 8 of 8")
    expect(panel.locator(".log-line", has_text="live printed 8")).to_be_visible()
    expect(page.locator("aside.detail .detail-body")).to_have_attribute("data-status", "succeeded")
    assert panel.locator(".log-line").count() == 16  # each line once, in one attempt group
    assert panel.locator(".log-attempt").count() == 1
    tab.screenshot("task-logs-done")


#: every WebSocket the page opens, kept in ``window.__sockets`` (to drop them in a test)
KEEP_SOCKETS = """
const Native = window.WebSocket;
window.__sockets = [];
window.WebSocket = class extends Native {
  constructor(...args) { super(...args); window.__sockets.push(this); }
};
"""


def test_lines_written_while_the_log_socket_was_down_are_read_once(
    browser: Any,  # noqa: F811
    dev: str,
) -> None:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        context.add_init_script(KEEP_SOCKETS)
        tab = Page(context.new_page(), dev)
        task_id = submit(dev, "journal.steps", steps=14, pause=0.4, tag="gap")
        wait_status(dev, task_id, "running")
        page = tab.open(f"#/tasks?task={task_id}")
        panel = page.locator("aside.detail .task-log")
        expect(panel.locator(".log-line", has_text="gap printed 2")).to_be_visible()
        dropped = page.evaluate(
            "window.__sockets.filter((s) => s.url.includes('types=log'))"
            ".map((s) => { s.close(); return s.url; }).length"
        )
        assert dropped == 1
        # the panel reconnects and reads what was written meanwhile, then hears the rest
        expect(panel.locator(".log-line", has_text="gap printed 8")).to_be_visible()
        assert status(dev, task_id) == "running"
        expect(page.locator("aside.detail .detail-body")).to_have_attribute(
            "data-status", "succeeded", timeout=20_000
        )
        expect(panel.locator(".log-line", has_text="gap printed 14")).to_be_visible()
        texts = panel.locator(".log-line .log-text").all_inner_texts()
        want = [
            line
            for n in range(1, 15)
            for line in (f"INFO tests.journal: gap step {n} of 14", f"gap printed {n}")
        ]
        assert texts == want  # each line once, in order, across the reconnect
        reads = sum(f"/v1/tasks/{task_id}/logs" in url for url in tab.requests)
        assert 2 <= reads <= 3, reads  # on open, on reopen (and maybe one view refresh)
        assert tab.errors == []
    finally:
        context.close()


def test_drain_from_the_ui_stops_the_worker_after_its_task(tab: Page, dev: str) -> None:
    task_id = submit(dev, "journal.steps", steps=10, pause=0.5, tag="drain")
    wait_status(dev, task_id, "running")
    (worker,) = httpx.get(f"{dev}/v1/workers", timeout=5).json()
    page = tab.open(f"#/workers?worker={worker['id']}")
    detail = page.locator("aside.worker-detail")
    expect(detail.locator(".worker-tasks a")).to_have_attribute("title", task_id)
    tab.screenshot("worker")
    page.once("dialog", lambda dialog: dialog.accept())
    detail.locator("button.worker-drain").click()
    expect(detail.locator("h2 .badge")).to_have_text(re.compile("drain asked|draining"))
    expect(detail.locator("h2 .badge")).to_have_text("draining")  # it heard: claims no more
    later = submit(dev, "journal.steps", steps=1, pause=0.01, tag="later")
    assert status(dev, task_id) == "running"  # the drain let it go on
    tab.screenshot("worker-draining")
    wait_status(dev, task_id, "succeeded")
    expect(detail.locator("h2 .badge")).to_have_text("stopped", timeout=20_000)
    assert status(dev, later) == "queued"  # a drained worker claims nothing new
    task = httpx.get(f"{dev}/v1/tasks/{task_id}", timeout=5).json()
    assert [a["outcome"] for a in task["attempt_history"]] == ["succeeded"]
    tab.screenshot("worker-drained")


def test_task_logs_and_workers_fit_a_phone(browser: Any, dev: str) -> None:  # noqa: F811
    task_id = submit(dev, "journal.steps", steps=2, pause=0.01, tag="phone " + "x" * 200)
    wait_status(dev, task_id, "succeeded")
    (worker,) = httpx.get(f"{dev}/v1/workers", timeout=5).json()
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        tab = Page(context.new_page(), dev)
        for name, fragment, ready in [
            ("task-logs", f"#/tasks?task={task_id}", ".task-log .log-line"),
            ("worker", f"#/workers?worker={worker['id']}", "aside.worker-detail h2"),
        ]:
            page = tab.open(fragment)
            expect(page.locator(ready).first).to_be_visible()
            wide = page.evaluate("document.documentElement.scrollWidth")
            assert wide <= 392, f"{name}: the page is {wide} px wide on a 390 px screen"
            tab.screenshot(f"phone-{name}")
        assert tab.errors == []
    finally:
        context.close()


def test_worker_view_shows_its_children_and_their_task(
    browser: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    url, proc = start_dev(tmp_path, "--pool", "process", "--processes", "2")
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        task_id = submit(url, "journal.steps", steps=20, pause=0.2, tag="child")
        wait_status(url, task_id, "running")
        (worker,) = httpx.get(f"{url}/v1/workers", timeout=5).json()
        tab = Page(context.new_page(), url)
        page = tab.open(f"#/workers?worker={worker['id']}")
        children = page.locator("aside.worker-detail table.children tbody tr")
        expect(children).to_have_count(2)
        busy = children.filter(has_text="busy")
        expect(busy).to_have_count(1)
        expect(busy.locator("a")).to_have_attribute("href", f"#/tasks?task={task_id}")
        expect(page.locator("aside.worker-detail .worker-tasks a")).to_have_attribute(
            "title", task_id
        )
        tab.screenshot("worker-children")
        assert tab.errors == []
    finally:
        context.close()
        proc.terminate()
