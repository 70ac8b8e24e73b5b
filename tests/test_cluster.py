"""The user's path in a real single-node Kubernetes (issue 17): `make cluster-up` builds it here
from upstream Go modules and Debian packages, `make deploy` installs the chart (Jaeger on) into a
namespace enforcing restricted Pod Security, then `helm test`, the Locust UI driving the workers
at a ratio picked here, Jaeger's API, NetworkPolicies enforced, the default swarm, faults during
a run started in the UI reconciled to the message (issue 34), and `make cluster-down` putting
the host back. Needs root; CI never skips it."""

from __future__ import annotations

import base64
import html
import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from tests.helpers import wait_for
from tests.locust_ui_helpers import (
    only_user_class,
    receiver_wave,
    start_from_ui,
    wave_sessions,
)
from tests.test_jaeger import both_ends, services_in

ROOT = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("TLSSTORM_CLUSTER_DIR", "/var/lib/tlsstorm-cluster"))
KUBECONFIG = STATE / "admin.kubeconfig"
NAMESPACE = "tlsstorm"
IN_CI = os.environ.get("CI") == "true"
TABLES = ROOT / "scripts" / "iptables-tables.py"
# Cold, Kubernetes, CoreDNS, the enforcer and Jaeger are built from source first.
pytestmark = pytest.mark.timeout(3600)


def run(*command: str, timeout: float = 600, check: bool = True,
        **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "KUBECONFIG": str(KUBECONFIG), "TLSSTORM_CLUSTER_DIR": str(STATE),
           "PATH": f"{ROOT / '.tools' / 'bin'}:{os.environ['PATH']}"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, **kwargs)
    if check:
        assert done.returncode == 0, f"{command}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done


def kubectl(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return run("kubectl", *args, **kwargs)


def cluster_ip(service: str) -> str:
    return kubectl("-n", NAMESPACE, "get", "service", service,
                   "-o", "jsonpath={.spec.clusterIP}").stdout


def _token(release: str) -> str:
    """The release's API token, which load-starting endpoints ask for."""
    return base64.b64decode(kubectl("-n", release, "get", "secret", "tlsstorm-api-token",
                                    "-o", "jsonpath={.data.token}").stdout).decode()


# Made by the kubelet and the CNI plugins at fixed paths (scripts/cluster.sh host_dirs).
HOST_DIRS = ("/var/lib/kubelet", "/var/lib/cni")


def host_state() -> dict:
    """What cluster-up changes on the host and cluster-down must put back."""
    sysctls = ("net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables",
               "vm.overcommit_memory", "kernel.panic", "kernel.panic_on_oops")
    return {
        "sysctls": {name: Path("/proc/sys", *name.split(".")).read_text().strip()
                    for name in sysctls},
        "links": sorted(link for link in os.listdir("/sys/class/net")
                        if link.startswith(("ts", "veth"))),
        "netns": sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else [],
        "iptables": sorted(line for tool in ("iptables-save", "ip6tables-save")
                           for line in subprocess.run([tool], capture_output=True, text=True,
                                                      check=True).stdout.splitlines()
                           if "KUBE-" in line),
        "nftables": subprocess.run(["nft", "list", "tables"], capture_output=True, text=True,
                                   check=True).stdout.split("\n"),
        "mounts": [line for line in Path("/proc/mounts").read_text().splitlines()
                   if str(STATE) in line],
        "kubeconfig": (Path.home() / ".kube" / "config").exists(),
        "kube_folder": (Path.home() / ".kube").exists(),
        "dirs": [folder for folder in HOST_DIRS if Path(folder).exists()],
    }


def as_on_a_fresh_host() -> None:
    """Removes the iptables-nft tables that hold nothing (built-in chains accepting, no rule),
    which changes no packet's path, and the kubelet's and CNI's host folders when no kubelet
    runs (what an earlier cluster here left): the host is then as one where nothing had used
    iptables or run a cluster, whatever ran here before, and cluster-down is checked against
    that (issue 30)."""
    subprocess.run([str(TABLES), "remove-new", "/dev/null"], check=True, capture_output=True)
    if subprocess.run(["pgrep", "-x", "kubelet"], capture_output=True).returncode != 0:
        for folder in HOST_DIRS:
            shutil.rmtree(folder, ignore_errors=True)
    # A kubeconfig without a context (what an earlier cluster-down here emptied) and its cache.
    kube = Path.home() / ".kube"
    config = kube / "config"
    if kube.exists() and not (config.exists() and
                              (yaml.safe_load(config.read_text()) or {}).get("contexts")):
        shutil.rmtree(kube)


def in_new_netns(script: str) -> str:
    """`script` (sh) run in a network namespace of its own: nftables as on a fresh host."""
    name = f"tlsstorm-fresh-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        return subprocess.run(["ip", "netns", "exec", name, "sh", "-ec", script], check=True,
                              capture_output=True, text=True).stdout
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)


def test_cluster_down_removes_only_the_iptables_tables_made_after_up_and_left_empty(tmp_path):
    """What cluster-down does to the tables iptables-nft creates on first use, in a network
    namespace of its own (so a fresh host's state, on any host): a table that was there before
    stays, one made since and emptied goes, one made since that holds a rule stays."""
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("network namespaces need root (CI runs as root)")
        pytest.skip("network namespaces need root")
    listed = in_new_netns(f"""
        iptables -t mangle -N EARLIER                     # someone's, before up
        {TABLES} record {tmp_path}/before
        iptables -N KUBE-FIREWALL; iptables -A INPUT -j KUBE-FIREWALL   # what up adds
        iptables -t nat -N KUBE-POSTROUTING
        ip6tables -t nat -A POSTROUTING -j ACCEPT         # someone's rule, made meanwhile
        iptables -D INPUT -j KUBE-FIREWALL; iptables -X KUBE-FIREWALL   # what down removes
        iptables -t nat -X KUBE-POSTROUTING
        {TABLES} remove-new {tmp_path}/before
        nft list tables""")
    assert sorted(listed.splitlines()) == ["table ip mangle", "table ip6 nat"]


