#!/usr/bin/env bash
# A real Kubernetes 1.20 control plane on this machine for the integration
# tests (Debian 12, root, no systemd, no container runtime): etcd from Debian's
# etcd-server, kube-apiserver, kube-controller-manager and kube-scheduler built
# from Debian's kubernetes source package, and a stand-in node agent
# (tests/k8s/node_agent.py) that runs the pods bound to its node as local
# processes, since no image can be pulled here.
#
#   scripts/k8s-cluster.sh up|down|status|env|build
#   scripts/k8s-cluster.sh stop|start apiserver|agent
#
#   up      install the Debian packages that are missing, build the three
#           binaries once (cached), write certificates and configs, start
#           etcd, the control plane and the node agent, wait until the node
#           is Ready; cheap and idempotent when everything is already up
#   down    stop every process (binaries, certificates and data stay)
#   status  say which parts are up (exit status 1 if any is down)
#   env     print the KEY=VALUE lines of $STATE_DIR/k8s.env
#   build   only build (or find in the cache) the three binaries
#   stop/start apiserver|agent
#           stop or start one part of a running cluster (fault tests; the API
#           server is killed at once, as in a crash)
#
# $STATE_DIR/k8s.env holds KEY=VALUE lines (no quotes, no export) that the test
# suite reads; it exists only while the cluster is up.
#
# Logs: /var/tmp/jobbridge-test/k8s/log/*.log; build log:
# /var/cache/jobbridge-k8s/build.log.
#
# Settings (environment): JOBBRIDGE_K8S_CACHE (/var/cache/jobbridge-k8s),
# JOBBRIDGE_TEST_K8S_PORT (6443), JOBBRIDGE_TEST_K8S_ETCD_PORT (23790),
# JOBBRIDGE_TEST_K8S_KUBELET_PORT (10250), JOBBRIDGE_TEST_READY_TIMEOUT (90 s),
# JOBBRIDGE_K8S_PYTHON (the interpreter of the node agent: /usr/bin/python3).

set -Eeuo pipefail
trap 'printf "[k8s-cluster] ERROR: command failed (line %s): %s\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$SCRIPT_DIR")
readonly SCRIPT_DIR REPO_DIR

readonly STATE_DIR=/var/tmp/jobbridge-test
readonly ENV_FILE=$STATE_DIR/k8s.env
readonly K8S_DIR=$STATE_DIR/k8s
readonly PKI_DIR=$K8S_DIR/pki
readonly LOG_DIR=$K8S_DIR/log
readonly RUN_DIR=$K8S_DIR/run
readonly ETCD_DATA=$K8S_DIR/etcd
readonly AGENT_WORK=$K8S_DIR/agent
readonly READY_TIMEOUT=${JOBBRIDGE_TEST_READY_TIMEOUT:-90}

readonly CACHE_DIR=${JOBBRIDGE_K8S_CACHE:-/var/cache/jobbridge-k8s}
readonly SRC_PACKAGE=kubernetes
readonly BINARIES=(kube-apiserver kube-controller-manager kube-scheduler)
readonly BUILD_LOG=$CACHE_DIR/build.log
readonly DEB_SRC_LIST=/etc/apt/sources.list.d/jobbridge-k8s-src.sources
readonly REFLECT2_SRC=/usr/share/gocode/src/github.com/modern-go/reflect2

readonly API_PORT=${JOBBRIDGE_TEST_K8S_PORT:-6443}
readonly ETCD_PORT=${JOBBRIDGE_TEST_K8S_ETCD_PORT:-23790}
readonly ETCD_PEER_PORT=$((ETCD_PORT + 10))
readonly KUBELET_PORT=${JOBBRIDGE_TEST_K8S_KUBELET_PORT:-10250}
readonly SERVICE_RANGE=10.96.0.0/24
readonly NODE_NAME=jobbridge-node
readonly NODE_CPUS=${JOBBRIDGE_TEST_K8S_NODE_CPUS:-16}
readonly NODE_MEMORY=${JOBBRIDGE_TEST_K8S_NODE_MEMORY:-32Gi}
readonly AGENT_PYTHON=${JOBBRIDGE_K8S_PYTHON:-/usr/bin/python3}
readonly AGENT_SCRIPT=$REPO_DIR/tests/k8s/node_agent.py
readonly API_URL=https://127.0.0.1:$API_PORT

