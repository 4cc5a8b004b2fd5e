"""deploy/k8s: each overlay rendered, every object checked against the Kubernetes 1.30 JSON schemas
(the ``kubernetes-validate`` package, offline, strict: unknown fields fail), then checked for policy.

Rendering uses ``kubectl kustomize`` (the real kustomize) when kubectl is on PATH. Where it is not, a
small renderer in this file stands in. It implements only the kustomize features deploy/k8s uses —
``resources`` (files and directories), ``namespace``, ``labels`` (metadata only, no selectors),
``patches`` (strategic merge, each patch naming its target by kind and name), ``images`` and
``replicas`` — and a test fails on any other field, so the manifests cannot quietly start needing more.
When kubectl is present, a test checks that both render every overlay to the same objects.

The NetworkPolicy checks evaluate the rendered policies with a small evaluator (pod and namespace
selectors, ipBlock with except, ports) and ask concrete questions: may the ingress controller reach the
API on 8000, may the API reach the sandbox engine, and so on."""

from __future__ import annotations

import copy
import ipaddress
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from crewflow.entrypoints.cli import build_parser
from crewflow.settings import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["dev", "prod"]
KUBERNETES_VERSION = "1.30.0"
CLUSTER_SCOPED = {
    "Namespace",
    "RuntimeClass",
    "ClusterRole",
    "ClusterRoleBinding",
    "PersistentVolume",
    "StorageClass",
    "CustomResourceDefinition",
    "PriorityClass",
    "IngressClass",
}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
SYSBOX = "sysbox-runc"

Obj = dict[str, Any]


# --- the stand-in renderer ---------------------------------------------------------------------------------------

SUPPORTED_FIELDS = {"apiVersion", "kind", "namespace", "labels", "resources", "patches", "images", "replicas"}


def _merge_key(path: tuple[str, ...], kind: str) -> str | None:
    """The strategic-merge key of the list at ``path`` (Kubernetes' patchMergeKey), None: replace."""
    name = path[-1]
    if name in {"containers", "initContainers", "ephemeralContainers", "env", "volumes", "imagePullSecrets"}:
        return "name"
    if name == "volumeMounts":
        return "mountPath"
    if name == "topologySpreadConstraints":
        return "topologyKey"
    if name == "ports" and len(path) >= 2 and path[-2] in {"containers", "initContainers"}:
        return "containerPort"
    if name == "ports" and kind == "Service" and path == ("spec", "ports"):
        return "port"
    return None


def strategic_merge(base: Any, patch: Any, kind: str, path: tuple[str, ...] = ()) -> Any:
    if isinstance(patch, dict) and isinstance(base, dict):
        assert "$patch" not in patch, "the stand-in renderer does not implement $patch directives"
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, kind, (*path, key))
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(patch, list) and isinstance(base, list) and path and (key := _merge_key(path, kind)):
        merged_list = [copy.deepcopy(item) for item in base]
        for item in patch:
            at = next((i for i, old in enumerate(merged_list) if old.get(key) == item.get(key)), None)
            if at is None:
                merged_list.append(copy.deepcopy(item))
            else:
                merged_list[at] = strategic_merge(merged_list[at], item, kind, (*path, "[]"))
        return merged_list
    return copy.deepcopy(patch)


def _pod_specs(obj: Obj) -> Iterator[Obj]:
    spec = obj.get("spec", {})
    if obj["kind"] == "Pod":
        yield spec
    elif obj["kind"] == "CronJob":
        yield spec["jobTemplate"]["spec"]["template"]["spec"]
    elif "template" in spec:
        yield spec["template"]["spec"]


def _containers(obj: Obj) -> Iterator[Obj]:
    for pod in _pod_specs(obj):
        yield from pod.get("initContainers", [])
        yield from pod.get("containers", [])


