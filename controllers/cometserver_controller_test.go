package controllers

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	cometv1 "github.com/cometop/comet-operator/api/v1alpha1"
	"github.com/cometop/comet-operator/cometserver/admin"
	"github.com/cometop/comet-operator/cometserver/cometclient"
	"github.com/cometop/comet-operator/cometserver/config"
	"github.com/cometop/comet-operator/cometserver/contract"
	"github.com/cometop/comet-operator/cometserver/server"
	"github.com/cometop/comet-operator/test/bounded"
)

var ctx = context.Background()

func createCometServer(t *testing.T, ns string, spec cometv1.CometServerSpec) *cometv1.CometServer {
	t.Helper()
	return createLabelled(t, ns, nil, spec)
}

// createLabelled creates the CometServer "push" with labels, and deletes
// it when the test ends, so that no reconciler goes on pushing into the
// test's pods once their servers are gone.
func createLabelled(t *testing.T, ns string, labels map[string]string, spec cometv1.CometServerSpec) *cometv1.CometServer {
	t.Helper()
	cs := &cometv1.CometServer{ObjectMeta: metav1.ObjectMeta{Name: "push", Namespace: ns, Labels: labels}, Spec: spec}
	if err := k8s.Create(ctx, cs); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteCometServer(t, cs) })
	return cs
}

func deleteCometServer(t *testing.T, cs *cometv1.CometServer) {
	t.Helper()
	if err := k8s.Delete(ctx, cs); client.IgnoreNotFound(err) != nil {
		t.Errorf("deleting CometServer %s/%s: %v", cs.Namespace, cs.Name, err)
	}
}

func get(t *testing.T, ns, name string, obj client.Object) error {
	t.Helper()
	return k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, obj)
}

// updateSpec changes the spec with retries on conflict, as kubectl edit would.
func updateSpec(t *testing.T, ns string, change func(*cometv1.CometServerSpec)) {
	t.Helper()
	eventually(t, "spec update", func() error {
		var cs cometv1.CometServer
		if err := get(t, ns, "push", &cs); err != nil {
			return err
		}
		change(&cs.Spec)
		return k8s.Update(ctx, &cs)
	})
}

func condition(cs *cometv1.CometServer, typ string) *metav1.Condition {
	return meta.FindStatusCondition(cs.Status.Conditions, typ)
}

// waitCondition waits for a condition of the current generation to have
// status and, if given, a message containing text.
func waitCondition(t *testing.T, ns, typ string, status metav1.ConditionStatus, text string) *cometv1.CometServer {
	t.Helper()
	var cs cometv1.CometServer
	eventually(t, fmt.Sprintf("%s=%s %q", typ, status, text), func() error {
		if err := get(t, ns, "push", &cs); err != nil {
			return err
		}
		c := condition(&cs, typ)
		switch {
		case c == nil:
			return fmt.Errorf("no %s condition", typ)
		case c.ObservedGeneration != cs.Generation || cs.Status.ObservedGeneration != cs.Generation:
			return fmt.Errorf("condition of generation %d, want %d", c.ObservedGeneration, cs.Generation)
		case c.Status != status || !strings.Contains(c.Message, text):
			return fmt.Errorf("%s is %s: %s", typ, c.Status, c.Message)
		}
		return nil
	})
	return &cs
}

// pod is one fake pod: an API object marked running and ready, and a real
// comet server started from the config map the operator rendered.
type pod struct {
	t      *testing.T
	cs     string   // the CometServer's name
	args   []string // more arguments to the server
	obj    *corev1.Pod
	socket string
	srv    *server.Server
	stop   context.CancelFunc
	done   chan struct{}
}

// startPod creates a pod from the Deployment's template, as a ReplicaSet
// of the Deployment would (it makes that ReplicaSet too), starts its comet
// server, and marks it ready.
func startPod(t *testing.T, ns, name string) *pod {
	t.Helper()
	return startPodOf(t, ns, "push", name)
}

// startPodOf starts a pod of the CometServer csName, its server run with
// the extra arguments given.
func startPodOf(t *testing.T, ns, csName, name string, args ...string) *pod {
	t.Helper()
	var dep appsv1.Deployment
	eventually(t, "deployment", func() error { return get(t, ns, csName, &dep) })
	rs := replicaSetOf(t, &dep)
	tmpl := dep.Spec.Template
	obj := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: tmpl.Labels, Annotations: tmpl.Annotations,
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(rs, appsv1.SchemeGroupVersion.WithKind("ReplicaSet"))}},
		Spec: *tmpl.Spec.DeepCopy(),
	}
	if err := k8s.Create(ctx, obj); err != nil {
		t.Fatal(err)
	}
	p := &pod{t: t, cs: csName, args: args, obj: obj, socket: filepath.Join(testRoot, ns+"-"+name+".sock")}
	p.startServer()
	commander.setSocket(obj, p.socket)
	p.setReady("containerd://" + name + "-1")
	t.Cleanup(p.stopServer)
	observeDeploymentOf(t, ns, csName)
	return p
}

