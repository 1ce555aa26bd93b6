"""`sluice repo`: the model repository of a running gateway (its location and cache, a sync, and the delivery of
new versions by each model's policy)."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from gateway.cli.admin import DEFAULT_URL, AdminClient, AsJson, Timeout, Token, Url, _print_json, fail, out

repo_app = typer.Typer(
    help="The model repository (a local folder or object storage): show it, or sync new and removed versions.",
    no_args_is_help=True,
)


def sync_table(report: dict[str, Any]) -> Table:
    table = Table("version", "change", "detail", title="repository sync")
    for key in report.get("loaded", []):
        table.add_row(escape(key), "loaded", "")
    for key in report.get("unloaded", []):
        table.add_row(escape(key), "unloaded", "")
    for key, why in report.get("kept", {}).items():
        table.add_row(escape(key), "kept", escape(why))
    for key, why in report.get("failed", {}).items():
        table.add_row(escape(key), "[red]failed[/]", escape(why))
    for model in report.get("new_models", []):
        table.add_row(escape(model), "new model", "served after a restart")
    for key, what in report.get("delivered", {}).items():
        table.add_row(escape(key), "delivery", escape(what))
    for key, why in report.get("settling", {}).items():
        table.add_row(escape(key), "waiting", escape(why))
    return table


def delivery_table(doc: dict[str, Any]) -> Table:
    """A model's deliveries, newest first: version, phase, shadow figures and why it stands where it does."""
    table = Table("version", "phase", "stable", "shadow agreement", "detail", title=f"deliveries of {doc['model']}")
    for d in doc.get("history", []):
        agreement = d.get("agreement")
        figures = f"{agreement:.2%} of {d['compared']}" if agreement is not None else "-"
        pending = f" (version {d['pending']} waits)" if d.get("pending") else ""
        table.add_row(
            escape(d["version"]), d["phase"], escape(d["stable"]), figures, escape(d.get("reason", "") + pending)
        )
    return table


@repo_app.command("sync")
def repo_sync(
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    http_timeout: Timeout = 600.0,
) -> None:
    """Sync the repository now: load the new versions each model's version_policy selects, unload removed ones
    (through the control plane, so every worker follows). Exit 1 when a version failed to load."""
    report = AdminClient(url, token, http_timeout).post("/repository/sync")
    if as_json:
        _print_json(report)
    elif not any(report.get(k) for k in ("loaded", "unloaded", "kept", "failed", "new_models")):
        out().print("repository sync: nothing changed")
    else:
        out().print(sync_table(report))
    if report.get("failed"):
        fail(f"{len(report['failed'])} version(s) failed to load: see the table or `sluice models`")


@repo_app.command("show")
def repo_show(
    as_json: AsJson = False, url: Url = DEFAULT_URL, token: Token = None, http_timeout: Timeout = 30.0
) -> None:
    """Show where the repository is, its local cache (object storage), the poll period and the last sync."""
    doc = AdminClient(url, token, http_timeout).get("/repository")
    if as_json:
        _print_json(doc)
        return
    cache = doc.get("cache")
    last = doc.get("last_sync")
    lines = [
        f"repository: {escape(str(doc.get('location')))}",
        f"poll: every {doc['poll_s']} s" if doc.get("poll_s") else "poll: off (sluice repo sync)",
        f"cache: {escape(cache['dir'])}, {cache['bytes']} bytes of at most {cache['max_bytes']}"
        if cache
        else "cache: none (a local repository is read in place)",
    ]
    if last:
        state = "ok" if last.get("ok") else f"[red]error[/]: {escape(str(last.get('error')))}"
        lines.append(f"last sync: {state}")
    out().print("\n".join(lines))


@repo_app.command("delivery")
def repo_delivery(
    model: str = typer.Argument(..., help="The model whose deliveries to show."),
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    http_timeout: Timeout = 30.0,
) -> None:
    """Show the model's delivery policy and its deliveries of new versions (shadow, rollout, outcome)."""
    doc = AdminClient(url, token, http_timeout).get(f"/models/{model}/delivery")
    if as_json:
        _print_json(doc)
        return
    policy = (doc.get("policy") or {}).get("on_new_version", "none")
    if not doc.get("history"):
        out().print(f"{escape(model)}: delivery policy {policy}; no deliveries yet")
        return
    out().print(f"{escape(model)}: delivery policy {policy}")
    out().print(delivery_table(doc))
