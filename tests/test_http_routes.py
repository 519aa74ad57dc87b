"""The admin listener's one routing layer: 404, 405 with Allow, and 403 role_required."""

from __future__ import annotations

import pytest

from broker_proxy.admin_api import caller_principal
from broker_proxy.http_routes import ApiError, Route, RouteCall, find_route, require_action
from broker_proxy.identity.roles import Action, Principal, Role


def _answer(call: RouteCall) -> tuple[int, object]:
    return 200, call.params


ROUTES = [Route("GET", "/v1/things", _answer, Action.READ),
          Route("POST", "/v1/things", _answer, Action.ADMINISTER),
          Route("POST", "/v1/things/{id}/approve", _answer, Action.DECIDE)]


def test_a_path_no_route_has_is_404_and_a_method_it_does_not_take_is_405() -> None:
    with pytest.raises(ApiError) as missing:
        find_route(ROUTES, "GET", "/v1/things/x/revoke")
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    with pytest.raises(ApiError) as wrong:
        find_route(ROUTES, "DELETE", "/v1/things/")
    assert (wrong.value.status, wrong.value.allow, wrong.value.message) == (
        405, "GET, POST", "use GET, POST")


def test_the_route_found_carries_its_parameters_and_action() -> None:
    route, params = find_route(ROUTES, "POST", "/v1/things/h_1/approve")
    assert (route.action, params) == (Action.DECIDE, {"id": "h_1"})


def test_a_role_below_the_action_is_403_naming_the_role_that_allows_it() -> None:
    viewer = Principal("slack:U1", Role.VIEWER)
    with pytest.raises(ApiError) as refused:
        require_action(viewer, Action.DECIDE)
    assert (refused.value.status, refused.value.code) == (403, "role_required")
    assert "needs role approver" in refused.value.message
    require_action(Principal("slack:U2", Role.APPROVER), Action.DECIDE)


def test_the_bearer_token_holder_acts_as_admin() -> None:
    assert caller_principal(None, None).role is Role.ADMIN
