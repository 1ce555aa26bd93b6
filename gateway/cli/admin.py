"""`sluice` admin commands: talk to a running gateway's admin API over HTTP.

Every command takes `--url` (env SLUICE_URL) and `--token` (env SLUICE_ADMIN_TOKEN). Results
print as tables on stdout (`--json` where it helps scripts); errors print the server's message
on stderr. Exit codes: 0 done, 1 refused or failed, 2 bad usage, 3 no or wrong token.
`db upgrade` is the exception: it works on the state database directly, no gateway needed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

DEFAULT_URL = "http://127.0.0.1:8000"
AUTH_EXIT = 3


def out() -> Console:
    """stdout, sized when called (COLUMNS is read then, so tests and pipes can widen tables)."""
    return Console(soft_wrap=False)


def err() -> Console:
    return Console(stderr=True, soft_wrap=True)


# -- shared options -------------------------------------------------------------------------

Url = Annotated[
    str, typer.Option("--url", envvar="SLUICE_URL", help="Base URL of the gateway's HTTP port.", show_envvar=True)
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="SLUICE_ADMIN_TOKEN",
        help="Admin bearer token (one of the gateway's SLUICE_ADMIN_TOKENS); prefer the environment variable.",
        show_default=False,
        show_envvar=True,
    ),
]
Timeout = Annotated[float, typer.Option("--http-timeout", help="Seconds to wait for each HTTP response.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the server's JSON instead of a table.")]
Model = Annotated[str, typer.Argument(help="Model name.", show_default=False)]
VersionArg = Annotated[str, typer.Argument(help="Version of the model.", show_default=False)]


def fail(message: str, code: int = 1) -> NoReturn:
    err().print(f"[red]error:[/] {escape(message)}")
    raise typer.Exit(code)


class AdminClient:
    """A thin client of /admin: raises typer.Exit with the server's message on any error."""

    def __init__(self, url: str, token: str | None, timeout: float = 30.0) -> None:
        if not token:
            fail("no admin token: pass --token or set SLUICE_ADMIN_TOKEN", AUTH_EXIT)
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"AdminClient({self.url!r})"

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, **params: Any) -> Any:
        response = self._request(method, path, body, **params)
        try:
            return response.json()
        except ValueError:
            fail(f"the gateway at {self.url} answered {method} {path} with something that is not JSON")

    def get_bytes(self, path: str) -> bytes:
        """A GET whose answer is not JSON (an HTML report)."""
        return bytes(self._request("GET", path, None).content)

    def _request(self, method: str, path: str, body: dict[str, Any] | None, **params: Any) -> Any:
        import httpx  # here, not at the top: `sluice serve` must not need an HTTP client library

        query = {k: v for k, v in params.items() if v is not None}
        try:
            response = httpx.request(
                method,
                f"{self.url}/admin{path}",
                json=body,
                params=query,
                headers=self._headers,
                timeout=self._timeout,
            )
        except httpx.HTTPError as exc:
            fail(f"cannot reach the gateway at {self.url}: {exc}")
        if response.status_code >= 400:
            try:
                message = str(response.json().get("error") or response.text)
            except (ValueError, AttributeError):
                message = response.text.strip() or response.reason_phrase
            code = AUTH_EXIT if response.status_code in (401, 403) else 1
            fail(f"{message} (HTTP {response.status_code})", code)
        return response

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, **params)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.call("POST", path, body)


def _print_json(doc: Any) -> None:
    typer.echo(json.dumps(doc, indent=2, sort_keys=True))


# -- rendering ------------------------------------------------------------------------------


def _fmt_weight(weight: Any) -> str:
    return f"{float(weight):g}%" if weight is not None else "-"


def _policy_summary(policy: dict[str, Any]) -> str:
    parts = [f"stable {policy.get('stable') or 'newest ready'}"]
    if policy.get("canary"):
        parts.append(f"canary {policy['canary']} at {_fmt_weight(policy.get('canary_weight'))}")
    if policy.get("shadows"):
        parts.append(f"shadows {', '.join(policy['shadows'])} ({float(policy.get('shadow_sample_rate', 1)):g})")
    if policy.get("sticky_header"):
        parts.append(f"sticky header {policy['sticky_header']}")
    if policy.get("sticky_parameter"):
        parts.append(f"sticky parameter {policy['sticky_parameter']}")
    return "; ".join(parts)


