"""``chronoq.http``: call a URL with the payload; a 2xx answer is success.

Payload: ``{"url": ..., "method": "POST", "headers": {...}, "json": ... | "body": "...",
"timeout_seconds": 30}``. The result keeps the status code and the (truncated) body.

Whoever can submit a task chooses the URL, so the executor guards the worker's network
against server-side request forgery (SSRF):

* the host is resolved before connecting and every address is vetted: loopback, private
  (RFC 1918, ``fc00::/7``), link-local (``169.254.0.0/16`` with the cloud metadata
  endpoints, ``fe80::/10``), unspecified, multicast, reserved and other non-global
  addresses are refused unless the worker's allow-list (``--http-allow`` /
  ``CHRONOQ_HTTP_ALLOW``: hostnames and CIDRs) permits them;
* the connection goes to the vetted address itself (no second DNS lookup that a
  rebinding DNS server could answer differently); TLS still sends the URL's hostname as
  SNI and verifies the certificate against it; the address the socket actually reached
  is checked once more when the answer arrives;
* no redirects are followed, environment proxies are ignored, timeouts bound the
  connection and the whole call, and the answer's body is read up to a size cap.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import socket
import ssl
import typing
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx
from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from chronoq.executors.base import Executor, TaskFailed

NAME = "chronoq.http"
#: the part of a non-JSON answer kept in the task's result
MAX_BODY = 64 * 1024
#: the largest answer body read; a larger one fails the attempt
MAX_RESPONSE_BYTES = 1024 * 1024
#: longest wait for DNS + TCP + TLS, capped by the payload's ``timeout_seconds``
CONNECT_TIMEOUT = 10.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)"
    r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*$"
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")


class AddressRefused(Exception):
    """The host resolved only to addresses this worker may not call."""


class HttpAllow:
    """The worker's HTTP allow-list and the address policy built on it.

    Entries are hostnames (``internal.example.com``: whatever it resolves to is allowed)
    or IP networks (``10.0.0.0/8``, ``127.0.0.1/32``; a bare address means just that
    address). Public addresses are always allowed; the list only opens non-public ones.
    """

    def __init__(self, entries: Iterable[str] = ()) -> None:
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            host = _normal_host(entry)
            if not _HOSTNAME.match(host) or "/" in entry:
                raise ValueError(
                    f"http allow-list entry {raw!r} is neither a hostname nor "
                    "an IP network (e.g. internal.example.com, 10.0.0.0/8)"
                )
            hosts.add(host)
        self.hosts = frozenset(hosts)
        self.networks = tuple(networks)

    def __bool__(self) -> bool:
        return bool(self.hosts or self.networks)

    def describe(self) -> str:
        return ", ".join([*sorted(self.hosts), *(str(n) for n in self.networks)]) or "empty"

    def refusal(self, host: str, address: IPAddress) -> str | None:
        """Why ``address`` (one that ``host`` resolved to) may not be called, or None."""
        if _normal_host(host) in self.hosts:
            return None
        candidates = [address, *_embedded(address)]
        if any(a in n for a in candidates for n in self.networks if a.version == n.version):
            return None
        for candidate in reversed(candidates):  # an embedded IPv4 address names it best
            reason = _non_public(candidate)
            if reason is not None:
                return reason
        return None


def parse_allow(text: str | Iterable[str]) -> HttpAllow:
    """``"127.0.0.1/32,internal.example.com"`` (or a list of entries) → :class:`HttpAllow`;
    ``ValueError`` names a bad entry."""
    return HttpAllow(text.split(",") if isinstance(text, str) else text)


def _normal_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _embedded(address: IPAddress) -> list[IPAddress]:
    """IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo, NAT64): a packet to
    it can end up there, so those are vetted too."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    found: list[IPAddress] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    if address in _NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def _non_public(address: IPAddress) -> str | None:
    """A short name for why an address is not a public unicast one, or None."""
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local, which includes cloud metadata endpoints"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private"
    if address.is_reserved:
        return "reserved"
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED:
        return "carrier-grade NAT"
    if not address.is_global:
        return "not globally routable"
    return None


async def resolve(host: str, port: int, timeout: float | None) -> list[IPAddress]:
    """Every address ``host`` resolves to for a TCP connection, in resolver order."""
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        return [literal]
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
    except TimeoutError:
        raise httpcore.ConnectTimeout(f"resolving {host} took longer than {timeout}s") from None
    except (socket.gaierror, UnicodeError) as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
    found: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


