"""The Helm chart rendered (no helm binary: helm-python-sdk) and validated against the Kubernetes
schemas for every supported configuration, and the Dockerfile checked against it offline."""

from __future__ import annotations

import copy
import json
import pathlib
import re

import kubernetes_validate
import pytest
import yaml

from mixprec.cli.main import build_parser

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "mixprec"
KUBERNETES = "1.37.0"
BASE = {"database": {"url": "postgresql+psycopg://mixprec:secret@db:5432/mixprec"}}
OBSERVED = {"metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                        "grafanaDashboard": {"enabled": True}},
            "networkPolicy": {"databasePodSelector": {"app": "postgres"}}}
MATRIX = {
    "default": {},
    "auth": {"auth": {"agentTokenSecret": "agents", "agentTokenKey": "secret", "clientTokensSecret": "clients"}},
    "tls": {"tls": {"enabled": True, "mutual": True}},
    "redis": {"redis": {"enabled": True, "url": "redis://:secret@redis:6379/0"}},
    "statefulset-observed": {"worker": {"kind": "StatefulSet"}, "controlPlane": {"dashboard": {"enabled": True}},
                             **OBSERVED},
    "daemonset": {"worker": {"kind": "DaemonSet"}, "database": {"existingSecret": "pg", "url": ""}},
    "gpu": {"worker": {"gpu": {"enabled": True}, "dtype": "bf16"}},
}
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


def merged(*layers: dict) -> dict:
    out: dict = {}
    for layer in layers:
        for key, value in layer.items():
            out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def render(values: dict) -> list[dict]:
    import helm_python

    manifests = helm_python.Chart.load(CHART).render(values, name="rel", namespace="ml", is_install=True)
    return [doc for text in manifests.values() for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="module", params=sorted(MATRIX))
