package controllers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	cometv1 "github.com/cometop/comet-operator/api/v1alpha1"
	"github.com/cometop/comet-operator/cometserver/contract"
	"github.com/cometop/comet-operator/cometserver/engine"
	"github.com/cometop/comet-operator/test/bounded"
	"github.com/cometop/comet-operator/test/redistest"
)

func redisBroker(secret string) *cometv1.BrokerSpec {
	return &cometv1.BrokerSpec{Type: cometv1.BrokerRedis, Redis: &cometv1.RedisSpec{SecretName: secret}}
}

// Every new field's rule, refused with the field named.
func TestFleetSpecsAreRefused(t *testing.T) {
	bounded.Test(t, time.Minute)
	ns := newNamespace(t)
	tests := []struct {
		name string
		spec cometv1.CometServerSpec
		want string // "" for accepted
	}{
		{"two replicas in memory", cometv1.CometServerSpec{Replicas: ptr.To[int32](2)},
			"spec.replicas: Invalid value: replicas above 1 need a shared broker (spec.broker.type: redis)"},
		{"two replicas, broker memory", cometv1.CometServerSpec{Replicas: ptr.To[int32](2), Broker: &cometv1.BrokerSpec{Type: cometv1.BrokerMemory}},
			"replicas above 1 need a shared broker"},
		{"three replicas on redis", cometv1.CometServerSpec{Replicas: ptr.To[int32](3), Broker: redisBroker("redis")}, ""},
		{"replicas over 1000", cometv1.CometServerSpec{Replicas: ptr.To[int32](1001), Broker: redisBroker("redis")}, "spec.replicas: Invalid value: 1001"},
		{"redis without its block", cometv1.CometServerSpec{Broker: &cometv1.BrokerSpec{Type: cometv1.BrokerRedis}},
			"spec.broker: Invalid value: broker.redis is required with type redis and only then"},
		{"memory with a redis block", cometv1.CometServerSpec{Broker: &cometv1.BrokerSpec{Type: cometv1.BrokerMemory, Redis: &cometv1.RedisSpec{SecretName: "r"}}},
			"broker.redis is required with type redis and only then"},
		{"unknown broker", cometv1.CometServerSpec{Broker: &cometv1.BrokerSpec{Type: "nats"}}, `spec.broker.type: Unsupported value: "nats"`},
		{"bad secret name", cometv1.CometServerSpec{Broker: redisBroker("Bad_Name")}, `spec.broker.redis.secretName: Invalid value: "Bad_Name"`},
		{"bad prefix", cometv1.CometServerSpec{Broker: &cometv1.BrokerSpec{Type: cometv1.BrokerRedis, Redis: &cometv1.RedisSpec{SecretName: "r", Prefix: "a:b"}}},
			`spec.broker.redis.prefix: Invalid value: "a:b"`},
		{"history size over the cap", cometv1.CometServerSpec{History: &cometv1.HistorySpec{Size: ptr.To[int32](100001)}}, "spec.history.size: Invalid value: 100001"},
		{"negative history size", cometv1.CometServerSpec{History: &cometv1.HistorySpec{Size: ptr.To[int32](-1)}}, "spec.history.size: Invalid value: -1"},
		{"history ttl over 24h", cometv1.CometServerSpec{History: &cometv1.HistorySpec{TTL: &metav1.Duration{Duration: 25 * time.Hour}}}, "history ttl must be at least 1s and at most 24h"},
		{"history ttl under 1s", cometv1.CometServerSpec{History: &cometv1.HistorySpec{TTL: &metav1.Duration{Duration: time.Millisecond}}}, "history ttl must be at least 1s"},
		{"empty history takes the defaults", cometv1.CometServerSpec{History: &cometv1.HistorySpec{}}, ""},
		{"a PDB with both bounds", cometv1.CometServerSpec{PodDisruptionBudget: &cometv1.PodDisruptionBudgetSpec{
			MinAvailable: ptr.To(intstr.FromInt32(1)), MaxUnavailable: ptr.To(intstr.FromInt32(1))}}, "set exactly one of minAvailable and maxUnavailable"},
		{"a PDB with none", cometv1.CometServerSpec{PodDisruptionBudget: &cometv1.PodDisruptionBudgetSpec{}}, "set exactly one of minAvailable and maxUnavailable"},
		{"a grace shorter than the drain", cometv1.CometServerSpec{TerminationGracePeriodSeconds: ptr.To[int64](9)}, "spec.terminationGracePeriodSeconds: Invalid value: 9"},
		{"negative max channels", cometv1.CometServerSpec{MaxVirtualChannels: ptr.To[int32](-5)}, "spec.maxVirtualChannels: Invalid value: -5"},
	}
	for i, tt := range tests {
		cs := &cometv1.CometServer{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprint("fleet-", i), Namespace: ns}, Spec: tt.spec}
		err := k8s.Create(ctx, cs)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: refused: %v", tt.name, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: %v\nwant an error with %q", tt.name, err, tt.want)
		}
		if err == nil {
			deleteCometServer(t, cs)
		}
	}
	// Defaults: an empty history gets the server's.
	cs := &cometv1.CometServer{ObjectMeta: metav1.ObjectMeta{Name: "defaults", Namespace: ns},
		Spec: cometv1.CometServerSpec{History: &cometv1.HistorySpec{}, Broker: &cometv1.BrokerSpec{}}}
	if err := k8s.Create(ctx, cs); err != nil {
		t.Fatal(err)
	}
	defer deleteCometServer(t, cs)
	if h := cs.Spec.History; *h.Size != 100 || h.TTL.Duration != 2*time.Minute || cs.Spec.Broker.Type != cometv1.BrokerMemory ||
		*cs.Spec.TerminationGracePeriodSeconds != 30 {
		t.Errorf("defaults: history %d/%v, broker %q, grace %d", *h.Size, h.TTL, cs.Spec.Broker.Type, *cs.Spec.TerminationGracePeriodSeconds)
	}
	// kubectl scale of an in-memory CometServer is refused by the same rule.
	if scaleErr := scaleTo(t, cs, 2); scaleErr == nil || !strings.Contains(scaleErr.Error(), "need a shared broker") {
		t.Errorf("scaling an in-memory CometServer to 2: %v", scaleErr)
	}
}