// replicaSetOf returns the ReplicaSet of dep's current template, making it
// as the Deployment controller (which envtest lacks) would.
func replicaSetOf(t *testing.T, dep *appsv1.Deployment) *appsv1.ReplicaSet {
	t.Helper()
	name := dep.Name + "-" + dep.Spec.Template.Annotations[StaticConfigHashAnnotation]
	var rs appsv1.ReplicaSet
	if err := get(t, dep.Namespace, name, &rs); err == nil {
		return &rs
	}
	rs = appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: dep.Namespace, Labels: dep.Spec.Template.Labels,
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(dep, appsv1.SchemeGroupVersion.WithKind("Deployment"))}},
		Spec: appsv1.ReplicaSetSpec{Replicas: dep.Spec.Replicas, Selector: dep.Spec.Selector, Template: dep.Spec.Template},
	}
	if err := k8s.Create(ctx, &rs); err != nil {
		t.Fatal(err)
	}
	return &rs
}

// observeDeployment plays the Deployment controller, which envtest lacks:
// it records the Deployment's current generation as observed.
func observeDeployment(t *testing.T, ns string) {
	t.Helper()
	observeDeploymentOf(t, ns, "push")
}

func observeDeploymentOf(t *testing.T, ns, csName string) {
	t.Helper()
	eventually(t, "deployment status", func() error {
		var dep appsv1.Deployment
		if err := get(t, ns, csName, &dep); err != nil {
			return err
		}
		dep.Status.ObservedGeneration = dep.Generation
		dep.Status.Replicas = *dep.Spec.Replicas
		dep.Status.UpdatedReplicas = *dep.Spec.Replicas
		dep.Status.ReadyReplicas = *dep.Spec.Replicas
		dep.Status.AvailableReplicas = *dep.Spec.Replicas
		return k8s.Status().Update(ctx, &dep)
	})
}

// startServer runs the pod's comet server from the config file the
// operator wrote, as a starting container would.
func (p *pod) startServer() {
	var cm corev1.ConfigMap
	if err := get(p.t, p.obj.Namespace, p.cs+"-config", &cm); err != nil {
		p.t.Fatal(err)
	}
	p.startServerWith(cm.Data["config.yaml"])
}

// startServerWith runs the pod's comet server from the given config file,
// its addresses moved to this machine.
func (p *pod) startServerWith(yaml string) {
	t := p.t
	file := filepath.Join(testRoot, p.obj.Namespace+"-"+p.obj.Name+".yaml")
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(append([]string{"--config", file, "--listen", "127.0.0.1:0", "--publisher-listen", "127.0.0.1:0",
		"--publisher-token-file", "", "--admin-socket", p.socket}, p.args...), func(string) string { return "" })
	if err != nil {
		t.Fatalf("config file does not load: %v", err)
	}
	if p.srv, err = server.New(cfg, quiet); err != nil {
		t.Fatal(err)
	}
	var runCtx context.Context
	runCtx, p.stop = context.WithCancel(context.Background())
	p.done = make(chan struct{})
	go func() { defer close(p.done); p.srv.Run(runCtx) }()
}

func (p *pod) stopServer() {
	if p.stop != nil {
		p.stop()
		<-p.done
		p.stop = nil
	}
}

// setNotReady marks the pod running but not ready, as a failing
// readiness probe does.
func (p *pod) setNotReady() {
	eventually(p.t, "pod not ready", func() error {
		var cur corev1.Pod
		if err := get(p.t, p.obj.Namespace, p.obj.Name, &cur); err != nil {
			return err
		}
		cur.Status.Conditions[0].Status = corev1.ConditionFalse
		cur.Status.ContainerStatuses[0].Ready = false
		return k8s.Status().Update(ctx, &cur)
	})
}

func (p *pod) setReady(containerID string) {
	t := p.t
	eventually(t, "pod status", func() error {
		var cur corev1.Pod
		if err := get(t, p.obj.Namespace, p.obj.Name, &cur); err != nil {
			return err
		}
		now := metav1.Now()
		cur.Status = corev1.PodStatus{
			Phase:      corev1.PodRunning,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}},
			ContainerStatuses: []corev1.ContainerStatus{{
				Name: containerName, Ready: true, ContainerID: containerID, Image: "cometserver:test",
				State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
			}},
		}
		return k8s.Status().Update(ctx, &cur)
	})
}

func (p *pod) status() contract.Status {
	p.t.Helper()
	st, err := admin.Client{Path: p.socket}.Status()
	if err != nil {
		p.t.Fatal(err)
	}
	return st
}

