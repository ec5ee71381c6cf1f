"""The ``chronoq`` command: run components, submit and inspect tasks, manage the database."""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import click
import orjson
from pydantic import ValidationError

from chronoq import __version__, durations, render
from chronoq.app import App
from chronoq.client import Client, ClientError
from chronoq.config import Settings
from chronoq.logs import log_format, setup_logging

log = logging.getLogger("chronoq")


def parse_duration(text: str) -> float:
    """``90``, ``30s``, ``5m``, ``1h30m``, ``2d`` → seconds (a usage error otherwise)."""
    try:
        return durations.parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def load_app(settings: Settings) -> App:
    """Import ``settings.app`` (``module:attribute``) or make an empty App."""
    if not settings.app:
        return App(settings=settings)
    module_name, _, attr = settings.app.partition(":")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.UsageError(f"cannot import --app {settings.app!r}: {exc}") from None
    app = getattr(module, attr or "app", None)
    if not isinstance(app, App):
        raise click.UsageError(f"--app {settings.app!r} is not a chronoq.App")
    app.settings = settings
    return app


def _event_loop_policy() -> None:
    """uvloop when installed (it is with uvicorn[standard]): a faster event loop for the
    API, scheduler and workers. ``CHRONOQ_UVLOOP=0`` keeps asyncio's own loop."""
    if os.environ.get("CHRONOQ_UVLOOP", "1") == "0":
        return
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def make_settings(**overrides: Any) -> Settings:
    """The settings from ``CHRONOQ_*`` with flags over them; a bad variable is a usage
    error naming it, not a traceback."""
    try:
        settings = Settings()
    except ValidationError as exc:
        raise click.ClickException(
            "; ".join(
                f"CHRONOQ_{'_'.join(str(part) for part in error['loc']).upper()}: "
                f"{str(error['msg']).removeprefix('Value error, ')}"
                for error in exc.errors()
            )
        ) from None
    return settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})


# -- common options -----------------------------------------------------------------------------
db_option = click.option(
    "--database-url",
    envvar="CHRONOQ_DATABASE_URL",
    help="sqlite:///path or postgresql://user@host/db "
    "[env CHRONOQ_DATABASE_URL; default sqlite:///chronoq.db]",
)
app_option = click.option(
    "--app",
    "app_path",
    envvar="CHRONOQ_APP",
    help="module:attribute of your chronoq.App, whose @app.task "
    "handlers the workers run [env CHRONOQ_APP]",
)
url_option = click.option(
    "--url",
    envvar="CHRONOQ_URL",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="chronoq API address [env CHRONOQ_URL]",
)
json_option = click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
metrics_port_option = click.option(
    "--metrics-port",
    envvar="CHRONOQ_METRICS_PORT",
    default=None,
    metavar="[HOST:]PORT",
    help="serve Prometheus metrics at http://HOST:PORT/metrics (HOST defaults to "
    "CHRONOQ_HOST, 127.0.0.1) [env CHRONOQ_METRICS_PORT]",
)
health_port_option = click.option(
    "--health-port",
    envvar="CHRONOQ_HEALTH_PORT",
    default=None,
    metavar="[HOST:]PORT",
    help="serve /healthz (alive) and /readyz (store and Redis reachable) at "
    "http://HOST:PORT (HOST defaults to CHRONOQ_HOST, 127.0.0.1) "
    "[env CHRONOQ_HEALTH_PORT]",
)


def _needs_grpc(_: click.Context, __: click.Parameter, port: int | None) -> int | None:
    import importlib.util

    if port is not None and importlib.util.find_spec("grpc") is None:
        raise click.BadParameter("the gRPC API needs the grpc extra: pip install 'chronoq[grpc]'")
    return port


grpc_port_option = click.option(
    "--grpc-port",
    envvar="CHRONOQ_GRPC_PORT",
    type=click.IntRange(0, 65535),
    default=None,
    callback=_needs_grpc,
    help="also serve the gRPC API on this port of --host (see docs/grpc.md) "
    "[env CHRONOQ_GRPC_PORT; default: no gRPC]",
)
log_option = click.option(
    "--log-level",
    envvar="CHRONOQ_LOG_LEVEL",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)


def worker_options(fn: Any) -> Any:
    fn = click.option(
        "--queues", "-q", default=None, help="comma-separated queues to serve [default: default]"
    )(fn)
    fn = click.option(
        "--concurrency", "-c", type=int, default=None, help="tasks run at once [default 8]"
    )(fn)
    fn = click.option(
        "--shell-allow",
        default=None,
        help="comma-separated programs the chronoq.shell executor may run (off unless given)",
    )(fn)
    fn = click.option(
        "--shell-env-allow",
        envvar="CHRONOQ_SHELL_ENV_ALLOW",
        default=None,
        callback=_checked_by(_shell_env_allow),
        help="comma-separated environment variable names chronoq.shell "
        "payloads may set (none unless given; PATH, HOME, LD_*, "
        "BASH_ENV, PYTHON*... are refused) [env CHRONOQ_SHELL_ENV_ALLOW]",
    )(fn)
    fn = click.option(
        "--http-allow",
        default=None,
        callback=_checked_by(_http_allow),
        help="comma-separated hostnames and CIDRs whose private, loopback or "
        "link-local addresses chronoq.http may call, e.g. "
        "127.0.0.1/32,internal.example.com (public addresses are always "
        "allowed) [env CHRONOQ_HTTP_ALLOW]",
    )(fn)
    return fn