def models_table(models: list[dict[str, Any]]) -> Table:
    table = Table(title="Models", title_justify="left")
    for column in ("Model", "Version", "State", "Roles", "Weight", "Provider", "Max batch"):
        table.add_column(column, no_wrap=True)
    table.add_column("Policy / rollout")
    for model in models:
        versions = model.get("versions") or []
        notes = _policy_summary(model.get("policy") or {})
        rollout = model.get("rollout")
        if rollout:
            notes += f"; rollout of {rollout['spec']['canary']}: {rollout['phase']} at {_fmt_weight(rollout['weight'])}"
        if model.get("error"):
            notes = f"error: {model['error']}"
        if not versions:
            table.add_row(model["name"], "-", "-", "-", "-", "-", "-", notes)
        for i, v in enumerate(versions):
            state = v["state"] if not v.get("error") else f"{v['state']}: {v['error']}"
            table.add_row(
                model["name"] if i == 0 else "",
                v["version"],
                state,
                ", ".join(v.get("roles") or []) or "-",
                _fmt_weight(v.get("weight")),
                v.get("execution_provider") or "-",
                str(v.get("max_batch_size", "-")),
                notes if i == 0 else "",
            )
        table.add_section()
    return table


def policy_table(model: str, policy: dict[str, Any]) -> Table:
    table = Table(title=f"Traffic policy of {model}", title_justify="left", show_header=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value")
    for key in (
        "stable",
        "canary",
        "canary_weight",
        "shadows",
        "shadow_sample_rate",
        "sticky_header",
        "sticky_parameter",
    ):
        value = policy.get(key)
        if key == "stable" and value is None:
            shown = "(newest ready version)"
        elif isinstance(value, list):
            shown = ", ".join(value) or "-"
        elif value is None:
            shown = "-"
        else:
            shown = f"{value:g}" if isinstance(value, float) else str(value)
        table.add_row(key, shown)
    return table


def rollout_view(state: dict[str, Any]) -> Group:
    spec = state["spec"]
    steps = spec["steps"]
    table = Table(title=f"Rollout of {state['model']}", title_justify="left", show_header=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value")
    phase_style = {"promoted": "green", "rolled_back": "red", "aborted": "yellow", "paused": "yellow"}
    phase = state["phase"]
    table.add_row("phase", Text(phase, style=phase_style.get(phase, "cyan")))
    table.add_row("canary / stable", f"{spec['canary']} / {state['stable']}")
    table.add_row("weight", _fmt_weight(state.get("weight")))
    table.add_row("step", f"{state['step'] + 1} of {len(steps)} ({', '.join(f'{s:g}' for s in steps)})")
    table.add_row("interval", f"{spec['interval_s']:g} s")
    table.add_row("failures", f"{state['failures']} of {spec['failure_threshold']} allowed")
    table.add_row("no-data windows", f"{state.get('no_data_windows', 0)} of {spec['max_no_data_windows']}")
    checks = ", ".join(f"{c['name']}<={c['threshold']:g} (min {c['min_requests']})" for c in spec["checks"])
    table.add_row("checks", checks or "-")
    if state.get("reason"):
        table.add_row("reason", state["reason"])
    parts: list[Table] = [table]
    results = state.get("last_results") or []
    if results:
        last = Table(title="Last analysis", title_justify="left")
        last.add_column("Check", no_wrap=True)
        last.add_column("Verdict", no_wrap=True)
        last.add_column("Detail")
        verdict_style = {"pass": "green", "fail": "red", "no_data": "yellow"}
        for r in results:
            last.add_row(r["check"], Text(r["verdict"], style=verdict_style.get(r["verdict"], "")), r["detail"])
        parts.append(last)
    return Group(*parts)


def _flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(doc, dict):
        flat: dict[str, Any] = {}
        for key, value in doc.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): doc}


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def describe_change(before: Any, after: Any, limit: int = 5) -> str:
    """What changed between two JSON documents, as 'field: old -> new' lines (leaves only).

    Rollout events ({"rollout": ..., "policy": ...}) show the rollout's phase and weight, then the
    policy's changes."""
    if isinstance(after, dict) and isinstance(after.get("rollout"), dict):
        rollout = after["rollout"]
        head = f"rollout of {rollout['spec']['canary']}: {rollout['phase']} at {_fmt_weight(rollout.get('weight'))}"
        kinds = [str(t.get("kind")) for t in after.get("transitions") or [] if isinstance(t, dict)]
        if kinds:
            head += f" ({', '.join(kinds)})"
        if rollout.get("reason"):
            head += f"\n{rollout['reason']}"
        old_policy = before.get("policy") if isinstance(before, dict) else None
        policy = describe_change(old_policy or {}, after.get("policy") or {}, limit)
        return head if policy == "-" else f"{head}\n{policy}"
    if before is None and isinstance(after, dict) and "rollout" not in after:
        return " ".join(f"{k}={_short(v)}" for k, v in _flatten(after).items())
    old, new = _flatten(before or {}), _flatten(after or {})
    changed = [k for k in new if old.get(k) != new[k] and not k.endswith("window_started_at")]
    changed += [k for k in old if k not in new]
    lines = [f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}" for k in changed[:limit]]
    if len(changed) > limit:
        lines.append(f"(+{len(changed) - limit} more)")
    return "\n".join(lines) or "-"


