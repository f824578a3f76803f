package controllers

// The unit tests of pushWhereBehind: which pods are pushed, with what argv,
// what is recorded of each push, the bound on pushes at once, and the push
// metrics. The pods are in memory and the PodCommander records and answers
// as cometserver ctl apply would: no API server takes part.

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"

	cometv1 "github.com/cometop/comet-operator/api/v1alpha1"
	"github.com/cometop/comet-operator/cometserver/contract"
	"github.com/cometop/comet-operator/test/bounded"
)

const pushGeneration = 5

var (
	pushLive = Live{Activated: true, Timeout: 30 * time.Second}
	liveArgv = []string{"/cometserver", "ctl", "--socket", "/run/comet/admin.sock", "--timeout", "9s", "apply", "--activated=true", "--timeout=30s"} // ctl gets 9/10 of the 10s push timeout
)

// resultLine is what ctl apply prints on stdout: one JSON line with the
// server's status and the commands sent.
func resultLine(activated bool, timeout time.Duration, sent ...string) string {
	b, err := json.Marshal(contract.ApplyResult{State: &contract.Status{Activated: activated, Timeout: timeout.Seconds(), TimeoutNanoseconds: int64(timeout),
		Channels: 2, Version: "test", PID: 7, StartedAt: "2024-01-02T03:04:05Z"}, Sent: append([]string{}, sent...)})
	if err != nil {
		panic(err)
	}
	return string(b) + "\n"
}

// bareStatus is what ctl apply printed before the contract: the status alone.
func bareStatus(activated bool, timeout time.Duration) string {
	b, _ := json.Marshal(contract.Status{Activated: activated, Timeout: timeout.Seconds(), TimeoutNanoseconds: int64(timeout)})
	return string(b) + "\n"
}

// answer is what one exec gives.
type answer struct {
	stdout, stderr string
	err            error
	hang           bool // until the push's deadline
}

var applied = answer{stdout: resultLine(true, 30*time.Second, "comet:activate")}

type execCall struct {
	pod, container string
	argv           []string
	at, deadline   time.Time // when Exec was called, and its context's deadline
}

// recordingCommander records every exec and answers it as its pod's
// answer says (applied when none does).
type recordingCommander struct {
	answers map[string]answer
	mu      sync.Mutex
	calls   []execCall
}

func (c *recordingCommander) Exec(ctx context.Context, pod *corev1.Pod, container string, argv []string) ([]byte, []byte, error) {
	deadline, _ := ctx.Deadline()
	c.mu.Lock()
	c.calls = append(c.calls, execCall{pod.Name, container, slices.Clone(argv), time.Now(), deadline})
	a, ok := c.answers[pod.Name]
	c.mu.Unlock()
	if !ok {
		a = applied
	}
	if a.hang {
		<-ctx.Done()
		return nil, nil, ctx.Err()
	}
	return []byte(a.stdout), []byte(a.stderr), a.err
}

func pushReconciler(cmd PodCommander) (*CometServerReconciler, *events.FakeRecorder) {
	rec := events.NewFakeRecorder(100)
	return &CometServerReconciler{
		Recorder:        rec,
		Commander:       cmd,
		PushConcurrency: 2,
		PushTimeout:     10 * time.Second,
		ResyncPeriod:    time.Hour,
		RetryPeriod:     time.Second,
	}, rec
}

func pushCometServer(kill bool, previous []cometv1.PodState) *cometv1.CometServer {
	return &cometv1.CometServer{
		ObjectMeta: metav1.ObjectMeta{Name: "push", Namespace: "ns", Generation: pushGeneration},
		Spec: cometv1.CometServerSpec{
			Activated: ptr.To(true), Timeout: &metav1.Duration{Duration: 30 * time.Second}, KillOnTimeoutChange: kill,
		},
		Status: cometv1.CometServerStatus{Pods: previous},
	}
}

// recorded is a pod state as an earlier pass recorded it.
func recorded(name, containerID string, activated bool, timeout time.Duration, generation int64, lastError string) cometv1.PodState {
	return cometv1.PodState{Name: name, Ready: true, Activated: ptr.To(activated), Timeout: &metav1.Duration{Duration: timeout},
		AppliedGeneration: generation, ContainerID: containerID, LastError: lastError}
}

