package controllers

import (
	"fmt"
	"reflect"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	cometv1 "github.com/cometop/comet-operator/api/v1alpha1"
	"github.com/cometop/comet-operator/test/bounded"
)

// The unit tests of computeStatus: a pure function, so every case states
// its whole input and its whole expected output, exactly.

const (
	statusGeneration = 4
	currentHash      = "h1"
	staleHash        = "h0"
)

var statusLive = Live{Activated: true, Timeout: 20 * time.Second}

type podOption func(*corev1.Pod)

func withHash(h string) podOption {
	return func(p *corev1.Pod) { p.Annotations[StaticConfigHashAnnotation] = h }
}

func notReady(p *corev1.Pod) { p.Status.Conditions[0].Status = corev1.ConditionFalse }

func terminating(p *corev1.Pod) { p.DeletionTimestamp = ptr.To(metav1.Now()) }

func phase(ph corev1.PodPhase) podOption { return func(p *corev1.Pod) { p.Status.Phase = ph } }

func containerWaiting(p *corev1.Pod) {
	p.Status.ContainerStatuses[0].State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}}
}

func containerID(id string) podOption {
	return func(p *corev1.Pod) { p.Status.ContainerStatuses[0].ContainerID = id }
}

// testPod is a running, ready pod of the current template, unless options
// say otherwise. Its UID is its name.
func testPod(name string, opts ...podOption) corev1.Pod {
	p := corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: "ns", UID: types.UID("uid-" + name),
			Annotations: map[string]string{StaticConfigHashAnnotation: currentHash},
		},
		Status: corev1.PodStatus{
			Phase:      corev1.PodRunning,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
			ContainerStatuses: []corev1.ContainerStatus{{
				Name: containerName, ContainerID: "containerd://" + name + "-1",
				State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}},
			}},
		},
	}
	for _, o := range opts {
		o(&p)
	}
	return p
}

func testDeployment(generation, observed int64, conds ...appsv1.DeploymentCondition) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "push", Namespace: "ns", Generation: generation},
		Status:     appsv1.DeploymentStatus{ObservedGeneration: observed, Conditions: conds},
	}
}

func holding(name string) cometv1.PodState {
	return cometv1.PodState{Name: name, Ready: true, Activated: ptr.To(true), Timeout: &metav1.Duration{Duration: 20 * time.Second},
		AppliedGeneration: statusGeneration, ContainerID: "containerd://" + name + "-1",
		Broker: &cometv1.PodBrokerState{Name: "memory", Ready: true}}
}

func failing(name, lastError string) cometv1.PodState {
	st := holding(name)
	st.LastError = lastError // the recorded state matches live: only the error keeps it behind
	return st
}

func testCometServer(replicas *int32, conds ...metav1.Condition) *cometv1.CometServer {
	return &cometv1.CometServer{
		ObjectMeta: metav1.ObjectMeta{Name: "push", Namespace: "ns", Generation: statusGeneration},
		Spec:       cometv1.CometServerSpec{Replicas: replicas},
		Status:     cometv1.CometServerStatus{Conditions: conds},
	}
}

// want is one expected condition; its ObservedGeneration is always the
// CometServer's generation.
type want struct {
	status  metav1.ConditionStatus
	reason  string
	message string
}

var (
	memoryBroker   = brokerVerdict{accepted: true, reason: "InMemory", message: "the in-memory broker needs no Secret"}
	generatedToken = tokenVerdict{accepted: true, reason: "Generated", message: "generated in secret push-publisher-token"}
	refusedToken   = tokenVerdict{reason: "SecretNotOptedIn", message: "secret mine lacks the label comet.cometop.dev/publisher-token=true"}
)

const (
	applied1   = "1 ready pods hold activated=true timeout=20s"
	healthy    = "pushes and rollout healthy"
	liveBehind = "pods behind activated=true timeout=20s: "
)