def _load_yaml(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def render_standin(directory: Path) -> list[Obj]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED_FIELDS
    assert not unknown, f"{directory}: the stand-in renderer does not implement {sorted(unknown)}"
    objects: list[Obj] = []
    for entry in kustomization.get("resources", []):
        target = directory / entry
        objects += render_standin(target) if target.is_dir() else _load_yaml(target)

    def find(kind: str, name: str) -> int:
        found = [i for i, o in enumerate(objects) if o["kind"] == kind and o["metadata"]["name"] == name]
        assert len(found) == 1, f"patch target {kind}/{name}: {len(found)} matches"
        return found[0]

    for patch_entry in kustomization.get("patches", []):
        assert set(patch_entry) == {"path"}, f"only file patches that name their target: {patch_entry}"
        for patch in _load_yaml(directory / patch_entry["path"]):
            at = find(patch["kind"], patch["metadata"]["name"])
            objects[at] = strategic_merge(objects[at], patch, patch["kind"])

    namespace = kustomization.get("namespace")
    for obj in objects:
        if namespace and obj["kind"] == "Namespace":
            obj["metadata"]["name"] = namespace
        elif namespace and obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = namespace
        for labels in kustomization.get("labels", []):
            assert not labels.get("includeSelectors") and not labels.get("includeTemplates"), labels
            obj["metadata"].setdefault("labels", {}).update(labels["pairs"])
        for image in kustomization.get("images", []):
            for container in _containers(obj):
                name = re.split(r"[:@]", container["image"], maxsplit=1)[0]
                if name == image["name"]:
                    new = image.get("newName", name)
                    container["image"] = f"{new}@{image['digest']}" if "digest" in image else f"{new}:{image['newTag']}"
        for replicas in kustomization.get("replicas", []):
            if (
                obj["kind"] in {"Deployment", "StatefulSet", "ReplicaSet"}
                and obj["metadata"]["name"] == replicas["name"]
            ):
                obj["spec"]["replicas"] = replicas["count"]
    return objects


def render_kubectl(directory: Path) -> list[Obj]:
    result = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render(directory: Path) -> list[Obj]:
    return render_kubectl(directory) if shutil.which("kubectl") else render_standin(directory)


def _key(obj: Obj) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Obj]]:
    return request.param, render(K8S / "overlays" / request.param)


def by_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def test_the_standin_renderer_merges_the_way_kustomize_does():
    base = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [{"name": "a", "image": "x", "env": [{"name": "K", "value": "1"}]}, {"name": "b"}],
                    "tolerations": [{"key": "t"}],
                }
            },
            "minAvailable": 1,
        }
    }
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [{"name": "a", "env": [{"name": "J", "value": "2"}]}, {"name": "c"}],
                    "tolerations": [{"key": "u"}],
                }
            },
            "minAvailable": None,
            "maxUnavailable": 1,
        }
    }
    merged = strategic_merge(base, patch, "Deployment")
    pod = merged["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["a", "b", "c"]
    assert pod["containers"][0] == {
        "name": "a",
        "image": "x",
        "env": [{"name": "K", "value": "1"}, {"name": "J", "value": "2"}],
    }
    assert pod["tolerations"] == [{"key": "u"}], "lists without a merge key are replaced"
    assert "minAvailable" not in merged["spec"] and merged["spec"]["maxUnavailable"] == 1
    assert base["spec"]["minAvailable"] == 1, "the base is not modified"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed: nothing to compare with")
@pytest.mark.parametrize("name", OVERLAYS)
def test_the_standin_renderer_gives_what_kubectl_kustomize_gives(name):
    real = {_key(o): o for o in render_kubectl(K8S / "overlays" / name)}
    ours = {_key(o): o for o in render_standin(K8S / "overlays" / name)}
    assert sorted(ours) == sorted(real)
    for key, obj in real.items():
        assert ours[key] == obj, key


# --- schema ------------------------------------------------------------------------------------------------------


def test_every_rendered_object_is_valid_against_the_kubernetes_schemas(overlay):
    name, objects = overlay
    assert len(objects) > 20
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{name}: {obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")


def test_the_schema_check_rejects_unknown_fields_and_wrong_types():
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
        },
    }
    kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES_VERSION, strict=True)
    wrong = copy.deepcopy(deployment)
    wrong["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, KUBERNETES_VERSION, strict=True)


# --- workloads ---------------------------------------------------------------------------------------------------


def _is_sysbox(obj: Obj) -> bool:
    return any(pod.get("runtimeClassName") == SYSBOX for pod in _pod_specs(obj))


def test_every_container_names_requests_and_limits(overlay):
    name, objects = overlay
    for obj in (o for o in objects if o["kind"] in WORKLOADS):
        for container in _containers(obj):
            resources = container.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(part, {})), (
                    f"{name}: {obj['metadata']['name']}/{container['name']} has no {part}"
                )