// pushed is the state of a pod just pushed to live.
func pushed(name, containerID string) cometv1.PodState {
	return recorded(name, containerID, true, 30*time.Second, pushGeneration, "")
}

func unready(st cometv1.PodState) cometv1.PodState { st.Ready = false; return st }

func cid(name string, n int) string { return "containerd://" + name + "-" + string(rune('0'+n)) }

func uid(name string) types.UID { return types.UID("uid-" + name) }

// pushMetrics is the process-wide push metrics of one result: the
// counter, and the histogram's count and sum.
type pushMetrics struct {
	total, count float64
	sum          float64
}

func readPushMetrics(t *testing.T, result string) pushMetrics {
	t.Helper()
	var m dto.Metric
	if err := pushDuration.WithLabelValues(result).(prometheus.Metric).Write(&m); err != nil {
		t.Fatal(err)
	}
	return pushMetrics{
		total: testutil.ToFloat64(pushes.WithLabelValues(result)),
		count: float64(m.GetHistogram().GetSampleCount()),
		sum:   m.GetHistogram().GetSampleSum(),
	}
}

func drain(c chan string) []string {
	var out []string
	for {
		select {
		case e := <-c:
			out = append(out, e)
		default:
			slices.Sort(out)
			return out
		}
	}
}

// verified says what a pod's last verification should be after the pass.
type verified int

const (
	verifiedNever verified = iota // no verification recorded
	verifiedNow                   // verified by this pass
	verifiedKept                  // the earlier verification, unchanged
)