func TestComputeStatus(t *testing.T) {
	bounded.Test(t, 30*time.Second)
	T, F := metav1.ConditionTrue, metav1.ConditionFalse
	tests := []struct {
		name                    string
		replicas                *int32
		dep                     *appsv1.Deployment
		pods                    []corev1.Pod
		states                  []cometv1.PodState
		token                   *tokenVerdict // nil: the generated token
		wantReplicas, wantReady int32
		available, progressing  want
		configApplied, degraded want
	}{{
		name:     "one pod, ready, current, holding the live state",
		replicas: ptr.To[int32](1), dep: testDeployment(3, 3),
		pods: []corev1.Pod{testPod("a")}, states: []cometv1.PodState{holding("a")},
		wantReplicas: 1, wantReady: 1,
		available:     want{T, "MinimumReplicasAvailable", "1 of 1 pods ready"},
		progressing:   want{F, "RolloutComplete", "1 of 1 pods ready and up to date"},
		configApplied: want{T, "Applied", applied1},
		degraded:      want{F, "AsExpected", healthy},
	}, {
		name:     "replicas unset means one; no Deployment yet",
		replicas: nil, dep: &appsv1.Deployment{},
		wantReplicas: 0, wantReady: 0,
		available:     want{F, "MinimumReplicasUnavailable", "0 of 1 pods ready"},
		progressing:   want{T, "RollingOut", "0 of 1 pods ready, 0 with an outdated config"},
		configApplied: want{T, "Applied", "0 ready pods hold activated=true timeout=20s"},
		degraded:      want{F, "AsExpected", healthy},
	}, {
		name:     "replicas unset means one; its pod ready",
		replicas: nil, dep: testDeployment(1, 1),
		pods: []corev1.Pod{testPod("a")}, states: []cometv1.PodState{holding("a")},
		wantReplicas: 1, wantReady: 1,
		available:     want{T, "MinimumReplicasAvailable", "1 of 1 pods ready"},
		progressing:   want{F, "RolloutComplete", "1 of 1 pods ready and up to date"},
		configApplied: want{T, "Applied", applied1},
		degraded:      want{F, "AsExpected", healthy},
	}, {
		name:     "scaled to zero: available, and complete",
		replicas: ptr.To[int32](0), dep: testDeployment(2, 2),
		wantReplicas: 0, wantReady: 0,
		available:     want{T, "MinimumReplicasAvailable", "0 of 0 pods ready"},
		progressing:   want{F, "RolloutComplete", "0 of 0 pods ready and up to date"},
		configApplied: want{T, "Applied", "0 ready pods hold activated=true timeout=20s"},
		degraded:      want{F, "AsExpected", healthy},
	}, {
		name:     "a pod of an outdated config is rolling out",
		replicas: ptr.To[int32](1), dep: testDeployment(3, 3),
		pods: []corev1.Pod{testPod("a", withHash(staleHash))}, states: []cometv1.PodState{holding("a")},
		wantReplicas: 1, wantReady: 1,
		available:     want{T, "MinimumReplicasAvailable", "1 of 1 pods ready"},
		progressing:   want{T, "RollingOut", "1 of 1 pods ready, 1 with an outdated config"},
		configApplied: want{T, "Applied", applied1},
		degraded:      want{F, "AsExpected", healthy},
	}, {
		name:     "more pods than desired, all ready and current, is rolling out",
		replicas: ptr.To[int32](1), dep: testDeployment(3, 3),
		pods: []corev1.Pod{testPod("a"), testPod("b")}, states: []cometv1.PodState{holding("a"), holding("b")},
		wantReplicas: 2, wantReady: 2,
		available:     want{T, "MinimumReplicasAvailable", "2 of 1 pods ready"},
		progressing:   want{T, "RollingOut", "2 of 1 pods ready, 0 with an outdated config"},
		configApplied: want{T, "Applied", "2 ready pods hold activated=true timeout=20s"},
		degraded:      want{F, "AsExpected", healthy},
	}, {
		name:     "the desired count of pods, one not ready, is rolling out",
		replicas: ptr.To[int32](1), dep: testDeployment(3, 3),
		pods:         []corev1.Pod{testPod("a", notReady)},
		wantReplicas: 1, wantReady: 0,
		available:     want{F, "MinimumReplicasUnavailable", "0 of 1 pods ready"},
		progressing:   want{T, "RollingOut", "0 of 1 pods ready, 0 with an outdated config"},
		configApplied: want{T, "Applied", "0 ready pods hold activated=true timeout=20s"},
		degraded:      want{F, "AsExpected", healthy},
	}, {
		name:     "pods counted but not ready: pending, container waiting",
		replicas: ptr.To[int32](0), dep: testDeployment(3, 3),
		pods:         []corev1.Pod{testPod("a", phase(corev1.PodPending)), testPod("b", containerWaiting)},
		wantReplicas: 2, wantReady: 0,
		available:     want{T, "MinimumReplicasAvailable", "0 of 0 pods ready"},
		progressing:   want{T, "RollingOut", "0 of 0 pods ready, 0 with an outdated config"},
		configApplied: want{T, "Applied", "0 ready pods hold activated=true timeout=20s"},
		degraded:      want{F, "AsExpected", healthy},
	}, {
		name:     "a Deployment whose new generation is not observed yet is rolling out",
		replicas: ptr.To[int32](1), dep: testDeployment(3, 2),
		pods: []corev1.Pod{testPod("a")}, states: []cometv1.PodState{holding("a")},
		wantReplicas: 1, wantReady: 1,
		available:     want{T, "MinimumReplicasAvailable", "1 of 1 pods ready"},
		progressing:   want{T, "RollingOut", "1 of 1 pods ready, 0 with an outdated config"},
		configApplied: want{T, "Applied", applied1},
		degraded:      want{F, "AsExpected", healthy},
	}, {
		name:     "terminating pods are not counted, not even as outdated",
		replicas: ptr.To[int32](1), dep: testDeployment(3, 3),
		pods:         []corev1.Pod{testPod("a"), testPod("b", terminating, withHash(staleHash))},
		states:       []cometv1.PodState{holding("a")},
		wantReplicas: 1, wantReady: 1,
		available:     want{T, "MinimumReplicasAvailable", "1 of 1 pods ready"},
		progressing:   want{F, "RolloutComplete", "1 of 1 pods ready and up to date"},
		configApplied: want{T, "Applied", applied1},
		degraded:      want{F, "AsExpected", healthy},
	}, {
		name:     "pods behind the live state are being pushed",
		replicas: ptr.To[int32](1), dep: testDeployment(3, 3),
		pods: []corev1.Pod{testPod("a")},
		states: []cometv1.PodState{
			{Name: "a", Ready: true, Activated: ptr.To(false), Timeout: &metav1.Duration{Duration: 20 * time.Second}},
			holding("b"),
			{Name: "c", Ready: true, Activated: ptr.To(true), Timeout: &metav1.Duration{Duration: 21 * time.Second}},
			{Name: "d", Ready: true}, // never pushed
			{Name: "e", Ready: true, Activated: ptr.To(true)},
			{Name: "f", Ready: true, Timeout: &metav1.Duration{Duration: 20 * time.Second}},
		},
		wantReplicas: 1, wantReady: 1,
		available:     want{T, "MinimumReplicasAvailable", "1 of 1 pods ready"},
		progressing:   want{F, "RolloutComplete", "1 of 1 pods ready and up to date"},
		configApplied: want{F, "Pushing", liveBehind + "a, c, d, e, f"},
		degraded:      want{F, "AsExpected", healthy},
	}, {
		name:     "one pod behind the live state is being pushed",
		replicas: ptr.To[int32](1), dep: testDeployment(3, 3),
		pods:         []corev1.Pod{testPod("a")},
		states:       []cometv1.PodState{{Name: "a", Ready: true, Activated: ptr.To(true), Timeout: &metav1.Duration{Duration: 30 * time.Second}, AppliedGeneration: statusGeneration - 1}},
		wantReplicas: 1, wantReady: 1,
		available:     want{T, "MinimumReplicasAvailable", "1 of 1 pods ready"},
		progressing:   want{F, "RolloutComplete", "1 of 1 pods ready and up to date"},
		configApplied: want{F, "Pushing", liveBehind + "a"},
		degraded:      want{F, "AsExpected", healthy},
	}, {
		name:     "failed pushes: the first error is shown",
		replicas: ptr.To[int32](1), dep: testDeployment(3, 3),
		pods: []corev1.Pod{testPod("a")},
		states: []cometv1.PodState{
			holding("a"),
			failing("b", "exit code 3: admin socket unreachable"),
			{Name: "c", Ready: true, Activated: ptr.To(false)}, // behind, not failing
			failing("d", "push timed out after 3s"),
		},
		wantReplicas: 1, wantReady: 1,
		available:     want{T, "MinimumReplicasAvailable", "1 of 1 pods ready"},
		progressing:   want{F, "RolloutComplete", "1 of 1 pods ready and up to date"},
		configApplied: want{F, "PushFailed", liveBehind + "b, c, d"},
		degraded:      want{T, "PushFailed", "push failed on pods b, d: exit code 3: admin socket unreachable"},
	}, {
		name:     "a pod that is not ready is neither behind nor failing",
		replicas: ptr.To[int32](1), dep: testDeployment(3, 3),
		pods: []corev1.Pod{testPod("a")},
		states: []cometv1.PodState{
			holding("a"),
			{Name: "b", LastError: "exit code 3: admin socket unreachable"},
		},
		wantReplicas: 1, wantReady: 1,
		available:     want{T, "MinimumReplicasAvailable", "1 of 1 pods ready"},
		progressing:   want{F, "RolloutComplete", "1 of 1 pods ready and up to date"},
		configApplied: want{T, "Applied", applied1},
		degraded:      want{F, "AsExpected", healthy},
	}, {
		name:     "a replica failure is a stuck rollout",
		replicas: ptr.To[int32](1),
		dep: testDeployment(3, 3,
			appsv1.DeploymentCondition{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionFalse, Message: "not this one"},
			appsv1.DeploymentCondition{Type: appsv1.DeploymentReplicaFailure, Status: corev1.ConditionTrue, Message: "exceeded quota: pods"}),
		wantReplicas: 0, wantReady: 0,
		available:     want{F, "MinimumReplicasUnavailable", "0 of 1 pods ready"},
		progressing:   want{T, "RollingOut", "0 of 1 pods ready, 0 with an outdated config"},
		configApplied: want{T, "Applied", "0 ready pods hold activated=true timeout=20s"},
		degraded:      want{T, "RolloutStuck", "replica failure: exceeded quota: pods"},
	}, {
		name:     "a Deployment that stopped progressing is a stuck rollout",
		replicas: ptr.To[int32](1),
		dep: testDeployment(3, 3,
			appsv1.DeploymentCondition{Type: appsv1.DeploymentProgressing, Status: corev1.ConditionFalse, Message: `ReplicaSet "push-1" has timed out progressing.`}),
		pods:         []corev1.Pod{testPod("a", notReady)},
		wantReplicas: 1, wantReady: 0,
		available:     want{F, "MinimumReplicasUnavailable", "0 of 1 pods ready"},
		progressing:   want{T, "RollingOut", "0 of 1 pods ready, 0 with an outdated config"},
		configApplied: want{T, "Applied", "0 ready pods hold activated=true timeout=20s"},
		degraded:      want{T, "RolloutStuck", `deployment not progressing: ReplicaSet "push-1" has timed out progressing.`},
	}, {
		name:     "healthy Deployment conditions are not stuck",
		replicas: ptr.To[int32](1),
		dep: testDeployment(3, 3,
			appsv1.DeploymentCondition{Type: appsv1.DeploymentReplicaFailure, Status: corev1.ConditionFalse, Message: "recovered"},
			appsv1.DeploymentCondition{Type: appsv1.DeploymentProgressing, Status: corev1.ConditionTrue, Message: "NewReplicaSetAvailable"}),
		pods: []corev1.Pod{testPod("a")}, states: []cometv1.PodState{holding("a")},
		wantReplicas: 1, wantReady: 1,
		available:     want{T, "MinimumReplicasAvailable", "1 of 1 pods ready"},
		progressing:   want{F, "RolloutComplete", "1 of 1 pods ready and up to date"},
		configApplied: want{T, "Applied", applied1},
		degraded:      want{F, "AsExpected", healthy},
	}, {
		name:     "a failed push outranks a stuck rollout",
		replicas: ptr.To[int32](1),
		dep: testDeployment(3, 3,
			appsv1.DeploymentCondition{Type: appsv1.DeploymentReplicaFailure, Status: corev1.ConditionTrue, Message: "exceeded quota: pods"}),
		pods: []corev1.Pod{testPod("a")}, states: []cometv1.PodState{failing("a", "exit code 2: usage")},
		wantReplicas: 1, wantReady: 1,
		available:     want{T, "MinimumReplicasAvailable", "1 of 1 pods ready"},
		progressing:   want{F, "RolloutComplete", "1 of 1 pods ready and up to date"},
		configApplied: want{F, "PushFailed", liveBehind + "a"},
		degraded:      want{T, "PushFailed", "push failed on pods a: exit code 2: usage"},
	}, {
		name:     "a refused token Secret is degraded",
		replicas: ptr.To[int32](1), dep: testDeployment(3, 3),
		pods: []corev1.Pod{testPod("a")}, states: []cometv1.PodState{holding("a")},
		token:        &refusedToken,
		wantReplicas: 1, wantReady: 1,
		available:     want{T, "MinimumReplicasAvailable", "1 of 1 pods ready"},
		progressing:   want{F, "RolloutComplete", "1 of 1 pods ready and up to date"},
		configApplied: want{T, "Applied", applied1},
		degraded:      want{T, "PublisherTokenRefused", "the pods are not updated: " + refusedToken.message},
	}, {
		name:     "a refused token Secret outranks a stuck rollout",
		replicas: ptr.To[int32](1),
		dep: testDeployment(3, 3,
			appsv1.DeploymentCondition{Type: appsv1.DeploymentReplicaFailure, Status: corev1.ConditionTrue, Message: "exceeded quota: pods"}),
		pods: []corev1.Pod{testPod("a")}, states: []cometv1.PodState{holding("a")},
		token:        &refusedToken,
		wantReplicas: 1, wantReady: 1,
		available:     want{T, "MinimumReplicasAvailable", "1 of 1 pods ready"},
		progressing:   want{F, "RolloutComplete", "1 of 1 pods ready and up to date"},
		configApplied: want{T, "Applied", applied1},
		degraded:      want{T, "PublisherTokenRefused", "the pods are not updated: " + refusedToken.message},
	}, {
		name:     "a failed push outranks a refused token Secret",
		replicas: ptr.To[int32](1), dep: testDeployment(3, 3),
		pods: []corev1.Pod{testPod("a")}, states: []cometv1.PodState{failing("a", "exit code 3: gone")},
		token:        &refusedToken,
		wantReplicas: 1, wantReady: 1,
		available:     want{T, "MinimumReplicasAvailable", "1 of 1 pods ready"},
		progressing:   want{F, "RolloutComplete", "1 of 1 pods ready and up to date"},
		configApplied: want{F, "PushFailed", liveBehind + "a"},
		degraded:      want{T, "PushFailed", "push failed on pods a: exit code 3: gone"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs := testCometServer(tt.replicas)
			token, tokenWant := generatedToken, want{T, "Generated", generatedToken.message}
			if tt.token != nil {
				token, tokenWant = *tt.token, want{F, tt.token.reason, tt.token.message}
			}
			s := computeStatus(cs, tt.dep, tt.pods, tt.states, statusLive, currentHash, token, memoryBroker)
			if s.ObservedGeneration != statusGeneration {
				t.Errorf("observedGeneration %d, want %d", s.ObservedGeneration, statusGeneration)
			}
			if want := "app.kubernetes.io/instance=push,app.kubernetes.io/name=cometserver"; s.Selector != want {
				t.Errorf("selector %q, want %q", s.Selector, want)
			}
			if s.Replicas != tt.wantReplicas || s.ReadyReplicas != tt.wantReady {
				t.Errorf("replicas %d ready %d, want %d ready %d", s.Replicas, s.ReadyReplicas, tt.wantReplicas, tt.wantReady)
			}
			if !reflect.DeepEqual(s.Pods, tt.states) {
				t.Errorf("pods %+v, want the states given %+v", s.Pods, tt.states)
			}
			if len(s.Conditions) != 6 {
				t.Errorf("%d conditions, want 6: %+v", len(s.Conditions), s.Conditions)
			}
			brokerWant := want{T, "Ready", fmt.Sprintf("memory broker ready on %d pods", len(tt.states))}
			if len(tt.states) == 0 {
				brokerWant = want{F, "NoPods", "no running pod has reported its memory broker"}
			}
			for typ, w := range map[string]want{
				cometv1.ConditionAvailable: tt.available, cometv1.ConditionProgressing: tt.progressing,
				cometv1.ConditionConfigApplied: tt.configApplied, cometv1.ConditionDegraded: tt.degraded,
				cometv1.ConditionPublisherTokenAccepted: tokenWant, cometv1.ConditionBrokerReady: brokerWant,
			} {
				c := meta.FindStatusCondition(s.Conditions, typ)
				switch {
				case c == nil:
					t.Errorf("no %s condition", typ)
				case c.Status != w.status || c.Reason != w.reason || c.Message != w.message:
					t.Errorf("%s = %s %s %q\n want %s %s %q", typ, c.Status, c.Reason, c.Message, w.status, w.reason, w.message)
				case c.ObservedGeneration != statusGeneration:
					t.Errorf("%s of generation %d, want %d", typ, c.ObservedGeneration, statusGeneration)
				case c.LastTransitionTime.IsZero():
					t.Errorf("%s has no transition time", typ)
				}
			}
		})
	}
}

