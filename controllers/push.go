package controllers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	cometv1 "github.com/cometop/comet-operator/api/v1alpha1"
	"github.com/cometop/comet-operator/cometserver/contract"
)

// podApply is what ctl apply is asked to make one pod hold: the spec's
// activated and timeout always, a limit or history only where the pod
// last reported another one. A pod's first push asks neither (it started
// from the config map, which has them): a pod of an older server, whose
// ctl knows no such flag, is asked for one only when it holds the wrong
// value, and then says so (PushFailed). A limit or history the spec leaves
// out stands for the server's default.
func podApply(live Live, st *cometv1.PodState, killOnChange bool) contract.Apply {
	a := contract.Apply{Activated: live.Activated, Timeout: live.Timeout, KillOnChange: killOnChange}
	if st.Activated == nil { // never reported
		return a
	}
	if want := contract.LimitOf(live.MaxVirtualChannels); want != contract.LimitOf(int32Ptr(st.MaxVirtualChannels)) {
		a.MaxVirtualChannels = &want
	}
	if want := wantHistory(live); st.HistorySize != nil && st.HistoryTTL != nil &&
		(int(*st.HistorySize) != want.Size || st.HistoryTTL.Duration != want.TTL) {
		a.History = &want
	}
	return a
}

// wantHistory is the history the spec asks for, the server's default if
// it names none.
func wantHistory(live Live) contract.History {
	if live.History != nil {
		return *live.History
	}
	return defaultHistory
}

// applyArgv is the command that brings a pod's server to want. ctl's own
// time is most of the push's, so that it gives up, and says so, before
// the exec is cut.
func applyArgv(want contract.Apply, pushTimeout time.Duration) []string {
	return want.Argv((pushTimeout * 9 / 10).Truncate(time.Millisecond))
}

// podRunning reports whether the pod's comet container runs, so that its
// admin socket can be reached, and the container's ID, which changes when
// the container restarts. A terminating pod is left to its drain.
func podRunning(pod *corev1.Pod) (containerID string, ok bool) {
	if pod.DeletionTimestamp != nil || pod.Status.Phase != corev1.PodRunning {
		return "", false
	}
	for _, c := range pod.Status.ContainerStatuses {
		if c.Name == containerName && c.State.Running != nil {
			return c.ContainerID, true
		}
	}
	return "", false
}

// podReady reports whether the pod is running and ready: in the Service's
// endpoints.
func podReady(pod *corev1.Pod) (containerID string, ok bool) {
	containerID, ok = podRunning(pod)
	if !ok {
		return "", false
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return containerID, c.Status == corev1.ConditionTrue
		}
	}
	return containerID, false
}

// holds reports whether a recorded pod state is the live state.
func holds(s *cometv1.PodState, live Live) bool {
	if s == nil || s.LastError != "" || s.Activated == nil || *s.Activated != live.Activated ||
		s.Timeout == nil || s.Timeout.Duration != live.Timeout {
		return false
	}
	if contract.LimitOf(live.MaxVirtualChannels) != contract.LimitOf(int32Ptr(s.MaxVirtualChannels)) {
		return false
	}
	if s.HistorySize == nil || s.HistoryTTL == nil {
		// A server without history: it holds the default (none to push),
		// but not a history the spec asks for.
		return live.History == nil
	}
	want := wantHistory(live)
	return int(*s.HistorySize) == want.Size && s.HistoryTTL.Duration == want.TTL
}

func int32Ptr(p *int32) *int {
	if p == nil {
		return nil
	}
	return ptr.To(int(*p))
}