def rendered(request):
    values = merged(BASE, MATRIX[request.param])
    return request.param, values, render(copy.deepcopy(values))


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def component(objects: list[dict], name: str) -> dict:
    found = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")
             and o["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == name]
    assert len(found) == 1, f"one {name} workload expected, got {len(found)}"
    return found[0]


def container(workload: dict) -> dict:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return only


def cli_args(c: dict) -> list[str]:
    """The container's arguments as the kubelet expands them: $(VAR) from the container's env."""
    names = {e["name"] for e in c.get("env", [])}
    return [re.sub(r"\$\((\w+)\)", lambda m: f"<{m.group(1)}>" if m.group(1) in names else m.group(0), a)
            for a in c["args"]]


def test_every_object_is_valid_for_kubernetes(rendered):
    name, _, objects = rendered
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "Job", "ServiceAccount"} <= kinds, name
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            assert obj["apiVersion"] == "monitoring.coreos.com/v1" and obj["spec"], obj
            continue
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def test_every_pod_is_locked_down_and_bounded(rendered):
    name, values, objects = rendered
    gpu = values.get("worker", {}).get("gpu", {}).get("enabled", False)
    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]
    assert len(workloads) == 3, name
    for w in workloads:
        pod = w["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][bound]), (w["metadata"]["name"], bound)
            assert "command" not in c, "the image's entrypoint (mixprec) runs every container"
            cuda = gpu and w["metadata"]["name"].endswith("-worker")
            assert c["image"] == ("mixprec:0.1.0-cu128" if cuda else "mixprec:0.1.0")  # the chart's appVersion


def test_probes_are_grpc_and_metrics_listen_on_the_pod_address(rendered):
    _, values, objects = rendered
    for part, port_key in (("controlplane", "controlPlane"), ("worker", "worker")):
        c = container(component(objects, part))
        health = values.get(port_key, {}).get("healthPort") or (50052 if part == "controlplane" else 50062)
        for probe in ("readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"] == {"port": health}, (part, probe)
        args = cli_args(c)
        assert f"--health-listen=0.0.0.0:{health}" in args
        metrics = next(a for a in args if a.startswith("--metrics-listen="))
        assert not metrics.startswith("--metrics-listen=127."), metrics
        port = int(metrics.rsplit(":", 1)[1])
        annotations = component(objects, part)["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port)
        assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in c["ports"]


def test_secrets_never_appear_in_pod_specs(rendered):
    name, values, objects = rendered
    secret_texts = [values["database"]["url"], values.get("redis", {}).get("url")]
    for w in [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]:
        text = json.dumps(w)
        for secret in filter(None, secret_texts):
            assert secret not in text, (name, w["metadata"]["name"])
        for c in w["spec"]["template"]["spec"]["containers"]:
            env = {e["name"]: e for e in c.get("env", [])}
            for key in ("MIXPREC_DB", "MIXPREC_REDIS", "MIXPREC_TOKEN"):
                if key in env:
                    assert "secretKeyRef" in env[key]["valueFrom"], (name, key)
    db = container(component(objects, "controlplane"))
    assert {e["name"] for e in db["env"]} >= {"MIXPREC_DB"}
    if not values["database"].get("existingSecret"):
        (secret,) = [s for s in by_kind(objects, "Secret") if s["metadata"]["name"] == "rel-mixprec-database"]
        assert secret["stringData"]["url"] == values["database"]["url"]
        assert "pre-install" in secret["metadata"]["annotations"]["helm.sh/hook"]  # exists before the migration


def test_arguments_are_ones_the_cli_accepts(rendered):
    _, _, objects = rendered
    parser = build_parser()
    for part in ("controlplane", "worker", "migrate"):
        args = parser.parse_args(cli_args(container(component(objects, part))))
        assert args.command == {"controlplane": "server"}.get(part, part)


def test_migrations_run_as_a_hook_before_install_and_upgrade(rendered):
    _, _, objects = rendered
    job = component(objects, "migrate")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert container(job)["args"] == ["migrate"]


def test_control_plane_has_a_disruption_budget_and_network_policies(rendered):
    name, values, objects = rendered
    (pdb,) = by_kind(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "controlplane"
    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind(objects, "NetworkPolicy")}
    cp = policies["rel-mixprec-controlplane"]
    grpc_rule = next(r for r in cp["ingress"] if r.get("ports") == [{"port": "grpc", "protocol": "TCP"}])
    sources = [f["podSelector"]["matchLabels"] for f in grpc_rule["from"] if "podSelector" in f]
    assert {"app.kubernetes.io/name": "mixprec", "app.kubernetes.io/instance": "rel",
            "app.kubernetes.io/component": "worker"} in sources, "agents reach the control plane"
    assert {"mixprec.io/client": "true"} in sources, "operators reach the control plane"
    dashboard = values.get("controlPlane", {}).get("dashboard", {}).get("enabled", False)
    http = [r for r in cp["ingress"] if r.get("ports") == [{"port": "http", "protocol": "TCP"}]]
    assert len(http) == dashboard, "the dashboard port is open to operators exactly when it is on"
    if http:
        assert http[0]["from"] == [{"podSelector": {"matchLabels": {"mixprec.io/client": "true"}}}]
    worker = policies["rel-mixprec-worker"]
    assert "Egress" in worker["policyTypes"]
    reachable = [t["podSelector"]["matchLabels"].get("app.kubernetes.io/component")
                 for rule in worker["egress"] for t in rule.get("to", [])]
    assert reachable == ["controlplane"], "workers reach the control plane (and DNS), never the database"
    if values.get("networkPolicy", {}).get("databasePodSelector"):
        database = policies["rel-mixprec-database"]
        assert database["podSelector"]["matchLabels"] == {"app": "postgres"}
        allowed = {f["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for f in database["ingress"][0]["from"]}
        assert allowed == {"controlplane", "migrate"}
    else:
        assert "rel-mixprec-database" not in policies, name


def test_workers_keep_their_id_and_saved_policy_across_rescheduling(rendered):
    _, values, objects = rendered
    kind = values.get("worker", {}).get("kind", "StatefulSet")
    worker = component(objects, "worker")
    assert worker["kind"] == kind
    c = container(worker)
    env = {e["name"]: e for e in c["env"]}
    assert "--worker-id=<MIXPREC_WORKER_ID>" in cli_args(c)
    field = env["MIXPREC_WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    state_dir = next(a.split("=", 1)[1] for a in c["args"] if a.startswith("--state-dir="))
    # Writable and the worker's own: the token a bootstrap token issues this worker id is kept there.
    assert {"name": "state", "mountPath": state_dir} in c["volumeMounts"]
    assert env["MIXPREC_CACHE_DIR"]["value"].startswith(state_dir + "/")  # dequantized weights survive restarts
    if kind == "StatefulSet":
        assert field == "metadata.name"  # name-worker-0, -1, ...: the same after rescheduling
        (claim,) = worker["spec"]["volumeClaimTemplates"]
        assert claim["metadata"]["name"] == "state"
        headless = next(s for s in by_kind(objects, "Service") if s["metadata"]["name"] == worker["spec"]["serviceName"])
        assert headless["spec"]["clusterIP"] == "None"
    else:
        assert field == "spec.nodeName"
        volumes = {v["name"]: v for v in worker["spec"]["template"]["spec"]["volumes"]}
        assert "hostPath" in volumes["state"]


def test_gpu_workers_request_a_gpu_run_on_cuda_from_the_cuda_image(rendered):
    name, values, objects = rendered
    worker, server = container(component(objects, "worker")), container(component(objects, "controlplane"))
    args = dict(a.split("=", 1) for a in cli_args(worker) if "=" in a)
    gpu = values.get("worker", {}).get("gpu", {}).get("enabled", False)
    assert ("nvidia.com/gpu" in worker["resources"]["limits"]) == gpu
    assert "nvidia.com/gpu" not in server["resources"]["limits"]
    assert args["--dtype"] == values.get("worker", {}).get("dtype", "auto")
    if gpu:
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1 and args["--device"] == "cuda"
        # The Dockerfile's CUDA variant, tagged as its header builds it; the control plane keeps the CPU image.
        assert worker["image"] == server["image"] + "-cu128"
        assert "mixprec:0.1.0-cu128 --build-arg TORCH_VARIANT=cu128" in (ROOT / "Dockerfile").read_text()
    else:
        assert args["--device"] == "auto" and worker["image"] == server["image"]


def test_auth_and_tls_take_their_material_from_secrets(rendered):
    name, values, objects = rendered
    server, worker = container(component(objects, "controlplane")), container(component(objects, "worker"))
    server_args, worker_args = cli_args(server), cli_args(worker)
    assert "--auth=required" in server_args  # the control plane refuses --auth off beyond loopback
    (token,) = [e for e in worker["env"] if e["name"] == "MIXPREC_TOKEN"]
    auth = values.get("auth", {})
    assert token["valueFrom"]["secretKeyRef"] == {"name": auth.get("agentTokenSecret", "mixprec-agent-token"),
                                                   "key": auth.get("agentTokenKey", "token")}
    tls = values.get("tls", {}).get("enabled", False)
    flags = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in server_args + worker_args if "=" in a}
    if not tls:
        assert not {"--tls-cert", "--tls-key", "--tls-ca", "--client-ca"} & set(flags), name
        return
    for workload, c, wanted in ((component(objects, "controlplane"), server, ("--tls-cert", "--tls-key", "--client-ca")),
                                (component(objects, "worker"), worker, ("--tls-ca", "--tls-cert", "--tls-key"))):
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        assert volumes["tls"]["secret"]["secretName"] == "mixprec-tls"
        mount = next(m for m in c["volumeMounts"] if m["name"] == "tls")
        args = dict(a.split("=", 1) for a in cli_args(c) if "=" in a)
        for flag in wanted:
            assert args[flag].startswith(mount["mountPath"] + "/"), (flag, args[flag])


def test_workers_take_client_tokens_from_a_secret_or_say_they_take_none(rendered):
    _, values, objects = rendered
    worker_pod = component(objects, "worker")["spec"]["template"]["spec"]
    args = build_parser().parse_args(cli_args(worker_pod["containers"][0]))
    secret = values.get("auth", {}).get("clientTokensSecret")
    if secret:
        assert args.client_tokens == "/etc/mixprec/client-tokens/tokens"
        (volume,) = [v for v in worker_pod["volumes"] if v["name"] == "client-tokens"]
        assert volume["secret"]["secretName"] == secret
    else:  # explicit, so that the worker does not refuse to start on the pod address
        assert args.inference_auth == "off" and args.client_tokens is None


def test_redis_url_comes_from_a_secret_only_when_enabled(rendered):
    _, values, objects = rendered
    env = {e["name"]: e for e in container(component(objects, "controlplane"))["env"]}
    if values.get("redis", {}).get("enabled"):
        assert env["MIXPREC_REDIS"]["valueFrom"]["secretKeyRef"]["name"] == "rel-mixprec-redis"
        (secret,) = [s for s in by_kind(objects, "Secret") if s["metadata"]["name"] == "rel-mixprec-redis"]
        assert secret["stringData"]["url"] == values["redis"]["url"]
    else:
        assert "MIXPREC_REDIS" not in env


def test_monitoring_objects_are_optional(rendered):
    name, values, objects = rendered
    wanted = bool(values.get("metrics"))
    assert bool(by_kind(objects, "ServiceMonitor")) == wanted, name
    assert bool(by_kind(objects, "PrometheusRule")) == wanted, name
    if wanted:
        (rule,) = by_kind(objects, "PrometheusRule")
        alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
        assert alerts == {"MixprecWorkerNack", "MixprecRolloutRolledBack", "MixprecWorkersDisconnected",
                          "MixprecGuardrailNearLimit"}
        (dashboard,) = [c for c in by_kind(objects, "ConfigMap") if c["metadata"]["labels"].get("grafana_dashboard")]
        (text,) = dashboard["data"].values()
        assert json.loads(text)["uid"] == "mixprec"


@pytest.mark.parametrize("values, message", [
    ({}, "database.url or database.existingSecret is required"),
    ({**BASE, "worker": {"kind": "Deployment"}}, 'worker.kind is "Deployment"'),
    ({**BASE, "redis": {"enabled": True}}, "redis.url or redis.existingSecret is required"),
])
def test_incomplete_values_are_refused_by_name(values, message):
    with pytest.raises(Exception, match=re.escape(message)):
        render(values)


def test_chart_readme_describes_every_value():
    table = (CHART / "README.md").read_text().split("## Values", 1)[1].split("\n## ", 1)[0]
    described = set(re.findall(r"^\| `([^`]+)` \|", table, re.M))

    def leaves(tree: dict, prefix: str = "") -> set[str]:
        out = set()
        for key, value in tree.items():
            path = f"{prefix}{key}"
            out |= leaves(value, path + ".") if isinstance(value, dict) and value else {path}
        return out

    values = leaves(yaml.safe_load((CHART / "values.yaml").read_text()))
    missing = sorted(v for v in values if v not in described and not any(v.startswith(d + ".") for d in described))
    assert not missing, f"helm/mixprec/README.md does not describe {missing}"
    unknown = sorted(d for d in described if d not in values and not any(v.startswith(d + ".") for v in values))
    assert not unknown, f"helm/mixprec/README.md describes values that do not exist: {unknown}"


def test_image_builds_from_paths_that_exist_and_agrees_with_the_chart():
    dockerfile = (ROOT / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in re.sub(r"\\\n", " ", dockerfile).splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
    copies = [rest.split() for op, rest in instructions if op == "COPY" and "--from=" not in rest]
    assert copies, "the Dockerfile copies the project"
    ignored = (ROOT / ".dockerignore").read_text().split()
    for *sources, _dest in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"
            assert f"!{source.rstrip('/')}/" in ignored or f"!{source}" in ignored, f".dockerignore drops {source}"
    stages = [rest for op, rest in instructions if op == "FROM"]
    assert len(stages) >= 2, "multi-stage build"
    entrypoint = json.loads(next(rest for op, rest in instructions if op == "ENTRYPOINT"))
    assert entrypoint == ["mixprec"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'mixprec = "mixprec.cli.main:main"' in pyproject
    user = next(rest for op, rest in instructions if op == "USER")
    uid = re.search(r"ARG UID=(\d+)", dockerfile).group(1)
    assert user.split(":")[0] in ("${UID}", uid) and int(uid) != 0
    assert "TORCH_VARIANT=cpu" in dockerfile, "CPU torch unless a CUDA variant is asked for"
    exposed = {int(p) for op, rest in instructions if op == "EXPOSE" for p in rest.split()}

    objects = render(merged(BASE, {"tls": {"enabled": True}, "controlPlane": {"dashboard": {"enabled": True}}}))
    ports = {p["containerPort"] for o in objects if o["kind"] in ("Deployment", "StatefulSet")
             for p in container(o)["ports"]}
    assert ports == exposed, f"the image exposes {sorted(exposed)}, the chart uses {sorted(ports)}"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(uid)
    assert yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"] == re.search(
        r'^version = "([^"]+)"', pyproject, re.M).group(1)