// scaleTo sets the replicas through the scale subresource, as kubectl
// scale and an HPA do, again on a conflict with the operator's status
// writes; it returns the answer that is not a conflict.
func scaleTo(t *testing.T, cs *cometv1.CometServer, n int32) error {
	t.Helper()
	var err error
	eventually(t, "a scale answer that is not a conflict", func() error {
		scale := &autoscalingv1.Scale{}
		if err = k8s.SubResource("scale").Get(ctx, cs, scale); err != nil {
			return err
		}
		scale.Spec.Replicas = n
		if err = k8s.SubResource("scale").Update(ctx, cs, client.WithSubResourceBody(scale)); apierrors.IsConflict(err) {
			return err
		}
		return nil
	})
	return err
}

// maxVirtualChannels and history are live: pushed, no roll, no channel
// lost, and the pod's server holds them.
func TestLiveLimitAndHistory(t *testing.T) {
	bounded.Test(t, 2*time.Minute)
	ns := newNamespace(t)
	createCometServer(t, ns, cometv1.CometServerSpec{})
	p := startPod(t, ns, "push-a")
	waitPodState(t, ns, "push-a", Live{Activated: true, Timeout: 20 * time.Second})
	for _, name := range []string{"a", "b", "c"} {
		if _, err := p.srv.Hub().Create(context.Background(), name); err != nil {
			t.Fatal(err)
		}
	}
	var dep appsv1.Deployment
	get(t, ns, "push", &dep)
	depGeneration, hash := dep.Generation, dep.Spec.Template.Annotations[StaticConfigHashAnnotation]

	updateSpec(t, ns, func(s *cometv1.CometServerSpec) {
		s.MaxVirtualChannels = ptr.To[int32](2)
		s.History = &cometv1.HistorySpec{Size: ptr.To[int32](7), TTL: &metav1.Duration{Duration: 90 * time.Second}}
	})
	cs := waitPodState(t, ns, "push-a", Live{Activated: true, Timeout: 20 * time.Second})
	st := p.status()
	if st.MaxVirtualChannels == nil || *st.MaxVirtualChannels != 2 || st.HistorySize != 7 || st.HistoryTTLDuration() != 90*time.Second {
		t.Fatalf("the server holds max %v history %d/%v", st.MaxVirtualChannels, st.HistorySize, st.HistoryTTLDuration())
	}
	if st.Channels != 3 {
		t.Fatalf("lowering the limit below the live channels ended some: %d live", st.Channels)
	}
	if _, err := p.srv.Hub().Create(context.Background(), "d"); !errors.Is(err, engine.ErrTooManyVirtualChannels) {
		t.Fatalf("a fourth channel over the new limit: %v", err)
	}
	if ps := podState(cs, "push-a"); *ps.MaxVirtualChannels != 2 || *ps.HistorySize != 7 || ps.HistoryTTL.Duration != 90*time.Second {
		t.Fatalf("pod state %+v", ps)
	}
	waitEvent(t, ns, "Pushed", "sent comet:set_max_virtual_channels 2, comet:set_history 7 90")

	// Removed from the spec: no limit again, the server's default history.
	updateSpec(t, ns, func(s *cometv1.CometServerSpec) { s.MaxVirtualChannels, s.History = nil, nil })
	eventually(t, "the limit and history back to the defaults", func() error {
		st := p.status()
		if st.MaxVirtualChannels != nil || st.HistorySize != 100 || st.HistoryTTLDuration() != 2*time.Minute {
			return fmt.Errorf("max %v history %d/%v", st.MaxVirtualChannels, st.HistorySize, st.HistoryTTLDuration())
		}
		return nil
	})
	waitCondition(t, ns, cometv1.ConditionConfigApplied, metav1.ConditionTrue, "1 ready pods hold")
	get(t, ns, "push", &dep)
	if dep.Generation != depGeneration || dep.Spec.Template.Annotations[StaticConfigHashAnnotation] != hash {
		t.Fatalf("a live change rolled the pods: deployment generation %d to %d, hash %s to %s",
			depGeneration, dep.Generation, hash, dep.Spec.Template.Annotations[StaticConfigHashAnnotation])
	}
	if n := p.status().Channels; n != 3 {
		t.Fatalf("%d channels live after the changes, want the 3 made before", n)
	}
}