def _checked_by(parse: Callable[[str], object]) -> Callable[[Any, Any, str | None], str | None]:
    """A click callback: ``parse``'s ``ValueError`` becomes a usage error naming the option."""

    def callback(_ctx: Any, _param: Any, value: str | None) -> str | None:
        if value is not None:
            try:
                parse(value)
            except ValueError as exc:
                raise click.BadParameter(str(exc)) from None
        return value

    return callback


def pool_options(fn: Any) -> Any:
    """``--pool``, ``--processes`` and the child limits (``chronoq worker`` and ``dev``)."""
    fn = click.option(
        "--pool",
        type=click.Choice(["async", "process"]),
        default=None,
        help="run Python handlers in the worker process (async: event loop "
        "and threads) or in child processes (process: isolated, hard "
        "time limits, one task per child) [env CHRONOQ_POOL; "
        "default async]",
    )(fn)
    fn = click.option(
        "--processes",
        type=click.IntRange(1, 1024),
        default=None,
        help="child processes of the process pool [env CHRONOQ_PROCESSES; default: CPU count]",
    )(fn)
    fn = click.option(
        "--max-tasks-per-child",
        type=click.IntRange(1),
        default=None,
        help="replace a child after this many tasks [env CHRONOQ_MAX_TASKS_PER_CHILD]",
    )(fn)
    fn = click.option(
        "--max-memory-per-child",
        type=click.IntRange(1),
        default=None,
        metavar="MIB",
        help="replace a child whose RSS is over MIB after a task; kill it "
        "(outcome crashed) when it grows past MIB mid-task "
        "[env CHRONOQ_MAX_MEMORY_PER_CHILD]",
    )(fn)
    return fn


def _http_allow(value: str) -> object:
    from chronoq.executors.http import parse_allow

    return parse_allow(value)


def _shell_env_allow(value: str) -> object:
    from chronoq.executors.shell import parse_env_allow

    return parse_env_allow(value.split(","))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="chronoq")
def main() -> None:
    """chronoq — schedule tasks, run them on workers, never lose one.

    Start everything in one process with `chronoq dev --demo`, then try
    `chronoq submit demo.add --payload '{"a": 1, "b": 2}'` and `chronoq tasks ls`.
    """


# -- running ----------------------------------------------------------------------------------
def _metrics_listen(
    value: str | None, default_host: str, option: str = "--metrics-port"
) -> tuple[str | None, int | None]:
    if value is None:
        return None, None
    from chronoq.metrics import parse_listen

    try:
        host, port = parse_listen(value, default_host)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None
    return host, port


