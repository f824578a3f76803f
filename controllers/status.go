package controllers

import (
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	cometv1 "github.com/cometop/comet-operator/api/v1alpha1"
)

// computeStatus derives the status from what was observed. It is a pure
// function of its inputs, so a pass that observed nothing new produces the
// same status, and nothing is written.
func computeStatus(cs *cometv1.CometServer, dep *appsv1.Deployment, pods []corev1.Pod, states []cometv1.PodState, live Live, hash string, token tokenVerdict, broker brokerVerdict) cometv1.CometServerStatus {
	desired := int32(1)
	if cs.Spec.Replicas != nil {
		desired = *cs.Spec.Replicas
	}
	s := cometv1.CometServerStatus{
		ObservedGeneration: cs.Generation,
		Selector:           labels.SelectorFromSet(selectorLabels(cs)).String(),
		Pods:               states,
		Broker:             brokerType(cs),
		Conditions:         append([]metav1.Condition(nil), cs.Status.Conditions...),
	}
	s.Activated, s.Timeout = heldByAll(states)
	for _, st := range states {
		s.Waiting += st.Waiting
	}
	outdated := 0
	for i := range pods {
		if pods[i].DeletionTimestamp != nil {
			continue
		}
		s.Replicas++
		if _, ok := podReady(&pods[i]); ok {
			s.ReadyReplicas++
		}
		if pods[i].Annotations[StaticConfigHashAnnotation] != hash {
			outdated++
		} else {
			s.UpdatedReplicas++
		}
	}

	set := func(typ string, ok bool, reason, format string, a ...any) {
		status := metav1.ConditionFalse
		if ok {
			status = metav1.ConditionTrue
		}
		meta.SetStatusCondition(&s.Conditions, metav1.Condition{
			Type: typ, Status: status, Reason: reason, Message: fmt.Sprintf(format, a...), ObservedGeneration: cs.Generation,
		})
	}

	if s.ReadyReplicas >= desired {
		set(cometv1.ConditionAvailable, true, "MinimumReplicasAvailable", "%d of %d pods ready", s.ReadyReplicas, desired)
	} else {
		set(cometv1.ConditionAvailable, false, "MinimumReplicasUnavailable", "%d of %d pods ready", s.ReadyReplicas, desired)
	}

	rolling := outdated > 0 || s.Replicas != desired || s.ReadyReplicas < desired ||
		(dep.Generation != 0 && dep.Status.ObservedGeneration < dep.Generation)
	if rolling {
		set(cometv1.ConditionProgressing, true, "RollingOut", "%d of %d pods ready, %d with an outdated config", s.ReadyReplicas, desired, outdated)
	} else {
		set(cometv1.ConditionProgressing, false, "RolloutComplete", "%d of %d pods ready and up to date", s.ReadyReplicas, desired)
	}

	var behind []string
	ready := 0
	for i := range states {
		if !states[i].Ready {
			continue
		}
		ready++
		if !holds(&states[i], live) {
			behind = append(behind, states[i].Name)
		}
	}
	failing := failingPods(states)
	switch {
	case len(behind) == 0:
		set(cometv1.ConditionConfigApplied, true, "Applied", "%d ready pods hold %s", ready, live)
	case len(failing) > 0:
		set(cometv1.ConditionConfigApplied, false, "PushFailed", "pods behind %s: %s", live, strings.Join(behind, ", "))
	default:
		set(cometv1.ConditionConfigApplied, false, "Pushing", "pods behind %s: %s", live, strings.Join(behind, ", "))
	}

	set(cometv1.ConditionPublisherTokenAccepted, token.accepted, token.reason, "%s", token.message)

	down := brokerDown(states)
	var unreported []string
	for _, st := range states {
		if st.Broker == nil {
			unreported = append(unreported, st.Name)
		}
	}
	switch {
	case !broker.accepted:
		set(cometv1.ConditionBrokerReady, false, broker.reason, "%s", broker.message)
	case len(down) > 0:
		first := ""
		for _, st := range states {
			if st.Broker != nil && !st.Broker.Ready {
				first = st.Broker.LastError
				break
			}
		}
		set(cometv1.ConditionBrokerReady, false, "BrokerUnreachable", "%s broker not ready on pods %s: %s", brokerType(cs), strings.Join(down, ", "), first)
	case len(states) == 0:
		set(cometv1.ConditionBrokerReady, false, "NoPods", "no running pod has reported its %s broker", brokerType(cs))
	case len(unreported) > 0 && brokerType(cs) != cometv1.BrokerMemory:
		// The in-memory broker is the process itself; a shared one must
		// have been reached.
		set(cometv1.ConditionBrokerReady, false, "NotReported", "%s broker not reported yet by pods %s", brokerType(cs), strings.Join(unreported, ", "))
	default:
		set(cometv1.ConditionBrokerReady, true, "Ready", "%s broker ready on %d pods", brokerType(cs), len(states))
	}

	switch stuck := rolloutStuck(dep); {
	case len(failing) > 0:
		first := ""
		for _, st := range states {
			if st.LastError != "" {
				first = st.LastError
				break
			}
		}
		set(cometv1.ConditionDegraded, true, "PushFailed", "push failed on pods %s: %s", strings.Join(failing, ", "), first)
	case !token.accepted:
		set(cometv1.ConditionDegraded, true, "PublisherTokenRefused", "the pods are not updated: %s", token.message)
	case !broker.accepted:
		set(cometv1.ConditionDegraded, true, "BrokerSecretRefused", "the pods are not updated: %s", broker.message)
	case stuck != "":
		set(cometv1.ConditionDegraded, true, "RolloutStuck", "%s", stuck)
	default:
		set(cometv1.ConditionDegraded, false, "AsExpected", "pushes and rollout healthy")
	}
	return s
}