def audit_table(events: list[dict[str, Any]]) -> Table:
    table = Table(title="Audit log (newest first)", title_justify="left")
    table.add_column("Id", justify="right", no_wrap=True)
    table.add_column("At (UTC)", no_wrap=True)
    table.add_column("Actor", no_wrap=True)
    table.add_column("Action", no_wrap=True)
    table.add_column("Model", no_wrap=True)
    table.add_column("Change")
    for e in events:
        at = str(e["at"]).replace("T", " ")[:19]
        table.add_row(
            str(e["id"]), at, e["actor"], e["action"], e.get("model") or "-", describe_change(e["before"], e["after"])
        )
    return table


# -- models, versions ---------------------------------------------------------------------


def models(
    model: Annotated[str | None, typer.Argument(help="Only this model.", show_default=False)] = None,
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    http_timeout: Timeout = 30.0,
) -> None:
    """List models and versions: state, role (stable/canary/shadow), traffic weight, policy, rollout."""
    client = AdminClient(url, token, http_timeout)
    docs = [client.get(f"/models/{model}")] if model else client.get("/models")["models"]
    if as_json:
        _print_json(docs)
        return
    out().print(models_table(docs))


def load(
    model: Model, version: VersionArg, url: Url = DEFAULT_URL, token: Token = None, http_timeout: Timeout = 120.0
) -> None:
    """Load (or reload) a version from the model repository and warm it up."""
    view = AdminClient(url, token, http_timeout).post(f"/models/{model}/versions/{version}/load")
    if view.get("state") != "READY":
        fail(f"model '{model}' version '{version}' is {view.get('state')}: {view.get('error') or 'not ready'}")
    out().print(f"model {escape(model)} version {escape(version)} is READY on {view.get('execution_provider')}")


def unload(
    model: Model, version: VersionArg, url: Url = DEFAULT_URL, token: Token = None, http_timeout: Timeout = 120.0
) -> None:
    """Drain a version (its in-flight requests finish) and unload it. Refused while traffic uses it."""
    view = AdminClient(url, token, http_timeout).post(f"/models/{model}/versions/{version}/unload")
    out().print(f"model {escape(model)} version {escape(version)} is {view.get('state')}")


# -- traffic ----------------------------------------------------------------------------------

traffic_app = typer.Typer(
    help="Show or change a model's traffic policy (stable, canary weight, shadows, sticky keys).",
    no_args_is_help=True,
)

_NONE = ("none", "null", "-")


