"""The Kubernetes manifests of deploy/kubernetes (the gateway without Ray), checked offline against the
Kubernetes schemas and against the code they run.

Every core-API object is validated with `kubernetes-validate` (strict: an unknown or misspelt field fails) for
the oldest Kubernetes the manifests claim and the newest the package ships; the Prometheus Operator objects are
checked structurally and their rule groups by `promtool check rules`. Then the manifests are cross-checked
with the code, as tests/test_deploy.py does for KubeRay: the container's arguments parse as `sluice serve`
options, every SLUICE_* variable is a setting, ports, probe paths, the drain timeout, selectors, Secrets,
volumes and the image agree. Last, a real gateway is started with the Deployment's own arguments (two
workers, PostgreSQL, the admin tokens file laid out as the kubelet mounts a Secret): the probe and scrape
paths answer, rotating the Secret changes the tokens without a restart, and SIGTERM drains within the grace
period.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import kubernetes_validate
import pytest
import tomllib
import typer
import yaml

from dashboards import build
from dashboards import kubernetes as generator
from gateway.cli.main import app
from gateway.settings import GatewaySettings
from gateway.workers import DRAIN_MARGIN_S, KILL_WAIT_S
from tests.databases import pg_schema
from tests.helpers import ROOT, gateway_process, wait_until
from tests.prometheus import require_binary

SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
KUBE = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
OLDEST_KUBERNETES = "1.30"
"""The oldest Kubernetes the manifests are written for (the README says so)."""
OPERATOR_API = "monitoring.coreos.com/v1"
AWS_VARIABLES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"}
"""The AWS SDKs' standard variables: the object-store client reads them, so no credential is in the URL."""
DEFAULTS = GatewaySettings()


def kustomization() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    return doc


@functools.cache
def load(name: str) -> list[dict[str, Any]]:
    """The file's documents, parsed once (the tests only read them: one that changes one copies it first)."""
    return [doc for doc in yaml.load_all((KUBE / name).read_text(), Loader=SafeLoader) if doc]


def objects() -> dict[str, dict[str, Any]]:
    """The kustomization's objects by kind (one of each)."""
    docs = [doc for name in kustomization()["resources"] for doc in load(name)]
    by_kind = {doc["kind"]: doc for doc in docs}
    assert len(by_kind) == len(docs), "one object of each kind"
    return by_kind


def pod() -> dict[str, Any]:
    spec: dict[str, Any] = objects()["Deployment"]["spec"]["template"]
    return spec


def container() -> dict[str, Any]:
    (gateway,) = pod()["spec"]["containers"]
    assert isinstance(gateway, dict)
    return gateway


def serve_args() -> list[str]:
    gateway = container()
    assert gateway["command"] == ["sluice"] and gateway["args"][0] == "serve"
    args: list[str] = gateway["args"][1:]
    assert all(isinstance(a, str) for a in args), "every argument a string (a bare number is not a valid arg)"
    return args


def parsed_options() -> dict[str, Any]:
    """The container's arguments parsed by the real `sluice serve` command (an unknown option fails here)."""
    serve = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    with serve.make_context("serve", serve_args()) as ctx:
        params: dict[str, Any] = ctx.params
    return params


def option_value(name: str) -> str:
    args = serve_args()
    assert args.count(name) == 1, name
    return args[args.index(name) + 1]


def env() -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container()["env"]}


def mounts() -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in container()["volumeMounts"]}


def volumes() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod()["spec"]["volumes"]}


def named_port(name_or_number: str | int) -> int:
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    return ports[name_or_number] if isinstance(name_or_number, str) else name_or_number


# -- schemas -----------------------------------------------------------------------------------------------