// pushWhereBehind pushes live into every running pod that is behind, a
// restarted container, a failed earlier push, a broker reported down, or
// a check that fell due, and returns the new state of every running pod,
// sorted by name. Pods that are running but not ready are pushed too:
// their readiness may be their broker's, and they report it.
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
		containerID, ok := podRunning(pod)
		if !ok {
			continue
		}
		_, ready := podReady(pod)
		st, known := previous[pod.Name]
		if !known {
			st = cometv1.PodState{Name: pod.Name}
		}
		st.Ready = ready
		due := time.Since(r.verifiedAt(key, pod.UID)) >= r.ResyncPeriod
		brokerDown := st.Broker != nil && !st.Broker.Ready
		if !known || st.ContainerID != containerID || !holds(&st, live) || due || brokerDown || !ready {
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

// pushOne runs ctl apply in one pod and records the outcome in st. A
// pod's first push learns its state: if that shows a limit or history to
// change, a second push asks for it at once.
func (r *CometServerReconciler) pushOne(ctx context.Context, cs *cometv1.CometServer, pod *corev1.Pod, live Live, st *cometv1.PodState) {
	asked := podApply(live, st, cs.Spec.KillOnTimeoutChange)
	if !r.pushOnce(ctx, cs, pod, live, asked, st) || holds(st, live) {
		return
	}
	if again := podApply(live, st, cs.Spec.KillOnTimeoutChange); !reflect.DeepEqual(again, asked) {
		r.pushOnce(ctx, cs, pod, live, again, st)
	}
}

// pushOnce is one ctl apply of want; it reports whether it succeeded.
func (r *CometServerReconciler) pushOnce(ctx context.Context, cs *cometv1.CometServer, pod *corev1.Pod, live Live, want contract.Apply, st *cometv1.PodState) bool {
	log := logf.FromContext(ctx).WithValues("pod", pod.Name)
	ctx, cancel := context.WithTimeout(ctx, r.PushTimeout)
	defer cancel()
	start := time.Now()
	stdout, stderr, err := r.Commander.Exec(ctx, pod, containerName, applyArgv(want, r.PushTimeout))
	res, perr := parseApplyResult(stdout)
	switch {
	case perr != nil && err == nil:
		err = perr
	case err != nil && res.Error != "":
		// ctl's own account of the failure, rather than its stderr.
		if exit := (*ExitError)(nil); errors.As(err, &exit) {
			err = fmt.Errorf("exit code %d: %s", exit.Code, res.Error)
		} else {
			err = fmt.Errorf("%w: %s", err, res.Error)
		}
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("push timed out after %s: %w", r.PushTimeout, err)
	}
	observePush(err, time.Since(start))
	if res.State != nil {
		recordState(st, *res.State)
	}
	if err != nil {
		st.LastError = truncate(err.Error(), 512)
		if !st.Ready { // a starting pod's socket may not be up yet: not worth a warning
			log.V(1).Info("check of a pod that is not ready failed", "error", err)
			return false
		}
		log.Error(err, "push failed")
		r.Recorder.Eventf(cs, pod, corev1.EventTypeWarning, "PushFailed", "Push",
			"pod %s: %s", pod.Name, st.LastError)
		return false
	}
	st.LastError = ""
	st.AppliedGeneration = cs.Generation
	r.markVerified(types.NamespacedName{Namespace: cs.Namespace, Name: cs.Name}, pod.UID, time.Now())
	sent := res.Sent
	if len(sent) == 0 {
		sent = sentCommands(stderr) // an older server's ctl said it there
	}
	if len(sent) > 0 {
		log.Info("pushed live state", "sent", sent, "state", live.String())
		r.Recorder.Eventf(cs, pod, corev1.EventTypeNormal, "Pushed", "Push",
			"pod %s now holds %s (sent %s)", pod.Name, live, strings.Join(sent, ", "))
	}
	return true
}

// sentCommands reads the "sent <command>" lines that ctl apply wrote to
// stderr before it printed one JSON result.
func sentCommands(stderr []byte) []string {
	var sent []string
	for line := range strings.SplitSeq(string(stderr), "\n") {
		if cmd, ok := strings.CutPrefix(line, "sent "); ok {
			sent = append(sent, cmd)
		}
	}
	return sent
}

// parseApplyResult reads what ctl apply printed. A server image from
// before the contract printed its bare status, which is read as the state.
func parseApplyResult(stdout []byte) (contract.ApplyResult, error) {
	var res contract.ApplyResult
	if err := json.Unmarshal(stdout, &res); err != nil {
		return res, fmt.Errorf("ctl apply printed no result: %w", err)
	}
	if res.State == nil && res.Error == "" {
		var st contract.Status
		if err := json.Unmarshal(stdout, &st); err == nil && st.TimeoutNanoseconds > 0 {
			res.State = &st
		}
	}
	if res.State == nil && res.Error == "" {
		return res, errors.New("ctl apply printed neither a state nor an error")
	}
	return res, nil
}

// recordState copies what a pod's server reported into its PodState.
func recordState(st *cometv1.PodState, s contract.Status) {
	timeout := metav1.Duration{Duration: s.TimeoutDuration()}
	st.Activated, st.Timeout = ptr.To(s.Activated), &timeout
	st.MaxVirtualChannels = nil
	if s.MaxVirtualChannels != nil {
		st.MaxVirtualChannels = ptr.To(int32(*s.MaxVirtualChannels))
	}
	st.HistorySize, st.HistoryTTL = nil, nil
	if s.HistoryTTLNs > 0 { // a server that has history
		st.HistorySize, st.HistoryTTL = ptr.To(int32(s.HistorySize)), &metav1.Duration{Duration: s.HistoryTTLDuration()}
	}
	st.Broker = nil
	if s.Broker.Name != "" { // a server that reports its broker
		st.Broker = &cometv1.PodBrokerState{Name: s.Broker.Name, Ready: s.Broker.Ready, LastError: truncate(s.Broker.LastError, 256)}
	}
	st.Waiting = int32(min(s.Waiting, 1<<31-1))
}

// failingPods are the ready pods whose last push failed: a pod that is
// not ready yet is not a failure of the operator's.
func failingPods(states []cometv1.PodState) []string {
	var names []string
	for _, s := range states {
		if s.LastError != "" && s.Ready {
			names = append(names, s.Name)
		}
	}
	return names
}

// needsRetry are the running pods to check again soon: a failed check
// (ready or not), not ready (their readiness may be their broker's), or,
// with a shared broker, no report of it yet.
func needsRetry(states []cometv1.PodState, broker cometv1.BrokerType) []string {
	var names []string
	for _, s := range states {
		if s.LastError != "" || !s.Ready || broker != cometv1.BrokerMemory && (s.Broker == nil || !s.Broker.Ready) {
			names = append(names, s.Name)
		}
	}
	return names
}

// brokerDown are the pods that reported their broker not ready.
func brokerDown(states []cometv1.PodState) []string {
	var names []string
	for _, s := range states {
		if s.Broker != nil && !s.Broker.Ready {
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