def test_cluster_up_refuses_while_a_process_of_an_earlier_cluster_runs(tmp_path):
    """cluster-up takes down what a killed run left only when none of its processes runs: a
    live one (here a process named etcd, recorded as the state's etcd) is never torn down."""
    if os.geteuid() != 0:
        pytest.skip("cluster-up needs root")
    (tmp_path / "run").mkdir(parents=True)
    etcd = tmp_path / "etcd"
    shutil.copy("/bin/sleep", etcd)
    live = subprocess.Popen([str(etcd), "60"])
    try:
        (tmp_path / "run" / "etcd.pid").write_text(f"{live.pid}\n")
        up = subprocess.run([str(ROOT / "scripts" / "cluster.sh"), "up"], capture_output=True,
                            text=True, timeout=60,
                            env={**os.environ, "TLSSTORM_CLUSTER_DIR": str(tmp_path)})
        assert up.returncode == 1
        assert "a cluster is up (etcd runs)" in up.stderr
        assert (tmp_path / "run" / "etcd.pid").exists() and live.poll() is None
    finally:
        live.kill()
        live.wait()


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("the cluster check needs root (CI runs as root)")
        pytest.skip("the local cluster needs root")
    if STATE.exists():
        status = run("scripts/cluster.sh", "status", check=False).stdout
        if " running" in status:
            pytest.fail(f"a local cluster is up: make cluster-down first\n{status}")
        # What a run killed mid-way left (no process of it runs): undone, as cluster-up would.
        run("make", "cluster-down", timeout=300)
    as_on_a_fresh_host()
    before = host_state()
    started = time.monotonic()
    up = run("make", "cluster-up", timeout=3000, check=False)
    print(f"make cluster-up: {time.monotonic() - started:.0f} s")
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-5000:]
        yield before
    finally:
        run("make", "cluster-down", timeout=300, check=False)


@pytest.fixture(scope="module")
def release(cluster):
    """The chart installed with `make deploy` into a namespace enforcing restricted PSS."""
    kubectl("create", "namespace", NAMESPACE)
    kubectl("label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted")
    started = time.monotonic()
    # Chart defaults: the collector finds the default StorageClass and keeps its results there.
    run("make", "deploy", f"NAMESPACE={NAMESPACE}", timeout=600)
    print(f"make deploy: {time.monotonic() - started:.0f} s")
    return NAMESPACE


def restarts() -> dict[str, int]:
    pods = json.loads(kubectl("-n", NAMESPACE, "get", "pods", "-o", "json").stdout)["items"]
    return {pod["metadata"]["name"]: sum(status["restartCount"]
                                         for status in pod["status"]["containerStatuses"])
            for pod in pods if not pod["metadata"]["name"].endswith("-test")}


