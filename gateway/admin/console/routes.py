"""The console's routes under /console: the login, the pages, their live panels, the actions, the reports.

Without a valid session cookie every route but the login page and the static files answers with the
login page (a page) or 401 with `HX-Redirect` to it (a panel or an action): nothing about a model is
shown before a token is. Actions are POSTs that must carry the session's CSRF token; each is answered
with a small fragment saying what was done, or the admin API's status and error when it was refused,
and `HX-Trigger: console-refresh`, which makes the page's panels reload at once.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime.

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from gateway.admin.auth import AdminAuth
from gateway.admin.console.actions import ACTIONS, CHECK_DEFAULTS, check_names, perform
from gateway.admin.console.pages import REPORT_CSP, SECURITY_HEADERS, asset_response, render
from gateway.admin.console.session import COOKIE, COOKIE_PATH, LOGIN_COOKIE, Session, Sessions, login_nonce
from gateway.admin.console.views import DEFAULT_RANGE, RANGES, ConsoleViews
from gateway.control.delivery import DeliveryController
from gateway.control.monitor_service import MonitorService
from gateway.control.plane import ControlPlane
from gateway.errors import Forbidden, SluiceError, Unauthorized, mapping_of

LOGIN = "/console/login"
REFRESH = {"HX-Trigger": "console-refresh"}


def _cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _cross_site(request: Request) -> bool:
    """A browser says when a request comes from another site (Sec-Fetch-Site): refuse those outright."""
    return request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none")


async def _form(request: Request) -> dict[str, list[str]]:
    """The urlencoded form (the adapter has bounded the body to 1 MiB before it gets here)."""
    body = (await request.body()).decode("utf-8", errors="replace")
    return parse_qs(body, keep_blank_values=True)


def build_console_router(
    control: ControlPlane, monitor: MonitorService, auth: AdminAuth, delivery: DeliveryController | None = None
) -> APIRouter:
    """The console under /console, and /favicon.ico (browsers ask for it on every page of the origin). `delivery`:
    the deliveries of new versions, shown on each model's page."""
    outer = APIRouter(include_in_schema=False)

    @outer.get("/favicon.ico")
    async def favicon() -> Response:
        return asset_response("favicon.svg")

    outer.include_router(_console_router(control, monitor, auth, delivery))
    return outer