def _url_host(host: str) -> str:
    """``host`` as it goes in a URL: IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host else host


def _run(
    settings: Settings,
    *,
    api: bool,
    scheduler: bool,
    worker: bool,
    demo: bool = False,
    banner: bool = False,
    metrics_port: str | None = None,
) -> None:
    from chronoq import demo as demo_module
    from chronoq.runner import (
        Components,
        Runner,
        StoreUnavailable,
        database_location,
        hide_password,
    )

    setup_logging(settings.log_level)
    from chronoq import tracing

    try:
        tracing.setup()
    except RuntimeError as exc:  # the extra is missing, or an unknown exporter
        raise click.UsageError(str(exc)) from None
    metrics_host, port = _metrics_listen(metrics_port, settings.host)
    health_host, health_port = _metrics_listen(settings.health_port, settings.host, "--health-port")
    app = load_app(settings)
    if demo:
        demo_module.register(app)
    components = Components(
        api=api,
        scheduler=scheduler,
        worker=worker,
        queues=settings.queue_list(),
        concurrency=settings.concurrency,
        shell_allow=settings.shell_allow_list(),
        shell_env_allow=settings.shell_env_allow_list(),
        http_allow=settings.http_allow_list(),
        metrics_port=port,
        metrics_host=metrics_host,
        health_port=health_port,
        health_host=health_host,
        grpc_port=settings.grpc_port,
        pool=settings.pool,
        processes=settings.processes,
        max_tasks_per_child=settings.max_tasks_per_child,
        max_memory_per_child=settings.max_memory_per_child,
        prefetch=settings.prefetch,
        demo=demo,
    )
    as_json = log_format(sys.stderr) == "json"

    url = f"http://{_url_host(settings.host)}:{settings.port}"

    async def started(runner: Runner) -> None:
        if banner and as_json:  # keep stderr all JSON lines
            log.info(
                "chronoq %s dev is running",
                __version__,
                extra={
                    "api": url,
                    "dashboard": f"{url}/ui",
                    "database": hide_password(settings.database_url),
                    "queues": settings.queues,
                    "concurrency": settings.concurrency,
                    "handlers": sorted(runner.executors()),
                },
            )
        elif banner:
            handlers = ", ".join(sorted(runner.executors())) or "none"
            click.echo(
                f"\nchronoq {__version__} dev is running\n"
                f"  API       {url}   (interactive docs: {url}/docs)\n"
                f"  dashboard {url}/ui\n"
                f"  database  {hide_password(settings.database_url)}\n"
                f"  workers   {_slots(runner)} on queues {settings.queues}\n"
                f"  handlers  {handlers}\n"
                f'  try       chronoq submit demo.add --payload \'{{"a": 1, "b": 2}}\''
                f" && chronoq tasks ls\n"
                f"  stop      Ctrl+C\n",
                err=True,
            )
        elif api:
            log.info(
                "chronoq %s API listening on %s (dashboard %s/ui, docs %s/docs)",
                __version__,
                url,
                url,
                url,
                extra={
                    "api": url,
                    "dashboard": f"{url}/ui",
                    "database": database_location(settings.database_url),
                },
            )
        if demo:
            await demo_module.submit(app)

    def _slots(runner: Runner) -> str:
        worker = runner.worker
        if worker is not None and runner.pool is not None and settings.pool == "process":
            return f"{worker.concurrency} child processes"
        return f"{settings.concurrency} slots"

    gc.collect()
    gc.freeze()  # imports and the app live for the whole run: later collections skip them
    try:
        _event_loop_policy()
        asyncio.run(Runner(app, components).run(started))
    except StoreUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@db_option
@app_option
@worker_options
@pool_options
@click.option("--host", default=None, help="API address [default 127.0.0.1]")
@click.option("--port", "-p", type=int, default=None, help="API port [default 8000]")
@click.option("--demo", is_flag=True, help="register demo.* handlers and submit sample tasks")
@click.option(
    "--auth/--no-auth",
    default=None,
    help="require API keys [default: off, or CHRONOQ_AUTH when set]; off is only "
    "allowed on a loopback --host",
)
@grpc_port_option
@log_option
def dev(
    database_url: str | None,
    app_path: str | None,
    queues: str | None,
    concurrency: int | None,
    shell_allow: str | None,
    shell_env_allow: str | None,
    http_allow: str | None,
    pool: str | None,
    processes: int | None,
    max_tasks_per_child: int | None,
    max_memory_per_child: int | None,
    host: str | None,
    port: int | None,
    demo: bool,
    auth: bool | None,
    grpc_port: int | None,
    log_level: str,
) -> None:
    """Run API + scheduler + workers in one process (SQLite by default: no server needed).

    Without --auth the API needs no key, so it may only listen on a loopback address."""
    if auth is None:
        auth = "CHRONOQ_AUTH" in os.environ and Settings().auth
    settings = make_settings(
        database_url=database_url,
        app=app_path,
        queues=queues,
        concurrency=concurrency,
        shell_allow=shell_allow,
        shell_env_allow=shell_env_allow,
        http_allow=http_allow,
        host=host,
        port=port,
        log_level=log_level,
        auth=auth,
        grpc_port=grpc_port,
        pool=pool,
        processes=processes,
        max_tasks_per_child=max_tasks_per_child,
        max_memory_per_child=max_memory_per_child,
    )
    if not auth and settings.host not in ("127.0.0.1", "localhost", "::1"):
        raise click.UsageError(
            f"--host {settings.host} exposes the API beyond this machine: "
            "add --auth (and create a key with `chronoq keys create`)"
        )
    _run(settings, api=True, scheduler=True, worker=True, demo=demo, banner=True)


@main.command()
@db_option
@click.option("--host", default=None, help="address to listen on [default 127.0.0.1]")
@click.option("--port", "-p", type=int, default=None, help="port [default 8000]")
@grpc_port_option
@log_option
def api(
    database_url: str | None,
    host: str | None,
    port: int | None,
    grpc_port: int | None,
    log_level: str,
) -> None:
    """Run the REST API only (and the gRPC API with --grpc-port)."""
    settings = make_settings(
        database_url=database_url, host=host, port=port, grpc_port=grpc_port, log_level=log_level
    )
    _run(settings, api=True, scheduler=False, worker=False)


@main.command()
@db_option
@metrics_port_option
@health_port_option
@log_option
def scheduler(
    database_url: str | None, metrics_port: str | None, health_port: str | None, log_level: str
) -> None:
    """Run the scheduler only: makes scheduled tasks due, rescues tasks of dead workers."""
    _run(
        make_settings(database_url=database_url, log_level=log_level, health_port=health_port),
        api=False,
        scheduler=True,
        worker=False,
        metrics_port=metrics_port,
    )


def _autoscale(_ctx: Any, _param: Any, value: str | None) -> str | None:
    if value is None:
        return None
    low, _, high = value.partition(",")
    if not (low.isdigit() and high.isdigit() and 1 <= int(low) <= int(high)):
        raise click.BadParameter(f"{value!r}: expected MIN,MAX with 1 <= MIN <= MAX, e.g. 2,32")
    return value


@main.command()
@db_option
@app_option
@worker_options
@pool_options
@click.option(
    "--autoscale",
    callback=_autoscale,
    metavar="MIN,MAX",
    help="grow and shrink concurrency between MIN and MAX with the backlog [env CHRONOQ_AUTOSCALE]",
)
@metrics_port_option
@health_port_option
@log_option
def worker(
    database_url: str | None,
    app_path: str | None,
    queues: str | None,
    concurrency: int | None,
    shell_allow: str | None,
    shell_env_allow: str | None,
    http_allow: str | None,
    pool: str | None,
    processes: int | None,
    max_tasks_per_child: int | None,
    max_memory_per_child: int | None,
    autoscale: str | None,
    metrics_port: str | None,
    health_port: str | None,
    log_level: str,
) -> None:
    """Run a worker: claims tasks from QUEUES and runs up to CONCURRENCY at once.

    With --pool process, handlers run in PROCESSES child processes (one task each at a
    time); --autoscale then grows and shrinks the children. With
    CHRONOQ_BROKER_URL=redis://... it reads ready tasks from Redis Streams instead of
    polling the store."""
    settings = make_settings(
        database_url=database_url,
        app=app_path,
        queues=queues,
        concurrency=concurrency,
        shell_allow=shell_allow,
        shell_env_allow=shell_env_allow,
        http_allow=http_allow,
        autoscale=autoscale,
        log_level=log_level,
        health_port=health_port,
        pool=pool,
        processes=processes,
        max_tasks_per_child=max_tasks_per_child,
        max_memory_per_child=max_memory_per_child,
    )
    _run(settings, api=False, scheduler=False, worker=True, metrics_port=metrics_port)


@main.group()
def db() -> None:
    """Database schema management."""


@db.command("upgrade")
@db_option
def db_upgrade(database_url: str | None) -> None:
    """Apply pending schema migrations (the other commands do this on start too)."""
    from chronoq.store import create_store

    settings = make_settings(database_url=database_url)

    async def upgrade() -> list[int]:
        store = create_store(settings.database_url)
        await store.open()
        try:
            return await store.migrate()
        finally:
            await store.close()

    applied = _on_database(settings.database_url, upgrade)
    click.echo(f"applied migrations {applied}" if applied else "schema is up to date")


def _on_database(url: str, work: Any) -> Any:
    """Run ``work()`` (which opens the store at ``url``); a database that cannot be opened
    is one line naming where and why, not a traceback."""
    from chronoq.runner import OPEN_ERRORS, store_unavailable

    try:
        return asyncio.run(work())
    except OPEN_ERRORS as exc:
        raise click.ClickException(str(store_unavailable(url, exc))) from None


# -- tasks ------------------------------------------------------------------------------------
def _client_call(url: str, fn: Any) -> Any:
    with Client(url, api_key=Settings().api_key) as client:
        try:
            return fn(client)
        except ClientError as exc:
            raise click.ClickException(exc.message) from None


def _json_option(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--payload") from None


def _echo_json(value: Any) -> None:
    click.echo(render.json_text(value))


@main.command()
@click.argument("name")
@click.option("--payload", "-d", default="{}", help="JSON object passed to the handler")
@click.option("--at", "run_at", help="run at this ISO 8601 time (e.g. 2030-01-01T09:00:00Z)")
@click.option("--in", "delay", help="run after this delay (30s, 5m, 1h30m)")
@click.option("--queue", "-q", default="default", show_default=True)
@click.option(
    "--priority", type=int, default=0, show_default=True, help="higher runs first within its queue"
)
@click.option("--max-attempts", type=int, default=3, show_default=True)
@click.option("--timeout", help="fail an attempt running longer than this (30s, 5m)")
@click.option("--idempotency-key", help="submitting the same key twice creates one task")
@click.option(
    "--concurrency-key", help="at most --concurrency tasks with this key run at once (default 1)"
)
@click.option("--concurrency", type=int, help="the key's limit (alone: per handler)")
@click.option("--rate", help="at most this many of its key become due: 100/s, 10/m, 5000/h")
@url_option
@json_option
def submit(
    name: str,
    payload: str,
    run_at: str | None,
    delay: str | None,
    queue: str,
    priority: int,
    max_attempts: int,
    timeout: str | None,
    idempotency_key: str | None,
    concurrency_key: str | None,
    concurrency: int | None,
    rate: str | None,
    url: str,
    as_json: bool,
) -> None:
    """Submit task NAME (runs now unless --at or --in)."""
    body = _json_option(payload)
    if run_at and delay:
        raise click.UsageError("give --at or --in, not both")
    spec: dict[str, Any] = {
        "name": name,
        "payload": body,
        "queue": queue,
        "priority": priority,
        "max_attempts": max_attempts,
    }
    if run_at:
        spec["run_at"] = run_at
    if delay:
        spec["delay_seconds"] = parse_duration(delay)
    if timeout:
        spec["timeout_seconds"] = parse_duration(timeout)
    if idempotency_key:
        spec["idempotency_key"] = idempotency_key
    limits = {"concurrency_key": concurrency_key, "concurrency": concurrency, "rate": rate}
    spec.update({k: v for k, v in limits.items() if v is not None})
    task = _client_call(url, lambda c: c.submit(spec))
    if as_json:
        _echo_json(task)
    else:
        click.echo(
            f"{task['id']}  {task['name']}  {task['status']}  run at {render.when(task['run_at'])}"
        )
    for warning in task.get("warnings") or ():
        click.echo(f"warning: {warning}", err=True)


@main.group()
def tasks() -> None:
    """List, inspect, cancel and retry tasks."""


@tasks.command("ls")
@click.option(
    "--status",
    "-s",
    help="scheduled, queued, running, succeeded, failed, dead, "
    "cancelled (dead = the dead-letter queue)",
)
@click.option("--queue", "-q")
@click.option("--name", "-n")
@click.option("--limit", "-l", type=int, default=20, show_default=True)
@click.option("--cursor", help="next_cursor from a previous page")
@url_option
@json_option
def tasks_ls(
    status: str | None,
    queue: str | None,
    name: str | None,
    limit: int,
    cursor: str | None,
    url: str,
    as_json: bool,
) -> None:
    """List tasks, newest first."""
    page = _client_call(
        url,
        lambda c: c.list_tasks(status=status, queue=queue, name=name, limit=limit, cursor=cursor),
    )
    if as_json:
        _echo_json(page)
        return
    click.echo(render.tasks_table(page["items"]))
    if page.get("next_cursor"):
        given = [
            ("--status", status),
            ("--queue", queue),
            ("--name", name),
            ("--limit", str(limit)),
        ]
        flags = "".join(f" {flag} {value}" for flag, value in given if value)
        click.echo(f"more: chronoq tasks ls{flags} --cursor {page['next_cursor']}")


@tasks.command("get")
@click.argument("task_id")
@url_option
@json_option
def tasks_get(task_id: str, url: str, as_json: bool) -> None:
    """Show one task with every attempt (and its progress, if it reported any)."""
    task = _client_call(url, lambda c: c.get_task(task_id))
    if as_json:
        click.echo(render.json_text(task))
        return
    logs = _client_call(url, lambda c: c.request("GET", f"/v1/tasks/{task_id}/logs"))
    click.echo(render.task_detail(task, progress=logs.get("progress")))


@tasks.command("logs")
@click.argument("task_id")
@click.option("--attempt", type=click.IntRange(min=1), help="only this attempt")
@click.option("--follow", "-f", is_flag=True, help="keep printing new lines while it runs")
@url_option
@json_option
def tasks_logs(task_id: str, attempt: int | None, follow: bool, url: str, as_json: bool) -> None:
    """Print what a task's handler logged and printed, per attempt, and its progress."""
    cursor: str | None = None
    shown: int | None = None
    final = False
    while True:
        params: dict[str, Any] = {"attempt": attempt, "after": cursor}
        query = {k: v for k, v in params.items() if v is not None}
        body = _client_call(
            url, lambda c, q=query: c.request("GET", f"/v1/tasks/{task_id}/logs", params=q)
        )
        if as_json:
            _echo_json(body)
            return
        for group in body["attempts"]:
            if group["attempt"] != shown:
                shown = group["attempt"]
                click.echo(f"-- attempt {shown}")
            for line in group["lines"]:
                click.echo(render.log_line(line))
        cursor = body["cursor"]
        if not follow or final:
            if body.get("progress"):
                click.echo(render.progress_text(body["progress"]))
            return
        # once the task ended, one more read: the worker writes the last lines a bit later
        final = body["status"] not in ("running", "queued", "scheduled", "failed")
        time.sleep(1.0)