def refused_message(host: str, refused: list[tuple[IPAddress, str]]) -> str:
    what = "; ".join(f"{a} is {reason}" for a, reason in refused)
    first = refused[0][0]
    network = f"{first}/{first.max_prefixlen}"
    named = "" if host == str(first) else f" or the host name {host}"
    return (
        f"refused to connect to {host}: {what}. chronoq.http only calls public "
        f"addresses unless the worker allows more: add {network}{named} to "
        "--http-allow (CHRONOQ_HTTP_ALLOW)"
    )


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Resolves the host itself, vets every address, and connects to a vetted address.

    httpcore hands the URL's hostname to ``connect_tcp`` and later to ``start_tls`` as
    the server name, so TLS still checks the certificate against the hostname."""

    def __init__(self, allow: HttpAllow) -> None:
        self.allow = allow
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await resolve(host, port, timeout)
        permitted: list[IPAddress] = []
        refused: list[tuple[IPAddress, str]] = []
        for address in addresses:
            reason = self.allow.refusal(host, address)
            if reason is None:
                permitted.append(address)
            else:
                refused.append((address, reason))
        if not permitted:
            raise AddressRefused(refused_message(host, refused))
        error: Exception | None = None
        for address in permitted:
            try:
                return await self.inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise AddressRefused("chronoq.http does not connect to unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class _PinnedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with its connection pool on :class:`_PinnedBackend`."""

    def __init__(self, allow: HttpAllow, verify: ssl.SSLContext | bool) -> None:
        super().__init__(verify=verify, trust_env=False, retries=0)
        context = httpx.create_ssl_context(verify=verify, trust_env=False)
        # httpx has no public hook for the network backend; its pool is ``_pool``
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            http1=True,
            http2=False,
            retries=0,
            network_backend=_PinnedBackend(allow),
        )


class HttpRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: HttpUrl
    method: str = Field("POST", pattern=r"^(GET|POST|PUT|PATCH|DELETE|HEAD)$")
    headers: dict[str, str] = Field(default_factory=dict)
    json_body: Any = Field(None, alias="json")
    body: str | None = None
    timeout_seconds: float = Field(30.0, gt=0, le=3600)


class HttpExecutor(Executor):
    """``allow``: hostnames and CIDRs whose non-public addresses may be called (the
    worker's ``--http-allow``). ``verify``: TLS verification (``True``, or an
    :class:`ssl.SSLContext` trusting other authorities)."""

    def __init__(
        self,
        allow: Iterable[str] | HttpAllow = (),
        *,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.allow = allow if isinstance(allow, HttpAllow) else HttpAllow(allow)
        self.max_response_bytes = max_response_bytes
        self.verify = verify
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=_PinnedTransport(self.allow, self.verify),
                follow_redirects=False,
                trust_env=False,
            )
        return self._client

    async def run(self, payload: dict[str, Any]) -> Any:
        try:
            request = HttpRequest.model_validate(payload)
        except ValueError as exc:
            raise TaskFailed(f"bad chronoq.http payload: {exc}", retry=False) from None
        total = request.timeout_seconds
        kwargs: dict[str, Any] = {
            "headers": request.headers,
            "timeout": httpx.Timeout(total, connect=min(CONNECT_TIMEOUT, total)),
        }
        if request.body is not None:
            kwargs["content"] = request.body
        elif "json" in payload:
            kwargs["json"] = request.json_body
        what = f"{request.method} {request.url}"
        try:
            # the whole call, answer included; the task's own timeout_seconds cancels it
            # sooner when it is shorter
            async with asyncio.timeout(total):
                async with self._http().stream(
                    request.method, str(request.url), **kwargs
                ) as response:
                    self._check_peer(response)
                    content = await self._read(response, what)
        except TimeoutError:
            raise TaskFailed(
                f"{what} did not finish within {total:g}s (payload timeout_seconds)"
            ) from None
        except AddressRefused as exc:
            raise TaskFailed(str(exc)) from None
        except httpx.TimeoutException as exc:
            phase = {
                httpx.ConnectTimeout: "connecting",
                httpx.ReadTimeout: "reading",
                httpx.WriteTimeout: "sending",
                httpx.PoolTimeout: "waiting for a connection",
            }.get(type(exc), "waiting")
            raise TaskFailed(f"{what} timed out {phase}: {exc!r}") from None
        except httpx.HTTPError as exc:
            raise TaskFailed(f"{what} failed: {exc!r}") from None
        text = content.decode(response.encoding or "utf-8", errors="replace")
        if not response.is_success:
            raise TaskFailed(f"{what} answered {response.status_code}: {text[:500]}")
        try:
            body: Any = json.loads(content)
        except ValueError:
            body = text[:MAX_BODY]
        return {"status_code": response.status_code, "body": body}

    def _check_peer(self, response: httpx.Response) -> None:
        """Belt and braces: the socket's remote address passes the policy too."""
        stream = response.extensions.get("network_stream")
        peer = stream.get_extra_info("server_addr") if stream is not None else None
        if not peer:
            return
        address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
        reason = self.allow.refusal(response.url.host, address)
        if reason is not None:
            raise AddressRefused(refused_message(response.url.host, [(address, reason)]))

    async def _read(self, response: httpx.Response, what: str) -> bytes:
        """The body, failing once more than ``max_response_bytes`` arrive (decoded)."""
        cap = self.max_response_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise TaskFailed(
                f"{what}: the answer is {int(declared)} bytes; chronoq.http "
                f"reads at most {cap} bytes"
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > cap:
                raise TaskFailed(
                    f"{what}: the answer is larger than {cap} bytes; "
                    f"chronoq.http reads at most {cap} bytes"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