func TestPushWhereBehind(t *testing.T) {
	bounded.Test(t, 4*time.Minute)
	quiesce(t) // the push metrics are the process's: nothing else may push
	longError := strings.Repeat("x", 600)
	truncated := ("exit code 3: " + longError)[:512] + "..."
	tests := []struct {
		name        string
		kill        bool
		pushTimeout time.Duration
		pods        []corev1.Pod
		previous    []cometv1.PodState
		checkedAgo  map[string]time.Duration // pod name: age of its last verification
		answers     map[string]answer

		wantPushed    []string // pod names, sorted
		wantArgv      []string
		wantStates    []cometv1.PodState
		wantVerified  map[string]verified // pod name (or a pod gone): its verification after
		wantEvents    []string
		wantSuccess   int
		wantFailure   int
		wantMinFail   time.Duration // at least this much push time observed as failure
		wantNextAbout time.Duration // when set, nextCheck is about this far ahead
	}{{
		name: "pods that cannot take a push are skipped; a running pod not ready yet is checked",
		pods: []corev1.Pod{
			testPod("a", notReady), testPod("b", terminating), testPod("c", phase(corev1.PodPending)),
			testPod("d", containerWaiting), testPod("e", phase(corev1.PodSucceeded)),
		},
		checkedAgo:   map[string]time.Duration{"a": time.Minute, "b": time.Minute},
		wantPushed:   []string{"a"},
		wantStates:   []cometv1.PodState{unready(pushed("a", cid("a", 1)))},
		wantVerified: map[string]verified{"a": verifiedNow, "b": verifiedKept, "c": verifiedNever},
		wantEvents:   []string{"Normal Pushed pod a now holds activated=true timeout=30s (sent comet:activate)"},
		wantSuccess:  1,
	}, {
		name:          "a new pod is pushed",
		pods:          []corev1.Pod{testPod("a")},
		wantPushed:    []string{"a"},
		wantStates:    []cometv1.PodState{pushed("a", cid("a", 1))},
		wantVerified:  map[string]verified{"a": verifiedNow},
		wantEvents:    []string{"Normal Pushed pod a now holds activated=true timeout=30s (sent comet:activate)"},
		wantSuccess:   1,
		wantNextAbout: time.Hour,
	}, {
		name:          "a pod holding the live state, checked recently, is not pushed: only its generation moves",
		pods:          []corev1.Pod{testPod("a")},
		previous:      []cometv1.PodState{recorded("a", cid("a", 1), true, 30*time.Second, pushGeneration-1, "")},
		checkedAgo:    map[string]time.Duration{"a": time.Minute},
		wantStates:    []cometv1.PodState{pushed("a", cid("a", 1))},
		wantVerified:  map[string]verified{"a": verifiedKept},
		wantNextAbout: time.Hour - time.Minute,
	}, {
		name:         "a restarted container is pushed at once",
		pods:         []corev1.Pod{testPod("a", containerID(cid("a", 2)))},
		previous:     []cometv1.PodState{recorded("a", cid("a", 1), true, 30*time.Second, pushGeneration, "")},
		checkedAgo:   map[string]time.Duration{"a": time.Minute},
		wantPushed:   []string{"a"},
		wantStates:   []cometv1.PodState{pushed("a", cid("a", 2))},
		wantVerified: map[string]verified{"a": verifiedNow},
		wantEvents:   []string{"Normal Pushed pod a now holds activated=true timeout=30s (sent comet:activate)"},
		wantSuccess:  1,
	}, {
		name:         "a pod whose last push failed is pushed again",
		pods:         []corev1.Pod{testPod("a")},
		previous:     []cometv1.PodState{recorded("a", cid("a", 1), true, 30*time.Second, pushGeneration-1, "exit code 3: admin socket unreachable")},
		checkedAgo:   map[string]time.Duration{"a": time.Minute},
		wantPushed:   []string{"a"},
		wantStates:   []cometv1.PodState{pushed("a", cid("a", 1))},
		wantVerified: map[string]verified{"a": verifiedNow},
		wantEvents:   []string{"Normal Pushed pod a now holds activated=true timeout=30s (sent comet:activate)"},
		wantSuccess:  1,
	}, {
		name: "a pod recorded in another live state is pushed",
		pods: []corev1.Pod{testPod("a"), testPod("b")},
		previous: []cometv1.PodState{
			recorded("a", cid("a", 1), false, 30*time.Second, pushGeneration-1, ""),
			recorded("b", cid("b", 1), true, 20*time.Second, pushGeneration-1, ""),
		},
		checkedAgo:   map[string]time.Duration{"a": time.Minute, "b": time.Minute},
		wantPushed:   []string{"a", "b"},
		wantStates:   []cometv1.PodState{pushed("a", cid("a", 1)), pushed("b", cid("b", 1))},
		wantVerified: map[string]verified{"a": verifiedNow, "b": verifiedNow},
		wantEvents: []string{
			"Normal Pushed pod a now holds activated=true timeout=30s (sent comet:activate)",
			"Normal Pushed pod b now holds activated=true timeout=30s (sent comet:activate)",
		},
		wantSuccess: 2,
	}, {
		name:          "a check that fell due is pushed; nothing sent, no event",
		pods:          []corev1.Pod{testPod("a")},
		previous:      []cometv1.PodState{recorded("a", cid("a", 1), true, 30*time.Second, pushGeneration, "")},
		checkedAgo:    map[string]time.Duration{"a": time.Hour + time.Minute},
		answers:       map[string]answer{"a": {stdout: resultLine(true, 30*time.Second)}},
		wantPushed:    []string{"a"},
		wantStates:    []cometv1.PodState{pushed("a", cid("a", 1))},
		wantVerified:  map[string]verified{"a": verifiedNow},
		wantSuccess:   1,
		wantNextAbout: time.Hour,
	}, {
		name:         "a pod never verified (an operator restart) is checked",
		pods:         []corev1.Pod{testPod("a")},
		previous:     []cometv1.PodState{recorded("a", cid("a", 1), true, 30*time.Second, pushGeneration, "")},
		answers:      map[string]answer{"a": {stdout: resultLine(true, 30*time.Second)}},
		wantPushed:   []string{"a"},
		wantStates:   []cometv1.PodState{pushed("a", cid("a", 1))},
		wantVerified: map[string]verified{"a": verifiedNow},
		wantSuccess:  1,
	}, {
		name:         "killOnTimeoutChange adds --kill-on-change",
		kill:         true,
		pods:         []corev1.Pod{testPod("a")},
		wantPushed:   []string{"a"},
		wantArgv:     append(slices.Clone(liveArgv), "--kill-on-change"),
		wantStates:   []cometv1.PodState{pushed("a", cid("a", 1))},
		wantVerified: map[string]verified{"a": verifiedNow},
		wantEvents:   []string{"Normal Pushed pod a now holds activated=true timeout=30s (sent comet:activate)"},
		wantSuccess:  1,
	}, {
		name:         "states are sorted by pod name",
		pods:         []corev1.Pod{testPod("c"), testPod("a"), testPod("b", notReady), testPod("d")},
		previous:     []cometv1.PodState{recorded("d", cid("d", 1), true, 30*time.Second, pushGeneration, "")},
		checkedAgo:   map[string]time.Duration{"d": time.Minute},
		wantPushed:   []string{"a", "b", "c"},
		wantStates:   []cometv1.PodState{pushed("a", cid("a", 1)), unready(pushed("b", cid("b", 1))), pushed("c", cid("c", 1)), pushed("d", cid("d", 1))},
		wantVerified: map[string]verified{"a": verifiedNow, "b": verifiedNow, "c": verifiedNow, "d": verifiedKept},
		wantEvents: []string{
			"Normal Pushed pod a now holds activated=true timeout=30s (sent comet:activate)",
			"Normal Pushed pod b now holds activated=true timeout=30s (sent comet:activate)",
			"Normal Pushed pod c now holds activated=true timeout=30s (sent comet:activate)",
		},
		wantSuccess: 3,
	}, {
		name: "a failed push is recorded, truncated, kept behind and reported",
		pods: []corev1.Pod{testPod("a", containerID(cid("a", 2))), testPod("b")},
		previous: []cometv1.PodState{
			recorded("a", cid("a", 1), true, 30*time.Second, pushGeneration-1, ""),
		},
		checkedAgo: map[string]time.Duration{"a": time.Minute},
		answers:    map[string]answer{"a": {stdout: "", stderr: longError, err: &ExitError{Code: 3, Stderr: longError + "\nmore"}}},
		wantPushed: []string{"a", "b"},
		wantStates: []cometv1.PodState{
			recorded("a", cid("a", 2), true, 30*time.Second, pushGeneration-1, truncated),
			pushed("b", cid("b", 1)),
		},
		wantVerified: map[string]verified{"a": verifiedKept, "b": verifiedNow},
		wantEvents: []string{
			"Normal Pushed pod b now holds activated=true timeout=30s (sent comet:activate)",
			"Warning PushFailed pod a: " + truncated,
		},
		wantSuccess: 1, wantFailure: 1,
	}, {
		name:         "a push that times out",
		pushTimeout:  100 * time.Millisecond,
		pods:         []corev1.Pod{testPod("a")},
		answers:      map[string]answer{"a": {hang: true}},
		wantArgv:     []string{"/cometserver", "ctl", "--socket", "/run/comet/admin.sock", "--timeout", "90ms", "apply", "--activated=true", "--timeout=30s"},
		wantPushed:   []string{"a"},
		wantStates:   []cometv1.PodState{{Name: "a", Ready: true, ContainerID: cid("a", 1), LastError: "push timed out after 100ms: context deadline exceeded"}},
		wantVerified: map[string]verified{"a": verifiedNever},
		wantEvents:   []string{"Warning PushFailed pod a: push timed out after 100ms: context deadline exceeded"},
		wantFailure:  1,
		// The push waited for its 100 ms deadline. The floor is 90 ms: on
		// a loaded CI VM the deadline's timer was once measured firing at
		// 92.9 ms of time.Since from just after the context was made.
		wantMinFail: 90 * time.Millisecond,
	}, {
		name:         "ctl apply printing no status is a failure",
		pods:         []corev1.Pod{testPod("a")},
		answers:      map[string]answer{"a": {stdout: "ok\n"}},
		wantPushed:   []string{"a"},
		wantStates:   []cometv1.PodState{{Name: "a", Ready: true, ContainerID: cid("a", 1), LastError: "ctl apply printed no result: invalid character 'o' looking for beginning of value"}},
		wantVerified: map[string]verified{"a": verifiedNever},
		wantEvents:   []string{"Warning PushFailed pod a: ctl apply printed no result: invalid character 'o' looking for beginning of value"},
		wantFailure:  1,
	}, {
		name:         "what is recorded is the server's reply, not the spec",
		pods:         []corev1.Pod{testPod("a")},
		answers:      map[string]answer{"a": {stdout: resultLine(false, 7*time.Second, "comet:deactivate", "comet:set_timeout 7")}},
		wantPushed:   []string{"a"},
		wantStates:   []cometv1.PodState{recorded("a", cid("a", 1), false, 7*time.Second, pushGeneration, "")},
		wantVerified: map[string]verified{"a": verifiedNow},
		wantEvents:   []string{"Normal Pushed pod a now holds activated=true timeout=30s (sent comet:deactivate, comet:set_timeout 7)"},
		wantSuccess:  1,
	}, {
		name:         "an older server's ctl, printing its bare status, is read",
		pods:         []corev1.Pod{testPod("a")},
		answers:      map[string]answer{"a": {stdout: bareStatus(true, 30*time.Second)}},
		wantPushed:   []string{"a"},
		wantStates:   []cometv1.PodState{pushed("a", cid("a", 1))},
		wantVerified: map[string]verified{"a": verifiedNow},
		wantSuccess:  1,
	}, {
		name:         "ctl apply's error is the pod's error",
		pods:         []corev1.Pod{testPod("a")},
		answers:      map[string]answer{"a": {stdout: `{"sent":[],"error":"admin socket unreachable: dial unix: no such file"}` + "\n", err: &ExitError{Code: 3}}},
		wantPushed:   []string{"a"},
		wantStates:   []cometv1.PodState{{Name: "a", Ready: true, ContainerID: cid("a", 1), LastError: "exit code 3: admin socket unreachable: dial unix: no such file"}},
		wantVerified: map[string]verified{"a": verifiedNever},
		wantEvents:   []string{"Warning PushFailed pod a: exit code 3: admin socket unreachable: dial unix: no such file"},
		wantFailure:  1,
	}, {
		name:         "the verifications of pods that are gone are forgotten",
		pods:         []corev1.Pod{testPod("a")},
		previous:     []cometv1.PodState{recorded("a", cid("a", 1), true, 30*time.Second, pushGeneration, "")},
		checkedAgo:   map[string]time.Duration{"a": time.Minute, "gone": time.Minute},
		wantStates:   []cometv1.PodState{pushed("a", cid("a", 1))},
		wantVerified: map[string]verified{"a": verifiedKept, "gone": verifiedNever},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := &recordingCommander{answers: tt.answers}
			r, rec := pushReconciler(cmd)
			if tt.pushTimeout != 0 {
				r.PushTimeout = tt.pushTimeout
			}
			cs := pushCometServer(tt.kill, tt.previous)
			input := cs.DeepCopy()
			key := types.NamespacedName{Namespace: "ns", Name: "push"}
			start := time.Now()
			checkedAt := map[string]time.Time{}
			for name, ago := range tt.checkedAgo {
				checkedAt[name] = time.Now().Add(-ago)
				r.markVerified(key, uid(name), checkedAt[name])
			}
			success, failure := readPushMetrics(t, "success"), readPushMetrics(t, "failure")

			pass := time.Now()
			states := r.pushWhereBehind(context.Background(), cs, tt.pods, pushLive)
			end := time.Now()

			if !equality.Semantic.DeepEqual(states, tt.wantStates) {
				t.Errorf("states\n%s\nwant\n%s", dump(states), dump(tt.wantStates))
			}
			if !equality.Semantic.DeepEqual(cs, input) {
				t.Errorf("pushWhereBehind changed the CometServer it was given")
			}
			wantArgv := tt.wantArgv
			if wantArgv == nil {
				wantArgv = liveArgv
			}
			var pushedPods []string
			for _, c := range cmd.calls {
				pushedPods = append(pushedPods, c.pod)
				if c.container != containerName || !slices.Equal(c.argv, wantArgv) {
					t.Errorf("exec in %s container %s: %q\nwant container %s: %q", c.pod, c.container, c.argv, containerName, wantArgv)
				}
				// Each exec is bounded by the push timeout, from the push's start.
				if c.deadline.Before(pass.Add(r.PushTimeout)) || c.deadline.After(c.at.Add(r.PushTimeout)) {
					t.Errorf("exec in %s at %v has deadline %v, want the push timeout %v from the push's start", c.pod, c.at, c.deadline, r.PushTimeout)
				}
			}
			slices.Sort(pushedPods)
			if !slices.Equal(pushedPods, tt.wantPushed) {
				t.Errorf("pushed %q, want %q", pushedPods, tt.wantPushed)
			}
			if evs := drain(rec.Events); !slices.Equal(evs, tt.wantEvents) {
				t.Errorf("events\n%q\nwant\n%q", evs, tt.wantEvents)
			}
			for name, want := range tt.wantVerified {
				at := r.verifiedAt(key, uid(name))
				switch {
				case want == verifiedNever && !at.IsZero():
					t.Errorf("%s verified at %v, want never", name, at)
				case want == verifiedKept && !at.Equal(checkedAt[name]):
					t.Errorf("%s verified at %v, want its earlier %v kept", name, at, checkedAt[name])
				case want == verifiedNow && (at.Before(pass) || at.After(end)):
					t.Errorf("%s verified at %v, want by this pass (%v to %v)", name, at, pass, end)
				}
			}
			if tt.wantNextAbout != 0 {
				if next := r.nextCheck(key); next > tt.wantNextAbout || next < tt.wantNextAbout-time.Since(start) {
					t.Errorf("next check in %v, want about %v", next, tt.wantNextAbout)
				}
			}

			s, f := readPushMetrics(t, "success"), readPushMetrics(t, "failure")
			if s.total-success.total != float64(tt.wantSuccess) || s.count-success.count != float64(tt.wantSuccess) {
				t.Errorf("success metrics moved by %v (counter) and %v (histogram), want %d", s.total-success.total, s.count-success.count, tt.wantSuccess)
			}
			if f.total-failure.total != float64(tt.wantFailure) || f.count-failure.count != float64(tt.wantFailure) {
				t.Errorf("failure metrics moved by %v (counter) and %v (histogram), want %d", f.total-failure.total, f.count-failure.count, tt.wantFailure)
			}
			if took := f.sum - failure.sum; took < tt.wantMinFail.Seconds() || took > end.Sub(pass).Seconds()*float64(max(1, tt.wantFailure)) {
				t.Errorf("failed pushes took %vs by the histogram, want at least %v and at most the pass's %v", took, tt.wantMinFail, end.Sub(pass))
			}
		})
	}
}