def _bulk_options(fn: Any) -> Any:
    """The filter of a bulk retry or cancel (``tasks retry --status dead ...``)."""
    for option in reversed(
        [
            click.option("--status", "-s", help="the status of the tasks to act on"),
            click.option("--queue", "-q"),
            click.option("--name", "-n", help="handler name"),
            click.option("--error", "-e", help="the last error contains this text"),
            click.option(
                "--before",
                help="last changed (dead: died) before this ISO 8601 time "
                "or longer ago than this duration (1h, 7d)",
            ),
            click.option("--after", help="last changed after this time or duration"),
            click.option("--created-before"),
            click.option("--created-after"),
            click.option("--yes", "-y", is_flag=True, help="do not ask for confirmation"),
            click.option(
                "--batch",
                type=click.IntRange(1, 100_000),
                default=500,
                show_default=True,
                help="tasks per request; progress after each",
            ),
        ]
    ):
        fn = option(fn)
    return fn


def _one_or_bulk(
    action: str,
    task_id: str | None,
    url: str,
    as_json: bool,
    yes: bool,
    batch: int,
    **filters: str | None,
) -> None:
    """``tasks retry/cancel``: one task by id, or every task the filter options select
    (count, confirm, then batches with progress)."""
    given = {k: v for k, v in filters.items() if v is not None}
    if task_id is not None:
        if given:
            raise click.UsageError("give a TASK_ID or filter options (--status ...), not both")
        task = _client_call(url, lambda c: getattr(c, action)(task_id))
        _echo_json(task) if as_json else click.echo(f"{task['id']}  {task['status']}")
        return
    if "status" not in given:
        raise click.UsageError("give a TASK_ID, or --status (and more filters) for many")
    spec = {
        "status": given.pop("status"),
        "queue": given.pop("queue", None),
        "name": given.pop("name", None),
        "error": given.pop("error", None),
        "updated_before": given.pop("before", None),
        "updated_after": given.pop("after", None),
        **given,
    }
    past = {"retry": "retried", "cancel": "cancelled"}[action]
    matched = _client_call(url, lambda c: c.bulk(action, spec, dry_run=True))["matched"]
    if not as_json:
        click.echo(f"{matched:,} {spec['status']} tasks match")
    if matched and not yes:
        click.confirm(f"{action.capitalize()} {matched:,} tasks?", abort=True)
    done, cursor = 0, None
    while done < matched:  # never past the count confirmed, though more may match now
        size = min(batch, matched - done)
        step = _client_call(
            url, lambda c, n=size, after=cursor: c.bulk(action, spec, limit=n, after=after)
        )
        done, cursor = done + step["done"], step["next_cursor"]
        if not as_json:
            click.echo(f"{past} {done:,}/{matched:,}")
        if cursor is None:
            break
    if as_json:
        _echo_json({"matched": matched, "done": done})
    else:
        click.echo(f"{past} {done:,} tasks")


