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
func computeStatus(cs *cometv1.CometServer, dep *appsv1.Deployment, pods []corev1.Pod, states []cometv1.PodState, live Live, hash string, token tokenVerdict) cometv1.CometServerStatus {
	desired := int32(1)
	if cs.Spec.Replicas != nil {
		desired = *cs.Spec.Replicas
	}
	s := cometv1.CometServerStatus{
		ObservedGeneration: cs.Generation,
		Selector:           labels.SelectorFromSet(selectorLabels(cs)).String(),
		Pods:               states,
		Conditions:         append([]metav1.Condition(nil), cs.Status.Conditions...),
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
	for i := range states {
		if !holds(&states[i], live) {
			behind = append(behind, states[i].Name)
		}
	}
	failing := failingPods(states)
	switch {
	case len(behind) == 0:
		set(cometv1.ConditionConfigApplied, true, "Applied", "%d ready pods hold %s", len(states), live)
	case len(failing) > 0:
		set(cometv1.ConditionConfigApplied, false, "PushFailed", "pods behind %s: %s", live, strings.Join(behind, ", "))
	default:
		set(cometv1.ConditionConfigApplied, false, "Pushing", "pods behind %s: %s", live, strings.Join(behind, ", "))
	}

	set(cometv1.ConditionPublisherTokenAccepted, token.accepted, token.reason, "%s", token.message)

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
	case stuck != "":
		set(cometv1.ConditionDegraded, true, "RolloutStuck", "%s", stuck)
	default:
		set(cometv1.ConditionDegraded, false, "AsExpected", "pushes and rollout healthy")
	}
	return s
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
