"""Security of the rendered chart (docs/security.md): NATS users by Secret reference, TLS
Secrets mounted read-only, no secret material in any ConfigMap or plain env value, locked-down
pods of every kind (Deployments, Jobs, hooks, test pods), in every render variant."""

from __future__ import annotations

import re

import pytest
from helm_python import HelmRenderError

from libs.queue import auth, subjects
from tests.charts.chartlib import (
    COMPONENTS,
    SECURED,
    VARIANTS,
    load_values,
    render,
    render_variant,
)

pytest.importorskip("helm_python", reason="helm-python-sdk is in the dev extra")

#: Environment names whose value is a secret (the chart's _validate.tpl uses the same rule).
SECRET_NAME = re.compile(r"(^|_)(PASSWORD|PASSWD|SECRET|TOKEN|APIKEY|API_KEY|ACCESS_KEY|CREDENTIALS?)(_|$)")
TLS_DIR = "/etc/scalequest/tls/"


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def rendered(request):
    return render_variant(request.param)


@pytest.fixture(scope="module")
def secured():
    return render_variant("secured")


def env_of(ctr: dict) -> dict[str, dict]:
    return {e["name"]: e for e in ctr.get("env") or []}


def containers(m) -> list[dict]:
    return m.pod_template()["spec"]["containers"]


def is_hook(m) -> bool:
    return "helm.sh/hook" in (m.obj["metadata"].get("annotations") or {})


# ------------------------------------------------------------------------------ secrets


def test_no_secret_in_configmaps_or_plain_env(rendered):
    """ConfigMaps hold no secret-named setting; every secret-named variable of every container
    comes from a secretKeyRef; the chart renders no Secret."""
    assert not rendered.of_kind("Secret")
    for cm in rendered.of_kind("ConfigMap"):
        leaked = [k for k in cm.obj.get("data") or {} if SECRET_NAME.search(k)]
        assert not leaked, f"ConfigMap {cm.name}: {leaked}"
    checked = 0
    for m in rendered.pods():
        for ctr in containers(m):
            for name, e in env_of(ctr).items():
                if SECRET_NAME.search(name):
                    checked += 1
                    assert "value" not in e and "secretKeyRef" in e["valueFrom"], f"{m.name}: {name} is inlined"
    assert checked, "no secret-named variable at all: the check above would be vacuous"


