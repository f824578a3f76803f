//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cometop/comet-operator/test/losscount"
	"github.com/cometop/comet-operator/test/redistest"
)

const fleetNS = "fleet"

// Redis for the cluster runs on the node, as a process this test starts
// and stops by PID (Debian's redis-server, as every Redis test here),
// behind a selector-less Service and an EndpointSlice naming the node's
// address: pods reach it as any in-cluster Service, and the test can stop
// and restart it for the BrokerReady check without an image of Redis.
func startNodeRedis(t *testing.T) (*redistest.Server, string) {
	t.Helper()
	nodeIP := sh(t, kubectlBin, "get", "nodes", "-o", `jsonpath={.items[0].status.addresses[?(@.type=="InternalIP")].address}`)
	r := redistest.Start(t, "--bind", "127.0.0.1", nodeIP, "--requirepass", "fleet-pw")
	_, port, _ := strings.Cut(r.Addr, ":")
	manifest := fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: redis, namespace: %[1]s}
spec:
  ports: [{name: redis, port: 6379, targetPort: %[2]s, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: redis-node
  namespace: %[1]s
  labels: {kubernetes.io/service-name: redis}
addressType: IPv4
ports: [{name: redis, port: %[2]s, protocol: TCP}]
endpoints: [{addresses: ["%[3]s"], conditions: {ready: true}}]
`, fleetNS, port, nodeIP)
	apply(t, manifest)
	return r, jsonpathIn(t, fleetNS, "service", "redis", "{.spec.clusterIP}")
}

func apply(t *testing.T, manifest string) {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(kubectlBin, "apply", "-f", "-")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(manifest), &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl apply: %v\n%s\n%s", err, out.String(), manifest)
	}
}

func jsonpathIn(t *testing.T, namespace, kind, name, path string) string {
	t.Helper()
	out, _ := shErr(kubectlBin, "-n", namespace, "get", kind, name, "-o", "jsonpath="+path)
	return out
}

func fleetCondition(t *testing.T, typ string) string {
	return jsonpathIn(t, fleetNS, "cometserver", "fleet", `{.status.conditions[?(@.type=="`+typ+`")].status}`)
}

// fleetPods lists the fleet's pods that are ready and not terminating,
// and all of them.
func fleetPods(t *testing.T) (ready, all []string) {
	all, ready = podsOf(fleetNS, "fleet")
	return ready, all
}

// waitFleet waits until the fleet has exactly n pods, all ready, none
// terminating, and the operator reports them applied.
func waitFleet(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d pods ready and applied", n), timeout, func() error {
		ready, all := fleetPods(t)
		gen := jsonpathIn(t, fleetNS, "cometserver", "fleet", "{.metadata.generation}")
		obs := jsonpathIn(t, fleetNS, "cometserver", "fleet", "{.status.observedGeneration}")
		if len(ready) != n || len(all) != n || gen != obs || fleetCondition(t, "ConfigApplied") != "True" ||
			fleetCondition(t, "Available") != "True" || fleetCondition(t, "Progressing") != "False" {
			return fmt.Errorf("%d ready of %d, generation %s observed %s, Applied %s Available %s Progressing %s", len(ready), len(all),
				gen, obs, fleetCondition(t, "ConfigApplied"), fleetCondition(t, "Available"), fleetCondition(t, "Progressing"))
		}
		return nil
	})
}

// checkNothingLost waits until every subscriber has every write acked so
// far, then fails for any missing, any duplicate, any gap, and anything
// received that was never written.
func checkNothingLost(t *testing.T, phase string, p *losscount.Publisher, subs []*losscount.Counter) {
	t.Helper()
	acked := p.Acked()
	var missing []string
	deadline := time.Now().Add(60 * time.Second)
	for {
		missing = missing[:0]
		for _, s := range subs {
			missing = append(missing, s.Missing(acked...)...)
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	dup, gaps := 0, 0
	for i, s := range subs {
		dup += len(s.Duplicates())
		gaps += s.Gaps()
		s.CheckOnce(t, i, 0)
		for _, m := range s.Seen() {
			if !p.MayHaveWritten(m) {
				t.Errorf("subscriber %d got %s, never written", i, m)
			}
		}
	}
	figure(t, "%s: %d messages acked, %d subscribers: %d lost, %d duplicated, %d gaps", phase, len(acked), len(subs), len(missing), dup, gaps)
	if len(missing) > 0 {
		t.Errorf("%s: %d lost, first %q", phase, len(missing), missing[:min(5, len(missing))])
	}
}

// TestFleetOnRedis runs a 3-replica CometServer on Redis and, under a
// steady publishing load with resuming subscribers spread over the pods by
// the Service, rolls its image, deletes a pod, scales it 3 to 5 to 2,
// changes maxVirtualChannels live, and restarts Redis: nothing is lost,
// nothing comes twice.
func TestFleetOnRedis(t *testing.T) {
	step := func(name string, f func(t *testing.T)) {
		t.Helper()
		if !t.Failed() && !t.Run(name, f) {
			t.FailNow()
		}
	}
	sh(t, helmBin, "install", "comet", repoRoot+"/charts/comet-operator", "--namespace", opNS, "--create-namespace",
		"--set", "push.retryPeriod=2s", "--wait", "--timeout", "3m")
	t.Cleanup(func() {
		shErr(kubectlBin, "delete", "namespace", fleetNS, "--wait=true", "--timeout=2m")
		shErr(helmBin, "uninstall", "comet", "--namespace", opNS, "--wait", "--timeout", "2m")
	})
	// Cleanups run last first: this one, before the namespace goes.
	t.Cleanup(func() {
		if t.Failed() {
			for _, args := range [][]string{
				{"get", "pods", "-A", "-o", "wide"},
				{"-n", fleetNS, "get", "cometserver", "fleet", "-o", "yaml"},
				{"-n", fleetNS, "logs", "-l", "app.kubernetes.io/instance=fleet", "--tail=30", "--prefix"},
				{"-n", opNS, "logs", "deployment/comet-comet-operator", "--tail=60"},
			} {
				out, _ := shErr(kubectlBin, args...)
				t.Logf("kubectl %s:\n%s", strings.Join(args, " "), out)
			}
		}
	})
	kubectl(t, "create", "namespace", fleetNS)
	redis, redisIP := startNodeRedis(t)
	kubectl(t, "-n", fleetNS, "create", "secret", "generic", "redis",
		"--from-literal=url=redis://"+redisIP+":6379", "--from-literal=password=fleet-pw")
	kubectl(t, "-n", fleetNS, "label", "secret", "redis", "comet.cometop.dev/broker=true")

	start := time.Now()
	apply(t, `apiVersion: comet.cometop.dev/v1alpha1
kind: CometServer
metadata: {name: fleet, namespace: `+fleetNS+`}
spec:
  replicas: 3
  timeout: 10s
  broker: {type: redis, redis: {secretName: redis}}
  # History must cover the longest time a client may go without a poll:
  # after the Redis restart below, pods come back ready and resubscribed
  # over several seconds, and the publisher writes 50 a second.
  history: {size: 5000, ttl: 5m}
  podDisruptionBudget: {maxUnavailable: 1}
`)
	waitFleet(t, 3, 3*time.Minute)
	eventually(t, "BrokerReady", time.Minute, func() error {
		if c := fleetCondition(t, "BrokerReady"); c != "True" {
			return fmt.Errorf("BrokerReady %q", c)
		}
		return nil
	})
	figure(t, "3-replica CometServer on Redis: apply to 3 pods ready, applied, broker ready: %s", time.Since(start).Round(time.Millisecond))
	if out := kubectl(t, "-n", fleetNS, "get", "comet", "fleet"); !strings.Contains(out, "redis") {
		t.Fatalf("kubectl get comet:\n%s", out)
	}

	ip := jsonpathIn(t, fleetNS, "service", "fleet", "{.spec.clusterIP}")
	pubIP := jsonpathIn(t, fleetNS, "service", "fleet-publisher", "{.spec.clusterIP}")
	tok, err := decodeBase64(jsonpathIn(t, fleetNS, "secret", "fleet-publisher-token", "{.data.token}"))
	if err != nil {
		t.Fatal(err)
	}
	e := endpoints{client: "http://" + ip + ":8080/comet", publisher: "http://" + pubIP + ":8081", token: tok}
	eventually(t, "the channel made", 30*time.Second, func() error {
		code, body, err := e.publish("POST", "/v1/channels", `{"name":"ticker"}`)
		if err != nil || code != 201 {
			return fmt.Errorf("%d %s %v", code, body, err)
		}
		return nil
	})

	// Subscribers through the client Service: kube-proxy spreads their
	// connections over the pods, and a poll that fails retries through
	// the Service, resuming.
	ctx, stop := context.WithCancel(context.Background())
	subs, polls := losscount.Start(ctx, 6, []string{"ticker"}, func(int) string { return e.client })
	pub := &losscount.Publisher{Channel: "ticker", Post: func(_ context.Context, channel, msg string) (int, error) {
		code, _, err := e.publish("POST", "/v1/channels/"+channel+"/messages", msg)
		return code, err
	}}
	var pubDone sync.WaitGroup
	pubDone.Add(1)
	go func() { defer pubDone.Done(); pub.Run(ctx, 20*time.Millisecond) }()
	defer func() { stop(); pubDone.Wait(); polls.Wait() }()
	time.Sleep(2 * time.Second)
	checkNothingLost(t, "steady", pub, subs)

	step("an image rollout loses nothing", func(t *testing.T) {
		image := jsonpathIn(t, fleetNS, "deployment", "fleet", "{.spec.template.spec.containers[0].image}")
		sh(t, "ctr", "-n", "k8s.io", "images", "tag", "--force", image, image+"-rollout")
		before, _ := fleetPods(t)
		start := time.Now()
		kubectl(t, "-n", fleetNS, "patch", "comet", "fleet", "--type=merge", "-p", `{"spec":{"image":"`+image+`-rollout"}}`)
		eventually(t, "every pod replaced", 5*time.Minute, func() error {
			ready, all := fleetPods(t)
			for _, p := range all {
				if slices.Contains(before, p) {
					return fmt.Errorf("old pod %s still there (%d ready)", p, len(ready))
				}
			}
			return nil
		})
		waitFleet(t, 3, 2*time.Minute)
		figure(t, "image rollout of 3 pods, surge 1, drain 5 s each: %s", time.Since(start).Round(time.Second))
		checkNothingLost(t, "image rollout", pub, subs)
	})

	step("a pod deletion loses nothing", func(t *testing.T) {
		ready, _ := fleetPods(t)
		start := time.Now()
		kubectl(t, "-n", fleetNS, "delete", "pod", ready[0], "--wait=false")
		eventually(t, "the pod replaced", 2*time.Minute, func() error {
			_, all := fleetPods(t)
			if slices.Contains(all, ready[0]) {
				return fmt.Errorf("%s still there", ready[0])
			}
			return nil
		})
		waitFleet(t, 3, 2*time.Minute)
		figure(t, "pod deletion to 3 ready again: %s", time.Since(start).Round(time.Second))
		checkNothingLost(t, "pod deletion", pub, subs)
	})

	step("scaling 3 to 5 to 2 loses nothing", func(t *testing.T) {
		start := time.Now()
		kubectl(t, "-n", fleetNS, "scale", "comet", "fleet", "--replicas=5")
		waitFleet(t, 5, 2*time.Minute)
		figure(t, "scale 3 to 5: %s", time.Since(start).Round(time.Second))
		checkNothingLost(t, "scale to 5", pub, subs)
		start = time.Now()
		kubectl(t, "-n", fleetNS, "scale", "comet", "fleet", "--replicas=2")
		waitFleet(t, 2, 2*time.Minute)
		figure(t, "scale 5 to 2: %s", time.Since(start).Round(time.Second))
		checkNothingLost(t, "scale to 2", pub, subs)
	})

	step("maxVirtualChannels changes live, fleet-wide", func(t *testing.T) {
		before, _ := fleetPods(t)
		start := time.Now()
		kubectl(t, "-n", fleetNS, "patch", "comet", "fleet", "--type=merge", "-p", `{"spec":{"maxVirtualChannels":2}}`)
		waitFleet(t, 2, time.Minute)
		figure(t, "maxVirtualChannels to every pod, live: %s", time.Since(start).Round(time.Millisecond))
		if after, _ := fleetPods(t); !slices.Equal(after, before) {
			t.Fatalf("pods %q became %q: a live change replaced pods", before, after)
		}
		var codes []int
		for i := range 2 {
			code, _, err := e.publish("POST", "/v1/channels", fmt.Sprintf(`{"name":"limit-%d"}`, i))
			if err != nil {
				t.Fatal(err)
			}
			codes = append(codes, code)
		}
		// ticker is live: one more fits under 2, fleet-wide.
		if fmt.Sprint(codes) != "[201 429]" {
			t.Fatalf("creates under maxVirtualChannels=2 with ticker live: %v", codes)
		}
		checkNothingLost(t, "maxVirtualChannels change", pub, subs)
	})

	step("a Redis restart turns BrokerReady and back", func(t *testing.T) {
		// Watch the condition while Redis is down: the pods' readiness
		// probes fail (3 in a row, 5 s apart), the operator checks the
		// pods that turned unready and reads their broker's state.
		var turned time.Duration
		watchCtx, stopWatch := context.WithCancel(context.Background())
		watched := make(chan struct{})
		start := time.Now()
		go func() {
			defer close(watched)
			for watchCtx.Err() == nil && turned == 0 {
				if fleetCondition(t, "BrokerReady") == "False" {
					turned = time.Since(start)
				}
				time.Sleep(250 * time.Millisecond)
			}
		}()
		const down = 40 * time.Second
		redis.RestartKeepingData(down)
		restarted := time.Now()
		stopWatch()
		<-watched
		if turned == 0 {
			t.Fatalf("BrokerReady never turned False while Redis was down for %s", down)
		}
		eventually(t, "BrokerReady back", 2*time.Minute, func() error {
			if c := fleetCondition(t, "BrokerReady"); c != "True" {
				return fmt.Errorf("BrokerReady %q", c)
			}
			return nil
		})
		back := time.Since(restarted)
		waitFleet(t, 2, 2*time.Minute)
		figure(t, "Redis down %s: BrokerReady False %s after Redis stopped, True %s after it came back", down,
			turned.Round(time.Millisecond), back.Round(time.Millisecond))
		checkNothingLost(t, "Redis restart", pub, subs)
	})
}
