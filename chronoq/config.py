"""Settings, read from ``CHRONOQ_*`` environment variables; command-line flags override them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob in one place. docs/configuration.md lists them."""

    model_config = SettingsConfigDict(env_prefix="CHRONOQ_", extra="ignore")

    database_url: str = Field(
        "sqlite:///chronoq.db", description="sqlite:///path or postgresql://user@host/db"
    )
    host: str = Field("127.0.0.1", description="address the API listens on")
    port: int = Field(8000, description="port the API listens on")
    url: str = Field("http://127.0.0.1:8000", description="API address the CLI talks to")
    auth: bool = Field(
        True,
        description="require API keys (`chronoq dev` turns this off "
        "unless --auth; it listens on localhost only)",
    )
    api_key: str | None = Field(None, description="the key the CLI sends to the API")
    key_cache_seconds: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="how long the API "
        "trusts a key look-up: a revoked key stops working, and "
        "its open event streams close, within this",
    )
    rate_limit: float = Field(
        500.0,
        ge=0,
        description="requests a second one API key may "
        "make to one API process, sustained (0: no limit)",
    )
    rate_limit_burst: int = Field(
        1000, ge=1, description="requests one API key may make at once above rate_limit"
    )
    auth_failures_per_minute: int = Field(
        30,
        ge=1,
        description="invalid API keys one client "
        "address may present a minute; then 429 before "
        "any key is checked",
    )
    redis_url: str | None = Field(
        None,
        description="redis://host:port/db: share task events between processes (distributed mode)",
    )
    broker_url: str | None = Field(
        None,
        description="redis://host:port/db: workers get ready "
        "tasks from Redis Streams instead of polling the store",
    )
    app: str | None = Field(None, description="module:attribute of your chronoq.App (handlers)")
    queues: str = Field("default", description="comma-separated queues a worker serves")
    concurrency: int = Field(8, ge=1, le=10_000, description="tasks a worker runs at once")
    autoscale: str | None = Field(
        None,
        pattern=r"^\d+,\d+$",
        description="MIN,MAX: grow and shrink worker concurrency with the backlog",
    )
    pool: Literal["async", "process"] = Field(
        "async",
        description="where workers run Python handlers: `async` in the worker "
        "process (event loop and threads), `process` in child processes",
    )
    processes: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="child processes of a process pool (default: the number of CPUs)",
    )
    max_tasks_per_child: int | None = Field(
        None, ge=1, description="replace a pool child after this many tasks"
    )
    max_memory_per_child: int | None = Field(
        None,
        ge=1,
        description="MiB: replace a pool "
        "child whose RSS grew past this after a task; "
        "kill it (outcome crashed) if it does mid-task",
    )
    prefetch: int | None = Field(
        None,
        ge=0,
        le=100_000,
        description="tasks a worker claims "
        "beyond its free slots, so the next is at hand "
        "(default 4 per child with --pool process, 0 with the async pool)",
    )
    lease_seconds: float = Field(
        30.0,
        gt=0,
        description="a running task without a heartbeat for this long is retried elsewhere",
    )
    heartbeat_seconds: float = Field(5.0, gt=0, description="how often workers renew leases")
    blocked_loop_seconds: float = Field(
        1.0,
        ge=0,
        description="warn when a handler blocks "
        "a worker's event loop this long, and renew its "
        "leases from a thread meanwhile (0: off)",
    )
    poll_seconds: float = Field(
        1.0, gt=0, description="longest sleep between store checks when no wake-up arrives"
    )
    schedule_fire_ahead: float = Field(
        2.0,
        ge=0,
        le=60,
        description="seconds before its slot a schedule's task is inserted (scheduled, then "
        "promoted on time), so slots sharing one instant are fired before it (0: at the slot)",
    )
    max_payload_bytes: int = Field(256 * 1024, gt=0, description="largest accepted payload")
    shell_allow: str = Field(
        "",
        description="comma-separated programs the shell executor may "
        "run (empty: shell executor disabled)",
    )
    shell_env_allow: str = Field(
        "",
        description="comma-separated environment variable "
        "names chronoq.shell payloads may set (empty: none)",
    )
    http_allow: str = Field(
        "",
        description="comma-separated hostnames and CIDRs whose "
        "private, loopback or link-local addresses the chronoq.http "
        "executor may call (e.g. 127.0.0.1/32,internal.example.com)",
    )
    max_request_bytes: int | None = Field(
        None,
        gt=0,
        description="largest request body the API reads (default 2 x max_payload_bytes + 64 KiB)",
    )
    max_fires_per_minute: int = Field(
        60, ge=1, description="the most times a schedule may fire in a minute (60: every second)"
    )
    health_port: str | None = Field(
        None,
        description="[HOST:]PORT where `chronoq "
        "scheduler` and `chronoq worker` serve /healthz and "
        "/readyz (HOST defaults to `host`)",
    )
    grpc_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="port where `chronoq api` and `chronoq dev` also serve the gRPC API "
        "(on `host`; unset: no gRPC; needs the grpc extra)",
    )
    log_level: str = Field("info", description="debug, info, warning, error")
    retention: str = Field(
        "succeeded=7d,cancelled=7d,dead=30d",
        description="how long "
        "the scheduler leader keeps finished tasks: [queue:]status=age "
        "entries over the defaults, e.g. dead=90d,reports:succeeded=1d "
        "(0 or off: forever; off alone: never purge)",
    )
    retention_interval: float = Field(
        60.0, gt=0, description="seconds between the leader's retention sweeps"
    )
    retention_batch: int = Field(
        1000, ge=1, le=10_000, description="tasks one retention transaction deletes"
    )
    retention_pause: float = Field(
        0.05, ge=0, le=60, description="seconds the leader's sweep waits between batches"
    )
    retention_export_dir: str | None = Field(
        None,
        description="directory the leader "
        "writes purged tasks to (gzip JSON lines) "
        "before deleting them (unset: no export)",
    )

    @field_validator("http_allow")
    @classmethod
    def _valid_http_allow(cls, value: str) -> str:
        from chronoq.executors.http import parse_allow

        parse_allow(value)  # ValueError names a bad entry
        return value

    @field_validator("retention")
    @classmethod
    def _valid_retention(cls, value: str) -> str:
        from chronoq.retention import Policy

        Policy.parse(value)  # PolicyError (a ValueError) names the bad entry
        return value

    @field_validator("shell_env_allow")
    @classmethod
    def _valid_shell_env_allow(cls, value: str) -> str:
        from chronoq.executors.shell import parse_env_allow

        parse_env_allow(value.split(","))  # ValueError names a malformed or dangerous name
        return value

    def autoscale_range(self) -> tuple[int, int] | None:
        if not self.autoscale:
            return None
        low, high = (int(x) for x in self.autoscale.split(","))
        return low, high

    def queue_list(self) -> list[str]:
        return [q.strip() for q in self.queues.split(",") if q.strip()]

    def shell_allow_list(self) -> list[str]:
        return [c.strip() for c in self.shell_allow.split(",") if c.strip()]

    def shell_env_allow_list(self) -> list[str]:
        return [c.strip() for c in self.shell_env_allow.split(",") if c.strip()]

    def http_allow_list(self) -> list[str]:
        return [c.strip() for c in self.http_allow.split(",") if c.strip()]

    def request_limit(self) -> int:
        """The request body size limit: ``max_request_bytes`` or its default."""
        if self.max_request_bytes is not None:
            return self.max_request_bytes
        return 2 * self.max_payload_bytes + 64 * 1024