func dump(states []cometv1.PodState) string {
	b, _ := json.MarshalIndent(states, "", "  ")
	return string(b)
}

// blockingCommander holds every exec until the test releases one, and
// counts how many run at once.
type blockingCommander struct {
	started  chan string
	release  chan struct{}
	running  atomic.Int32
	mostSeen atomic.Int32
}

func (c *blockingCommander) Exec(ctx context.Context, pod *corev1.Pod, _ string, _ []string) ([]byte, []byte, error) {
	n := c.running.Add(1)
	for {
		most := c.mostSeen.Load()
		if n <= most || c.mostSeen.CompareAndSwap(most, n) {
			break
		}
	}
	c.started <- pod.Name
	<-c.release
	c.running.Add(-1)
	return []byte(applied.stdout), nil, nil
}

// With PushConcurrency 2, two pushes run at once, never three, and every
// pod is pushed.
func TestPushConcurrency(t *testing.T) {
	bounded.Test(t, 3*time.Minute)
	quiesce(t)
	cmd := &blockingCommander{started: make(chan string, 6), release: make(chan struct{})}
	r, _ := pushReconciler(cmd)
	r.PushConcurrency = 2
	var pods []corev1.Pod
	for _, name := range []string{"a", "b", "c", "d", "e", "f"} {
		pods = append(pods, testPod(name))
	}
	success := readPushMetrics(t, "success")
	done := make(chan []cometv1.PodState, 1)
	go func() { done <- r.pushWhereBehind(context.Background(), pushCometServer(false, nil), pods, pushLive) }()

	seen := map[string]bool{}
	for range 2 {
		seen[bounded.Recv(t, "the first two pushes", 10*time.Second, cmd.started)] = true
	}
	// No third push starts while two run. The window is long next to how
	// soon a freed slot is taken, measured below.
	const window = 500 * time.Millisecond
	if !bounded.Quiet(cmd.started, window) {
		t.Fatalf("a third push started while two ran (%d at once)", cmd.mostSeen.Load())
	}
	var slowest time.Duration
	for range 4 {
		freed := time.Now()
		cmd.release <- struct{}{}
		seen[bounded.Recv(t, "a push once a slot is free", 10*time.Second, cmd.started)] = true
		slowest = max(slowest, time.Since(freed))
	}
	cmd.release <- struct{}{}
	cmd.release <- struct{}{}
	states := bounded.Recv(t, "pushWhereBehind to return", 10*time.Second, done)

	if most := cmd.mostSeen.Load(); most != 2 {
		t.Errorf("%d pushes ran at once, want 2", most)
	}
	if len(seen) != 6 {
		t.Errorf("pushed %v, want all 6 pods", seen)
	}
	if len(states) != 6 {
		t.Errorf("%d states, want 6", len(states))
	}
	for _, st := range states {
		if !holds(&st, pushLive) {
			t.Errorf("pod state %+v does not hold %s", st, pushLive)
		}
	}
	if slowest >= window {
		t.Errorf("a freed slot took %v to be used: the %v window without a third push proves nothing", slowest, window)
	}
	if s := readPushMetrics(t, "success"); s.total-success.total != 6 || s.count-success.count != 6 {
		t.Errorf("success metrics moved by %v and %v, want 6", s.total-success.total, s.count-success.count)
	}
}

