#!/usr/bin/env bash
# `make dev`: run the whole product on this machine, against a real
# kube-apiserver, until Ctrl-C. Everything it creates lives under .dev/.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/bin
DEV=$ROOT/.dev
GRPC_PORT=${EDGESYNC_DEV_GRPC_PORT:-9443}
HTTP_PORT=${EDGESYNC_DEV_HTTP_PORT:-9090}
KUBELET_PORT=${EDGESYNC_DEV_KUBELET_PORT:-10250}
DNS_PORT=${EDGESYNC_DEV_DNS_PORT:-10053}
EDGE1_KUBELET_PORT=${EDGESYNC_DEV_EDGE1_KUBELET_PORT:-10350}
EDGE1_KUBELET_HEALTHZ_PORT=${EDGESYNC_DEV_EDGE1_KUBELET_HEALTHZ_PORT:-10348}
EDGE1_LOCAL_API_PORT=${EDGESYNC_DEV_EDGE1_LOCAL_API_PORT:-10550}
ROUTER_PORT=${EDGESYNC_DEV_ROUTER_PORT:-9445}
MQTT_PORT=${EDGESYNC_DEV_MQTT_PORT:-1883}
# The kubelet endpoint listens on this machine's first non-loopback address
# when it has one: the kube-apiserver's node proxy (kubectl get --raw
# /api/v1/nodes/NODE/proxy/...) refuses loopback addresses. It accepts only
# client certificates of the devcluster's CA.
KUBELET_HOST=${EDGESYNC_DEV_KUBELET_HOST:-$( (ip -4 -o addr show scope global 2>/dev/null || true) | awk '{split($4, a, "/"); print a[1]; exit}')}
KUBELET_HOST=${KUBELET_HOST:-127.0.0.1}
export PATH=$BIN:$PATH

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'make dev: %s\n' "$*" >&2; exit 1; }

