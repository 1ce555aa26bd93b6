"""`sluice labels import`: post ground truth from a CSV or Parquet file to a running gateway.

Labels go to POST /v2/models/{model}/feedback in batches. A batch with an unknown prediction
id is refused whole by the gateway (nothing half-stored); the command then reports the
unknown ids and goes on with the next batch, and exits 1 so a pipeline notices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from monitors.label_import import chunks, load_labels

labels_app = typer.Typer(help="Ground-truth labels for logged predictions.", no_args_is_help=True)
err = Console(stderr=True, soft_wrap=True)


@labels_app.command("import")
def import_labels(
    path: Annotated[Path, typer.Argument(help="CSV or Parquet file with a prediction id and a label per row.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model the predictions belong to.")],
    id_column: Annotated[str, typer.Option("--id-column", help="Column holding the prediction id.")] = "id",
    value_column: Annotated[str, typer.Option("--value-column", help="Column holding the label.")] = "value",
    time_column: Annotated[
        str | None, typer.Option("--time-column", help="Column with when the truth became known (optional).")
    ] = None,
    batch: Annotated[int, typer.Option("--batch", help="Labels per request.", min=1, max=10_000)] = 500,
    url: Annotated[str, typer.Option("--url", envvar="SLUICE_URL", help="Gateway HTTP address.")] = (
        "http://127.0.0.1:8000"
    ),
    key: Annotated[
        str | None, typer.Option("--key", envvar="SLUICE_INFERENCE_KEY", help="Inference key, when keys are set.")
    ] = None,
) -> None:
    """Import labels from a file; repeated labels are idempotent."""
    import httpx

    try:
        loaded = load_labels(path, id_column=id_column, value_column=value_column, time_column=time_column)
    except (OSError, ValueError, RuntimeError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    stored = unchanged = 0
    unknown: list[str] = []
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        for part in chunks(loaded.labels, batch):
            body: dict[str, Any] = {
                "labels": [
                    {"id": label.prediction_id, "value": label.value}
                    | ({"at": label.at.isoformat()} if label.at else {})
                    for label in part
                ]
            }
            try:
                response = client.post(f"/v2/models/{model}/feedback", json=body)
            except httpx.HTTPError as exc:
                err.print(f"[red]error:[/] cannot reach {url}: {exc}")
                raise typer.Exit(1) from None
            doc = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
            if response.status_code == 200:
                stored += int(doc.get("stored", 0))
                unchanged += int(doc.get("unchanged", 0))
            elif response.status_code == 404 and "unknown" in doc:
                unknown += [str(i) for i in doc["unknown"]]
            else:
                err.print(f"[red]error:[/] {response.status_code}: {doc.get('error', response.text)}")
                raise typer.Exit(3 if response.status_code in (401, 403) else 1)
    print(
        f"{path}: {loaded.rows} rows, {stored} stored, {unchanged} unchanged, {len(unknown)} unknown ids"
        + (f", {loaded.duplicates} duplicate ids (last kept)" if loaded.duplicates else "")
    )
    if unknown:
        err.print(f"unknown prediction ids (first 10): {', '.join(unknown[:10])}")
        raise typer.Exit(1)
