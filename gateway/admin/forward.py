"""Admin requests that land on a replica that does not lead are answered by the leader.

The control plane runs in one replica (the lease holder, `control.leader`), and only it takes changes.
A load balancer, or the kernel spreading connections over the workers of one machine, sends an
admin request to any replica; this ASGI wrapper passes it on, as it came (method, path, query,
body, the caller's credentials; it keeps no cookies of its own), to the address the leader
published in its lease, and streams the leader's answer back. So every replica answers the admin API
(and the console) the same, and the token is checked, and the change audited, by the leader as for any caller.

While there is no leader (a handover is under way) the request waits up to `wait_s` for one, then
gets 503; when the state database is what keeps anyone from leading, it gets 503 at once, saying so.
A forwarded request that reaches a replica which does not lead (it lost the lease in the
meantime) is refused with 503 rather than passed on again, so requests never go round in circles.
A request that reaches the lease holder while its control plane is still starting waits for the start
(up to `wait_s`) and is then served there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx
import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.control.leader import LeaderElection
from gateway.errors import ControlPlaneUnavailable, StoreUnavailable

log = logging.getLogger(__name__)

FORWARDED = "x-sluice-forwarded"
HERE = "this replica"
"""`_leader_address`'s answer when this replica leads: serve the request here."""
_HOP_BY_HOP = frozenset(
    (b"host", b"content-length", b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade")
)


class LeaderForwarder:
    def __init__(
        self,
        app: ASGIApp,
        election: LeaderElection,
        *,
        prefixes: Sequence[str] = ("/admin/", "/console"),
        wait_s: float = 10.0,
    ) -> None:
        self.app = app
        self.election = election
        self.prefixes = tuple(prefixes)
        self.wait_s = wait_s
        # No cookie jar: the client is shared by every caller, so a Set-Cookie it kept (a console login's
        # session) would go with the next caller's requests and log them in as someone else.
        no_cookies = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(10.0, read=None), follow_redirects=False, cookies=no_cookies
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.election.is_leader or not scope["path"].startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        if not self.election.holds_lease and any(key == FORWARDED.encode() for key, _ in scope["headers"]):
            await _error(send, 503, "this replica no longer leads the control plane; retry")
            return
        body = await _body(receive)
        try:
            address = await self._leader_address()
        except StoreUnavailable as exc:  # nobody can lead, or change anything, without the state database
            await _error(send, 503, str(exc))
            return
        if address is None:
            await _error(send, 503, f"no control-plane leader is reachable after {self.wait_s:g} s; retry")
        elif address is HERE:
            await self.app(scope, _replay(body, receive), send)
        else:
            await self._forward(scope, body, address, send)

    async def _leader_address(self) -> str | None:
        """The leader's address, HERE once this replica leads (its control plane started), or None when no
        leader turned up within `wait_s`."""
        deadline = time.monotonic() + self.wait_s
        refresh = False
        while True:
            if self.election.is_leader:
                return HERE
            if self.election.holds_lease:  # elected, the control plane still starting
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.election.wait_started(), max(0.0, deadline - time.monotonic()))
                if self.election.is_leader:
                    return HERE
            lease = await self.election.current_leader(refresh=refresh)
            if lease is not None and lease.address and lease.holder != self.election.holder:
                return lease.address
            if self.election.unavailable is not None:
                raise self.election.unavailable  # no replica can take the lease without the database
            if time.monotonic() >= deadline:
                return None
            refresh = True
            await asyncio.sleep(0.2)

    async def _forward(self, scope: Scope, body: bytes, address: str, send: Send) -> None:
        headers = [(k, v) for k, v in scope["headers"] if k not in _HOP_BY_HOP]
        headers.append((FORWARDED.encode(), self.election.holder.encode()))
        url = address.rstrip("/") + scope["path"]
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        request = self._client.build_request(scope["method"], url, headers=headers, content=body)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            log.warning("forwarding %s %s to the leader at %s failed: %s", scope["method"], scope["path"], address, exc)
            with contextlib.suppress(StoreUnavailable):
                await self.election.current_leader(refresh=True)
            await _error(send, 503, "the control-plane leader could not be reached; retry")
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP],
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()

    async def call_leader(self, path: str, authorization: str | None, body: bytes) -> tuple[int, str]:
        """POST `body` to `path` on the leader, as the caller (`authorization`), for a change that did not come
        over HTTP (a gRPC call); returns the leader's status and its error message ("" on success). Raises
        ControlPlaneUnavailable when there is no leader to take it, as the HTTP path answers 503."""
        if self.election.is_leader:
            raise ControlPlaneUnavailable("this replica leads the control plane: apply the change here")
        address = await self._leader_address()
        if address is None or address is HERE:  # HERE: elected meanwhile; the caller's check comes first
            raise ControlPlaneUnavailable(f"no control-plane leader is reachable after {self.wait_s:g} s; retry")
        headers = {FORWARDED: self.election.holder, "content-type": "application/json"}
        if authorization is not None:
            headers["authorization"] = authorization
        try:
            response = await self._client.post(address.rstrip("/") + path, headers=headers, content=body)
        except httpx.HTTPError as exc:
            log.warning("forwarding POST %s to the leader at %s failed: %s", path, address, exc)
            raise ControlPlaneUnavailable("the control-plane leader could not be reached; retry") from None
        if response.status_code == 200:
            return 200, ""
        try:
            message = str(orjson.loads(response.content)["error"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            message = response.text[:500]
        return response.status_code, message

    async def aclose(self) -> None:
        await self._client.aclose()


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The request's body once more (it was read to be forwarded), then the connection's own messages."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


async def _error(send: Send, status: int, message: str) -> None:
    body = orjson.dumps({"error": message})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
