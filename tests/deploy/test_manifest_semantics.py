"""What the manifests must mean, beyond being valid: who can reach whom, what probes check, what
each overlay asks of the nodes, and that nothing runs as root."""

from __future__ import annotations

import pytest

from kvtransfer.ucx import tls_allows_cuda
from tests.deploy.manifest_commands import (
    OVERLAYS,
    expand,
    process_specs,
    render,
    render_overlay,
    workload_component,
)
from worker.config import worker_config_from_args

pytestmark = pytest.mark.timeout(120)

GRPC_PORTS = {"router": 50051, "prefill": 50061, "decode": 50071}


def selector_matches(selector: dict, labels: dict) -> bool:
    """Kubernetes LabelSelector semantics (matchLabels AND matchExpressions)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        present, value = expr["key"] in labels, labels.get(expr["key"])
        op = expr["operator"]
        if (op == "In" and value not in expr["values"]) or (op == "NotIn" and value in expr["values"]):
            return False
        if (op == "Exists" and not present) or (op == "DoesNotExist" and present):
            return False
    return True


def workloads(objects) -> list[dict]:
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]


def pod_labels(objects) -> dict[str, dict]:
    return {workload_component(w): w["spec"]["template"]["metadata"]["labels"] for w in workloads(objects)}


def is_open_to_anyone(rule: dict) -> bool:
    peers = rule.get("from")
    if not peers:
        return True
    return any(
        p.get("namespaceSelector") == {} or p.get("ipBlock", {}).get("cidr") in ("0.0.0.0/0", "::/0")
        for p in peers
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_router_is_reachable_from_clients(overlay):
    objects = render_overlay(overlay)
    labels = pod_labels(objects)
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    client_facing = [p for p in policies if any(is_open_to_anyone(r) for r in p["spec"].get("ingress", []))]
    assert client_facing, "no client-facing NetworkPolicy"
    for policy in client_facing:
        selected = {c for c, lab in labels.items() if selector_matches(policy["spec"]["podSelector"], lab)}
        assert selected == {"router"}, f"{policy['metadata']['name']} opens {selected}"
        open_ports = {
            p["port"] for r in policy["spec"]["ingress"] if is_open_to_anyone(r) for p in r.get("ports", [])
        }
        assert open_ports == {GRPC_PORTS["router"]}, "only the public gRPC port may be open"
    # ... and the Services those pods sit behind: only the router's.
    services = [o for o in objects if o["kind"] == "Service"]
    exposed = {
        s["metadata"]["name"]
        for s in services
        if selector_matches({"matchLabels": s["spec"]["selector"]}, labels["router"])
    }
    assert exposed == {"baton-router"}
    # A default-deny policy selects every Baton pod, so nothing else is open by omission.
    deny = [p for p in policies if not p["spec"].get("ingress") and "Ingress" in p["spec"]["policyTypes"]]
    assert deny and all(
        any(selector_matches(p["spec"]["podSelector"], lab) for p in deny) for lab in labels.values()
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_only_from_router_and_each_other(overlay):
    objects = render_overlay(overlay)
    labels = pod_labels(objects)
    for policy in (o for o in objects if o["kind"] == "NetworkPolicy"):
        targets = {c for c, lab in labels.items() if selector_matches(policy["spec"]["podSelector"], lab)}
        if not targets & {"prefill", "decode", "redis"}:
            continue
        for rule in policy["spec"].get("ingress", []):
            for peer in rule["from"]:
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    allowed = {c for c, lab in labels.items() if selector_matches(peer["podSelector"], lab)}
                    assert allowed <= {"router", "prefill", "decode"}, (policy["metadata"]["name"], allowed)
                else:  # another namespace: only Prometheus, only metrics ports
                    assert peer["namespaceSelector"]["matchLabels"] == {
                        "kubernetes.io/metadata.name": "monitoring"
                    }
                    assert {p["port"] for p in rule["ports"]} <= {9100, 9101, 9102}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_are_grpc_health_on_the_serving_port(overlay):
    specs = process_specs(overlay)
    for component, port in GRPC_PORTS.items():
        probes = specs[component].probes
        assert {"readiness", "liveness"} <= probes.keys()
        for probe in probes.values():
            assert (probe.kind, probe.port, probe.service) == ("grpc", port, "")
        listen = specs[component].args[specs[component].args.index("--listen") + 1]
        assert listen == f"0.0.0.0:{port}", "probe port must be the port the server listens on"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_drain_before_kill(overlay):
    for workload in workloads(render_overlay(overlay)):
        pod = workload["spec"]["template"]["spec"]
        if workload_component(workload) == "redis":
            continue
        assert pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
        assert pod["terminationGracePeriodSeconds"] >= 120
        strategy = workload["spec"]["strategy"]["rollingUpdate"]
        assert strategy["maxUnavailable"] == 0 and strategy["maxSurge"] >= 1
    pdbs = {o["metadata"]["name"] for o in render_overlay(overlay) if o["kind"] == "PodDisruptionBudget"}
    assert pdbs == {"baton-router", "baton-prefill", "baton-decode"}


def test_gpu_overlay_requests_gpus_and_rdma_cpu_dev_does_not():
    def worker_resources(overlay):
        return {
            workload_component(w): w["spec"]["template"]["spec"]["containers"][0]["resources"]
            for w in workloads(render_overlay(overlay))
        }

    gpu = worker_resources("gpu-b200")
    for role in ("prefill", "decode"):
        spec = process_specs("gpu-b200")[role]
        engine = worker_config_from_args(role, [expand(arg, spec.env) for arg in spec.args]).engine
        ranks = engine.parallel.world_size
        assert ranks > 1  # the 397B fits no single GPU
        assert gpu[role]["limits"]["nvidia.com/gpu"] == gpu[role]["requests"]["nvidia.com/gpu"] == str(ranks)
        assert "rdma/ib" in gpu[role]["limits"]
    assert "nvidia.com/gpu" not in gpu["router"].get("limits", {})
    assert all("nvidia.com/gpu" not in r.get("limits", {}) for r in worker_resources("cpu-dev").values())
    gpu_args = process_specs("gpu-b200")
    assert gpu_args["decode"].env["TRANSFER_BACKEND"] == "ucx" and "UCX_TLS" in str(
        render_overlay("gpu-b200")
    )


@pytest.mark.parametrize("role", ["prefill", "decode"])
def test_gpu_overlay_workers_run_their_engine_on_cuda_with_a_memory_fraction(role):
    """The overlay's worker args, read by the worker's own parser: cuda, bf16, a GPU fraction;
    UCX may use the CUDA transports; cpu-dev stays on the CPU."""
    spec = process_specs("gpu-b200")[role]
    engine = worker_config_from_args(role, [expand(arg, spec.env) for arg in spec.args]).engine
    assert (engine.device, engine.dtype, engine.gpu_memory_utilization) == ("cuda", "bfloat16", 0.9)
    assert tls_allows_cuda(spec.env["UCX_TLS"])
    dev = process_specs("cpu-dev")[role]
    assert worker_config_from_args(role, [expand(arg, dev.env) for arg in dev.args]).engine.device == "cpu"


def test_replica_counts_differ_per_overlay():
    def replicas(overlay):
        return {workload_component(w): w["spec"]["replicas"] for w in workloads(render_overlay(overlay))}

    dev, gpu = replicas("cpu-dev"), replicas("gpu-b200")
    assert dev["prefill"] != gpu["prefill"] and dev["decode"] != gpu["decode"]
    assert gpu["decode"] != gpu["prefill"], "the two pools are sized independently"
    hpas = {
        o["spec"]["scaleTargetRef"]["name"]: o
        for o in render_overlay("gpu-b200")
        if o["kind"] == "HorizontalPodAutoscaler"
    }
    assert set(hpas) == {"baton-prefill", "baton-decode"}
    assert hpas["baton-decode"]["spec"]["minReplicas"] == gpu["decode"]
    assert all(m["type"] in ("Pods", "External") for h in hpas.values() for m in h["spec"]["metrics"])
    assert not [o for o in render_overlay("cpu-dev") if o["kind"] == "HorizontalPodAutoscaler"]


@pytest.mark.parametrize("path", [f"overlays/{o}" for o in OVERLAYS] + ["kuberay"])
def test_every_container_runs_as_non_root(path):
    for obj in render(path):
        if obj["kind"] in ("Deployment", "StatefulSet"):
            templates = [obj["spec"]["template"]]
        elif obj["kind"] == "RayService":
            cluster = obj["spec"]["rayClusterConfig"]
            templates = [cluster["headGroupSpec"]["template"]] + [
                g["template"] for g in cluster["workerGroupSpecs"]
            ]
        else:
            continue
        for template in templates:
            pod_sc = template["spec"].get("securityContext", {})
            for container in template["spec"]["containers"] + template["spec"].get("initContainers", []):
                sc = container.get("securityContext", {})
                assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, container["name"]
                assert sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0, container["name"]
                assert sc.get("allowPrivilegeEscalation") is False, container["name"]
                assert "ALL" in sc.get("capabilities", {}).get("drop", []), container["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_router_finds_workers_through_headless_services(overlay):
    objects = render_overlay(overlay)
    args = process_specs(overlay)["router"].args
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    for flag, name, port in (("--prefill", "baton-prefill", 50061), ("--decode", "baton-decode", 50071)):
        assert args[args.index(flag) + 1] == f"dns:///{name}:{port}"
        assert services[name]["spec"]["clusterIP"] == "None"
        assert port in {p["port"] for p in services[name]["spec"]["ports"]}


def test_servicemonitor_scrapes_every_component():
    objects = render_overlay("gpu-b200")
    monitor = next(o for o in objects if o["kind"] == "ServiceMonitor")
    scraped = {
        s["metadata"]["name"]
        for s in objects
        if s["kind"] == "Service"
        and selector_matches(monitor["spec"]["selector"], s["metadata"]["labels"])
        and any(p["name"] == "metrics" for p in s["spec"]["ports"])
    }
    assert scraped == {"baton-router", "baton-prefill", "baton-decode"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_router_and_workers_get_the_cluster_token_from_a_secret(overlay):
    """Worker RPCs demand the cluster token (rpc/cluster_auth.py): every Baton container reads
    BATON_CLUSTER_TOKEN from the `baton-cluster` Secret, never from a literal in the manifest."""
    objects = render_overlay(overlay)
    for workload in workloads(objects):
        if workload_component(workload) == "redis":
            continue
        container = workload["spec"]["template"]["spec"]["containers"][0]
        secrets = {ref["secretRef"]["name"] for ref in container.get("envFrom", []) if "secretRef" in ref}
        # a generated Secret carries a hash suffix (baton-cluster-fhm965hmg2)
        assert any(n == "baton-cluster" or n.startswith("baton-cluster-") for n in secrets), (
            f"{workload['metadata']['name']} lacks the cluster token"
        )
        assert all(e.get("name") != "BATON_CLUSTER_TOKEN" or "valueFrom" in e for e in container.get("env", []))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_listening_beyond_loopback_is_authenticated_or_explicitly_insecure(overlay):
    """The servers refuse a non-loopback listener without auth unless told --insecure: every
    manifest that listens on 0.0.0.0 must either configure auth or say --insecure."""
    for component, spec in process_specs(overlay).items():
        if component == "redis":
            continue
        listens = [spec.args[i + 1] for i, arg in enumerate(spec.args) if arg in ("--listen", "--admin-listen")]
        assert listens, component
        exposed = [address for address in listens if not address.startswith("127.0.0.1:")]
        authenticated = "BATON_AUTH_TOKENS" in spec.env if component == "router" else "BATON_TLS_CA" in spec.env
        assert not exposed or authenticated or "--insecure" in spec.args, (component, exposed)
