"""deploy/ and docker-compose.yml: valid against their schemas (offline), every GF_ variable a real configuration
key, probes, grace periods and scrape settings that fit what gateway does."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import msgspec
import pytest
import yaml

from gateway.__main__ import SHUTDOWN_MARGIN
from gateway.backends.registry import plugin_for
from gateway.config import Config
from gateway.datasources.models import AddDataSourceCommand
from gateway.keys import draining_key

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
# the oldest release the manifests need: native sidecars (restartPolicy: Always on an init container) are GA in 1.33
KUBERNETES_VERSION = "1.33.0"
SERVICE_MONITOR_SCHEMA = DEPLOY / "schemas" / "servicemonitor-monitoring.coreos.com-v1.json"
GRAFANA_PROVISIONING_KEYS = {
    "name", "type", "access", "orgId", "uid", "url", "user", "database", "basicAuth", "basicAuthUser",
    "withCredentials", "isDefault", "jsonData", "secureJsonData", "version", "editable", "apiVersion",
}


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    found = [(path, doc) for path in sorted(KUBERNETES.rglob("*.yaml"))
             for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert found
    return found


def by_kind(kind: str, directory: str) -> list[dict[str, Any]]:
    return [doc for path, doc in manifests() if doc["kind"] == kind and path.parent.name == directory]


def gateway_pods() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(directory, pod spec, gateway container) of every workload that runs gateway."""
    for path, doc in manifests():
        if doc["kind"] != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            if container["image"].startswith("gateway:"):
                yield path.parent.name, pod, container


def container_env(directory: str, container: dict[str, Any]) -> dict[str, str]:
    """The environment Kubernetes gives the container: envFrom ConfigMaps and Secrets, then env (values and
    secretKeyRef), read from the manifests next to it."""
    sources = {(doc["kind"], doc["metadata"]["name"]): {**doc.get("data", {}), **doc.get("stringData", {})}
               for kind in ("ConfigMap", "Secret") for doc in by_kind(kind, directory)}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        kind = "ConfigMap" if "configMapRef" in source else "Secret"
        ref = source["configMapRef"] if kind == "ConfigMap" else source["secretRef"]
        env.update(sources[kind, ref["name"]])
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        else:
            ref = variable["valueFrom"]["secretKeyRef"]
            env[variable["name"]] = sources["Secret", ref["name"]][ref["key"]]
    return env


