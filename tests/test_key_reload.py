"""`KeyReloader` against real files: the decisions a key file's change leads to, one poll at a time.

A file is read while it is being written more often than one would think (an editor's save truncates then
writes; `>` redirection does too): such a read must never open inference to anyone, and a change is read
once it has settled, not in the middle of its write.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from gateway.admin.auth import AdminAuth, InferenceAuth
from gateway.admin.key_reload import KeyReloader
from gateway.settings import GatewaySettings

A, B = (secrets.token_urlsafe(24) for _ in range(2))
OPS = secrets.token_urlsafe(24)


def counts(registry: CollectorRegistry, kind: str, outcome: str) -> float:
    value = registry.get_sample_value("sluice_key_reloads_total", {"kind": kind, "outcome": outcome})
    return value or 0.0


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    keys, tokens = tmp_path / "inference.keys", tmp_path / "admin.tokens"
    keys.write_text(f"a:{A}\nb:{B}\n")
    tokens.write_text(f"ops:{OPS}\n")
    return keys, tokens


def reloader(files: tuple[Path, Path]) -> tuple[KeyReloader, AdminAuth, InferenceAuth, CollectorRegistry]:
    keys, tokens = files
    settings = GatewaySettings(inference_keys_file=keys, admin_tokens_file=tokens, admin_tokens=None)
    admin, inference = AdminAuth.from_settings(settings), InferenceAuth.from_inference_settings(settings)
    registry = CollectorRegistry()
    counter = Counter("sluice_key_reloads", "reloads", ["kind", "outcome"], registry=registry)
    return KeyReloader(settings, admin, inference, counter), admin, inference, registry


def test_an_emptied_inference_keys_file_never_opens_inference(files: tuple[Path, Path]) -> None:
    keys, _ = files
    keys_reloader, _, inference, counter = reloader(files)
    keys.write_text("")  # a save caught between its truncation and its write
    keys_reloader.reload("file changed")
    assert inference.enabled and inference.names == ["a", "b"], "an empty read opened inference to anyone"
    assert counts(counter, "inference", "error") == 1 and counts(counter, "inference", "ok") == 0

    keys.write_text("# every key commented out\n")
    keys_reloader.reload("SIGHUP")
    assert inference.names == ["a", "b"] and counts(counter, "inference", "error") == 2

    keys.write_text(f"a:{A}\n")  # a real edit still goes through
    keys_reloader.reload("SIGHUP")
    assert inference.names == ["a"] and counts(counter, "inference", "ok") == 1


def test_an_emptied_admin_tokens_file_is_taken_it_only_closes_the_admin_api(files: tuple[Path, Path]) -> None:
    _, tokens = files
    keys_reloader, admin, _, counter = reloader(files)
    tokens.write_text("")
    keys_reloader.reload("SIGHUP")
    assert not admin.enabled and counts(counter, "admin", "ok") == 1


def test_a_poll_reads_a_change_once_it_has_settled(files: tuple[Path, Path]) -> None:
    keys, _ = files
    keys_reloader, _, inference, counter = reloader(files)
    assert keys_reloader.poll() is False  # nothing changed

    with keys.open("w") as half_written:  # truncated, and its first line written but not its second
        half_written.write(f"a:{A}\n")
        half_written.flush()
        assert keys_reloader.poll() is False, "a file read in the middle of its write"
        half_written.write(f"c:{secrets.token_urlsafe(24)}\n")
    assert inference.names == ["a", "b"]
    assert keys_reloader.poll() is False  # changed again since the last poll: not settled yet
    assert keys_reloader.poll() is True  # the same as at the last poll: read now
    assert inference.names == ["a", "c"] and counts(counter, "inference", "ok") == 1
    assert keys_reloader.poll() is False  # read once, not again
