"""infra/k8s: every rendered object validates against the Kubernetes schemas (offline, via
kubernetes-validate, strict: unknown fields fail), and the objects fit together.

Rendering uses ``kubectl kustomize`` (or ``kustomize build``) when installed; otherwise the base
is assembled from its files (namespace, images and labels applied as kustomize would) and the
overlays are skipped.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import ROOT

K8S = ROOT / "infra" / "k8s"
KUBERNETES_VERSION = "1.30.0"
CRDS = {("keda.sh/v1alpha1", "ScaledObject")}
BUILDS = ["base", "overlays/production", "overlays/cpu-only"]


def _kustomize_command() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def _render_base_by_hand() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    tags = {i["name"]: i.get("newTag") for i in kustomization.get("images", [])}
    docs = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / "base" / name).read_text()):
            if doc["kind"] != "Namespace":
                doc["metadata"]["namespace"] = kustomization["namespace"]
            spec = doc.get("spec", {})
            pod = spec.get("template", {}).get("spec", {})
            for container in pod.get("containers", []) + pod.get("initContainers", []):
                if tags.get(container["image"]):
                    container["image"] = f"{container['image']}:{tags[container['image']]}"
            docs.append(doc)
    return docs


def render(build: str) -> list[dict[str, Any]]:
    command = _kustomize_command()
    if command is None:
        if build != "base":
            pytest.skip("neither kubectl nor kustomize is installed")
        return _render_base_by_hand()
    out = subprocess.run(
        [*command, str(K8S / build)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module", params=BUILDS)
def rendered(request) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_validates_against_kubernetes_schemas(rendered) -> None:
    import kubernetes_validate

    _, docs = rendered
    assert docs
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at "
                f"{'/'.join(map(str, exc.path))}"
            )


def test_validator_rejects_a_typo() -> None:
    import kubernetes_validate

    doc = yaml.safe_load((K8S / "base" / "scheduler.yaml").read_text())
    doc["spec"]["template"]["spec"]["containers"][0]["envFrm"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_references_resolve(rendered) -> None:
    _, docs = rendered
    deployments = by_kind(docs, "Deployment")
    configmaps, services = by_kind(docs, "ConfigMap"), by_kind(docs, "Service")
    for name, scaled in by_kind(docs, "ScaledObject").items():
        assert scaled["spec"]["scaleTargetRef"]["name"] in deployments, name
        assert scaled["spec"]["triggers"][0]["type"] == "prometheus"
        assert "dorado_queue_depth" in scaled["spec"]["triggers"][0]["metadata"]["query"]
    pods = [d["spec"]["template"] for d in deployments.values()]
    pods += [j["spec"]["template"] for j in by_kind(docs, "Job").values()]
    for pod in pods:
        for container in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps
    for ingress in by_kind(docs, "Ingress").values():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["name"] in services
    for pdb in by_kind(docs, "PodDisruptionBudget").values():
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert any(
            selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
            for d in deployments.values()
        ), pdb["metadata"]["name"]
    for deployment in deployments.values():
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_base_components() -> None:
    docs = render("base")
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == {
        "dorado-api",
        "dorado-scheduler",
        "dorado-worker-a100-80gb",
        "dorado-worker-l4",
        "dorado-validator",
        "dorado-inference",
    }
    validator = deployments["dorado-validator"]["spec"]["template"]["spec"]["containers"][0]
    assert validator["command"][validator["command"].index("-Q") + 1] == "dorado.validate"
    assert "nvidia.com/gpu" not in validator["resources"].get("limits", {})
    assert deployments["dorado-scheduler"]["spec"]["replicas"] == 1
    api = deployments["dorado-api"]["spec"]["template"]["spec"]["containers"][0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    migrate = by_kind(docs, "Job")["dorado-migrate"]["spec"]["template"]["spec"]
    assert migrate["containers"][0]["command"] == ["dorado", "migrate"]
    for pool, product in (("a100-80gb", "NVIDIA-A100-SXM4-80GB"), ("l4", "NVIDIA-L4")):
        pod = deployments[f"dorado-worker-{pool}"]["spec"]["template"]["spec"]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] >= 1
        assert pod["nodeSelector"]["nvidia.com/gpu.product"] == product
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        assert pod["terminationGracePeriodSeconds"] >= 300
    for deployment in deployments.values():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
    assert set(by_kind(docs, "ScaledObject")) == {"dorado-worker-a100-80gb", "dorado-worker-l4"}
    assert {"dorado-api", "dorado-worker-l4"} <= set(by_kind(docs, "PodDisruptionBudget"))
    assert all(d["metadata"].get("namespace") == "dorado" for d in docs if d["kind"] != "Namespace")


def test_overlays() -> None:
    if _kustomize_command() is None:
        pytest.skip("neither kubectl nor kustomize is installed")
    production = render("overlays/production")
    assert "dorado-secrets" not in by_kind(production, "Secret")
    images = {
        c["image"]
        for d in by_kind(production, "Deployment").values()
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert images == {
        "registry.example.com/dorado/api:0.1.0",
        "registry.example.com/dorado/worker:0.1.0",
    }
    cpu = render("overlays/cpu-only")
    assert not by_kind(cpu, "ScaledObject")
    for deployment in by_kind(cpu, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        assert "nvidia.com/gpu" not in str(pod)


def test_manifests_parse() -> None:
    for path in sorted(K8S.rglob("*.yaml")):
        assert list(yaml.safe_load_all(Path(path).read_text())), path


def test_inference_service_reached_by_the_api_only() -> None:
    docs = render("base")
    config = by_kind(docs, "ConfigMap")["dorado-config"]["data"]
    service = by_kind(docs, "Service")["dorado-inference"]
    assert config["DORADO_INFERENCE_URL"] == (
        f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    )
    pod = by_kind(docs, "Deployment")["dorado-inference"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["command"][:2] == ["dorado-worker", "serve-inference"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    policy = by_kind(docs, "NetworkPolicy")["dorado-inference"]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert [
        rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for rule in policy["ingress"]
    ] == ["api"]