@tasks.command("cancel")
@click.argument("task_id", required=False)
@_bulk_options
@url_option
@json_option
def tasks_cancel(
    task_id: str | None, url: str, as_json: bool, yes: bool, batch: int, **filters: str | None
) -> None:
    """Cancel a scheduled, queued or running task, or every task the options select
    (e.g. --status queued --queue emails): counts, asks, then cancels in batches."""
    _one_or_bulk("cancel", task_id, url, as_json, yes, batch, **filters)


@tasks.command("retry")
@click.argument("task_id", required=False)
@_bulk_options
@url_option
@json_option
def tasks_retry(
    task_id: str | None, url: str, as_json: bool, yes: bool, batch: int, **filters: str | None
) -> None:
    """Send a failed or dead task back to its queue now, or every task the options
    select (e.g. --status dead --error Timeout): counts, asks, then retries in batches."""
    _one_or_bulk("retry", task_id, url, as_json, yes, batch, **filters)


@main.group(invoke_without_command=True)
@url_option
@json_option
@click.pass_context
def queues(ctx: click.Context, url: str, as_json: bool) -> None:
    """Queues: depth and status counts (the default, as `queues ls`), pause, resume."""
    if ctx.invoked_subcommand is None:
        _list_queues(url, as_json)


@queues.command("ls")
@url_option
@json_option
def queues_ls(url: str, as_json: bool) -> None:
    """Depth and status counts per queue, and which are paused."""
    _list_queues(url, as_json)


