"""The web dashboard at /ui, driven in headless Chromium against a real ``chronoq dev --demo``.

Uses Playwright for Python with Debian's Chromium (``/usr/bin/chromium``; no browser download).
Screenshots go to ``tests/artifacts/ui-*.png``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from tests.processes import ROOT, Proc, cli, free_port, wait_ready, wait_status

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright for Python is not installed (pip install -e '.[dev]')"
)
expect = sync_api.expect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# Stands in for a server without the /v1/events WebSocket: every connection fails at once.
NO_WEBSOCKET = """
window.WebSocket = class extends EventTarget {
  constructor(url) {
    super();
    this.url = url;
    setTimeout(() => {
      this.dispatchEvent(new Event("error"));
      this.dispatchEvent(new Event("close"));
    }, 10);
  }
  close() {}
  send() {}
};
"""

expect.set_options(timeout=15_000)


def _find_chromium() -> str | None:
    for candidate in (
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _install_chromium() -> str:
    """Debian's chromium through apt-get; the reason it failed otherwise."""
    if not shutil.which("apt-get"):
        return "apt-get is not available"
    if os.geteuid() != 0:
        return "not root, so apt-get cannot install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    output = ""
    for command in (
        ["apt-get", "install", "-y", "-q", "chromium"],
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "chromium"],
    ):
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
        except subprocess.TimeoutExpired:
            return f"{' '.join(command)} timed out"
        output = (done.stdout + done.stderr)[-500:]
        if command[1] == "install" and done.returncode == 0 and _find_chromium():
            return ""
    return f"apt-get install chromium failed: {output}"


@pytest.fixture(scope="module")
def chromium_path() -> str:
    path = _find_chromium()
    if path is None:
        reason = _install_chromium()
        path = _find_chromium()
        if path is None:
            pytest.skip(
                f"UI tests need Chromium: none found at /usr/bin/chromium and it "
                f"could not be installed ({reason})"
            )
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``chronoq dev --demo`` on a free port with a fresh SQLite file."""
    folder = tmp_path_factory.mktemp("ui")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = Proc(
        ["dev", "--demo", "--port", str(port), "--database-url", f"sqlite:///{folder / 'ui.db'}"],
        {},
        folder / "dev.log",
    )
    try:
        wait_ready(url, proc)
        answer = httpx.get(f"{url}/ui", timeout=5)
        assert answer.status_code == 200, (
            f"GET /ui answered {answer.status_code}: the dashboard is not mounted "
            "(create_api must call chronoq.api.ui.mount_ui)"
        )
        yield url
    finally:
        if proc.popen.poll() is None:
            proc.terminate()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """``chronoq dev --demo --auth`` with a 2 s key cache: its URL, a read key and the
    database URL (for ``chronoq keys``)."""
    folder = tmp_path_factory.mktemp("ui-auth")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db = f"sqlite:///{folder / 'ui.db'}"
    created = cli("keys", "create", "dashboard", "--scope", "read", "--database-url", db)
    assert created.returncode == 0, created.stderr
    proc = Proc(
        ["dev", "--demo", "--auth", "--port", str(port), "--database-url", db],
        {"CHRONOQ_KEY_CACHE_SECONDS": "2"},
        folder / "dev.log",
    )
    try:
        wait_ready(url, proc)
        yield url, created.stdout.strip(), db
    finally:
        if proc.popen.poll() is None:
            proc.terminate()


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


class Page:
    """A browser tab on the dashboard that records JavaScript errors and API requests."""

    def __init__(self, page: Any, url: str) -> None:
        self.page, self.url = page, url
        self.errors: list[str] = []
        self.requests: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("request", lambda request: self.requests.append(request.url))

    def open(self, fragment: str = "") -> Any:
        self.page.goto(f"{self.url}/ui{fragment}")
        expect(self.page.locator("#view > section")).to_be_visible()
        return self.page

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"ui-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def tab(browser: Any, server: str) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = Page(context.new_page(), server)
    yield page
    context.close()
    assert page.errors == [], f"JavaScript errors on the page: {page.errors}"
    for request in page.requests:  # never more than one page of tasks at a time
        parsed = urlparse(request)
        if parsed.path == "/v1/tasks":
            limit = parse_qs(parsed.query).get("limit", ["50"])[0]
            assert int(limit) <= 200, request


def submit(url: str, **spec: Any) -> dict[str, Any]:
    answer = httpx.post(f"{url}/v1/tasks", json=spec, timeout=5)
    assert answer.status_code == 201, answer.text
    body: dict[str, Any] = answer.json()
    return body


def status_of(page: Any, task_id: str) -> Any:
    return page.locator(f'tr[data-id="{task_id}"] .badge')


# -- tests ------------------------------------------------------------------------------------
def test_submitted_task_appears_and_succeeds_live(tab: Page, server: str) -> None:
    page = tab.open("#/tasks")
    expect(page.locator("#conn")).to_have_attribute("data-mode", "live")
    page.evaluate("window.__notReloaded = true")

    task = submit(server, name="demo.sleep", payload={"seconds": 3})
    row = page.locator(f'tr[data-id="{task["id"]}"]')
    expect(row).to_be_visible()
    expect(status_of(page, task["id"])).to_have_text(re.compile("queued|running"))
    expect(status_of(page, task["id"])).to_have_text("succeeded")
    assert page.evaluate("window.__notReloaded") is True  # updated in place, no reload

    row.click()
    detail = page.locator("aside.detail")
    expect(detail.locator("h2")).to_contain_text("demo.sleep")
    expect(detail.locator(".detail-body")).to_have_attribute("data-status", "succeeded")
    expect(detail).to_contain_text('"slept": 3')
    expect(detail.locator("li.attempt")).to_have_count(1)
    expect(detail.locator('li.attempt[data-outcome="succeeded"]')).to_be_visible()
    assert "#/tasks?task=" in page.url
    tab.screenshot("tasks")


@contextmanager
def scripted_tab(browser: Any, server: str, script: str) -> Iterator[Page]:
    """A tab of its own browser context in which ``script`` runs before the page's own."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        context.add_init_script(script)
        tab = Page(context.new_page(), server)
        yield tab
        assert tab.errors == []
    finally:
        context.close()


