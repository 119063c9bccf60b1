"""What the rendered chart does, checked against the code it deploys: settings classes,
gRPC service names, default ports, NATS topology and the CLI's own argument parser are read
at test time, so a change on either side that breaks the other fails here."""

from __future__ import annotations

import os
import re

import pytest

from libs.queue import subjects
from libs.settings import CommonSettings, env_name, load_settings
from services.registry import service_module
from tests.charts.chartlib import (
    COMPONENTS,
    REPO,
    TRAINING_JOBS,
    VARIANTS,
    Manifest,
    label_selector_matches,
    load_values,
    render,
    render_variant,
)

pytest.importorskip("helm_python", reason="helm-python-sdk is in the dev extra")

GPU = "nvidia.com/gpu"

#: Environment read outside the settings classes, by libs code (object store, engines,
#: model cache). The chart may set these as plain env; each must really be read somewhere.
PROCESS_ENV = {"SQ_S3_ENDPOINT", "SQ_S3_REGION", "SQ_S3_SECURE", "SQ_S3_ACCESS_KEY", "SQ_S3_SECRET_KEY",
               "SQ_MODEL_CACHE", "SQ_OPENAI_API_KEY", "SQ_NATS_REPLICAS"}


def settings_class(component: str):
    return service_module(component).Settings


def settings_env_names(cls) -> set[str]:
    return {env_name(cls, f) for f in cls.model_fields}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def rendered(request):
    return render_variant(request.param)


def containers(m: Manifest) -> list[dict]:
    return m.pod_template()["spec"]["containers"]


def pod_spec(m: Manifest) -> dict:
    return m.pod_template()["spec"]


def component_values(r, component: str) -> dict:
    import yaml

    from tests.charts.chartlib import CHART

    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    from tests.charts.chartlib import deep_merge

    return deep_merge(defaults, r.values)[component]


# --------------------------------------------------------------------------- config drift


def test_configmap_keys_are_fields_of_the_settings_class(rendered):
    """Every environment name in a service's ConfigMap is a field of that service's settings
    class (read now, so fields other engineers add or remove are seen)."""
    for c in COMPONENTS:
        cls = settings_class(c)
        unknown = set(rendered.configmap_data(c)) - settings_env_names(cls)
        assert not unknown, f"{c}: {sorted(unknown)} are not fields of {cls.__name__}"


def test_configmaps_are_valid_configurations(rendered, monkeypatch):
    """The ConfigMap, as the pod's environment, passes the service's own settings validation."""
    for c in COMPONENTS:
        cls = settings_class(c)
        for k in list(os.environ):
            if k.startswith("SQ_"):
                monkeypatch.delenv(k)
        for k, v in rendered.configmap_data(c).items():
            monkeypatch.setenv(k, v)
        s = load_settings(cls)
        assert s.grpc_port == component_values(rendered, c)["ports"]["grpc"]


def test_plain_env_is_known_to_the_code(rendered):
    """SQ_* variables set directly on containers (not through the ConfigMap) are either settings
    fields or names the libs read from the environment themselves."""
    libs_source = "\n".join(p.read_text() for p in (REPO / "libs").rglob("*.py"))
    for name in PROCESS_ENV - {"SQ_NATS_REPLICAS"}:
        assert name in libs_source, f"{name} is no longer read by libs/; drop it from PROCESS_ENV and the chart"
    for m in rendered.pods():
        if m.component == "test" or (m.component or "").startswith("train-"):
            continue
        cls = settings_class(m.component) if m.component in COMPONENTS else CommonSettings
        for ctr in containers(m):
            for e in ctr.get("env") or []:
                if e["name"].startswith("SQ_"):
                    assert e["name"] in settings_env_names(cls) | PROCESS_ENV, f"{m.kind}/{m.name}: {e['name']}"


def test_default_ports_match_settings_defaults():
    r = render()
    for c in COMPONENTS:
        default = settings_class(c).model_fields["grpc_port"].default
        assert r.configmap_data(c)["SQ_GRPC_PORT"] == str(default), c


