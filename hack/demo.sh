#!/usr/bin/env bash
# The main job on a fresh machine: a local single-node cluster built from
# source, the operator installed with its Helm chart, a sample CometServer
# running, and how to publish and poll from this host. Leaves the cluster up;
# `make cluster-down` removes it and restores the host.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cluster="$root/hack/local-cluster"
VERSION=${VERSION:?set VERSION (the Makefile does)}
start=$SECONDS

"$cluster" up
for image in comet-operator cometserver; do
	ctr -n k8s.io images import "$root/bin/images/$image-$VERSION.tar" >/dev/null
done
export KUBECONFIG
KUBECONFIG=$("$cluster" kubeconfig)
kubectl="$(cat "$root/bin/cluster.bins")/kubectl"
helm=$("$root/hack/tools.sh" helm)

"$helm" upgrade --install comet "$root/charts/comet-operator" --namespace comet-system --create-namespace --wait --timeout 3m >/dev/null

# Redis for the fleet: Debian's redis-server on the node, behind a
# selector-less Service (pods reach it as any Service; `make cluster-down`
# stops it by its PID file). In production, point the Secret at your Redis.
node_ip=$("$kubectl" get nodes -o 'jsonpath={.items[0].status.addresses[?(@.type=="InternalIP")].address}')
redis_dir="$root/bin/cluster/redis"
mkdir -p "$redis_dir"
if ! { [ -f "$redis_dir/redis.pid" ] && kill -0 "$(cat "$redis_dir/redis.pid")" 2>/dev/null; }; then
	head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$redis_dir/password"
	redis-server --bind "$node_ip" --port 16379 --requirepass "$(cat "$redis_dir/password")" --dir "$redis_dir" \
		--save "" --appendonly yes --daemonize yes --pidfile "$redis_dir/redis.pid" --logfile "$redis_dir/redis.log"
fi
"$kubectl" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Service
metadata: {name: redis, namespace: default}
spec:
  ports: [{name: redis, port: 6379, targetPort: 16379, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: redis-node, namespace: default, labels: {kubernetes.io/service-name: redis}}
addressType: IPv4
ports: [{name: redis, port: 16379, protocol: TCP}]
endpoints: [{addresses: ["$node_ip"], conditions: {ready: true}}]
YAML
redis_ip=$("$kubectl" get service redis -o jsonpath='{.spec.clusterIP}')
"$kubectl" create secret generic redis --from-literal=url="redis://$redis_ip:6379" \
	--from-literal=password="$(cat "$redis_dir/password")" --dry-run=client -o yaml |
	"$kubectl" label --local -f - comet.cometop.dev/broker=true -o yaml | "$kubectl" apply -f - >/dev/null
# The fleet sample's CometServer (its Secret is the one just made).
sed -n '/^apiVersion: comet.cometop.dev/,$p' "$root/config/samples/comet_v1alpha1_cometserver_fleet.yaml" | "$kubectl" apply -f - >/dev/null
"$kubectl" wait cometserver/news --for=condition=Available --timeout=3m >/dev/null
"$kubectl" wait cometserver/news --for=condition=ConfigApplied --timeout=3m >/dev/null
"$kubectl" wait cometserver/news --for=condition=BrokerReady --timeout=3m >/dev/null

ip=$("$kubectl" get service news -o jsonpath='{.spec.clusterIP}')
pub_ip=$("$kubectl" get service news-publisher -o jsonpath='{.spec.clusterIP}')
token=$("$kubectl" get secret news-publisher-token -o jsonpath='{.data.token}' | base64 -d)
cat <<TEXT

comet-operator demo is up in $((SECONDS - start))s: CometServer news, 3 pods sharing
their channels through Redis (pid $(cat "$redis_dir/redis.pid") on this node).

  export KUBECONFIG=$KUBECONFIG
  alias kubectl=$kubectl
  kubectl get comet news -o wide

Publish and poll from this host, through the Service:

  curl -s -XPOST -H 'Authorization: Bearer $token' http://$pub_ip:8081/v1/channels -d '{"name":"demo"}'
  curl -s -XPOST -H 'Content-Type: application/x-ocsigen-comet' --data 'registration=demo' http://$ip:8080/comet &
  curl -s -XPOST -H 'Authorization: Bearer $token' http://$pub_ip:8081/v1/channels/demo/messages -d 'hello'

Steer it live (no restart): the poll above is answered 503 at once.

  kubectl patch comet news --type=merge -p '{"spec":{"activated":false}}'

Watch a rollout lose nothing: in one terminal, resuming clients that count
what they get while a publisher writes 50 messages a second (every second it
prints what was acknowledged and what each client lost or got twice)

  go run ./hack/losswatch --client http://$ip:8080/comet --publisher http://$pub_ip:8081 --token $token

and in another, roll the pods (one new pod first, each old one drained) or scale:

  kubectl patch comet news --type=merge -p '{"spec":{"podAnnotations":{"rolled":"'\$(date +%s)'"}}}'
  kubectl scale comet news --replicas=5

Tear down and restore the host: make cluster-down
TEXT
