"""A key's quota holds for the whole of `sluice serve --workers 2`, not per worker: a real gateway with two
workers, driven over enough connections that both serve the key, admits about rate x duration + burst
(each worker's own bucket admitted twice that). Ctrl-C then stops the supervisor with status 130.
"""

from __future__ import annotations

import json
import secrets
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from prometheus_client.mmap_dict import MmapedDict

from tests.helpers import gateway_process, wait_until
from tests.models import build_lookup

KEY = secrets.token_urlsafe(24)
RATE, BURST = 4.0, 4.0
BODY = {"inputs": [{"name": "idx", "shape": [1, 1], "datatype": "INT64", "data": [3]}]}


def admitted_by_worker(metrics_dir: Path) -> dict[int, float]:
    """pid -> requests of key `app` each worker admitted, from prometheus_client's per-process counter files."""
    admitted: dict[int, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            metric, _name, labels, _help = json.loads(key)
            if metric == "sluice_inference_key_requests" and labels == {"key_name": "app", "outcome": "admitted"}:
                admitted[pid] = admitted.get(pid, 0.0) + value
    return admitted


def test_a_keys_quota_is_shared_by_the_workers(tmp_path: Path) -> None:
    build_lookup(tmp_path / "models" / "lookup" / "1" / "model.onnx", rows=10)
    (tmp_path / "inference.keys").write_text(f"app:{KEY}\n")
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    with gateway_process(
        tmp_path / "models",
        "--workers",
        "2",
        "--inference-keys-file",
        str(tmp_path / "inference.keys"),
        "--inference-quotas",
        f"app={RATE:g}/{BURST:g}",
        tmp=tmp_path,
        env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
    ) as gw:
        answers: list[tuple[float, float, int]] = []  # (sent, answered, status)
        stop = threading.Event()

        def client() -> None:  # a connection of its own: the kernel gives each to one worker
            with httpx.Client(base_url=gw.http_url, timeout=10) as http:
                while not stop.is_set():
                    sent = time.monotonic()
                    status = http.post(
                        "/v2/models/lookup/infer", json=BODY, headers={"Authorization": f"Bearer {KEY}"}
                    ).status_code
                    answers.append((sent, time.monotonic(), status))

        threads = [threading.Thread(target=client) for _ in range(16)]
        for thread in threads:
            thread.start()
        time.sleep(10.0)
        stop.set()
        for thread in threads:
            thread.join(30)
        # Every admission happened between the first request sent and the last answer.
        duration = max(a[1] for a in answers) - min(a[0] for a in answers)
        statuses = Counter(status for _, _, status in answers)

        assert set(statuses) <= {200, 429}, statuses
        by_worker = admitted_by_worker(metrics_dir)
        assert len(by_worker) == 2 and all(n > 0 for n in by_worker.values()), by_worker  # both workers served
        expected = RATE * duration + BURST
        admitted = statuses[200]
        print(f"answers {dict(statuses)} in {duration:.1f} s (quota: {expected:.0f}); admitted by worker {by_worker}")
        assert sum(by_worker.values()) == admitted
        # Each worker on its own bucket admits about twice `expected`; the shared bucket, `expected` at most.
        assert 0.7 * expected <= admitted <= expected + 0.1 * RATE * duration, (admitted, expected, statuses)

        gw.proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean drain, and the status a shell expects
        assert gw.proc.wait(60) == 130
    wait_until(lambda: gw.proc.poll() is not None, timeout=5)