def test_polling_fallback_without_websocket(browser: Any, server: str) -> None:
    with scripted_tab(browser, server, NO_WEBSOCKET) as tab:
        page = tab.open("#/tasks?name=demo.add")
        expect(page.locator("#conn")).to_have_attribute("data-mode", "polling")
        page.evaluate("window.__notReloaded = true")
        task = submit(server, name="demo.add", payload={"a": 40, "b": 2})
        expect(status_of(page, task["id"])).to_have_text("succeeded")
        assert page.evaluate("window.__notReloaded") is True


def test_filters_search_and_pages(tab: Page, server: str) -> None:
    ids = [
        submit(server, name="demo.add", queue="pages", payload={"a": i, "b": 0})["id"]
        for i in range(30)
    ]
    page = tab.open("#/tasks?queue=pages&limit=25")
    rows = page.locator("table.tasks tbody tr")
    expect(rows).to_have_count(25)
    expect(rows.first).to_have_attribute("data-id", ids[-1])  # newest first
    page.get_by_role("button", name="Next").click()
    expect(rows).to_have_count(5)
    expect(rows.last).to_have_attribute("data-id", ids[0])
    expect(page.locator(".pager-label")).to_contain_text("page 2")
    page.get_by_role("button", name="Previous").click()
    expect(rows).to_have_count(25)

    # No worker serves the queue "pages": its tasks stay queued.
    page.select_option("select[name=status]", "succeeded")
    expect(page.locator(".message")).to_have_text("No task matches these filters.")
    page.select_option("select[name=status]", "queued")
    expect(rows).to_have_count(25)
    assert "status=queued" in page.url and "queue=pages" in page.url
    assert set(page.locator("table.tasks tbody .badge").all_inner_texts()) == {"queued"}

    search = page.locator("#search-input")
    search.fill(ids[3])
    search.press("Enter")
    expect(page.locator("aside.detail .detail-body")).to_have_attribute("data-id", ids[3])
    expect(page.locator("aside.detail")).to_contain_text('"a": 3')

    search.fill("demo.report")
    search.press("Enter")
    expect(page.locator("input[name=name]")).to_have_value("demo.report")
    expect(rows.first.locator(".name")).to_have_text("demo.report")

    search.fill("01a21283-0000-7000-8000-000000000000")
    search.press("Enter")
    expect(page.locator("aside.detail")).to_contain_text("no task with id")


