"""The Helm chart, checked as far as a machine without a cluster allows: lint, render, validate
against Kubernetes schemas, and assert what every rendered object must hold."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tlsstorm.sender.allowlist import Target

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "tlsstorm"
HELM = ROOT / ".tools" / "bin" / "helm"
VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
KUBERNETES_VERSIONS = ("1.30.0", "1.33.0")
RELEASE = "storm"
# Rendered output: toYaml's list style and long generated lines are not ours to restyle.
RENDERED_YAMLLINT = ("{extends: relaxed, rules: {line-length: disable, "
                     "indentation: {indent-sequences: whatever}}}")

pytestmark = pytest.mark.skipif(
    not HELM.exists() and os.environ.get("CI") != "true",
    reason="helm is not in .tools/bin: run `make tools`")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    home = ROOT / ".tools" / "helm-home"
    env = {**os.environ, "KUBECONFIG": "/dev/null", "HELM_CACHE_HOME": str(home / "cache"),
           "HELM_CONFIG_HOME": str(home / "config"), "HELM_DATA_HOME": str(home / "data")}
    finished = subprocess.run([str(HELM), *args], env=env, capture_output=True, text=True,
                              timeout=120)
    if check:
        assert finished.returncode == 0, finished.stdout + finished.stderr
    return finished


def render(*args: str) -> list[dict]:
    output = helm("template", RELEASE, str(CHART), "--namespace", "tlsstorm", *args).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


@pytest.fixture(scope="module", params=VALUES, ids=[path.stem for path in VALUES])
def values_file(request) -> Path:
    return request.param


@pytest.fixture(scope="module")
def objects(values_file) -> list[dict]:
    return render("-f", str(values_file))


def _by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def _env(deployment: dict) -> dict[str, object]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def _pods(objects: list[dict]):
    for obj in objects:
        if obj["kind"] == "Deployment":
            yield obj["metadata"]["name"], obj["spec"]["template"]["spec"], True
        elif obj["kind"] == "Pod":
            yield obj["metadata"]["name"], obj["spec"], False


def test_helm_lint_strict(values_file):
    result = helm("lint", "--strict", str(CHART), "-f", str(values_file))

    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rendered_objects_validate_against_kubernetes(values_file, version, tmp_path):
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(helm("template", RELEASE, str(CHART), "-f", str(values_file)).stdout)

    finished = subprocess.run(
        [shutil.which("kubernetes-validate") or str(ROOT / ".venv/bin/kubernetes-validate"),
         "--strict", "-k", version, str(rendered)], capture_output=True, text=True, timeout=120)

    output = finished.stdout + finished.stderr
    assert finished.returncode == 0, output
    # It exits 0 on kinds or versions it does not know, with a WARN line: that is a failure too.
    assert "WARN" not in output and "ERROR" not in output, output
    assert output.count("passed for resource") >= 5


def test_every_pod_is_non_root_read_only_and_probed(objects):
    for name, pod, long_running in _pods(objects):
        if name.endswith("-postfix"):
            continue  # its master is root: test_postfix_runs_as_root_in_its_own_namespace_...
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert container["resources"]["limits"]["cpu"], name
            assert container["resources"]["requests"]["memory"], name
            if long_running:
                assert container["livenessProbe"] and container["readinessProbe"], name
                assert container["imagePullPolicy"] == "IfNotPresent", name


def test_probes_of_services_ask_healthz_and_readyz(objects):
    for name, deployment in _by_kind(objects, "Deployment").items():
        if name.endswith(("-receiver", "-sender", "-collector")):
            container = deployment["spec"]["template"]["spec"]["containers"][0]
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_service_ports_match_container_ports(objects):
    deployments = _by_kind(objects, "Deployment").values()
    for name, service in _by_kind(objects, "Service").items():
        selector = service["spec"]["selector"]
        (deployment,) = [d for d in deployments
                         if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        container_ports = {port["name"]: port["containerPort"] for container in
                           deployment["spec"]["template"]["spec"]["containers"]
                           for port in container.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert container_ports.get(port["targetPort"]) == port["port"], (name, port)


def test_spans_flow_services_to_collector_to_jaeger(objects, values_file):
    deployments = _by_kind(objects, "Deployment")
    collector_url = f"http://{RELEASE}-tlsstorm-collector:8027"
    for name, deployment in deployments.items():
        if name.endswith(("-receiver", "-sender", "-locust-master", "-locust-worker")):
            assert _env(deployment)["OTEL_EXPORTER_OTLP_ENDPOINT"] == collector_url, name
    forward = _env(deployments[f"{RELEASE}-tlsstorm-collector"]).get(
        "TLSSTORM_FORWARD_OTLP_ENDPOINT")
    values = yaml.safe_load(values_file.read_text()) or {}
    if values.get("jaeger", {}).get("enabled", True):
        assert forward == f"http://{RELEASE}-tlsstorm-jaeger:4318"
    else:
        assert forward == (values.get("tracing", {}).get("forwardEndpoint") or None)


def test_locust_values_reach_the_ui_defaults_on_master_and_workers():
    objects = render("--set", "components.locust.tlsRatio=0.55", "--set",
                     "components.locust.shape=rustock", "--set", "components.locust.workers=3",
                     "--set", "components.locust.messageSize=4096")
    deployments = _by_kind(objects, "Deployment")

    for role in ("locust-master", "locust-worker"):
        env = _env(deployments[f"{RELEASE}-tlsstorm-{role}"])
        assert env["LOCUST_TLS_RATIO"] == "0.55"
        assert env["TLSSTORM_LOAD_SHAPE"] == "rustock"
        assert env["LOCUST_MESSAGE_SIZE"] == "4096"
    assert deployments[f"{RELEASE}-tlsstorm-locust-worker"]["spec"]["replicas"] == 3
    master = deployments[f"{RELEASE}-tlsstorm-locust-master"]["spec"]["template"]["spec"]
    assert "--class-picker" in master["containers"][0]["command"]


def test_sender_may_aim_only_at_the_in_cluster_receiver(objects):
    sender = _env(_by_kind(objects, "Deployment")[f"{RELEASE}-tlsstorm-sender"])

    assert sender["TLSSTORM_ALLOWED_TARGETS"].split(",")[0] == f"{RELEASE}-tlsstorm-receiver:2525"
    assert sender["TLSSTORM_SENDER_TARGET"] == f"{RELEASE}-tlsstorm-receiver:2525"


TARGETS = ("--set", "targets.exim.enabled=true", "--set", "targets.postfix.enabled=true",
           "--set", "targets.postfix.namespace=tlsstorm-mta")


def test_targets_are_exactly_what_the_senders_may_aim_at_and_locust_lists():
    """Each enabled target is allowed to the senders and Locust and named in Locust's list,
    after the receiver; none is without its value."""
    exim = f"{RELEASE}-tlsstorm-exim.tlsstorm.svc:2525"
    postfix = f"{RELEASE}-tlsstorm-postfix.tlsstorm-mta.svc:2525"
    receiver = f"{RELEASE}-tlsstorm-receiver:2525"
    for args, allowed in ((TARGETS, [receiver, postfix, exim]), ((), [receiver]),
                          (("--set", "targets.exim.enabled=true"), [receiver, exim])):
        deployments = _by_kind(render(*args), "Deployment")
        for name in ("sender", "locust-master", "locust-worker"):
            env = _env(deployments[f"{RELEASE}-tlsstorm-{name}"])
            assert env["TLSSTORM_ALLOWED_TARGETS"].split(",") == allowed, name
        listed = _env(deployments[f"{RELEASE}-tlsstorm-locust-master"])["TLSSTORM_TARGETS"]
        assert [entry.split("=", 1)[1] for entry in listed.split(",")] == allowed
        assert listed.split(",")[0] == f"receiver={receiver}"


def test_each_target_runs_under_its_meter_and_reports_to_the_collector():
    objects = render(*TARGETS)
    deployments = _by_kind(objects, "Deployment")
    for name, namespace in (("exim", "tlsstorm"), ("postfix", "tlsstorm-mta")):
        deployment = deployments[f"{RELEASE}-tlsstorm-{name}"]
        assert deployment["metadata"]["namespace"] == namespace
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["command"][:4] == ["tlsstorm", "meter", "--cgroup", "self"]
        env = _env(deployment)
        assert env["TLSSTORM_METER_TARGET"] == f"{RELEASE}-tlsstorm-{name}.{namespace}.svc:2525"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == \
            f"http://{RELEASE}-tlsstorm-collector.tlsstorm.svc:8027"
        assert env["TLSSTORM_RECEIVER_CA_CERT_FILE"] == "/etc/tlsstorm/ca/ca.crt"
    # Postfix's namespace gets the receiver's root too: the same root, for the same chain.
    roots = {obj["metadata"].get("namespace", "tlsstorm"): obj["data"]["ca.crt"]
             for obj in objects if obj["kind"] == "Secret"
             and obj["metadata"]["name"] == f"{RELEASE}-tlsstorm-receiver-ca"}
    assert set(roots) == {"tlsstorm", "tlsstorm-mta"} and len(set(roots.values())) == 1


def test_postfix_runs_as_root_in_its_own_namespace_with_six_capabilities():
    """Postfix's master must be root ("the master command is reserved for the superuser"):
    its pod is the one that is, in the namespace given for it (baseline), never escalating,
    with a read-only root and every capability dropped but the six its daemons use."""
    deployment = _by_kind(render(*TARGETS), "Deployment")[f"{RELEASE}-tlsstorm-postfix"]
    pod = deployment["spec"]["template"]["spec"]
    context = pod["containers"][0]["securityContext"]
    assert pod["securityContext"]["runAsUser"] == 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"],
                                       "add": ["CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL",
                                               "SETGID", "SETUID"]}


def test_receiver_secret_holds_the_root_or_the_self_signed_certificate_asked_for():
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    for shape, key_type, expected, size in (
            ("chain", "rsa2048", rsa.RSAPublicKey, 2048),
            ("chain", "rsa4096", rsa.RSAPublicKey, 4096),
            ("chain", "ecdsa-p256", ec.EllipticCurvePublicKey, 256),
            ("self-signed", "rsa2048", rsa.RSAPublicKey, 2048),
            ("self-signed", "rsa4096", rsa.RSAPublicKey, 4096),
            ("self-signed", "ecdsa-p256", ec.EllipticCurvePublicKey, 256)):
        setting = "rootKeyType" if shape == "chain" else "keyType"
        secrets = _by_kind(render("--set", f"components.receiver.tls.shape={shape}",
                                  "--set", f"components.receiver.tls.{setting}={key_type}"),
                           "Secret")
        if shape == "chain":
            secret = secrets[f"{RELEASE}-tlsstorm-receiver-ca"]
            certificate = x509.load_pem_x509_certificate(
                base64.b64decode(secret["data"]["ca.crt"]))
            assert certificate.extensions.get_extension_for_class(
                x509.BasicConstraints).value.ca, key_type
            assert f"{RELEASE}-tlsstorm-receiver-tls" not in secrets
        else:
            secret = secrets[f"{RELEASE}-tlsstorm-receiver-tls"]
            assert secret["type"] == "kubernetes.io/tls"
            certificate = x509.load_pem_x509_certificate(
                base64.b64decode(secret["data"]["tls.crt"]))
        key = certificate.public_key()
        assert isinstance(key, expected), (shape, key_type)
        assert key.key_size == size, (shape, key_type)
        assert secret["metadata"]["annotations"]["tlsstorm.io/made-for"].endswith(key_type)


def test_the_charts_root_issues_a_chain_the_sender_verifies_by_service_name(
    tmp_path, start_receiver, start_sender
):
    """What the pods do with the chart's values: the receiver issues leaf + intermediate from
    the Secret's root, naming its Service; a sender with verifyReceiver trusts that root."""
    objects = render("--set", "components.sender.verifyReceiver=true")
    secret = _by_kind(objects, "Secret")[f"{RELEASE}-tlsstorm-receiver-ca"]["data"]
    deployments = _by_kind(objects, "Deployment")
    receiver_env = _env(deployments[f"{RELEASE}-tlsstorm-receiver"])
    sender_pod = deployments[f"{RELEASE}-tlsstorm-sender"]["spec"]["template"]["spec"]
    mounted = {mount["name"]: mount["mountPath"]
               for mount in sender_pod["containers"][0]["volumeMounts"]}
    root_volume = next(v for v in sender_pod["volumes"] if v["name"] == "receiver-root")
    assert root_volume["secret"]["items"] == [{"key": "ca.crt", "path": "root.pem"}]
    assert _env(deployments[f"{RELEASE}-tlsstorm-sender"])["TLSSTORM_SENDER_CA_FILE"] == \
        f"{mounted['receiver-root']}/root.pem"
    for name in ("ca.crt", "ca.key"):
        (tmp_path / name).write_bytes(base64.b64decode(secret[name]))
    service = f"{RELEASE}-tlsstorm-receiver"
    receiver = start_receiver(
        ca_cert_file=tmp_path / "ca.crt", ca_key_file=tmp_path / "ca.key",
        hostname=receiver_env["TLSSTORM_RECEIVER_HOSTNAME"],
        cert_shape=receiver_env["TLSSTORM_RECEIVER_CERT_SHAPE"],
        cert_names=receiver_env["TLSSTORM_RECEIVER_CERT_NAMES"],
        cert_intermediates=int(receiver_env["TLSSTORM_RECEIVER_CERT_INTERMEDIATES"]))
    sender = start_sender(receiver.smtp_port, ca_file=tmp_path / "ca.crt")

    for name in (service, f"{service}.tlsstorm.svc"):
        result = sender.call(sender.service.client.send(
            _target(name, receiver.smtp_port), True, 1, 512))[0]
        assert result.ok and result.cert_verified, (name, result)
    served = receiver.service.certificate.describe()
    assert [entry["role"] for entry in served] == ["leaf", "intermediate"]
    assert receiver.service.certificate.root_pem == base64.b64decode(secret["ca.crt"])


