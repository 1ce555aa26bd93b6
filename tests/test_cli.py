"""The `sluice` command line: help for every command, the demo repository, clear start-up errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from gateway.cli.main import app

runner = CliRunner()


@pytest.mark.parametrize("command", [[], ["serve"], ["demo"]])
def test_help_for_every_command(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_serve_help_lists_every_option() -> None:
    out = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    for option in ("--model-repo", "--host", "--http-port", "--grpc-port", "--max-body-bytes", "--drain-timeout"):
        assert option in out


def test_demo_build_only_writes_loadable_onnx_models(tmp_path: Path) -> None:
    repo = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--build-only", "--dir", str(repo)])
    assert result.exit_code == 0, result.output
    models = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("model.onnx"))
    assert models == [
        "churn/1/model.onnx",
        "churn/2/model.onnx",
        "churn/3/model.onnx",
        "classifier/1/model.onnx",
        "classifier/2/model.onnx",
        "dtypes/1/model.onnx",
        "fixed/1/model.onnx",
        "mlp/1/model.onnx",
        "mlp/2/model.onnx",
        "multi_io/1/model.onnx",
    ]
    for path in models:
        ort.InferenceSession(str(repo / path), providers=["CPUExecutionProvider"])


def test_serve_on_missing_repository_fails_clearly(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--model-repo", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "is not a directory" in proc.stderr