pids=()
cleanup() {
  trap - INT TERM EXIT
  rm -f "$DEV/ready"
  if [ ${#pids[@]} -gt 0 ]; then
    printf '\n==> stopping (agent, server, devcluster)\n'
    # Stop in reverse order of start: agent, server, then the cluster.
    for ((i=${#pids[@]}-1; i>=0; i--)); do
      kill -TERM "${pids[i]}" 2>/dev/null || true
      wait "${pids[i]}" 2>/dev/null || true
    done
  fi
}
trap cleanup EXIT
trap 'exit 0' INT TERM

# wait_for DESCRIPTION SECONDS COMMAND...: poll until COMMAND succeeds.
wait_for() {
  local what=$1 seconds=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "timed out after ${seconds}s waiting for $what"
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || die "a process exited while waiting for $what (logs in .dev/)"; done
    sleep 0.5
  done
}

mkdir -p "$DEV"
# A run stopped uncleanly leaves the devcluster's ready file behind; the
# wait below must see this run's.
rm -f "$DEV/ready" "$DEV/cluster/ready"

step "starting the devcluster (etcd, kube-apiserver, kube-controller-manager, kube-scheduler)"
"$BIN/devcluster" run --dir "$DEV/cluster" --crds "$ROOT/deploy/crds" >"$DEV/devcluster.log" 2>&1 &
pids+=($!)
wait_for "the devcluster" 120 test -f "$DEV/cluster/ready"
export KUBECONFIG=$DEV/cluster/kubeconfig
grep 'devcluster ready' "$DEV/devcluster.log"

step "applying RBAC and the server's identity (deploy/)"
kubectl apply -f "$ROOT/deploy/namespace.yaml" -f "$ROOT/deploy/rbac/" >/dev/null
# The server talks to the apiserver as its own ServiceAccount, bound only by
# deploy/rbac, so every run proves the RBAC is enough.
token=$(kubectl -n edgesync-system create token edgesync-server --duration=24h)
server_url=$(kubectl config view --raw -o jsonpath='{.clusters[0].cluster.server}')
kubectl config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$DEV/cluster-ca.crt"
SERVER_KUBECONFIG=$DEV/server.kubeconfig
rm -f "$SERVER_KUBECONFIG"
KUBECONFIG=$SERVER_KUBECONFIG kubectl config set-cluster devcluster --server="$server_url" \
  --certificate-authority="$DEV/cluster-ca.crt" --embed-certs >/dev/null
KUBECONFIG=$SERVER_KUBECONFIG kubectl config set-credentials edgesync-server --token="$token" >/dev/null
KUBECONFIG=$SERVER_KUBECONFIG kubectl config set-context dev --cluster=devcluster --user=edgesync-server >/dev/null
KUBECONFIG=$SERVER_KUBECONFIG kubectl config use-context dev >/dev/null
chmod 600 "$SERVER_KUBECONFIG"

step "creating the dev PKI in .dev/pki"
PKI=$DEV/pki
rm -rf "$PKI"
edgesync-server certs init --dir "$PKI" --hosts localhost,127.0.0.1
edgesync-server certs admin dev-admin --dir "$PKI"

# The edges' MQTT broker: Debian's mosquitto (make dev installs it), unless
# one already listens on the port.
if ! (exec 3<>"/dev/tcp/127.0.0.1/$MQTT_PORT") 2>/dev/null; then
  step "starting mosquitto on 127.0.0.1:$MQTT_PORT (the edges' MQTT broker)"
  printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$MQTT_PORT" >"$DEV/mosquitto.conf"
  "$(command -v mosquitto || echo /usr/sbin/mosquitto)" -c "$DEV/mosquitto.conf" >"$DEV/mosquitto.log" 2>&1 &
  pids+=($!)
fi

step "starting edgesync-server on 127.0.0.1:$GRPC_PORT (metrics on :$HTTP_PORT, router REST port :$ROUTER_PORT)"
edgesync-server \
  --listen "127.0.0.1:$GRPC_PORT" \
  --http-listen "127.0.0.1:$HTTP_PORT" \
  --tls-ca "$PKI/ca.crt" --tls-cert "$PKI/server.crt" --tls-key "$PKI/server.key" \
  --bootstrap-ca-key "$PKI/ca.key" \
  --kubeconfig "$SERVER_KUBECONFIG" \
  --kubelet-listen "$KUBELET_HOST:$KUBELET_PORT" --kubelet-client-ca "$DEV/cluster/pki/ca.crt" \
  --router-listen "127.0.0.1:$ROUTER_PORT" \
  --log-format console \
  --server-id dev >"$DEV/server.log" 2>&1 &
pids+=($!)
serving() {
  grpcurl -cacert "$PKI/ca.crt" -cert "$PKI/admin-dev-admin.crt" -key "$PKI/admin-dev-admin.key" \
    "127.0.0.1:$GRPC_PORT" grpc.health.v1.Health/Check | grep -q '"SERVING"'
}
wait_for "edgesync-server to report SERVING (its caches loaded)" 60 serving

step "joining edge-1 and edge-2 with bootstrap tokens (no CA key on the edge side)"
# join_node NODE: a single-use token bound to NODE from `token create`,
# then the join it prints: the node checks the CA's hash, makes its key and
# gets its certificate into .dev/pki-NODE.
join_node() {
  local node=$1 out token hash
  out=$(edgesync-server token create --node "$node" --ttl 10m --single-use \
    --ca "$PKI/ca.crt" --server "127.0.0.1:$GRPC_PORT" --dir "$DEV/pki-$node")
  token=$(awk '/^token:/ {print $2}' <<<"$out")
  hash=$(awk '/^ca-cert-hash:/ {print $2}' <<<"$out")
  rm -rf "$DEV/pki-$node"
  edgesync-agent join --server "127.0.0.1:$GRPC_PORT" --token "$token" --ca-cert-hash "$hash" \
    --node "$node" --dir "$DEV/pki-$node" --log-level warn
}
join_node edge-1
join_node edge-2

# edge-1 is a real node where containerd can start: its own containerd
# (with locally built images), the stock kubelet (bin/kubelet) and the agent
# with --runtime kubelet (bin/edgesync-devnode runs containerd and the
# kubelet, internal/realnode). Elsewhere it says why and edge-1 is simulated.
EDGE1_RUNTIME=simulated
step "edge-1: starting its containerd and kubelet (a real node), if this machine can"
rm -rf "$DEV/edge-1-node"
if [ -x "$BIN/edgesync-devnode" ] && [ -x "$BIN/kubelet" ]; then
  "$BIN/edgesync-devnode" --dir "$DEV/edge-1-node" --node edge-1 --kubelet "$BIN/kubelet" \
    --kubelet-dir "$DEV/edge-1-kubelet" --port "$EDGE1_KUBELET_PORT" --healthz-port "$EDGE1_KUBELET_HEALTHZ_PORT" \
    >"$DEV/edge-1-node.log" 2>&1 &
  devnode_pid=$!
  until [ -f "$DEV/edge-1-node/containerd-ready" ] || ! kill -0 "$devnode_pid" 2>/dev/null; do sleep 0.3; done
  if [ -f "$DEV/edge-1-node/containerd-ready" ]; then
    pids+=("$devnode_pid")
    EDGE1_RUNTIME=kubelet
    grep '^containerd' "$DEV/edge-1-node.log"
  else
    wait "$devnode_pid" 2>/dev/null || true
    echo "edge-1 runs simulated: $(tail -1 "$DEV/edge-1-node.log")"
  fi
else
  echo "edge-1 runs simulated: bin/edgesync-devnode or bin/kubelet is missing (make dev builds them)"
fi

step "starting edgesync-agent for edge-1 ($EDGE1_RUNTIME; its events follow) and edge-2 (simulated)"
# start_agent NODE: an agent whose events go to .dev/agent-NODE.events
# (edge-1's are also shown here) and its log to .dev/agent-NODE.log.
start_agent() {
  local node=$1
  local args=(run --server "127.0.0.1:$GRPC_PORT" --node "$node" --dir "$DEV/pki-$node"
    --store "$DEV/$node" --allow-exec --mqtt-broker "tcp://127.0.0.1:$MQTT_PORT")
  if [ "$node" = edge-1 ] && [ "$EDGE1_RUNTIME" = kubelet ]; then
    args+=(--runtime kubelet --kubelet-dir "$DEV/edge-1-kubelet" --local-api-address "127.0.0.1:$EDGE1_LOCAL_API_PORT"
      --kubelet-url "https://127.0.0.1:$EDGE1_KUBELET_PORT")
  fi
  if [ "$node" = edge-1 ]; then
    # DNS and a TCP proxy for the Services meant for edges, from its store.
    args+=(--dns-address "127.0.0.1:$DNS_PORT" --proxy-cidr 127.100.0.0/16)
    # Its devices are driven by KubeEdge mappers over DMI (the demo mapper).
    args+=(--devices dmi --dmi-socket "$DEV/edge-1-dmi.sock")
    edgesync-agent "${args[@]}" 2>"$DEV/agent-$node.log" > >(tee "$DEV/agent-$node.events") &
  else
    edgesync-agent "${args[@]}" 2>"$DEV/agent-$node.log" >"$DEV/agent-$node.events" &
  fi
  pids+=($!)
}
start_agent edge-1
start_agent edge-2

step "starting edgesync-demo-mapper, a KubeEdge DMI mapper for the modbus devices of edge-1 (log in .dev/demo-mapper.log)"
edgesync-demo-mapper --manager "$DEV/edge-1-dmi.sock" --socket "$DEV/demo-mapper.sock" --protocol modbus \
  >"$DEV/demo-mapper.log" 2>&1 &
pids+=($!)
if [ "$EDGE1_RUNTIME" = kubelet ]; then
  wait_for "edge-1's kubelet to start against the agent's local API" 120 test -f "$DEV/edge-1-node/kubelet-ready"
  grep '^kubelet' "$DEV/edge-1-node.log"
fi
wait_for "nodes edge-1 and edge-2 to register" 60 kubectl get node edge-1 edge-2

step "creating the demo: a Deployment (with a Service meant for edges) and a DaemonSet for edge nodes using a configmap and a secret, and a device (deploy/demo)"
kubectl apply -f "$ROOT/deploy/demo/demo.yaml" >/dev/null
kubectl apply -f "$ROOT/deploy/demo/router.yaml" >/dev/null
# Scheduled by kube-scheduler, run and reported by the agents: nothing
# but the edges' reports makes the Deployment available.
wait_for "deployment demo/web to be available (2/2)" 120 \
  bash -c "[ \"\$(kubectl -n demo get deploy web -o jsonpath='{.status.availableReplicas}')\" = 2 ]"
wait_for "daemonset demo/edge-monitor to run on both edge nodes" 120 \
  bash -c "[ \"\$(kubectl -n demo get ds edge-monitor -o jsonpath='{.status.numberReady}')\" = 2 ]"
kubectl -n demo get deploy,daemonset,pods -o wide
if [ "$EDGE1_RUNTIME" = kubelet ]; then
  step "edge-1 is a real node: kubectl exec runs in a real container there"
  wait_for "a Running demo pod on edge-1" 120 bash -c "kubectl -n demo get pods --field-selector spec.nodeName=edge-1,status.phase=Running -o name | grep -q ."
  real_pod=$(kubectl -n demo get pods --field-selector spec.nodeName=edge-1,status.phase=Running -o jsonpath='{.items[0].metadata.name}')
  echo "kubectl -n demo exec $real_pod -- sh -c 'cat /proc/1/cmdline | tr \\0 \" \"; echo; hostname; cat /etc/web/greeting 2>/dev/null || cat /etc/monitor/greeting'"
  kubectl -n demo exec "$real_pod" -- sh -c 'cat /proc/1/cmdline | tr "\0" " "; echo; hostname; cat /etc/web/greeting 2>/dev/null || cat /etc/monitor/greeting'
  echo
  kubectl get node edge-1 -o jsonpath='edge-1: kubelet {.status.nodeInfo.kubeletVersion}, runtime {.status.nodeInfo.containerRuntimeVersion}{"\n"}'
fi

step "each pod on edge-1 holds its ServiceAccount token (a Token line each), and the agents' events reach the cluster"
for pod in $(kubectl -n demo get pods --field-selector spec.nodeName=edge-1 -o jsonpath='{.items[*].metadata.name}'); do
  wait_for "edge-1's agent to hold the token of demo/$pod" 60 grep -q " Token  *demo/$pod/" "$DEV/agent-edge-1.events"
  grep " Token  *demo/$pod/" "$DEV/agent-edge-1.events" | tail -1
done
wait_for "events reported by edge-1 in namespace demo" 60 \
  bash -c "kubectl -n demo get events.events.k8s.io -o jsonpath='{.items[*].reportingInstance}' | grep -qw edge-1"
kubectl -n demo get events.events.k8s.io -o custom-columns='REASON:.reason,OBJECT:.regarding.name,REPORTED BY:.reportingInstance,NOTE:.note' |
  awk 'NR == 1 || $3 == "edge-1"'

step "the demo mapper drives device demo/thermometer-1 on edge-1: its readings reach the DeviceStatus"
wait_for "the demo mapper's readings in DeviceStatus demo/thermometer-1" 60 \
  bash -c "kubectl -n demo get devicestatus thermometer-1 -o jsonpath='{.status.twins[*].reported.value}' | grep -q ."
kubectl -n demo get devicestatus thermometer-1 \
  -o custom-columns='DEVICE:.metadata.name,STATE:.status.state,PROPERTY:.status.twins[*].propertyName,REPORTED:.status.twins[*].reported.value'

cat >"$DEV/env" <<ENV
# source .dev/env: talk to the dev installation.
export KUBECONFIG=$DEV/cluster/kubeconfig
export EDGESYNC_ADDR=127.0.0.1:$GRPC_PORT
# the kubelet endpoint of edge nodes (the apiserver dials it for kubectl logs/exec)
export EDGESYNC_KUBELET_ADDR=$KUBELET_HOST:$KUBELET_PORT
export EDGESYNC_CA=$PKI/ca.crt
export EDGESYNC_ADMIN_CERT=$PKI/admin-dev-admin.crt
export EDGESYNC_ADMIN_KEY=$PKI/admin-dev-admin.key
export EDGESYNC_PKI_DIR=$PKI
export PATH=$BIN:\$PATH
ENV
touch "$DEV/ready"

cat <<TXT

==> edgesync is up (.dev/ready). In another shell:

  source .dev/env
  kubectl get nodes,pods -A
  grpcurl -cacert \$EDGESYNC_CA -cert \$EDGESYNC_ADMIN_CERT -key \$EDGESYNC_ADMIN_KEY \$EDGESYNC_ADDR list
  grpcurl -cacert \$EDGESYNC_CA -cert \$EDGESYNC_ADMIN_CERT -key \$EDGESYNC_ADMIN_KEY \$EDGESYNC_ADDR edgesync.v1.AdminService/ListSessions
  kubectl -n demo scale deploy web --replicas=4     # the scheduler spreads them over edge-1 and edge-2
  kubectl -n demo get events                        # Pulled, Created, Started... reported by the agents
  # the demo mapper (KubeEdge DMI, .dev/demo-mapper.log) reports demo/thermometer-1; set its target with kubectl
  kubectl -n demo get devicestatus thermometer-1 -o yaml -w
  kubectl -n demo patch device thermometer-1 --type=json -p '[{"op":"replace","path":"/spec/properties/1/desired/value","value":"23"}]'
  ls -l .dev/edge-1/pods/*/volumes/*/               # simulated edge-1: what its pods mount (a real edge-1's kubelet mounts them)
  kubectl get --raw /api/v1/nodes/edge-1/proxy/stats/summary   # a real edge-1's kubelet stats, through edgesync
  # edge-1's agent answers DNS for the Services meant for edges, from its store (also offline)
  dig @127.0.0.1 -p $DNS_PORT +short web.demo.svc.cluster.local      # edge-1's proxy address for demo/web
  dig @127.0.0.1 -p $DNS_PORT +short SRV _http._tcp.web.demo.svc.cluster.local
  # logs and exec reach the edge through edgesync (kubelet API on $KUBELET_HOST:$KUBELET_PORT, tunnels to the agents)
  kubectl -n demo logs deploy/web
  kubectl -n demo exec deploy/web -- cat /etc/web/greeting   # the configmap's value, read on the edge
  # a REST call routed by the demo Rule (deploy/demo/router.yaml) to MQTT topic "hello" on edge-1:
  mosquitto_sub -h 127.0.0.1 -p $MQTT_PORT -t hello -v &    # an application on edge-1
  curl --cacert \$EDGESYNC_CA -H "Authorization: Bearer \$(kubectl -n demo create token demo-caller)" \
    -d '{"hello":"edge"}' https://127.0.0.1:$ROUTER_PORT/edge-1/demo/hello
  kubectl -n demo get rules                                  # successMessages counts them
  # a third edge node joins with a token: token create prints the join command to run
  edgesync-server token create --node edge-3 --single-use --ca \$EDGESYNC_CA --server \$EDGESYNC_ADDR --dir .dev/pki-edge-3
  edgesync-agent join --server \$EDGESYNC_ADDR --token TOKEN --ca-cert-hash sha256:HASH --node edge-3 --dir .dev/pki-edge-3
  edgesync-agent run --server \$EDGESYNC_ADDR --node edge-3 --dir .dev/pki-edge-3 --store .dev/edge-3

Logs: .dev/devcluster.log .dev/cluster/*.log .dev/server.log .dev/agent-edge-*.log (events: .dev/agent-edge-*.events). Ctrl-C stops everything.
TXT

wait "${pids[@]}"