// newGenerationStatus is the status the moment a new generation is seen,
// before anything is pushed: ConfigApplied turns False at once, so that
// nobody reads the previous generation's True as the new one's.
// Only that condition moves to the new generation: the others, and
// observedGeneration, still describe the previous one until the pass that
// computes them ends.
func newGenerationStatus(cs *cometv1.CometServer) cometv1.CometServerStatus {
	s := *cs.Status.DeepCopy()
	meta.SetStatusCondition(&s.Conditions, metav1.Condition{
		Type: cometv1.ConditionConfigApplied, Status: metav1.ConditionFalse, Reason: "NewGeneration",
		Message:            fmt.Sprintf("generation %d seen; pushing %s", cs.Generation, liveState(cs)),
		ObservedGeneration: cs.Generation,
	})
	return s
}

// heldByAll is the activated and timeout state every ready pod reported,
// if they agree; nil where they do not, or no ready pod reported.
func heldByAll(states []cometv1.PodState) (*bool, *metav1.Duration) {
	var activated *bool
	var timeout *metav1.Duration
	agreeA, agreeT := true, true
	for _, st := range states {
		if !st.Ready {
			continue
		}
		if st.Activated == nil || activated != nil && *activated != *st.Activated {
			agreeA = false
		} else if activated == nil {
			activated = st.Activated
		}
		if st.Timeout == nil || timeout != nil && *timeout != *st.Timeout {
			agreeT = false
		} else if timeout == nil {
			timeout = st.Timeout
		}
	}
	if !agreeA {
		activated = nil
	}
	if !agreeT {
		timeout = nil
	}
	return activated, timeout
}

// rolloutStuck reports why a Deployment's rollout cannot go on, if it cannot.
func rolloutStuck(dep *appsv1.Deployment) string {
	for _, c := range dep.Status.Conditions {
		switch {
		case c.Type == appsv1.DeploymentReplicaFailure && c.Status == corev1.ConditionTrue:
			return "replica failure: " + c.Message
		case c.Type == appsv1.DeploymentProgressing && c.Status == corev1.ConditionFalse:
			return "deployment not progressing: " + c.Message
		}
	}
	return ""
}
