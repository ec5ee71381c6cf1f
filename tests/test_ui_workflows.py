"""The dashboard's workflow pages, in headless Chromium against a real ``chronoq dev --demo``
(the fixtures of ``tests/test_ui.py``): the list, and one workflow's graph with its steps'
states changing live, a step leading to its task and the task back to its workflow."""

# ruff: noqa: F811  (the tests take test_ui's fixtures, imported below, as parameters)

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.test_ui import (  # noqa: F401  (fixtures)
    Page,
    browser,
    chromium_path,
    expect,
    server,
    tab,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def start(url: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = httpx.post(f"{url}/v1/workflows", json=body, timeout=5)
    assert answer.status_code == 201, answer.text
    started: dict[str, Any] = answer.json()
    return started


def add(a: float | None = None, b: float = 1) -> dict[str, Any]:
    payload: dict[str, Any] = {"b": b} if a is None else {"a": a, "b": b}
    return {"name": "demo.add", "payload": payload}


def test_a_workflow_graph_shows_its_steps_live(tab: Page, server: str) -> None:
    flow = start(
        server,
        {
            "name": "diamond",
            "nodes": [
                {"id": "nap", "task": {"name": "demo.sleep", "payload": {"seconds": 3}}},
                {"id": "root", "task": add(1, 1)},
                {"id": "left", "task": add(b=10)},
                {"id": "right", "task": add(b=20)},
                {"id": "join", "task": {"name": "demo.add"}},
            ],
            "edges": [
                {"parent": "root", "child": "left", "arg": "a"},
                {"parent": "root", "child": "right", "arg": "a"},
                {"parent": "left", "child": "join", "arg": "a"},
                {"parent": "right", "child": "join", "arg": "b"},
            ],
        },
    )
    page = tab.open(f"#/workflows?id={flow['id']}")
    graph = page.locator("svg.wf-graph")
    expect(graph).to_be_visible()
    expect(graph.locator("g.wf-node")).to_have_count(5)
    expect(graph.locator("path.wf-edge")).to_have_count(4)
    nap = graph.locator('g.wf-node[data-node="nap"]')
    expect(nap).to_have_attribute("data-status", re.compile("queued|running"))
    page.evaluate("window.__notReloaded = true")
    # live: the nap ends (the diamond beside it ran through), without a reload
    expect(graph.locator('g.wf-node[data-node="join"]')).to_have_attribute(
        "data-status", "succeeded"
    )
    expect(nap).to_have_attribute("data-status", "succeeded")
    expect(page.locator(".wf-status")).to_have_attribute("data-status", "succeeded")
    assert page.evaluate("window.__notReloaded") is True
    # columns by depth: each step right of its parents
    x = {
        node: float(graph.locator(f'g.wf-node[data-node="{node}"] rect').get_attribute("x") or 0)
        for node in ("nap", "root", "left", "right", "join")
    }
    assert x["nap"] == x["root"] < x["left"] == x["right"] < x["join"]
    tab.screenshot("workflow")

    # a step opens its task, whose detail leads back to the workflow
    graph.locator('g.wf-node[data-node="join"]').click()
    detail = page.locator("aside.detail")
    expect(detail.locator(".detail-body")).to_have_attribute("data-status", "succeeded")
    expect(detail).to_contain_text("34")  # (1 + 1 + 10) + (1 + 1 + 20)
    detail.get_by_role("link", name="join").click()
    expect(page.locator("svg.wf-graph")).to_be_visible()

    # the list links to it
    page = tab.open("#/workflows")
    row = page.locator(f'tr[data-id="{flow["id"]}"]')
    expect(row).to_have_attribute("data-status", "succeeded")
    row.get_by_role("link", name="diamond").click()
    expect(page.locator("svg.wf-graph g.wf-node")).to_have_count(5)


def test_a_wide_group_is_drawn_as_one_box_and_a_cancel_shows(tab: Page, server: str) -> None:
    nodes = [
        {"id": f"n{i}", "task": {"name": "demo.sleep", "payload": {"seconds": 30}}}
        for i in range(40)
    ]
    flow = start(
        server,
        {
            "name": "wide",
            "nodes": [*nodes, {"id": "sum", "task": {"name": "demo.report"}}],
            "edges": [{"parent": f"n{i}", "child": "sum", "arg": f"x{i}"} for i in range(40)],
        },
    )
    page = tab.open(f"#/workflows?id={flow['id']}")
    group = page.locator("svg.wf-graph g.wf-group")
    expect(group).to_have_attribute("data-size", "40")
    expect(page.locator('svg.wf-graph g.wf-node[data-node="sum"]')).to_be_visible()
    expect(page.locator("svg.wf-graph path.wf-edge")).to_have_count(1)
    page.get_by_role("button", name="Cancel workflow").click()
    expect(page.locator(".wf-status")).to_have_attribute("data-status", "cancelled")
    expect(page.locator('svg.wf-graph g.wf-node[data-node="sum"]')).to_have_attribute(
        "data-status", "cancelled"
    )


def test_a_workflow_schedule_lists_and_edits_its_rule_only(tab: Page, server: str) -> None:
    flow = {"name": "nightly", "nodes": [{"id": "only", "task": add(1, 2)}]}
    body = {"name": "ui.flow", "cron": "0 3 * * *", "paused": True, "workflow": flow}
    created = httpx.post(f"{server}/v1/schedules", json=body, timeout=5)
    assert created.status_code == 201, created.text
    page = tab.open("#/schedules")
    row = page.locator('tr[data-name="ui.flow"]')
    expect(row).to_contain_text("workflow nightly")
    row.get_by_role("button", name="Edit").click()
    form = page.locator('[data-testid="schedule-form"]')
    expect(form.locator('[data-testid="schedule-workflow"]')).to_contain_text("nightly (1 steps)")
    form.get_by_label("Cron").fill("0 4 * * *")
    form.get_by_role("button", name="Save").click()
    expect(form).to_have_count(0)
    saved = httpx.get(f"{server}/v1/schedules/ui.flow", timeout=5).json()
    assert saved["cron"] == "0 4 * * *" and saved["task"] is None
    assert saved["workflow"]["name"] == "nightly"
    httpx.delete(f"{server}/v1/schedules/ui.flow", timeout=5)