def _console_router(
    control: ControlPlane, monitor: MonitorService, auth: AdminAuth, delivery: DeliveryController | None
) -> APIRouter:
    router = APIRouter(prefix="/console", include_in_schema=False)
    sessions = Sessions(auth, control.store)
    views = ConsoleViews(control, monitor, delivery)

    async def session_of(request: Request) -> Session | None:
        return await sessions.check(request.cookies.get(COOKIE))

    def unauthenticated(request: Request) -> Response:
        if request.headers.get("hx-request") or request.method != "GET":
            headers = {**SECURITY_HEADERS, "HX-Redirect": LOGIN}
            return Response("log in first", status_code=401, media_type="text/plain", headers=headers)
        return RedirectResponse(LOGIN, status_code=303, headers=SECURITY_HEADERS)

    def page(request: Request, template: str, session: Session, http_status: int = 200, **context: Any) -> Response:
        return render(template, http_status, actor=session.actor, csrf=session.csrf, **context)

    def not_found(request: Request, session: Session, exc: SluiceError) -> Response:
        return page(request, "error.html", session, mapping_of(exc).http, message=str(exc))

    # -- login ----------------------------------------------------------------------------------

    def login_page(request: Request, error: str | None = None, http_status: int = 200) -> Response:
        nonce = login_nonce()
        response = render("login.html", http_status, nonce=nonce, error=error, enabled=auth.enabled)
        _cookie(response, request, LOGIN_COOKIE, nonce, 900)
        return response

    @router.get("/login")
    async def login_form(request: Request) -> Response:
        if await session_of(request) is not None:
            return RedirectResponse("/console/", status_code=303, headers=SECURITY_HEADERS)
        return login_page(request)

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await _form(request)
        nonce = (form.get("nonce") or [""])[-1]
        cookie = request.cookies.get(LOGIN_COOKIE)
        if _cross_site(request) or not cookie or not nonce or cookie != nonce:
            return login_page(request, "the login form expired or came from another site; try again", 403)
        token = (form.get("token") or [""])[-1].strip()
        try:
            actor = auth.authenticate(f"Bearer {token}" if token else None)
        except Unauthorized:
            return login_page(request, "enter an admin token", 401)
        except Forbidden as exc:
            return login_page(request, str(exc), 403)
        value, _ = sessions.issue(actor)
        response = RedirectResponse("/console/", status_code=303, headers=SECURITY_HEADERS)
        _cookie(response, request, COOKIE, value, sessions.ttl_s)
        response.delete_cookie(LOGIN_COOKIE, path=COOKIE_PATH)
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        if (session := await session_of(request)) is not None:
            await sessions.revoke(session)  # on every replica: a copy of the cookie is refused too
        response = RedirectResponse(LOGIN, status_code=303, headers=SECURITY_HEADERS)
        response.delete_cookie(COOKIE, path=COOKIE_PATH)
        return response

    @router.get("/static/{name}")
    async def static(name: str) -> Response:
        return asset_response(name)

    # -- pages ------------------------------------------------------------------------------------

    @router.get("")
    async def root() -> Response:
        return RedirectResponse("/console/", status_code=307, headers=SECURITY_HEADERS)

    @router.get("/")
    async def models_page(request: Request) -> Response:
        if (session := await session_of(request)) is None:
            return unauthenticated(request)
        return page(request, "models.html", session, models=await views.models())

    @router.get("/fragments/models")
    async def models_fragment(request: Request) -> Response:
        if (session := await session_of(request)) is None:
            return unauthenticated(request)
        return page(request, "_models.html", session, models=await views.models())

    @router.get("/models/{model}")
    async def model_page(request: Request, model: str, range: str = DEFAULT_RANGE) -> Response:
        if (session := await session_of(request)) is None:
            return unauthenticated(request)
        range_name = range if range in RANGES else DEFAULT_RANGE
        try:
            context = {
                "status": await views.status(model),
                "traffic": await views.traffic(model, range_name),
                "monitor": await views.monitor_panel(model),
                "audit": await views.audit(model),
                "controls": await views.controls(model),
            }
        except SluiceError as exc:
            return not_found(request, session, exc)
        return page(
            request,
            "model.html",
            session,
            200,
            model=model,
            range=range_name,
            ranges=list(RANGES),
            checks=check_names(),
            check_defaults=CHECK_DEFAULTS,
            **context,
        )

    panels: dict[str, tuple[str, str, Callable[..., Any]]] = {
        "status": ("_status.html", "status", lambda m, r: views.status(m)),
        "traffic": ("_traffic.html", "traffic", lambda m, r: views.traffic(m, r)),
        "monitor": ("_monitor.html", "monitor", lambda m, r: views.monitor_panel(m)),
        "audit": ("_audit.html", "audit", lambda m, r: views.audit(m)),
        "actions": ("_actions.html", "controls", lambda m, r: views.controls(m)),
        "traffic_form": ("_traffic_form.html", "controls", lambda m, r: views.controls(m)),
        "shadow_form": ("_shadow_form.html", "controls", lambda m, r: views.controls(m)),
    }
    """Each panel: its template, the name its data has there, and how it is read."""

    @router.get("/models/{model}/panels/{panel}")
    async def panel(
        request: Request, model: str, panel: str, range: str = DEFAULT_RANGE, key: str | None = None
    ) -> Response:
        if (session := await session_of(request)) is None:
            return unauthenticated(request)
        if panel not in panels:
            return Response("no such panel", status_code=404, headers=SECURITY_HEADERS)
        template, name, read = panels[panel]
        range_name = range if range in RANGES else DEFAULT_RANGE
        try:
            data = await read(model, range_name)
        except SluiceError as exc:
            return render("_flash.html", mapping_of(exc).http, ok=False, message=str(exc))
        if key is not None and isinstance(data, dict) and data.get("key") == key:
            return Response(status_code=204, headers=SECURITY_HEADERS)  # a form unchanged: htmx leaves it be
        return page(request, template, session, model=model, range=range_name, **{name: data})

    @router.get("/models/{model}/runs/{run_id}")
    async def run_page(request: Request, model: str, run_id: int) -> Response:
        if (session := await session_of(request)) is None:
            return unauthenticated(request)
        try:
            run = await views.run(model, run_id)
        except SluiceError as exc:
            return not_found(request, session, exc)
        if run is None:
            return page(request, "error.html", session, 404, message=f"model '{model}' has no monitor run {run_id}")
        has_report = monitor.report_file(model, run_id) is not None
        return page(request, "run.html", session, model=model, run=run, has_report=has_report)

    @router.get("/models/{model}/runs/{run_id}/report")
    async def report(request: Request, model: str, run_id: int) -> Response:
        if await session_of(request) is None:
            return unauthenticated(request)
        try:
            path: Path | None = monitor.report_file(model, run_id)
        except SluiceError:
            path = None
        if path is None:
            return Response("no report", status_code=404, media_type="text/plain", headers=SECURITY_HEADERS)
        headers = {**SECURITY_HEADERS, "Content-Security-Policy": REPORT_CSP, "X-Frame-Options": "SAMEORIGIN"}
        return FileResponse(path, media_type="text/html", headers=headers)

    # -- actions ----------------------------------------------------------------------------------

    @router.post("/models/{model}/actions/{action}")
    async def act(request: Request, model: str, action: str) -> Response:
        if (session := await session_of(request)) is None:
            return unauthenticated(request)
        form = await _form(request)
        presented = request.headers.get("x-csrf-token") or next(iter(form.get("csrf", [])[-1:]), None)
        if _cross_site(request) or not sessions.csrf_ok(session, presented):
            return render("_flash.html", 403, ok=False, message="refused: missing or wrong CSRF token; reload the page")
        if action not in ACTIONS:
            return render("_flash.html", 404, ok=False, message=f"unknown console action '{action}'")
        outcome = await perform(action, model, form, session.actor, control, monitor)
        return render(
            "_flash.html", outcome.status, REFRESH, ok=outcome.ok, status=outcome.status, message=outcome.message
        )

    return router
