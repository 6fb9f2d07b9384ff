"""DirectRoutes: the hot routes skip Starlette's middleware stack; everything else keeps it."""

from __future__ import annotations

from contextlib import asynccontextmanager

import pytest
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from streamrec.serving.direct_routes import DirectRoutes


class _Tag:
    """A middleware that marks every response it sees (so a test can tell which path ran)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        async def tagged(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], (b"x-stack", b"starlette")]
            await send(message)

        await self.app(scope, receive, tagged)


def _app(events: list[str]) -> DirectRoutes:
    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse({"bytes": len(body), "auth": request.headers.get("authorization")})

    async def other(request: Request) -> PlainTextResponse:
        return PlainTextResponse("other")

    async def lifespan(app):
        events.append("start")
        yield
        events.append("stop")

    return DirectRoutes(
        direct=["/score"],
        routes=[Route("/score", echo, methods=["POST"]), Route("/other", other)],
        middleware=[Middleware(_Tag)],
        lifespan=asynccontextmanager(lifespan),
    )


def test_a_direct_route_is_answered_without_the_middleware_stack() -> None:
    events: list[str] = []
    with TestClient(_app(events)) as client:
        r = client.post("/score", content=b"x" * 70_000, headers={"Authorization": "Bearer t"})
        assert r.status_code == 200
        assert r.json() == {"bytes": 70_000, "auth": "Bearer t"}  # the whole body, the headers
        assert "x-stack" not in r.headers
        assert events == ["start"]  # the lifespan still goes through Starlette
    assert events == ["start", "stop"]


def test_every_other_request_takes_starlettes_path() -> None:
    with TestClient(_app([])) as client:
        other = client.get("/other")
        assert other.text == "other" and other.headers["x-stack"] == "starlette"
        wrong_method = client.get("/score")  # same path, another method: Starlette's 405
        assert wrong_method.status_code == 405 and wrong_method.headers["x-stack"] == "starlette"
        slash = client.post("/score/", content=b"{}", follow_redirects=False)
        assert slash.headers["x-stack"] == "starlette"  # not an exact match: the router decides
        assert client.get("/missing").status_code == 404


def test_a_direct_path_must_be_a_route() -> None:
    with pytest.raises(ValueError, match="/missing"):
        DirectRoutes(direct=["/missing"], routes=[Route("/other", lambda r: None)])
