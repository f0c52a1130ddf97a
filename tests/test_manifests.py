"""Every manifest in manifests/ is valid Kubernetes, valid KEDA, and says what the scaler accepts."""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from scaler.commands.parser import COMMANDS, GLOBAL_OPTIONS, build_parser, build_settings
from scaler.errors import NotPermitted
from scaler.rules.admission import ConnectionPolicy
from scaler.rules.memory_budget import MIB, MemoryBudget, parse_bytes
from tests.support.helm import template
from tests.support.kustomize import Resource, build, load_documents

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
REFERENCE = ROOT / "docs" / "reference.md"
KEDA_SCHEMAS = ROOT.parent / "shared" / "schemas" / "keda"
# The oldest Kubernetes the manifests are meant for (gRPC probes, policy/v1) and the newest schema here.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())

RENDERED = {
    "base": build(MANIFESTS / "base"),
    "overlays/tls": build(MANIFESTS / "overlays" / "tls"),
    "overlays/cluster-wide": build(MANIFESTS / "overlays" / "cluster-wide"),
    "overlays/namespace": build(MANIFESTS / "overlays" / "namespace"),
    # The chart with every option on, but for the Prometheus Operator's and cert-manager's kinds (not Kubernetes').
    "chart": [
        resource
        for resource in template(
            "tls.enabled=true",
            "tls.certManager.enabled=true",
            "tls.certManager.issuerRef.name=ca",
            "serviceMonitor.enabled=true",
            "prometheusRule.enabled=true",
            "workerSets[0].name=worker",
            "workerSets[1].name=worker-gpu",
            "workerSets[1].kind=Deployment",
            "workerSets[1].prewarm=true",
            "workerSets[1].scaleDownWindowSeconds=60",
        )
        if resource["apiVersion"].split("/")[0] not in ("monitoring.coreos.com", "cert-manager.io")
    ],
}
EXAMPLES = {path.name: load_documents(path) for path in sorted((MANIFESTS / "examples").glob("*.yaml"))}


def every_resource() -> Iterator[tuple[str, Resource]]:
    for origin, resources in {**RENDERED, **EXAMPLES}.items():
        for resource in resources:
            yield f"{origin}: {resource['kind']}/{resource['metadata']['name']}", resource


RESOURCES = dict(every_resource())


def one(resources: list[Resource], kind: str, name: str) -> Resource:
    found = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


def test_every_yaml_file_is_rendered_or_an_example() -> None:
    """No manifest escapes validation: each file is a kustomization, part of one, an example or monitoring."""
    referenced: set[Path] = set()
    for kustomization in MANIFESTS.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        referenced.add(kustomization)
        referenced |= {kustomization.parent / entry for entry in spec.get("resources", [])}
        referenced |= {kustomization.parent / patch["path"] for patch in spec.get("patches", [])}
    for path in MANIFESTS.rglob("*.yaml"):
        covered = path in referenced or path.parent.name in ("examples", "monitoring")
        assert covered, f"{path.relative_to(ROOT)} is neither rendered, an example, nor monitoring"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", [name for name, r in RESOURCES.items() if not r["apiVersion"].startswith("keda.sh/")])
def test_core_kinds_are_valid_kubernetes_strictly(name: str, version: str) -> None:
    kubernetes_validate.validate(RESOURCES[name], version, strict=True)


@cache
def keda_schema(kind: str) -> dict[str, Any]:
    for path in KEDA_SCHEMAS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
            schema: dict[str, Any] = strict(version["schema"]["openAPIV3Schema"])
            return schema
    raise LookupError(kind)