def test_the_node_runs_the_pinned_release_with_dns_and_the_policy_enforcer(cluster):
    version = json.loads(kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    go_mod = (ROOT / "gobuild" / "kube" / "go.mod").read_text()
    assert f"k8s.io/kubernetes {version}" in go_mod
    nodes = json.loads(kubectl("get", "nodes", "-o", "json").stdout)["items"]
    assert [n["metadata"]["name"] for n in nodes] == ["tlsstorm-node"]
    ready = {c["type"]: c["status"] for c in nodes[0]["status"]["conditions"]}
    assert ready["Ready"] == "True"
    system = json.loads(kubectl("-n", "kube-system", "get", "pods", "-o", "json").stdout)["items"]
    running = {p["metadata"]["labels"].get("k8s-app"): p["status"]["phase"] for p in system}
    assert running == {"kube-dns": "Running"}
    classes = json.loads(kubectl("get", "storageclass", "-o", "json").stdout)["items"]
    defaults = [c["metadata"]["name"] for c in classes if c["metadata"].get("annotations", {})
                .get("storageclass.kubernetes.io/is-default-class") == "true"]
    assert defaults == ["local-path"]
    # The NetworkPolicy enforcer runs on the node (kube-router's firewall, a host service).
    assert httpx.get("http://127.0.0.1:20244/healthz", timeout=5).status_code == 200


def test_restricted_namespace_installs_the_chart_and_helm_test_passes(release):
    refused = kubectl("-n", release, "run", "privileged", "--image=tlsstorm:none",
                      "--overrides", json.dumps({"spec": {"containers": [{
                          "name": "privileged", "image": "tlsstorm:none",
                          "securityContext": {"privileged": True}}]}}), check=False)
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr, refused.stderr
    tested = run(str(ROOT / ".tools" / "bin" / "helm"), "test", "tlsstorm", "-n", release, "--logs",
                 timeout=300)
    assert "Phase:          Succeeded" in tested.stdout, tested.stdout


def test_the_collector_keeps_its_results_on_a_volume_of_the_default_storage_class(release):
    claims = json.loads(kubectl("-n", release, "get", "pvc", "-o", "json").stdout)["items"]
    assert [(c["spec"]["storageClassName"], c["status"]["phase"]) for c in claims] == [
        ("local-path", "Bound")]
    volume = kubectl("get", "pv", claims[0]["spec"]["volumeName"],
                     "-o", "jsonpath={.spec.hostPath.path}").stdout
    assert volume.startswith(str(STATE / "volumes"))
    # The collector's SQLite file, seen on the node's disk where the provisioner made the volume.
    assert list(Path(volume).glob("*.sqlite")), sorted(os.listdir(volume))


def test_locust_ui_drives_the_workers_at_the_ratio_picked(release, browser_page):
    ratio = random.choice((0.2, 0.35, 0.5, 0.65, 0.8))
    print(f"TLS ratio picked: {ratio}")
    locust_url = f"http://{cluster_ip('tlsstorm-locust-master')}:8089"
    receiver_url = f"http://{cluster_ip('tlsstorm-receiver')}:8025"
    page = browser_page
    page.goto(locust_url)
    workers = httpx.get(f"{locust_url}/stats/requests", timeout=10).json()["workers"]
    assert len(workers) == 2, workers
    start_from_ui(page, {"tlsRatio": str(ratio), "waveId": "cluster-ui", "userCount": "10",
                  "spawnRate": "10"})
    deadline = time.monotonic() + 120
    while wave_sessions(receiver_wave(receiver_url, "cluster-ui")) < 400:
        assert time.monotonic() < deadline, receiver_wave(receiver_url, "cluster-ui")
        time.sleep(1)
    assert httpx.post(f"{locust_url}/stop", timeout=60).status_code == 200
    time.sleep(3)
    stats = receiver_wave(receiver_url, "cluster-ui")
    share = stats["tls"]["sessions"] / wave_sessions(stats)
    print(f"receiver: {wave_sessions(stats)} sessions, STARTTLS share {share:.3f}")
    assert share == pytest.approx(ratio, abs=0.05)
    assert stats["tls"]["handshakes_ok"] == stats["tls"]["sessions"]


def test_jaeger_in_the_cluster_finds_traces_with_both_handshake_spans(release):
    jaeger = f"http://{cluster_ip('tlsstorm-jaeger')}:16686/api"
    deadline = time.monotonic() + 60
    while True:
        traces = httpx.get(f"{jaeger}/traces", params={"service": "locust", "limit": 100},
                           timeout=10).json()["data"] or []
        joined = [trace for trace in traces if both_ends(trace)]
        if joined or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert joined, f"{len(traces)} Locust traces, none with both handshake spans"
    assert services_in(joined[0]) >= {"locust", "tlsstorm-sender", "tlsstorm-receiver"}


# A new pod's address reaches the enforcer's sets a moment after the pod starts: each address
# is tried for 20 s, and the last outcome counts.
PROBE = """\
import socket, time
def reach(host, port):
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection((host, port), timeout=5).close()
            return "open"
        except OSError as error:
            if time.monotonic() > deadline:
                return type(error).__name__
        time.sleep(0.5)
address = socket.gethostbyname("tlsstorm-sender.tlsstorm.svc.cluster.local")
print("dns", address)
print("api", reach("kubernetes.default.svc.cluster.local", 443))
print("sender", reach(address, 8026))
"""


def probe_from(namespace: str, labels: dict[str, str]) -> dict[str, str]:
    """What a restricted pod in `namespace` with `labels` reaches: DNS, the API, the sender."""
    image = kubectl("-n", NAMESPACE, "get", "deployment", "tlsstorm-sender",
                    "-o", "jsonpath={.spec.template.spec.containers[0].image}").stdout
    secure = {"runAsNonRoot": True, "runAsUser": 10001, "allowPrivilegeEscalation": False,
              "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    overrides = {"metadata": {"labels": labels}, "spec": {"restartPolicy": "Never", "containers": [{
        "name": "probe", "image": image, "imagePullPolicy": "Never",
        "command": ["python3", "-c", PROBE], "securityContext": secure}]}}
    kubectl("-n", namespace, "run", "probe", f"--image={image}", "--restart=Never",
            "--overrides", json.dumps(overrides))
    kubectl("-n", namespace, "wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/probe",
            "--timeout=120s", timeout=150)
    printed = kubectl("-n", namespace, "logs", "probe").stdout
    kubectl("-n", namespace, "delete", "pod", "probe", "--wait=false")
    return dict(line.split(" ", 1) for line in printed.splitlines())


def test_network_policies_block_a_pod_outside_the_release(release):
    """The same probe twice: labelled as part of the release it reaches the sender's API; from
    another namespace it resolves the name (DNS is allowed) and reaches the API server (no
    policy there), but kube-router rejects its connection to the sender."""
    inside = probe_from(release, {"app.kubernetes.io/name": "tlsstorm",
                                  "app.kubernetes.io/instance": "tlsstorm"})
    assert inside["sender"] == "open", inside
    kubectl("create", "namespace", "outsider")
    kubectl("label", "namespace", "outsider", "pod-security.kubernetes.io/enforce=restricted")
    outside = probe_from("outsider", {"run": "probe"})
    assert outside["dns"] == cluster_ip("tlsstorm-sender")
    assert outside["api"] == "open"
    assert outside["sender"] in {"ConnectionRefusedError", "TimeoutError"}, outside


def test_a_wave_posted_to_the_sender_service_is_split_over_its_replicas(release):
    """`POST /v1/waves` through the sender's Service: both replicas (named by the headless
    Service, reaching each other through the NetworkPolicy) send a part, and the replica a
    poll lands on answers for the whole wave."""
    sender = f"http://{cluster_ip('tlsstorm-sender')}:8026"
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {_token(release)}"}) \
            as http:
        started = http.post(f"{sender}/v1/waves", json={
            "rate": 50, "count": 200, "tls_ratio": 0.5}).json()
        deadline = time.monotonic() + 90
        while (wave := http.get(f"{sender}{started['url']}").json())["status"] == "running":
            assert time.monotonic() < deadline, wave
            time.sleep(1)

    assert started["replicas"] == 2, started
    assert (wave["done"], wave["tls"]["ok"], wave["plain"]["ok"]) == (200, 100, 100), wave
    assert sorted(part["done"] for part in wave["parts"]) == [100, 100], wave["parts"]
    receiver = f"http://{cluster_ip('tlsstorm-receiver')}:8025"
    deadline = time.monotonic() + 15  # a session is counted once it has closed
    while wave_sessions(stats := receiver_wave(receiver, started["id"])) < 200:
        assert time.monotonic() < deadline, stats
        time.sleep(0.5)
    assert wave_sessions(stats) == 200, stats