def _list_queues(url: str, as_json: bool) -> None:
    stats = _client_call(url, lambda c: c.queues())
    if as_json:
        _echo_json(stats)
        return
    click.echo(render.queues_table(stats))


def _pause_command(action: str, help_text: str) -> None:
    """``chronoq queues pause|resume QUEUE``: the two differ only in the route they call."""

    @queues.command(action, help=help_text)
    @click.argument("queue")
    @url_option
    @json_option
    def command(queue: str, url: str, as_json: bool) -> None:
        state = _client_call(
            url, lambda c: c.request("POST", f"/v1/queues/{quote(queue, safe='')}/{action}")
        )
        if as_json:
            _echo_json(state)
        else:
            click.echo(f"{state['queue']}  {'paused' if state['paused'] else 'active'}")


_pause_command(
    "pause",
    "Stop workers claiming QUEUE's tasks (they stay queued; the "
    "workers stay up and serve their other queues).",
)
_pause_command("resume", "Let workers claim QUEUE's tasks again, at once.")


@main.group()
def workers() -> None:
    """Worker processes and their heartbeats."""


@workers.command("ls")
@click.option("--all", "include_gone", is_flag=True, help="include stopped and dead workers")
@url_option
@json_option
def workers_ls(include_gone: bool, url: str, as_json: bool) -> None:
    """List workers: queues, busy slots, last heartbeat."""
    found = _client_call(
        url, lambda c: c.request("GET", "/v1/workers", params={"all": str(include_gone).lower()})
    )
    if as_json:
        _echo_json(found)
        return
    click.echo(render.workers_table(found))


def _control_command(what: str, help_text: str) -> None:
    @workers.command(what, help=help_text)
    @click.argument("worker_id")
    @url_option
    @json_option
    def command(worker_id: str, url: str, as_json: bool) -> None:
        path = f"/v1/workers/{quote(worker_id, safe='')}/{what}"
        found = _client_call(url, lambda c: c.request("POST", path))
        if as_json:
            _echo_json(found)
            return
        click.echo(f"asked worker {worker_id} to {what}: it acts at its next heartbeat")


_control_command(
    "drain", "Stop WORKER_ID claiming; it finishes what it runs, then exits (admin key)."
)
_control_command(
    "stop", "Stop WORKER_ID gracefully, as SIGTERM: running tasks get its drain time (admin)."
)


# -- schedules --------------------------------------------------------------------------------
@main.group()
def schedules() -> None:
    """Recurring schedules: add, list, inspect, pause, resume, trigger, remove."""


@schedules.command("add")
@click.argument("name")
@click.option("--cron", help="5 fields (or 6 with leading seconds), or @hourly, @daily...")
@click.option("--every", help="interval instead of cron: 30s, 5m, 1h")
@click.option("--tz", "timezone", default="UTC", show_default=True, help="IANA time zone")
@click.option("--task", "task_name", required=True, help="handler name to run")
@click.option("--payload", "-d", default="{}", help="JSON object passed to the handler")
@click.option("--queue", "-q", default="default", show_default=True)
@click.option(
    "--misfire",
    type=click.Choice(["skip", "run_once", "catch_up"]),
    default="run_once",
    show_default=True,
    help="what to do with slots missed while chronoq was down",
)
@click.option(
    "--overlap",
    type=click.Choice(["allow", "skip", "buffer_one", "cancel_running"]),
    default="allow",
    show_default=True,
    help="a slot while the previous run still waits or runs: fire it anyway, skip it, "
    "run it after (one at most), or cancel the previous run",
)
@click.option("--paused", is_flag=True, help="create it paused")
@url_option
@json_option
def schedules_add(
    name: str,
    cron: str | None,
    every: str | None,
    timezone: str,
    task_name: str,
    payload: str,
    queue: str,
    misfire: str,
    overlap: str,
    paused: bool,
    url: str,
    as_json: bool,
) -> None:
    """Create schedule NAME running --task on --cron or --every."""
    if (cron is None) == (every is None):
        raise click.UsageError("give --cron or --every (one of them)")
    body: dict[str, Any] = {
        "name": name,
        "timezone": timezone,
        "misfire_policy": misfire,
        "overlap_policy": overlap,
        "paused": paused,
        "task": {"name": task_name, "payload": _json_option(payload), "queue": queue},
    }
    if cron:
        body["cron"] = cron
    if every:
        body["interval_seconds"] = parse_duration(every)
    schedule = _client_call(url, lambda c: c.request("POST", "/v1/schedules", json=body))
    click.echo(render.json_text(schedule) if as_json else render.schedule_detail(schedule))


