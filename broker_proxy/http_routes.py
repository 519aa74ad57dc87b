"""The admin listener's routing: one route table, one 404/405, one role check, one error type.

The admin API (grants), the approval routes (held requests) and the console's API routes each
declare their routes here as (method, path pattern, handler, action). The dispatcher in
admin_api.py finds the route, answers 404 for a path no route has and 405 (with `Allow`) for a
method the path does not take, then asks the caller's principal for the route's action: a
refusal is 403 `role_required`, naming the role that would allow it. One place decides what a
caller may do, so a route cannot be added without saying which action it needs.

Standard library only: the core stays free of web frameworks, like the server it runs in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from broker_proxy.errors import BrokerError
from broker_proxy.identity.roles import Action, Principal, RoleRefused


class ApiError(BrokerError):
    """A refusal the admin listener answers as JSON `{"error": code, "message": message}`.

    The message is the one line the caller reads; `allow` is the `Allow` header of a 405.
    """

    def __init__(self, status: int, code: str, message: str, allow: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.allow = allow


class Headers(Protocol):
    """A request's headers: the server's email.message.Message (case-insensitive), a dict in
    tests."""

    def get(self, name: str, /) -> str | None: ...


@dataclass(frozen=True, slots=True)
class RouteCall:
    """What a handler is given: the matched path's parameters and the request's parts.

    `body()` reads the JSON body (once; `{}` when empty) and `by(fields)` names who changes
    something, for the audit record, from the principal and the body's `by` field.
    """

    method: str
    params: dict[str, str]
    query: str
    body: Callable[[], dict[str, Any]]
    by: Callable[[dict[str, Any]], str]
    principal: Principal


Handler = Callable[[RouteCall], tuple[int, object]]


@dataclass(frozen=True, slots=True)
class Route:
    """`pattern` is a path whose `{name}` segments match any one segment (`/v1/grants/{id}`)."""

    method: str
    pattern: str
    handler: Handler
    action: Action

    def match(self, parts: Sequence[str]) -> dict[str, str] | None:
        """The `{name}` segments' values when `parts` (the path split on /) fits the pattern."""
        wanted = split_path(self.pattern)
        if len(wanted) != len(parts):
            return None
        params: dict[str, str] = {}
        for want, part in zip(wanted, parts, strict=True):
            if want.startswith("{") and want.endswith("}"):
                params[want[1:-1]] = part
            elif want != part:
                return None
        return params


def split_path(path: str) -> list[str]:
    """The path's segments; leading and trailing slashes do not count (`/v1/grants/`)."""
    return path.strip("/").split("/") if path != "/" else []


def require_method(method: str, allowed: str) -> None:
    """405 `method_not_allowed` unless `method` is one of `allowed` ("GET, POST")."""
    if method not in allowed.split(", "):
        raise ApiError(405, "method_not_allowed", f"use {allowed}", allow=allowed)


def find_route(routes: Sequence[Route], method: str, path: str
               ) -> tuple[Route, dict[str, str]]:
    """The route for this method and path, with its parameters; 404 or 405 otherwise."""
    parts = split_path(path)
    matched = [(route, params) for route in routes
               if (params := route.match(parts)) is not None]
    if not matched:
        raise ApiError(404, "not_found", "no such route")
    methods = list(dict.fromkeys(route.method for route, _ in matched))
    require_method(method, ", ".join(methods))
    return next((route, params) for route, params in matched if route.method == method)


def require_action(principal: Principal, action: Action) -> None:
    """403 `role_required` when the principal's role does not allow the action."""
    try:
        principal.require(action)
    except RoleRefused as refused:
        raise ApiError(403, "role_required",
                       f"role {action.required_role.label} required: {refused}") from None