def test_the_default_swarm_ends_with_no_pod_restarted(release, browser_page):
    """200 users at 70% STARTTLS for 30 s: the load that OOMKilled the receiver before."""
    before = restarts()
    locust_url = f"http://{cluster_ip('tlsstorm-locust-master')}:8089"
    receiver_url = f"http://{cluster_ip('tlsstorm-receiver')}:8025"
    page = browser_page
    page.goto(locust_url)
    page.get_by_role("button", name="New").click()
    start_from_ui(page, {"tlsRatio": "0.7", "waveId": "cluster-swarm", "userCount": "200",
                  "spawnRate": "50"})
    time.sleep(30)
    assert httpx.post(f"{locust_url}/stop", timeout=60).status_code == 200
    time.sleep(3)
    stats = receiver_wave(receiver_url, "cluster-swarm")
    print(f"swarm: {wave_sessions(stats)} sessions at the receiver")
    assert wave_sessions(stats) > 0
    after = restarts()
    assert after == before and not any(after.values()), after
    terminated = [status.get("lastState", {}).get("terminated", {}).get("reason")
                  for pod in json.loads(kubectl("-n", NAMESPACE, "get", "pods", "-o",
                                                "json").stdout)["items"]
                  for status in pod["status"]["containerStatuses"]]
    assert "OOMKilled" not in terminated


MTA_NAMESPACE = "tlsstorm-mta"


def test_postfix_and_exim_are_targets_picked_in_the_locust_ui_and_costed_by_the_collector(
    release, browser_page
):
    """`helm upgrade` with both targets: Exim in the release's namespace (restricted), Postfix
    in a namespace of its own that admits its root master (baseline). Locust's web UI lists
    them; runs aimed at Postfix from the list, at 70% and 20% STARTTLS, reach it, and the
    collector gives Postfix's CPU per message per mode from its meter; a wave through the
    sender's Service reaches Exim; anything else the sender refuses."""
    kubectl("create", "namespace", MTA_NAMESPACE)
    kubectl("label", "namespace", MTA_NAMESPACE, "pod-security.kubernetes.io/enforce=baseline")
    helm = str(ROOT / ".tools" / "bin" / "helm")
    run(helm, "upgrade", "tlsstorm", "charts/tlsstorm", "-n", release, "--reuse-values",
        "--set", "targets.postfix.enabled=true", "--set",
        f"targets.postfix.namespace={MTA_NAMESPACE}", "--set", "targets.exim.enabled=true",
        "--wait", "--timeout", "5m")
    postfix = f"tlsstorm-postfix.{MTA_NAMESPACE}.svc:2525"
    exim = f"tlsstorm-exim.{release}.svc:2525"
    collector = f"http://{cluster_ip('tlsstorm-collector')}:8027"
    locust_url = f"http://{cluster_ip('tlsstorm-locust-master')}:8089"
    # The upgrade replaced Locust's master (its target list changed): the old one may still
    # answer while it terminates, the browser's kept-alive connection included, so the page
    # itself is loaded until it lists the targets.
    page = browser_page
    deadline = time.monotonic() + 60
    while True:
        page.goto(locust_url)
        if "postfix" in page.content():
            break
        assert time.monotonic() < deadline
        time.sleep(1)
    measured_since = None
    for ratio, wave in (("0.5", "postfix-warm-up"), ("0.7", "postfix-0.7"),
                        ("0.2", "postfix-0.2")):
        new = page.get_by_role("button", name="New")
        if new.count():  # after a run (a first run's page shows the form itself)
            new.click()
        only_user_class(page, "SpamViaSender")
        if wave == "postfix-warm-up":
            page.get_by_role("button", name="Custom parameters").click()
            assert page.locator('select[name="target"] option').all_inner_texts() == [
                "receiver", "postfix", "exim"]
        if wave != "postfix-warm-up" and measured_since is None:
            measured_since = int(time.time())
        start_from_ui(page, {"target": "postfix", "tlsRatio": ratio, "waveId": wave,
                             "userCount": "10", "spawnRate": "10"})
        deadline = time.monotonic() + 120
        while _sent(collector, wave) < 600:
            assert time.monotonic() < deadline, _sent(collector, wave)
            time.sleep(1)
        assert httpx.post(f"{locust_url}/stop", timeout=60).status_code == 200
        time.sleep(4)  # the meter's samples of the last seconds reach the collector
    costs = httpx.get(f"{collector}/v1/targets/summary", timeout=30,
                      params={"target": postfix, "since": measured_since}).json()
    print(f"Postfix in the cluster: {costs['per_mode']}; {costs['process']}")
    assert costs["measured_by"] == "meter"
    assert costs["per_mode"]["starttls_ms"] > costs["per_mode"]["plain_ms"] > 0
    assert costs["process"]["limit_cores"] == 1.0  # the pod's CPU limit, read in its cgroup

    sender = f"http://{cluster_ip('tlsstorm-sender')}:8026"
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {_token(release)}"}) \
            as http:
        started = http.post(f"{sender}/v1/waves", json={
            "rate": 20, "count": 60, "tls_ratio": 0.5, "target": exim}).json()
        deadline = time.monotonic() + 90
        while (state := http.get(f"{sender}{started['url']}").json())["status"] == "running":
            assert time.monotonic() < deadline, state
            time.sleep(1)
        assert (state["plain"]["ok"], state["tls"]["ok"]) == (30, 30), state
        refused = http.post(f"{sender}/v1/send", json={"tls": False, "target": "198.19.0.1:443"})
        assert refused.status_code == 403 and "not allowed" in refused.text, refused.text
    deadline = time.monotonic() + 30
    while not any(row["target"] == exim and row["metered"] for row in
                  httpx.get(f"{collector}/v1/targets", timeout=10).json()["targets"]):
        assert time.monotonic() < deadline
        time.sleep(1)


def _sent(collector: str, wave: str) -> int:
    found = [entry for entry in httpx.get(f"{collector}/v1/waves", timeout=10).json()["waves"]
             if entry["wave"] == wave]
    return sum(found[0]["sent"].values()) if found else 0