// The next check of a CometServer is when its first pod check falls due,
// at least a second from now, and never when nothing was verified.
func TestNextCheck(t *testing.T) {
	r := &CometServerReconciler{ResyncPeriod: 5 * time.Minute}
	cs := types.NamespacedName{Namespace: "ns", Name: "push"}
	if got := r.nextCheck(cs); got != 0 {
		t.Fatalf("nothing verified: %v, want 0 (no requeue)", got)
	}
	now := time.Now()
	r.markVerified(cs, "late", now)                      // due in 5m
	r.markVerified(cs, "early", now.Add(-4*time.Minute)) // due in 1m
	r.markVerified(cs, "mid", now.Add(-2*time.Minute))   // due in 3m
	if got := r.nextCheck(cs); got > time.Minute || got < 59*time.Second {
		t.Fatalf("next check in %v, want the earliest due, 1m", got)
	}
	r.markVerified(cs, "overdue", now.Add(-time.Hour))
	if got := r.nextCheck(cs); got != time.Second {
		t.Fatalf("an overdue pod: next check in %v, want 1s", got)
	}
	if got := r.nextCheck(types.NamespacedName{Namespace: "ns", Name: "other"}); got != 0 {
		t.Fatalf("another CometServer's checks leaked: %v", got)
	}
}