// poll starts a long poll on the pod's server; its status code arrives
// on the channel (-1 if the request failed).
func (p *pod) poll(channel string) <-chan int {
	c := make(chan int, 1)
	go func() {
		r, err := cometclient.Poll(context.Background(), http.DefaultClient, "http://"+p.srv.ClientAddr()+"/comet", channel)
		if err != nil {
			r.Status = -1
		}
		c <- r.Status
	}()
	return c
}

func (p *pod) waitWaiting(n int) {
	p.t.Helper()
	eventually(p.t, fmt.Sprintf("%d waiting", n), func() error {
		if w := p.status().Waiting; w != n {
			return fmt.Errorf("%d waiting", w)
		}
		return nil
	})
}

func replyWithin(t *testing.T, c <-chan int, d time.Duration) (int, bool) {
	t.Helper()
	select {
	case code := <-c:
		return code, true
	case <-time.After(d):
		return 0, false
	}
}

// podState finds a pod's entry in the status.
func podState(cs *cometv1.CometServer, name string) *cometv1.PodState {
	for i := range cs.Status.Pods {
		if cs.Status.Pods[i].Name == name {
			return &cs.Status.Pods[i]
		}
	}
	return nil
}

// waitPodState waits until the status records the pod holding live.
func waitPodState(t *testing.T, ns, name string, live Live) *cometv1.CometServer {
	t.Helper()
	var cs cometv1.CometServer
	eventually(t, name+" holding "+live.String(), func() error {
		if err := get(t, ns, "push", &cs); err != nil {
			return err
		}
		// What the test does not name is what the spec asks for.
		want := live
		if want.MaxVirtualChannels == nil {
			want.MaxVirtualChannels = liveState(&cs).MaxVirtualChannels
		}
		if want.History == nil {
			want.History = liveState(&cs).History
		}
		st := podState(&cs, name)
		if st == nil || !holds(st, want) || st.AppliedGeneration != cs.Generation {
			return fmt.Errorf("pod state %+v at generation %d", st, cs.Generation)
		}
		return nil
	})
	return &cs
}