def _version_or_none(value: str | None) -> str | None:
    return None if value is None or value.lower() in _NONE else value


@traffic_app.command("show")
def traffic_show(
    model: Model, as_json: AsJson = False, url: Url = DEFAULT_URL, token: Token = None, http_timeout: Timeout = 30.0
) -> None:
    """Show a model's traffic policy."""
    policy = AdminClient(url, token, http_timeout).get(f"/models/{model}/traffic")
    if as_json:
        _print_json(policy)
        return
    out().print(policy_table(model, policy))


@traffic_app.command("set")
def traffic_set(
    model: Model,
    stable: Annotated[
        str | None, typer.Option("--stable", help="Stable version; 'none' serves the newest ready version.")
    ] = None,
    canary: Annotated[str | None, typer.Option("--canary", help="Canary version; 'none' removes the canary.")] = None,
    weight: Annotated[
        float | None, typer.Option("--weight", min=0, max=100, help="Percent (0-100) of traffic to the canary.")
    ] = None,
    shadow: Annotated[
        list[str] | None, typer.Option("--shadow", help="Shadow version (repeat for several; 'none' for no shadows).")
    ] = None,
    shadow_rate: Annotated[
        float | None, typer.Option("--shadow-rate", min=0, max=1, help="Share (0-1) of requests copied to shadows.")
    ] = None,
    sticky_header: Annotated[
        str | None, typer.Option("--sticky-header", help="Header that keeps a caller on one version; 'none' to clear.")
    ] = None,
    sticky_parameter: Annotated[
        str | None,
        typer.Option("--sticky-parameter", help="V2 parameter used when the header is absent; 'none' to clear."),
    ] = None,
    replace_all: Annotated[
        bool,
        typer.Option("--replace", help="Replace the whole policy (unset fields take defaults) instead of patching."),
    ] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    http_timeout: Timeout = 30.0,
) -> None:
    """Change a model's traffic policy; only the options given change (unless --replace).

    Example: sluice traffic set mlp --stable 1 --canary 2 --weight 10
    """
    body: dict[str, Any] = {}
    if stable is not None:
        body["stable"] = _version_or_none(stable)
    if canary is not None:
        body["canary"] = _version_or_none(canary)
        if body["canary"] is None and weight is None:
            body["canary_weight"] = 0.0
    if weight is not None:
        body["canary_weight"] = weight
    if shadow is not None:
        body["shadows"] = [s for s in shadow if s.lower() not in _NONE]
    if shadow_rate is not None:
        body["shadow_sample_rate"] = shadow_rate
    if sticky_header is not None:
        body["sticky_header"] = _version_or_none(sticky_header)
    if sticky_parameter is not None:
        body["sticky_parameter"] = _version_or_none(sticky_parameter)
    if not body and not replace_all:
        fail("nothing to change: give at least one of --stable, --canary, --weight, --shadow, ...", 2)
    client = AdminClient(url, token, http_timeout)
    policy = client.call("PUT" if replace_all else "PATCH", f"/models/{model}/traffic", body)
    out().print(policy_table(model, policy))


# -- shadows, promote, rollback ---------------------------------------------------------------


def shadow(
    model: Model,
    version: Annotated[
        list[str] | None, typer.Option("--version", "-v", help="Version to shadow (repeat for several).")
    ] = None,
    rate: Annotated[
        float | None, typer.Option("--rate", min=0, max=1, help="Share (0-1) of requests copied (default: keep).")
    ] = None,
    off: Annotated[bool, typer.Option("--off", help="Stop shadowing this model.")] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    http_timeout: Timeout = 30.0,
) -> None:
    """Copy a share of a model's requests to shadow versions (answers compared, never returned), or stop."""
    if off == bool(version):
        fail("give --version V (shadow V) or --off (stop shadowing), not both and not neither", 2)
    body: dict[str, Any] = {"versions": [] if off else list(version or [])}
    if rate is not None:
        body["sample_rate"] = rate
    policy = AdminClient(url, token, http_timeout).post(f"/models/{model}/shadow", body)
    if policy["shadows"]:
        out().print(
            f"{escape(model)}: shadowing {escape(', '.join(policy['shadows']))} "
            f"on {policy['shadow_sample_rate'] * 100:g}% of requests"
        )
    else:
        out().print(f"{escape(model)}: no shadows")


