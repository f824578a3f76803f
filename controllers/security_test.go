package controllers

// The operator's own surfaces, as an attacker inside a namespace would try
// them (issue 12, findings 5 to 8).

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	cometv1 "github.com/cometop/comet-operator/api/v1alpha1"
	"github.com/cometop/comet-operator/cometserver/contract"
	"github.com/cometop/comet-operator/test/bounded"
)

// A pod that only carries a CometServer's labels is never exec'd into, nor
// counted: only the pods of its Deployment's ReplicaSets are.
func TestForeignLabelledPodIsLeftAlone(t *testing.T) {
	bounded.Test(t, 2*time.Minute)
	ns := newNamespace(t)
	createCometServer(t, ns, cometv1.CometServerSpec{})
	ours := startPod(t, ns, "push-a")
	waitPodState(t, ns, "push-a", Live{Activated: true, Timeout: 20 * time.Second})

	var dep appsv1.Deployment
	get(t, ns, "push", &dep)
	foreign := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "intruder", Namespace: ns, Labels: dep.Spec.Template.Labels},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: containerName, Image: "evil:1"}}},
	}
	if err := k8s.Create(ctx, foreign); err != nil {
		t.Fatal(err)
	}
	commander.setSocket(foreign, ours.socket) // were it exec'd into, it would answer
	intruder := &pod{t: t, obj: foreign}
	intruder.setReady("containerd://intruder-1")

	// A live change is pushed to our pod; the labelled one gets nothing.
	updateSpec(t, ns, func(s *cometv1.CometServerSpec) { s.Activated = ptr.To(false) })
	cs := waitPodState(t, ns, "push-a", Live{Activated: false, Timeout: 20 * time.Second})
	for _, c := range commander.callsFor(ns) {
		if strings.HasPrefix(c, ns+"/intruder:") {
			t.Fatalf("exec'd into a pod the CometServer does not own: %s", c)
		}
	}
	if podState(cs, "intruder") != nil || cs.Status.Replicas != 1 || cs.Status.ReadyReplicas != 1 {
		t.Fatalf("the labelled pod is in the status: %d replicas, %d ready, pods %+v", cs.Status.Replicas, cs.Status.ReadyReplicas, cs.Status.Pods)
	}
}

// A Secret named in spec.publisherTokenSecret is mounted only once it opts
// in with the label: until then the Deployment is not made, and the status
// says why. Nothing secret is read from one that does not opt in.
func TestTokenSecretMustOptIn(t *testing.T) {
	bounded.Test(t, 2*time.Minute)
	ns := newNamespace(t)
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "someone-elses", Namespace: ns},
		Data:       map[string][]byte{contract.TokenKey: []byte("a-database-password")},
	}
	if err := k8s.Create(ctx, secret); err != nil {
		t.Fatal(err)
	}
	createCometServer(t, ns, cometv1.CometServerSpec{PublisherTokenSecret: "missing"})
	cs := waitCondition(t, ns, cometv1.ConditionPublisherTokenAccepted, metav1.ConditionFalse, "secret missing not found")
	if c := condition(cs, cometv1.ConditionPublisherTokenAccepted); c.Reason != "SecretNotFound" {
		t.Fatalf("condition %+v", c)
	}

	updateSpec(t, ns, func(s *cometv1.CometServerSpec) { s.PublisherTokenSecret = "someone-elses" })
	cs = waitCondition(t, ns, cometv1.ConditionPublisherTokenAccepted, metav1.ConditionFalse, "lacks the label "+cometv1.PublisherTokenLabel+"=true")
	if c := condition(cs, cometv1.ConditionDegraded); c.Status != metav1.ConditionTrue || c.Reason != "PublisherTokenRefused" {
		t.Fatalf("Degraded %+v", c)
	}
	var dep appsv1.Deployment
	if err := get(t, ns, "push", &dep); !apierrors.IsNotFound(err) {
		t.Fatalf("a Deployment was made with a Secret that did not opt in: %v", err)
	}

	// It opts in, but has no token.
	secret.Labels = map[string]string{cometv1.PublisherTokenLabel: "true"}
	secret.Data = map[string][]byte{"password": []byte("x")}
	if err := k8s.Update(ctx, secret); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, ns, cometv1.ConditionPublisherTokenAccepted, metav1.ConditionFalse, `has no key "token"`)

	// It opts in with a token: the pods mount it.
	secret.Data = map[string][]byte{contract.TokenKey: []byte("the-publisher-token")}
	if err := k8s.Update(ctx, secret); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, ns, cometv1.ConditionPublisherTokenAccepted, metav1.ConditionTrue, "secret someone-elses opted in")
	eventually(t, "the deployment", func() error { return get(t, ns, "push", &dep) })
	mounted := ""
	for _, v := range dep.Spec.Template.Spec.Volumes {
		if v.Secret != nil {
			mounted = v.Secret.SecretName
		}
	}
	if mounted != "someone-elses" {
		t.Fatalf("the pods mount secret %q", mounted)
	}
	waitCondition(t, ns, cometv1.ConditionDegraded, metav1.ConditionFalse, "")
}