def test_long_running_pods_have_probes_and_crewflow_uses_healthz_and_readyz(overlay):
    name, objects = overlay
    for obj in (o for o in objects if o["kind"] in {"Deployment", "StatefulSet"}):
        for container in _containers(obj):
            assert "livenessProbe" in container and "readinessProbe" in container, (
                f"{name}: {obj['metadata']['name']}/{container['name']}"
            )
    (api,) = one(objects, "Deployment", "crewflow-api")["spec"]["template"]["spec"]["containers"]
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert api["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    # the worker has no HTTP server but its metrics server; readiness is crewflow's own worker check
    (worker,) = one(objects, "Deployment", "crewflow-worker")["spec"]["template"]["spec"]["containers"]
    assert worker["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    command = worker["readinessProbe"]["exec"]["command"]
    assert command[0] == "crewflow"
    try:
        args = build_parser().parse_args(command[1:])
    except SystemExit:
        pytest.fail(f"worker readiness: `{' '.join(command)}` is not a command the CLI knows")
    assert (args.command, args.action) == ("worker", "check")
    assert args.max_age < worker["readinessProbe"]["periodSeconds"] * worker["readinessProbe"]["failureThreshold"]
    for container in (api, worker):
        ports = {p["name"] for p in container["ports"]}
        for probe in ("livenessProbe", "startupProbe"):
            assert container[probe]["httpGet"]["port"] in ports


def test_pods_run_as_non_root_read_only_without_capabilities_except_sysbox_engines(overlay):
    name, objects = overlay
    for obj in (o for o in objects if o["kind"] in WORKLOADS):
        for pod in _pod_specs(obj):
            where = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
            for forbidden in ("hostNetwork", "hostPID", "hostIPC"):
                assert not pod.get(forbidden), where
            assert not [v for v in pod.get("volumes", []) if "hostPath" in v], where
            for container in [*pod.get("initContainers", []), *pod["containers"]]:
                context = container.get("securityContext", {})
                assert not context.get("privileged"), f"{where}: privileged"
                assert not context.get("capabilities", {}).get("add"), f"{where}: added capabilities"
            if _is_sysbox(obj):
                continue  # root inside a Sysbox user namespace: unprivileged on the node (sandbox.yaml)
            pod_context = pod.get("securityContext", {})
            assert pod_context.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
            for container in [*pod.get("initContainers", []), *pod["containers"]]:
                context = container.get("securityContext", {})
                assert context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True, where
                assert context.get("allowPrivilegeEscalation") is False, where
                assert context.get("readOnlyRootFilesystem") is True, where
                assert "ALL" in context.get("capabilities", {}).get("drop", []), where


def test_crewflow_pods_run_as_the_images_uid_and_mount_no_service_account_token(overlay):
    _, objects = overlay
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    uid = int(re.search(r"ARG CREWFLOW_UID=(\d+)", dockerfile).group(1))  # type: ignore[union-attr]
    crewflow = [
        o
        for o in objects
        if o["kind"] in WORKLOADS and any(c["image"].split(":")[0].endswith("/crewflow") for c in _containers(o))
    ]
    assert {o["metadata"]["name"] for o in crewflow} == {"crewflow-api", "crewflow-worker", "crewflow-migrate"}
    for obj in crewflow:
        for pod in _pod_specs(obj):
            assert pod["securityContext"]["runAsUser"] == uid
            assert pod["automountServiceAccountToken"] is False
    for account in by_kind(objects, "ServiceAccount"):
        assert account["automountServiceAccountToken"] is False


def test_crewflow_containers_run_commands_the_cli_knows_with_settings_it_can_read(overlay):
    _, objects = overlay
    parser = build_parser()
    expected = {"crewflow-api": "serve", "crewflow-worker": "worker", "crewflow-migrate": "migrate"}
    for name, command in expected.items():
        obj = one(objects, "Job" if name == "crewflow-migrate" else "Deployment", name)
        (container,) = list(_containers(obj))
        assert "command" not in container, "the image's ENTRYPOINT (crewflow) runs"
        try:
            args = parser.parse_args(container["args"])
        except SystemExit:
            pytest.fail(f"{name}: `crewflow {' '.join(container['args'])}` is not a command the CLI knows")
        assert args.command == command
        refs = {ref.get("configMapRef", ref.get("secretRef", {})).get("name") for ref in container["envFrom"]}
        assert {"crewflow-config", "crewflow-secrets"} <= refs
    serve = one(objects, "Deployment", "crewflow-api")["spec"]["template"]["spec"]["containers"][0]
    assert "--proxy-headers" in serve["args"] and "--host" in serve["args"]
    config = one(objects, "ConfigMap", "crewflow-config")["data"]
    Settings.from_env(config)  # numbers parse
    for key in config:
        assert key.startswith("CREWFLOW_") or key in {"DOCKER_HOST", "FORWARDED_ALLOW_IPS"}, key
    assert not [k for k in config if re.search(r"SECRET|PASSWORD|_KEY$|DATABASE_URL|REDIS_URL|MONGODB_URL", k)]
    sandbox = one(objects, "Service", "crewflow-sandbox")
    assert config["DOCKER_HOST"] == f"tcp://{sandbox['metadata']['name']}:{sandbox['spec']['ports'][0]['port']}"


def test_the_sandbox_runs_docker_engines_under_sysbox_on_the_sandbox_node_pool(overlay):
    _, objects = overlay
    runtime = one(objects, "RuntimeClass", SYSBOX)
    assert runtime["handler"] == SYSBOX
    assert runtime["scheduling"]["nodeSelector"] == {"sandbox": "true"}
    assert {"key": "sandbox", "operator": "Equal", "value": "true", "effect": "NoSchedule"} in (
        runtime["scheduling"]["tolerations"]
    )
    sandbox = one(objects, "Deployment", "crewflow-sandbox")
    assert sandbox["spec"]["template"]["spec"]["runtimeClassName"] == SYSBOX
    # a Docker engine is stateful: each client stays on one, and images travel between engines by registry
    service = one(objects, "Service", "crewflow-sandbox")
    assert service["spec"]["sessionAffinity"] == "ClientIP"
    assert service["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] >= 3600
    config = one(objects, "ConfigMap", "crewflow-config")["data"]
    if _max_replicas(objects, sandbox) > 1:
        assert config.get("CREWFLOW_TOOL_REGISTRY"), "several engines need a registry for built tool images"
    # any pod running a Docker engine must be a Sysbox pod
    for obj in (o for o in objects if o["kind"] in WORKLOADS):
        if any(c["image"].startswith("docker:") and "dind" in c["image"] for c in _containers(obj)):
            assert _is_sysbox(obj), obj["metadata"]["name"]


# --- secrets -----------------------------------------------------------------------------------------------------


def test_no_secret_is_rendered_or_committed_and_every_referenced_secret_is_documented(overlay):
    _, objects = overlay
    assert not by_kind(objects, "Secret")
    for path in K8S.rglob("*.y*ml"):
        for doc in _load_yaml(path):
            assert doc.get("kind") != "Secret", path
            assert "secretGenerator" not in doc, f"{path}: secrets are created with kubectl, not generated"
    referenced: set[str] = set()
    for obj in (o for o in objects if o["kind"] in WORKLOADS):
        for container in _containers(obj):
            referenced |= {r["secretRef"]["name"] for r in container.get("envFrom", []) if "secretRef" in r}
            referenced |= {
                e["valueFrom"]["secretKeyRef"]["name"]
                for e in container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            }
    assert "crewflow-secrets" in referenced
    readme = (K8S / "README.md").read_text()
    for secret in referenced:
        assert re.search(rf"kubectl[^\n]*create secret generic {secret}\b", readme), f"{secret}: how to create it"


# --- Ingress, Services, autoscaling, disruption budgets, quota --------------------------------------------------


def test_the_ingress_terminates_tls_with_cert_manager_and_limits_rates_for_the_api(overlay):
    _, objects = overlay
    ingress = one(objects, "Ingress", "crewflow")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["cert-manager.io/cluster-issuer"].startswith("letsencrypt-")
    assert int(annotations["nginx.ingress.kubernetes.io/limit-rps"]) > 0
    assert int(annotations["nginx.ingress.kubernetes.io/limit-connections"]) > 0
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600, "WebSockets stay open"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    assert [(p["path"], p["pathType"]) for r in ingress["spec"]["rules"] for p in r["http"]["paths"]] == [
        ("/", "Prefix")
    ]
    hosts = {r["host"] for r in ingress["spec"]["rules"]}
    for each in by_kind(objects, "Ingress"):
        assert each["spec"]["ingressClassName"] == "nginx"
        tls_hosts = {h for t in each["spec"]["tls"] for h in t["hosts"]}
        assert {t["secretName"] for t in each["spec"]["tls"]} == {"crewflow-tls"}
        for rule in each["spec"]["rules"]:
            assert rule["host"] in tls_hosts and rule["host"] in hosts
            for path in rule["http"]["paths"]:
                service = one(objects, "Service", path["backend"]["service"]["name"])
                assert path["backend"]["service"]["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    # the API's /metrics (served on its public port) is refused to everyone at the edge
    blocked = [
        i
        for i in by_kind(objects, "Ingress")
        if any(
            p["path"] == "/metrics" and p["pathType"] == "Exact" for r in i["spec"]["rules"] for p in r["http"]["paths"]
        )
    ]
    assert len(blocked) == 1
    denied = blocked[0]["metadata"]["annotations"]["nginx.ingress.kubernetes.io/denylist-source-range"].split(",")
    assert {"0.0.0.0/0", "::/0"} <= set(denied)
    assert "cert-manager.io/cluster-issuer" not in blocked[0]["metadata"]["annotations"], "one Certificate per host"
    assert {r["host"] for r in blocked[0]["spec"]["rules"]} == hosts


def _selects(selector: Obj, labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if operator == "In" and (not present or labels[key] not in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _pod_templates(objects: list[Obj]) -> list[tuple[Obj, Obj]]:
    return [(o, o["spec"]["template"]) for o in objects if o["kind"] in WORKLOADS]


def test_services_select_pods_and_target_ports_those_pods_expose(overlay):
    _, objects = overlay
    templates = _pod_templates(objects)
    for service in by_kind(objects, "Service"):
        if service["spec"].get("type") == "ExternalName":
            continue
        pods = [
            t for _, t in templates if _selects({"matchLabels": service["spec"]["selector"]}, t["metadata"]["labels"])
        ]
        assert pods, f"Service {service['metadata']['name']} selects no pod"
        for port in service["spec"]["ports"]:
            names = {p.get("name") for t in pods for c in t["spec"]["containers"] for p in c.get("ports", [])}
            assert port["targetPort"] in names, (service["metadata"]["name"], port)
    for workload, template in templates:
        if "selector" in workload["spec"]:
            assert _selects(workload["spec"]["selector"], template["metadata"]["labels"])


def _max_replicas(objects: list[Obj], workload: Obj) -> int:
    if workload["kind"] == "Job":
        return 1
    hpas = [
        h
        for h in by_kind(objects, "HorizontalPodAutoscaler")
        if h["spec"]["scaleTargetRef"]["name"] == workload["metadata"]["name"]
    ]
    return max([workload["spec"].get("replicas", 1), *(h["spec"]["maxReplicas"] for h in hpas)])


def test_api_and_worker_autoscale_and_keep_replicas_through_disruptions(overlay):
    name, objects = overlay
    for component in ("api", "worker"):
        deployment = one(objects, "Deployment", f"crewflow-{component}")
        hpa = one(objects, "HorizontalPodAutoscaler", f"crewflow-{component}")
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": deployment["metadata"]["name"],
        }
        low, high = hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]
        assert 1 <= low <= deployment["spec"]["replicas"] <= high
        assert any(m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])
        pdb = one(objects, "PodDisruptionBudget", f"crewflow-{component}")
        assert _selects(pdb["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
        assert ("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"])
        if "minAvailable" in pdb["spec"]:
            assert pdb["spec"]["minAvailable"] < low, "a node drain must stay possible at the minimum"
        if name == "prod":
            assert pdb["spec"]["minAvailable"] >= 2
            assert low >= 3


def _quantity(value: str | int) -> float:
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in sorted(units.items(), key=lambda u: -len(u[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def test_the_quota_holds_every_workload_at_full_scale_and_the_limit_range_admits_each_container(overlay):
    name, objects = overlay
    (quota,) = by_kind(objects, "ResourceQuota")
    (limit_range,) = by_kind(objects, "LimitRange")
    hard = quota["spec"]["hard"]
    totals: dict[str, float] = {}
    pods = 0
    container_max = next(x for x in limit_range["spec"]["limits"] if x["type"] == "Container")["max"]
    for workload in (o for o in objects if o["kind"] in WORKLOADS):
        count = _max_replicas(objects, workload)
        pods += count
        for container in _containers(workload):
            for part in ("requests", "limits"):
                for resource, value in container["resources"][part].items():
                    totals[f"{part}.{resource}"] = totals.get(f"{part}.{resource}", 0.0) + count * _quantity(value)
            for resource, value in container["resources"]["limits"].items():
                if resource in container_max:
                    assert _quantity(value) <= _quantity(container_max[resource]), (container["name"], resource)
    for key, total in totals.items():
        assert key in hard, f"{name}: the quota does not cap {key}"
        assert total <= _quantity(hard[key]), f"{name}: at full scale {key} needs {total:g} > {hard[key]}"
    assert pods <= int(hard["pods"])


# --- network policies --------------------------------------------------------------------------------------------


def _peer_matches(peer: Obj, other: Obj, namespace: str) -> bool:
    if "ipBlock" in peer:
        if "ip" not in other:
            return False
        ip = ipaddress.ip_address(other["ip"])
        block = peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    if "ip" in other:
        return False  # pod and namespace selectors match pods only
    other_ns = other.get("namespace", namespace)
    ns_labels = {"kubernetes.io/metadata.name": other_ns}
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], ns_labels):
            return False
    elif other_ns != namespace:
        return False
    return _selects(peer.get("podSelector", {}), other.get("labels", {}))


def allowed(
    objects: list[Obj], pod: dict[str, str], direction: str, other: Obj, port: int, protocol: str = "TCP"
) -> bool:
    """May the pod with labels ``pod`` (in the overlay's namespace) receive from / send to ``other`` on
    ``port``? ``other`` is {"labels": ..., "namespace": ...} for a pod, {"ip": ...} for an address."""
    policy_type, rules_key, peers_key = {
        "ingress": ("Ingress", "ingress", "from"),
        "egress": ("Egress", "egress", "to"),
    }[direction]
    policies = [
        p
        for p in by_kind(objects, "NetworkPolicy")
        if policy_type in p["spec"].get("policyTypes", ["Ingress"]) and _selects(p["spec"]["podSelector"], pod)
    ]
    if not policies:
        return True  # not isolated
    namespace = policies[0]["metadata"]["namespace"]
    for policy in policies:
        for rule in policy["spec"].get(rules_key, []):
            peers = rule.get(peers_key)
            if peers and not any(_peer_matches(peer, other, namespace) for peer in peers):
                continue
            ports = rule.get("ports")
            if not ports or any(p.get("protocol", "TCP") == protocol and p.get("port") in (None, port) for p in ports):
                return True
    return False


API = {"app.kubernetes.io/name": "crewflow", "app.kubernetes.io/component": "api"}
WORKER = {"app.kubernetes.io/name": "crewflow", "app.kubernetes.io/component": "worker"}
MIGRATE = {"app.kubernetes.io/name": "crewflow", "app.kubernetes.io/component": "migrate"}
SANDBOX = {"app.kubernetes.io/name": "crewflow", "app.kubernetes.io/component": "sandbox"}
INGRESS_CONTROLLER = {"labels": {"app.kubernetes.io/name": "ingress-nginx"}, "namespace": "ingress-nginx"}
PROMETHEUS = {"labels": {"app.kubernetes.io/name": "prometheus"}, "namespace": "monitoring"}
KUBE_DNS = {"labels": {"k8s-app": "kube-dns"}, "namespace": "kube-system"}
LLM_PROVIDER = {"ip": "203.0.113.10"}
METADATA_SERVICE = {"ip": "169.254.169.254"}


def test_the_namespace_denies_all_traffic_unless_a_policy_allows_it(overlay):
    _, objects = overlay
    deny = [
        p
        for p in by_kind(objects, "NetworkPolicy")
        if p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert len(deny) == 1
    stranger = {"labels": {"app": "other"}, "namespace": "default"}
    unknown_pod = {"app": "something-else"}
    assert not allowed(objects, unknown_pod, "ingress", stranger, 80)
    assert not allowed(objects, unknown_pod, "egress", LLM_PROVIDER, 443)
    assert allowed(objects, unknown_pod, "egress", KUBE_DNS, 53, "UDP"), "every pod resolves names"


def test_the_api_is_reached_by_the_ingress_controller_and_prometheus_only(overlay):
    _, objects = overlay
    assert allowed(objects, API, "ingress", INGRESS_CONTROLLER, 8000)
    assert not allowed(objects, API, "ingress", INGRESS_CONTROLLER, 9100)
    assert not allowed(objects, WORKER, "ingress", INGRESS_CONTROLLER, 9100)
    assert not allowed(objects, API, "ingress", {"labels": {"app": "x"}, "namespace": "default"}, 8000)
    assert not allowed(objects, API, "ingress", {"labels": WORKER}, 8000)
    # Prometheus scrapes the port each pod announces; the worker's is the one its metrics server listens on
    config = one(objects, "ConfigMap", "crewflow-config")["data"]
    expected = {"api": ("http", 8000), "worker": ("metrics", int(config["CREWFLOW_METRICS_PORT"]))}
    for component, pod in (("api", API), ("worker", WORKER)):
        template = one(objects, "Deployment", f"crewflow-{component}")["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
        port_name, port = expected[component]
        assert annotations["prometheus.io/port"] == str(port)
        ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
        assert ports[port_name] == port
        assert allowed(objects, pod, "ingress", PROMETHEUS, port)
        assert not allowed(objects, pod, "ingress", {"labels": PROMETHEUS["labels"], "namespace": "default"}, port)


def _datastore_peers(name: str, objects: list[Obj]) -> dict[str, Obj]:
    if name == "dev":
        return {store: {"labels": {"app.kubernetes.io/name": store}} for store in ("postgres", "redis", "mongodb")}
    return {store: {"ip": "10.20.0.5"} for store in ("postgres", "redis", "mongodb")}


def test_the_application_reaches_its_stores_the_llm_providers_and_nothing_private(overlay):
    name, objects = overlay
    peers = _datastore_peers(name, objects)
    ports = {"postgres": 5432, "redis": 6379, "mongodb": 27017}
    for pod in (API, WORKER, MIGRATE):
        for store, port in ports.items():
            assert allowed(objects, pod, "egress", peers[store], port), (pod, store)
        assert allowed(objects, pod, "egress", KUBE_DNS, 53, "UDP")
    for pod in (API, WORKER):
        assert allowed(objects, pod, "egress", LLM_PROVIDER, 443)
        assert not allowed(objects, pod, "egress", LLM_PROVIDER, 80)
        assert not allowed(objects, pod, "egress", {"ip": "10.1.2.3"}, 443), "private ranges are not providers"
        assert not allowed(objects, pod, "egress", METADATA_SERVICE, 80)
    assert not allowed(objects, MIGRATE, "egress", LLM_PROVIDER, 443)
    if name == "dev":
        for store, port in ports.items():
            labels = {"app.kubernetes.io/name": store, "app.kubernetes.io/component": "datastore"}
            for pod in (API, WORKER, MIGRATE):
                assert allowed(objects, labels, "ingress", {"labels": pod}, port)
            assert not allowed(objects, labels, "ingress", {"labels": SANDBOX}, port)
            assert not allowed(objects, API, "egress", peers[store], port + 1)
            one(objects, "StatefulSet", store)
            assert one(objects, "Service", store)["spec"]["clusterIP"] == "None"


def test_only_the_api_and_worker_reach_the_sandbox_and_the_sandbox_reaches_no_internal_service(overlay):
    name, objects = overlay
    for pod in (API, WORKER):  # tool nodes and image builds in the worker, a tool's test run in the API
        assert allowed(objects, pod, "egress", {"labels": SANDBOX}, 2375)
        assert allowed(objects, SANDBOX, "ingress", {"labels": pod}, 2375)
        assert not allowed(objects, pod, "egress", {"labels": SANDBOX}, 2376)
    assert not allowed(objects, MIGRATE, "egress", {"labels": SANDBOX}, 2375)
    assert not allowed(objects, SANDBOX, "ingress", {"labels": MIGRATE}, 2375)
    assert not allowed(objects, SANDBOX, "ingress", {"labels": API, "namespace": "other"}, 2375)
    assert not allowed(objects, SANDBOX, "ingress", INGRESS_CONTROLLER, 2375)
    for store, peer in _datastore_peers(name, objects).items():
        assert not allowed(objects, SANDBOX, "egress", peer, {"postgres": 5432, "redis": 6379, "mongodb": 27017}[store])
    assert not allowed(objects, SANDBOX, "egress", {"labels": API}, 8000)
    # nothing else inside the namespace either: each flow above is the only way in or out
    stranger = {"labels": {"app.kubernetes.io/name": "something-else"}}
    for pod in (API, WORKER, MIGRATE, SANDBOX):
        for port in (80, 8000, 2375, 9100):
            assert not allowed(objects, pod, "egress", stranger, port), (pod, port)
    assert not allowed(objects, WORKER, "egress", {"labels": API}, 8000)
    assert not allowed(objects, API, "egress", {"labels": WORKER}, 9100)
    assert not allowed(objects, SANDBOX, "egress", METADATA_SERVICE, 80)


def test_the_policy_evaluator_sees_the_difference_a_rule_makes():
    base = [
        {
            "kind": "NetworkPolicy",
            "metadata": {"name": "d", "namespace": "n"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        }
    ]
    assert not allowed(base, {"a": "b"}, "egress", LLM_PROVIDER, 443)
    opened = [
        *base,
        {
            "kind": "NetworkPolicy",
            "metadata": {"name": "o", "namespace": "n"},
            "spec": {
                "podSelector": {"matchLabels": {"a": "b"}},
                "policyTypes": ["Egress"],
                "egress": [
                    {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}], "ports": [{"port": 443}]}
                ],
            },
        },
    ]
    assert allowed(opened, {"a": "b"}, "egress", LLM_PROVIDER, 443)
    assert not allowed(opened, {"a": "b"}, "egress", {"ip": "10.0.0.1"}, 443)
    assert not allowed(opened, {"a": "c"}, "egress", LLM_PROVIDER, 443)
    assert allowed([], {"a": "b"}, "ingress", {"labels": {}}, 1), "a pod no policy selects is not isolated"


# --- per environment ---------------------------------------------------------------------------------------------


def test_dev_runs_its_own_stores_on_volumes_with_one_small_replica_each():
    objects = render(K8S / "overlays" / "dev")
    assert {o["metadata"]["namespace"] for o in objects if o["kind"] not in CLUSTER_SCOPED} == {"crewflow-dev"}
    assert one(objects, "Namespace", "crewflow-dev")
    for store in ("postgres", "redis", "mongodb"):
        statefulset = one(objects, "StatefulSet", store)
        assert statefulset["spec"]["serviceName"] == store
        assert statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    for name in ("crewflow-api", "crewflow-worker", "crewflow-sandbox"):
        assert one(objects, "Deployment", name)["spec"]["replicas"] == 1
    prod = render(K8S / "overlays" / "prod")
    for component in ("api", "worker"):
        small = one(objects, "Deployment", f"crewflow-{component}")["spec"]["template"]["spec"]["containers"][0]
        big = one(prod, "Deployment", f"crewflow-{component}")["spec"]["template"]["spec"]["containers"][0]
        assert _quantity(small["resources"]["limits"]["memory"]) < _quantity(big["resources"]["limits"]["memory"])


def test_prod_points_at_managed_stores_spreads_replicas_and_pins_the_image():
    objects = render(K8S / "overlays" / "prod")
    assert {o["metadata"]["namespace"] for o in objects if o["kind"] not in CLUSTER_SCOPED} == {"crewflow-prod"}
    assert not by_kind(objects, "StatefulSet") and not by_kind(objects, "PersistentVolumeClaim")
    for store in ("postgres", "redis", "mongodb"):
        service = one(objects, "Service", store)
        assert service["spec"]["type"] == "ExternalName" and service["spec"]["externalName"]
    for component in ("api", "worker"):
        spec = one(objects, "Deployment", f"crewflow-{component}")["spec"]
        pod = spec["template"]["spec"]
        zones = [c for c in pod["topologySpreadConstraints"] if c["topologyKey"] == "topology.kubernetes.io/zone"]
        assert zones and _selects(zones[0]["labelSelector"], spec["template"]["metadata"]["labels"])
        anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert one(objects, "Deployment", "crewflow-api")["spec"]["replicas"] >= 3
    assert one(objects, "Deployment", "crewflow-worker")["spec"]["replicas"] >= 3
    for workload in (o for o in objects if o["kind"] in WORKLOADS):
        for container in _containers(workload):
            image = container["image"]
            assert re.search(r"(:\d+\.\d+\.\d+(-[\w.]+)?|@sha256:[0-9a-f]{64})$", image), (
                f"{workload['metadata']['name']}: {image} is not pinned to a release or a digest"
            )