def test_pause_resume_and_trigger_a_schedule(tab: Page, server: str) -> None:
    page = tab.open("#/schedules")
    row = page.locator('tr[data-name="demo.tick"]')
    expect(row).to_have_attribute("data-state", "active")
    expect(row.locator("td.next time")).to_have_count(2)  # next fire time, absolute + relative

    row.get_by_role("button", name="Pause").click()
    expect(row).to_have_attribute("data-state", "paused")
    expect(row.locator(".badge")).to_have_text("paused")
    assert httpx.get(f"{server}/v1/schedules/demo.tick", timeout=5).json()["paused"] is True
    tab.screenshot("schedules")

    row.get_by_role("button", name="Resume").click()
    expect(row).to_have_attribute("data-state", "active")
    schedule = httpx.get(f"{server}/v1/schedules/demo.tick", timeout=5).json()
    assert schedule["paused"] is False and schedule["next_fire_at"] is not None

    before = len(httpx.get(f"{server}/v1/schedules/demo.tick/runs", timeout=5).json()["items"])
    row.get_by_role("button", name="Trigger").click()
    expect(page.locator(".toast", has_text="Triggered demo.tick")).to_be_visible()
    runs = page.locator("tr.subrow table.runs tbody tr")
    expect(runs.first).to_be_visible()
    after = httpx.get(f"{server}/v1/schedules/demo.tick/runs", timeout=5).json()["items"]
    assert len(after) == before + 1


def test_retry_from_the_dead_letter_queue(tab: Page, server: str) -> None:
    # The demo's own demo.fail ends dead after ~1 s, with its error shown in the DLQ.
    demo_fail = httpx.get(f"{server}/v1/tasks", params={"name": "demo.fail"}, timeout=5)
    demo_fail_id = demo_fail.json()["items"][-1]["id"]
    wait_status(server, demo_fail_id, "dead", timeout=15)
    # One that fails its only attempt and succeeds when retried: it leaves the DLQ for good.
    task = submit(server, name="demo.flaky", payload={"succeed_on_attempt": 2}, max_attempts=1)
    wait_status(server, task["id"], "dead", timeout=10)

    page = tab.open("#/dead")
    expect(page.locator(f'tr[data-id="{demo_fail_id}"] .error-text')).to_contain_text(
        "this one ends in the dead-letter queue"
    )
    row = page.locator(f'tr[data-id="{task["id"]}"]')
    expect(row).to_be_visible()
    expect(page.locator("#dead-count")).to_be_visible()
    tab.screenshot("dlq")

    row.get_by_role("button", name="Retry").click()
    expect(row).to_have_count(0)
    expect(page.locator(".toast", has_text="now queued")).to_be_visible()

    # Discard deletes a dead task for good
    fail_row = page.locator(f'tr[data-id="{demo_fail_id}"]')
    fail_row.get_by_role("button", name="Discard").click()
    expect(fail_row).to_have_count(0)
    gone = httpx.get(f"{server}/v1/tasks/{demo_fail_id}", timeout=5)
    assert gone.status_code == 404
    done = wait_status(server, task["id"], "succeeded", timeout=10)
    assert done["attempts"] == 2
    page.wait_for_timeout(1500)  # later refreshes and events must not bring it back
    expect(row).to_have_count(0)

    tab.open(f"#/tasks?task={task['id']}")
    detail = page.locator("aside.detail")
    expect(detail.locator("li.attempt")).to_have_count(2)
    expect(detail.locator('li.attempt[data-outcome="failed"] .attempt-error')).to_have_text(
        "attempt 1 fails on purpose (succeeds on 2)"
    )
    expect(detail.locator('li.attempt[data-outcome="succeeded"]')).to_be_visible()
    tab.screenshot("detail")


