#!/usr/bin/env bash
# A single-node Kubernetes on this machine, from upstream parts and without a registry, in the
# manner of Kubernetes' own hack/local-up-cluster.sh: etcd, kube-apiserver, controller-manager,
# scheduler, kubelet on containerd + runc, kube-proxy (iptables), CoreDNS, and kube-router's
# firewall enforcing NetworkPolicies (iptables and ipset; kube-network-policies needs nftables'
# queue expression, which this kernel lacks). Kubernetes, CoreDNS, kube-router and Jaeger are
# built from their Go modules (scripts/go-build.sh); containerd, runc, etcd, the CNI plugins,
# iptables and ipset are Debian packages. Images are imported into containerd from tarballs.
#
#   scripts/cluster.sh up      start it (as root); writes the context "tlsstorm-local" into
#                              ~/.kube/config and the chart values this cluster needs
#   scripts/cluster.sh load    import the tlsstorm image of this checkout (IMAGE:TAG)
#   scripts/cluster.sh down    stop every process it started, remove what it added to the host
#   scripts/cluster.sh status
#
# Addresses stay in 198.18.0.0/15 (benchmarking range), routed only to the node's bridges:
# node 198.18.0.1 on the port-less bridge tsnode0, pods 198.18.64.0/24 on tscni0, services
# 198.19.0.0/16 (API 198.19.0.1, DNS 198.19.0.10).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/.tools/bin
state=${TLSSTORM_CLUSTER_DIR:-/var/lib/tlsstorm-cluster}
image=${IMAGE:-tlsstorm}:${TAG:-$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null || echo dev)}
node=tlsstorm-node
node_ip=198.18.0.1
pod_cidr=198.18.64.0/24
pod_gateway=198.18.64.1
cluster_cidr=198.18.64.0/18
service_cidr=198.19.0.0/16
api_ip=198.19.0.1
dns_ip=198.19.0.10
context=tlsstorm-local
base_image=local/python-base:bookworm
export PATH=$bin:$PATH
# Sysctls this cluster (or its kubelet) changes; their values before `up` are put back by `down`.
sysctls="net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables vm.overcommit_memory kernel.panic kernel.panic_on_oops"
# What `up` starts, in the order `down` stops it.
services="kube-router kube-proxy kubelet kube-scheduler kube-controller-manager kube-apiserver containerd etcd"
debs="containerd runc etcd-server containernetworking-plugins iptables ipset conntrack nftables"

log() { echo "cluster: $*" >&2; }
die() { log "$*"; exit 1; }
ctr_() { ctr --address "$state/run/containerd.sock" -n k8s.io "$@"; }
kube() { kubectl --kubeconfig "$state/admin.kubeconfig" "$@"; }

