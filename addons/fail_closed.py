"""One registration path for the broker's hooks: each one fails closed, and says so.

mitmproxy's addon manager logs an exception from a hook and lets the flow go on: a request
whose decision raised would be forwarded as the agent sent it, an answer whose scrub raised
passed on unscrubbed. So no broker hook is handed to mitmproxy bare: ``guard`` wraps every
hook an addon defines (by mitmproxy's own list of hook names) so that an exception, raised at
once or by the coroutine the hook returned, ends in the hook's fallback:

- a request not yet decided (``http_connect``, ``requestheaders``, ``request``) is denied
  (503 internal_error; nothing is sent);
- an answer (``responseheaders``, ``response``) is withheld (502 response_withheld), or cut
  once its headers are gone; a WebSocket message is dropped and the connection cut;
- any other flow (TCP, UDP, DNS, a failed flow) is killed; an upstream dial is refused; an
  upstream connection whose bookkeeping failed is closed, a client's likewise;
- hooks with no flow to stop (handshake outcomes, disconnects) only log and record.

Every fallback writes a ``hook_failed`` audit record naming the addon's hook and the error's
type (never its message: it may quote a secret), with the request's fields when there is one.
The lifecycle hooks (``load``, ``configure``, ``running``, ``done``, ``update``) are not
wrapped: an ``OptionsError`` from ``configure`` must reach mitmproxy, which refuses the option.

The hand-written ``except`` blocks inside hooks stay where they choose a more precise answer
(an admission refused with the tunnel's own code, a certificate not presented); this wrapper is
what catches everything they do not.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, TypedDict

# Imported for mitmproxy's hook registry: each module registers the hooks it defines.
import mitmproxy.addonmanager
import mitmproxy.log
import mitmproxy.proxy.layers
import mitmproxy.proxy.layers.dns
import mitmproxy.proxy.server_hooks
import mitmproxy.tls  # noqa: F401
from broker_proxy.addons import connection_limits, flow_adapter
from mitmproxy import connection, flow, hooks, http
from mitmproxy.proxy import server_hooks

from broker_proxy.decision.upstream_failure import dial_refusal
from broker_proxy.request import codes
from broker_proxy.request.outbound import Denied

log = logging.getLogger("broker_proxy.addon")

EVENT = "hook_failed"
GUARDED = "__broker_fail_closed__"  # set on every wrapper: the hook it wraps
LIFECYCLE = frozenset({"load", "configure", "running", "done", "update"})
REQUEST_HOOKS = frozenset({"http_connect", "requestheaders", "request",
                           "http_connect_upstream"})
ANSWER_HOOKS = frozenset({"responseheaders", "response"})


class AuditSink(Protocol):
    def append(self, event: str, *, durable: bool = False,
               **fields: object) -> dict[str, Any]: ...


Hook = Callable[..., Awaitable[None] | None]


class RequestFields(TypedDict, total=False):
    """The request's fields of a ``hook_failed`` record, as a decision's record has them."""

    method: str
    scheme: str
    host: str
    port: int
    path: str
    status: int | None


def hook_names() -> frozenset[str]:
    """Every hook mitmproxy may call on an addon, from mitmproxy's own registry."""
    return frozenset(hooks.all_hooks)


def hooks_of(addon: object) -> list[str]:
    """The hook names an addon defines (what mitmproxy's manager would call), sorted."""
    return sorted(name for name in hook_names() - LIFECYCLE
                  if callable(getattr(addon, name, None)))


def guard(addons: Iterable[Any], audit: Callable[[], AuditSink | None]) -> list[Any]:
    """Wrap every hook of every addon fail-closed, in place; returns the addons."""
    guarded = list(addons)
    for addon in guarded:
        for name in hooks_of(addon):
            hook = getattr(addon, name)
            if getattr(hook, GUARDED, None) is None:
                setattr(addon, name, wrap(type(addon).__name__, name, hook, audit))
    return guarded


def wrap(owner: str, name: str, hook: Hook, audit: Callable[[], AuditSink | None]) -> Hook:
    """`hook` that, whatever it raises (now or from its coroutine), runs `name`'s fallback."""
    where = f"{owner}.{name}"

    def failed(args: tuple[Any, ...], error: BaseException) -> None:
        log.error("%s hook failed: %s", where, type(error).__name__)
        try:
            what = fail(name, args[0] if args else None)
        except Exception as again:  # the fallback itself: log, record what we can
            log.error("%s fallback failed: %s", where, type(again).__name__)
            what = "failed"
        record(audit(), where, error, what, args[0] if args else None)

    async def awaited(result: Awaitable[None], args: tuple[Any, ...]) -> None:
        try:
            await result
        except Exception as error:
            failed(args, error)

    @functools.wraps(hook)
    def guarded(*args: Any) -> Awaitable[None] | None:
        try:
            result = hook(*args)
        except Exception as error:
            failed(args, error)
            return None
        if result is not None and inspect.isawaitable(result):
            return awaited(result, args)
        return result

    setattr(guarded, GUARDED, hook)
    return guarded


def fail(name: str, subject: object) -> str:
    """Stop what hook `name` was called about; returns what was done (for the record)."""
    if isinstance(subject, http.HTTPFlow):
        if name in REQUEST_HOOKS:
            # The words the hand-written handlers used before this wrapper, kept.
            message = ("the broker could not decide" if name == "http_connect"
                       else "the broker could not decide; nothing was sent")
            flow_adapter.deny(subject, Denied(503, codes.INTERNAL_ERROR, message))
            return "denied"
        if name in ANSWER_HOOKS and subject.response is not None and not (
                name == "response" and subject.response.stream):
            denied = Denied(502, codes.RESPONSE_WITHHELD, "the answer could not be scrubbed")
            subject.response = http.Response.make(502, denied.body(), denied.headers())
            return "withheld"
        if name == "websocket_message" and subject.websocket is not None \
                and subject.websocket.messages:
            subject.websocket.messages[-1].drop()
    if isinstance(subject, flow.Flow):
        if subject.killable:
            subject.kill()
        return "killed"
    if isinstance(subject, server_hooks.ServerConnectionHookData):
        if name == "server_connect":
            subject.server.error = dial_refusal("connect_failed",
                                                "the broker could not check the upstream address")
            return "refused"
        if name == "server_connected":
            connection_limits.close_server(subject.client, subject.server)
            return "closed"
    if isinstance(subject, connection.Client) and name == "client_connected":
        connection_limits.close_client(subject)
        return "closed"
    return "logged"


def record(audit: AuditSink | None, where: str, error: BaseException, what: str,
           subject: object) -> None:
    """The ``hook_failed`` record; a log that cannot write leaves the log line above."""
    if audit is None:
        return
    fields: RequestFields = {}
    if isinstance(subject, http.HTTPFlow):
        request = subject.request
        fields = {"method": request.method, "scheme": request.scheme, "host": request.host,
                  "port": request.port, "path": request.path,
                  "status": subject.response.status_code if subject.response else None}
    try:
        audit.append("hook_failed", decision="deny", reason=codes.INTERNAL_ERROR, hook=where,
                     hook_error=type(error).__name__, hook_outcome=what, **fields)
    except Exception as again:
        log.error("%s: its hook_failed record could not be written: %s", where,
                  type(again).__name__)