def test_nats_users_by_secret_reference(secured):
    """natsAuth: each service logs in as its own user with the password from its own key of
    the Secret; bootstrap and the helm test as admin; training as the read-only trainer. The
    users are those of libs/queue/auth.py, and each service's user consumes its own queue."""
    secret = SECURED["natsAuth"]["existingSecret"]
    table = auth.access_table()
    for c in COMPONENTS:
        (ctr,) = containers(secured.one("Deployment", c))
        env = env_of(ctr)
        assert env["SQ_NATS_USER"]["value"] == c
        assert env["SQ_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": c}
        assert table[c].consumes == (subjects.BY_CONSUMER[c],)
        data = secured.configmap_data(c)
        assert "SQ_NATS_USER" not in data and "SQ_NATS_PASSWORD" not in data
        assert data.get("SQ_NATS_TOPOLOGY", "auto") == "auto"  # -> verify only, as a restricted user

    def login(m) -> tuple[str, dict]:
        env = env_of(containers(m)[0])
        return env["SQ_NATS_USER"]["value"], env["SQ_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]

    assert login(secured.one("Job", "bootstrap")) == (auth.ADMIN_USER, {"name": secret, "key": auth.ADMIN_USER})
    (nats_test,) = [m for m in secured.of_kind("Pod") if m.name.endswith("-test-nats")]
    assert login(nats_test) == (auth.ADMIN_USER, {"name": secret, "key": auth.ADMIN_USER})
    trainers = [m for m in secured.of_kind("Job") if (m.component or "").startswith("train-")]
    assert trainers and all(login(m) == (auth.TRAINER_USER, {"name": secret, "key": auth.TRAINER_USER})
                            for m in trainers)
    # without natsAuth nothing logs in
    for m in render().pods():
        assert "SQ_NATS_PASSWORD" not in env_of(containers(m)[0]), m.name


def test_bootstrap_is_an_ordinary_job_with_nats_auth(secured):
    """Restricted services wait for the topology; a post-install hook would wait for them
    (helm --wait): with natsAuth the bootstrap is a plain Job named after its spec."""
    from scalequest_cli.main import build_parser

    job = secured.one("Job", "bootstrap")
    assert not is_hook(job)
    assert re.fullmatch(r"sq-scalequest-bootstrap-[0-9a-f]{8}", job.name)
    args = build_parser().parse_args(containers(job)[0]["args"])
    assert args.cmd == "bootstrap"
    other = render(load_values(overrides={**SECURED, "queue": {"maxDeliver": 7}}))
    assert other.one("Job", "bootstrap").name != job.name
    assert is_hook(render().one("Job", "bootstrap"))


# ------------------------------------------------------------------------------ TLS


def test_tls_secrets_mounted_read_only_where_used(secured):
    grpc_secret, nats_secret = SECURED["tls"]["grpc"]["existingSecret"], SECURED["tls"]["nats"]["existingSecret"]
    for m in secured.pods():
        spec = m.pod_template()["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for ctr in spec["containers"]:
            mounts = {vm["mountPath"]: vm for vm in ctr.get("volumeMounts") or []}
            for path, vm in mounts.items():
                if path.startswith(TLS_DIR):
                    assert vm.get("readOnly") is True, f"{m.name}: {path} is writable"
                    secret = volumes[vm["name"]]["secret"]
                    assert secret["secretName"] == (grpc_secret if path.endswith("/grpc") else nats_secret)
                    assert secret["defaultMode"] == 0o440
            # every TLS path a setting names lies in one of those mounts
            settings = dict(env_of(ctr))
            if m.kind == "Deployment":
                settings.update({k: {"value": v} for k, v in secured.configmap_data(m.component).items()})
            paths = [e["value"] for k, e in settings.items() if "TLS" in k and "value" in e and e["value"].startswith("/")]
            for p in paths:
                assert any(p.startswith(d + "/") for d in mounts), f"{m.name}: {p} not mounted"
            wants = {d.rsplit("/", 1)[1] for d in mounts if d.startswith(TLS_DIR)}
            if m.kind == "Deployment":
                assert wants == {"grpc", "nats"}, m.name
            elif m.name.endswith("-test-health"):
                assert wants == {"grpc"}, m.name
            else:  # bootstrap, training, NATS test: NATS only
                assert wants == {"nats"}, m.name
    for c in COMPONENTS:
        data = secured.configmap_data(c)
        assert data["SQ_GRPC_TLS_CERT"] == TLS_DIR + "grpc/tls.crt" and data["SQ_GRPC_TLS_CLIENT_CA"] == TLS_DIR + "grpc/ca.crt"
        assert data["SQ_NATS_TLS_CA"] == TLS_DIR + "nats/ca.crt" and data["SQ_NATS_TLS_KEY"] == TLS_DIR + "nats/tls.key"
        assert data["SQ_GRPC_HEALTH_PORT"] == str(SECURED["tls"]["grpc"].get("healthPort", 8086))
    # off by default: no TLS anywhere
    for m in render().pods():
        assert not [vm for ctr in containers(m) for vm in ctr.get("volumeMounts") or []
                    if vm["mountPath"].startswith(TLS_DIR)], m.name


# ------------------------------------------------------------------------------ pods, policies


def test_every_pod_kind_is_locked_down(rendered):
    """The pod and container security contexts hold for every workload the chart renders,
    hooks and test pods included (and those are really there to check)."""
    kinds = set()
    for m in rendered.pods():
        kinds.add("hook" if is_hook(m) else m.kind)
        spec = m.pod_template()["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, m.name
        assert spec.get("hostNetwork") is not True and spec.get("hostPID") is not True, m.name
        for ctr in spec["containers"] + (spec.get("initContainers") or []):
            sc = ctr["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True, f"{m.name}/{ctr['name']}"
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}, m.name
            assert not sc.get("privileged"), m.name
    assert {"Deployment", "hook"} <= kinds, kinds  # services and the helm-test pods (hooks)
    assert any(m.kind == "Job" for m in rendered.pods())  # the bootstrap (a hook, or not with natsAuth)


def test_network_policies_cover_every_service(rendered):
    policies = rendered.of_kind("NetworkPolicy")
    assert policies
    from tests.charts.chartlib import label_selector_matches

    for c in COMPONENTS:
        labels = rendered.one("Deployment", c).pod_template()["metadata"]["labels"]
        selecting = [p for p in policies if label_selector_matches(p.obj["spec"]["podSelector"], labels)]
        assert len(selecting) == 1, c
        (policy,) = selecting
        assert policy.obj["spec"]["policyTypes"] == ["Ingress"]
        # every rule names its ports: nothing is open to all ports
        assert all(rule.get("ports") for rule in policy.obj["spec"]["ingress"]), c


# ------------------------------------------------------------------------------ mistakes


@pytest.mark.parametrize(("values", "expected"), [
    ({"common": {"config": {"SQ_NATS_PASSWORD": "hunter2"}}}, "natsAuth.existingSecret"),
    ({"solver": {"config": {"SQ_OPENAI_API_KEY": "sk-123"}}}, "solver.secretEnv.SQ_OPENAI_API_KEY"),
    ({"common": {"config": {"SQ_HF_TOKEN": "hf_x"}}}, "common.secretEnv.SQ_HF_TOKEN"),
    ({"natsAuth": {"enabled": True}}, "natsAuth.existingSecret"),
    ({"natsAuth": {"enabled": True, "existingSecret": "u"}}, "nats.config.merge.authorization"),
    ({"tls": {"grpc": {"enabled": True}}}, "tls.grpc.existingSecret"),
    ({"tls": {"nats": {"enabled": True}}}, "tls.nats.existingSecret"),
    ({"tls": {"grpc": {"enabled": True, "existingSecret": "t", "healthPort": 9090}}}, "healthPort=9090"),
    ({"questiongen": {"config": {"SQ_GRPC_TLS_CERT": "/x"}}}, "tls.grpc"),
])
def test_security_mistakes_fail_readably(values, expected):
    with pytest.raises(HelmRenderError) as e:
        render(values)
    assert expected in str(e.value)


def test_secret_like_names_that_are_not_secrets_still_render():
    r = render({"questiongen": {"config": {"SQ_GEN_MAX_TOKENS": 256}}})
    assert r.configmap_data("questiongen")["SQ_GEN_MAX_TOKENS"] == "256"