// A LastError is cut at 512 bytes, marked with "...".
func TestTruncate(t *testing.T) {
	for n, want := range map[int]string{511: strings.Repeat("e", 511), 512: strings.Repeat("e", 512), 513: strings.Repeat("e", 512) + "..."} {
		if got := truncate(strings.Repeat("e", n), 512); got != want {
			t.Errorf("%d bytes: %d bytes back", n, len(got))
		}
	}
}

// ownedPods keeps the pods of the Deployment's own ReplicaSets, whatever
// the labels of the others say.
func TestOwnedPods(t *testing.T) {
	ctrlRef := func(kind string, uid types.UID) []metav1.OwnerReference {
		return []metav1.OwnerReference{{Kind: kind, Name: "x", UID: uid, Controller: ptr.To(true)}}
	}
	dep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{UID: "dep"}}
	rs := func(uid types.UID, refs []metav1.OwnerReference) appsv1.ReplicaSet {
		return appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{UID: uid, OwnerReferences: refs}}
	}
	pod := func(name string, refs []metav1.OwnerReference) corev1.Pod {
		return corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, OwnerReferences: refs}}
	}
	notController := []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "x", UID: "rs-ours"}}
	replicaSets := []appsv1.ReplicaSet{
		rs("rs-ours", ctrlRef("Deployment", "dep")),
		rs("rs-old", ctrlRef("Deployment", "dep")),
		rs("rs-other", ctrlRef("Deployment", "another")),
		rs("rs-orphan", nil),
		rs("rs-kind", ctrlRef("StatefulSet", "dep")),
	}
	pods := []corev1.Pod{
		pod("ours", ctrlRef("ReplicaSet", "rs-ours")),
		pod("old", ctrlRef("ReplicaSet", "rs-old")),
		pod("other", ctrlRef("ReplicaSet", "rs-other")),
		pod("orphan-rs", ctrlRef("ReplicaSet", "rs-orphan")),
		pod("odd-kind-rs", ctrlRef("ReplicaSet", "rs-kind")),
		pod("no-owner", nil),
		pod("not-controller", notController),
		pod("wrong-kind", ctrlRef("Job", "rs-ours")),
	}
	var names []string
	for _, p := range ownedPods(dep, replicaSets, pods) {
		names = append(names, p.Name)
	}
	if strings.Join(names, ",") != "ours,old" {
		t.Fatalf("owned %q, want ours,old", names)
	}
	if got := ownedPods(&appsv1.Deployment{}, replicaSets, pods); got != nil {
		t.Fatalf("with no Deployment yet: %d pods", len(got))
	}
}