def test_retry_all_dead_tasks_from_the_dead_letter_view(tab: Page, server: str) -> None:
    # 1,000 tasks that fail their only attempt and succeed on the next: all dead first
    spec = {
        "name": "demo.flaky",
        "queue": "default",
        "max_attempts": 1,
        "payload": {"succeed_on_attempt": 2},
    }
    made = httpx.post(f"{server}/v1/tasks/batch", json={"tasks": [spec] * 1000}, timeout=30)
    assert made.status_code == 201, made.text
    ids = {t["id"] for t in made.json()["items"]}
    body = {"filter": {"status": "dead", "name": "demo.flaky"}, "dry_run": True}

    def dead_flaky() -> int:
        answer = httpx.post(f"{server}/v1/tasks/retry", json=body, timeout=10)
        matched: int = answer.json()["matched"]
        return matched

    deadline = time.monotonic() + 60
    while dead_flaky() < 1000:
        assert time.monotonic() < deadline, f"only {dead_flaky()} of 1,000 dead"
        time.sleep(0.2)
    expected = dead_flaky()

    page = tab.open("#/dead?name=demo.flaky")
    questions: list[str] = []

    def answer(dialog: Any, accept: bool) -> None:
        questions.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()

    page.once("dialog", lambda d: answer(d, False))
    page.get_by_role("button", name="Retry all").click()
    expect(page.get_by_role("button", name="Retry all")).to_be_enabled()
    assert questions == [f"Retry {expected:,} dead tasks (name demo.flaky)?"]
    assert dead_flaky() == expected  # declined: nothing changed

    page.once("dialog", lambda d: answer(d, True))
    page.get_by_role("button", name="Retry all").click()
    expect(page.locator(".toast", has_text=f"Retried {expected:,} dead tasks")).to_be_visible(
        timeout=30_000
    )
    tab.screenshot("dlq-retry-all")
    assert dead_flaky() == 0
    deadline = time.monotonic() + 120
    while (done := succeeded(server, "demo.flaky") & ids) != ids:  # then run to success
        assert time.monotonic() < deadline, f"{len(done)} of 1,000 succeeded"
        time.sleep(0.5)


def succeeded(server: str, name: str) -> set[str]:
    """Ids of the succeeded tasks of handler ``name`` (every page)."""
    found: set[str] = set()
    cursor = None
    while True:
        page = httpx.get(
            f"{server}/v1/tasks",
            timeout=10,
            params={
                "name": name,
                "status": "succeeded",
                "limit": 500,
                **({"cursor": cursor} if cursor else {}),
            },
        ).json()
        found |= {t["id"] for t in page["items"]}
        cursor = page["next_cursor"]
        if not cursor:
            return found


def test_overview_and_escaping(tab: Page, server: str) -> None:
    hostile = '<img src=x onerror="window.__xss=1"><b>bold</b>'
    task = submit(server, name="demo.fail", payload={"reason": hostile}, max_attempts=1)
    wait_status(server, task["id"], "dead", timeout=10)

    page = tab.open("#/overview")
    expect(page.locator('tr[data-queue="default"] td.depth')).to_be_visible()
    expect(page.locator("table.workers tbody tr").first.locator(".badge")).to_have_text("alive")
    for i in range(5):
        submit(server, name="demo.add", payload={"a": i, "b": 1})
    throughput = page.locator('[data-testid="throughput"] .card-value')
    expect(throughput).to_have_text(re.compile(r"^[\d.,]+/min$"), timeout=20_000)
    tab.screenshot("overview")

    page = tab.open(f"#/dead?task={task['id']}")
    cell = page.locator(f'tr[data-id="{task["id"]}"] .error-text')
    expect(cell).to_contain_text("<img src=x")  # shown as text, not parsed as HTML
    detail = page.locator("aside.detail")
    expect(detail.locator("pre.code.error").first).to_contain_text("<b>bold</b>")
    traceback = detail.locator("li.attempt details", has_text="Traceback")
    traceback.locator("summary").click()
    expect(traceback.locator("pre")).to_contain_text("RuntimeError")
    tab.screenshot("dlq-detail")
    assert page.locator("#view img").count() == 0
    assert page.locator("#view b").count() == 0
    assert page.evaluate("window.__xss") is None


