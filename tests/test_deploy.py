"""The shipped KubeRay manifest and its container recipe, checked against the code they run.

No Kubernetes here: the RayService's Serve config is validated with Ray Serve's own schema, its import path is
built for real, and every setting, port, path and version it names is cross-checked with the gateway's
settings, the Service, the Dockerfile and pyproject.toml, so none of them can drift apart unnoticed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml

from gateway.settings import GatewaySettings
from gateway.storage.object_store import parse_repository_url
from tests.helpers import ROOT

pytest.importorskip("ray")

MANIFEST = ROOT / "deploy" / "kuberay" / "rayservice.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def documents() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text())}


def serve_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(documents()["RayService"]["spec"]["serveConfigV2"])
    return config


def containers() -> list[dict[str, Any]]:
    cluster = documents()["RayService"]["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]
    return [c for pod in pods for c in pod["spec"]["containers"]]


def test_the_serve_config_is_valid_by_ray_serves_own_schema() -> None:
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(serve_config())
    assert str(schema.proxy_location).endswith("Disabled"), "clients reach the ingress replicas' own servers"
    (app,) = schema.applications
    assert app.import_path == "gateway.ray.app:build" and app.name == "sluice-ingress"


def test_the_import_path_builds_the_ingress_application_from_the_args(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    (app,) = serve_config()["applications"]
    module, _, name = app["import_path"].partition(":")
    build = getattr(importlib.import_module(module), name)
    monkeypatch.setenv("SLUICE_DATABASE_URL", "postgresql+psycopg://sluice@postgres/sluice")
    application = build(app["args"])
    assert type(application).__name__ == "Application"
    assert {d["name"] for d in app["deployments"]} == {"ingress"}
    monkeypatch.delenv("SLUICE_DATABASE_URL")
    from gateway.ray.driver import RayModeError

    with pytest.raises(RayModeError, match="PostgreSQL"):
        build(app["args"])


def test_every_setting_the_manifest_names_is_a_setting() -> None:
    fields = set(GatewaySettings.model_fields)
    (app,) = serve_config()["applications"]
    assert set(app["args"]) <= fields, set(app["args"]) - fields
    envs = [env for c in containers() for env in c.get("env", [])]
    names = {env["name"] for env in envs if env["name"].startswith("SLUICE_")}
    assert names and {n.removeprefix("SLUICE_").lower() for n in names} <= fields
    # The object store's credentials: its SDK's standard variables, each from the Secret, none written here.
    provider = [env for env in envs if not env["name"].startswith("SLUICE_")]
    assert provider and all(env["name"].startswith("AWS_") for env in provider)
    assert all(env["valueFrom"]["secretKeyRef"]["name"] == "sluice-model-store" for env in provider)
    assert not any("value" in env for env in provider)
    dockerfile_env = set(re.findall(r"\b(SLUICE_[A-Z_]+)=", DOCKERFILE.read_text()))
    assert {n.removeprefix("SLUICE_").lower() for n in dockerfile_env} <= fields


def test_ports_paths_image_and_versions_agree() -> None:
    (app,) = serve_config()["applications"]
    args = app["args"]
    service = documents()["Service"]
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {args["http_port"], args["grpc_port"]}
    workers = documents()["RayService"]["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    for group in workers:
        labels = group["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items(), "the Service selects the worker pods"
        (container,) = group["template"]["spec"]["containers"]
        assert {p["containerPort"] for p in container["ports"]} == {args["http_port"], args["grpc_port"]}
        assert container["readinessProbe"]["httpGet"]["port"] == args["http_port"]
    # The repository is a bucket every pod reads (no shared volume); each pod fetches into its own cache.
    url = parse_repository_url(args["model_repo"])
    assert url.scheme == "s3" and url.bucket
    for container in containers():
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        (cache,) = [env["value"] for env in container["env"] if env["name"] == "SLUICE_MODEL_CACHE_DIR"]
        assert cache in mounts
    dockerfile = DOCKERFILE.read_text()

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    tag = re.search(r"-t (\S+) ", dockerfile)
    assert tag is not None and {c["image"] for c in containers()} == {tag.group(1)}
    assert tag.group(1).endswith(":" + project["version"]), "the image is tagged with the package's version"
    extras = re.search(r'pip install [^"]*"/opt/sluice\[([a-z,]+)\]"', dockerfile)
    assert extras is not None and set(extras.group(1).split(",")) <= set(project["optional-dependencies"])
    for copied in re.findall(r"^COPY (.+) /opt/sluice", dockerfile, re.M):
        for path in copied.split():
            assert (ROOT / path).exists(), path
    base = re.search(r"^FROM rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)", dockerfile, re.M)
    assert base is not None
    ray_version = documents()["RayService"]["spec"]["rayClusterConfig"]["rayVersion"]
    assert base.group(1) == ray_version
    (ray_requirement,) = project["optional-dependencies"]["ray"]
    minimum = re.search(r">=(\d+)\.(\d+)", ray_requirement)
    assert minimum is not None
    assert tuple(int(x) for x in ray_version.split(".")[:2]) >= (int(minimum.group(1)), int(minimum.group(2)))
    python = (int(base.group(2)), int(base.group(3)))
    assert python >= tuple(int(x) for x in project["requires-python"].removeprefix(">=").split("."))


def test_the_manifest_describes_itself_truly() -> None:
    text = MANIFEST.read_text()
    assert "tests/test_deploy.py" in text
    assert Path(ROOT / "gateway" / "ray" / "app.py").exists()