versions() {  # the pinned versions, from the go.mod files
    k8s=$(cd "$root/gobuild/kube" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
    coredns=$(cd "$root/gobuild/coredns" && go list -m -f '{{.Version}}' github.com/coredns/coredns)
    provisioner=$(cd "$root/gobuild/local-path-provisioner" &&
        go list -m -f '{{.Version}}' github.com/rancher/local-path-provisioner)
    jaeger=$("$bin/jaeger" version 2>/dev/null | sed -n 's/.*"gitVersion":"v\([^"]*\)".*/\1/p')
    [ -n "$jaeger" ] || die "$bin/jaeger names no version: rebuild it (scripts/go-build.sh jaeger)"
}

ensure_debs() {
    local missing=""
    for deb in $debs; do dpkg -s "$deb" >/dev/null 2>&1 || missing="$missing $deb"; done
    [ -z "$missing" ] && return
    log "installing Debian packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 $missing >/dev/null
}

ensure_binaries() {
    local missing=""
    for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
        [ -x "$bin/$b" ] || missing="kube"
    done
    [ -x "$bin/coredns" ] || missing="$missing coredns"
    [ -x "$bin/kube-router" ] || missing="$missing kube-router"
    [ -x "$bin/jaeger" ] || missing="$missing jaeger"
    [ -x "$bin/local-path-provisioner" ] || missing="$missing local-path-provisioner"
    [ -x "$bin/pause" ] || missing="$missing pause"
    if [ -n "$missing" ]; then "$root/scripts/go-build.sh" $missing; fi
}

start() {  # start NAME COMMAND...: in its own session, log and pid under $state
    local name=$1; shift
    setsid "$@" >"$state/log/$name.log" 2>&1 < /dev/null &
    echo $! >"$state/run/$name.pid"
}

alive() {  # alive NAME: what `start` recorded for NAME still runs (and is NAME, not a reused pid)
    local pid
    pid=$(cat "$state/run/$1.pid" 2>/dev/null) || return 1
    [ "$(basename "$(readlink "/proc/$pid/exe" 2>/dev/null)")" = "$1" ]
}

wait_for() {  # wait_for WHAT SECONDS COMMAND...
    local what=$1 seconds=$2; shift 2
    for _ in $(seq "$seconds"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    die "$what not ready after ${seconds}s; logs in $state/log"
}

pki() {  # a CA and one certificate per component, ECDSA P-256
    local dir=$state/pki
    mkdir -p "$dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
        -subj "/CN=tlsstorm-local-ca" -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
    openssl ecparam -name prime256v1 -genkey -noout -out "$dir/sa.key"
    openssl ec -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
    cert apiserver "/CN=kube-apiserver" "serverAuth" \
        "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:$api_ip,IP:$node_ip,IP:127.0.0.1"
    cert kubelet "/CN=$node" "serverAuth" "DNS:$node,IP:$node_ip"
    cert admin "/O=system:masters/CN=tlsstorm-admin" clientAuth
    cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
    cert controller-manager "/CN=system:kube-controller-manager" clientAuth
    cert scheduler "/CN=system:kube-scheduler" clientAuth
    cert kubelet-client "/O=system:nodes/CN=system:node:$node" clientAuth
    cert kube-proxy "/CN=system:kube-proxy" clientAuth
    cert kube-router "/CN=tlsstorm:kube-router" clientAuth
}

cert() {  # cert NAME SUBJECT USAGE [SANS]
    local dir=$state/pki name=$1 subject=$2 usage=$3 sans=${4:-}
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "$subject" \
        -keyout "$dir/$name.key" -out "$dir/$name.csr" 2>/dev/null
    {
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$usage"
        if [ -n "$sans" ]; then echo "subjectAltName=$sans"; fi
    } >"$dir/$name.ext"
    openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
        -CAcreateserial -days 30 -extfile "$dir/$name.ext" -out "$dir/$name.crt" 2>/dev/null
    rm -f "$dir/$name.csr" "$dir/$name.ext"
}

kubeconfig() {  # kubeconfig NAME: a kubeconfig with NAME's client certificate
    local name=$1
    cat >"$state/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: $context
  cluster:
    server: https://$node_ip:6443
    certificate-authority-data: $(base64 -w0 "$state/pki/ca.crt")
users:
- name: $context-$name
  user:
    client-certificate-data: $(base64 -w0 "$state/pki/$name.crt")
    client-key-data: $(base64 -w0 "$state/pki/$name.key")
contexts:
- name: $context
  context: {cluster: $context, user: $context-$name}
current-context: $context
EOF
}

# Host folders the kubelet and the CNI plugins make at fixed paths whatever their settings say
# (the device plugins' socket folder; the CNI results cache): `down` removes those it made.
host_dirs="/var/lib/kubelet /var/lib/cni"

network() {
    for name in $sysctls; do echo "$name=$(sysctl -n "$name")"; done >"$state/sysctl.before"
    for dir in $host_dirs; do [ -e "$dir" ] && echo "$dir"; done >"$state/host-dirs.before" || true
    # Before anything here uses iptables: on a host where nothing had, iptables-nft creates its
    # tables now, and `down` removes them again.
    python3 "$root/scripts/iptables-tables.py" record "$state/iptables-tables.before"
    { iptables-save; ip6tables-save; ipset list -n; } | grep -c '^:\?KUBE-' >"$state/kube-chains.before" || true
    sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
    ls /run/netns 2>/dev/null >"$state/netns.before" || true
    veth_links >"$state/veth.before"
    # There is no dummy interface type here: a bridge without ports holds the node's address.
    ip link add tsnode0 type bridge
    ip addr add "$node_ip/24" dev tsnode0
    ip link set tsnode0 up
    ip route add "$service_cidr" dev tsnode0 src "$node_ip"
    mkdir -p "$state/cni/net.d" "$state/cni/ipam"
    cat >"$state/cni/net.d/10-tlsstorm.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "tlsstorm", "plugins": [
  {"type": "bridge", "bridge": "tscni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$state/cni/ipam",
            "ranges": [[{"subnet": "$pod_cidr", "gateway": "$pod_gateway"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}}]}
EOF
}

runc_wrapper() {
    # runc sets each container's oom_score_adj; the kubelet asks for negative values, which a
    # root without CAP_SYS_RESOURCE may not set ("can't get final child's PID from pipe: EOF").
    # Where that is so, the wrapper clamps them to 0 in the bundle before runc reads it.
    local clamp=false
    if ! (echo -1 >/proc/self/oom_score_adj) 2>/dev/null; then clamp=true; fi
    mkdir -p "$state/bin"
    cat >"$state/bin/runc" <<EOF
#!/bin/sh
bundle=.
previous=
for argument in "\$@"; do
    case \$previous in --bundle|-b) bundle=\$argument ;; esac
    case \$argument in --bundle=*) bundle=\${argument#--bundle=} ;; esac
    previous=\$argument
done
if $clamp && [ -f "\$bundle/config.json" ]; then
    sed -i 's/"oomScoreAdj":-[0-9]*/"oomScoreAdj":0/' "\$bundle/config.json"
fi
exec $(command -v runc) "\$@"
EOF
    chmod +x "$state/bin/runc"
}

containerd_() {
    cat >"$state/containerd.toml" <<EOF
version = 2
root = "$state/containerd/root"
state = "$state/containerd/state"
[grpc]
  address = "$state/run/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$state/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/tlsstorm/pause:$k8s"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$state/bin/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$state/cni/net.d"
EOF
    start containerd containerd --config "$state/containerd.toml"
    wait_for containerd 30 ctr_ version
}

import_archive() {  # import_archive REFERENCE ENTRYPOINT SOURCE:TARGET...
    local reference=$1 entrypoint=$2; shift 2
    local args=()
    for file in "$@"; do args+=(--file "$file"); done
    python3 "$root/scripts/image-archive.py" "$reference" --entrypoint "$entrypoint" "${args[@]}" \
        -o "$state/image.tar"
    ctr_ images import --no-unpack=false "$state/image.tar" >/dev/null
    rm -f "$state/image.tar"
}

images() {  # the images the cluster itself runs, each a static binary built here
    import_archive "localhost/tlsstorm/pause:$k8s" /pause "$bin/pause:/pause"
    import_archive "localhost/tlsstorm/coredns:$coredns" /coredns "$bin/coredns:/coredns"
    import_archive "localhost/tlsstorm/jaeger:$jaeger" /jaeger "$bin/jaeger:/jaeger"
    import_archive "localhost/tlsstorm/local-path-provisioner:$provisioner" \
        /local-path-provisioner "$bin/local-path-provisioner:/local-path-provisioner"
}

control_plane() {
    local pki=$state/pki
    mkdir -p "$state/etcd"
    # Ports beside etcd's defaults: Debian's etcd-server starts its own where systemd runs.
    start etcd etcd --name "$node" --data-dir "$state/etcd" \
        --listen-client-urls http://127.0.0.1:12379 --advertise-client-urls http://127.0.0.1:12379 \
        --listen-peer-urls http://127.0.0.1:12380 --initial-advertise-peer-urls http://127.0.0.1:12380 \
        --initial-cluster "$node=http://127.0.0.1:12380"
    wait_for etcd 30 curl -fsS http://127.0.0.1:12379/health
    start kube-apiserver kube-apiserver --etcd-servers http://127.0.0.1:12379 \
        --bind-address "$node_ip" --advertise-address "$node_ip" --secure-port 6443 \
        --service-cluster-ip-range "$service_cidr" --authorization-mode Node,RBAC \
        --enable-admission-plugins NodeRestriction --allow-privileged=true \
        --client-ca-file "$pki/ca.crt" --tls-cert-file "$pki/apiserver.crt" \
        --tls-private-key-file "$pki/apiserver.key" \
        --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
        --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
        --kubelet-certificate-authority "$pki/ca.crt" --kubelet-preferred-address-types InternalIP \
        --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
        --service-account-issuer https://kubernetes.default.svc.cluster.local --profiling=false
    wait_for kube-apiserver 90 kube get --raw /readyz
    start kube-controller-manager kube-controller-manager \
        --kubeconfig "$state/controller-manager.kubeconfig" --bind-address 127.0.0.1 \
        --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
        --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
        --use-service-account-credentials --service-cluster-ip-range "$service_cidr" \
        --leader-elect=false --profiling=false
    start kube-scheduler kube-scheduler --kubeconfig "$state/scheduler.kubeconfig" \
        --bind-address 127.0.0.1 --leader-elect=false --profiling=false
}

node_() {
    mkdir -p "$state/kubelet"
    cat >"$state/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The kubelet refuses a cgroup v1 host (this kind of machine) unless told; harmless on v2.
failCgroupV1: false
cgroupDriver: cgroupfs
address: $node_ip
healthzBindAddress: 127.0.0.1
containerRuntimeEndpoint: unix://$state/run/containerd.sock
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $state/pki/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $state/pki/kubelet.crt
tlsPrivateKeyFile: $state/pki/kubelet.key
clusterDomain: cluster.local
clusterDNS: [$dns_ip]
resolvConf: /etc/resolv.conf
failSwapOn: false
podCIDR: $pod_cidr
serializeImagePulls: false
# Images here come from tarballs, not a registry: one the kubelet garbage-collects cannot come
# back. So no image GC, and eviction only when the disk is nearly full.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 2Gi, imagefs.available: 2Gi}
EOF
    start kubelet kubelet --config "$state/kubelet.yaml" --kubeconfig "$state/kubelet-client.kubeconfig" \
        --root-dir "$state/kubelet" --hostname-override "$node" --node-ip "$node_ip"
    # Zero leaves the host's conntrack limits and timeouts as they are.
    start kube-proxy kube-proxy --kubeconfig "$state/kube-proxy.kubeconfig" --proxy-mode iptables \
        --hostname-override "$node" --cluster-cidr "$cluster_cidr" \
        --healthz-bind-address 127.0.0.1:10256 --metrics-bind-address 127.0.0.1:10249 \
        --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 \
        --conntrack-tcp-timeout-close-wait 0 --iptables-localhost-nodeports=false
    wait_for "node $node" 120 kube wait --for condition=Ready "node/$node" --timeout 1s
}

firewall() {  # kube-router as the NetworkPolicy enforcer only (no routing, no service proxy)
    kube apply -f "$root/deploy/cluster/kube-router-rbac.yaml" >/dev/null
    start kube-router kube-router --kubeconfig "$state/kube-router.kubeconfig" \
        --run-firewall=true --run-router=false --run-service-proxy=false --enable-cni=false \
        --hostname-override "$node" --service-cluster-ip-range "$service_cidr" \
        --health-port 20244 --metrics-port 0
    wait_for kube-router 60 curl -fsS http://127.0.0.1:20244/healthz
}

addons() {
    sed -e "s|@DNS_IP@|$dns_ip|g" -e "s|@COREDNS_IMAGE@|localhost/tlsstorm/coredns:$coredns|g" \
        "$root/deploy/cluster/coredns.yaml" | kube apply -f - >/dev/null
    kube -n kube-system rollout status deployment/coredns --timeout 120s >/dev/null
    # The default StorageClass; its helper pods make and remove volume directories with the
    # Debian base image's shell.
    docker save "$base_image" | ctr_ images import - >/dev/null
    sed -e "s|@PROVISIONER_IMAGE@|localhost/tlsstorm/local-path-provisioner:$provisioner|g" \
        -e "s|@VOLUMES@|$state/volumes|g" -e "s|@HELPER_IMAGE@|$base_image|g" \
        "$root/deploy/cluster/local-path-storage.yaml" | kube apply -f - >/dev/null
    kube -n local-path-storage rollout status deployment/local-path-provisioner --timeout 120s \
        >/dev/null
    # What `make deploy` adds on this cluster: Jaeger as built here.
    cat >"$state/values.yaml" <<EOF
jaeger:
  image: {repository: localhost/tlsstorm/jaeger, tag: "$jaeger", pullPolicy: Never}
EOF
}

user_kubeconfig() {  # merge the admin context into ~/.kube/config, as kind does
    local file=$HOME/.kube/config
    mkdir -p "$HOME/.kube"
    KUBECONFIG=$file:$state/admin.kubeconfig kubectl config view --flatten >"$state/merged"
    install -m 600 "$state/merged" "$file"
    rm -f "$state/merged"
    kubectl --kubeconfig "$file" config use-context "$context" >/dev/null
}

load() {  # the tlsstorm image of this checkout, built with Docker, into containerd
    [ -S "$state/run/containerd.sock" ] || die "no cluster: run scripts/cluster.sh up"
    "$root/scripts/dockerd.sh"
    "$root/scripts/base-image.sh" "$base_image"
    # pip in the build trusts what this host trusts (some networks re-sign HTTPS).
    local bundle=${EXTRA_CA:-}
    if [ -z "$bundle" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        bundle=/etc/ssl/certs/ca-certificates.crt
    fi
    IMAGE_REPOSITORY=${image%:*} IMAGE_TAG=${image##*:} BASE_IMAGE=local/python-base:bookworm \
        EXTRA_CA=$bundle "$root/scripts/build-image.sh" >"$state/log/image-build.log" 2>&1 ||
        die "image build failed; see $state/log/image-build.log"
    docker save "$image" | ctr_ images import - >/dev/null
    log "imported $image"
}

remove_kube_chains() {
    # The kubelet's chains (KUBE-FIREWALL, canaries), kube-router's and whatever kube-proxy's
    # --cleanup left, unless the host had KUBE-* chains or sets before `up` (then they are not
    # all ours: left alone).
    if [ "$(cat "$state/kube-chains.before" 2>/dev/null || echo 1)" != 0 ]; then
        log "KUBE-* iptables chains were there before up: not removing any"; return
    fi
    local ipt table chain rule
    for ipt in iptables ip6tables; do
        for table in filter nat mangle; do
            "$ipt-save" -t "$table" | { grep -E '^-A [A-Z]+ .*-j KUBE-' || true; } | sed 's/^-A/-D/' |
                while read -r rule; do eval "$ipt -t $table $rule" || true; done
            for chain in $("$ipt-save" -t "$table" | sed -n 's/^:\(KUBE-[^ ]*\).*/\1/p'); do
                "$ipt" -t "$table" -F "$chain"
            done
            for chain in $("$ipt-save" -t "$table" | sed -n 's/^:\(KUBE-[^ ]*\).*/\1/p'); do
                "$ipt" -t "$table" -X "$chain"
            done
        done
    done
    # kube-router's ipsets, once no rule refers to them.
    for set in $(ipset list -n 2>/dev/null | grep '^KUBE-' || true); do ipset destroy "$set"; done
}

up() {
    [ "$(id -u)" = 0 ] || die "needs root (it starts the kubelet and containerd)"
    if [ -e "$state" ]; then
        for name in $services; do
            if alive "$name"; then die "a cluster is up ($name runs): scripts/cluster.sh down first"; fi
        done
        # A run killed mid-way (a CI job cancelled, a machine restarted) leaves bridges, tables
        # and folders but no process: what it changed is undone before starting afresh.
        log "$state was left by a cluster none of whose processes runs: taking it down first"
        down
    fi
    local t0=$SECONDS
    trap '[ $? = 0 ] || log "up failed; make cluster-down (scripts/cluster.sh down) removes what it started"' EXIT
    ensure_debs
    ensure_binaries
    versions
    mkdir -p "$state/run" "$state/log"
    # What the user's home had, before the first kubectl call below makes ~/.kube/cache: `down`
    # removes the kubeconfig it made once empty, and the folder with kubectl's cache.
    [ -e "$HOME/.kube/config" ] || touch "$state/kubeconfig.created"
    [ -e "$HOME/.kube" ] || touch "$state/kube-dir.created"
    pki
    for name in admin controller-manager scheduler kubelet-client kube-proxy kube-router; do
        kubeconfig "$name"
    done
    network
    runc_wrapper
    containerd_
    images
    "$root/scripts/dockerd.sh"
    "$root/scripts/base-image.sh" "$base_image"
    control_plane
    node_
    firewall
    addons
    load
    user_kubeconfig
    log "Kubernetes $k8s up in $((SECONDS - t0)) s: context $context (kubectl get nodes); logs in $state/log"
}

veth_links() {
    ip -o link show type veth 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1
}

down() {
    [ -d "$state" ] || { log "no cluster at $state"; return 0; }
    # Containers first, while containerd still runs, so their mounts and netns go with them.
    if [ -S "$state/run/containerd.sock" ]; then
        pkill -TERM -F "$state/run/kubelet.pid" 2>/dev/null || true
        for task in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s KILL "$task" 2>/dev/null || true; done
        sleep 1
        for task in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$task" >/dev/null 2>&1 || true; done
        for c in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$c" >/dev/null 2>&1 || true; done
    fi
    # Each service was started in its own session: the session goes, helpers included.
    for name in $services; do
        if [ -f "$state/run/$name.pid" ]; then
            kill -TERM -- "-$(cat "$state/run/$name.pid")" 2>/dev/null || true
        fi
    done
    sleep 2
    # containerd's shims left their sessions on purpose (they outlive containerd restarts).
    pkill -KILL -f -- "-address $state/run/containerd.sock" 2>/dev/null || true
    for name in $services; do
        if [ -f "$state/run/$name.pid" ]; then
            kill -KILL -- "-$(cat "$state/run/$name.pid")" 2>/dev/null || true
        fi
    done
    kube-proxy --cleanup >/dev/null 2>&1 || true
    remove_kube_chains
    if [ -f "$state/iptables-tables.before" ]; then
        python3 "$root/scripts/iptables-tables.py" remove-new "$state/iptables-tables.before"
    fi
    for ns in $(ls /run/netns 2>/dev/null); do
        grep -qx "$ns" "$state/netns.before" 2>/dev/null || ip netns delete "$ns" 2>/dev/null || true
    done
    # A pod's veth goes with its netns, which the kernel tears down in the background, later
    # than this: the ones made since up that are still here are deleted now (with their pair).
    if [ -f "$state/veth.before" ]; then
        for link in $(veth_links); do
            grep -qx "$link" "$state/veth.before" || ip link delete "$link" 2>/dev/null || true
        done
    fi
    ip link delete tscni0 2>/dev/null || true
    ip link delete tsnode0 2>/dev/null || true
    if [ -f "$state/host-dirs.before" ]; then
        for dir in $host_dirs; do
            grep -qx "$dir" "$state/host-dirs.before" || rm -rf "$dir"
        done
    fi
    # Volumes the kubelet mounted (secrets, projected tokens) and leftover rootfs mounts.
    for target in $(findmnt -rn -o TARGET | grep "^$state/" | sort -r); do
        umount -l "$target" 2>/dev/null || true
    done
    for controller in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
        [ -d "$controller" ] && find "$controller" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
    if [ -f "$state/sysctl.before" ]; then
        while read -r setting; do sysctl -qw "$setting" 2>/dev/null || true; done <"$state/sysctl.before"
    fi
    if [ -f "$HOME/.kube/config" ]; then
        kubectl --kubeconfig "$HOME/.kube/config" config delete-context "$context" >/dev/null 2>&1 || true
        kubectl --kubeconfig "$HOME/.kube/config" config delete-cluster "$context" >/dev/null 2>&1 || true
        kubectl --kubeconfig "$HOME/.kube/config" config delete-user "$context-admin" >/dev/null 2>&1 || true
        if [ "$(kubectl --kubeconfig "$HOME/.kube/config" config current-context 2>/dev/null)" = "$context" ]; then
            kubectl --kubeconfig "$HOME/.kube/config" config unset current-context >/dev/null
        fi
        if [ -f "$state/kubeconfig.created" ] &&
            [ -z "$(kubectl --kubeconfig "$HOME/.kube/config" config get-contexts -o name 2>/dev/null)" ]; then
            rm -f "$HOME/.kube/config"
        fi
    fi
    # kubectl's discovery cache goes with the folder this cluster made (unless a kubeconfig of
    # the user's is in it now).
    if [ -f "$state/kube-dir.created" ] && [ ! -e "$HOME/.kube/config" ]; then
        rm -rf "$HOME/.kube"
    fi
    rm -rf "$state"
    log "down: processes stopped; bridges, routes, netns, mounts, iptables tables, sysctls and ~/.kube restored"
}

status() {
    [ -d "$state/run" ] || { echo "no cluster"; return 1; }
    for name in $services; do
        if alive "$name"; then echo "$name running"; else echo "$name STOPPED"; fi
    done
    kube get nodes -o wide
}

case ${1:-} in
up) up ;;
down) down ;;
load) versions; load ;;
status) status ;;
*) echo "usage: $0 up|load|down|status" >&2; exit 2 ;;
esac