def test_overview_shows_a_queues_concurrency_keys(tab: Page, server: str) -> None:
    for i in range(3):  # no worker serves "keyed": one is neither running nor claimed
        submit(server, name="demo.add", queue="keyed", concurrency_key="cust:7",
               payload={"a": i, "b": 0})  # fmt: skip
    page = tab.open("#/overview")
    limits = page.locator('tr[data-queue="keyed"] [data-testid="limits"]')
    expect(limits).to_contain_text("1 key", timeout=15_000)
    limits.locator("summary").click()
    expect(limits.locator('li[data-key="cust:7"]')).to_contain_text("0/1 running, 3 queued")


def test_overview_pauses_and_resumes_a_queue(tab: Page, server: str) -> None:
    submit(server, name="demo.add", payload={"a": 1, "b": 1})  # "default" is listed
    page = tab.open("#/overview")
    row = page.locator('tr[data-queue="default"]')
    try:
        row.get_by_role("button", name="Pause").click()
        expect(row.locator('[data-testid="paused"]')).to_have_text("paused")
        listed = {q["queue"]: q for q in httpx.get(f"{server}/v1/queues").json()}
        assert listed["default"]["paused"] is True
        tab.screenshot("overview-paused")
        row.get_by_role("button", name="Resume").click()
        expect(row.locator('[data-testid="paused"]')).to_have_count(0)
        expect(row.get_by_role("button", name="Pause")).to_be_visible()
        listed = {q["queue"]: q for q in httpx.get(f"{server}/v1/queues").json()}
        assert listed["default"]["paused"] is False
    finally:  # the other tests need the queue running
        httpx.post(f"{server}/v1/queues/default/resume")


def test_sign_in_form_session_and_socket_without_token(
    browser: Any, secured: tuple[str, str, str]
) -> None:
    url, key, _ = secured
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        tab = Page(context.new_page(), url)
        page = tab.page
        sockets: list[str] = []
        dialogs: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))

        def on_dialog(dialog: Any) -> None:
            dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", on_dialog)
        page.goto(f"{url}/ui#/overview")
        form = page.locator("form#signin")
        expect(form).to_be_visible()
        expect(page.locator("#view .cards")).to_have_count(0)  # no zeros while signed out
        tab.screenshot("signin")

        page.fill("#signin-key", "cq_00000000_not-a-key")
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#signin-error")).to_contain_text("invalid or revoked API key")
        expect(page.locator("#view .cards")).to_have_count(0)

        page.fill("#signin-key", key)
        page.get_by_role("button", name="Sign in").click()
        expect(form).to_have_count(0)
        succeeded = page.locator('tr[data-queue="default"] td.count-succeeded')
        expect(succeeded).to_have_text(re.compile(r"^[1-9][\d,]*$"))  # the demo's real counts
        expect(page.locator("#conn")).to_have_attribute("data-mode", "live")

        page.reload()  # the key is kept for this tab's session
        expect(succeeded).to_have_text(re.compile(r"^[1-9][\d,]*$"))
        expect(form).to_have_count(0)
        expect(page.locator("#conn")).to_have_attribute("data-mode", "live")
        # the key never in the socket's URL: only the resume cursor is
        assert sockets and all(set(parse_qs(urlparse(s).query)) == {"since"} for s in sockets)
        assert not [s for s in sockets if key in s], sockets
        assert not [r for r in tab.requests if key in r or "token=" in r]
        assert dialogs == []

        page.locator("#signout").click()
        expect(form).to_be_visible()
        page.reload()
        expect(form).to_be_visible()  # signed out: the session forgot the key
        assert tab.errors == []
    finally:
        context.close()


def test_a_revoked_key_returns_the_dashboard_to_sign_in(
    browser: Any, secured: tuple[str, str, str]
) -> None:
    url, _, db = secured
    created = cli("keys", "create", "short-lived", "--scope", "read", "--database-url", db)
    key = created.stdout.strip()
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        page = Page(context.new_page(), url).page
        page.goto(f"{url}/ui#/tasks")
        page.fill("#signin-key", key)
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#conn")).to_have_attribute("data-mode", "live")
        assert cli("keys", "revoke", key.split("_")[1], "--database-url", db).returncode == 0
        # the open socket is closed with 4401 within the 2 s key cache; the page asks again
        expect(page.locator("form#signin")).to_be_visible(timeout=8_000)
        expect(page.locator("#signin-error")).to_contain_text("refused")
    finally:
        context.close()