def strict(schema: Any) -> Any:
    """The schema with unknown properties refused, as `kubectl apply --validate=strict` refuses them."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) for key, value in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema:
        result["additionalProperties"] = False
    return result


def test_every_manifest_is_valid_against_the_kubernetes_schemas():
    service_monitor = jsonschema.Draft202012Validator(strict(json.loads(SERVICE_MONITOR_SCHEMA.read_text())))
    kinds = set()
    for path, doc in manifests():
        if doc["apiVersion"] == "monitoring.coreos.com/v1":
            errors = [error.message for error in service_monitor.iter_errors(doc)]
            assert not errors, (path, errors)
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        kinds.add((path.parent.name, doc["kind"]))
    assert kinds == {
        ("sidecar", kind) for kind in ("Deployment", "Secret", "Service", "ServiceMonitor")
    } | {
        ("standalone", kind)
        for kind in ("ConfigMap", "Deployment", "PodDisruptionBudget", "Secret", "Service", "ServiceMonitor")
    }


def test_the_validators_refuse_a_mistake():
    (deployment,) = by_kind("Deployment", "standalone")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    (monitor,) = by_kind("ServiceMonitor", "standalone")
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    validator = jsonschema.Draft202012Validator(strict(json.loads(SERVICE_MONITOR_SCHEMA.read_text())))
    assert not validator.is_valid(monitor)
    monitor["spec"]["endpoints"][0] = {"port": "http", "interval": "30 seconds"}
    assert not validator.is_valid(monitor)


def test_every_gf_variable_in_the_manifests_is_a_real_key_and_secrets_come_from_a_secret():
    names = set()
    for _path, doc in manifests():
        if doc["kind"] in ("ConfigMap", "Secret"):
            names |= {*doc.get("data", {}), *doc.get("stringData", {})}
    pods = list(gateway_pods())
    assert {directory for directory, _pod, _container in pods} == {"sidecar", "standalone"}
    for _directory, _pod, container in pods:
        names |= {variable["name"] for variable in container.get("env", [])}
        from_secret = {variable["name"] for variable in container["env"]
                       if "secretKeyRef" in variable.get("valueFrom", {})}
        assert {"GF_SECURITY_SECRET_KEY", "GF_DATABASE_URL", "GF_SECURITY_ADMIN_PASSWORD"} <= from_secret
    assert names and all(name.startswith("GF_") for name in names)
    assert names <= Config.env_names(), names - Config.env_names()


@pytest.mark.parametrize("directory", ["sidecar", "standalone"])
def test_the_grace_period_outlasts_the_shutdown_timeout(directory: str):
    ((_, pod, container),) = [pod for pod in gateway_pods() if pod[0] == directory]
    config = Config.from_env(container_env(directory, container))
    assert config.database.url.startswith("postgres://")
    # gateway is gone at most SHUTDOWN_MARGIN after shutdown_timeout; a second more for the kubelet
    assert pod["terminationGracePeriodSeconds"] >= config.server.shutdown_timeout + SHUTDOWN_MARGIN + 1
    if directory == "sidecar":  # the application stops first, inside the same grace period
        assert pod["terminationGracePeriodSeconds"] >= config.server.shutdown_timeout + 20
        assert config.server.workers == 1


@pytest.mark.parametrize("directory", ["sidecar", "standalone"])
def test_probes_scrape_annotations_and_resources_fit_gateway(directory: str):
    ((_, pod, container),) = [pod for pod in gateway_pods() if pod[0] == directory]
    config = Config.from_env(container_env(directory, container))
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        action = container[probe]["httpGet"]
        assert action["path"] == "/api/health"
        assert ports[action["port"]] == config.server.http_port
    # readiness drops at the first 503 (the drain lasts min(5 s, shutdown_timeout / 2))
    assert container["readinessProbe"]["failureThreshold"] == 1
    assert container["readinessProbe"]["periodSeconds"] <= 5
    (deployment,) = by_kind("Deployment", directory)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == config.server.http_port
    assert annotations["prometheus.io/path"] == "/metrics"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    dockerfile_uid = re.search(r"^USER (\d+)", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    assert dockerfile_uid and container["securityContext"]["runAsUser"] == int(dockerfile_uid[1])
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "/var/lib/gateway" in {mount["mountPath"] for mount in container["volumeMounts"]}
    if directory == "sidecar":  # a native sidecar: started before the application, stopped after it
        assert container in pod["initContainers"] and container["restartPolicy"] == "Always"
        assert container["startupProbe"]["httpGet"]["path"] == "/api/health"


@pytest.mark.parametrize("directory", ["sidecar", "standalone"])
def test_the_service_monitor_finds_gateways_port_through_the_service(directory: str):
    (deployment,) = by_kind("Deployment", directory)
    (service,) = by_kind("Service", directory)
    (monitor,) = by_kind("ServiceMonitor", directory)
    ((_, _pod, container),) = [pod for pod in gateway_pods() if pod[0] == directory]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    (service_port,) = [port for port in service["spec"]["ports"] if port["name"] == endpoint["port"]]
    assert service_port["targetPort"] in {port["name"] for port in container["ports"]}


def test_the_standalone_replicas_share_one_database_and_a_disruption_budget_keeps_most_of_them():
    (deployment,) = by_kind("Deployment", "standalone")
    (budget,) = by_kind("PodDisruptionBudget", "standalone")
    replicas = deployment["spec"]["replicas"]
    assert replicas >= 2
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert 1 <= budget["spec"]["maxUnavailable"] < replicas
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    ((_, _pod, container),) = [pod for pod in gateway_pods() if pod[0] == "standalone"]
    config = Config.from_env(container_env("standalone", container))
    # every replica's pool together stays under PostgreSQL's default max_connections (100)
    assert replicas * config.worker_count * config.database.max_open_conn < 100


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def interpolated(environment: dict[str, Any]) -> dict[str, str]:
    """Compose's `${VAR:-default}` interpolation with an empty shell environment."""
    return {name: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value)) for name, value in environment.items()}