// Right after an edit, the status says the pods do not hold the new
// generation: no status of the new generation says ConfigApplied True
// before the pod reported holding it, and the table's Activated column
// shows what the pods hold.
func TestNewGenerationIsNotAppliedUntilPushed(t *testing.T) {
	bounded.Test(t, time.Minute)
	ns := newNamespace(t)
	createCometServer(t, ns, cometv1.CometServerSpec{})
	startPod(t, ns, "push-a")
	cs := waitPodState(t, ns, "push-a", Live{Activated: true, Timeout: 20 * time.Second})
	if cs.Status.Activated == nil || !*cs.Status.Activated || cs.Status.Timeout.Duration != 20*time.Second {
		t.Fatalf("status shows activated %v timeout %v, want what the pod holds", cs.Status.Activated, cs.Status.Timeout)
	}

	wc, err := client.NewWithWatch(testCfg, client.Options{Scheme: testScheme})
	if err != nil {
		t.Fatal(err)
	}
	var list cometv1.CometServerList
	if err := wc.List(ctx, &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	w, err := wc.Watch(ctx, &list, client.InNamespace(ns), &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: list.ResourceVersion}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	before := cs.Generation
	updateSpec(t, ns, func(s *cometv1.CometServerSpec) { s.Activated = ptr.To(false) })

	var seen []string
	deadline := time.After(30 * time.Second)
	for {
		var ev watch.Event
		select {
		case ev = <-w.ResultChan():
		case <-deadline:
			t.Fatalf("no applied status of the new generation; seen:\n%s", strings.Join(seen, "\n"))
		}
		got, ok := ev.Object.(*cometv1.CometServer)
		if !ok || got.Generation == before {
			continue
		}
		c := condition(got, cometv1.ConditionConfigApplied)
		ps := podState(got, "push-a")
		if c == nil || ps == nil || got.Status.Activated == nil {
			t.Fatalf("a status without ConfigApplied, the pod or activated: %+v", got.Status)
		}
		if c.ObservedGeneration != got.Generation {
			continue
		}
		seen = append(seen, fmt.Sprintf("%s %s activated=%v pod at %d", c.Status, c.Reason, *got.Status.Activated, ps.AppliedGeneration))
		if c.Status == metav1.ConditionTrue && ps.AppliedGeneration != got.Generation {
			t.Fatalf("ConfigApplied True at generation %d while the pod holds generation %d", got.Generation, ps.AppliedGeneration)
		}
		if len(seen) == 1 && (c.Reason != "NewGeneration" || !*got.Status.Activated) {
			t.Fatalf("the first status of the new generation: %s; want ConfigApplied False NewGeneration and the pods' activated=true", seen[0])
		}
		if c.Status == metav1.ConditionTrue {
			if *got.Status.Activated || got.Status.ObservedGeneration != got.Generation {
				t.Fatalf("applied, yet the status shows activated=true or generation %d observed", got.Status.ObservedGeneration)
			}
			return
		}
		if got.Status.ObservedGeneration == got.Generation && len(seen) == 1 {
			t.Fatalf("the early status moved observedGeneration: its other conditions would read as the new generation's")
		}
	}
}

// The fleet's pod template: a new pod first and one old pod at a time,
// the drain hook, the grace period, topology spread with the pods'
// selector, and the PodDisruptionBudget made and removed with the spec.
func TestFleetObjects(t *testing.T) {
	bounded.Test(t, time.Minute)
	ns := newNamespace(t)
	createCometServer(t, ns, cometv1.CometServerSpec{
		TerminationGracePeriodSeconds: ptr.To[int64](45),
		PodDisruptionBudget:           &cometv1.PodDisruptionBudgetSpec{MaxUnavailable: ptr.To(intstr.FromInt32(1))},
		TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
			MaxSkew: 1, TopologyKey: "kubernetes.io/hostname", WhenUnsatisfiable: corev1.ScheduleAnyway,
		}},
	})
	var dep appsv1.Deployment
	eventually(t, "deployment", func() error { return get(t, ns, "push", &dep) })
	ru := dep.Spec.Strategy.RollingUpdate
	if ru == nil || ru.MaxSurge.IntValue() != 1 || ru.MaxUnavailable.IntValue() != 0 {
		t.Errorf("rolling update %+v, want a surge of 1 and none unavailable", ru)
	}
	pod := dep.Spec.Template.Spec
	if *pod.TerminationGracePeriodSeconds != 45 {
		t.Errorf("grace %d", *pod.TerminationGracePeriodSeconds)
	}
	c := pod.Containers[0]
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil || c.Lifecycle.PreStop.Sleep.Seconds != 5 {
		t.Errorf("preStop %+v, want a 5 s sleep", c.Lifecycle)
	}
	if tsc := pod.TopologySpreadConstraints; len(tsc) != 1 || tsc[0].LabelSelector == nil ||
		tsc[0].LabelSelector.MatchLabels[labelInstance] != "push" {
		t.Errorf("topology spread %+v, want the pods' selector filled in", tsc)
	}
	var cm corev1.ConfigMap
	get(t, ns, "push-config", &cm)
	if !strings.Contains(cm.Data[contract.ConfigKey], "shutdown_grace: 38s") {
		t.Errorf("config:\n%s\nwant the grace less the drain and the margin: 38s", cm.Data[contract.ConfigKey])
	}
	var pdb policyv1.PodDisruptionBudget
	eventually(t, "pod disruption budget", func() error { return get(t, ns, "push", &pdb) })
	if pdb.Spec.MaxUnavailable.IntValue() != 1 || pdb.Spec.Selector.MatchLabels[labelInstance] != "push" {
		t.Errorf("pdb %+v", pdb.Spec)
	}
	updateSpec(t, ns, func(s *cometv1.CometServerSpec) { s.PodDisruptionBudget = nil })
	eventually(t, "pod disruption budget deleted", func() error {
		if err := get(t, ns, "push", &pdb); !apierrors.IsNotFound(err) {
			return fmt.Errorf("still there: %v", err)
		}
		return nil
	})
}