readonly PROCESSES=(etcd apiserver controller-manager scheduler agent)

export DEBIAN_FRONTEND=noninteractive

# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

log() { printf '[k8s-cluster] %s\n' "$*" >&2; }

die() {
    printf '[k8s-cluster] ERROR: %s\n' "$*" >&2
    exit 1
}

die_with_log() {
    local message=$1 logfile=$2
    printf '[k8s-cluster] ERROR: %s\n' "$message" >&2
    if [[ -r $logfile ]]; then
        printf -- '----- last lines of %s -----\n' "$logfile" >&2
        tail -n 40 "$logfile" >&2 || true
    fi
    exit 1
}

is_installed() {
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

ensure_packages() {
    local pkg missing=()
    for pkg in "$@"; do
        is_installed "$pkg" || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    log "installing ${missing[*]}"
    # package scripts must not start etcd as a system service (no init system here)
    local policy_created=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        policy_created=1
    fi
    local status=0
    { apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } \
        || status=$?
    if ((policy_created)); then
        rm -f /usr/sbin/policy-rc.d
    fi
    ((status == 0)) || die "could not install ${missing[*]}"
}

# The source package needs a deb-src entry; Debian 12 images ship only deb.
ensure_deb_src() {
    if apt-cache showsrc "$SRC_PACKAGE" 2>/dev/null | grep -q '^Package:'; then
        return 0
    fi
    log "enabling deb-src in $DEB_SRC_LIST"
    cat >"$DEB_SRC_LIST" <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    apt-get update -qq >&2
}

pidfile() { printf '%s/%s.pid\n' "$RUN_DIR" "$1"; }

is_running() {
    local file pid
    file=$(pidfile "$1")
    [[ -r $file ]] || return 1
    pid=$(<"$file")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

# start NAME LOGFILE COMMAND... : run in the background, in its own session
start_process() {
    local name=$1 logfile=$2
    shift 2
    if is_running "$name"; then
        return 0
    fi
    setsid "$@" >>"$logfile" 2>&1 </dev/null 9>&- &
    printf '%s\n' "$!" >"$(pidfile "$name")"
}

# stop_process NAME [TENTHS]: TERM, then KILL after TENTHS tenths of a second (100)
stop_process() {
    local name=$1 patience=${2:-100} file pid i
    file=$(pidfile "$name")
    if ! is_running "$name"; then
        rm -f "$file"
        return 0
    fi
    pid=$(<"$file")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < patience; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

admin_token() { cut -d, -f1 <"$PKI_DIR/tokens.csv" | head -n 1; }

# api PATH [curl args...]: an authenticated call to the API server
api() {
    local path=$1
    shift
    curl --silent --show-error --fail --max-time 5 \
        --cacert "$PKI_DIR/ca.crt" \
        --header "Authorization: Bearer $(admin_token)" \
        "$@" "$API_URL$path"
}

wait_for() {
    local what=$1 logfile=$2
    shift 2
    local deadline=$((SECONDS + READY_TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then
            die_with_log "$what did not come up within $READY_TIMEOUT s" "$logfile"
        fi
        sleep 0.2
    done
}

# --------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------

source_version() {
    apt-cache showsrc "$SRC_PACKAGE" | sed -n 's/^Version: //p' | sort -V | tail -n 1
}

bin_dir_for() { printf '%s/bin-%s\n' "$CACHE_DIR" "$1"; }

# The newest finished build in the cache, without asking apt (fast path).
cached_bin_dir() {
    local dir name complete
    for dir in "$CACHE_DIR"/bin-*; do
        [[ -d $dir && -e $dir/.complete ]] || continue
        complete=1
        for name in "${BINARIES[@]}"; do
            [[ -x $dir/$name ]] || complete=0
        done
        if ((complete)); then
            printf '%s\n' "$dir"
            return 0
        fi
    done
    return 1
}

build_binaries() {
    local cached
    if cached=$(cached_bin_dir); then
        printf '%s\n' "$cached"
        return 0
    fi
    ensure_packages golang-go golang-github-modern-go-reflect2-dev dpkg-dev rsync jq make
    ensure_deb_src
    local version bin_dir src_dir tree started
    version=$(source_version)
    [[ -n $version ]] || die "apt knows no source package $SRC_PACKAGE"
    bin_dir=$(bin_dir_for "$version")
    src_dir=$CACHE_DIR/src-$version
    mkdir -p "$CACHE_DIR"
    started=$SECONDS
    log "building ${BINARIES[*]} from Debian's $SRC_PACKAGE $version (several minutes; log: $BUILD_LOG)"
    rm -rf "$src_dir"
    mkdir -p "$src_dir"
    (cd "$src_dir" && apt-get source -qq "$SRC_PACKAGE") >"$BUILD_LOG" 2>&1 \
        || die_with_log "apt-get source $SRC_PACKAGE failed" "$BUILD_LOG"
    tree=$(find "$src_dir" -mindepth 1 -maxdepth 1 -type d -name "$SRC_PACKAGE-*" | head -n 1)
    [[ -n $tree ]] || die "no source tree unpacked under $src_dir"

    # reflect2 1.0.1 (vendored) makes the API server crash with Go >= 1.18.
    [[ -d $REFLECT2_SRC ]] || die "$REFLECT2_SRC is missing"
    rm -rf "$tree/vendor/github.com/modern-go/reflect2"
    mkdir -p "$tree/vendor/github.com/modern-go/reflect2"
    find "$REFLECT2_SRC" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) \
        -exec cp -t "$tree/vendor/github.com/modern-go/reflect2" {} +

    local whats=()
    local name
    for name in "${BINARIES[@]}"; do
        whats+=("cmd/$name")
    done
    (
        cd "$tree"
        export GO111MODULE=off CGO_ENABLED=0 GOFLAGS= HOME=$CACHE_DIR/home
        export GOCACHE=$CACHE_DIR/go-build-cache
        mkdir -p "$HOME"
        make WHAT="${whats[*]}"
    ) >>"$BUILD_LOG" 2>&1 || die_with_log "the build failed" "$BUILD_LOG"

    mkdir -p "$bin_dir"
    for name in "${BINARIES[@]}"; do
        install -m 755 "$tree/_output/bin/$name" "$bin_dir/$name"
    done
    touch "$bin_dir/.complete"
    # the tree and the Go cache are large; only the binaries are kept
    rm -rf "$src_dir" "$CACHE_DIR/go-build-cache"
    log "built in $((SECONDS - started)) s: $bin_dir"
    printf '%s\n' "$bin_dir"
}

# --------------------------------------------------------------------------
# certificates, tokens, kubeconfigs
# --------------------------------------------------------------------------

random_token() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }

# sign NAME SUBJECT EXTENSIONS: a key and a certificate signed by the test CA
sign() {
    local name=$1 subject=$2 extensions=$3
    openssl req -new -newkey rsa:2048 -nodes -subj "$subject" \
        -keyout "$PKI_DIR/$name.key" -out "$PKI_DIR/$name.csr" 2>/dev/null
    printf '%s\n' "$extensions" >"$PKI_DIR/$name.ext"
    openssl x509 -req -in "$PKI_DIR/$name.csr" -CA "$PKI_DIR/ca.crt" -CAkey "$PKI_DIR/ca.key" \
        -CAcreateserial -days 3650 -sha256 -extfile "$PKI_DIR/$name.ext" \
        -out "$PKI_DIR/$name.crt" 2>/dev/null
    rm -f "$PKI_DIR/$name.csr" "$PKI_DIR/$name.ext"
    chmod 600 "$PKI_DIR/$name.key"
}

write_kubeconfig() {
    local file=$1 user=$2 token=$3
    cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: jobbridge-test
  cluster:
    server: $API_URL
    certificate-authority: $PKI_DIR/ca.crt
users:
- name: $user
  user:
    token: $token
contexts:
- name: jobbridge-test
  context:
    cluster: jobbridge-test
    user: $user
current-context: jobbridge-test
EOF
    chmod 600 "$file"
}

ensure_pki() {
    mkdir -p "$PKI_DIR"
    chmod 700 "$PKI_DIR"
    if [[ -e $PKI_DIR/.complete ]]; then
        return 0
    fi
    log "writing certificates and tokens in $PKI_DIR"
    rm -f "$PKI_DIR"/*
    openssl req -x509 -new -newkey rsa:2048 -nodes -days 3650 -sha256 \
        -subj "/CN=jobbridge-test-ca" -keyout "$PKI_DIR/ca.key" -out "$PKI_DIR/ca.crt" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    chmod 600 "$PKI_DIR/ca.key"
    local server_ext client_ext
    server_ext=$'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth'
    client_ext=$'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth'
    sign apiserver "/CN=kube-apiserver" \
        "$server_ext"$'\nsubjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc'
    sign kubelet "/CN=$NODE_NAME" "$server_ext"$'\nsubjectAltName=IP:127.0.0.1,DNS:localhost'
    sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client_ext"
    openssl genrsa -out "$PKI_DIR/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI_DIR/sa.key" -pubout -out "$PKI_DIR/sa.pub" 2>/dev/null
    chmod 600 "$PKI_DIR/sa.key"

    local admin cm scheduler node
    admin=$(random_token)
    cm=$(random_token)
    scheduler=$(random_token)
    node=$(random_token)
    # token,user,uid,"groups"; the first line is the admin's
    {
        printf '%s,admin,admin-uid,"system:masters"\n' "$admin"
        printf '%s,system:kube-controller-manager,cm-uid,"system:masters"\n' "$cm"
        printf '%s,system:kube-scheduler,scheduler-uid\n' "$scheduler"
        printf '%s,system:node:%s,node-uid,"system:nodes"\n' "$node" "$NODE_NAME"
    } >"$PKI_DIR/tokens.csv"
    chmod 600 "$PKI_DIR/tokens.csv"
    write_kubeconfig "$PKI_DIR/admin.kubeconfig" admin "$admin"
    write_kubeconfig "$PKI_DIR/controller-manager.kubeconfig" system:kube-controller-manager "$cm"
    write_kubeconfig "$PKI_DIR/scheduler.kubeconfig" system:kube-scheduler "$scheduler"
    write_kubeconfig "$PKI_DIR/node.kubeconfig" "system:node:$NODE_NAME" "$node"
    printf '%s\n' "$node" >"$PKI_DIR/node.token"
    chmod 600 "$PKI_DIR/node.token"
    touch "$PKI_DIR/.complete"
}

# --------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------

etcd_healthy() {
    curl --silent --fail --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'
}

apiserver_ready() { api /readyz; }

node_ready() {
    api "/api/v1/nodes/$NODE_NAME" | tr -d ' \n' | grep -q '"type":"Ready","status":"True"'
}

start_etcd() {
    mkdir -p "$ETCD_DATA"
    chmod 700 "$ETCD_DATA"
    start_process etcd "$LOG_DIR/etcd.log" etcd \
        --name jobbridge-test \
        --data-dir "$ETCD_DATA" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "jobbridge-test=http://127.0.0.1:$ETCD_PEER_PORT" \
        --quota-backend-bytes 2147483648
    wait_for etcd "$LOG_DIR/etcd.log" etcd_healthy
}

start_apiserver() {
    local bin_dir=$1
    start_process apiserver "$LOG_DIR/apiserver.log" "$bin_dir/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
        --bind-address 127.0.0.1 \
        --advertise-address 127.0.0.1 \
        --secure-port "$API_PORT" \
        --insecure-port 0 \
        --tls-cert-file "$PKI_DIR/apiserver.crt" \
        --tls-private-key-file "$PKI_DIR/apiserver.key" \
        --client-ca-file "$PKI_DIR/ca.crt" \
        --token-auth-file "$PKI_DIR/tokens.csv" \
        --authorization-mode Node,RBAC \
        --anonymous-auth=false \
        --service-cluster-ip-range "$SERVICE_RANGE" \
        --service-account-key-file "$PKI_DIR/sa.pub" \
        --service-account-signing-key-file "$PKI_DIR/sa.key" \
        --service-account-issuer https://kubernetes.default.svc \
        --kubelet-certificate-authority "$PKI_DIR/ca.crt" \
        --kubelet-client-certificate "$PKI_DIR/apiserver-kubelet-client.crt" \
        --kubelet-client-key "$PKI_DIR/apiserver-kubelet-client.key" \
        --kubelet-preferred-address-types InternalIP \
        --endpoint-reconciler-type none \
        --allow-privileged=true \
        --audit-log-path "$LOG_DIR/audit.log" \
        --audit-log-maxsize 100 \
        --audit-log-maxbackup 1 \
        --audit-policy-file "$K8S_DIR/audit-policy.yaml" \
        --v 1
    wait_for kube-apiserver "$LOG_DIR/apiserver.log" apiserver_ready
}

start_controller_manager() {
    local bin_dir=$1
    start_process controller-manager "$LOG_DIR/controller-manager.log" \
        "$bin_dir/kube-controller-manager" \
        --kubeconfig "$PKI_DIR/controller-manager.kubeconfig" \
        --controllers '*,-nodeipam,-csrsigning,-nodelifecycle' \
        --service-account-private-key-file "$PKI_DIR/sa.key" \
        --root-ca-file "$PKI_DIR/ca.crt" \
        --kube-api-qps 100 \
        --kube-api-burst 200 \
        --leader-elect=false \
        --bind-address 127.0.0.1 \
        --port 0 \
        --v 1
}

start_scheduler() {
    local bin_dir=$1
    start_process scheduler "$LOG_DIR/scheduler.log" "$bin_dir/kube-scheduler" \
        --kubeconfig "$PKI_DIR/scheduler.kubeconfig" \
        --authentication-kubeconfig "$PKI_DIR/scheduler.kubeconfig" \
        --authorization-kubeconfig "$PKI_DIR/scheduler.kubeconfig" \
        --kube-api-qps 100 \
        --kube-api-burst 200 \
        --leader-elect=false \
        --bind-address 127.0.0.1 \
        --port 0 \
        --v 1
}

start_agent() {
    [[ -r $AGENT_SCRIPT ]] || die "the node agent $AGENT_SCRIPT is missing"
    mkdir -p "$AGENT_WORK"
    start_process agent "$LOG_DIR/agent.log" "$AGENT_PYTHON" "$AGENT_SCRIPT" \
        --server "$API_URL" \
        --token-file "$PKI_DIR/node.token" \
        --ca "$PKI_DIR/ca.crt" \
        --node-name "$NODE_NAME" \
        --address 127.0.0.1 \
        --port "$KUBELET_PORT" \
        --tls-cert "$PKI_DIR/kubelet.crt" \
        --tls-key "$PKI_DIR/kubelet.key" \
        --client-ca "$PKI_DIR/ca.crt" \
        --cpus "$NODE_CPUS" \
        --memory "$NODE_MEMORY" \
        --work-dir "$AGENT_WORK"
    wait_for "the node agent (node $NODE_NAME Ready)" "$LOG_DIR/agent.log" node_ready
}

write_audit_policy() {
    # Metadata for the calls the tests count; nothing for the noisy rest.
    cat >"$K8S_DIR/audit-policy.yaml" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: None
  users: ["system:kube-controller-manager", "system:kube-scheduler", "system:apiserver"]
- level: None
  userGroups: ["system:nodes"]
- level: None
  nonResourceURLs: ["/readyz*", "/healthz*", "/livez*", "/version", "/openapi*", "/api*"]
- level: Metadata
  resources:
  - group: batch
    resources: ["jobs"]
  - group: ""
    resources: ["pods", "pods/log", "namespaces"]
EOF
}

write_env() {
    local tmp=$ENV_FILE.tmp
    {
        printf 'JOBBRIDGE_TEST_K8S=1\n'
        printf 'JOBBRIDGE_TEST_K8S_SERVER=%s\n' "$API_URL"
        printf 'JOBBRIDGE_TEST_K8S_KUBECONFIG=%s\n' "$PKI_DIR/admin.kubeconfig"
        printf 'JOBBRIDGE_TEST_K8S_CA=%s\n' "$PKI_DIR/ca.crt"
        printf 'JOBBRIDGE_TEST_K8S_TOKEN=%s\n' "$(admin_token)"
        printf 'JOBBRIDGE_TEST_K8S_NODE=%s\n' "$NODE_NAME"
        printf 'JOBBRIDGE_TEST_K8S_AUDIT_LOG=%s\n' "$LOG_DIR/audit.log"
        printf 'JOBBRIDGE_TEST_K8S_SCRIPT=%s\n' "$SCRIPT_DIR/k8s-cluster.sh"
    } >"$tmp"
    mv "$tmp" "$ENV_FILE"
}

# --------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------

cmd_up() {
    local started=$SECONDS bin_dir
    ensure_packages etcd-server openssl curl python3
    bin_dir=$(build_binaries)
    mkdir -p "$K8S_DIR" "$LOG_DIR" "$RUN_DIR"
    ensure_pki
    write_audit_policy
    start_etcd
    start_apiserver "$bin_dir"
    start_controller_manager "$bin_dir"
    start_scheduler "$bin_dir"
    start_agent
    write_env
    log "up in $((SECONDS - started)) s: $API_URL (env: $ENV_FILE)"
}

cmd_down() {
    rm -f "$ENV_FILE"
    local i
    for ((i = ${#PROCESSES[@]} - 1; i >= 0; i--)); do
        stop_process "${PROCESSES[i]}"
    done
    log "down"
}

cmd_status() {
    local name down=0
    for name in "${PROCESSES[@]}"; do
        if is_running "$name"; then
            printf '%-20s up (pid %s)\n' "$name" "$(<"$(pidfile "$name")")"
        else
            printf '%-20s down\n' "$name"
            down=1
        fi
    done
    if ((down == 0)) && ! apiserver_ready >/dev/null 2>&1; then
        printf 'kube-apiserver does not answer on %s\n' "$API_URL"
        down=1
    fi
    if ((down)); then
        exit 1
    fi
}

# A fault, not a shutdown: the API server's graceful stop would take ten seconds.
cmd_stop() {
    case ${1:-} in
        apiserver) stop_process apiserver 0 ;;
        agent) stop_process agent ;;
        *) die "usage: $0 stop apiserver|agent" ;;
    esac
}

cmd_start() {
    local bin_dir
    case ${1:-} in
        apiserver)
            bin_dir=$(cached_bin_dir) || die "no binaries in $CACHE_DIR: run '$0 up' first"
            start_apiserver "$bin_dir"
            ;;
        agent) start_agent ;;
        *) die "usage: $0 start apiserver|agent" ;;
    esac
}

main() {
    [[ $(id -u) == 0 ]] || die "run as root (packages, /var/cache, /var/tmp)"
    local command=${1:-}
    shift || true
    if [[ $command != status && $command != env ]]; then
        # one change at a time: "up" from two places at once must not race
        mkdir -p "$STATE_DIR"
        exec 9>"$STATE_DIR/k8s.lock"
        flock 9
    fi
    case $command in
        up) cmd_up ;;
        down) cmd_down ;;
        status) cmd_status ;;
        env) [[ -r $ENV_FILE ]] && cat "$ENV_FILE" ;;
        build) build_binaries >/dev/null ;;
        stop) cmd_stop "$@" ;;
        start) cmd_start "$@" ;;
        *) die "usage: $0 up|down|status|env|build|stop apiserver|agent|start apiserver|agent" ;;
    esac
}

main "$@"
