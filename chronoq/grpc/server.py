"""The ``chronoq.v1.Chronoq`` gRPC service on grpcio's asyncio server, beside the REST API.

Every call is a translation around :mod:`chronoq.api.service`: the caller is identified
by :func:`chronoq.api.auth.identify` with the REST API's key cache and rate limits (one
budget per key and process, whichever API it calls), and whatever the REST API would
refuse is refused with the status code :data:`CODES` maps its HTTP status to, the same
message, and the REST error body as JSON in the trailing metadata ``chronoq-error``.
The server also answers the standard health service (``grpc.health.v1.Health``) and
server reflection, so ``grpcurl`` and load balancers need no copy of the proto.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from chronoq.api import service
from chronoq.api.auth import KeyCache, Principal, authorize, bearer_secret, identify, until_revoked
from chronoq.api.errors import problem
from chronoq.api.health import readiness_checks
from chronoq.api.ratelimit import RateLimits
from chronoq.app import App
from chronoq.grpc import convert
from chronoq.grpc.v1 import chronoq_pb2 as pb
from chronoq.grpc.v1 import chronoq_pb2_grpc as pb_grpc
from chronoq.health import failures

log = logging.getLogger("chronoq.grpc")

#: the service's full name, as health checks and reflection know it
SERVICE = pb.DESCRIPTOR.services_by_name["Chronoq"].full_name

Context = grpc.aio.ServicerContext[Any, Any]

#: the gRPC status for each HTTP status the REST API answers
CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
#: 409s that say "it exists already" rather than "not in this state"
EXISTS = frozenset({"schedule_exists"})

S = TypeVar("S", bound="ChronoqService")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


async def refuse(context: Context, exc: Exception) -> NoReturn:
    """End the call as the REST API would have answered ``exc`` (a bug: INTERNAL)."""
    found = problem(exc)
    if found is None:
        log.error("gRPC call failed", exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")
    code = CODES.get(found.status, grpc.StatusCode.UNKNOWN)
    if found.status == 409 and found.code in EXISTS:
        code = grpc.StatusCode.ALREADY_EXISTS
    trailers = [("chronoq-error", json.dumps(found.body()["error"]))]
    trailers += [(name.lower(), value) for name, value in found.headers.items()]
    await context.abort(code, found.message, tuple(trailers))


def refusing(
    method: Callable[[S, Req, Context], Awaitable[Resp]],
) -> Callable[[S, Req, Context], Awaitable[Resp]]:
    """Turn what a unary call raises into its gRPC status (see :func:`refuse`)."""

    async def call(self: S, request: Req, context: Context) -> Resp:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await refuse(context, exc)

    call.__doc__ = method.__doc__
    return call


def peer_address(peer: str) -> str:
    """The client address in a gRPC peer string (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``)."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        rest = rest.rsplit(":", 1)[0]
    return rest.strip("[]") or "unknown"


def _metadata(context: Context, name: str) -> str | None:
    """The value of the request's metadata ``name`` (a text one), if sent."""
    for key, value in context.invocation_metadata() or ():
        if key == name and isinstance(value, str):
            return value
    return None