// A Redis broker: its Secret must opt in and hold a URL; the pods get the
// URL from it through the environment and the password as a file; the
// BrokerReady condition follows what the pods report, through a Redis
// restart.
func TestRedisBroker(t *testing.T) {
	bounded.Test(t, 3*time.Minute)
	ns := newNamespace(t)
	createCometServer(t, ns, cometv1.CometServerSpec{Broker: redisBroker("redis"), Replicas: ptr.To[int32](3)})
	waitCondition(t, ns, cometv1.ConditionBrokerReady, metav1.ConditionFalse, "broker secret redis not found")
	waitCondition(t, ns, cometv1.ConditionDegraded, metav1.ConditionTrue, "the pods are not updated: broker secret redis not found")
	var dep appsv1.Deployment
	if err := get(t, ns, "push", &dep); !apierrors.IsNotFound(err) {
		t.Fatalf("a deployment without its broker secret: %v", err)
	}

	r := redistest.Start(t, "--requirepass", "s3cret")
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "redis", Namespace: ns},
		Data: map[string][]byte{contract.RedisURLKey: []byte("redis://:s3cret@" + r.Addr)}}
	if err := k8s.Create(ctx, secret); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, ns, cometv1.ConditionBrokerReady, metav1.ConditionFalse, "lacks the label comet.cometop.dev/broker=true")
	secret.Labels = map[string]string{cometv1.BrokerSecretLabel: "true"}
	if err := k8s.Update(ctx, secret); err != nil {
		t.Fatal(err)
	}
	// What the server would refuse at start is refused before a pod runs.
	waitCondition(t, ns, cometv1.ConditionBrokerReady, metav1.ConditionFalse, `broker secret redis: key "url": `)
	secret.Data = map[string][]byte{contract.RedisURLKey: []byte("redis://" + r.Addr), contract.RedisCAKey: []byte("-----BEGIN CERTIFICATE-----")}
	if err := k8s.Update(ctx, secret); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, ns, cometv1.ConditionBrokerReady, metav1.ConditionFalse, `has "ca.crt" for a URL that is not rediss://`)
	secret.Data = map[string][]byte{contract.RedisURLKey: []byte("redis://" + r.Addr), contract.RedisPasswordKey: []byte("s3cret")}
	if err := k8s.Update(ctx, secret); err != nil {
		t.Fatal(err)
	}
	eventually(t, "deployment", func() error { return get(t, ns, "push", &dep) })
	c := dep.Spec.Template.Spec.Containers[0]
	if len(c.Env) != 1 || c.Env[0].Name != contract.EnvRedisURL || c.Env[0].ValueFrom.SecretKeyRef.Name != "redis" ||
		c.Env[0].ValueFrom.SecretKeyRef.Key != contract.RedisURLKey {
		t.Errorf("env %+v, want the URL from the secret", c.Env)
	}
	for _, a := range c.Args {
		if strings.Contains(a, r.Addr) || strings.Contains(a, "s3cret") {
			t.Errorf("argv holds the broker's address or password: %q", c.Args)
		}
	}
	var vol *corev1.Volume
	for i := range dep.Spec.Template.Spec.Volumes {
		if dep.Spec.Template.Spec.Volumes[i].Name == "redis" {
			vol = &dep.Spec.Template.Spec.Volumes[i]
		}
	}
	if vol == nil || vol.Secret.SecretName != "redis" || len(vol.Secret.Items) != 1 || vol.Secret.Items[0].Key != contract.RedisPasswordKey {
		t.Errorf("redis volume %+v, want the password only", vol)
	}
	var cm corev1.ConfigMap
	get(t, ns, "push-config", &cm)
	var file map[string]any
	if err := yaml.Unmarshal([]byte(cm.Data[contract.ConfigKey]), &file); err != nil {
		t.Fatal(err)
	}
	if file["broker"] != "redis" || file["redis_prefix"] != "comet-"+ns+".push" || file["redis_password_file"] != "/etc/comet/redis/password" ||
		file["redis_tls_ca_file"] != nil || strings.Contains(cm.Data[contract.ConfigKey], "s3cret") {
		t.Errorf("config file:\n%s", cm.Data[contract.ConfigKey])
	}

	// A pod started from that config, with the URL as its environment
	// would give it and the password file the Secret would.
	pw := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := startPodOf(t, ns, "push", "push-a", "--redis-url", "redis://"+r.Addr, "--redis-password-file", pw)
	cs := waitCondition(t, ns, cometv1.ConditionBrokerReady, metav1.ConditionTrue, "redis broker ready on 1 pods")
	if cs.Status.Broker != cometv1.BrokerRedis || podState(cs, "push-a").Broker.Name != "redis" {
		t.Fatalf("status broker %q, pod %+v", cs.Status.Broker, podState(cs, "push-a").Broker)
	}

	r.Stop()
	a.setNotReady() // as its readiness probe would see /readyz answer 503
	waitCondition(t, ns, cometv1.ConditionBrokerReady, metav1.ConditionFalse, "redis broker not ready on pods push-a")
	r.Restart()
	eventually(t, "the pod's broker ready", func() error {
		if !a.status().Broker.Ready {
			return errors.New("not ready")
		}
		return nil
	})
	a.setReady("containerd://push-a-1")
	waitCondition(t, ns, cometv1.ConditionBrokerReady, metav1.ConditionTrue, "redis broker ready on 1 pods")

	// A new password rolls the pods, which read it at start.
	hash := dep.Spec.Template.Annotations[BrokerSecretHashAnnotation]
	secret.Data[contract.RedisPasswordKey] = []byte("n3w")
	if err := k8s.Update(ctx, secret); err != nil {
		t.Fatal(err)
	}
	updateSpec(t, ns, func(s *cometv1.CometServerSpec) { s.PodAnnotations = map[string]string{"nudge": "1"} }) // the Secret is not watched
	eventually(t, "a new pod template for the new password", func() error {
		if err := get(t, ns, "push", &dep); err != nil {
			return err
		}
		if h := dep.Spec.Template.Annotations[BrokerSecretHashAnnotation]; h == hash || h == "" {
			return fmt.Errorf("hash %q", h)
		}
		return nil
	})
}