// Earlier conditions are kept: a condition whose status holds keeps its
// transition time, one that flips gets a new one, and one the operator does
// not set is left alone. The input is not changed, and a second pass over
// the same observations gives the same status, so nothing is written.
func TestComputeStatusKeepsEarlierConditions(t *testing.T) {
	bounded.Test(t, 30*time.Second)
	t0 := metav1.NewTime(time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC))
	earlier := []metav1.Condition{
		{Type: cometv1.ConditionAvailable, Status: metav1.ConditionTrue, Reason: "MinimumReplicasAvailable", Message: "1 of 1 pods ready", ObservedGeneration: 2, LastTransitionTime: t0},
		{Type: cometv1.ConditionDegraded, Status: metav1.ConditionTrue, Reason: "PushFailed", Message: "push failed on pods a: boom", ObservedGeneration: 2, LastTransitionTime: t0},
		{Type: "Example", Status: metav1.ConditionTrue, Reason: "SetByHand", Message: "not the operator's", ObservedGeneration: 1, LastTransitionTime: t0},
	}
	cs := testCometServer(ptr.To[int32](1), earlier...)
	input := append([]metav1.Condition(nil), cs.Status.Conditions...)
	dep := testDeployment(3, 3)
	pods := []corev1.Pod{testPod("a")}
	states := []cometv1.PodState{holding("a")}

	before := time.Now().Add(-time.Second) // metav1.Time has second precision
	s := computeStatus(cs, dep, pods, states, statusLive, currentHash, generatedToken, memoryBroker)
	if !reflect.DeepEqual(cs.Status.Conditions, input) {
		t.Fatalf("computeStatus changed its input's conditions:\n%+v\nwas\n%+v", cs.Status.Conditions, input)
	}
	if len(s.Conditions) != 7 {
		t.Fatalf("%d conditions, want the 6 of the operator and the earlier one: %+v", len(s.Conditions), s.Conditions)
	}
	av := meta.FindStatusCondition(s.Conditions, cometv1.ConditionAvailable)
	if !av.LastTransitionTime.Equal(&t0) || av.ObservedGeneration != statusGeneration || av.Status != metav1.ConditionTrue {
		t.Errorf("Available kept its status: want its transition time %v kept and generation %d, got %+v", t0, statusGeneration, av)
	}
	deg := meta.FindStatusCondition(s.Conditions, cometv1.ConditionDegraded)
	if deg.Status != metav1.ConditionFalse || deg.LastTransitionTime.Equal(&t0) || deg.LastTransitionTime.Time.Before(before) {
		t.Errorf("Degraded flipped: want a new transition time, got %+v", deg)
	}
	for _, typ := range []string{cometv1.ConditionProgressing, cometv1.ConditionConfigApplied, cometv1.ConditionPublisherTokenAccepted} {
		if c := meta.FindStatusCondition(s.Conditions, typ); c == nil || c.LastTransitionTime.Time.Before(before) {
			t.Errorf("new condition %s: want a transition time of now, got %+v", typ, c)
		}
	}
	if ex := meta.FindStatusCondition(s.Conditions, "Example"); ex == nil || !reflect.DeepEqual(*ex, earlier[2]) {
		t.Errorf("a condition the operator does not set was changed: %+v", ex)
	}

	// The next pass, over the same observations, computes the same status.
	cs.Status = s
	again := computeStatus(cs, dep, pods, states, statusLive, currentHash, generatedToken, memoryBroker)
	if !equality.Semantic.DeepEqual(again, s) {
		t.Errorf("a second pass over the same observations changed the status:\n%+v\nto\n%+v", s, again)
	}
}
