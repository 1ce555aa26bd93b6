"""The web console for ML engineers, served by the gateway at /console.

One page per model puts its traffic, its rollout and its monitors together, with the actions beside
them. Pages are rendered on the server (Jinja2, autoescaped), kept live by htmx polling small panels,
and chart the gateway's own stored window summaries and monitor runs with uPlot; the scripts ship in
this package (`static/`), so nothing is fetched from elsewhere. Log in with an admin token; every
action goes through the admin API's request models and the same control-plane calls, so it is
validated and audited as an admin API call under the token's name.

Modules: `session` (signed cookie, CSRF), `routes` (the router), `views` (what each panel shows),
`figures` (charts and figures from stored data, pure), `audit_summary` (a line per audit event, pure),
`actions` (forms to admin API calls), `pages` (rendering, static files, security headers).
"""

from gateway.admin.console.routes import build_console_router

__all__ = ["build_console_router"]