func listEvents(t *testing.T, ns, reason string) []eventsv1.Event {
	t.Helper()
	var list eventsv1.EventList
	if err := k8s.List(ctx, &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	var out []eventsv1.Event
	for _, e := range list.Items {
		if e.Reason == reason {
			out = append(out, e)
		}
	}
	return out
}

func waitEvent(t *testing.T, ns, reason, text string) {
	t.Helper()
	eventually(t, "event "+reason, func() error {
		for _, e := range listEvents(t, ns, reason) {
			if strings.Contains(e.Note, text) {
				return nil
			}
		}
		return fmt.Errorf("no %s event with %q", reason, text)
	})
}

func TestCreateMakesObjects(t *testing.T) {
	bounded.Test(t, 2*time.Minute)
	ns := newNamespace(t)
	createCometServer(t, ns, cometv1.CometServerSpec{
		MaxVirtualChannels: ptr.To[int32](5),
		PodAnnotations:     map[string]string{"example.com/team": "push"},
		NodeSelector:       map[string]string{"disk": "ssd"},
		Tolerations:        []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "comet", Effect: corev1.TaintEffectNoSchedule}},
	})
	var cs cometv1.CometServer
	var dep appsv1.Deployment
	var svc, pubSvc corev1.Service
	var cm corev1.ConfigMap
	var secret corev1.Secret
	eventually(t, "owned objects", func() error {
		for name, obj := range map[string]client.Object{"push": &dep, "push-config": &cm, "push-publisher-token": &secret, "push-publisher": &pubSvc} {
			if err := get(t, ns, name, obj); err != nil {
				return err
			}
		}
		return get(t, ns, "push", &svc)
	})
	get(t, ns, "push", &cs)
	if cs.Spec.Activated == nil || !*cs.Spec.Activated || cs.Spec.Timeout.Duration != 20*time.Second ||
		*cs.Spec.Replicas != 1 || cs.Spec.Port != 8080 || cs.Spec.ServiceType != corev1.ServiceTypeClusterIP {
		t.Fatalf("defaults not applied by the API server: %+v", cs.Spec)
	}
	for _, obj := range []client.Object{&dep, &svc, &pubSvc, &cm, &secret} {
		refs := obj.GetOwnerReferences()
		if len(refs) != 1 || refs[0].UID != cs.UID || !*refs[0].Controller {
			t.Errorf("%T %s: owner references %+v", obj, obj.GetName(), refs)
		}
		if obj.GetLabels()[labelManagedBy] != managedBy {
			t.Errorf("%T %s lacks the managed-by label the caches watch", obj, obj.GetName())
		}
	}

	c := dep.Spec.Template.Spec.Containers[0]
	if *dep.Spec.Replicas != 1 || c.Image != "cometserver:test" || strings.Join(c.Args, " ") != "serve --config /etc/comet/config.yaml" ||
		c.ReadinessProbe.HTTPGet.Path != "/readyz" || !*c.SecurityContext.ReadOnlyRootFilesystem {
		t.Errorf("deployment container %+v", c)
	}
	tmpl := dep.Spec.Template
	if tmpl.Annotations[StaticConfigHashAnnotation] == "" || tmpl.Annotations["example.com/team"] != "push" ||
		tmpl.Spec.NodeSelector["disk"] != "ssd" || len(tmpl.Spec.Tolerations) != 1 || tmpl.Spec.Tolerations[0].Value != "comet" {
		t.Errorf("pod template %+v", tmpl.ObjectMeta)
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 8080 || svc.Spec.Selector[labelInstance] != "push" {
		t.Errorf("client service %+v", svc.Spec)
	}
	if len(pubSvc.Spec.Ports) != 1 || pubSvc.Spec.Ports[0].Port != contract.PublisherPort || pubSvc.Spec.Type != corev1.ServiceTypeClusterIP ||
		pubSvc.Spec.Selector[labelInstance] != "push" {
		t.Errorf("publisher service %+v", pubSvc.Spec)
	}
	if tmpl := dep.Spec.Template.Spec; tmpl.AutomountServiceAccountToken == nil || *tmpl.AutomountServiceAccountToken {
		t.Errorf("the comet pods mount a service account token: %v", tmpl.AutomountServiceAccountToken)
	}
	if len(secret.Data["token"]) < 40 {
		t.Errorf("generated token %d bytes", len(secret.Data["token"]))
	}
	if !strings.Contains(cm.Data["config.yaml"], "max_virtual_channels: 5") || !strings.Contains(cm.Data["config.yaml"], "timeout: 20s") {
		t.Errorf("config file:\n%s", cm.Data["config.yaml"])
	}
	if strings.Contains(cm.Data["config.yaml"], string(secret.Data["token"])) {
		t.Error("the token is in the config map")
	}

	got := waitCondition(t, ns, cometv1.ConditionAvailable, metav1.ConditionFalse, "0 of 1 pods ready")
	for typ, want := range map[string]metav1.ConditionStatus{
		cometv1.ConditionProgressing: metav1.ConditionTrue, cometv1.ConditionConfigApplied: metav1.ConditionTrue, cometv1.ConditionDegraded: metav1.ConditionFalse,
	} {
		if c := condition(got, typ); c == nil || c.Status != want {
			t.Errorf("%s = %+v, want %s", typ, c, want)
		}
	}
	if got.Status.Selector != "app.kubernetes.io/instance=push,app.kubernetes.io/name=cometserver" {
		t.Errorf("selector %q", got.Status.Selector)
	}

	p := startPod(t, ns, "push-a")
	waitCondition(t, ns, cometv1.ConditionAvailable, metav1.ConditionTrue, "1 of 1 pods ready")
	got = waitCondition(t, ns, cometv1.ConditionProgressing, metav1.ConditionFalse, "")
	if got.Status.Replicas != 1 || got.Status.ReadyReplicas != 1 {
		t.Errorf("replicas %d ready %d", got.Status.Replicas, got.Status.ReadyReplicas)
	}
	waitPodState(t, ns, p.obj.Name, Live{Activated: true, Timeout: 20 * time.Second})
	if st := p.status(); st.MaxVirtualChannels == nil || *st.MaxVirtualChannels != 5 {
		t.Errorf("the pod's server did not start from the config map: %+v", st)
	}

	// The scale subresource, as kubectl scale uses it.
	scale := &autoscalingv1.Scale{}
	if err := k8s.SubResource("scale").Get(ctx, got, scale); err != nil {
		t.Fatal(err)
	}
	if scale.Spec.Replicas != 1 || scale.Status.Selector != got.Status.Selector {
		t.Fatalf("scale %+v", scale)
	}
	// kubectl scale patches the subresource rather than updating it, so a
	// status write by the controller in between cannot make it conflict.
	patch := client.RawPatch(types.MergePatchType, []byte(`{"spec":{"replicas":0}}`))
	if err := k8s.SubResource("scale").Patch(ctx, got, patch, client.WithSubResourceBody(scale)); err != nil {
		t.Fatal(err)
	}
	if scale.Spec.Replicas != 0 {
		t.Fatalf("scale after the patch %+v", scale)
	}
	eventually(t, "deployment scaled to 0", func() error {
		if err := get(t, ns, "push", &dep); err != nil || *dep.Spec.Replicas != 0 {
			return fmt.Errorf("replicas %d, %v", *dep.Spec.Replicas, err)
		}
		return nil
	})
}

