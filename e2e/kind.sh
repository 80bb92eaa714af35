#!/usr/bin/env bash
# The same cluster shape on kind, for users who have Docker (not used by the tests here, which
# run e2e/cluster.sh's local cluster: this workplace has no Docker engine).
#
#   e2e/kind.sh up      kind cluster (1 control plane + 1 worker) at the pinned Kubernetes
#                       version, the project's images loaded, kwok on this host managing the
#                       simulated GPU nodes of the cluster spec
#   e2e/kind.sh down    stop kwok, delete the kind cluster
#
# Needs: docker, kind (https://kind.sigs.k8s.io), Go (e2e/build.sh builds kubectl/kwok/helm).
# Env: KIND_CLUSTER (default conspirator-e2e), KIND_NODE_IMAGE (default
# kindest/node:<KUBERNETES_VERSION>; pick one your kind release publishes),
# CONSPIRATOR_E2E_SPEC (cluster spec, default e2e/clusters/default.yaml).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
name="${KIND_CLUSTER:-conspirator-e2e}"
image="${KIND_NODE_IMAGE:-kindest/node:$KUBERNETES_VERSION}"
dir="${CONSPIRATOR_E2E_DIR:-/tmp/conspirator-e2e}-kind"
kubeconfig="$dir/kubeconfig"

bin_of() { "$here/build.sh" --print | grep -- "/$1-" ; }

up() {
  command -v docker >/dev/null && docker info >/dev/null 2>&1 || { echo "needs a Docker engine" >&2; exit 1; }
  command -v kind >/dev/null || { echo "needs kind on PATH" >&2; exit 1; }
  "$here/build.sh"
  local k8s kwok
  k8s="$(bin_of kubernetes)"; kwok="$(bin_of kwok)"
  mkdir -p "$dir"
  if ! kind get clusters 2>/dev/null | grep -qx "$name"; then
    kind create cluster --name "$name" --image "$image" --kubeconfig "$kubeconfig" --wait 120s \
      --config - <<KIND
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
  - role: worker
    labels:
      conspirator.io/real-node: "true"
KIND
  fi
  # The project's own images (OCI archives built here), loaded into every kind node.
  "$here/cluster.sh" images | while read -r tar; do
    kind load image-archive --name "$name" "$tar"
  done
  # kwok runs on this host against the kind API server and drives the simulated GPU nodes.
  "$here/cluster.sh" kwok-config >"$dir/kwok.yaml"
  if [[ ! -f "$dir/kwok.pid" ]] || ! kill -0 "$(cat "$dir/kwok.pid")" 2>/dev/null; then
    HOME="$dir" nohup "$kwok/kwok" --config="$dir/kwok.yaml" --kubeconfig="$kubeconfig" \
      --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
      --cidr=10.245.0.0/16 --node-ip=10.246.0.1 --server-address=127.0.0.1:10247 \
      >"$dir/kwok.log" 2>&1 &
    echo $! >"$dir/kwok.pid"
  fi
  "$here/cluster.sh" sim-nodes --kubeconfig "$kubeconfig"
  "$k8s/kubectl" --kubeconfig "$kubeconfig" wait --for=condition=Ready nodes --all --timeout=120s
  "$k8s/kubectl" --kubeconfig "$kubeconfig" get nodes
  echo "export KUBECONFIG=$kubeconfig"
}

down() {
  if [[ -f "$dir/kwok.pid" ]]; then
    kill "$(cat "$dir/kwok.pid")" 2>/dev/null || true
    rm -f "$dir/kwok.pid"
  fi
  kind delete cluster --name "$name" || true
  rm -rf "$dir"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
