"""Bearer tokens for the admin API: who may change what serves, and under which name.

Tokens come from settings: `admin_tokens` ("name:token,name2:token2", e.g. SLUICE_ADMIN_TOKENS)
and/or `admin_tokens_file` (one "name:token" a line, `#` comments). The name is the actor the
control plane writes to the audit log; the token itself is never logged, shown in a repr, or
echoed in an error message.

A presented token is compared with every configured token in constant time (SHA-256 of both,
then `hmac.compare_digest`, over the whole list without stopping at a match), so neither the
response time nor the order of the list tells which token, or how much of one, was right.
With no tokens configured the admin API is disabled (403), never open.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import Forbidden, Unauthorized
from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

DISABLED_MESSAGE = "admin API disabled: set SLUICE_ADMIN_TOKENS or --admin-tokens-file"
MIN_TOKEN_LENGTH = 16
"""Shorter tokens are accepted but warned about at start-up."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}$")


class AdminTokenError(ValueError):
    """The configured admin tokens are unusable; the message names the problem, never a token."""


@dataclass(frozen=True)
class _Token:
    name: str
    digest: bytes

    def __repr__(self) -> str:
        return f"_Token(name={self.name!r})"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class AdminAuth:
    """Checks `Authorization: Bearer <token>` headers against the configured tokens."""

    realm = "admin API"
    kind = "admin token"
    open_when_empty = False
    """Whether no tokens lets every caller in (admin: no, it closes the admin API)."""

    def __init__(self, pairs: Iterable[tuple[str, str]] = (), *, source: str = "admin tokens") -> None:
        """`pairs`: (name, token). Names must be unique and tokens non-empty and distinct."""
        tokens: list[_Token] = []
        by_digest: dict[bytes, str] = {}
        for index, (raw_name, raw_token) in enumerate(pairs, start=1):
            name, token = raw_name.strip(), raw_token.strip()
            where = f"{source}, entry {index}"
            if not name:
                raise AdminTokenError(f"{where}: the name before ':' is empty")
            if not _NAME.match(name):
                raise AdminTokenError(
                    f"{where}: name {name!r} must be 1-64 letters, digits or _.@+- (starting with a letter or digit)"
                )
            if not token:
                raise AdminTokenError(f"{where}: the token for {name!r} is empty")
            if any(t.name == name for t in tokens):
                raise AdminTokenError(f"{where}: name {name!r} appears more than once; names must be unique")
            digest = _digest(token)
            if digest in by_digest:
                raise AdminTokenError(
                    f"{where}: {name!r} has the same token as {by_digest[digest]!r}; every name needs its own token"
                )
            if len(token) < MIN_TOKEN_LENGTH:
                log.warning("%s for %r is shorter than %d characters", self.kind, name, MIN_TOKEN_LENGTH)
            by_digest[digest] = name
            tokens.append(_Token(name, digest))
        self._tokens = tuple(tokens)

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> AdminAuth:
        pairs: list[tuple[str, str]] = []
        sources: list[str] = []
        if settings.admin_tokens is not None and settings.admin_tokens.get_secret_value().strip():
            pairs += parse_token_list(settings.admin_tokens.get_secret_value())
            sources.append("SLUICE_ADMIN_TOKENS")
        if settings.admin_tokens_file is not None:
            pairs += read_token_file(settings.admin_tokens_file)
            sources.append(str(settings.admin_tokens_file))
        auth = cls(pairs, source=" + ".join(sources) or "admin tokens")
        if auth.enabled:
            log.info("admin API enabled for %s", ", ".join(auth.names))
        else:
            log.warning(DISABLED_MESSAGE)
        return auth

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def replace_with(self, other: AdminAuth) -> None:
        """Take `other`'s tokens, at once (a reload: one assignment, so a check sees the old list or the new)."""
        self._tokens = other._tokens

    @property
    def names(self) -> list[str]:
        return [t.name for t in self._tokens]

    def __repr__(self) -> str:
        return f"AdminAuth(names={self.names!r})"

    def derived_key(self, name: str, purpose: bytes) -> bytes | None:
        """A secret for `purpose` bound to the token called `name` (None: no such token).

        HMAC-SHA256 keyed by the token's digest: every replica configured with the same tokens derives
        the same key, with no state to share; replacing or removing the token changes or removes the key,
        which revokes whatever it signed (the console's sessions). The token cannot be read back from it.
        """
        for token in self._tokens:
            if token.name == name:
                return hmac.new(token.digest, purpose, hashlib.sha256).digest()
        return None

    def authenticate(self, authorization_header: str | None) -> str:
        """The name of the token in an `Authorization: Bearer <token>` header.

        No tokens configured: Forbidden (disabled). No or malformed header: Unauthorized.
        A token that matches none: Forbidden.
        """
        if not self._tokens:
            raise Forbidden(DISABLED_MESSAGE)
        if authorization_header is None or not authorization_header.strip():
            raise Unauthorized(f"{self.realm} needs a bearer token: send 'Authorization: Bearer <token>'")
        scheme, _, credentials = authorization_header.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() != "bearer" or not credentials or " " in credentials:
            raise Unauthorized("malformed Authorization header: expected 'Bearer <token>'")
        presented = _digest(credentials)
        matched: str | None = None
        for token in self._tokens:  # every token, no early exit: constant time in the list
            if hmac.compare_digest(presented, token.digest):
                matched = token.name
        if matched is None:
            raise Forbidden(f"invalid {self.kind}")
        return matched