func TestInvalidSpecsAreRefused(t *testing.T) {
	bounded.Test(t, time.Minute)
	ns := newNamespace(t)
	tests := []struct {
		name string
		spec cometv1.CometServerSpec
		want string
	}{
		{"zero timeout", cometv1.CometServerSpec{Timeout: &metav1.Duration{}}, "spec.timeout: Invalid value"},
		{"timeout over 1h", cometv1.CometServerSpec{Timeout: &metav1.Duration{Duration: 2 * time.Hour}}, "timeout must be at least 1s and at most 1h"},
		// Below a second every browser client would re-poll in a tight loop
		// (issue 12, finding 9: 1ns was valid).
		{"timeout under 1s", cometv1.CometServerSpec{Timeout: &metav1.Duration{Duration: 999 * time.Millisecond}}, "timeout must be at least 1s and at most 1h"},
		{"timeout of 1ns", cometv1.CometServerSpec{Timeout: &metav1.Duration{Duration: time.Nanosecond}}, "timeout must be at least 1s"},
		{"negative max channels", cometv1.CometServerSpec{MaxVirtualChannels: ptr.To[int32](-1)}, "spec.maxVirtualChannels: Invalid value: -1"},
		{"two replicas", cometv1.CometServerSpec{Replicas: ptr.To[int32](2)}, "spec.replicas: Invalid value: replicas above 1 need a shared broker (spec.broker.type: redis)"},
		{"negative replicas", cometv1.CometServerSpec{Replicas: ptr.To[int32](-1)}, "spec.replicas: Invalid value: -1"},
		{"port out of range", cometv1.CometServerSpec{Port: 70000}, "spec.port: Invalid value: 70000"},
		{"port of the publisher", cometv1.CometServerSpec{Port: 8081}, "port 8081 is the publisher API's"},
		{"service type", cometv1.CometServerSpec{ServiceType: "Headless"}, "spec.serviceType: Unsupported value: \"Headless\""},
		{"image with spaces", cometv1.CometServerSpec{Image: " comet:1 "}, "image must be a non-empty reference"},
		{"token secret name", cometv1.CometServerSpec{PublisherTokenSecret: "Bad_Name"}, "spec.publisherTokenSecret: Invalid value: \"Bad_Name\""},
	}
	for i, tt := range tests {
		cs := &cometv1.CometServer{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprint("bad-", i), Namespace: ns}, Spec: tt.spec}
		err := k8s.Create(ctx, cs)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v\nwant an error with %q", tt.name, err, tt.want)
		}
	}
	// A timeout that is not a duration at all, sent as raw JSON.
	raw := []byte(`{"apiVersion":"comet.cometop.dev/v1alpha1","kind":"CometServer","metadata":{"name":"bad-raw","namespace":"` + ns + `"},"spec":{"timeout":"soon"}}`)
	obj := &cometv1.CometServer{ObjectMeta: metav1.ObjectMeta{Name: "bad-raw", Namespace: ns}}
	err := k8s.Patch(ctx, obj, client.RawPatch(types.ApplyPatchType, raw), client.FieldOwner("test"))
	if err == nil || !strings.Contains(err.Error(), "spec.timeout") {
		t.Errorf("timeout \"soon\": %v", err)
	}
}

