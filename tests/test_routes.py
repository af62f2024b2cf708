"""Route keys for every router topology (spec 2), in-process through httpx."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Host, Mount, Route, Router

from asgi_perf import PerfMiddleware


async def ok(request: Request) -> Response:
    return PlainTextResponse("ok")


async def keys_after(
    client_for: Any, app: Any, requests: list[tuple[str, str]], **perf: Any
) -> dict[str, dict[str, Any]]:
    """Send ``requests`` through ``PerfMiddleware(app)``; the routes by key."""
    mw = PerfMiddleware(app, **perf)
    async with client_for(mw) as client:
        for method, path in requests:
            response = await client.request(method, path)
            assert response.status_code < 500, (method, path, response.text)
    snap = mw.snapshot()
    assert snap["requests"] == len(requests)
    return {r["route"]: r for r in snap["routes"]}


def counts(routes: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {k: r["count"] for k, r in routes.items()}


# --------------------------------------------------------------------------- FastAPI


async def test_fastapi_routes_and_nested_router_prefixes(client_for, fastapi_app):
    routes = await keys_after(
        client_for,
        fastapi_app(),
        [
            ("GET", "/"),
            ("GET", "/items/1"),
            ("GET", "/items/2"),
            ("POST", "/items"),
            ("GET", "/api/health"),
            ("GET", "/api/v1/users/ann"),
            ("GET", "/api/v1/users/bo"),
            ("GET", "/admin/reports/fri"),
        ],
    )
    assert counts(routes) == {
        "GET /": 1,
        "GET /items/{item_id}": 2,
        "POST /items": 1,
        "GET /api/health": 1,
        "GET /api/v1/users/{user_id}": 2,
        "GET /admin/reports/{day}": 1,
    }
    nested = routes["GET /api/v1/users/{user_id}"]
    assert (nested["method"], nested["template"]) == ("GET", "/api/v1/users/{user_id}")


async def test_fastapi_router_prefix_plus_include_prefix_plus_nesting(client_for):
    inner = APIRouter(prefix="/inner")

    @inner.get("/{thing_id}")
    async def thing(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    outer = APIRouter(prefix="/outer")
    outer.include_router(inner, prefix="/mid")
    app = FastAPI()
    app.include_router(outer, prefix="/x")
    routes = await keys_after(client_for, app, [("GET", "/x/outer/mid/inner/42")])
    assert counts(routes) == {"GET /x/outer/mid/inner/{thing_id}": 1}


async def test_same_router_included_twice_gives_two_keys(client_for):
    shared = APIRouter()

    @shared.get("/ping/{n}")
    async def ping(n: int) -> dict[str, int]:
        return {"n": n}

    app = FastAPI()
    app.include_router(shared, prefix="/v1")
    app.include_router(shared, prefix="/v2")
    routes = await keys_after(
        client_for,
        app,
        [
            ("GET", "/v1/ping/1"),
            ("GET", "/v2/ping/2"),
            ("GET", "/v2/ping/3"),
            ("GET", "/v1/ping/4"),
        ],
    )
    assert counts(routes) == {"GET /v1/ping/{n}": 2, "GET /v2/ping/{n}": 2}


async def test_fastapi_path_converter_and_validation_errors(client_for):
    app = FastAPI()

    @app.get("/files/{file_path:path}")
    async def files(file_path: str) -> dict[str, str]:
        return {"path": file_path}

    @app.get("/n/{n}")
    async def number(n: int) -> dict[str, int]:
        return {"n": n}

    routes = await keys_after(
        client_for,
        app,
        [("GET", "/files/a/b/c.txt"), ("GET", "/files/d"), ("GET", "/n/1"), ("GET", "/n/x")],
    )
    assert counts(routes) == {"GET /files/{file_path}": 2, "GET /n/{n}": 2}
    assert routes["GET /n/{n}"]["status"]["4xx"] == 1  # the 422 still belongs to the route


def things_app() -> FastAPI:
    sub = FastAPI()
    things = APIRouter(prefix="/things")

    @things.get("/{thing_id}")
    async def thing(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    sub.include_router(things)

    @sub.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "sub"}

    return sub


async def test_fastapi_sub_application_mount(client_for):
    app = FastAPI()

    @app.get("/top")
    async def top() -> dict[str, bool]:
        return {"ok": True}

    app.mount("/sub", things_app())
    routes = await keys_after(
        client_for,
        app,
        [
            ("GET", "/top"),
            ("GET", "/sub/things/a"),
            ("GET", "/sub/things/b"),
            ("GET", "/sub/hello"),
            ("GET", "/sub/missing"),
        ],
    )
    assert counts(routes) == {
        "GET /top": 1,
        "GET /sub/things/{thing_id}": 2,
        "GET /sub/hello": 1,
        "<unmatched>": 1,
    }


async def test_fastapi_app_under_a_templated_starlette_mount(client_for):
    app = Starlette(routes=[Mount("/tenants/{tenant}", app=things_app())])
    routes = await keys_after(
        client_for,
        app,
        [("GET", "/tenants/acme/things/1"), ("GET", "/tenants/globex/things/2")],
    )
    assert counts(routes) == {"GET /tenants/{tenant}/things/{thing_id}": 2}


# --------------------------------------------------------------------------- Starlette


async def test_starlette_mounts_nested_templated_and_static(client_for, starlette_app):
    routes = await keys_after(
        client_for,
        starlette_app(),
        [
            ("GET", "/"),
            ("GET", "/items/3"),
            ("GET", "/tenants/acme/orders/1"),
            ("GET", "/tenants/globex/orders/2"),
            ("GET", "/tenants/acme/profile"),
            ("GET", "/tenants/acme/unknown"),
            ("GET", "/admin/reports/2023"),
            ("GET", "/admin/reports/not-a-year"),
            ("GET", "/static/hello.txt"),
            ("GET", "/static/missing.txt"),
            ("GET", "/items/not-an-int"),
        ],
    )
    assert counts(routes) == {
        "GET /": 1,
        "GET /items/{item_id}": 1,
        "GET /tenants/{tenant}/orders/{order_id}": 2,
        "GET /tenants/{tenant}/profile": 1,
        "GET /admin/reports/{year}": 1,
        "GET /static/{path}": 2,
        "<unmatched>": 3,
    }
    assert "acme" not in json.dumps(routes)


async def test_nested_templated_mounts(client_for):
    app = Starlette(
        routes=[
            Mount(
                "/orgs/{org}",
                routes=[
                    Mount("/teams/{team}", routes=[Route("/members/{member}", ok)]),
                    Route("/about", ok),
                ],
            ),
            Mount("/docs", routes=[Route("/intro", ok)]),
            Mount("/{lang}", routes=[Route("/about", ok)]),
        ]
    )
    routes = await keys_after(
        client_for,
        app,
        [
            ("GET", "/orgs/a/teams/red/members/m1"),
            ("GET", "/orgs/b/teams/blue/members/m2"),
            ("GET", "/orgs/a/about"),
            ("GET", "/docs/intro"),
            ("GET", "/en/about"),
            ("GET", "/fr/about"),
        ],
    )
    assert counts(routes) == {
        "GET /orgs/{org}/teams/{team}/members/{member}": 2,
        "GET /orgs/{org}/about": 1,
        "GET /docs/intro": 1,
        "GET /{lang}/about": 2,
    }


async def test_one_router_mounted_at_two_places_gives_two_keys(client_for):
    shared = Router(routes=[Route("/status/{code}", ok)])
    app = Starlette(routes=[Mount("/a", app=shared), Mount("/b", app=shared)])
    routes = await keys_after(
        client_for,
        app,
        [("GET", "/a/status/1"), ("GET", "/b/status/2"), ("GET", "/a/status/3")],
    )
    assert counts(routes) == {"GET /a/status/{code}": 2, "GET /b/status/{code}": 1}


async def test_host_routing(client_for):
    api = Router(routes=[Route("/users/{user_id}", ok)])
    app = Starlette(routes=[Host("api.example.com", app=api), Route("/users/{name}", ok)])
    mw = PerfMiddleware(app)
    async with client_for(mw) as client:
        r1 = await client.get("/users/1", headers={"host": "api.example.com"})
        r2 = await client.get("/users/2")
        assert (r1.status_code, r2.status_code) == (200, 200)
    assert counts({r["route"]: r for r in mw.snapshot()["routes"]}) == {
        "GET /users/{user_id}": 1,
        "GET /users/{name}": 1,
    }


async def test_mount_inside_host_routing(client_for):
    api = Router(routes=[Mount("/v1", routes=[Route("/users/{uid}", ok)])])
    app = Starlette(routes=[Host("api.example.com", app=api), Route("/", ok)])
    mw = PerfMiddleware(app)
    async with client_for(mw) as client:
        response = await client.get("/v1/users/1", headers={"host": "api.example.com"})
        assert response.status_code == 200
    assert [r["route"] for r in mw.snapshot()["routes"]] == ["GET /v1/users/{uid}"]


async def test_starlette_converters_are_dropped_from_templates(client_for):
    app = Starlette(
        routes=[
            Route("/i/{n:int}", ok),
            Route("/f/{x:float}", ok),
            Route("/p/{rest:path}", ok),
            Mount("/u/{uid:uuid}", routes=[Route("/x", ok)]),
        ]
    )
    routes = await keys_after(
        client_for,
        app,
        [
            ("GET", "/i/1"),
            ("GET", "/f/1.5"),
            ("GET", "/p/a/b"),
            ("GET", "/u/6f1c3a66-2f7c-4c62-8cde-3b5b1d9b0a11/x"),
        ],
    )
    assert set(routes) == {"GET /i/{n}", "GET /f/{x}", "GET /p/{rest}", "GET /u/{uid}/x"}


# --------------------------------------------------------------------------- methods


async def test_head_on_a_starlette_get_route(client_for):
    app = Starlette(routes=[Route("/items/{item_id}", ok)])
    routes = await keys_after(client_for, app, [("HEAD", "/items/1"), ("GET", "/items/2")])
    assert counts(routes) == {"HEAD /items/{item_id}": 1, "GET /items/{item_id}": 1}
    assert routes["HEAD /items/{item_id}"]["status"]["2xx"] == 1


@pytest.mark.parametrize("framework", ["fastapi", "starlette"])
async def test_method_not_allowed_is_counted_without_the_raw_path(client_for, framework):
    if framework == "fastapi":
        app: Any = FastAPI()

        @app.get("/items/{item_id}")
        async def item(item_id: int) -> dict[str, int]:
            return {"id": item_id}

    else:
        app = Starlette(routes=[Route("/items/{item_id}", ok, methods=["GET"])])
    mw = PerfMiddleware(app)
    async with client_for(mw) as client:
        response = await client.post("/items/12345")
        assert response.status_code == 405
    [route] = mw.snapshot()["routes"]
    assert route["route"] in {"POST /items/{item_id}", "<unmatched>"}
    assert route["count"] == 1
    assert route["status"]["4xx"] == 1
    assert "12345" not in json.dumps(mw.snapshot())


async def test_invented_methods_do_not_use_up_the_route_cap(asgi):
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @app.get("/users/{user_id}")
    async def user(user_id: str) -> dict[str, str]:
        return {"id": user_id}

    mw = PerfMiddleware(app, max_routes=5)
    assert (await asgi(mw, "GET", "/items/1")).status == 200
    for i in range(20):
        assert (await asgi(mw, f"M{i}", "/items/1")).status == 405
    assert (await asgi(mw, "GET", "/users/u")).status == 200
    keys = {r["route"]: r["count"] for r in mw.snapshot()["routes"]}
    assert keys.get("GET /users/{user_id}") == 1, keys
    assert sum(keys.values()) == 22


async def test_redirect_slashes_is_unmatched(client_for, fastapi_app):
    routes = await keys_after(client_for, fastapi_app(), [("GET", "/items/3/")])
    assert counts(routes) == {"<unmatched>": 1}
    assert routes["<unmatched>"]["status"]["3xx"] == 1


# --------------------------------------------------------------------------- route_key


async def test_route_key_names_routes_of_a_raw_app(client_for, raw_app):
    def key(scope: dict[str, Any]) -> str:
        first = scope["path"].strip("/").split("/")[0]
        return f"{scope['method']} /{first}/..."

    routes = await keys_after(
        client_for, raw_app, [("GET", "/a/1"), ("GET", "/a/2"), ("POST", "/b/x")], route_key=key
    )
    assert counts(routes) == {"GET /a/...": 2, "POST /b/...": 1}
    assert (routes["POST /b/..."]["method"], routes["POST /b/..."]["template"]) == (
        "POST",
        "/b/...",
    )


async def test_route_key_overrides_the_framework(client_for, fastapi_app):
    routes = await keys_after(
        client_for,
        fastapi_app(),
        [("GET", "/items/1"), ("GET", "/api/health")],
        route_key=lambda scope: "everything",
    )
    assert counts(routes) == {"everything": 2}


async def test_route_key_sees_the_matched_route(client_for, fastapi_app):
    def key(scope: dict[str, Any]) -> str:
        route = scope.get("route")
        return f"name:{route.name}" if route is not None else "none"

    routes = await keys_after(client_for, fastapi_app(), [("GET", "/items/1")], route_key=key)
    assert counts(routes) == {"name:get_item": 1}


@pytest.mark.parametrize("bad", ["raises", "empty"])
async def test_route_key_failure_falls_back_to_unmatched_and_serves(client_for, raw_app, bad):
    def key(scope: dict[str, Any]) -> str:
        if bad == "raises":
            raise KeyError("no such thing")
        return ""

    mw = PerfMiddleware(raw_app, route_key=key)
    async with client_for(mw) as client:
        response = await client.get("/x")
        assert (response.status_code, response.text) == (200, "hello")
    snap = mw.snapshot()
    assert {r["route"]: r["count"] for r in snap["routes"]} == {"<unmatched>": 1}
    assert snap["internal_errors"] == (1 if bad == "raises" else 0)


async def test_route_key_values_are_capped_by_max_routes(asgi, raw_app):
    mw = PerfMiddleware(raw_app, route_key=lambda scope: scope["path"], max_routes=4)
    for i in range(50):
        await asgi(mw, "GET", f"/p{i}")
    keys = {r["route"]: r["count"] for r in mw.snapshot()["routes"]}
    assert len(keys) == 5
    assert keys["<other>"] == 46


async def test_unmatched_and_other_do_not_count_towards_the_cap(asgi):
    app = Starlette(routes=[Route(f"/r{i}", ok) for i in range(5)])
    mw = PerfMiddleware(app, max_routes=2)
    for path in ("/nope", "/r0", "/r1", "/r2", "/r3", "/nope2"):
        await asgi(mw, "GET", path)
    keys = {r["route"]: r["count"] for r in mw.snapshot()["routes"]}
    assert keys == {"<unmatched>": 2, "GET /r0": 1, "GET /r1": 1, "<other>": 2}


async def test_keys_are_stable_across_many_requests(client_for, starlette_app):
    # The key of a route is memoised; alternating routes and mounts must not mix them.
    app = starlette_app()
    plan = [
        ("GET", "/tenants/a/profile"),
        ("GET", "/tenants/b/orders/1"),
        ("GET", "/items/1"),
        ("HEAD", "/items/1"),
        ("GET", "/tenants/a/nope"),
    ] * 40
    routes = await keys_after(client_for, app, plan)
    assert counts(routes) == {
        "GET /tenants/{tenant}/profile": 40,
        "GET /tenants/{tenant}/orders/{order_id}": 40,
        "GET /items/{item_id}": 40,
        "HEAD /items/{item_id}": 40,
        "<unmatched>": 40,
    }


async def test_json_endpoint_inside_mount_has_its_own_template(client_for):
    async def tenant_json(request: Request) -> Response:
        return JSONResponse(dict(request.path_params))

    app = Starlette(
        routes=[
            Mount("/t/{tenant}", routes=[Route("/", tenant_json), Route("/{page}", tenant_json)])
        ]
    )
    routes = await keys_after(client_for, app, [("GET", "/t/x/"), ("GET", "/t/y/home")])
    assert counts(routes) == {"GET /t/{tenant}/": 1, "GET /t/{tenant}/{page}": 1}