def test_numbers_render_as_settings_read_them():
    r = render({"coordinator": {"config": {"SQ_RUN_TARGET": 1000000, "SQ_RUN_SOLUTION_TOP_P": 0.95,
                                           "SQ_RUN_JUDGE_ENABLED": False}}})
    data = r.configmap_data("coordinator")
    assert data["SQ_RUN_TARGET"] == "1000000"  # not 1e+06
    assert data["SQ_RUN_SOLUTION_TOP_P"] == "0.95"
    assert data["SQ_RUN_JUDGE_ENABLED"] == "false"


def test_commands_parse_with_the_cli():
    """Deployment and bootstrap Job arguments are accepted by the real `scalequest` parser."""
    from scalequest_cli.main import build_parser

    r = render()
    for c in COMPONENTS:
        ctr = containers(r.one("Deployment", c))[0]
        assert ctr["command"] == ["scalequest"]
        args = build_parser().parse_args(ctr["args"])
        assert (args.cmd, args.service) == ("serve", c)
    job = r.one("Job", "bootstrap")
    ctr = containers(job)[0]
    args = build_parser().parse_args(ctr["args"])
    assert args.cmd == "bootstrap" and args.replicas == 1 and args.check_store
    assert job.obj["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"


def test_config_change_rolls_only_that_service():
    base = render()
    changed = render({"solver": {"config": {"SQ_SOLVE_N": 7}}})

    def checksum(r, c):
        return r.one("Deployment", c).pod_template()["metadata"]["annotations"]["checksum/config"]

    assert checksum(base, "solver") != checksum(changed, "solver")
    for c in set(COMPONENTS) - {"solver"}:
        assert checksum(base, c) == checksum(changed, c)


# --------------------------------------------------------------------------- GPUs


def _gpus(ctr: dict) -> int:
    return int(((ctr.get("resources") or {}).get("limits") or {}).get(GPU, 0))


def test_gpu_only_where_asked(rendered):
    for c in COMPONENTS:
        m = rendered.one("Deployment", c)
        spec, ctr = pod_spec(m), containers(m)[0]
        asked = component_values(rendered, c)["gpu"]["count"]
        assert _gpus(ctr) == asked, f"{c}: GPU limit {_gpus(ctr)} != {asked}"
        assert GPU not in ((ctr.get("resources") or {}).get("requests") or {})
        gpu_toleration = any(t.get("key") == GPU for t in spec.get("tolerations") or [])
        mounts = {vm["mountPath"] for vm in ctr["volumeMounts"]}
        if asked:
            assert spec["runtimeClassName"] == "nvidia" and gpu_toleration, c
            shm = next(v for v in spec["volumes"] if v["name"] == "shm")
            assert shm["emptyDir"]["medium"] == "Memory" and "/dev/shm" in mounts
        else:
            assert "runtimeClassName" not in spec and not gpu_toleration, c
    # pods that are not stage services never ask for a GPU unless they are training jobs
    for m in rendered.pods():
        if not (m.component or "").startswith("train-") and m.component not in COMPONENTS:
            assert all(_gpus(ctr) == 0 for ctr in containers(m)), f"{m.kind}/{m.name}"


def test_gpu_defaults_exactly_on_the_model_stages():
    r = render()
    assert {c for c in COMPONENTS if _gpus(containers(r.one("Deployment", c))[0])} == {"questiongen", "solver", "reward"}
    cpu = render_variant("cpu-only")
    assert not any(_gpus(containers(m)[0]) for m in cpu.of_kind("Deployment"))


# --------------------------------------------------------------------------- probes, security


def test_probes_are_native_grpc_on_the_standard_health_service(rendered):
    for c in COMPONENTS:
        service = importlib_servicer_name(c)
        ctr = containers(rendered.one("Deployment", c))[0]
        grpc_port = next(p["containerPort"] for p in ctr["ports"] if p["name"] == "grpc")
        # with gRPC TLS the probes (plaintext only) ask the health-only port SQ_GRPC_HEALTH_PORT
        health = rendered.configmap_data(c).get("SQ_GRPC_HEALTH_PORT")
        probe_port = int(health) if health else grpc_port
        if health:
            assert {"name": "health", "containerPort": probe_port, "protocol": "TCP"} in ctr["ports"]
            assert rendered.configmap_data(c)["SQ_GRPC_TLS_CERT"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            p = ctr[probe]
            assert set(p) & {"exec", "httpGet", "tcpSocket"} == set(), f"{c} {probe} is not gRPC"
            assert p["grpc"]["port"] == probe_port
        assert ctr["readinessProbe"]["grpc"]["service"] == service
        assert ctr["startupProbe"]["grpc"]["service"] == service
        assert ctr["livenessProbe"]["grpc"]["service"] == ""


def importlib_servicer_name(component: str) -> str:
    import importlib

    return importlib.import_module(f"services.{component}.servicer").SERVICE_NAME


def test_every_pod_is_locked_down(rendered):
    for m in rendered.pods():
        spec = pod_spec(m)
        assert spec["securityContext"]["runAsNonRoot"] is True, m.name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec.get("automountServiceAccountToken") is False
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for ctr in containers(m):
            sc = ctr["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, m.name
            assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
            tmp = next(vm for vm in ctr["volumeMounts"] if vm["mountPath"] == "/tmp")
            assert "emptyDir" in volumes[tmp["name"]]


# --------------------------------------------------------------------------- autoscaling


def test_keda_scales_on_the_stage_consumer():
    r = render_variant("gpu-keda")
    scaled = {m.component: m.obj for m in r.of_kind("ScaledObject")}
    assert set(scaled) == {"questiongen", "filter", "solver", "reward"}
    for c, so in scaled.items():
        q = subjects.BY_CONSUMER[c]
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "nats-jetstream"
        assert (trigger["metadata"]["stream"], trigger["metadata"]["consumer"]) == (q.stream, q.consumer)
        assert trigger["metadata"]["natsServerMonitoringEndpoint"] == "sq-nats-headless.scalequest.svc.cluster.local:8222"
        assert so["spec"]["scaleTargetRef"]["name"] == r.one("Deployment", c).name
        # KEDA owns the replica count
        assert "replicas" not in r.one("Deployment", c).obj["spec"]
    assert scaled["solver"]["spec"]["minReplicaCount"] == 0
    assert not r.of_kind("HorizontalPodAutoscaler")


def test_hpa_variant():
    r = render_variant("cpu-only")
    hpas = {m.component: m.obj for m in r.of_kind("HorizontalPodAutoscaler")}
    assert set(hpas) == {"questiongen", "filter", "solver", "reward"}
    assert all("replicas" not in r.one("Deployment", c).obj["spec"] for c in hpas)
    assert r.one("Deployment", "coordinator").obj["spec"]["replicas"] == 1


def test_pdbs_select_their_component(rendered):
    for m in rendered.of_kind("PodDisruptionBudget"):
        dep = rendered.one("Deployment", m.component)
        assert label_selector_matches(m.obj["spec"]["selector"], dep.pod_template()["metadata"]["labels"])


# --------------------------------------------------------------------------- network policies


def test_network_policies_select_the_right_pods(rendered):
    deployments = {c: rendered.one("Deployment", c) for c in COMPONENTS}
    pipeline_pods = rendered.pods()
    for c, dep in deployments.items():
        np = rendered.one("NetworkPolicy", c).obj["spec"]
        # selects its own component's pods and no other workload of the chart
        selected = [m.name for m in pipeline_pods if label_selector_matches(np["podSelector"], m.pod_template()["metadata"]["labels"])]
        assert selected == [dep.name], f"{c}: policy selects {selected}"
        grpc_rule, *metrics_rule = np["ingress"]
        assert grpc_rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]
        assert any(p["name"] == "grpc" for p in containers(dep)[0]["ports"])
        peers = [p["podSelector"] for p in grpc_rule["from"] if set(p) == {"podSelector"}]
        # every pod of the pipeline (services, bootstrap, tests, training) is an allowed client
        for m in pipeline_pods:
            labels = m.pod_template()["metadata"]["labels"]
            assert any(label_selector_matches(sel, labels) for sel in peers), f"{m.name} cannot reach {c}"
        # a pod of another release is not
        assert not any(label_selector_matches(sel, {"app.kubernetes.io/instance": "other",
                                                   "app.kubernetes.io/part-of": "scalequest"}) for sel in peers)
        if metrics_rule:
            (rule,) = metrics_rule
            assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
            assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]


def test_bundled_nats_is_reachable_only_from_the_pipeline():
    r = render()
    nats = r.named("NetworkPolicy", "sq-scalequest-nats").obj["spec"]
    nats_pod = {"app.kubernetes.io/name": "nats", "app.kubernetes.io/instance": "sq", "app.kubernetes.io/component": "nats"}
    assert label_selector_matches(nats["podSelector"], nats_pod)
    for m in r.pods():
        assert not label_selector_matches(nats["podSelector"], m.pod_template()["metadata"]["labels"])
    client = next(rule for rule in nats["ingress"] if rule["ports"][0]["port"] == 4222)
    for m in r.pods():
        labels = m.pod_template()["metadata"]["labels"]
        assert any(label_selector_matches(p["podSelector"], labels) for p in client["from"]), m.name
    monitor = next(rule for rule in nats["ingress"] if rule["ports"][0]["port"] == 8222)
    namespaces = {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in monitor["from"]}
    assert namespaces == {"keda", "monitoring"}
    # external NATS: no policy for pods the chart does not own
    assert not [m for m in render_variant("external-nats-s3").of_kind("NetworkPolicy") if m.name.endswith("-nats")]


def test_extra_grpc_peers_and_metrics_namespace_are_configurable():
    r = render({"networkPolicy": {"metricsNamespace": "observability",
                                  "grpcIngressFrom": [{"namespaceSelector": {"matchLabels": {"team": "ml"}}}]}})
    np = r.one("NetworkPolicy", "coordinator").obj["spec"]
    assert {"namespaceSelector": {"matchLabels": {"team": "ml"}}} in np["ingress"][0]["from"]
    assert np["ingress"][1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == "observability"
    assert not render({"networkPolicy": {"enabled": False}}).of_kind("NetworkPolicy")


def test_service_monitor_off_by_default():
    assert not render().of_kind("ServiceMonitor")
    r = render_variant("everything")
    (sm,) = r.of_kind("ServiceMonitor")
    assert sm.labels["release"] == "kube-prometheus"
    for c in COMPONENTS:
        svc = r.one("Service", c)
        assert label_selector_matches(sm.obj["spec"]["selector"], svc.labels)
        assert any(p["name"] == "metrics" for p in svc.obj["spec"]["ports"])


# --------------------------------------------------------------------------- stores and NATS


def test_external_nats_and_s3_by_reference():
    r = render_variant("external-nats-s3")
    for c in COMPONENTS:
        data = r.configmap_data(c)
        assert data["SQ_NATS_URL"] == "nats://nats.messaging.svc.cluster.local:4222"
        assert data["SQ_STORE_URL"] == "s3://synth-data/scalequest"
        env = {e["name"]: e for e in containers(r.one("Deployment", c))[0]["env"]}
        assert env["SQ_S3_ENDPOINT"]["value"] == "https://s3.eu-west-1.amazonaws.com"
        assert env["SQ_S3_REGION"]["value"] == "eu-west-1"
        for var, key in (("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"), ("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")):
            assert env[var]["valueFrom"]["secretKeyRef"] == {"name": "s3-creds", "key": key}
    # no secret material anywhere in the rendered output
    for m in r.manifests:
        assert m.kind != "Secret"


def test_bundled_minio_credentials_by_reference():
    r = render()
    env = {e["name"]: e for e in containers(r.one("Deployment", "coordinator"))[0]["env"]}
    assert env["SQ_S3_ENDPOINT"]["value"] == "http://sq-minio.scalequest.svc.cluster.local:9000"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "sq-minio", "key": "rootUser"}
    assert r.configmap_data("solver")["SQ_NATS_URL"] == "nats://sq-nats.scalequest.svc.cluster.local:4222"


def test_secret_env_by_reference():
    r = render({"common": {"secretEnv": {"HF_TOKEN": {"name": "hf", "key": "token"}}},
                "reward": {"secretEnv": {"SQ_OPENAI_API_KEY": {"name": "openai", "key": "api-key"}}}})
    env = {e["name"]: e for e in containers(r.one("Deployment", "reward"))[0]["env"]}
    assert env["SQ_OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "openai", "key": "api-key"}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
    assert "SQ_OPENAI_API_KEY" not in {e["name"] for e in containers(r.one("Deployment", "solver"))[0]["env"]}


def test_directory_store_mounts_the_claim_on_the_coordinator():
    r = render({"objectStore": {"url": "/data/shards", "existingClaim": "shards"}})
    spec = pod_spec(r.one("Deployment", "coordinator"))
    assert {"name": "store", "persistentVolumeClaim": {"claimName": "shards"}} in spec["volumes"]
    assert {"name": "store", "mountPath": "/data/shards"} in spec["containers"][0]["volumeMounts"]
    assert "SQ_S3_ENDPOINT" not in {e["name"] for e in spec["containers"][0].get("env") or []}


# --------------------------------------------------------------------------- training jobs


def test_training_jobs():
    assert not [m for m in render().of_kind("Job") if m.component != "bootstrap"]
    r = render_variant("training")
    jobs = {m.labels["scalequest.io/training-job"]: m for m in r.of_kind("Job") if m.component != "bootstrap"}
    assert set(jobs) == set(TRAINING_JOBS)
    for name, job in jobs.items():
        spec = job.obj["spec"]
        assert spec["backoffLimit"] == 2 and spec["activeDeadlineSeconds"] == 86400
        assert spec["ttlSecondsAfterFinished"] == 604800
        ps = pod_spec(job)
        ctr = ps["containers"][0]
        assert ps["restartPolicy"] == "Never" and ps["runtimeClassName"] == "nvidia"
        assert _gpus(ctr) == (2 if name == "sft" else 1)
        env = {e["name"]: e.get("value") for e in ctr["env"]}
        io = {k: v for k, v in env.items() if k.startswith(("SQ_TRAIN_INPUT_", "SQ_TRAIN_OUTPUT_"))}
        assert io and all(v.startswith("s3://") for v in io.values())
        # every $(VAR) in the arguments is defined in the container's environment
        for ref in re.findall(r"\$\(([A-Z0-9_]+)\)", " ".join(ctr["args"])):
            assert ref in env, f"{name}: $({ref}) is not defined"
        assert ctr["command"][:2] == ["scalequest", "train"]
        assert job.name.startswith(f"sq-scalequest-train-{name}-")
        assert env["SQ_STORE_URL"] == "s3://scalequest/data" and env["SQ_NATS_URL"].startswith("nats://")
        assert ctr["workingDir"] == "/work" and {"name": "scratch", "mountPath": "/work"} in ctr["volumeMounts"]
        # the arguments, expanded as the kubelet would, are accepted by the trainer CLI (if present)
        parser = _cli_parser()
        if parser is not None:
            argv = [re.sub(r"\$\(([A-Z0-9_]+)\)", lambda m, env=env: env[m.group(1)], a) for a in ctr["command"][1:] + ctr["args"]]
            args = parser.parse_args(argv)
            assert args.kind == name


def _cli_parser():
    """The `scalequest` parser when it has the `train` command (issue 5), else None."""
    from scalequest_cli.main import build_parser

    parser = build_parser()
    sub = next((a for a in parser._actions if a.dest == "cmd"), None)  # argparse has no public accessor
    return parser if sub is not None and "train" in sub.choices else None


def test_training_job_name_follows_its_spec():
    a = render_variant("training")
    b = render(load_values(overrides={"training": {"enabled": True, "jobs": {
        "qft": {"enabled": True, "args": ["--epochs", "3"]}, "qpo": {"enabled": True}, "sft": {"enabled": True}}}}))

    def names(r):
        return {m.labels["scalequest.io/training-job"]: m.name for m in r.of_kind("Job") if m.component != "bootstrap"}

    assert names(a)["qft"] != names(b)["qft"] and names(a)["sft"] == names(b)["sft"]


def test_custom_training_job_from_values():
    r = render({"training": {"enabled": True, "jobs": {"eval": {
        "enabled": True, "command": ["python", "-m", "eval"], "gpuCount": 0,
        "inputs": {"model": "s3://models/x"}, "env": {"EPOCHS": 3}}}}})
    (job,) = [m for m in r.of_kind("Job") if m.component == "train-eval"]
    ps = pod_spec(job)
    assert "runtimeClassName" not in ps and _gpus(ps["containers"][0]) == 0
    env = {e["name"]: e.get("value") for e in ps["containers"][0]["env"]}
    assert env["SQ_TRAIN_INPUT_MODEL"] == "s3://models/x" and env["EPOCHS"] == "3"


# --------------------------------------------------------------------------- helm test hooks


def test_helm_test_hooks(rendered):
    tests = [m for m in rendered.of_kind("Pod") if m.obj["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    health = {m.name: m for m in tests if m.name.endswith("-test-health")}
    values_of = {c: component_values(rendered, c) for c in COMPONENTS}
    expected = {c for c, v in values_of.items()
                if v["enabled"] and not (v["autoscaling"]["keda"]["enabled"] and v["autoscaling"]["keda"]["minReplicas"] == 0)}
    assert len(health) == len(expected)
    for c in expected:
        pod = health[f"sq-scalequest-{c}-test-health"]
        ctr = containers(pod)[0]
        assert ctr["command"] == ["python", "-c"]
        compile(ctr["args"][0], "grpc_health.py", "exec")
        target, service = ctr["args"][1:]
        dep = containers(rendered.one("Deployment", c))[0]
        assert service == dep["readinessProbe"]["grpc"]["service"]
        svc = rendered.one("Service", c)
        assert target == f"{svc.name}:{svc.obj['spec']['ports'][0]['port']}"
    (nats,) = [m for m in tests if m.name.endswith("-test-nats")]
    compile(containers(nats)[0]["args"][0], "nats_roundtrip.py", "exec")
    security = component_values(rendered, "natsAuth") if "natsAuth" in rendered.values else {}
    tls = (rendered.values.get("tls") or {})
    expected_env = {"SQ_NATS_URL"}
    if security.get("enabled"):  # the round trip creates a scratch stream: the admin user
        expected_env |= {"SQ_NATS_USER", "SQ_NATS_PASSWORD"}
    if (tls.get("nats") or {}).get("enabled"):
        expected_env |= {"SQ_NATS_TLS_CA", "SQ_NATS_TLS_CERT", "SQ_NATS_TLS_KEY"}
    env = {e["name"]: e for e in containers(nats)[0]["env"]}
    assert set(env) == expected_env
    if security.get("enabled"):
        assert env["SQ_NATS_USER"]["value"] == "admin"
        assert env["SQ_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": security["existingSecret"], "key": "admin"}
    for pod in health.values():  # with gRPC TLS the health check dials the Service with TLS
        names = {e["name"] for e in containers(pod)[0].get("env") or []}
        assert ("SQ_GRPC_TLS_CA" in names) == bool((tls.get("grpc") or {}).get("enabled")), pod.name


def test_readme_documents_every_value():
    """The chart README's values table is generated from values.yaml (and up to date); every
    value in it has a description, and no value of values.yaml is left out of it."""
    import importlib.util
    import subprocess
    import sys

    import yaml

    from tests.charts.chartlib import CHART

    script = REPO / "scripts" / "chart_values_table.py"
    check = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    spec = importlib.util.spec_from_file_location("chart_values_table", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = (CHART / "values.yaml").read_text()
    rows = mod.rows(text)
    assert [k for k, _, desc in rows if not desc] == [], "values without a description"
    documented = {k for k, _, _ in rows}

    def covered(path: str) -> bool:
        parts = path.split(".")
        return any(".".join(parts[:i]) in documented for i in range(1, len(parts) + 1))

    def leaves(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict) and v:
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    missing = [k for k in leaves(yaml.safe_load(text)) if not covered(k)]
    assert not missing, f"values missing from the README table: {missing}"


FREE_FORM = {"resources", "podSecurityContext", "securityContext", "tolerations", "inputs", "outputs", "buckets"}


def test_every_value_has_a_comment():
    """values.yaml: every value has a comment line directly above it. Sections (keys whose
    children follow) and the contents of free-form Kubernetes objects (resources, security
    contexts, tolerations, ...) are exempt: their key carries the comment."""
    from tests.charts.chartlib import CHART

    lines = (CHART / "values.yaml").read_text().splitlines()
    missing, parents = [], []  # parents: [(indent, key)]
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w.-]*):(.*)$", line)
        if not m:
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3)
        while parents and parents[-1][0] >= indent:
            parents.pop()
        free = any(k in FREE_FORM for _, k in parents)
        nxt = next((ln for ln in lines[i + 1:] if ln.strip()), "")
        is_section = rest.strip() == "" and len(nxt) - len(nxt.lstrip()) > indent
        parents.append((indent, key))
        if free or is_section:
            continue
        if not lines[i - 1].strip().startswith("#"):
            missing.append(f"{i + 1}: {line.strip()}")
    assert not missing, "values without a comment:\n" + "\n".join(missing)
