"""Object storage for model repositories: S3, GCS and Azure through one library, obstore.

Why obstore and not fsspec (s3fs, gcsfs, adlfs), measured in a fresh Python 3.11 virtual environment:
- install: obstore is one 15 MB wheel (plus typing_extensions) that speaks S3, GCS and Azure; s3fs alone
  adds 52 MB in 20 packages (aiobotocore, botocore, aiohttp, ...), and gcsfs and adlfs each bring their
  cloud's SDK besides. S3, GCS and Azure can all be in the base install with obstore.
- API: a small typed one (a listing with size, ETag and modification time; a streamed get; head) in
  sync and async forms alike, with its own bounded retries and timeouts; fsspec's async filesystems run
  on a private event-loop thread and differ from one store to the next.
- credentials: obstore (Rust's object_store) reads each provider's standard environment: AWS_ACCESS_KEY_ID,
  AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL, web identity tokens (EKS), the ECS
  and EC2 metadata endpoints; GOOGLE_APPLICATION_CREDENTIALS, gcloud's application default credentials file
  and the GCE metadata server; AZURE_STORAGE_ACCOUNT_NAME/KEY, AZURE_CLIENT_ID/SECRET/TENANT_ID, workload and
  managed identity. What it does not read is AWS's shared files (~/.aws/credentials, ~/.aws/config, AWS_PROFILE):
  there boto3's session, which reads them all (profiles, SSO, assumed roles), hands obstore the credentials
  (the 'aws' extra). fsspec would have read those through botocore, at the install cost above.

Credentials never travel in the repository URL: a URL with a user, a password or a query is refused, and
every store error is cut to its first line with known secret values masked before it is logged or shown.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from gateway.errors import RepositoryUnavailable

__all__ = ["RepositoryUnavailable", "RepositoryUrl", "RepositoryUrlError", "open_store", "parse_repository_url"]

if TYPE_CHECKING:
    from obstore.store import ClientConfig, ObjectStore, RetryConfig

SCHEMES = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "az": "az", "azure": "az"}
"""URL schemes a model repository may use, to the store each names."""

EXTRA_HINT = "pip install 'sluicegate[aws]'"

SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_TOKEN",
    "AZURE_CLIENT_SECRET",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
)
"""Environment variables whose values must never appear in a log line or an error."""

_SIGNED = re.compile(r"(?i)(signature|credential|x-amz-security-token|sig|se|sv|token|key)=[^&\s\"'<>]+")


class RepositoryUrlError(ValueError):
    """A --model-repo URL that cannot be used; the message names the option."""


@dataclass(frozen=True)
class RepositoryUrl:
    scheme: str
    """s3, gs or az."""
    bucket: str
    """The bucket (S3, GCS) or container (Azure)."""
    prefix: str
    """The repository's folder inside it, without slashes at either end ('' for the bucket's root)."""

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, *parts: str) -> str:
        """An object's key relative to the store (the store itself is opened with the prefix)."""
        return "/".join(parts)


def is_url(location: str | Path) -> bool:
    return isinstance(location, str) and "://" in location


def parse_repository_url(text: str) -> RepositoryUrl:
    """`s3://bucket/prefix`, `gs://bucket/prefix` or `az://container/prefix`; credentials come from the
    environment, never from the URL (a URL carrying any is refused without echoing it)."""
    parts = urlsplit(text)
    scheme = SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        known = ", ".join(sorted({f"{s}://" for s in SCHEMES.values()}))
        raise RepositoryUrlError(f"--model-repo: unknown scheme {parts.scheme!r}; use a local path or {known}")
    if "@" in parts.netloc or parts.password is not None:
        raise RepositoryUrlError(
            "--model-repo: the URL must not carry credentials; give them in the provider's standard environment "
            "variables or files (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, "
            "GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_ACCOUNT_KEY, ...)"
        )
    if parts.query or parts.fragment:
        raise RepositoryUrlError(
            "--model-repo: the URL must not have a query or a fragment (settings go in the environment)"
        )
    bucket = parts.netloc
    if not bucket:
        raise RepositoryUrlError(f"--model-repo: {scheme}:// needs a bucket, e.g. {scheme}://bucket/models")
    prefix = parts.path.strip("/")
    if any(p in ("", ".", "..") for p in prefix.split("/")) and prefix:
        raise RepositoryUrlError("--model-repo: the prefix must not contain empty, '.' or '..' segments")
    return RepositoryUrl(scheme, bucket, prefix)


def redact(text: str) -> str:
    """The first line of a store's message, with known secret values and signed query values masked."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    for name in SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            line = line.replace(value, "***")
    line = _SIGNED.sub(lambda m: f"{m.group(1)}=***", line)
    return line[:400]


def describe(exc: BaseException) -> str:
    """A store exception as one safe line: its class and its redacted first line."""
    message = redact(str(exc))
    name = type(exc).__name__
    return f"{name}: {message}" if message else name


def open_store(url: RepositoryUrl, *, timeout_s: float = 60.0, connect_timeout_s: float = 5.0) -> ObjectStore:
    """The store for `url`, its credentials from the provider's standard environment and files.

    obstore's own retries are kept short (one retry, bounded time): the caller retries whole fetches with
    backoff and counts them, so an outage is reported within seconds instead of after obstore's three minutes."""
    client: ClientConfig = {
        "timeout": timedelta(seconds=timeout_s),
        "connect_timeout": timedelta(seconds=connect_timeout_s),
    }
    retry: RetryConfig = {"max_retries": 1, "retry_timeout": timedelta(seconds=min(timeout_s, 10.0))}
    try:
        return _open(url, client, retry)
    except RepositoryUrlError:
        raise
    except Exception as exc:  # obstore checks its configuration here, without a request
        hint = " (set AZURE_STORAGE_ACCOUNT_NAME)" if url.scheme == "az" else ""
        raise RepositoryUrlError(f"--model-repo {url}: {describe(exc)}{hint}") from None


def _open(url: RepositoryUrl, client: ClientConfig, retry: RetryConfig) -> ObjectStore:
    from obstore.store import AzureStore, GCSStore, S3Store

    prefix = url.prefix or None
    if url.scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
        if endpoint.startswith("http://"):
            client["allow_http"] = True  # the endpoint the environment names is plain HTTP (a local S3 server)
        provider = _aws_shared_files_provider()
        if provider is not None:
            return S3Store(
                url.bucket, prefix=prefix, client_options=client, retry_config=retry, credential_provider=provider
            )
        return S3Store(url.bucket, prefix=prefix, client_options=client, retry_config=retry)
    if url.scheme == "gs":
        return GCSStore(url.bucket, prefix=prefix, client_options=client, retry_config=retry)
    return AzureStore(url.bucket, prefix=prefix, client_options=client, retry_config=retry)


def _aws_shared_files_provider() -> Any:
    """boto3's credentials when they can only come from AWS's shared files (a profile, ~/.aws/...), else None
    (obstore reads the environment, web identity and the metadata endpoints itself)."""
    if os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        return None
    home = Path(os.path.expanduser("~"))
    files = [
        Path(os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws" / "credentials"),
        Path(os.environ.get("AWS_CONFIG_FILE") or home / ".aws" / "config"),
    ]
    if not os.environ.get("AWS_PROFILE") and not any(f.is_file() for f in files):
        return None
    try:
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        raise RepositoryUrlError(
            f"--model-repo: AWS credentials are in shared files (~/.aws or AWS_PROFILE), which need boto3: {EXTRA_HINT}"
        ) from None
    return Boto3CredentialProvider()