// A LoadBalancer CometServer exposes its client endpoint only: the
// publisher API has a ClusterIP Service of its own.
func TestLoadBalancerExposesOnlyTheClientPort(t *testing.T) {
	bounded.Test(t, time.Minute)
	ns := newNamespace(t)
	createCometServer(t, ns, cometv1.CometServerSpec{ServiceType: corev1.ServiceTypeLoadBalancer, Port: 9000})
	var client, publisher corev1.Service
	eventually(t, "the services", func() error {
		if err := get(t, ns, "push", &client); err != nil {
			return err
		}
		return get(t, ns, "push-publisher", &publisher)
	})
	if client.Spec.Type != corev1.ServiceTypeLoadBalancer || len(client.Spec.Ports) != 1 || client.Spec.Ports[0].Port != 9000 {
		t.Fatalf("client service %s %+v", client.Spec.Type, client.Spec.Ports)
	}
	if publisher.Spec.Type != corev1.ServiceTypeClusterIP || len(publisher.Spec.Ports) != 1 || publisher.Spec.Ports[0].Port != contract.PublisherPort {
		t.Fatalf("publisher service %s %+v", publisher.Spec.Type, publisher.Spec.Ports)
	}
}

// spec.networkPolicy makes a NetworkPolicy for the pods: the client port
// open to clientFrom (or everyone), the publisher port only to
// publisherFrom; removing it deletes the policy.
func TestNetworkPolicy(t *testing.T) {
	bounded.Test(t, time.Minute)
	ns := newNamespace(t)
	monitoring := networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"name": "monitoring"}}}
	createCometServer(t, ns, cometv1.CometServerSpec{NetworkPolicy: &cometv1.NetworkPolicySpec{PublisherFrom: []networkingv1.NetworkPolicyPeer{monitoring}}})
	var np networkingv1.NetworkPolicy
	eventually(t, "the network policy", func() error { return get(t, ns, "push", &np) })
	if np.Spec.PodSelector.MatchLabels[labelInstance] != "push" || len(np.Spec.Ingress) != 2 ||
		np.Spec.Ingress[0].Ports[0].Port.IntVal != 8080 || len(np.Spec.Ingress[0].From) != 0 ||
		np.Spec.Ingress[1].Ports[0].Port.IntVal != contract.PublisherPort || len(np.Spec.Ingress[1].From) != 1 ||
		np.Spec.Ingress[1].From[0].NamespaceSelector.MatchLabels["name"] != "monitoring" {
		t.Fatalf("network policy %+v", np.Spec)
	}

	// Without publisherFrom the publisher port has no rule: nobody reaches it.
	updateSpec(t, ns, func(s *cometv1.CometServerSpec) { s.NetworkPolicy.PublisherFrom = nil })
	eventually(t, "the publisher rule gone", func() error {
		if err := get(t, ns, "push", &np); err != nil {
			return err
		}
		if len(np.Spec.Ingress) != 1 {
			return fmt.Errorf("%d rules", len(np.Spec.Ingress))
		}
		return nil
	})

	updateSpec(t, ns, func(s *cometv1.CometServerSpec) { s.NetworkPolicy = nil })
	eventually(t, "the policy deleted", func() error {
		if err := get(t, ns, "push", &np); !apierrors.IsNotFound(err) {
			return fmt.Errorf("still there: %v", err)
		}
		return nil
	})

	// A policy of the user's that happens to have the name is not the
	// operator's to delete.
	mine := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "push", Namespace: ns},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{}}}
	if err := k8s.Create(ctx, mine); err != nil {
		t.Fatal(err)
	}
	updateSpec(t, ns, func(s *cometv1.CometServerSpec) { s.PodAnnotations = map[string]string{"touch": "1"} })
	waitCondition(t, ns, cometv1.ConditionAvailable, metav1.ConditionFalse, "")
	if err := get(t, ns, "push", &np); err != nil {
		t.Fatalf("the user's policy was deleted: %v", err)
	}
}

// A push that hangs in one CometServer's pod does not hold another
// CometServer's reconcile (issue 12, finding 8: one worker for all).
func TestAHungPushHoldsNoOtherCometServer(t *testing.T) {
	bounded.Test(t, 2*time.Minute)
	nsA, nsB := newNamespace(t), newNamespace(t)
	createCometServer(t, nsA, cometv1.CometServerSpec{})
	createCometServer(t, nsB, cometv1.CometServerSpec{})
	a, b := startPod(t, nsA, "push-a"), startPod(t, nsB, "push-a")
	waitPodState(t, nsA, "push-a", Live{Activated: true, Timeout: 20 * time.Second})
	waitPodState(t, nsB, "push-a", Live{Activated: true, Timeout: 20 * time.Second})

	// A's server stops answering: a push to it hangs until ctl gives up.
	a.stopServer()
	silent, err := net.Listen("unix", a.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	accepted := make(chan struct{}, 16)
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			accepted <- struct{}{}
		}
	}()
	updateSpec(t, nsA, func(s *cometv1.CometServerSpec) { s.Activated = ptr.To(false) })
	bounded.Recv(t, "a push to A's silent server", 10*time.Second, accepted)

	hung := time.Now()
	updateSpec(t, nsB, func(s *cometv1.CometServerSpec) { s.Activated = ptr.To(false) })
	bounded.Wait(t, "B's server deactivated", 10*time.Second, func() bool { return !b.status().Activated })
	if took := time.Since(hung); took > testPush*9/10 {
		t.Fatalf("B was pushed %v after A's push began to hang: it waited for it", took)
	}
}