@schedules.command("ls")
@url_option
@json_option
def schedules_ls(url: str, as_json: bool) -> None:
    """List schedules with their next fire time."""
    page = _client_call(url, lambda c: c.request("GET", "/v1/schedules", params={"limit": 500}))
    if as_json:
        _echo_json(page)
        return
    click.echo(render.schedules_table(page["items"]))


def _schedule_action(method: str, suffix: str, done: str) -> Any:
    @click.argument("key")
    @url_option
    @json_option
    def command(key: str, url: str, as_json: bool) -> None:
        result = _client_call(url, lambda c: c.request(method, f"/v1/schedules/{key}{suffix}"))
        if method == "DELETE":
            click.echo(f"{key}  {done}")
        elif as_json:
            _echo_json(result)
        elif suffix == "":
            click.echo(render.schedule_detail(result))
        elif suffix == "/trigger":
            click.echo(f"{result['id']}  {result['name']}  {result['status']}")
        else:
            click.echo(f"{key}  {done}")

    return command


schedules.command("get", help="Show schedule KEY (id or name) and its next fire times.")(
    _schedule_action("GET", "", "")
)
schedules.command("pause", help="Pause schedule KEY: nothing fires until resumed.")(
    _schedule_action("POST", "/pause", "paused")
)
schedules.command("resume", help="Resume schedule KEY from the next slot.")(
    _schedule_action("POST", "/resume", "resumed")
)
schedules.command("trigger", help="Run schedule KEY's task once, now.")(
    _schedule_action("POST", "/trigger", "triggered")
)
schedules.command("rm", help="Delete schedule KEY (tasks it fired stay).")(
    _schedule_action("DELETE", "", "deleted")
)


# -- workflows --------------------------------------------------------------------------------
@main.group()
def workflows() -> None:
    """Workflows (chains, groups, chords, DAGs): start, list, inspect, cancel, retry."""


main.add_command(workflows, "workflow")  # `chronoq workflow ...` too


@workflows.command("start")
@click.argument("spec", type=click.File("r"))
@click.option("--name", help="override the workflow's name")
@click.option("--timeout", help="the whole workflow's deadline (30s, 5m, 1h)")
@url_option
@json_option
def workflows_start(
    spec: Any, name: str | None, timeout: str | None, url: str, as_json: bool
) -> None:
    """Start the workflow in SPEC, a JSON file (- for stdin) as POST /v1/workflows takes
    it: {"nodes": [{"id", "task": {"name", "payload"}}], "edges": [{"parent", "child"}]}."""
    body = _json_option(spec.read())
    if not isinstance(body, dict):
        raise click.BadParameter("a JSON object with nodes and edges", param_hint="SPEC")
    if name:
        body["name"] = name
    if timeout:
        body["timeout_seconds"] = parse_duration(timeout)
    started = _client_call(url, lambda c: c.start_workflow(body))
    click.echo(render.json_text(started) if as_json else render.workflow_detail(started))


@workflows.command("ls")
@click.option("--limit", "-l", type=int, default=20, show_default=True)
@click.option("--cursor", help="next_cursor from a previous page")
@url_option
@json_option
def workflows_ls(limit: int, cursor: str | None, url: str, as_json: bool) -> None:
    """List workflows, newest first, with their steps per status."""
    page = _client_call(url, lambda c: c.list_workflows(limit, cursor))
    if as_json:
        _echo_json(page)
        return
    click.echo(render.workflows_table(page["items"]))
    if page.get("next_cursor"):
        click.echo(f"more: chronoq workflows ls --limit {limit} --cursor {page['next_cursor']}")


@workflows.command("get")
@click.argument("workflow_id")
@url_option
@json_option
def workflows_get(workflow_id: str, url: str, as_json: bool) -> None:
    """Show one workflow with every step's state."""
    found = _client_call(url, lambda c: c.get_workflow(workflow_id))
    click.echo(render.json_text(found) if as_json else render.workflow_detail(found))


@workflows.command("cancel")
@click.argument("workflow_id")
@url_option
@json_option
def workflows_cancel(workflow_id: str, url: str, as_json: bool) -> None:
    """Cancel every step that has not finished (running ones are stopped)."""
    found = _client_call(url, lambda c: c.cancel_workflow(workflow_id))
    click.echo(render.json_text(found) if as_json else render.workflow_detail(found))


@workflows.command("retry")
@click.argument("workflow_id")
@url_option
@json_option
def workflows_retry(workflow_id: str, url: str, as_json: bool) -> None:
    """Retry every dead step now; the steps that failed because of them wait again."""
    found = _client_call(url, lambda c: c.retry_workflow(workflow_id))
    click.echo(render.json_text(found) if as_json else render.workflow_detail(found))


@main.command()
@click.option(
    "--interval", "-n", type=float, default=1.0, show_default=True, help="seconds between refreshes"
)
@click.option("--once", is_flag=True, help="print one frame and exit")
@url_option
def top(interval: float, once: bool, url: str) -> None:
    """Live view of queues, workers and throughput (Ctrl+C to quit)."""
    from chronoq.top import Rates, frame_text

    rates = Rates()
    with Client(url, api_key=Settings().api_key) as client:
        try:
            while True:
                try:
                    frame = frame_text(
                        client.queues(),
                        client.request("GET", "/v1/workers"),
                        rates,
                        time.time(),
                        url,
                    )
                except ClientError as exc:
                    raise click.ClickException(exc.message) from None
                if once:
                    click.echo(frame)
                    return
                click.echo("\x1b[H\x1b[2J" + frame, nl=True)
                time.sleep(interval)
        except KeyboardInterrupt:
            return