def test_compose_file_is_valid_against_the_compose_specification():
    def check(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
            capture_output=True, text=True, timeout=120, check=False,
        )
    result = check(ROOT / "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_validator_refuses_a_mistake(tmp_path: Path):
    broken = compose()
    broken["services"]["gateway"]["stop_grace_periods"] = "35s"
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 1 and "stop_grace_periods" in result.stdout + result.stderr


def test_compose_wires_gateway_to_postgres_prometheus_and_the_provisioning_files():
    services = compose()["services"]
    assert set(services) == {"postgres", "gateway", "prometheus"}
    gateway = services["gateway"]
    assert gateway["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (ROOT / gateway["build"]["dockerfile"]).is_file()
    assert gateway["depends_on"]["postgres"]["condition"] == "service_healthy"
    environment = interpolated(gateway["environment"])
    gf_names = {name for name in environment if name.startswith("GF_")}
    assert gf_names <= Config.env_names(), gf_names - Config.env_names()
    config = Config.from_env(environment)
    assert config.database.url == "postgres://gateway:gateway@postgres:5432/gateway"
    assert interpolated(services["postgres"]["environment"])["POSTGRES_PASSWORD"] == "gateway"
    # docker stop's default of 10 s would kill gateway mid-drain
    assert float(gateway["stop_grace_period"].removesuffix("s")) >= config.server.shutdown_timeout + SHUTDOWN_MARGIN + 1
    mounts = dict(volume.removesuffix(":ro").split(":") for volume in gateway["volumes"])
    assert mounts["./deploy/provisioning"] == config.paths.provisioning
    assert (ROOT / "deploy" / "provisioning" / "datasources").is_dir()
    prometheus_mounts = {target: source for source, target in
                         (volume.removesuffix(":ro").split(":") for volume in services["prometheus"]["volumes"])}
    scrape = yaml.safe_load((ROOT / prometheus_mounts["/etc/prometheus/prometheus.yml"]).read_text())
    (job,) = [job for job in scrape["scrape_configs"] if job["job_name"] == "gateway"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"gateway:{config.server.http_port}"]
    assert services["prometheus"]["depends_on"]["gateway"]["condition"] == "service_healthy"


def test_the_prometheus_configuration_passes_promtool():
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with Debian's prometheus package (.ci/run installs it)"
    result = subprocess.run([promtool, "check", "config", str(DEPLOY / "compose" / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_provisioning_files_create_a_prometheus_a_testdata_and_a_postgres_data_source():
    files = sorted((DEPLOY / "provisioning" / "datasources").glob("*.yaml"))
    assert files
    gateway_env = interpolated(compose()["services"]["gateway"]["environment"])
    entries = []
    for path in files:
        document = yaml.safe_load(path.read_text())
        assert document["apiVersion"] == 1
        for entry in document["datasources"]:
            assert set(entry) <= GRAFANA_PROVISIONING_KEYS, set(entry) - GRAFANA_PROVISIONING_KEYS
            assert plugin_for(entry["type"]) is not None, entry["type"]
            command = msgspec.convert(entry, AddDataSourceCommand, strict=True)
            assert command.name and command.uid
            # Grafana expands $VAR and ${VAR} from the environment in provisioning files
            for variable in re.findall(r"\$\{?(\w+)\}?", json.dumps(entry)):
                assert variable in gateway_env, variable
            entries.append(command)
    by_type = {command.type: command for command in entries}
    assert set(by_type) == {"prometheus", "grafana-testdata-datasource", "grafana-postgresql-datasource"}
    assert by_type["prometheus"].url == "http://prometheus:9090" and by_type["prometheus"].is_default
    postgres = by_type["grafana-postgresql-datasource"]
    assert postgres.url == "postgres:5432"
    assert postgres.secure_json_data == {"password": "$EXAMPLE_READER_PASSWORD"}
    # the data source reads the example database with the read-only role the compose PostgreSQL creates
    initdb = (DEPLOY / "compose" / "initdb" / "10-example.sh").read_text()
    assert f"CREATE ROLE {postgres.user} LOGIN" in initdb
    assert f"CREATE DATABASE {postgres.json_data['database']};" in initdb
    assert "GRANT SELECT ON sample TO reader;" in initdb and "REVOKE CONNECT ON DATABASE gateway" in initdb


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    return [(line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1])
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_builds_in_two_stages_and_runs_as_non_root():
    instructions = dockerfile_instructions()
    stages = [argument for instruction, argument in instructions if instruction == "FROM"]
    assert stages == ["python:3.11-slim AS build", "python:3.11-slim"]
    final = instructions[[instruction for instruction, _ in instructions].index("FROM", 1):]
    values = {instruction: argument for instruction, argument in final}
    assert re.fullmatch(r"(\d+):(\d+)", values["USER"]) and not values["USER"].startswith("0:")
    assert values["EXPOSE"] == "3000" and values["STOPSIGNAL"] == "SIGTERM"
    assert values["CMD"] == '["gateway"]'
    assert "--from=build /opt/venv /opt/venv" in values["COPY"]
    env = dict(re.findall(r"(\w+)=(\S+)", values["ENV"]))
    gf_names = {name for name in env if name.startswith("GF_")}
    assert gf_names and gf_names <= Config.env_names()
    # the data directory is writable by the user the image runs as
    assert f"chown {values['USER']} {env['GF_PATHS_DATA']}" in values["RUN"]
    # nothing the build copies is left out of the build context
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    copied = {source for instruction, argument in instructions if instruction == "COPY" and "--from" not in argument
              for source in argument.split()[:-1]}
    assert copied == {"pyproject.toml", "README.md", "sql", "gateway"} and not copied & ignored


async def test_the_dockerfile_health_check_passes_while_serving_and_fails_while_draining(client: Any):
    (check,) = [argument for instruction, argument in dockerfile_instructions() if instruction == "HEALTHCHECK"]
    command = json.loads(check[check.index("CMD") + len("CMD"):])
    assert command[0] == "python" and "http://127.0.0.1:3000/api/health" in command[-1]
    command = [sys.executable, *command[1:-1], command[-1].replace(":3000/", f":{client.port}/")]

    async def exit_status() -> int:
        process = await asyncio.create_subprocess_exec(*command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return await asyncio.wait_for(process.wait(), 30)

    assert await exit_status() == 0
    client.app[draining_key].set()
    assert await exit_status() != 0


def test_every_documented_gf_variable_is_a_real_key():
    readme = (ROOT / "README.md").read_text()
    for name in set(re.findall(r"GF_[A-Z_]+", readme)) - {"GF_"}:
        assert name in Config.env_names() or name == "GF_SECTION_KEY", name