def test_an_upgrade_to_an_ecdsa_leaf_serves_it_under_the_kept_root(release, tmp_path):
    """`helm upgrade` to an ECDSA P-256 leaf: helm test passes again, and the receiver's
    STARTTLS serves an ECDSA leaf that verifies by service name against the root kept in the
    release's Secret across the upgrade."""
    root = kubectl("-n", release, "get", "secret", "tlsstorm-receiver-ca",
                   "-o", r"jsonpath={.data.ca\.crt}").stdout
    helm = str(ROOT / ".tools" / "bin" / "helm")
    run(helm, "upgrade", "tlsstorm", "charts/tlsstorm", "-n", release, "--reuse-values",
        "--set", "components.receiver.tls.keyType=ecdsa-p256", "--wait", "--timeout", "5m")
    # --logs: the test pod's output is in the failure message when it fails.
    tested = run(helm, "test", "tlsstorm", "-n", release, "--logs")
    assert "Phase:          Succeeded" in tested.stdout
    assert kubectl("-n", release, "get", "secret", "tlsstorm-receiver-ca",
                   "-o", r"jsonpath={.data.ca\.crt}").stdout == root
    (tmp_path / "root.pem").write_bytes(base64.b64decode(root))
    name = f"tlsstorm-receiver.{release}.svc"
    served = run("openssl", "s_client", "-connect", f"{cluster_ip('tlsstorm-receiver')}:2525",
                 "-starttls", "smtp", "-servername", name, "-verify_hostname", name,
                 "-CAfile", str(tmp_path / "root.pem"), "-verify_return_error", "-showcerts",
                 input="", timeout=30)
    leaf = x509.load_pem_x509_certificate(re.search(
        r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", served.stdout, re.S)
        .group(0).encode())
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    assert leaf.public_key().curve.name == "secp256r1"
    assert "Verify return code: 0 (ok)" in served.stdout


# Faults during a wave (issue 34): a wave started in the Locust UI, 10 users sending through the
# senders at 70% STARTTLS, a pod taken away 10 s in and the run stopped 10 s after the fault.
# Where a fault concerns the senders' own waves, the wave the issue measured (2,400 messages at
# 80/s, 70% STARTTLS, posted to the senders' Service) runs beside it.
FAULT_USERS = 10
LOCUST_BATCH = 10  # load/options.py's --batch: messages per request a user has in flight
FAULT_WAVE = {"rate": 80, "count": 2400, "tls_ratio": 0.7}


def _ready_workers(locust_url: str) -> bool:
    """Both workers ready for a run (a killed or replaced worker stays listed as missing)."""
    states = [worker["state"] for worker in httpx.get(
        f"{locust_url}/stats/requests", timeout=10).json()["workers"]]
    return sorted(state for state in states if state != "missing") == ["ready", "ready"]


def _start_in_the_ui(page, locust_url: str, wave_id: str, users: int) -> None:
    """A SpamViaSender run at 70% STARTTLS aimed at the receiver, from the swarm form."""
    wait_for(lambda: _ready_workers(locust_url), timeout=120)
    page.goto(locust_url)
    new = page.get_by_role("button", name="New")
    if new.count():  # after a run (a first run's page shows the form itself)
        new.click()
    only_user_class(page, "SpamViaSender")
    # The target too: the form shows what the last run picked (an earlier test aimed at Postfix).
    start_from_ui(page, {"target": "receiver", "tlsRatio": "0.7", "waveId": wave_id,
                         "userCount": str(users), "spawnRate": str(users)})


def _settled(read, what: str, *, every: float, tries: int):
    """What `read()` gives once two reads `every` seconds apart agree."""
    value = None
    for _ in range(tries):
        earlier, value = value, read()
        if value == earlier:
            return value
        time.sleep(every)
    raise AssertionError(f"{what} keep changing: {value}")


def _locust_accepted(locust_url: str) -> dict[str, int]:
    """Locust's count of the messages the senders told its users were accepted, per mode, once
    two reads 4 s apart agree (each worker reports every 3 s)."""
    def read() -> dict[str, int]:
        rows = {row["name"]: row["num_requests"] - row["num_failures"] for row in httpx.get(
            f"{locust_url}/stats/requests", timeout=10).json()["stats"]}
        return {"plain": rows.get("SMTP plain", 0), "starttls": rows.get("SMTP STARTTLS", 0)}

    return _settled(read, "Locust's counts", every=4, tries=15)


def _waves_with_a_fault(release: str, page, wave_id: str, fault, *,
                        api_wave: bool = False) -> dict:
    """Starts `wave_id` in the Locust UI (and, with `api_wave`, posts FAULT_WAVE to the
    senders' Service), runs `fault(the API wave's id or None)` 10 s in, stops the run 10 s after
    the fault is over and waits for the API wave to end. Returns the run's seconds, Locust's
    count and the API wave's id and status."""
    locust_url = f"http://{cluster_ip('tlsstorm-locust-master')}:8089"
    sender = f"http://{cluster_ip('tlsstorm-sender')}:8026"
    _start_in_the_ui(page, locust_url, wave_id, FAULT_USERS)
    started_at = time.monotonic()
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {_token(release)}"}) \
            as http:
        posted = None
        if api_wave:
            posted = http.post(f"{sender}/v1/waves", json=FAULT_WAVE)
            assert posted.status_code == 202, posted.text
            posted = posted.json()
        time.sleep(10)
        fault(posted and posted["id"])
        time.sleep(10)
        # After a rollout this is the new master, which has no run (the old one's ended with it).
        assert httpx.post(f"{locust_url}/stop", timeout=60).status_code == 200
        seconds = time.monotonic() - started_at
        status = None
        if posted:
            deadline = time.monotonic() + 180
            while (status := http.get(f"{sender}{posted['url']}").json()).get("status") \
                    == "running":
                assert time.monotonic() < deadline, status
                time.sleep(1)
            assert "status" in status, (status, kubectl("-n", release, "get", "pods", "-o",
                                                        "wide").stdout)
    return {"seconds": seconds, "locust": _locust_accepted(locust_url),
            "api_wave": posted and posted["id"], "api_status": status}


def _collector_account(wave_id: str) -> dict | None:
    """The receivers' sessions per mode in the collector and its delivery account of the wave
    (the senders' accepted messages against the receivers'), None before its first span."""
    summary = httpx.get(f"http://{cluster_ip('tlsstorm-collector')}:8027/v1/summary",
                        params={"wave": wave_id}, timeout=30)
    if summary.status_code == 404:
        return None
    body = summary.json()
    return {"sessions": {mode: body["receiver"][mode]["sessions"]
                         for mode in ("plain", "starttls")}, "delivery": body["delivery"]}


def _account_once(wave_id: str, ready) -> dict:
    """The collector's account of a wave once `ready(account, the read before)` holds, read
    every 3 s for up to 150 s."""
    deadline, earlier = time.monotonic() + 150, None
    while not ((account := _collector_account(wave_id)) and ready(account, earlier)):
        assert time.monotonic() < deadline, (wave_id, account)
        earlier = account
        time.sleep(3)
    return account


def _reconciled(wave_id: str, receivers: list[str], *, whole: bool,
                accepted: dict | None = None, locust: dict | None = None) -> dict:
    """Waits until the collector's account of the wave has settled (two reads 3 s apart agree)
    with the senders' spans of every message they were told was accepted (`accepted`: the
    senders' own account of an API wave) and (`whole`) the receivers' sessions of each; returns
    the accounts side by side, with the receivers' that run (their URLs) and Locust's count."""
    def arrived(account: dict, earlier: dict | None) -> bool:
        delivery = account["delivery"]
        return bool(delivery) and account == earlier and (
            accepted is None or delivery["accepted_by_senders"] == accepted) and (
            not whole or delivery["at_receivers"] == delivery["accepted_by_senders"])

    account = _account_once(wave_id, arrived)
    delivery = account["delivery"]
    at_receivers = {"plain": [0, 0], "starttls": [0, 0]}
    for stats in filter(None, (receiver_wave(url, wave_id) for url in receivers)):
        for mode, key in (("plain", "plain"), ("starttls", "tls")):
            at_receivers[mode][0] += stats[key]["sessions"]
            at_receivers[mode][1] += stats[key]["messages"]
    table = {"accepted by senders": delivery["accepted_by_senders"],
             "counted by Locust": locust,
             "at the receivers running": {mode: tuple(value)
                                          for mode, value in at_receivers.items()},
             "in the collector": {mode: (account["sessions"][mode],
                                         delivery["at_receivers"][mode])
                                  for mode in ("plain", "starttls")},
             "missing": delivery["missing_at_receivers"],
             "counted twice": delivery["extra_at_receivers"],
             "receiver starts": delivery["receiver_starts"]}
    print(f"{wave_id}: {json.dumps(table)}")
    return table


def _locust_agrees(table: dict) -> None:
    """Locust counts a message only when a sender told it the message was accepted, so the
    senders' spans hold at least as many; they hold more by at most the requests its users had
    in flight when the run was stopped (Locust drops their replies)."""
    for mode, counted in table["counted by Locust"].items():
        accepted = table["accepted by senders"][mode]
        assert 0 <= accepted - counted <= FAULT_USERS * LOCUST_BATCH, table


def _exactly_once(table: dict, *, at_receivers_running: bool = True) -> None:
    """Every message the senders were told was accepted is one session with its message in the
    collector (and at the receivers that run), none counted twice."""
    accepted = table["accepted by senders"]
    assert sum(accepted.values()) > 0, table
    for mode in ("plain", "starttls"):
        assert table["in the collector"][mode] == (accepted[mode], accepted[mode]), table
        if at_receivers_running:
            assert table["at the receivers running"][mode] == (accepted[mode],
                                                                accepted[mode]), table
    assert table["counted twice"] == {"plain": 0, "starttls": 0}, table


def _settled_waves(collector: str) -> dict[str, dict]:
    """The collector's waves once two reads 3 s apart agree (the last spans are in)."""
    return _settled(lambda: {entry["wave"]: entry for entry in httpx.get(
        f"{collector}/v1/waves", timeout=30).json()["waves"]}, "the collector's waves",
        every=3, tries=20)


def _receiver_pods(release: str) -> dict[str, str]:
    """Each receiver pod that is running and not terminating, by name, with its IP."""
    pods = json.loads(kubectl("-n", release, "get", "pods", "-l",
                              "app.kubernetes.io/component=receiver", "-o", "json").stdout)
    return {pod["metadata"]["name"]: pod["status"]["podIP"] for pod in pods["items"]
            if pod["status"].get("phase") == "Running"
            and not pod["metadata"].get("deletionTimestamp")}


def _collector_pod(release: str) -> str:
    return kubectl("-n", release, "get", "pods", "-l", "app.kubernetes.io/component=collector",
                   "-o", "jsonpath={.items[0].metadata.name}").stdout


@pytest.mark.parametrize("fault", ["deleted", "killed"])
def test_the_collector_deleted_or_killed_mid_wave_loses_nothing_and_keeps_its_history(
        release, browser_page, fault):
    """The collector's pod deleted 10 s into a Locust wave (its Deployment, Recreate on its
    volume, starts another) or its process killed (SIGKILL mid-write; the kubelet restarts it on
    the same volume): the receiver's and senders' exporters hold their spans and retry while it
    is away, and it acknowledges spans only once committed to SQLite. Afterwards senders,
    receiver and collector agree to the message, none counted twice, Locust's count agrees, and
    the waves the collector had before are as they were."""
    collector = f"http://{cluster_ip('tlsstorm-collector')}:8027"
    before = _settled_waves(collector)
    assert before, "earlier tests' waves are in the collector"
    pod = _collector_pod(release)

    wave_id = f"collector-{fault}"
    run_ = _waves_with_a_fault(release, browser_page, wave_id, lambda _: kubectl(
        "-n", release, "delete", "pod", pod, "--wait=false") if fault == "deleted"
        else _kill_container(release, pod))
    kubectl("-n", release, "rollout", "status", "deployment/tlsstorm-collector",
            "--timeout=180s")
    table = _reconciled(wave_id, [f"http://{cluster_ip('tlsstorm-receiver')}:8025"],
                        whole=True, locust=run_["locust"])

    _exactly_once(table)  # one message per session, from both ends' spans
    _locust_agrees(table)
    after = _settled_waves(collector)
    assert {wave_id: after[wave_id] for wave_id in before} == before


def _wave_taker(release: str, wave_id: str) -> str:
    """The sender pod the wave was posted to: it sends the wave's first share and answered
    for the whole wave until now (the share holder's case runs in tests/test_wave_spread.py)."""
    pods = json.loads(kubectl("-n", release, "get", "pods", "-l",
                              "app.kubernetes.io/component=sender", "-o", "json").stdout)
    for pod in pods["items"]:
        part = httpx.get(f"http://{pod['status']['podIP']}:8026/v1/waves/{wave_id}",
                         params={"part": "true"}, timeout=10)
        if part.status_code == 200 and part.json()["spec"]["share"] is None:
            return pod["metadata"]["name"]
    raise AssertionError(f"no sender took wave {wave_id}")


def test_a_sender_deleted_mid_wave_hands_in_its_part_and_loses_nothing(release, browser_page):
    """A Locust wave and a wave posted to the senders' API; 10 s in, the sender pod the API
    wave was posted to deleted: it turns not ready, answers the Locust requests it holds, stops
    its part of the API wave, lets its messages in flight end and hands its part's final
    figures to the other replica, which answers for the wave from then on. Every message
    either wave counts accepted is one session at the receiver and in the collector, exactly,
    from both ends' spans."""
    run_ = _waves_with_a_fault(release, browser_page, "sender-deleted", lambda wave_id: kubectl(
        "-n", release, "delete", "pod", _wave_taker(release, wave_id), "--wait=false"),
        api_wave=True)
    receiver = f"http://{cluster_ip('tlsstorm-receiver')}:8025"
    table = _reconciled("sender-deleted", [receiver], whole=True, locust=run_["locust"])
    _exactly_once(table)
    _locust_agrees(table)

    wave = run_["api_status"]
    assert wave["status"] == "stopped" and wave["done"] < FAULT_WAVE["count"], wave
    parts = {part["offset"]: part for part in wave["parts"]}
    assert (parts[0]["status"], parts[1]["status"]) == ("stopped", "completed"), wave
    # Its final figures: handed over, or read from it while it answered during its drain.
    assert parts[0]["done"] > 0, wave
    accepted = {"plain": wave["plain"]["ok"], "starttls": wave["tls"]["ok"]}
    assert sum(accepted.values()) == wave["done"], wave  # none failed
    _exactly_once(_reconciled(run_["api_wave"], [receiver], whole=True, accepted=accepted))


def test_a_receiver_deleted_mid_wave_drains_and_loses_nothing(release, browser_page):
    """Two receivers; one pod deleted 10 s into a Locust wave. It turns not ready, serves while
    the Service drops it, refuses new transactions (421, which the senders count as failed, not
    accepted), finishes the open ones and flushes its spans. Every message a sender was told
    was accepted is one session with its message in the collector, exactly; the receivers
    still running hold their share of them."""
    helm = str(ROOT / ".tools" / "bin" / "helm")
    run(helm, "upgrade", "tlsstorm", "charts/tlsstorm", "-n", release, "--reuse-values",
        "--set", "components.receiver.replicas=2", "--wait", "--timeout", "5m")
    pods = _receiver_pods(release)
    assert len(pods) == 2, pods
    deleted = sorted(pods)[0]

    run_ = _waves_with_a_fault(release, browser_page, "receiver-deleted", lambda _: kubectl(
        "-n", release, "delete", "pod", deleted, "--wait=false"))
    kubectl("-n", release, "wait", "--for=delete", f"pod/{deleted}", "--timeout=120s")
    table = _reconciled("receiver-deleted", [f"http://{ip}:8025" for ip in
                                             _receiver_pods(release).values()],
                        whole=True, locust=run_["locust"])

    _exactly_once(table, at_receivers_running=False)
    _locust_agrees(table)
    for mode in ("plain", "starttls"):
        # The running receivers hold part of them; the deleted one's were flushed as it went.
        assert table["at the receivers running"][mode][1] < \
            table["accepted by senders"][mode], table


def _kill_container(release: str, pod: str) -> None:
    """SIGKILL to the pod's container process, from the node (this host): no grace, no drain,
    what `kubectl delete --force` does not do (the kubelet still sends SIGTERM first)."""
    uid = kubectl("-n", release, "get", "pod", pod, "-o", "jsonpath={.metadata.uid}").stdout
    found = [int(pid) for pid in os.listdir("/proc") if pid.isdigit()
             and f"pod{uid}" in _read(f"/proc/{pid}/cgroup")
             and b"tlsstorm" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(found) == 1, found
    os.kill(found[0], signal.SIGKILL)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:  # the process ended meanwhile
        return ""


def test_a_receiver_killed_mid_wave_loses_at_most_its_unexported_spans_and_says_so(
        release, browser_page):
    """One of the two receivers' process killed (SIGKILL, as the OOM killer or a crash ends it;
    the kubelet restarts the container) 10 s into a Locust wave: the messages it had accepted
    but not yet exported are lost, a bounded number (its exporter sends every second), and the
    collector's report says how many of the senders' accepted messages have no receiver
    session and that a receiver restarted, instead of showing a smaller wave as if it were
    whole."""
    pods = _receiver_pods(release)
    assert len(pods) == 2, pods
    killed = sorted(pods)[0]

    run_ = _waves_with_a_fault(release, browser_page, "receiver-killed",
                               lambda _: _kill_container(release, killed))
    table = _reconciled("receiver-killed", [], whole=False, locust=run_["locust"])

    accepted = sum(table["accepted by senders"].values())
    missing = sum(table["missing"].values())
    # At most what it took since its last export and the sessions it had open: 3 s of the
    # wave's mean rate. None when the kill lands just after an export and its open sessions
    # fail at the senders (seen once in about ten runs): the restart is still said.
    assert 0 <= missing <= 3 * accepted / run_["seconds"], table
    assert table["counted twice"] == {"plain": 0, "starttls": 0}, table
    assert table["receiver starts"] >= 1, table
    _locust_agrees(table)
    report = html.unescape(httpx.get(f"http://{cluster_ip('tlsstorm-collector')}:8027/",
                                     params={"wave": "receiver-killed"}, timeout=30).text)
    assert (f"INCOMPLETE: of the {accepted:,} messages the senders were told were accepted, "
            f"{missing:,} have no receiver session here" if missing else
            f"Every one of the {accepted:,} messages the senders were told were accepted is "
            "in a receiver's session here") in report
    assert "started meanwhile (a restart)" in report


def _pods_by_annotation(release: str, key: str) -> dict[str, str | None]:
    """Each tlsstorm pod that is not terminating (not the MTA targets, which are no tlsstorm
    component, nor helm test's), by name, with its value of a pod annotation."""
    pods = json.loads(kubectl("-n", release, "get", "pods", "-o", "json").stdout)
    return {pod["metadata"]["name"]: (pod["metadata"].get("annotations") or {}).get(key)
            for pod in pods["items"] if not pod["metadata"].get("deletionTimestamp")
            and not re.search(r"-(test|exim-.*|postfix-.*)$", pod["metadata"]["name"])}


def test_a_helm_upgrade_rolling_every_component_mid_wave_loses_nothing(release, browser_page):
    """`helm upgrade` 10 s into a Locust wave and a wave posted to the senders' API, with a pod
    annotation changed, as a new release does: every Deployment rolls, one pod of a replicated
    component away before its successor comes (two receivers, two senders, Locust's master
    and workers, Jaeger; the collector Recreated on its volume). The Locust run ends with its
    master. The senders stop in turn and hand every part of the API wave they know on, so their
    successors answer for the whole wave. Every message the senders were told was accepted, in
    either wave, is one session in the collector from both ends' spans, none counted twice,
    and its earlier waves are intact."""
    collector = f"http://{cluster_ip('tlsstorm-collector')}:8027"
    before = _settled_waves(collector)
    old = set(_pods_by_annotation(release, "tlsstorm.io/rollout"))
    helm = str(ROOT / ".tools" / "bin" / "helm")

    run_ = _waves_with_a_fault(release, browser_page, "rollout", lambda _: run(
        helm, "upgrade", "tlsstorm", "charts/tlsstorm", "-n", release, "--reuse-values",
        "--set-string", "default.podAnnotations.tlsstorm\\.io/rollout=1", "--wait",
        "--timeout", "5m", timeout=360), api_wave=True)
    now = _pods_by_annotation(release, "tlsstorm.io/rollout")
    assert not old & set(now) and set(now.values()) == {"1"}, (old, now)
    # Locust's count went with its replaced master: the senders' and receivers' spans are all.
    _exactly_once(_reconciled("rollout", [], whole=True), at_receivers_running=False)

    wave = run_["api_status"]
    assert [part["offset"] for part in wave["parts"]] == [0, 1], wave
    assert {part["status"] for part in wave["parts"]} <= {"completed", "stopped"}, wave
    accepted = {"plain": wave["plain"]["ok"], "starttls": wave["tls"]["ok"]}
    _exactly_once(_reconciled(run_["api_wave"], [], whole=True, accepted=accepted),
                  at_receivers_running=False)
    after = _settled_waves(collector)
    assert {wave_id: after[wave_id] for wave_id in before} == before


def test_a_locust_worker_killed_mid_wave_loses_no_accepted_message(release, browser_page):
    """A wave started in the Locust UI (20 users at 70% STARTTLS through the senders); 10 s in,
    one worker's process killed (SIGKILL; the kubelet restarts it and it rejoins the master).
    The requests its users had in flight were the senders' to finish: every message the senders
    were told was accepted is one session in the collector, none counted twice. What is lost is
    Locust's own count of what the killed worker had not reported yet (a worker reports every
    3 s): bounded, and shown as the difference between Locust's figures and the collector's."""
    locust_url = f"http://{cluster_ip('tlsstorm-locust-master')}:8089"
    _start_in_the_ui(browser_page, locust_url, "worker-killed", 20)
    time.sleep(10)
    workers = json.loads(kubectl("-n", release, "get", "pods", "-l",
                                 "app.kubernetes.io/component=locust-worker", "-o",
                                 "json").stdout)["items"]
    _kill_container(release, sorted(pod["metadata"]["name"] for pod in workers)[0])
    time.sleep(10)
    assert httpx.post(f"{locust_url}/stop", timeout=60).status_code == 200
    in_locust = _locust_accepted(locust_url)
    table = _reconciled("worker-killed", [], whole=True, locust=in_locust)

    _exactly_once(table, at_receivers_running=False)
    accepted = table["accepted by senders"]
    lost = {mode: accepted[mode] - in_locust[mode] for mode in accepted}
    print(f"worker killed: lost from Locust's count {lost}")
    # Locust never counts a message the senders did not accept; it misses at most the killed
    # worker's unreported 3 s and its users' batches in flight: under a quarter of a 20 s
    # wave that worker carried half of.
    assert all(lost[mode] >= 0 for mode in lost), lost
    assert sum(lost.values()) < sum(accepted.values()) / 4, lost


def test_cluster_down_puts_the_host_back(cluster):
    down = run("make", "cluster-down", timeout=300)
    assert "down:" in down.stderr
    assert host_state() == cluster
    assert not STATE.exists()
    leftovers = subprocess.run(["pgrep", "-af", str(STATE)], capture_output=True, text=True)
    assert leftovers.stdout == "", leftovers.stdout