func TestLiveStateIsPushedWithoutRestart(t *testing.T) {
	bounded.Test(t, 2*time.Minute)
	ns := newNamespace(t)
	createCometServer(t, ns, cometv1.CometServerSpec{})
	p := startPod(t, ns, "push-a")
	waitPodState(t, ns, "push-a", Live{Activated: true, Timeout: 20 * time.Second})
	if _, err := p.srv.Hub().Create(context.Background(), "news"); err != nil {
		t.Fatal(err)
	}
	var dep appsv1.Deployment
	get(t, ns, "push", &dep)
	depGeneration, hash := dep.Generation, dep.Spec.Template.Annotations[StaticConfigHashAnnotation]

	// Deactivate: a waiting client gets 503, and so does a new one.
	waiting := p.poll("news")
	p.waitWaiting(1)
	updateSpec(t, ns, func(s *cometv1.CometServerSpec) { s.Activated = ptr.To(false) })
	cs := waitPodState(t, ns, "push-a", Live{Activated: false, Timeout: 20 * time.Second})
	if code, ok := replyWithin(t, waiting, 10*time.Second); !ok || code != 503 {
		t.Fatalf("waiting client after deactivate: %d", code)
	}
	if code, _ := replyWithin(t, p.poll("news"), 10*time.Second); code != 503 {
		t.Fatalf("new client while deactivated: %d", code)
	}
	if st := p.status(); st.Activated {
		t.Fatal("the server is still active")
	}
	if c := condition(cs, cometv1.ConditionConfigApplied); c.Status != metav1.ConditionTrue {
		t.Fatalf("ConfigApplied %+v", c)
	}
	waitEvent(t, ns, "Pushed", "sent comet:deactivate")

	// Reactivate and retime without KILL: a waiting client keeps waiting.
	updateSpec(t, ns, func(s *cometv1.CometServerSpec) { s.Activated = ptr.To(true) })
	waitPodState(t, ns, "push-a", Live{Activated: true, Timeout: 20 * time.Second})
	waiting = p.poll("news")
	p.waitWaiting(1)
	updateSpec(t, ns, func(s *cometv1.CometServerSpec) { s.Timeout = &metav1.Duration{Duration: 7 * time.Second} })
	waitPodState(t, ns, "push-a", Live{Activated: true, Timeout: 7 * time.Second})
	if st := p.status(); st.TimeoutDuration() != 7*time.Second || st.Waiting != 1 {
		t.Fatalf("after a retime without kill: %+v", st)
	}

	// Retime with KILL: the waiting client gets 503 at once.
	updateSpec(t, ns, func(s *cometv1.CometServerSpec) {
		s.Timeout = &metav1.Duration{Duration: 9 * time.Second}
		s.KillOnTimeoutChange = true
	})
	waitPodState(t, ns, "push-a", Live{Activated: true, Timeout: 9 * time.Second})
	if code, ok := replyWithin(t, waiting, 10*time.Second); !ok || code != 503 {
		t.Fatalf("waiting client after set_timeout KILL: %d", code)
	}
	waitEvent(t, ns, "Pushed", "sent comet:set_timeout 9 KILL")

	// KILL only when the timeout really changes: toggling activated with
	// killOnTimeoutChange set sends no set_timeout.
	for _, c := range commander.callsFor(ns) {
		if !strings.Contains(c, "--socket") || strings.Contains(c, "token") {
			t.Fatalf("exec argv %q", c)
		}
	}
	before := len(listEvents(t, ns, "Pushed"))
	updateSpec(t, ns, func(s *cometv1.CometServerSpec) { s.Activated = ptr.To(false) })
	waitPodState(t, ns, "push-a", Live{Activated: false, Timeout: 9 * time.Second})
	eventually(t, "another Pushed event", func() error {
		evs := listEvents(t, ns, "Pushed")
		if len(evs) <= before {
			return fmt.Errorf("%d events", len(evs))
		}
		for _, e := range evs {
			if strings.Contains(e.Note, "sent comet:deactivate") && strings.Contains(e.Note, "set_timeout") {
				return fmt.Errorf("a deactivation also sent a set_timeout: %s", e.Note)
			}
		}
		return nil
	})

	// None of it touched the pods.
	get(t, ns, "push", &dep)
	if dep.Generation != depGeneration || dep.Spec.Template.Annotations[StaticConfigHashAnnotation] != hash {
		t.Fatalf("a live change rolled the deployment: generation %d to %d", depGeneration, dep.Generation)
	}
	// A pod started now comes up in the live state, from the config map.
	var cm corev1.ConfigMap
	get(t, ns, "push-config", &cm)
	if !strings.Contains(cm.Data["config.yaml"], "activated: false") || !strings.Contains(cm.Data["config.yaml"], "timeout: 9s") {
		t.Fatalf("config map does not hold the live state:\n%s", cm.Data["config.yaml"])
	}
}

func TestDriftAndRestartsArePushedAgain(t *testing.T) {
	bounded.Test(t, 2*time.Minute)
	ns := newNamespace(t)
	createCometServer(t, ns, cometv1.CometServerSpec{Timeout: &metav1.Duration{Duration: 30 * time.Second}})
	p := startPod(t, ns, "push-a")
	waitPodState(t, ns, "push-a", Live{Activated: true, Timeout: 30 * time.Second})

	// A change by hand, on the socket, is corrected within the resync period.
	if err := (admin.Client{Path: p.socket}).Run(admin.Command{Verb: admin.Deactivate}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "drift corrected", func() error {
		if st := p.status(); !st.Activated {
			return fmt.Errorf("still deactivated")
		}
		return nil
	})
	waitEvent(t, ns, "Pushed", "sent comet:activate")

	// A restarted container (new container ID) comes up from the config file
	// and is pushed again at once: here its server restarts with a stale
	// file, as a kubelet may mount one. The suite's resync period would
	// correct the pod anyway within the wait, so this part runs under a
	// reconciler of its own whose resync period is an hour: only the new
	// container ID can bring the push.
	const longResync = time.Hour
	ns = newNamespace(t)
	startManager(t, ns, longResync)
	createLabelled(t, ns, map[string]string{ownReconcilerLabel: "long-resync"}, cometv1.CometServerSpec{Timeout: &metav1.Duration{Duration: 30 * time.Second}})
	p = startPod(t, ns, "push-a")
	cs := waitPodState(t, ns, "push-a", Live{Activated: true, Timeout: 30 * time.Second})
	if st := podState(cs, "push-a"); st.ContainerID != "containerd://push-a-1" {
		t.Fatalf("container id %q before the restart", st.ContainerID)
	}
	calls := len(commander.callsFor(ns))

	restarted := time.Now()
	p.stopServer()
	p.startServerWith("timeout: 5s\nactivated: false\n")
	p.setReady("containerd://push-a-2")
	eventually(t, "restarted container pushed", func() error {
		if st := p.status(); !st.Activated || st.TimeoutDuration() != 30*time.Second {
			return fmt.Errorf("server %+v", st)
		}
		return nil
	})
	eventually(t, "the restarted container recorded", func() error {
		cs = waitPodState(t, ns, "push-a", Live{Activated: true, Timeout: 30 * time.Second})
		if st := podState(cs, "push-a"); st.ContainerID != "containerd://push-a-2" {
			return fmt.Errorf("container id %q", st.ContainerID)
		}
		return nil
	})
	if took := time.Since(restarted); took >= longResync/2 {
		t.Fatalf("pushed %v after the restart: a resync could have done it", took)
	}
	if n := len(commander.callsFor(ns)); n <= calls {
		t.Fatalf("%d execs after the restart, want the push", n-calls)
	}
}