# -- retention --------------------------------------------------------------------------------
@main.command()
@click.option(
    "--status",
    "-s",
    "statuses",
    multiple=True,
    type=click.Choice(["succeeded", "cancelled", "dead"]),
    help="only tasks in this status (repeat for several) [default: all three]",
)
@click.option("--queue", "-q", help="only tasks of this queue")
@click.option(
    "--before",
    help="only tasks that finished before this ISO 8601 time or "
    "longer ago than this duration (7d, 12h) [default: the "
    "retention policy, CHRONOQ_RETENTION]",
)
@click.option("--dry-run", is_flag=True, help="print counts per status and queue; delete nothing")
@click.option(
    "--export",
    "export_dir",
    metavar="DIR",
    help="first write the purged tasks with their attempts to DIR as gzip JSON "
    "lines (fsynced before each batch is deleted)",
)
@click.option(
    "--batch",
    type=click.IntRange(1, 10_000),
    default=1000,
    show_default=True,
    help="tasks deleted per transaction",
)
@db_option
@json_option
def purge(
    statuses: tuple[str, ...],
    queue: str | None,
    before: str | None,
    dry_run: bool,
    export_dir: str | None,
    batch: int,
    database_url: str | None,
    as_json: bool,
) -> None:
    """Delete finished tasks and their attempts, in batches. Works on the database
    directly; the scheduler leader does the same continuously (CHRONOQ_RETENTION)."""
    from chronoq import retention
    from chronoq.states import Status

    now = time.time()
    cutoff = None
    if before is not None:
        try:
            cutoff = durations.parse_instant(before, now)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--before") from None
    chosen = [Status(s) for s in statuses] or list(retention.FINISHED)
    policy = retention.Policy.parse(make_settings(database_url=database_url).retention)
    last_line = [time.monotonic()]

    def progress(done: retention.Progress) -> None:
        if time.monotonic() - last_line[0] >= 1.0:
            last_line[0] = time.monotonic()
            click.echo(f"purged {done.total:,} so far ({done.rate():,.0f} rows/s)", err=True)

    async def work(store: Any) -> dict[tuple[Status, str], int]:
        queues = await retention.queues_by_status(store, chosen)
        if cutoff is None:
            expired = [e for e in policy.expired(queues, now) if queue in (None, e.queue)]
        else:
            expired = retention.selections(queues, cutoff, queue)
        if dry_run:
            return await retention.counts(store, expired)
        export = retention.Export(export_dir) if export_dir else None
        done = await retention.purge(store, expired, batch=batch, export=export, on_batch=progress)
        if export is not None and export.path is not None:
            click.echo(f"exported {export.written:,} tasks to {export.path}", err=True)
        return done.deleted

    found = _with_store(database_url, work)
    rows = [{"status": str(s), "queue": q, "count": n} for (s, q), n in sorted(found.items())]
    if as_json:
        _echo_json({"dry_run": dry_run, "total": sum(found.values()), "items": rows})
        return
    if rows:
        click.echo(
            render.table(
                [[r["status"], r["queue"], str(r["count"])] for r in rows],
                ["status", "queue", "would delete" if dry_run else "deleted"],
            )
        )
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {sum(found.values()):,} finished tasks")


# -- API keys ---------------------------------------------------------------------------------
@main.group()
def keys() -> None:
    """API keys: create (shown once), list, revoke. Works on the database directly."""


def _with_store(database_url: str | None, work: Any) -> Any:
    from chronoq.store import create_store, opened

    url = make_settings(database_url=database_url).database_url

    async def run() -> Any:
        async with opened(create_store(url)) as store:
            return await work(store)

    return _on_database(url, run)


@keys.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    default=["read", "write"],
    show_default=True,
    type=click.Choice(["read", "write", "admin"]),
    help="repeat for several",
)
@click.option("--namespace", help="limit the key to this namespace's tasks and schedules")
@db_option
def keys_create(
    name: str, scopes: tuple[str, ...], namespace: str | None, database_url: str | None
) -> None:
    """Create key NAME and print its secret (stored hashed: it cannot be shown again)."""
    key, secret = _with_store(database_url, lambda s: s.keys.create(name, list(scopes), namespace))
    click.echo(secret)
    click.echo(
        f"key {key.id} ({', '.join(sorted(key.scopes))}"
        f"{', namespace ' + namespace if namespace else ''}): use it as "
        "'Authorization: Bearer <key>' or CHRONOQ_API_KEY",
        err=True,
    )


@keys.command("ls")
@db_option
@json_option
def keys_ls(database_url: str | None, as_json: bool) -> None:
    """List keys (never their secrets)."""
    found = _with_store(database_url, lambda s: s.keys.all())
    rows = [
        {
            "id": k.id,
            "name": k.name,
            "scopes": sorted(k.scopes),
            "namespace": k.namespace,
            "created_at": k.created_at,
            "last_used_at": k.last_used_at,
            "revoked": k.revoked_at is not None,
        }
        for k in found
    ]
    if as_json:
        _echo_json(rows)
        return
    click.echo(render.keys_table(rows))


@keys.command("revoke")
@click.argument("key_id")
@db_option
def keys_revoke(key_id: str, database_url: str | None) -> None:
    """Revoke key KEY_ID (the API stops accepting it within 10 s)."""
    if not _with_store(database_url, lambda s: s.keys.revoke(key_id)):
        raise click.ClickException(f"no active key with id {key_id!r}")
    click.echo(f"{key_id}  revoked")


if __name__ == "__main__":
    main()