def strict(schema: Any) -> Any:
    """Reject unknown fields, as kube-apiserver's strict field validation does."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result


@pytest.mark.skipif(not KEDA_SCHEMAS.is_dir(), reason="KEDA's CRD schemas are not here (../shared/schemas/keda)")
@pytest.mark.parametrize("name", [name for name, r in RESOURCES.items() if r["apiVersion"].startswith("keda.sh/")])
def test_keda_kinds_are_valid_against_kedas_crd_schemas(name: str) -> None:
    resource = RESOURCES[name]
    jsonschema.validate(resource, keda_schema(resource["kind"]))


@pytest.mark.skipif(not KEDA_SCHEMAS.is_dir(), reason="KEDA's CRD schemas are not here (../shared/schemas/keda)")
def test_the_keda_schema_check_catches_a_misspelt_field() -> None:
    scaled_object = {**EXAMPLES["scaledobject-external.yaml"][0]}
    scaled_object["spec"] = {**scaled_object["spec"], "coolDownPeriod": 30}
    with pytest.raises(jsonschema.ValidationError, match="coolDownPeriod"):
        jsonschema.validate(scaled_object, keda_schema("ScaledObject"))


def triggers() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, resource in RESOURCES.items():
        if resource["kind"] == "ScaledObject":
            for trigger in resource["spec"]["triggers"]:
                yield name, trigger


@pytest.mark.parametrize(("name", "trigger"), list(triggers()), ids=[name for name, _ in triggers()])
def test_example_triggers_are_accepted_by_the_scaler(name: str, trigger: dict[str, Any]) -> None:
    assert trigger["type"] in ("external", "external-push")
    metadata = dict(trigger["metadata"])
    assert metadata.pop("scalerAddress") == "airflow-keda-scaler-headless.keda.svc:6000"
    if "connectionFromEnv" in metadata:
        # KEDA sends the variable's value, not its name; any URL the worker would hold.
        metadata["connectionFromEnv"] = "postgresql+psycopg2://airflow:secret@airflow-postgresql:5432/airflow"
        assert trigger.get("authenticationRef"), "a URL with a password must travel over TLS"
    # The shipped scaler's own policy (its Deployment's environment) accepts the example as written.
    spec = shipped_policy().parse(metadata)
    assert spec.concurrency >= 1


def shipped_policy() -> ConnectionPolicy:
    """The connectionFromEnv policy `serve` builds from the base Deployment's environment."""
    deployment = one(RENDERED["base"], "Deployment", "airflow-keda-scaler")
    env = {item["name"]: item["value"] for item in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    policy_env = {name: value for name, value in env.items() if name != "AIRFLOW_KEDA_SCALER_DATABASE_FILE"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in policy_env.items():
            patch.setenv(name, value)
        return build_settings(ConnectionPolicy, build_parser().parse_args(["serve"]))


def test_the_shipped_scaler_refuses_urls_from_scaled_objects() -> None:
    policy = shipped_policy()
    assert policy.connection_from_env == "deny"
    with pytest.raises(NotPermitted):
        policy.refuse_before_parsing({"connectionFromEnv": "postgresql://airflow:pw@elsewhere/airflow"})


def test_example_scaled_objects_are_the_documented_shape() -> None:
    for name, resource in RESOURCES.items():
        if resource["kind"] != "ScaledObject":
            continue
        spec = resource["spec"]
        assert spec["pollingInterval"] == 10, name
        assert spec["cooldownPeriod"] == 30, name
        assert spec["minReplicaCount"] == 0, name
        assert spec["maxReplicaCount"] >= 1, name
        assert spec["fallback"]["failureThreshold"] >= 1, name
        assert spec["fallback"]["replicas"] >= 1, name


def test_the_worker_example_is_set_up_for_safe_scale_down() -> None:
    worker = one(EXAMPLES["celery-worker-deployment.yaml"], "Deployment", "airflow-worker")
    pod = worker["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 600
    env = {item["name"]: item.get("value") for item in pod["containers"][0]["env"]}
    assert env["DUMB_INIT_SETSID"] == "0"
    scaled = [r for r in RESOURCES.values() if r["kind"] == "ScaledObject"]
    assert any(r["spec"]["scaleTargetRef"]["name"] == "airflow-worker" for r in scaled)


def scaler_container(resources: list[Resource]) -> tuple[dict[str, Any], dict[str, Any]]:
    deployment = one(resources, "Deployment", "airflow-keda-scaler")
    pod = deployment["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def test_the_scaler_deployment_is_locked_down_and_drains_within_its_grace() -> None:
    base = RENDERED["base"]
    deployment = one(base, "Deployment", "airflow-keda-scaler")
    assert deployment["metadata"]["namespace"] == "keda"
    assert deployment["spec"]["replicas"] == 2
    pod, container = scaler_container(base)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert "memory" in container["resources"]["limits"]
    assert container["readinessProbe"]["grpc"] == {"port": 6000, "service": "externalscaler.ExternalScaler"}
    assert container["livenessProbe"]["grpc"] == {"port": 6000}

    env = {item["name"]: item["value"] for item in container["env"]}
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    drain = float(env["AIRFLOW_KEDA_SCALER_SHUTDOWN_GRACE"])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain + 5  # time left to close pools and exit


def test_the_base_memory_limit_holds_what_the_reference_promises() -> None:
    # The budget comes from the container's limit (no --memory-limit in the base): the limit must leave room
    # for the reference's promise, with the idle process as measured by bench 5 (about 60 MiB) taken at start.
    _, container = scaler_container(RENDERED["base"])
    limit = parse_bytes(container["resources"]["limits"]["memory"])
    assert "AIRFLOW_KEDA_SCALER_MEMORY_LIMIT" not in {item["name"] for item in container["env"]}
    promised = re.search(
        r"room for\s+about ([0-9,]+) ScaledObjects with a `StreamIsActive` stream", REFERENCE.read_text()
    )
    assert promised is not None
    most = MemoryBudget(limit=limit, baseline=64 * MIB).most_streams()
    assert most is not None
    assert most >= int(promised[1].replace(",", "")) * 0.97
    assert parse_bytes(container["resources"]["requests"]["memory"]) <= limit


def test_deployment_variables_and_ports_are_the_scalers_own() -> None:
    variables = {option.env for option in (*GLOBAL_OPTIONS, *COMMANDS["serve"].options)}
    for resources in RENDERED.values():
        _, container = scaler_container(resources)
        names = {item["name"] for item in container["env"]}
        assert names <= variables, names - variables
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert ports == {"grpc": 6000, "metrics": 8080}  # the defaults of --grpc-address and --metrics-address


def test_services_pdb_and_network_policy() -> None:
    base = RENDERED["base"]
    grpc = one(base, "Service", "airflow-keda-scaler")
    headless = one(base, "Service", "airflow-keda-scaler-headless")
    metrics = one(base, "Service", "airflow-keda-scaler-metrics")
    assert headless["spec"]["clusterIP"] == "None"
    assert [p["port"] for p in grpc["spec"]["ports"]] == [6000]
    assert [p["port"] for p in headless["spec"]["ports"]] == [6000]
    assert [p["port"] for p in metrics["spec"]["ports"]] == [8080]
    assert one(base, "PodDisruptionBudget", "airflow-keda-scaler")["spec"]["minAvailable"] == 1
    policy = one(base, "NetworkPolicy", "airflow-keda-scaler")["spec"]
    allowed = {
        (rule["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], rule["ports"][0]["port"])
        for rule in policy["ingress"]
    }
    assert allowed == {("keda", 6000), ("monitoring", 8080)}


def test_rbac_is_bound_to_the_scaler_in_the_workers_namespace_or_cluster_wide() -> None:
    # Which rules: tests/test_deletion_cost.py compares them with the requests the scaler makes.
    base = RENDERED["base"]
    role = one(base, "Role", "airflow-keda-scaler")
    binding = one(base, "RoleBinding", "airflow-keda-scaler")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "airflow"
    account = one(base, "ServiceAccount", "airflow-keda-scaler")
    subjects = [
        {"kind": "ServiceAccount", "name": "airflow-keda-scaler", "namespace": account["metadata"]["namespace"]}
    ]
    assert binding["subjects"] == subjects
    wide = RENDERED["overlays/cluster-wide"]
    assert one(wide, "ClusterRole", "airflow-keda-scaler")["rules"] == role["rules"]
    assert one(wide, "ClusterRoleBinding", "airflow-keda-scaler")["subjects"] == subjects
    assert not [r for r in wide if r["kind"] in ("Role", "RoleBinding")]


def test_tls_overlay_serves_mutual_tls_and_probes_over_http() -> None:
    pod, container = scaler_container(RENDERED["overlays/tls"])
    env = {item["name"]: item["value"] for item in container["env"]}
    mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "tls")
    assert env["AIRFLOW_KEDA_SCALER_TLS_CERT"] == f"{mount}/tls.crt"
    assert env["AIRFLOW_KEDA_SCALER_TLS_KEY"] == f"{mount}/tls.key"
    assert env["AIRFLOW_KEDA_SCALER_TLS_CLIENT_CA"] == f"{mount}/ca.crt"
    assert {"name": "tls", "secret": {"secretName": "airflow-keda-scaler-tls"}} in pod["volumes"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    # The base is left as it was.
    _, plain = scaler_container(RENDERED["base"])
    assert not any(re.match("AIRFLOW_KEDA_SCALER_TLS", item["name"]) for item in plain["env"])