class InferenceAuth(AdminAuth):
    """Optional keys for inference and model metadata: enforced only when some are configured.

    Same format, same constant-time check as admin tokens; health probes and /metrics stay open.
    """

    realm = "inference"
    kind = "inference key"
    open_when_empty = True

    @classmethod
    def from_inference_settings(cls, settings: GatewaySettings) -> InferenceAuth:
        pairs: list[tuple[str, str]] = []
        if settings.inference_keys is not None and settings.inference_keys.get_secret_value().strip():
            pairs += parse_token_list(settings.inference_keys.get_secret_value(), "SLUICE_INFERENCE_KEYS")
        if settings.inference_keys_file is not None:
            pairs += read_token_file(settings.inference_keys_file, "inference keys")
        auth = cls(pairs, source="inference keys")
        if auth.enabled:
            log.info("inference keys enforced for %s", ", ".join(auth.names))
        return auth

    def check(self, authorization_header: str | None) -> str | None:
        """The key's name; Unauthorized/Forbidden when keys are configured and this header holds none of them.
        None when no keys are configured (inference is open)."""
        if self.enabled:
            return self.authenticate(authorization_header)
        return None


def parse_token_list(value: str, source: str = "SLUICE_ADMIN_TOKENS") -> list[tuple[str, str]]:
    """'name:token,name2:token2' -> [(name, token), ...]. Tokens may contain ':' but not ','."""
    pairs = []
    for index, item in enumerate(value.split(","), start=1):
        if not item.strip():
            continue
        name, sep, token = item.partition(":")
        if not sep:
            raise AdminTokenError(f"{source}, entry {index}: expected name:token")
        pairs.append((name, token))
    return pairs


def read_token_file(path: Path, kind: str = "admin tokens") -> list[tuple[str, str]]:
    """One 'name:token' a line; blank lines and lines starting with '#' are skipped.

    Every way a file can fail to be a list of keys (unreadable, not UTF-8, a malformed line) is an
    `AdminTokenError` naming the file and the line, never the secret: a key reload keeps the old keys on it,
    and a decode error must not escape as a traceback (that is how a broken file once blocked the other's reload).
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise AdminTokenError(f"cannot read {kind} file {path}: {exc.strerror or exc}") from None
    pairs = []
    for number, line_bytes in enumerate(raw.splitlines(), start=1):
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AdminTokenError(
                f"{path}, line {number}: not UTF-8 text (an undecodable byte at column {exc.start + 1}); "
                f"save the {kind} file as UTF-8"
            ) from None
        stripped = line.strip().lstrip("\ufeff")  # a UTF-8 byte-order mark is harmless
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, token = stripped.partition(":")
        if not sep:
            raise AdminTokenError(f"{path}, line {number}: expected name:token")
        if not name.strip():
            raise AdminTokenError(f"{path}, line {number}: the name before ':' is empty")
        if not token.strip():
            raise AdminTokenError(f"{path}, line {number}: the token for {name.strip()!r} is empty")
        pairs.append((name, token))
    return pairs
