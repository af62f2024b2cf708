"""Spec section 7: who may read ``/_perf``, and what its answers carry.

Client addresses other than 127.0.0.1 cannot come from a real socket in a
test, so most cases call the middleware in-process with the scope a server
would build; the loopback cases also run through real uvicorn.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from asgi_perf import PerfMiddleware

LOOPBACK = [
    ("127.0.0.1", 50000),
    ("127.8.9.10", 1),
    ("::1", 1),
    ("::ffff:127.0.0.1", 1),
]
REMOTE = [
    ("203.0.113.5", 1234),
    ("10.0.0.1", 1),
    ("192.168.1.20", 1),
    ("0.0.0.0", 1),
    ("::ffff:203.0.113.5", 1),
    ("2001:db8::1", 1),
    ("testclient", 50000),  # not an address at all
    ("localhost", 1),  # a name is not an address either
]
PERF_REQUESTS = [
    ("GET", "/_perf/stats"),
    ("GET", "/_perf/budgets"),
    ("GET", "/_perf/"),
    ("POST", "/_perf/reset"),
    ("GET", "/_perf/no-such-endpoint"),
]


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello")


def make_app(**perf: Any) -> PerfMiddleware:
    return PerfMiddleware(Starlette(routes=[Route("/hello/{name}", hello)]), **perf)


def assert_json_error(result: Any, status: int) -> dict[str, Any]:
    assert result.status == status, result.body
    assert result.header("content-type") == "application/json"
    body: dict[str, Any] = result.json()
    assert body["status"] == status
    assert isinstance(body["error"], str) and body["error"]
    return body


def auth(value: str | bytes) -> list[tuple[bytes, bytes]]:
    raw = value if isinstance(value, bytes) else value.encode("latin-1")
    return [(b"authorization", raw)]


# --------------------------------------------------------------------------- loopback rule


@pytest.mark.parametrize("client", LOOPBACK, ids=lambda c: c[0])
async def test_loopback_clients_are_answered(asgi, client):
    mw = make_app()
    assert (await asgi(mw, "GET", "/hello/a", client=client)).status == 200
    result = await asgi(mw, "GET", "/_perf/stats", client=client)
    assert result.status == 200
    assert result.json()["requests"] == 1


@pytest.mark.parametrize("client", REMOTE, ids=lambda c: c[0])
@pytest.mark.parametrize(("method", "path"), PERF_REQUESTS)
async def test_remote_clients_are_refused_everywhere_under_the_prefix(asgi, client, method, path):
    mw = make_app()
    assert (await asgi(mw, "GET", "/hello/a", client=client)).status == 200
    result = await asgi(mw, method, path, client=client)
    body = assert_json_error(result, 403)
    assert "loopback" in body["error"]
    # Nothing leaked and nothing cleared: the refused reset did not reset.
    assert "routes" not in body
    assert mw.snapshot()["requests"] == 1


async def test_client_unknown_unix_socket_is_refused(asgi):
    mw = make_app()
    assert_json_error(await asgi(mw, "GET", "/_perf/stats", client=None), 403)


@pytest.mark.parametrize(
    "header",
    [
        (b"x-forwarded-for", b"127.0.0.1"),
        (b"x-forwarded-for", b"203.0.113.5, 127.0.0.1"),
        (b"forwarded", b"for=127.0.0.1;proto=http"),
        (b"x-real-ip", b"127.0.0.1"),
        (b"X-Forwarded-For", b"127.0.0.1"),  # a server that does not lower-case names
        (b"Forwarded", b'for="[::1]"'),
    ],
    ids=lambda h: h[0].decode(),
)
async def test_forwarded_requests_are_not_loopback(asgi, header):
    mw = make_app()
    result = await asgi(mw, "GET", "/_perf/stats", client=("127.0.0.1", 1), headers=[header])
    assert_json_error(result, 403)


async def test_the_apps_own_routes_are_not_gated(asgi):
    mw = make_app(token="s3cret")
    result = await asgi(mw, "GET", "/hello/x", client=("203.0.113.5", 1))
    assert (result.status, result.body) == (200, b"hello")


# --------------------------------------------------------------------------- token rule


@pytest.mark.parametrize("client", [("127.0.0.1", 1), ("::1", 1), ("203.0.113.5", 1)])
@pytest.mark.parametrize(
    "headers",
    [
        [],
        auth("Bearer wrong"),
        auth("Bearer s3cre"),  # a prefix of the token
        auth("Bearer s3cret2"),  # the token is a prefix of this
        auth("Bearer"),
        auth("Bearer "),
        auth("Basic czNjcmV0"),
        auth("s3cret"),
        auth("Token s3cret"),
        [(b"x-api-key", b"s3cret")],
    ],
    ids=[
        "none",
        "wrong",
        "prefix",
        "longer",
        "scheme-only",
        "empty",
        "basic",
        "bare",
        "other-scheme",
        "other-header",
    ],
)
async def test_with_a_token_everyone_needs_it(asgi, client, headers):
    mw = make_app(token="s3cret")
    result = await asgi(mw, "GET", "/_perf/stats", client=client, headers=headers)
    body = assert_json_error(result, 401)
    assert "Bearer" in body["error"]
    assert (result.header("www-authenticate") or "").startswith("Bearer")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
@pytest.mark.parametrize("client", [("127.0.0.1", 1), ("203.0.113.5", 1)])
async def test_the_right_token_opens_the_door_from_anywhere(asgi, scheme, client):
    mw = make_app(token="s3cret")
    result = await asgi(mw, "GET", "/_perf/stats", client=client, headers=auth(f"{scheme} s3cret"))
    assert result.status == 200
    assert result.json()["schema"] == 1


async def test_the_token_beats_forwarded_headers(asgi):
    mw = make_app(token="s3cret")
    headers = [(b"x-forwarded-for", b"198.51.100.7"), *auth("Bearer s3cret")]
    result = await asgi(mw, "GET", "/_perf/stats", client=("127.0.0.1", 1), headers=headers)
    assert result.status == 200


async def test_token_from_the_environment(asgi, monkeypatch):
    monkeypatch.setenv("ASGI_PERF_TOKEN", "from-env")
    mw = make_app()
    assert_json_error(await asgi(mw, "GET", "/_perf/stats", client=("127.0.0.1", 1)), 401)
    result = await asgi(
        mw, "GET", "/_perf/stats", client=("198.51.100.7", 1), headers=auth("Bearer from-env")
    )
    assert result.status == 200


async def test_environment_token_overrides_the_keyword(asgi, monkeypatch):
    monkeypatch.setenv("ASGI_PERF_TOKEN", "from-env")
    mw = make_app(token="from-code")
    result = await asgi(mw, "GET", "/_perf/stats", headers=auth("Bearer from-code"))
    assert_json_error(result, 401)
    result = await asgi(mw, "GET", "/_perf/stats", headers=auth("Bearer from-env"))
    assert result.status == 200


async def test_refused_token_requests_do_not_reset(asgi):
    mw = make_app(token="s3cret")
    assert (await asgi(mw, "GET", "/hello/a")).status == 200
    assert_json_error(await asgi(mw, "POST", "/_perf/reset", headers=auth("Bearer no")), 401)
    assert mw.snapshot()["requests"] == 1
    ok = await asgi(mw, "POST", "/_perf/reset", headers=auth("Bearer s3cret"))
    assert ok.status == 200
    assert mw.snapshot()["requests"] == 0


# Tokens no request can match: refused at start-up, never a 401 for everyone.
UNUSABLE_TOKENS = {
    "leading-space": " s3cret",
    "trailing-space": "s3cret ",
    "trailing-newline": "s3cret\n",  # read from a file with its newline
    "crlf": "s3cret\r\n",
    "tab-inside": "s3\tcret",
    "nul-inside": "s3\x00cret",
    "del-inside": "s3\x7fcret",
    "non-ascii": "clé-secrète",
    "nbsp": "\u00a0s3cret",
    "empty": "",
}


def assert_token_error(message: str, token: str) -> None:
    assert "token: " in message, message
    # Logged and served: the message never repeats the secret.
    if token.strip():
        assert token.strip()[:4] not in message, message


@pytest.mark.parametrize("token", UNUSABLE_TOKENS.values(), ids=list(UNUSABLE_TOKENS))
def test_an_unusable_token_fails_start_up_when_strict(token):
    from asgi_perf import ConfigError

    with pytest.raises(ConfigError) as raised:
        make_app(token=token, strict=True)
    assert_token_error(str(raised.value), token)


@pytest.mark.parametrize("token", UNUSABLE_TOKENS.values(), ids=list(UNUSABLE_TOKENS))
async def test_an_unusable_token_is_a_503_naming_it_and_the_app_is_served(asgi, caplog, token):
    mw = make_app(token=token)
    assert mw.config_error is not None
    assert_token_error(mw.config_error, token)
    assert (await asgi(mw, "GET", "/hello/a")).status == 200
    body = assert_json_error(await asgi(mw, "GET", "/_perf/stats"), 503)
    assert body["option"] == "token"
    assert_token_error(body["reason"], token)
    # The token that failed opens nothing: the loopback rule stands in.
    assert_json_error(await asgi(mw, "GET", "/_perf/stats", client=REMOTE[0]), 403)
    bearer = auth(b"Bearer " + token.strip().encode())
    assert_json_error(await asgi(mw, "GET", "/_perf/stats", client=REMOTE[0], headers=bearer), 403)
    logged = [r.getMessage() for r in caplog.records if r.name == "asgi_perf"]
    assert len(logged) == 1 and "token: " in logged[0]
    assert_token_error(logged[0], token)


async def test_an_unusable_token_from_the_environment_is_not_repeated(asgi, monkeypatch):
    from asgi_perf import ConfigError

    monkeypatch.setenv("ASGI_PERF_TOKEN", "s3\x01cret")
    mw = make_app()
    body = assert_json_error(await asgi(mw, "GET", "/_perf/stats"), 503)
    assert body["option"] == "ASGI_PERF_TOKEN"
    assert "s3" not in body["error"] and "<hidden>" in body["error"]
    assert (await asgi(mw, "GET", "/hello/a")).status == 200
    with pytest.raises(ConfigError, match="ASGI_PERF_TOKEN=<hidden>: token: "):
        make_app(strict=True)


async def test_an_environment_token_is_read_stripped(asgi, monkeypatch):
    # Like every ASGI_PERF_* value: `export ASGI_PERF_TOKEN="$(cat file)\n"` works.
    monkeypatch.setenv("ASGI_PERF_TOKEN", " s3cret\n")
    mw = make_app(strict=True)
    assert (await asgi(mw, "GET", "/_perf/stats", headers=auth("Bearer s3cret"))).status == 200


@pytest.mark.parametrize("token", ["s3cret", "two words", "a-b_c.d~e+f/g=", "!#$%&'*:;<>?@[]^`{|}"])
async def test_a_printable_ascii_token_is_usable(asgi, token):
    mw = make_app(token=token, strict=True)
    result = await asgi(
        mw, "GET", "/_perf/stats", client=REMOTE[0], headers=auth("Bearer " + token)
    )
    assert result.status == 200


# --------------------------------------------------------------------------- authorize hook


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_authorize_hook_replaces_loopback_and_token_rules(asgi, is_async):
    seen: list[tuple[str, Any]] = []

    def decide(scope: dict[str, Any]) -> bool:
        seen.append((scope["path"], scope["client"]))
        return dict(scope["headers"]).get(b"x-role") == b"ops"

    async def decide_async(scope: dict[str, Any]) -> bool:
        return decide(scope)

    mw = make_app(token="s3cret", authorize=decide_async if is_async else decide)
    # Remote, no token, but the hook says yes.
    remote_ops = await asgi(
        mw, "GET", "/_perf/stats", client=("203.0.113.5", 1), headers=[(b"x-role", b"ops")]
    )
    assert remote_ops.status == 200
    # Loopback with the right token, but the hook says no.
    loopback_token = await asgi(mw, "GET", "/_perf/stats", headers=auth("Bearer s3cret"))
    body = assert_json_error(loopback_token, 403)
    assert "authorize" in body["error"]
    assert seen == [
        ("/_perf/stats", ("203.0.113.5", 1)),
        ("/_perf/stats", ("127.0.0.1", 50000)),
    ]


async def test_authorize_hook_gates_reset_too(asgi):
    mw = make_app(authorize=lambda scope: False)
    assert (await asgi(mw, "GET", "/hello/a")).status == 200
    assert_json_error(await asgi(mw, "POST", "/_perf/reset"), 403)
    assert mw.snapshot()["requests"] == 1


# --------------------------------------------------------------------------- headers


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_a_raising_authorize_hook_fails_closed_with_403_json(asgi, is_async, caplog):
    def broken(scope: dict[str, Any]) -> bool:
        raise RuntimeError("directory service down")

    async def broken_async(scope: dict[str, Any]) -> bool:
        return broken(scope)

    mw = make_app(authorize=broken_async if is_async else broken)
    result = await asgi(mw, "GET", "/_perf/stats")
    body = assert_json_error(result, 403)
    assert "authorize" in body["error"]
    assert mw.snapshot()["internal_errors"] == 1
    assert "directory service down" in caplog.text
    # The app itself is untouched by the broken hook.
    assert (await asgi(mw, "GET", "/hello/a")).status == 200


def every_kind_of_answer() -> list[tuple[str, str, bytes, list[tuple[bytes, bytes]], int]]:
    return [
        ("GET", "/_perf/stats", b"", [], 200),
        ("GET", "/_perf/", b"", [(b"accept", b"text/html")], 200),
        ("GET", "/_perf/", b"", [], 200),
        ("POST", "/_perf/reset", b"", [], 200),
        ("GET", "/_perf/stats", b"bogus=1", [], 400),
        ("GET", "/_perf/stats", b"", [(b"x-forwarded-for", b"1.2.3.4")], 403),
        ("GET", "/_perf/nope", b"", [], 404),
        ("PUT", "/_perf/stats", b"", [], 405),
        ("OPTIONS", "/_perf/stats", b"", [], 405),
    ]


@pytest.mark.parametrize(("method", "path", "query", "headers", "status"), every_kind_of_answer())
async def test_answers_carry_nosniff_and_no_cors_headers(
    asgi, method, path, query, headers, status
):
    origin = [
        (b"origin", b"https://evil.example"),
        (b"access-control-request-method", b"GET"),
    ]
    mw = make_app()
    result = await asgi(mw, method, path, query=query, headers=[*origin, *headers])
    assert result.status == status
    assert result.header("x-content-type-options") == "nosniff"
    assert not [h for h in result.header_names if h.startswith("access-control-")]


async def test_token_401_carries_nosniff_and_no_cors(asgi):
    mw = make_app(token="t")
    result = await asgi(mw, "GET", "/_perf/stats", headers=[(b"origin", b"https://x.example")])
    assert result.status == 401
    assert result.header("x-content-type-options") == "nosniff"
    assert not [h for h in result.header_names if h.startswith("access-control-")]


async def test_app_cors_middleware_does_not_reach_perf_answers(asgi):
    # The app allows every origin; PerfMiddleware, outermost, answers /_perf itself.
    app = Starlette(routes=[Route("/hello/{name}", hello)])
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"])
    app.add_middleware(PerfMiddleware)
    headers = [(b"origin", b"https://evil.example")]
    app_answer = await asgi(app, "GET", "/hello/x", headers=headers)
    assert app_answer.header("access-control-allow-origin") == "*"  # the app's own CORS works
    perf_answer = await asgi(app, "GET", "/_perf/stats", headers=headers)
    assert perf_answer.status == 200
    assert not [h for h in perf_answer.header_names if h.startswith("access-control-")]


async def test_query_strings_headers_and_raw_paths_are_not_stored(asgi):
    mw = make_app()
    result = await asgi(
        mw,
        "GET",
        "/hello/hunter2-path",
        query=b"password=hunter2-query",
        headers=[(b"x-api-key", b"hunter2-header"), (b"cookie", b"session=hunter2-cookie")],
    )
    assert result.status == 200
    dump = json.dumps(mw.snapshot(histograms=True))
    assert "hunter2" not in dump
    assert "GET /hello/{name}" in dump


# --------------------------------------------------------------------------- real uvicorn


async def test_loopback_over_real_uvicorn(live_server):
    server = live_server(make_app())
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        assert (await client.get("/hello/a")).status_code == 200
        response = await client.get("/_perf/stats")
        assert response.status_code == 200
        assert response.headers["x-content-type-options"] == "nosniff"
        assert not [h for h in response.headers if h.lower().startswith("access-control-")]
        forwarded = await client.get("/_perf/stats", headers={"X-Forwarded-For": "127.0.0.1"})
        assert forwarded.status_code == 403
        assert forwarded.json()["status"] == 403


# What a proxy may send alone; each one means "forwarded" (issue #13.7).
FORWARDING_HEADERS = [
    ("X-Forwarded-For", "127.0.0.1"),
    ("Forwarded", "for=127.0.0.1"),
    ("X-Real-IP", "127.0.0.1"),
    ("True-Client-IP", "127.0.0.1"),
    ("X-Client-IP", "127.0.0.1"),
    ("CF-Connecting-IP", "127.0.0.1"),
    ("X-Cluster-Client-IP", "127.0.0.1"),
    ("Fastly-Client-IP", "127.0.0.1"),
    ("X-Original-Forwarded-For", "127.0.0.1"),
    ("X-Forwarded", "for=127.0.0.1"),
    ("X-Forwarded-Host", "example.com"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Port", "443"),
    ("Via", "1.1 proxy"),
]


@pytest.mark.parametrize(
    ("name", "value"), FORWARDING_HEADERS, ids=[h for h, _ in FORWARDING_HEADERS]
)
async def test_each_forwarding_header_over_real_uvicorn_is_refused(live_server, name, value):
    server = live_server(make_app())
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        assert (await client.get("/_perf/stats")).status_code == 200
        refused = await client.get("/_perf/stats", headers={name: value})
        assert refused.status_code == 403
        assert "loopback" in refused.json()["error"]
        # The same gate decides who may ask for a profile by header.
        asked = await client.get("/hello/a", headers={name: value, "X-Perf-Profile": "1"})
        assert asked.status_code == 200
        assert "x-perf-profile-id" not in asked.headers
        direct = await client.get("/hello/a", headers={"X-Perf-Profile": "1"})
        assert "x-perf-profile-id" in direct.headers
    # Through a proxy, the token opens the door, as before.
    server = live_server(make_app(token="s3cret"))
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        bearer = {name: value, "Authorization": "Bearer s3cret"}
        assert (await client.get("/_perf/stats", headers=bearer)).status_code == 200
        assert (await client.get("/_perf/stats", headers={name: value})).status_code == 401


async def test_an_id_with_a_trailing_newline_is_no_id_over_real_uvicorn(live_server):
    server = live_server(make_app())
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        asked = await client.get("/hello/a", headers={"X-Perf-Profile": "1"})
        pid = asked.headers["x-perf-profile-id"]
        assert (await client.get(f"/_perf/profiles/{pid}.svg")).status_code == 200
        # "$" matches before a trailing newline: "<id>\n" passed for an id.
        for end in ("%0A", "%0D", "%0D%0A"):
            for method, path in [
                ("GET", f"/_perf/profiles/{pid}{end}.svg"),
                ("GET", f"/_perf/profiles/{pid}{end}.prof"),
                ("GET", f"/_perf/profiles/{pid}{end}"),
                ("GET", f"/_perf/profiles/{pid}{end}/routes"),
                ("GET", f"/_perf/profiles/{pid}{end}/speedscope"),
                ("GET", f"/_perf/profiles/{pid}{end}/snakeviz"),
                ("GET", f"/_perf/profiles/merged.svg?ids={pid}{end}"),
                ("POST", f"/_perf/windows/{pid}{end}/stop"),
            ]:
                response = await client.request(method, path)
                assert response.status_code == 400, (path, response.text)
                assert response.headers["content-type"] == "application/json"
                assert "id" in response.json()["error"]


async def test_token_over_real_uvicorn(live_server):
    server = live_server(make_app(token="s3cret"))
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as client:
        missing = await client.get("/_perf/stats")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        wrong = await client.get("/_perf/stats", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = await client.get("/_perf/stats", headers={"Authorization": "bearer s3cret"})
        assert right.status_code == 200
