"""The scoring routes answered without Starlette's middleware stack.

A Starlette request passes its error middleware, its exception middleware, two exception-
handling wrappers, the router's match over every route and the route's request/response
adapter before it reaches the endpoint, and the response passes the wrappers' `send` again on
its way out. For `/v1/rank` at 600 requests/s those layers held ~7% of the server's GIL time
(py-spy); skipping them saves ~22 µs a request driving the app in-process (0.92×), within the
host's noise through sockets (0.99× of the server's CPU: uvicorn and the batcher dominate,
benchmarks/RESULTS.md). The endpoints of the hot routes already turn every failure into an
HTTP answer (`app._endpoint`), so none of those layers can change what they return; those
routes are looked up by exact method and path here and called directly. Every other request —
other routes, a trailing slash, a HEAD, the lifespan — takes Starlette's full path, unchanged.
An exception that escapes an endpoint anyway reaches uvicorn, which logs it and answers 500
as Starlette's error middleware would.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]


class DirectRoutes(Starlette):
    """Starlette whose routes at the `direct` paths skip its middleware stack: each of their
    methods (HEAD aside) is called as the same `Route`'s endpoint, so the route table stays
    the one declaration (OpenAPI, a 405 for another method, a trailing slash: Starlette's)."""

    def __init__(self, *, direct: Iterable[str], routes: list[Route], **kwargs) -> None:
        super().__init__(routes=routes, **kwargs)
        paths = set(direct)
        self.direct: dict[tuple[str, str], Endpoint] = {
            (method, route.path): route.endpoint
            for route in routes
            if isinstance(route, Route) and route.path in paths
            for method in route.methods or ()
            if method != "HEAD"
        }
        if missing := paths - {path for _, path in self.direct}:
            raise ValueError(f"direct paths without a route: {sorted(missing)}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            endpoint = self.direct.get((scope["method"], scope["path"]))
            if endpoint is not None:
                scope["app"] = self
                response = await endpoint(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
