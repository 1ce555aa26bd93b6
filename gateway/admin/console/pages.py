"""Rendering: the Jinja2 environment (autoescaped), the static files, and the console's HTTP headers.

Every value that comes from a model, a config, a report or the audit log goes through Jinja2's
autoescaping; chart data goes into single-quoted attributes through `tojson`, which escapes `<`, `>`,
`&` and `'`. No page has an inline script or style: the Content-Security-Policy forbids both, and
the scripts (htmx, uPlot, console.js) are files of this package, so the console works offline.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, Undefined, select_autoescape

HERE = Path(__file__).resolve().parent

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
"""The console's pages: scripts and styles from this origin only (no inline ones), frames only of its own
(the sandboxed reports), nothing may frame the console."""

REPORT_CSP = (
    "sandbox allow-scripts; default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; "
    "style-src 'unsafe-inline'; img-src data:; font-src data:; frame-ancestors 'self'"
)
"""An Evidently report: its own inline scripts run, in a sandbox without the console's origin (no cookies,
no calls to the console or the admin API), fetching nothing; only the console may frame it."""

SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    version: str


def _assets() -> dict[str, Asset]:
    assets = {}
    for path in sorted((HERE / "static").iterdir()):
        if path.is_file() and path.suffix in (".js", ".css", ".svg", ".txt"):
            body = path.read_bytes()
            media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if media.startswith("text/") or media.endswith("javascript"):
                media += "; charset=utf-8"
            assets[path.name] = Asset(body, media, hashlib.sha256(body).hexdigest()[:12])
    return assets


ASSETS = _assets()


def static_url(name: str) -> str:
    """A static file's URL, versioned by its content so a browser may cache it for long."""
    return f"/console/static/{name}?v={ASSETS[name].version}"


def asset_response(name: str) -> Response:
    asset = ASSETS.get(name)
    if asset is None:
        return Response("not found", status_code=404, media_type="text/plain", headers=SECURITY_HEADERS)
    headers = {**SECURITY_HEADERS, "Cache-Control": "public, max-age=86400"}
    return Response(asset.body, media_type=asset.media_type, headers=headers)


def _path(value: Any) -> str:
    """A value as one URL path segment (a model name may hold anything a folder name may)."""
    return quote(str(value), safe="")


def _ago(value: Any) -> str:
    if not isinstance(value, datetime):
        return ""
    seconds = max(0.0, (datetime.now(timezone.utc) - value).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _time(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if isinstance(value, datetime) else str(value or "")


def _num(value: Any, digits: int = 3) -> str:
    if value is None or isinstance(value, Undefined):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:,.0f}"
    return str(value)


def _pct(value: Any) -> str:
    return "–" if value is None or isinstance(value, Undefined) else f"{float(value) * 100:.1f}%"


def _json_text(value: Any) -> str:
    """A value as indented JSON text for reading, not markup: plain characters (Jinja2's `tojson` writes
    `<` as `\\u003c`, right for a script or an attribute, unreadable as text); autoescaping then escapes
    it once as HTML."""
    return json.dumps(value, indent=1, ensure_ascii=False, default=str)


env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"], default_for_string=True, default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
env.filters.update(path=_path, ago=_ago, time=_time, num=_num, pct=_pct, json_text=_json_text)
env.globals.update(static_url=static_url)


def render(
    template: str, http_status: int = 200, headers: dict[str, str] | None = None, **context: Any
) -> HTMLResponse:
    html = env.get_template(template).render(**context)
    return HTMLResponse(html, status_code=http_status, headers={**SECURITY_HEADERS, **(headers or {})})
