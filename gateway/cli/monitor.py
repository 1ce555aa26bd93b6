"""`sluice monitor`: run drift or accuracy now, list stored runs, save a drift run's Evidently HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from gateway.cli.admin import DEFAULT_URL, AdminClient, AsJson, Model, Timeout, Token, Url, _print_json, out

monitor_app = typer.Typer(help="Drift and accuracy monitors (through the admin API).", no_args_is_help=True)

Version = Annotated[
    str | None, typer.Option("--version", "-v", help="One version; default: the stable and the canary.")
]


def _headline(run: dict[str, Any]) -> str:
    f = run.get("figures") or {}
    if run["status"] != "ok":
        return str((run.get("detail") or {}).get("reason", ""))
    if run["kind"] == "drift":
        flag = "DRIFT" if f.get("dataset_drift") else "no drift"
        share = f.get("drift_share") or 0.0
        return f"{flag}: {f.get('drifted_features')}/{f.get('features')} features drifted (share {share:.2f})"
    parts = [f"{k} {f[k]:.4g}" for k in ("accuracy", "f1", "mae", "rmse", "accuracy_delta", "coverage") if k in f]
    return ", ".join(parts)


def runs_table(runs: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for name in ("Id", "At (UTC)", "Version", "Kind", "Status", "Rows", "Result", "Report"):
        table.add_column(name, no_wrap=name != "Result")
    for r in runs:
        at = str(r.get("at", "")).replace("T", " ")[:19]
        table.add_row(
            str(r["id"]),
            at,
            r["version"],
            r["kind"],
            r["status"],
            str(r["rows"]),
            _headline(r),
            "yes" if r.get("report") else "-",
        )
    return table


@monitor_app.command("run")
def run(
    model: Model,
    kind: Annotated[str, typer.Argument(help="drift or accuracy")],
    version: Version = None,
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    http_timeout: Timeout = 300.0,
) -> None:
    """Run drift or accuracy now for a version (default: the stable and the canary); triggers judge the result."""
    doc = AdminClient(url, token, http_timeout).post(f"/models/{model}/monitor/{kind}", {"version": version})
    if as_json:
        _print_json(doc)
        return
    out().print(runs_table(doc["runs"], f"{model}: {kind} now"))


@monitor_app.command("runs")
def runs(
    model: Model,
    kind: Annotated[str | None, typer.Option("--kind", "-k", help="drift or accuracy")] = None,
    version: Version = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000)] = 20,
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    http_timeout: Timeout = 30.0,
) -> None:
    """List stored drift and accuracy runs, newest first (with the reports still on disk)."""
    doc = AdminClient(url, token, http_timeout).get(
        f"/models/{model}/monitor/runs", kind=kind, version=version, limit=limit
    )
    if as_json:
        _print_json(doc)
        return
    out().print(runs_table(doc["runs"], f"{model}: monitor runs (newest first)"))


@monitor_app.command("report")
def report(
    model: Model,
    run_id: Annotated[int, typer.Argument(help="A drift run's id (see `sluice monitor runs`).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the HTML.")] = Path(
        "drift-report.html"
    ),
    url: Url = DEFAULT_URL,
    token: Token = None,
    http_timeout: Timeout = 60.0,
) -> None:
    """Save the Evidently HTML report of a drift run."""
    body = AdminClient(url, token, http_timeout).get_bytes(f"/models/{model}/monitor/runs/{run_id}/report")
    output.write_bytes(body)
    out().print(f"wrote {output} ({len(body):,} bytes)")