// podApply asks a pod for a limit or a history only where it reported
// another one: a pod's first push, and an older server that holds what
// the spec asks, get no flag their ctl may not know.
func TestPodApply(t *testing.T) {
	five, hist := ptr.To(5), &contract.History{Size: 7, TTL: time.Minute}
	reported := func(limit *int32, size *int32, ttl time.Duration) *cometv1.PodState {
		st := &cometv1.PodState{Activated: ptr.To(true), Timeout: &metav1.Duration{Duration: 20 * time.Second}, MaxVirtualChannels: limit, HistorySize: size}
		if size != nil {
			st.HistoryTTL = &metav1.Duration{Duration: ttl}
		}
		return st
	}
	base := Live{Activated: true, Timeout: 20 * time.Second}
	withLimit, withHistory := base, base
	withLimit.MaxVirtualChannels, withHistory.History = five, hist
	for _, tt := range []struct {
		name  string
		live  Live
		st    *cometv1.PodState
		flags string // beyond activated and timeout
	}{
		{"first push, limit in the spec", withLimit, &cometv1.PodState{}, ""},
		{"limit held", withLimit, reported(ptr.To[int32](5), nil, 0), ""},
		{"limit differs", withLimit, reported(nil, nil, 0), "--max-virtual-channels=5"},
		{"limit removed", base, reported(ptr.To[int32](5), nil, 0), "--max-virtual-channels=none"},
		{"no limit, none held", base, reported(nil, nil, 0), ""},
		{"history held", withHistory, reported(nil, ptr.To[int32](7), time.Minute), ""},
		{"history differs", withHistory, reported(nil, ptr.To[int32](100), 2*time.Minute), "--history-size=7 --history-ttl=1m0s"},
		{"history removed: the default", base, reported(nil, ptr.To[int32](7), time.Minute), "--history-size=100 --history-ttl=2m0s"},
		{"a server without history is not asked", withHistory, reported(nil, nil, 0), ""},
		{"a hand-edited status without a TTL", withHistory, &cometv1.PodState{Activated: ptr.To(true), HistorySize: ptr.To[int32](1)}, ""},
	} {
		argv := applyArgv(podApply(tt.live, tt.st, false), 10*time.Second)
		if got := strings.Join(argv[len(liveArgv)-2+2:], " "); got != tt.flags {
			t.Errorf("%s: flags %q, want %q (argv %q)", tt.name, got, tt.flags, argv)
		}
	}
	// A pod that reported nothing holds no history the spec asks for.
	if holds(reported(nil, nil, 0), withHistory) || !holds(reported(nil, nil, 0), base) {
		t.Error("holds of a server without history")
	}
}