@pytest.mark.parametrize(
    "host",
    [
        "*",
        "evil.example",
        "x;script-src 'unsafe-inline'",
        "127.0.0.1:1 https://evil.example",
        "a,b;c",
    ],
)
def test_the_csp_does_not_depend_on_the_host_header(server: str, host: str) -> None:
    normal = httpx.get(f"{server}/ui", timeout=5).headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in normal.split(";"))
    assert directives["connect-src"] == "'self'"  # 'self' covers the page's own ws(s)
    answer = httpx.get(f"{server}/ui", headers={"host": host}, timeout=5)
    assert answer.status_code == 200
    assert answer.headers["content-security-policy"] == normal


def test_task_detail_shows_why_no_worker_will_run_it(tab: Page, server: str) -> None:
    task = submit(server, name="demo.add", queue="nowhere", payload={"a": 1, "b": 2})
    assert task["warnings"] == [
        "no live worker serves queue 'nowhere': the task waits "
        "until one with a handler named 'demo.add' starts"
    ]
    page = tab.open(f"#/tasks?task={task['id']}")
    warning = page.locator("aside.detail .warning-text")
    expect(warning).to_have_text(f"⚠ {task['warnings'][0]}")
    httpx.post(f"{server}/v1/tasks/{task['id']}/cancel", timeout=5)
    page.reload()
    expect(page.locator("aside.detail .detail-body")).to_have_attribute("data-status", "cancelled")
    expect(warning).to_have_count(0)


def test_history_charts_count_finished_tasks_live(tab: Page, server: str) -> None:
    page = tab.open("#/history?window=15m")
    expect(page.locator("#conn")).to_have_attribute("data-mode", "live")
    dead = page.locator('.chart-box[data-queue=""] .legend-item[data-status="dead"] .legend-total')
    expect(dead).to_have_text(re.compile(r"^\d+$"))
    expect(page.locator('.segmented [data-window="15m"]')).to_have_attribute("aria-pressed", "true")
    expect(page.locator("svg.chart").first.locator("g.bucket")).to_have_count(90)  # 10 s each
    task = submit(server, name="demo.fail", max_attempts=1)
    wait_status(server, task["id"], "dead")
    counted = httpx.get(f"{server}/v1/history", params={"window": "15m"}, timeout=5).json()
    total = sum(s["total"] for s in counted["series"] if s["status"] == "dead")
    assert total >= 1
    expect(dead).to_have_text(str(total))  # refreshed on the task's event, no reload
    times = page.locator('[data-testid="durations"] svg.chart')
    expect(times.locator("circle").first).to_be_visible()  # the demo's tasks ran
    expect(times.locator("polyline")).to_have_count(3)
    tab.screenshot("history")

    page.locator('.segmented [data-window="24h"]').click()
    expect(page).to_have_url(re.compile(r"window=24h"))
    expect(page.locator("svg.chart").first.locator("g.bucket")).to_have_count(96)  # 15 min
    page.get_by_label("one chart per queue").check()
    expect(page.locator('.chart-box[data-queue="default"]')).to_be_visible()
    expect(page).to_have_url(re.compile(r"by=queue"))


# Records every WebSocket the page opens and the messages it receives.
RECORD_SOCKETS = """
window.__sockets = [];
window.__messages = [];
const Native = window.WebSocket;
window.WebSocket = class extends Native {
  constructor(...args) {
    super(...args);
    const index = window.__sockets.length;
    window.__sockets.push(this);
    this.addEventListener("message", (m) => window.__messages.push([index, m.data]));
  }
};
"""


