"""`sluice labels import` against a real gateway: labels land, repeats are idempotent, unknown ids fail."""

from __future__ import annotations

from pathlib import Path

import httpx
from typer.testing import CliRunner

from gateway.cli.main import app
from tests.helpers import gateway_process

ROW = [0.1] * 32


def test_labels_import_from_csv(demo_repo: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    with gateway_process(demo_repo, tmp=tmp_path) as gw:
        ids = []
        for i in range(5):
            body = {"id": f"req-{i}", "inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": ROW}]}
            r = httpx.post(f"{gw.http_url}/v2/models/classifier/infer", json=body)
            assert r.status_code == 200
            ids.append(r.json()["id"])
        env = {"SLUICE_URL": gw.http_url}

        def imported(text: str) -> tuple[int, str]:
            path = tmp_path / "labels.csv"
            path.write_text(text)
            result = runner.invoke(app, ["labels", "import", str(path), "--model", "classifier"], env=env)
            return result.exit_code, result.output

        rows = "".join(f"{i},{n % 8}\n" for n, i in enumerate(ids))
        with_unknown = "id,value\n" + rows + "never-served,3\n"
        code, out = imported(with_unknown)
        assert code == 1 and "never-served" in out and "1 unknown ids" in out

        code, out = imported("id,value\n" + rows)
        assert code == 0, out
        assert "5 stored" in out
        code, out = imported("id,value\n" + rows)
        assert code == 0 and "0 stored, 5 unchanged" in out

        code, out = imported("ident,label\nx,1\n")
        assert code == 2 and "no column 'id'" in out