def rollback(model: Model, url: Url = DEFAULT_URL, token: Token = None, http_timeout: Timeout = 30.0) -> None:
    """Send all of a model's traffic back to its stable version now (ends a rollout as rolled back)."""
    policy = AdminClient(url, token, http_timeout).post(f"/models/{model}/rollback")
    out().print(f"{escape(model)}: rolled back; {escape(_policy_summary(policy))}")


# -- canary rollouts ---------------------------------------------------------------------------

canary_app = typer.Typer(
    help="Progressive canary rollouts: start, watch, pause, resume, promote, abort.", no_args_is_help=True
)


def _parse_steps(text: str) -> list[float]:
    try:
        steps = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated percentages like 5,25,50,100, got {text!r}") from None
    if not steps:
        raise typer.BadParameter("at least one step is needed")
    return steps


def _parse_check(text: str) -> dict[str, Any]:
    name, sep, rest = text.partition("=")
    threshold, _, min_requests = rest.partition(":")
    try:
        if not sep or not name.strip():
            raise ValueError
        check: dict[str, Any] = {"name": name.strip(), "threshold": float(threshold)}
        if min_requests:
            check["min_requests"] = int(min_requests)
    except ValueError:
        raise typer.BadParameter(
            f"expected NAME=THRESHOLD[:MIN_REQUESTS] such as error_ratio=1.5 or latency_p99_ratio=2:50, got {text!r}"
        ) from None
    return check


@canary_app.command("start")
def canary_start(
    model: Model,
    version: Annotated[str, typer.Option("--version", "-v", help="Version to roll out (must be loaded).")],
    steps: Annotated[
        str, typer.Option("--steps", help="Canary weights in percent, rising, comma separated.")
    ] = "5,25,50,100",
    interval: Annotated[float, typer.Option("--interval", min=0.001, help="Seconds in one analysis window.")] = 60.0,
    failure_threshold: Annotated[
        int, typer.Option("--failure-threshold", min=1, help="Failed windows that roll the canary back.")
    ] = 2,
    max_no_data: Annotated[
        int,
        typer.Option("--max-no-data", min=1, help="Consecutive windows without enough data that count as one failure."),
    ] = 5,
    check: Annotated[
        list[str] | None,
        typer.Option(
            "--check",
            help="Analysis check NAME=THRESHOLD[:MIN_REQUESTS], repeatable "
            "(default: error_ratio=1.5 and latency_p99_ratio=1.5).",
        ),
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    http_timeout: Timeout = 30.0,
) -> None:
    """Start a progressive canary: the weight rises step by step while the checks pass, else rolls back."""
    body: dict[str, Any] = {
        "canary": version,
        "steps": _parse_steps(steps),
        "interval_s": interval,
        "failure_threshold": failure_threshold,
        "max_no_data_windows": max_no_data,
    }
    if check:
        body["checks"] = [_parse_check(c) for c in check]
    state = AdminClient(url, token, http_timeout).post(f"/models/{model}/rollout", body)
    out().print(rollout_view(state))


@canary_app.command("status")
def canary_status(
    model: Model,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help="Keep refreshing until the rollout finishes (exit 0 promoted, 1 rolled back or aborted) or Ctrl-C.",
        ),
    ] = False,
    every: Annotated[float, typer.Option("--every", min=0.05, help="Seconds between refreshes with --watch.")] = 2.0,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0, help="With --watch: give up after this many seconds (exit 1).")
    ] = 3600.0,
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    http_timeout: Timeout = 30.0,
) -> None:
    """Show a model's active rollout, else its last one: phase, weight, step, failures, last checks."""
    client = AdminClient(url, token, http_timeout)
    state = client.get(f"/models/{model}/rollout")
    if not watch:
        if as_json:
            _print_json(state)
        else:
            out().print(rollout_view(state))
        return
    deadline = time.monotonic() + timeout
    try:
        with Live(rollout_view(state), console=out(), auto_refresh=False) as live:
            while state["phase"] in ("progressing", "paused") and time.monotonic() < deadline:
                time.sleep(min(every, max(0.0, deadline - time.monotonic())))
                state = client.get(f"/models/{model}/rollout")
                live.update(rollout_view(state), refresh=True)
    except KeyboardInterrupt:
        err().print(f"stopped watching; the rollout goes on ({state['phase']})")
        return
    if as_json:
        _print_json(state)
    if state["phase"] in ("progressing", "paused"):
        fail(f"rollout of {model} still {state['phase']} after {timeout:g} s")
    if state["phase"] != "promoted":
        fail(f"rollout of {model} ended {state['phase']}: {state.get('reason') or 'no reason given'}")


