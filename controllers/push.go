package controllers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	cometv1 "github.com/cometop/comet-operator/api/v1alpha1"
	"github.com/cometop/comet-operator/cometserver/admin"
)

// applyArgv is the command that brings a pod's server to live: ctl apply
// sends only what differs, and KILL only when the timeout really changes.
// It holds no secret, since argv shows in the API server's audit log.
// ctl's own time is most of the push's, so that it gives up, and says so,
// before the exec is cut.
func applyArgv(live Live, killOnChange bool, pushTimeout time.Duration) []string {
	ctlTimeout := (pushTimeout * 9 / 10).Truncate(time.Millisecond)
	argv := []string{ServerBinary, "ctl", "--socket", adminSocket, "--timeout", ctlTimeout.String(), "apply",
		"--activated=" + strconv.FormatBool(live.Activated), "--timeout=" + live.Timeout.String()}
	if killOnChange {
		argv = append(argv, "--kill-on-change")
	}
	return argv
}

// podReady reports whether the pod can be pushed to, and its comet
// container's ID, which changes when the container restarts.
func podReady(pod *corev1.Pod) (containerID string, ok bool) {
	if pod.DeletionTimestamp != nil || pod.Status.Phase != corev1.PodRunning {
		return "", false
	}
	ready := false
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			ready = c.Status == corev1.ConditionTrue
		}
	}
	for _, c := range pod.Status.ContainerStatuses {
		if c.Name == containerName && c.State.Running != nil {
			return c.ContainerID, ready
		}
	}
	return "", false
}

// holds reports whether a recorded pod state is the live state.
func holds(s *cometv1.PodState, live Live) bool {
	return s != nil && s.LastError == "" && s.Activated != nil && *s.Activated == live.Activated &&
		s.Timeout != nil && s.Timeout.Duration == live.Timeout
}

// pushWhereBehind pushes live into every ready pod that is behind, a
// restarted container, a failed earlier push, or a check that fell due,
// and returns the new state of every ready pod, sorted by name.
func (r *CometServerReconciler) pushWhereBehind(ctx context.Context, cs *cometv1.CometServer, pods []corev1.Pod, live Live) []cometv1.PodState {
	key := types.NamespacedName{Namespace: cs.Namespace, Name: cs.Name}
	previous := map[string]cometv1.PodState{}
	for _, p := range cs.Status.Pods {
		previous[p.Name] = p
	}
	var states []cometv1.PodState
	var todo []int // indexes into states
	targets := map[int]*corev1.Pod{}
	present := map[types.UID]bool{}
	for i := range pods {
		pod := &pods[i]
		present[pod.UID] = true
		containerID, ok := podReady(pod)
		if !ok {
			continue
		}
		st, known := previous[pod.Name]
		if !known {
			st = cometv1.PodState{Name: pod.Name}
		}
		due := time.Since(r.verifiedAt(key, pod.UID)) >= r.ResyncPeriod
		if !known || st.ContainerID != containerID || !holds(&st, live) || due {
			st.ContainerID = containerID
			todo = append(todo, len(states))
			targets[len(states)] = pod
		} else if st.AppliedGeneration != cs.Generation {
			// A spec change that left the live state alone: the pod holds the
			// new generation's live state already.
			st.AppliedGeneration = cs.Generation
		}
		states = append(states, st)
	}
	r.keepVerified(key, present)

	var wg sync.WaitGroup
	sem := make(chan struct{}, max(1, r.PushConcurrency))
	for _, i := range todo {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			r.pushOne(ctx, cs, targets[i], live, &states[i])
		}()
	}
	wg.Wait()
	slices.SortFunc(states, func(a, b cometv1.PodState) int { return strings.Compare(a.Name, b.Name) })
	return states
}

// pushOne runs ctl apply in one pod and records the outcome in st.
func (r *CometServerReconciler) pushOne(ctx context.Context, cs *cometv1.CometServer, pod *corev1.Pod, live Live, st *cometv1.PodState) {
	log := logf.FromContext(ctx).WithValues("pod", pod.Name)
	ctx, cancel := context.WithTimeout(ctx, r.PushTimeout)
	defer cancel()
	start := time.Now()
	stdout, stderr, err := r.Commander.Exec(ctx, pod, containerName, applyArgv(live, cs.Spec.KillOnTimeoutChange, r.PushTimeout))
	var reply admin.StatusReply
	if err == nil {
		if jerr := json.Unmarshal(stdout, &reply); jerr != nil {
			err = fmt.Errorf("ctl apply printed no status: %w", jerr)
		}
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("push timed out after %s: %w", r.PushTimeout, err)
	}
	observePush(err, time.Since(start))
	if err != nil {
		st.LastError = truncate(err.Error(), 512)
		log.Error(err, "push failed")
		r.Recorder.Eventf(cs, pod, corev1.EventTypeWarning, "PushFailed", "Push",
			"pod %s: %s", pod.Name, st.LastError)
		return
	}
	timeout := metav1.Duration{Duration: reply.TimeoutDuration()}
	st.Activated, st.Timeout, st.LastError = &reply.Activated, &timeout, ""
	st.AppliedGeneration = cs.Generation
	r.markVerified(types.NamespacedName{Namespace: cs.Namespace, Name: cs.Name}, pod.UID, time.Now())
	if sent := sentCommands(stderr); len(sent) > 0 {
		log.Info("pushed live state", "sent", sent, "state", live.String())
		r.Recorder.Eventf(cs, pod, corev1.EventTypeNormal, "Pushed", "Push",
			"pod %s now holds %s (sent %s)", pod.Name, live, strings.Join(sent, ", "))
	}
}

// sentCommands reads the "sent <command>" lines ctl apply writes to stderr.
func sentCommands(stderr []byte) []string {
	var sent []string
	for line := range strings.SplitSeq(string(stderr), "\n") {
		if cmd, ok := strings.CutPrefix(line, "sent "); ok {
			sent = append(sent, cmd)
		}
	}
	return sent
}

func failingPods(states []cometv1.PodState) []string {
	var names []string
	for _, s := range states {
		if s.LastError != "" {
			names = append(names, s.Name)
		}
	}
	return names
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
