"""`/ui`: the live cluster page and the JSON it polls.

The page itself (`/ui`, `/ui/app.js`, `/ui/app.css`) is static and carries no data, so it is
served without credentials: a browser cannot attach a bearer token to a navigation. Everything
it shows comes from `/ui/api/cluster` (`/ui/api/node` is one gateway's part of it), control-plane
routes: with `--api-key`,
`--control-plane-api-keys` or `--jwt-issuer` the page asks for a token and sends it as
`Authorization`, as any other client of the control plane. The assets ship in the package and
reference nothing outside the gateway (no CDN: the page works offline); a strict
Content-Security-Policy keeps anything else from running in it.
"""

from __future__ import annotations

from importlib import resources
from urllib.parse import parse_qs

from smg.context import GatewayContext
from smg.http.asgi import send_bytes, send_json
from smg.http.exchange import Exchange
from smg.ui.views import ALL_SERIES, cluster_view, node_view

_STATIC = resources.files("smg.ui") / "static"
ASSETS = {
    "/ui": ("index.html", b"text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", b"text/javascript; charset=utf-8"),
    "/ui/app.css": ("app.css", b"text/css; charset=utf-8"),
}
_CONTENT = {path: (_STATIC / name).read_bytes() for path, (name, _type) in ASSETS.items()}
_HEADERS = [
    (b"cache-control", b"no-cache"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
]


async def asset(ctx: GatewayContext, ex: Exchange) -> None:
    """One of the page's three files, from memory (read from the package once, at import)."""
    path = ex.scope["path"]
    await send_bytes(ex.send, 200, _CONTENT[path], _HEADERS, (b"content-type", ASSETS[path][1]))


def _with_series(ex: Exchange) -> bool:
    """`?series=0` leaves the time series out (`smg mesh status` has no use for them)."""
    query = parse_qs(ex.scope.get("query_string", b"").decode("latin-1"))
    return query.get("series", ["1"])[-1] not in ("0", "false")


async def api_node(ctx: GatewayContext, ex: Exchange) -> None:
    """This gateway's own view."""
    view = node_view(ctx, ALL_SERIES if _with_series(ex) else None)
    await send_json(ex.send, 200, view, [(b"cache-control", b"no-store")])


async def api_cluster(ctx: GatewayContext, ex: Exchange) -> None:
    """The membership and every member's own view: what the page polls and `smg mesh status` prints."""
    body = await cluster_view(ctx, series=_with_series(ex))
    await send_json(ex.send, 200, body, [(b"cache-control", b"no-store")])
