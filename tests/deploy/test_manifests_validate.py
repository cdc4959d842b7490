"""Every overlay renders with `kubectl kustomize`; every rendered core object validates against
the bundled Kubernetes schemas (strict: unknown fields fail); custom resources validate against
the CRD schemas kept in deploy/crds/."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.manifest_commands import OVERLAYS, REPO, render

pytestmark = pytest.mark.timeout(120)

K8S_VERSION = "1.33"  # bundled by kubernetes-validate; grpc probes and the preStop sleep action are GA
RENDERED = [f"overlays/{name}" for name in OVERLAYS] + ["kuberay"]
CRD_DIR = REPO / "deploy" / "crds"


def load_crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> openAPIV3Schema of every CRD in deploy/crds."""
    schemas = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            api_version = f"{crd['spec']['group']}/{version['name']}"
            schemas[(api_version, crd["spec"]["names"]["kind"])] = version["schema"]["openAPIV3Schema"]
    return schemas


def strict_json_schema(schema: dict) -> dict:
    """An OpenAPI v3 structural schema as JSON Schema, rejecting unknown fields like strict field
    validation does (objects with `properties` close unless they preserve unknown fields)."""
    schema = copy.deepcopy(schema)

    def walk(node: dict) -> None:
        if node.pop("x-kubernetes-int-or-string", False):
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        preserve = node.get("x-kubernetes-preserve-unknown-fields", False)
        if "properties" in node and "additionalProperties" not in node and not preserve:
            node["additionalProperties"] = False
        for child in node.get("properties", {}).values():
            walk(child)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key])

    walk(schema)
    return schema


def validate_custom_resource(obj: dict, schemas: dict) -> None:
    key = (obj["apiVersion"], obj["kind"])
    assert key in schemas, f"no CRD schema in deploy/crds for {key}"
    jsonschema.Draft7Validator(strict_json_schema(schemas[key])).validate(obj)
    assert obj["metadata"].get("name"), "custom resource without a name"


def pod_templates(obj: dict) -> list[dict]:
    """Pod templates embedded in custom resources (validated as core PodTemplates)."""
    if obj["kind"] != "RayService":
        return []
    cluster = obj["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster.get("workerGroupSpecs", [])
    ]


@pytest.mark.parametrize("path", RENDERED)
def test_renders_and_validates(path):
    objects = render(path)
    assert objects, f"{path} rendered nothing"
    crd_schemas = load_crd_schemas()
    for obj in objects:
        name = f"{path}: {obj['kind']}/{obj['metadata']['name']}"
        if (obj["apiVersion"], obj["kind"]) in crd_schemas:
            validate_custom_resource(obj, crd_schemas)
            for template in pod_templates(obj):
                wrapped = {
                    "apiVersion": "v1",
                    "kind": "PodTemplate",
                    "metadata": {"name": "t"},
                    "template": template,
                }
                kubernetes_validate.validate(wrapped, K8S_VERSION, strict=True)
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name}: {'.'.join(map(str, error.path))}: {error.message}")


@pytest.mark.parametrize("path", sorted(p.name for p in CRD_DIR.glob("*.yaml")))
def test_crds_are_valid_crds(path):
    kubernetes_validate.validate(yaml.safe_load((CRD_DIR / path).read_text()), K8S_VERSION, strict=True)


def test_validators_reject_what_they_should():
    """The checks above can fail: a misspelt field in a core object and in a custom resource."""
    deployment = copy.deepcopy(next(o for o in render("overlays/cpu-dev") if o["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["sevrice"] = ""
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    schemas = load_crd_schemas()
    monitor = copy.deepcopy(next(o for o in render("overlays/cpu-dev") if o["kind"] == "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        validate_custom_resource(monitor, schemas)
    ray = copy.deepcopy(next(o for o in render("kuberay") if o["kind"] == "RayService"))
    ray["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        validate_custom_resource(ray, schemas)


def test_kustomize_failure_is_reported(tmp_path):
    broken = Path(tmp_path) / "kustomization.yaml"
    broken.write_text("resources: [missing.yaml]\n")
    with pytest.raises(RuntimeError, match="kubectl kustomize"):
        render(str(tmp_path))