def _rollout_op(op: str, help_text: str) -> Any:
    def command(model: Model, url: Url = DEFAULT_URL, token: Token = None, http_timeout: Timeout = 30.0) -> None:
        state = AdminClient(url, token, http_timeout).post(f"/models/{model}/rollout/{op}")
        out().print(rollout_view(state))

    command.__doc__ = help_text
    command.__name__ = f"canary_{op}"
    return command


canary_app.command("pause")(_rollout_op("pause", "Hold the rollout at its current weight (analysis stops)."))
canary_app.command("resume")(_rollout_op("resume", "Resume a paused rollout with a fresh analysis window."))
canary_app.command("abort")(_rollout_op("abort", "Stop the rollout and send all traffic to the stable version."))


@canary_app.command("promote")
def canary_promote(model: Model, url: Url = DEFAULT_URL, token: Token = None, http_timeout: Timeout = 30.0) -> None:
    """Make the canary the stable version now (ends a rollout as promoted)."""
    policy = AdminClient(url, token, http_timeout).post(f"/models/{model}/promote")
    out().print(f"{escape(model)}: promoted; {escape(_policy_summary(policy))}")


# -- audit ------------------------------------------------------------------------------------


def audit(
    model: Annotated[str | None, typer.Option("--model", "-m", help="Only this model's events.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000, help="At most this many events.")] = 20,
    before_id: Annotated[
        int | None, typer.Option("--before-id", min=1, help="Older page: events before this id.")
    ] = None,
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    http_timeout: Timeout = 30.0,
) -> None:
    """Show the audit log, newest first: who changed what, when, and the before/after."""
    page = AdminClient(url, token, http_timeout).get("/audit", model=model, limit=limit, before_id=before_id)
    if as_json:
        _print_json(page)
        return
    out().print(audit_table(page["events"]))
    if page.get("next_before_id"):
        out().print(f"older events: --before-id {page['next_before_id']}")


# -- database -----------------------------------------------------------------------------------

db_app = typer.Typer(help="The state database (SQLite in the state directory, or PostgreSQL).", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(
    dsn: Annotated[
        str | None,
        typer.Option(
            "--dsn",
            envvar="SLUICE_DATABASE_URL",
            help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db (overrides --state-dir).",
            show_default=False,
            show_envvar=True,
        ),
    ] = None,
    state_dir: Annotated[
        Path,
        typer.Option(
            "--state-dir",
            envvar="SLUICE_STATE_DIR",
            help="State directory holding sluice.db (SQLite).",
            show_envvar=True,
        ),
    ] = Path(".sluice"),
) -> None:
    """Create or migrate the state database to this version's schema (idempotent); print the version."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.storage.migrations import SchemaError
    from gateway.storage.store import Store, upgrade_database

    try:
        if dsn:
            where = make_url(dsn).render_as_string(hide_password=True)
            version = upgrade_database(dsn)
        else:
            with Store.for_state_dir(state_dir) as store:
                where = store.display_url
                version = store.upgrade()
    except (SchemaError, SQLAlchemyError, OSError, ValueError) as exc:
        fail(f"cannot upgrade the state database: {exc}")
    out().print(f"state database {escape(where)} is at schema version {version}")