func TestStaticChangesRollLiveChangesDoNot(t *testing.T) {
	bounded.Test(t, time.Minute)
	ns := newNamespace(t)
	createCometServer(t, ns, cometv1.CometServerSpec{})
	var dep appsv1.Deployment
	eventually(t, "deployment", func() error { return get(t, ns, "push", &dep) })
	hash := dep.Spec.Template.Annotations[StaticConfigHashAnnotation]

	updateSpec(t, ns, func(s *cometv1.CometServerSpec) {
		s.Activated = ptr.To(false)
		s.Timeout = &metav1.Duration{Duration: time.Minute}
		s.MaxVirtualChannels = ptr.To[int32](100)
		s.History = &cometv1.HistorySpec{Size: ptr.To[int32](3)}
	})
	waitCondition(t, ns, cometv1.ConditionConfigApplied, metav1.ConditionTrue, "activated=false timeout=1m0s max_virtual_channels=100 history=3/2m0s")
	get(t, ns, "push", &dep)
	if dep.Spec.Template.Annotations[StaticConfigHashAnnotation] != hash {
		t.Fatal("a live change changed the pod template")
	}

	updateSpec(t, ns, func(s *cometv1.CometServerSpec) { s.Port = 9090 })
	eventually(t, "new template hash", func() error {
		if err := get(t, ns, "push", &dep); err != nil {
			return err
		}
		if dep.Spec.Template.Annotations[StaticConfigHashAnnotation] == hash {
			return fmt.Errorf("hash unchanged")
		}
		return nil
	})
	waitEvent(t, ns, "RollingOut", "static config changed")
}

func TestSteadyStateWritesNothing(t *testing.T) {
	bounded.Test(t, time.Minute)
	ns := newNamespace(t)
	createCometServer(t, ns, cometv1.CometServerSpec{})
	startPod(t, ns, "push-a")
	waitPodState(t, ns, "push-a", Live{Activated: true, Timeout: 20 * time.Second})
	waitCondition(t, ns, cometv1.ConditionProgressing, metav1.ConditionFalse, "")

	versions := func() string {
		var cs cometv1.CometServer
		var dep appsv1.Deployment
		var svc corev1.Service
		var cm corev1.ConfigMap
		get(t, ns, "push", &cs)
		get(t, ns, "push", &dep)
		get(t, ns, "push", &svc)
		get(t, ns, "push-config", &cm)
		return strings.Join([]string{cs.ResourceVersion, dep.ResourceVersion, svc.ResourceVersion, cm.ResourceVersion}, ",")
	}
	// Each periodic check of the pod is one exec. The reconciles of one
	// CometServer run one at a time, so when a check has begun, every
	// reconcile that the setup caused has ended.
	checks := func(n int, what string) {
		t.Helper()
		bounded.Wait(t, what, 4*testResync+10*time.Second, func() bool {
			return len(commander.callsFor(ns)) >= n
		})
	}
	first := len(commander.callsFor(ns)) + 1
	checks(first, "a periodic check")
	before := versions()
	// When the fourth check begins, the second and third have run whole
	// between the two readings: two resync periods of steady state.
	checks(first+3, "three more periodic checks")
	if after := versions(); after != before {
		t.Fatalf("resource versions moved in a steady state: %s to %s", before, after)
	}
}