class ChronoqService(pb_grpc.ChronoqServicer):
    """``chronoq.v1.Chronoq``: the task routes of the REST API."""

    def __init__(self, app: App, keys: KeyCache, limits: RateLimits | None) -> None:
        self.app, self.keys, self.limits = app, keys, limits
        #: set when the server stops: open event streams end UNAVAILABLE
        self.stopping = asyncio.Event()

    def _secret(self, context: Context) -> str | None:
        found = _metadata(context, "authorization")
        return None if found is None else bearer_secret(found)

    async def _caller(self, context: Context, scope: str) -> Principal:
        """Who calls (401/429 as over REST), if they hold ``scope`` (else 403)."""
        who = await identify(
            self.app,
            self.keys,
            self._secret(context),
            limits=self.limits,
            address=peer_address(context.peer()),
        )
        return authorize(who, scope)

    @refusing
    async def Submit(self, request: pb.SubmitRequest, context: Context) -> pb.SubmitResponse:
        who = await self._caller(context, "write")
        task, created = await service.submit(
            self.app,
            who,
            convert.task_create(request.task),
            _metadata(context, "traceparent"),
            "grpc",
        )
        return pb.SubmitResponse(task=convert.task_message(task), created=created)

    @refusing
    async def SubmitBatch(
        self, request: pb.SubmitBatchRequest, context: Context
    ) -> pb.SubmitBatchResponse:
        who = await self._caller(context, "write")
        found = await service.submit_batch(
            self.app,
            who,
            convert.task_batch(list(request.tasks)),
            _metadata(context, "traceparent"),
            "grpc",
        )
        return pb.SubmitBatchResponse(
            items=[convert.task_message(t) for t in found.items], created=found.created
        )

    @refusing
    async def Get(self, request: pb.GetRequest, context: Context) -> pb.Task:
        who = await self._caller(context, "read")
        return convert.task_message(await service.get(self.app, who, request.task_id))

    @refusing
    async def List(self, request: pb.ListRequest, context: Context) -> pb.ListResponse:
        who = await self._caller(context, "read")
        fields = ("status", "queue", "name", "cursor", "limit")
        query = service.TaskQuery.model_validate(
            {f: getattr(request, f) for f in fields if request.HasField(f)}  # type: ignore[arg-type]
        )
        page = await service.list_tasks(self.app, who, query)
        return pb.ListResponse(
            items=[convert.task_message(t) for t in page.items], next_cursor=page.next_cursor
        )

    @refusing
    async def Cancel(self, request: pb.CancelRequest, context: Context) -> pb.Task:
        who = await self._caller(context, "write")
        return convert.task_message(await service.cancel(self.app, who, request.task_id))

    @refusing
    async def Retry(self, request: pb.RetryRequest, context: Context) -> pb.Task:
        who = await self._caller(context, "write")
        return convert.task_message(await service.retry(self.app, who, request.task_id))

    async def WatchEvents(
        self, request: pb.WatchEventsRequest, context: Context
    ) -> AsyncIterator[pb.TaskEvent]:
        """Events matching the request's filters. The initial metadata is sent once the
        stream is subscribed: a client that awaits it misses no later event. A key
        revoked meanwhile ends the stream UNAUTHENTICATED within the key cache's time."""
        try:
            who = await self._caller(context, "read")
        except Exception as exc:
            await refuse(context, exc)
        filters = {f: getattr(request, f) for f in service.EVENT_FILTERS}
        matches = service.event_filter(filters, who)
        secret = self._secret(context)
        never = asyncio.Event()
        revoked = asyncio.ensure_future(
            until_revoked(self.app, self.keys, secret) if secret and who.key_id else never.wait()
        )
        stopping = asyncio.ensure_future(self.stopping.wait())
        with self.app.store.events.subscribe() as subscription:
            try:
                await context.send_initial_metadata(())
                while True:
                    batch = asyncio.ensure_future(anext(subscription))
                    await asyncio.wait(
                        [batch, revoked, stopping], return_when=asyncio.FIRST_COMPLETED
                    )
                    if not batch.done():
                        batch.cancel()
                        if revoked.done():
                            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "API key revoked")
                        await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is stopping")
                    for event in batch.result():
                        if matches(event):
                            yield convert.event_message(event)
            finally:
                revoked.cancel()
                stopping.cancel()


class Health(health_aio.HealthServicer):  # type: ignore[misc]
    """The standard health service. ``Check`` also asks what ``/readyz`` asks (the store,
    the Redis broker): a probe sees NOT_SERVING while the API could not do its work.
    ``Watch`` reports the status set on the server only (SERVING, then NOT_SERVING)."""

    def __init__(self, app: App) -> None:
        super().__init__()
        self.app = app

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: Context
    ) -> health_pb2.HealthCheckResponse:
        answer: health_pb2.HealthCheckResponse = await super().Check(request, context)
        serving = answer.status == health_pb2.HealthCheckResponse.SERVING
        if serving and await failures(readiness_checks(self.app)):
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.NOT_SERVING)
        return answer


class GrpcServer:
    """The gRPC server of an API process: start it, run :meth:`serve` as a job, and
    :meth:`stop` it (health turns NOT_SERVING, then calls get ``grace`` seconds)."""

    def __init__(
        self,
        app: App,
        host: str,
        port: int,
        *,
        keys: KeyCache,
        limits: RateLimits | None,
        grace: float = 5.0,
    ) -> None:
        self.app, self.host, self.port, self.grace = app, host, port, grace
        self.server = grpc.aio.server(
            options=[
                # a second server on a busy port is an error, not a silent share
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", app.settings.request_limit()),
            ]
        )
        self.service = ChronoqService(app, keys, limits)
        pb_grpc.add_ChronoqServicer_to_server(self.service, self.server)
        self.health = Health(app)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [
                SERVICE,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self.server,
        )
        self._stopping = asyncio.Event()

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def start(self) -> None:
        """Listen (``port`` 0: any free port, then ``port`` is the one chosen)."""
        target = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            self.port = self.server.add_insecure_port(target)
        except RuntimeError as exc:
            raise OSError(f"cannot listen for gRPC on {target}: {exc}") from None
        if self.port == 0:
            raise OSError(f"cannot listen for gRPC on {target}")
        await self.server.start()
        for name in ("", SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self) -> None:
        self._stopping.set()

    async def serve(self) -> None:
        """Serve until :meth:`stop`; then refuse new calls and end open ones."""
        try:
            await self._stopping.wait()
        finally:
            self.service.stopping.set()
            await self.health.enter_graceful_shutdown()
            await self.server.stop(self.grace)