def _target(name: str, port: int) -> Target:
    """The Service's name, resolved to this machine's receiver (no cluster DNS here)."""
    return Target(host=name, port=port, address="127.0.0.1")


def test_network_policies_limit_sender_and_receiver_egress():
    def egress(name: str, *args: str) -> set[tuple[str, int]]:
        policies = _by_kind(render(*args), "NetworkPolicy")
        return {(peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
                 rule["ports"][0]["port"])
                for rule in policies[f"{RELEASE}-tlsstorm-{name}"]["spec"]["egress"]
                for peer in rule.get("to", [])}

    # Replicas reach each other's API: a wave posted to one is split over all.
    assert egress("sender") == {("receiver", 2525), ("collector", 8027), ("sender", 8026)}
    assert egress("sender", "--set", "components.sender.replicas=1") == {
        ("receiver", 2525), ("collector", 8027)}
    assert egress("receiver") == {("collector", 8027)}
    assert egress("sender", *TARGETS) == {("receiver", 2525), ("collector", 8027),
                                          ("sender", 8026), ("exim", 2525), ("postfix", 2525)}
    targets = _by_kind(render(*TARGETS), "NetworkPolicy")
    postfix = targets[f"{RELEASE}-tlsstorm-postfix"]
    assert postfix["metadata"]["namespace"] == "tlsstorm-mta"
    smtp_from = {peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                 for peer in postfix["spec"]["ingress"][0]["from"]}
    assert smtp_from == {"sender", "locust-worker"}
    release_namespace = {"kubernetes.io/metadata.name": "tlsstorm"}
    assert all(peer["namespaceSelector"]["matchLabels"] == release_namespace
               for peer in postfix["spec"]["ingress"][0]["from"])