// Many CometServers edited at once are applied concurrently: the time
// from the first edit to the last ConfigApplied of the new generation.
func TestManyCometServersAreAppliedTogether(t *testing.T) {
	bounded.Test(t, 5*time.Minute)
	newNamespace(t) // skips without an API server
	const n = 100
	namespaces := make([]string, n)
	for i := range namespaces {
		ns := newNamespace(t)
		namespaces[i] = ns
		createCometServer(t, ns, cometv1.CometServerSpec{})
		startPod(t, ns, "push-a")
	}
	for _, ns := range namespaces {
		waitPodState(t, ns, "push-a", Live{Activated: true, Timeout: 20 * time.Second})
	}
	ours := map[string]bool{}
	for _, ns := range namespaces {
		ours[ns] = true
	}

	// Edited together, as a script or a GitOps sync would: 10 at a time.
	start := time.Now()
	type edit struct {
		ns string
		at time.Duration
	}
	edited := make(chan edit, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 10)
	for _, ns := range namespaces {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			updateSpec(t, ns, func(s *cometv1.CometServerSpec) { s.Activated = ptr.To(false) })
			<-sem
			edited <- edit{ns, time.Since(start)}
		}()
	}
	// One list of every CometServer a poll, 10 a second: polling each
	// would load the API server more than the operator does.
	applied := map[string]time.Duration{}
	deadline := time.Now().Add(time.Minute)
	for len(applied) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d CometServers applied in a minute", len(applied), n)
		}
		var list cometv1.CometServerList
		if err := k8s.List(ctx, &list); err != nil {
			t.Fatal(err)
		}
		now := time.Since(start)
		for i := range list.Items {
			cs := &list.Items[i]
			if _, done := applied[cs.Namespace]; done || !ours[cs.Namespace] {
				continue
			}
			if st := podState(cs, "push-a"); st != nil && st.AppliedGeneration == cs.Generation && st.Activated != nil && !*st.Activated &&
				cs.Status.ObservedGeneration == cs.Generation {
				applied[cs.Namespace] = now
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	wg.Wait()
	close(edited)
	var lastEdit time.Duration
	var lag []time.Duration // from a CometServer's own edit to its applied status
	for e := range edited {
		lastEdit = max(lastEdit, e.at)
		lag = append(lag, applied[e.ns]-e.at)
	}
	var took []time.Duration
	for _, d := range applied {
		took = append(took, d)
	}
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	sort.Slice(lag, func(i, j int) bool { return lag[i] < lag[j] })
	t.Logf("%d CometServers edited together (the edits took %v): the last applied %v after the first edit; from each edit to its applied status: %v median, %v max",
		n, lastEdit.Round(time.Millisecond), took[n-1].Round(time.Millisecond), lag[n/2].Round(time.Millisecond), lag[n-1].Round(time.Millisecond))
	// Every one applied within the minute the loop above allows: the
	// latency is a figure (in the log), not an assertion, as this box runs
	// the API server, etcd and 100 servers on 2 cores.
}

// The HorizontalPodAutoscaler example is valid, and what it targets is
// a scale subresource that reads and writes the fleet's replicas: an HPA
// controller does exactly these two calls.
func TestAutoscalerExample(t *testing.T) {
	bounded.Test(t, time.Minute)
	ns := newNamespace(t)
	b, err := os.ReadFile("../config/samples/autoscaling_v2_horizontalpodautoscaler.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var hpa autoscalingv2.HorizontalPodAutoscaler
	if err := yaml.UnmarshalStrict(b, &hpa); err != nil {
		t.Fatal(err)
	}
	hpa.Namespace = ns
	if err := k8s.Create(ctx, &hpa); err != nil {
		t.Fatalf("the example is refused: %v", err)
	}
	ref := hpa.Spec.ScaleTargetRef
	if ref.APIVersion != cometv1.GroupVersion.String() || ref.Kind != "CometServer" {
		t.Fatalf("target %+v", ref)
	}
	cs := &cometv1.CometServer{ObjectMeta: metav1.ObjectMeta{Name: ref.Name, Namespace: ns},
		Spec: cometv1.CometServerSpec{Replicas: ptr.To[int32](2), Broker: redisBroker("redis")}}
	if err := k8s.Create(ctx, cs); err != nil {
		t.Fatal(err)
	}
	defer deleteCometServer(t, cs)
	scale := &autoscalingv1.Scale{}
	if err := k8s.SubResource("scale").Get(ctx, cs, scale); err != nil || scale.Spec.Replicas != 2 {
		t.Fatalf("scale %+v: %v", scale, err)
	}
	if err := scaleTo(t, cs, hpa.Spec.MaxReplicas); err != nil {
		t.Fatalf("scaling to the example's maximum: %v", err)
	}
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(cs), cs); err != nil || *cs.Spec.Replicas != hpa.Spec.MaxReplicas {
		t.Fatalf("replicas %d after the scale: %v", *cs.Spec.Replicas, err)
	}
}