def test_a_reconnecting_dashboard_resumes_the_event_stream(browser: Any, server: str) -> None:
    with scripted_tab(browser, server, RECORD_SOCKETS) as tab:
        page = tab.open("#/tasks?name=demo.add")
        expect(page.locator("#conn")).to_have_attribute("data-mode", "live")
        assert "since=latest" in page.evaluate("window.__sockets[0].url")
        seen = submit(server, name="demo.add", payload={"a": 1, "b": 1})
        expect(status_of(page, seen["id"])).to_have_text("succeeded")
        page.evaluate("window.__sockets[0].close()")  # the connection drops
        expect(page.locator("#conn")).to_have_attribute("data-mode", "polling")
        missed = submit(server, name="demo.add", payload={"a": 2, "b": 2})
        wait_status(server, missed["id"], "succeeded")
        expect(page.locator("#conn")).to_have_attribute("data-mode", "live")  # ~2 s later
        expect(status_of(page, missed["id"])).to_have_text("succeeded")
        second = page.evaluate("window.__sockets[1].url")
        last = page.evaluate(
            """() => window.__messages.filter(([i]) => i === 0)
                 .flatMap(([, data]) => JSON.parse(data)).filter((e) => e.cursor).pop().cursor"""
        )
        assert f"since={last}" in second  # resumed from the last event it saw
        replayed = page.evaluate(
            "window.__messages.filter(([i]) => i === 1).flatMap(([, d]) => JSON.parse(d))"
        )
        assert replayed[0] == {"type": "stream", "cursor": last, "reset": False}
        statuses = [e["status"] for e in replayed if e.get("task_id") == missed["id"]]
        assert statuses == ["queued", "running", "succeeded"]  # what it missed, once each


def test_create_and_edit_a_schedule_in_the_editor(tab: Page, server: str) -> None:
    page = tab.open("#/schedules")
    page.get_by_role("button", name="New schedule").click()
    form = page.locator('form[data-testid="schedule-form"]')
    expect(form).to_be_visible()
    form.get_by_label("Name").fill("ui.made")
    form.get_by_label("Cron").fill("61 * * * *")
    preview = form.locator('[data-testid="preview"]')
    expect(preview).to_contain_text("cron")  # the API's own message for a bad expression
    form.get_by_label("Cron").fill("30 9 * * 1-5")
    form.get_by_label("Time zone").fill("Asia/Tokyo")
    expect(preview.locator("li")).to_have_count(5)
    expect(preview.locator("li").first).to_contain_text("09:30:00 +09:00")  # in its zone
    form.get_by_label("Task handler").fill("demo.add")
    form.get_by_label("Payload (JSON object)").fill('{"a": 1,')
    form.get_by_role("button", name="Create").click()
    expect(form.locator(".form-error")).to_contain_text("payload is not valid JSON")
    form.get_by_label("Payload (JSON object)").fill('{"a": 1, "b": 2}')
    form.get_by_label("Name").fill("demo.tick")  # taken: the API's 409 shows in the form
    form.get_by_role("button", name="Create").click()
    expect(form.locator(".form-error")).to_contain_text("409")
    expect(form.locator(".form-error")).to_contain_text("demo.tick")
    form.get_by_label("Name").fill("ui.made")
    form.get_by_label("Overlap").select_option("skip")
    form.get_by_label("paused").check()
    tab.screenshot("schedule-editor")
    form.get_by_role("button", name="Create").click()
    expect(form).to_have_count(0)
    row = page.locator('tr[data-name="ui.made"]')
    expect(row).to_have_attribute("data-state", "paused")
    made = httpx.get(f"{server}/v1/schedules/ui.made", timeout=5).json()
    assert made["cron"] == "30 9 * * 1-5" and made["timezone"] == "Asia/Tokyo"
    assert made["task"]["payload"] == {"a": 1, "b": 2}
    assert made["overlap_policy"] == "skip"

    # edited to fire every second and resumed: it fires at the new time
    row.get_by_role("button", name="Edit").click()
    expect(form.get_by_label("Name")).to_be_disabled()
    expect(form.get_by_label("Cron")).to_have_value("30 9 * * 1-5")
    form.get_by_label("Cron").fill("* * * * * *")
    form.get_by_label("paused").uncheck()
    form.get_by_role("button", name="Save").click()
    expect(form).to_have_count(0)
    expect(row).to_have_attribute("data-state", "active")
    deadline = time.monotonic() + 20
    while True:
        runs = httpx.get(f"{server}/v1/schedules/ui.made/runs", timeout=5).json()["items"]
        if any(r["status"] == "succeeded" for r in runs):
            break
        assert time.monotonic() < deadline, runs
        time.sleep(0.2)
    assert runs[0]["result"] == 3
    httpx.delete(f"{server}/v1/schedules/ui.made", timeout=5)