def test_sender_replicas_find_each_other_through_a_headless_service():
    objects = render()
    peers = _by_kind(objects, "Service")[f"{RELEASE}-tlsstorm-sender-peers"]
    sender = _by_kind(objects, "Deployment")[f"{RELEASE}-tlsstorm-sender"]
    env = {item["name"]: item.get("value")
           for item in sender["spec"]["template"]["spec"]["containers"][0]["env"]}

    assert peers["spec"]["clusterIP"] == "None"
    assert peers["spec"]["selector"] == sender["spec"]["selector"]["matchLabels"]
    assert env["TLSSTORM_SENDER_PEERS"] == f"{RELEASE}-tlsstorm-sender-peers:8026"
    single = render("--set", "components.sender.replicas=1")
    assert f"{RELEASE}-tlsstorm-sender-peers" not in _by_kind(single, "Service")


def test_receivers_and_senders_drain_within_their_grace_period_with_disruption_budgets():
    """A pod's grace period covers its drain (delay + timeout) and a minute for the spans'
    flush; a component with more than one replica has a budget of one away at a time, and
    rolls one pod at a time with no pod beyond its replicas."""
    objects = render("--set", "components.receiver.replicas=2",
                     "--set", "components.receiver.drain.delaySeconds=3",
                     "--set", "components.receiver.drain.timeoutSeconds=12")
    receiver = _by_kind(objects, "Deployment")[f"{RELEASE}-tlsstorm-receiver"]
    env = _env(receiver)
    assert (env["TLSSTORM_RECEIVER_DRAIN_DELAY_S"], env["TLSSTORM_RECEIVER_DRAIN_TIMEOUT_S"]) \
        == ("3", "12")
    assert receiver["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 3 + 12 + 60
    sender = _by_kind(objects, "Deployment")[f"{RELEASE}-tlsstorm-sender"]
    assert (_env(sender)["TLSSTORM_SENDER_DRAIN_DELAY_S"],
            _env(sender)["TLSSTORM_SENDER_DRAIN_TIMEOUT_S"]) == ("5", "20")
    assert sender["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 5 + 20 + 60
    budgets = _by_kind(objects, "PodDisruptionBudget")
    assert sorted(budgets) == [f"{RELEASE}-tlsstorm-receiver", f"{RELEASE}-tlsstorm-sender"]
    for name, budget in budgets.items():
        deployment = _by_kind(objects, "Deployment")[name]
        assert budget["spec"] == {"maxUnavailable": 1, "selector": deployment["spec"]["selector"]}
    # A rollout of a replicated component takes one pod away, then starts its successor: it
    # needs no room beyond the release's (a surge pod on a full node waits forever).
    rolled_in_place = {name for name, deployment in _by_kind(objects, "Deployment").items()
                       if deployment["spec"].get("strategy") == {"type": "RollingUpdate",
                       "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}}
    assert rolled_in_place == {*budgets, f"{RELEASE}-tlsstorm-locust-worker"}
    single = render("--set", "components.sender.replicas=1")
    assert _by_kind(single, "PodDisruptionBudget") == {}
    # One replica: Kubernetes' default, its successor ready before it goes.
    assert "strategy" not in _by_kind(single, "Deployment")[f"{RELEASE}-tlsstorm-sender"]["spec"]


def test_pod_annotations_reach_every_pod_so_a_changed_one_rolls_them_all():
    """default.podAnnotations on every pod template, Jaeger's too (beside its config's
    checksum); a component's own podAnnotations replace the default's keys for its pods."""
    objects = render("--set-string", "default.podAnnotations.tlsstorm\\.io/rollout=7",
                     "--set-string", "components.sender.podAnnotations.tlsstorm\\.io/rollout=8")
    annotations = {name: deployment["spec"]["template"]["metadata"].get("annotations", {})
                   for name, deployment in _by_kind(objects, "Deployment").items()}
    assert len(annotations) == 6, sorted(annotations)
    for name, found in annotations.items():
        rollout = "8" if name.endswith("-sender") else "7"
        assert found.get("tlsstorm.io/rollout") == rollout, (name, found)
    assert "checksum/config" in annotations[f"{RELEASE}-tlsstorm-jaeger"]


@pytest.mark.parametrize(("settings", "on_a_volume"), [
    ((), False),  # `helm template` sees no cluster, so no default StorageClass
    (("components.collector.persistence.storageClass=local-path",), True),
    (("components.collector.persistence.storageClass=local-path",
      "components.collector.persistence.enabled=false"), False),
])
def test_the_collector_is_on_a_volume_replaced_with_recreate_or_says_it_is_not(
        settings, on_a_volume):
    objects = render(*(arg for setting in settings for arg in ("--set", setting)))
    collector = _by_kind(objects, "Deployment")[f"{RELEASE}-tlsstorm-collector"]
    data = next(volume for volume in collector["spec"]["template"]["spec"]["volumes"]
                if volume["name"] == "data")
    claims = _by_kind(objects, "PersistentVolumeClaim")
    if on_a_volume:
        assert data["persistentVolumeClaim"]["claimName"] in claims
        assert collector["spec"]["strategy"] == {"type": "Recreate"}
        assert "TLSSTORM_COLLECTOR_EPHEMERAL" not in _env(collector)
    else:
        assert "emptyDir" in data and claims == {}
        assert _env(collector)["TLSSTORM_COLLECTOR_EPHEMERAL"] == "true"


@pytest.mark.parametrize(("setting", "message"), [
    ("components.locust.tlsRatio=1.5", "/components/locust/tlsRatio"),
    ("components.receiver.tls.keyType=dsa", "value must be one of 'rsa2048', 'rsa3072', "
                                            "'rsa4096', 'ecdsa-p256', 'ecdsa-p384'"),
    ("components.receiver.tls.shape=self-signed,components.receiver.tls.keyType=ecdsa-p384",
     "/components/receiver/tls/keyType"),
    ("components.receiver.tls.intermediates=0", "/components/receiver/tls/intermediates"),
    ("components.locust.workers=-1", "/components/locust/workers"),
    ("components.locust.shape=square", "/components/locust/shape"),
    ("jaeger.image.tag=1.60", "/jaeger/image/tag"),
    ("components.receiver.tls.minVersion=1.0", "/components/receiver/tls/minVersion"),
    ("replicas=3", "additional properties 'replicas' not allowed"),
    ("targets.postfix.namespace=Not_A_Name", "/targets/postfix/namespace"),
    ("targets.exim.enabled=yes", "/targets/exim/enabled"),
    ("components.receiver.drain.timeoutSeconds=0", "/components/receiver/drain/timeoutSeconds"),
    ("components.sender.drain.delaySeconds=-1", "/components/sender/drain/delaySeconds"),
    ("default.podAnnotations.rolled=1", "/default/podAnnotations/rolled"),
])
def test_bad_values_fail_at_install_with_a_clear_message(setting, message):
    finished = helm("template", RELEASE, str(CHART), "--set", setting, check=False)

    assert finished.returncode != 0
    assert message in finished.stderr


def test_yamllint_on_values_workflows_and_rendered_output(tmp_path):
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(helm("template", RELEASE, str(CHART)).stdout)
    targets = [CHART / "values.yaml", *VALUES, *sorted((ROOT / ".github/workflows").glob("*.yml")),
               ROOT / "deploy" / "kind-cluster.yaml", CHART / "Chart.yaml"]

    finished = subprocess.run(
        [str(ROOT / ".venv/bin/yamllint"), "-c", str(ROOT / ".yamllint"), "-f", "parsable",
         *map(str, targets)], capture_output=True, text=True, cwd=ROOT)
    rendered_lint = subprocess.run(
        [str(ROOT / ".venv/bin/yamllint"), "--strict", "-d", RENDERED_YAMLLINT, "-f", "parsable",
         str(rendered)], capture_output=True, text=True)

    assert finished.returncode == 0, finished.stdout
    assert rendered_lint.returncode == 0, rendered_lint.stdout


def test_hadolint_on_the_dockerfile():
    finished = subprocess.run([str(ROOT / ".venv/bin/hadolint"), str(ROOT / "Dockerfile")],
                              capture_output=True, text=True)

    assert finished.returncode == 0, finished.stdout + finished.stderr


def test_actionlint_on_the_workflows():
    workflows = sorted((ROOT / ".github/workflows").glob("*.yml"))
    finished = subprocess.run([str(ROOT / ".venv/bin/actionlint"), *map(str, workflows)],
                              capture_output=True, text=True, cwd=ROOT)

    assert len(workflows) == 2
    assert finished.returncode == 0, finished.stdout + finished.stderr


def test_notes_tell_the_port_forwards_and_the_first_steps():
    notes = helm("install", RELEASE, str(CHART), "--dry-run=client", "--namespace",
                 "tlsstorm").stdout.split("NOTES:", 1)[1]

    assert f"port-forward svc/{RELEASE}-tlsstorm-locust-master 8089:8089" in notes
    assert f"port-forward svc/{RELEASE}-tlsstorm-jaeger 16686:16686" in notes
    assert f"port-forward svc/{RELEASE}-tlsstorm-collector 8027:8027" in notes
    assert "Custom parameters" in notes and f"helm test {RELEASE}" in notes
    assert f"get secret {RELEASE}-tlsstorm-receiver-ca -o jsonpath='{{.data.ca\\.crt}}'" in notes


def test_the_ci_workflow_runs_ci_run_itself_in_bookworm():
    """One source of truth for how the tests are set up: the workflow runs .ci/run in a Debian
    bookworm container and installs nothing of its own but git for the checkout."""
    workflow = yaml.safe_load((ROOT / ".github/workflows/ci.yml").read_text())
    job = workflow["jobs"]["test"]
    assert job["container"]["image"] == "debian:bookworm"
    assert "--privileged" in job["container"]["options"]
    commands = "\n".join(step.get("run", "") for step in job["steps"])
    assert ".ci/run" in commands
    assert "make test" not in commands  # .ci/run runs it, after what it installs
    installed = {word for line in commands.splitlines() if "apt-get install" in line
                 for word in line.split("apt-get install", 1)[1].split() if
                 not word.startswith("-")}
    assert installed == {"git", "ca-certificates"}, installed