def core_documents() -> list[tuple[str, dict[str, Any]]]:
    names = [*kustomization()["resources"], "secrets.example.yaml"]
    return [(n, d) for n in names for d in load(n) if not d["apiVersion"].startswith("monitoring.coreos.com/")]


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, kubernetes_validate.latest_version()])
def test_every_core_manifest_is_valid_against_the_kubernetes_schemas(version: str) -> None:
    documents = core_documents()
    assert {d["kind"] for _, d in documents} == {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "Secret"}
    for name, doc in documents:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']} is not valid Kubernetes {version}: {exc}")
    broken = copy.deepcopy(objects()["Deployment"])
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPorts"] = 8000
    with pytest.raises(kubernetes_validate.ValidationError):  # strict: a misspelt field is caught
        kubernetes_validate.validate(broken, version, strict=True)


def test_the_kustomization_lists_every_manifest_and_ships_no_secret() -> None:
    listed = kustomization()["resources"]
    on_disk = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml", "secrets.example.yaml"}
    assert sorted(listed) == sorted(on_disk)
    assert "Secret" not in objects()
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return  # the structure above is the check; kubectl (kustomize inside) builds it where it is installed
    built = subprocess.run([kubectl, "kustomize", str(KUBE)], capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    assert sorted(d["kind"] for d in yaml.safe_load_all(built.stdout)) == sorted(objects())


def test_the_prometheus_operator_objects_are_well_formed() -> None:
    monitor, rule, service = objects()["ServiceMonitor"], objects()["PrometheusRule"], objects()["Service"]
    for doc in (monitor, rule):
        assert doc["apiVersion"] == OPERATOR_API and set(doc) == {"apiVersion", "kind", "metadata", "spec"}
        assert doc["metadata"]["name"].startswith("sluice")
    assert set(monitor["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel", "podTargetLabels"}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in port_names, "the ServiceMonitor names a port the Service has"
    assert named_port(endpoint["port"]) == DEFAULTS.http_port, "/metrics is served on the HTTP port"
    assert endpoint["path"] == "/metrics" and re.fullmatch(r"\d+[smh]", endpoint["interval"])
    assert "jobLabel" not in monitor["spec"], "job = the Service's name"
    assert service["metadata"]["name"].startswith("sluice"), "the alert rules select jobs named sluice*"

    assert set(rule["spec"]) == {"groups"}
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"} and group["rules"]
        for r in group["rules"]:
            assert ("record" in r) != ("alert" in r) and isinstance(r["expr"], str), r
            assert set(r) <= {"record", "alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, r
            for key in ("labels", "annotations"):
                assert all(isinstance(v, str) for v in r.get(key, {}).values()), r
            if "alert" in r:
                assert r["annotations"]["runbook_url"] and r["labels"]["severity"] in ("critical", "warning"), r


def test_promtool_checks_the_prometheusrule_groups(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    groups = objects()["PrometheusRule"]["spec"]["groups"]
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": groups}))
    out = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    count = sum(len(g["rules"]) for g in groups)
    assert out.returncode == 0 and f"SUCCESS: {count} rules found" in out.stdout, out.stdout + out.stderr


# -- generated files ---------------------------------------------------------------------------------------


def test_the_generated_files_are_what_the_generator_writes_now(tmp_path: Path) -> None:
    for name, text in generator.generate().items():
        assert (KUBE / name).read_text() == text, f"deploy/kubernetes/{name} is stale: run make dashboards"
    alerts = yaml.safe_load((ROOT / "dashboards" / "alerts.yml").read_text())
    assert objects()["PrometheusRule"]["spec"]["groups"] == alerts["groups"]
    # the command writes the same files (to another folder here)
    out = subprocess.run(
        [sys.executable, "-m", "dashboards.kubernetes", str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == generator.generate()
    with pytest.raises(ValueError, match="groups"):
        generator.prometheus_rule("rules: []\n")


def test_the_dashboards_configmap_feeds_grafanas_sidecar() -> None:
    config_map = objects()["ConfigMap"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1", "the sidecar matches the string '1'"
    files = {p.name: p.read_text() for p in (ROOT / "dashboards").glob("*.json")}
    assert config_map["data"] == files
    assert set(files) == {f"{make().uid}.json" for make in build.DASHBOARDS}
    for name, text in config_map["data"].items():
        assert json.loads(text)["uid"] == name.removesuffix(".json")
    # kubectl apply (client side) copies the object into an annotation, which Kubernetes caps at 256 KiB
    assert len(json.dumps(config_map).encode()) < 256 * 1024


# -- in step with the code ---------------------------------------------------------------------------------


def test_the_container_runs_sluice_serve_with_real_options_and_settings() -> None:
    params = parsed_options()  # click refuses an unknown option or a value of the wrong type
    assert params["host"] == "0.0.0.0", "inside a pod the gateway must listen on the pod's address"
    assert params["workers"] == "auto"
    assert params["log_format"] == "json"
    fields = set(GatewaySettings.model_fields)
    sluice_env = {n for n in env() if n.startswith("SLUICE_")}
    assert {n.removeprefix("SLUICE_").lower() for n in sluice_env} <= fields, sluice_env
    assert set(env()) - sluice_env <= AWS_VARIABLES | {"HOME", "TMPDIR"}
    assert set(env()) >= AWS_VARIABLES
    for name, var in env().items():
        if name in ("SLUICE_DATABASE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
            assert "value" not in var and "secretKeyRef" in var["valueFrom"], f"{name} comes from a Secret"
    assert "SLUICE_ADMIN_TOKENS" not in env(), "admin tokens come as a file, so a rotation needs no restart"
    # several pods share one control plane: a pod that does not lead forwards admin calls to the leader's
    # private listener at the address it advertises, which must be the pod's own, reachable from the others
    assert objects()["Deployment"]["spec"]["replicas"] > 1
    assert env()["SLUICE_CONTROL_HOST"]["value"] == "0.0.0.0"
    assert env()["SLUICE_ADVERTISE_HOST"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}

    repo = urlsplit(option_value("--model-repo"))
    assert repo.scheme == "s3" and repo.netloc and repo.path.strip("/")
    assert "@" not in repo.netloc and not repo.query and not repo.fragment, "no credential in the URL"


def test_ports_agree_with_the_service_and_the_gateways_defaults() -> None:
    params = parsed_options()
    expected = {"http": DEFAULTS.http_port, "grpc": DEFAULTS.grpc_port}
    assert (params["http_port"], params["grpc_port"]) == (expected["http"], expected["grpc"])
    assert {p["name"]: p["containerPort"] for p in container()["ports"]} == expected
    service = objects()["Service"]
    for port in service["spec"]["ports"]:
        assert named_port(port["targetPort"]) == expected[port["name"]] == port["port"]
        assert port["appProtocol"] == port["name"]
    assert {p["name"] for p in service["spec"]["ports"]} == set(expected)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert named_port(container()[probe]["httpGet"]["port"]) == expected["http"], probe


def test_the_grace_period_covers_the_pause_the_drain_and_the_supervisors_margin() -> None:
    spec = pod()["spec"]
    drain = float(option_value("--drain-timeout"))
    assert drain == parsed_options()["drain_timeout"] > 0
    pause = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep"
    # Kubernetes counts the preStop hook inside the grace period; after SIGTERM the supervisor waits the drain
    # timeout and its margin, then kills a worker still there and waits for it.
    assert spec["terminationGracePeriodSeconds"] > float(pause[1]) + drain + DRAIN_MARGIN_S + KILL_WAIT_S


def test_selectors_match_the_pods() -> None:
    labels = pod()["metadata"]["labels"]
    deployment, service, budget = objects()["Deployment"], objects()["Service"], objects()["PodDisruptionBudget"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert deployment["spec"]["replicas"] > budget["spec"]["maxUnavailable"], "a drain leaves a pod serving"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_the_pod_is_non_root_on_a_read_only_root_with_writable_state_and_temp() -> None:
    spec, gateway = pod()["spec"], container()
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert gateway["securityContext"]["readOnlyRootFilesystem"] is True
    assert gateway["securityContext"]["allowPrivilegeEscalation"] is False
    assert gateway["securityContext"]["capabilities"]["drop"] == ["ALL"]
    writable = {path for path, m in mounts().items() if "emptyDir" in volumes()[m["name"]]}
    assert option_value("--state-dir") in writable, "the state dir (model cache, spool, reports) is writable"
    assert env()["TMPDIR"]["value"] in writable and env()["HOME"]["value"] in writable
    for volume in volumes().values():
        assert "hostPath" not in volume and "persistentVolumeClaim" not in volume, "nothing shared between pods"


def quantity(text: str) -> int:
    """A Kubernetes byte quantity ("20Gi", "512Mi") in bytes (the suffixes these manifests use)."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    match = re.fullmatch(r"(\d+)([KMGT]i)?", text)
    assert match is not None, text
    return int(match.group(1)) * units.get(match.group(2) or "", 1)


def test_resources_are_guaranteed_and_the_ephemeral_limit_holds_the_emptydirs() -> None:
    resources = container()["resources"]
    for key in ("cpu", "memory"):  # Guaranteed QoS: last to be evicted, and --workers auto sees a whole limit
        assert resources["requests"][key] == resources["limits"][key], key
    assert int(resources["limits"]["cpu"]) >= 1, "a whole CPU at least: --workers auto rounds the limit down"
    empty_dirs = sum(quantity(v["emptyDir"]["sizeLimit"]) for v in volumes().values() if "emptyDir" in v)
    assert quantity(resources["limits"]["ephemeral-storage"]) > empty_dirs, "the emptyDirs fill before eviction"


def test_every_secret_the_pod_reads_is_in_the_example_and_the_tokens_file_is_a_secret_volume() -> None:
    example = {d["metadata"]["name"]: d["stringData"] for d in load("secrets.example.yaml")}
    for name, var in env().items():
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None and not ref.get("optional"):
            assert ref["key"] in example.get(ref["name"], {}), f"{name}: {ref} is not in secrets.example.yaml"
    tokens = Path(option_value("--admin-tokens-file"))
    mount = mounts()[str(tokens.parent)]
    assert mount["readOnly"] is True and "subPath" not in mount, "a subPath mount never sees an edited Secret"
    secret = volumes()[mount["name"]]["secret"]
    assert {item["path"]: item["key"] for item in secret["items"]} == {tokens.name: "tokens"}
    assert "tokens" in example[secret["secretName"]]
    assert secret["defaultMode"] & 0o007 == 0, "not readable by others"


def test_the_image_and_python_are_what_deploy_dockerfile_builds() -> None:
    dockerfile = DOCKERFILE.read_text()
    tag = re.search(r"-t (\S+) ", dockerfile)
    assert tag is not None and container()["image"] == tag.group(1)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert tag.group(1).endswith(":" + project["version"])
    assert container()["command"][0] in project["scripts"], "the console script the image installs"
    extras = re.search(r'pip install [^"]*"/opt/sluice\[([a-z,]+)\]"', dockerfile)
    assert extras is not None and "cpu" in extras.group(1).split(","), "ONNX Runtime is in the image"
    base = re.search(r"^FROM \S+-py(\d)(\d+)\S*", dockerfile, re.M)
    assert base is not None
    required = tuple(int(x) for x in project["requires-python"].removeprefix(">=").split("."))
    assert (int(base.group(1)), int(base.group(2))) >= required
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] != "root", "the image ends as a non-root user (runAsNonRoot needs one)"


def test_the_readme_says_what_to_create_and_how_to_apply() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "Kubernetes (without Ray)" in readme and "kubectl apply -k deploy/kubernetes" in readme
    for secret in {d["metadata"]["name"] for d in load("secrets.example.yaml")}:
        assert secret in readme, secret


# -- a real gateway with the Deployment's arguments ---------------------------------------------------------


@pytest.fixture
def pg_schema_url(pg_url: str) -> Iterator[str]:
    with pg_schema(pg_url, "k8s") as url:
        yield url


class SecretVolume:
    """A directory laid out as the kubelet mounts a Secret: each key a symlink through `..data` to a timestamped
    directory; an update writes a new directory and swaps `..data` with one rename."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()

    def write(self, files: dict[str, str]) -> None:
        generation = self.root / f"..{uuid.uuid4().hex}"
        generation.mkdir()
        for name, text in files.items():
            (generation / name).write_text(text)
        old = (self.root / "..data").resolve() if (self.root / "..data").exists() else None
        (self.root / "..data_tmp").symlink_to(generation.name)
        os.rename(self.root / "..data_tmp", self.root / "..data")
        for name in files:
            if not (self.root / name).is_symlink():
                (self.root / name).symlink_to(f"..data/{name}")
        if old is not None:
            shutil.rmtree(old)


def test_a_gateway_started_with_the_deployments_arguments_serves_its_probes_and_rotates_tokens(
    tmp_path: Path, demo_repo: Path, pg_schema_url: str
) -> None:
    tokens = SecretVolume(tmp_path / "admin")
    old, new = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    tokens.write({"tokens": f"# rotated by editing the Secret\nops:{old}\n"})
    # The Deployment's arguments, but the places and ports of this machine (gateway_process supplies them)
    local = {"--model-repo", "--host", "--http-port", "--grpc-port", "--state-dir", "--admin-tokens-file"}
    args, it = [], iter(serve_args())
    for arg in it:
        if arg in local:
            next(it)
        else:
            args.append(arg)
    assert args[args.index("--workers") + 1] == "auto"
    env_vars = {n: v["value"] for n, v in env().items() if "value" in v and n.startswith("SLUICE_")}
    env_vars |= {
        "SLUICE_DATABASE_URL": pg_schema_url,  # from the sluice-db Secret there
        "SLUICE_ADVERTISE_HOST": "127.0.0.1",  # status.podIP there
        "SLUICE_ADMIN_TOKENS": "",  # none: only the file, as there
        "TMPDIR": str(tmp_path),
    }
    with gateway_process(
        demo_repo,
        *args,
        "--admin-tokens-file",
        str(tokens.root / "tokens"),
        tmp=tmp_path,
        env=env_vars,
        ready_timeout=300,  # two workers spawned at once on a busy 2-core box
    ) as gw:
        for name in ("startupProbe", "readinessProbe", "livenessProbe"):
            path = container()[name]["httpGet"]["path"]
            assert httpx.get(gw.http_url + path, timeout=10).status_code == 200, (name, path)
        assert httpx.get(gw.http_url + "/v2/health/lively", timeout=10).status_code == 404
        scrape = objects()["ServiceMonitor"]["spec"]["endpoints"][0]["path"]
        metrics = httpx.get(gw.http_url + scrape, timeout=10)
        assert metrics.status_code == 200 and "sluice_model_ready{" in metrics.text

        def answers(token: str) -> int:
            headers = {"Authorization": f"Bearer {token}"}
            return httpx.get(gw.http_url + "/admin/models", headers=headers, timeout=10).status_code

        assert answers(old) == 200 and answers(new) == 403
        tokens.write({"tokens": f"ops:{new}\n"})
        # every worker reloads on its own: ask several times (new connections reach different workers)
        wait_until(
            lambda: all(answers(new) == 200 and answers(old) == 403 for _ in range(6)),
            timeout=60,
            what="the rotated admin token to be in force on every worker",
        )
        grace = pod()["spec"]["terminationGracePeriodSeconds"]
        pause = float(container()["lifecycle"]["preStop"]["exec"]["command"][1])
        assert gw.terminate(timeout=grace - pause) == 0, gw.logs()[-3000:]
    assert old not in gw.logs() and new not in gw.logs()