func TestFailedPushShowsAndIsRetried(t *testing.T) {
	bounded.Test(t, 2*time.Minute)
	ns := newNamespace(t)
	createCometServer(t, ns, cometv1.CometServerSpec{})
	p := startPod(t, ns, "push-a")
	waitPodState(t, ns, "push-a", Live{Activated: true, Timeout: 20 * time.Second})

	// Server down: ctl cannot reach the socket.
	p.stopServer()
	updateSpec(t, ns, func(s *cometv1.CometServerSpec) { s.Activated = ptr.To(false) })
	cs := waitCondition(t, ns, cometv1.ConditionDegraded, metav1.ConditionTrue, "push failed on pods push-a")
	if c := condition(cs, cometv1.ConditionDegraded); c.Reason != "PushFailed" || !strings.Contains(c.Message, "exit code 3") {
		t.Fatalf("Degraded %+v", c)
	}
	if c := condition(cs, cometv1.ConditionConfigApplied); c.Status != metav1.ConditionFalse || c.Reason != "PushFailed" {
		t.Fatalf("ConfigApplied %+v", c)
	}
	if st := podState(cs, "push-a"); st == nil || !strings.Contains(st.LastError, "admin socket unreachable") {
		t.Fatalf("pod state %+v", st)
	}
	waitEvent(t, ns, "PushFailed", "push-a")

	// A server that accepts and never answers: the push times out.
	os.Remove(p.socket)
	ln, err := net.Listen("unix", p.socket)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	// ctl gives up within its share of the push timeout (9/10 of it), and
	// says why, before the exec is cut (issue 12, finding 8).
	cs = waitCondition(t, ns, cometv1.ConditionDegraded, metav1.ConditionTrue, "reading answer")
	if c := condition(cs, cometv1.ConditionDegraded); !strings.Contains(c.Message, "exit code 3") || !strings.Contains(c.Message, "i/o timeout") {
		t.Fatalf("Degraded %+v, want ctl's own timeout", c)
	}
	ln.Close()

	// The server is back (from the config map): the retry converges.
	p.startServer()
	waitPodState(t, ns, "push-a", Live{Activated: false, Timeout: 20 * time.Second})
	waitCondition(t, ns, cometv1.ConditionDegraded, metav1.ConditionFalse, "")
	if st := p.status(); st.Activated {
		t.Fatal("the server did not get the push")
	}
}

// The samples users start from are accepted by the API server and reconcile.
func TestSamplesAreValid(t *testing.T) {
	bounded.Test(t, 2*time.Minute)
	files, err := filepath.Glob("../config/samples/comet_*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no samples: %v", err)
	}
	for _, f := range files {
		ns := newNamespace(t)
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		// A sample may hold the Secrets its CometServer names, before it.
		docs := strings.Split(string(b), "\n---\n")
		for _, doc := range docs[:len(docs)-1] {
			var secret corev1.Secret
			if err := yaml.UnmarshalStrict([]byte(doc), &secret); err != nil || secret.Kind != "Secret" {
				t.Fatalf("%s: a document before the CometServer that is not a Secret: %v", f, err)
			}
			secret.Namespace = ns
			if err := k8s.Create(ctx, &secret); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
		}
		var cs cometv1.CometServer
		if err := yaml.UnmarshalStrict([]byte(docs[len(docs)-1]), &cs); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		cs.Namespace = ns
		if err := k8s.Create(ctx, &cs); err != nil {
			t.Fatalf("%s refused: %v", f, err)
		}
		t.Cleanup(func() { deleteCometServer(t, &cs) })
		eventually(t, f+" reconciled", func() error {
			var got cometv1.CometServer
			if err := get(t, ns, cs.Name, &got); err != nil {
				return err
			}
			if got.Status.ObservedGeneration != got.Generation {
				return fmt.Errorf("not observed yet")
			}
			// Its Secrets are accepted: the Deployment is made.
			if c := condition(&got, cometv1.ConditionDegraded); c == nil || c.Reason == "BrokerSecretRefused" || c.Reason == "PublisherTokenRefused" {
				return fmt.Errorf("degraded: %+v", c)
			}
			return nil
		})
	}
}

// `kubectl get comet` shows, as the README says, ready pods, activated,
// timeout and whether the ready pods hold the live state: the columns the
// API server serves for the CRD.
func TestPrinterColumns(t *testing.T) {
	bounded.Test(t, time.Minute)
	newNamespace(t) // skips without an API server
	var crd apiextensionsv1.CustomResourceDefinition
	if err := k8s.Get(ctx, types.NamespacedName{Name: "cometservers.comet.cometop.dev"}, &crd); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range crd.Spec.Versions[0].AdditionalPrinterColumns {
		got = append(got, c.Name+"="+c.JSONPath)
	}
	// What the pods hold, not what the spec asks.
	want := []string{"Replicas=.status.replicas", "Ready=.status.readyReplicas", "Activated=.status.activated", "Timeout=.status.timeout",
		"Broker=.status.broker", "Waiting=.status.waiting",
		`Applied=.status.conditions[?(@.type=="ConfigApplied")].status`, "Age=.metadata.creationTimestamp"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("columns %q, want %q", got, want)
	}
	if crd.Spec.Names.ShortNames[0] != "comet" {
		t.Fatalf("short names %q", crd.Spec.Names.ShortNames)
	}
}