def test_submit_a_task_from_the_form(tab: Page, server: str) -> None:
    page = tab.open("#/tasks")
    page.get_by_role("button", name="Submit task").click()
    form = page.locator('form[data-testid="submit-task"]')
    form.get_by_label("Handler").fill("demo.add")
    form.get_by_label("Payload (JSON object)").fill('{"a": 20, "b": 22}')
    form.get_by_label("Priority").fill("5000")
    form.get_by_role("button", name="Submit").click()
    error = form.locator(".form-error")
    expect(error).to_contain_text("422")  # the API's message, the field marked
    expect(error).to_contain_text("less than or equal to 1000")
    expect(form.locator('.field[data-field="priority"]')).to_have_class(re.compile("invalid"))
    form.get_by_label("Priority").fill("7")
    form.get_by_role("button", name="Submit").click()
    expect(form).to_have_count(0)
    detail = page.locator("aside.detail")
    expect(detail.locator("h2")).to_contain_text("demo.add")
    expect(detail.locator(".detail-body")).to_have_attribute("data-status", "succeeded")
    expect(detail).to_contain_text("42")
    task_id = parse_qs(urlparse(page.url.replace("#/tasks?", "?")).query)["task"][0]
    task = httpx.get(f"{server}/v1/tasks/{task_id}", timeout=5).json()
    assert (task["priority"], task["payload"]) == (7, {"a": 20, "b": 22})


def test_keyboard_shortcuts(tab: Page, server: str) -> None:
    ids = [
        submit(server, name="demo.add", queue="keys", payload={"a": i, "b": 0})["id"]
        for i in range(3)
    ]
    page = tab.open("#/overview")
    page.keyboard.press("g")
    page.keyboard.press("t")
    expect(page).to_have_url(re.compile(r"#/tasks$"))
    page.keyboard.press("/")
    expect(page.locator("#search-input")).to_be_focused()
    page.keyboard.type("gs")  # typing in a field is not a shortcut
    expect(page).to_have_url(re.compile(r"#/tasks$"))
    page.locator("#search-input").fill("")
    page.locator("#view h1").click()

    tab.open("#/tasks?queue=keys")
    rows = page.locator("table.tasks tbody tr")
    expect(rows).to_have_count(3)
    page.keyboard.press("j")
    expect(rows.nth(0)).to_be_focused()
    page.keyboard.press("j")
    page.keyboard.press("Enter")
    expect(page.locator("aside.detail .detail-body")).to_have_attribute("data-id", ids[1])
    page.keyboard.press("Escape")
    expect(page.locator("aside.detail")).to_be_hidden()

    page.keyboard.press("n")
    expect(page.locator('form[data-testid="submit-task"]')).to_be_visible()
    page.keyboard.press("Escape")  # the dialog's own key
    expect(page.locator("dialog")).to_have_count(0)
    page.keyboard.press("?")
    expect(page.locator('dialog[data-testid="shortcuts"]')).to_contain_text("Dead letters")
    page.keyboard.press("Escape")
    page.keyboard.press("g")
    page.keyboard.press("h")
    expect(page).to_have_url(re.compile(r"#/history$"))


def test_phone_width_layout(browser: Any, server: str) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        tab = Page(context.new_page(), server)
        for name, fragment in [("overview", "#/overview"), ("tasks", "#/tasks"),
                               ("history", "#/history"), ("schedules", "#/schedules")]:  # fmt: skip
            page = tab.open(fragment)
            expect(page.locator("#view > section")).to_be_visible()
            if name == "history":
                expect(page.locator("svg.chart").first).to_be_visible()
            wide = page.evaluate("document.documentElement.scrollWidth")
            assert wide <= 392, f"{name}: the page is {wide} px wide on a 390 px screen"
            tab.screenshot(f"phone-{name}")
        page.get_by_role("button", name="New schedule").click()
        dialog = page.locator("dialog")
        box = dialog.bounding_box()
        assert box is not None and box["width"] <= 390, box
        assert tab.errors == []
    finally:
        context.close()
