package controllers

// The ExecCommander against the real exec protocol, served by Kubernetes'
// own server code rather than a mock, so that the test speaks what a
// cluster speaks:
//
//   - the kubelet: ServeExec from k8s.io/cri-streaming, the exec server that
//     kubelets and container runtimes serve (SPDY, and WebSocket up to v4),
//     with an Executor that runs the argv on this machine and reports a
//     non-zero exit as runtimes do, with a k8s.io/utils/exec ExitError;
//   - the API server's pods/exec endpoint, as its own code handles it: a
//     WebSocket request goes to StreamTranslatorHandler
//     (k8s.io/apiserver/pkg/util/proxy), which API servers since 1.30 use to
//     end the client's v5.channel.k8s.io WebSocket and speak SPDY to the
//     kubelet (client-go's WebSocket executor offers only v5, which the
//     kubelet's server does not speak); a SPDY request goes through
//     UpgradeAwareHandler (k8s.io/apimachinery/pkg/util/proxy), which
//     proxies the upgrade to the kubelet as it is.
//
// Everything listens on loopback.

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os/exec"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	upgradeproxy "k8s.io/apimachinery/pkg/util/proxy"
	apiserverproxy "k8s.io/apiserver/pkg/util/proxy"
	"k8s.io/client-go/rest"
	kubeletexec "k8s.io/cri-streaming/pkg/streaming/remotecommand"
	"k8s.io/streaming/pkg/httpstream"
	"k8s.io/streaming/pkg/httpstream/wsstream"
	runtimeexec "k8s.io/utils/exec"

	"github.com/cometop/comet-operator/test/bounded"
)

// hostExecutor plays the container runtime behind the kubelet's exec
// server: it runs the argv on this machine. The argv "hang" never ends by
// itself: it waits for the request to go or the test to end.
type hostExecutor struct {
	stop <-chan struct{}
	mu   sync.Mutex
	ran  []string // "container: argv", of every command started
}

func (e *hostExecutor) ExecInContainer(ctx context.Context, _, _, container string, cmd []string, _ io.Reader, stdout, stderr io.WriteCloser, _ bool, _ <-chan kubeletexec.TerminalSize, _ time.Duration) error {
	e.mu.Lock()
	e.ran = append(e.ran, container+": "+strings.Join(cmd, " "))
	e.mu.Unlock()
	if len(cmd) == 1 && cmd[0] == "hang" {
		select {
		case <-ctx.Done():
		case <-e.stop:
		}
		return errors.New("hang: stopped")
	}
	c := exec.CommandContext(ctx, cmd[0], cmd[1:]...)
	c.Stdout, c.Stderr = stdout, stderr
	err := c.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		// As container runtimes report it, and as ServeExec expects it.
		return runtimeexec.CodeExitError{Err: err, Code: exit.ExitCode()}
	}
	return err
}

func (e *hostExecutor) commands() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.ran...)
}

// apiMode is how the fake API server answers pods/exec.
type apiMode int

const (
	// translateWebSocket: an API server of 1.30 or later, which takes the
	// WebSocket upgrade itself.
	translateWebSocket apiMode = iota
	// refuseWebSocket: the API server answers the WebSocket upgrade with
	// 403 and serves SPDY on POST.
	refuseWebSocket
	// kubeletRefusesWebSocket: an API server before 1.30, which proxies
	// both upgrades to the kubelet, whose server refuses v5 WebSocket.
	kubeletRefusesWebSocket
	// neverAnswerWebSocket: the WebSocket request gets no answer at all.
	neverAnswerWebSocket
	// neverAnswerSPDY: the WebSocket upgrade is refused, and the SPDY
	// request gets no answer at all.
	neverAnswerSPDY
)

// request names one request by method and upgrade: "GET websocket",
// "POST SPDY/3.1".
func request(r *http.Request) string {
	if !httpstream.IsUpgradeRequest(r) {
		return r.Method + " plain"
	}
	return r.Method + " " + r.Header.Get("Upgrade")
}

type requestLog struct {
	mu   sync.Mutex
	seen []string
}

func (l *requestLog) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seen = append(l.seen, s)
}

func (l *requestLog) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.seen...)
}

type errorResponder struct{}

func (errorResponder) Error(w http.ResponseWriter, _ *http.Request, err error) {
	http.Error(w, err.Error(), http.StatusBadGateway)
}

type execServer struct {
	commander     *ExecCommander
	exec          *hostExecutor
	apiRequests   *requestLog
	kubeRequests  *requestLog
	queryProblems *requestLog
}

// startExecServer starts a kubelet and an API server in front of it, and
// an ExecCommander talking TLS to the API server.
func startExecServer(t *testing.T, mode apiMode) *execServer {
	t.Helper()
	stop := make(chan struct{})
	s := &execServer{exec: &hostExecutor{stop: stop}, apiRequests: &requestLog{}, kubeRequests: &requestLog{}, queryProblems: &requestLog{}}

	kubelet := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.kubeRequests.add(request(r))
		opts, err := kubeletexec.NewOptions(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		container := strings.TrimPrefix(r.URL.Path, "/exec/ns/push-a/")
		kubeletexec.ServeExec(w, r, s.exec, "push-a", "uid-push-a", container, r.URL.Query()["command"], opts,
			time.Minute, 10*time.Second, kubeletexec.SupportedStreamingProtocols)
	}))
	t.Cleanup(kubelet.Close)

	api := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.apiRequests.add(request(r))
		if r.URL.Path != "/api/v1/namespaces/ns/pods/push-a/exec" {
			s.queryProblems.add("path " + r.URL.Path)
			http.NotFound(w, r)
			return
		}
		q := r.URL.Query()
		if q.Get("container") != containerName || q.Get("stdout") != "true" || q.Get("stderr") != "true" || q.Has("stdin") || q.Has("tty") {
			s.queryProblems.add("query " + r.URL.RawQuery)
		}
		// Where the API server sends the exec: the kubelet's exec URL.
		loc, _ := url.Parse(kubelet.URL + "/exec/ns/push-a/" + url.PathEscape(q.Get("container")))
		loc.RawQuery = url.Values{"command": q["command"], "output": {"1"}, "error": {"1"}}.Encode()
		isWebSocket := wsstream.IsWebSocketRequest(r)
		switch {
		case mode == neverAnswerWebSocket || mode == neverAnswerSPDY && !isWebSocket:
			select { // until the client gives up, or the test ends
			case <-r.Context().Done():
			case <-stop:
			}
		case isWebSocket && r.Method == http.MethodGet && mode == translateWebSocket:
			apiserverproxy.NewStreamTranslatorHandler(loc, nil, 0, apiserverproxy.Options{
				Stdout: q.Get("stdout") == "true", Stderr: q.Get("stderr") == "true",
			}).ServeHTTP(w, r)
		case isWebSocket && mode == kubeletRefusesWebSocket:
			upgradeproxy.NewUpgradeAwareHandler(loc, nil, false, true, errorResponder{}).ServeHTTP(w, r)
		case isWebSocket:
			http.Error(w, "WebSocket upgrades are not served here", http.StatusForbidden)
		case r.Method == http.MethodPost:
			upgradeproxy.NewUpgradeAwareHandler(loc, nil, false, true, errorResponder{}).ServeHTTP(w, r)
		default:
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		}
	}))
	t.Cleanup(api.Close)
	t.Cleanup(func() { close(stop) }) // runs first: frees the handlers that wait

	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: api.Certificate().Raw})
	var err error
	if s.commander, err = NewExecCommander(&rest.Config{Host: api.URL, TLSClientConfig: rest.TLSClientConfig{CAData: ca}}); err != nil {
		t.Fatal(err)
	}
	return s
}

type execResult struct {
	stdout, stderr string
	err            error
	end            time.Time // when Exec returned
}

// run runs argv in the pod push-a, in the background, and returns what it
// gave, failing t if it gives nothing within bound.
func (s *execServer) run(t *testing.T, ctx context.Context, bound time.Duration, argv ...string) execResult {
	t.Helper()
	done := make(chan execResult, 1)
	go func() {
		pod := &corev1.Pod{}
		pod.Namespace, pod.Name = "ns", "push-a"
		stdout, stderr, err := s.commander.Exec(ctx, pod, containerName, argv)
		done <- execResult{string(stdout), string(stderr), err, time.Now()}
	}()
	return bounded.Recv(t, "the exec to return", bound, done)
}

const (
	okScript  = `printf '{"activated":true,"timeout":20}\n'; printf 'sent comet:activate\n' >&2`
	okStdout  = "{\"activated\":true,\"timeout\":20}\n"
	okStderr  = "sent comet:activate\n"
	badScript = `printf 'partial\n'; printf 'admin socket unreachable: no such file\nsecond line\n' >&2; exit 3`
	badStdout = "partial\n"
	badStderr = "admin socket unreachable: no such file\nsecond line\n"
)

func TestExecCommander(t *testing.T) {
	bounded.Test(t, 2*time.Minute)
	tests := []struct {
		name          string
		mode          apiMode
		script        string
		wantStdout    string
		wantStderr    string
		wantExitCode  int // 0: no error
		wantAPI       []string
		wantKubelet   []string
		wantErrorText string
	}{{
		name: "WebSocket accepted", mode: translateWebSocket, script: okScript,
		wantStdout: okStdout, wantStderr: okStderr,
		wantAPI: []string{"GET websocket"}, wantKubelet: []string{"POST SPDY/3.1"},
	}, {
		name: "WebSocket refused by the API server: SPDY", mode: refuseWebSocket, script: okScript,
		wantStdout: okStdout, wantStderr: okStderr,
		wantAPI: []string{"GET websocket", "POST SPDY/3.1"}, wantKubelet: []string{"POST SPDY/3.1"},
	}, {
		name: "WebSocket refused by the kubelet behind an older API server: SPDY", mode: kubeletRefusesWebSocket, script: okScript,
		wantStdout: okStdout, wantStderr: okStderr,
		wantAPI: []string{"GET websocket", "POST SPDY/3.1"}, wantKubelet: []string{"GET websocket", "POST SPDY/3.1"},
	}, {
		name: "exit code 3 over WebSocket", mode: translateWebSocket, script: badScript,
		wantStdout: badStdout, wantStderr: badStderr, wantExitCode: 3,
		wantAPI: []string{"GET websocket"}, wantKubelet: []string{"POST SPDY/3.1"},
		wantErrorText: "exit code 3: admin socket unreachable: no such file",
	}, {
		name: "exit code 3 over SPDY", mode: refuseWebSocket, script: badScript,
		wantStdout: badStdout, wantStderr: badStderr, wantExitCode: 3,
		wantAPI: []string{"GET websocket", "POST SPDY/3.1"}, wantKubelet: []string{"POST SPDY/3.1"},
		wantErrorText: "exit code 3: admin socket unreachable: no such file",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startExecServer(t, tt.mode)
			argv := []string{"sh", "-c", tt.script}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			got := s.run(t, ctx, 20*time.Second, argv...)
			if got.stdout != tt.wantStdout || got.stderr != tt.wantStderr {
				t.Errorf("stdout %q stderr %q\nwant %q and %q", got.stdout, got.stderr, tt.wantStdout, tt.wantStderr)
			}
			var exit *ExitError
			switch {
			case tt.wantExitCode == 0 && got.err != nil:
				t.Errorf("error %v, want none", got.err)
			case tt.wantExitCode != 0 && !errors.As(got.err, &exit):
				t.Errorf("error %v (%T), want an *ExitError", got.err, got.err)
			case tt.wantExitCode != 0 && (exit.Code != tt.wantExitCode || exit.Stderr != tt.wantStderr || exit.Error() != tt.wantErrorText):
				t.Errorf("exit error %+v (%q), want code %d, stderr %q, text %q", exit, exit.Error(), tt.wantExitCode, tt.wantStderr, tt.wantErrorText)
			}
			if api := s.apiRequests.get(); !reflect.DeepEqual(api, tt.wantAPI) {
				t.Errorf("the API server saw %q, want %q", api, tt.wantAPI)
			}
			if kubelet := s.kubeRequests.get(); !reflect.DeepEqual(kubelet, tt.wantKubelet) {
				t.Errorf("the kubelet saw %q, want %q", kubelet, tt.wantKubelet)
			}
			if p := s.queryProblems.get(); len(p) > 0 {
				t.Errorf("requests the API server would not take: %q", p)
			}
			if ran, want := s.exec.commands(), []string{containerName + ": " + strings.Join(argv, " ")}; !reflect.DeepEqual(ran, want) {
				t.Errorf("commands run %q, want %q", ran, want)
			}
		})
	}
}

// An exec whose WebSocket upgrade gets no answer returns an error soon
// after its context's deadline: a push cannot hang the reconciler there.
func TestExecCommanderDeadline(t *testing.T) {
	bounded.Test(t, time.Minute)
	checkDeadline(t, 500*time.Millisecond, neverAnswerWebSocket, []string{"true"}, []string{"GET websocket"}, false)
}

// The same bound where client-go alone would not keep it: an API server
// that takes the SPDY upgrade and never answers (client-go reads the answer
// with no deadline), and commands that never end, where client-go returns
// at the deadline while its goroutines still copy the streams into Exec's
// buffers (a data race under -race before they were locked).
func TestExecCommanderDeadlineWhereClientGoHasNone(t *testing.T) {
	bounded.Test(t, 2*time.Minute)
	t.Run("no answer to the SPDY upgrade", func(t *testing.T) {
		checkDeadline(t, 2*time.Second, neverAnswerSPDY, []string{"true"}, []string{"GET websocket", "POST SPDY/3.1"}, false)
	})
	t.Run("a command that never ends, over WebSocket", func(t *testing.T) {
		checkDeadline(t, 2*time.Second, translateWebSocket, []string{"hang"}, []string{"GET websocket"}, true)
	})
	t.Run("a command that never ends, over SPDY", func(t *testing.T) {
		checkDeadline(t, 2*time.Second, refuseWebSocket, []string{"hang"}, []string{"GET websocket", "POST SPDY/3.1"}, true)
	})
}

// checkDeadline runs argv with the deadline and checks that the exec
// returns an error soon after it.
func checkDeadline(t *testing.T, deadline time.Duration, mode apiMode, argv, wantAPI []string, wantRan bool) {
	t.Helper()
	s := startExecServer(t, mode)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	got := s.run(t, ctx, deadline+10*time.Second, argv...)
	var exit *ExitError
	if got.err == nil || errors.As(got.err, &exit) {
		t.Errorf("error %v, want one for the deadline", got.err)
	}
	if took := got.end.Sub(start); took < deadline || took > deadline+5*time.Second {
		t.Errorf("returned after %v, want soon after the %v deadline", took, deadline)
	}
	if api := s.apiRequests.get(); !reflect.DeepEqual(api, wantAPI) {
		t.Errorf("the API server saw %q, want %q", api, wantAPI)
	}
	if ran := s.exec.commands(); (len(ran) == 1) != wantRan {
		t.Errorf("commands run %q; want one run: %t", ran, wantRan)
	}
}

// What a command prints is bounded: a pod that prints without end ends its
// exec with an error, and the operator keeps no more than the bound
// (issue 12, finding 5: the output was buffered whole for up to 30 s).
// Exactly the bound is taken.
func TestExecCommanderBoundsOutput(t *testing.T) {
	bounded.Test(t, time.Minute)
	for _, mode := range []apiMode{translateWebSocket, refuseWebSocket} {
		s := startExecServer(t, mode)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if got := s.run(t, ctx, 15*time.Second, "head", "-c", fmt.Sprint(maxExecOutput), "/dev/zero"); got.err != nil || len(got.stdout) != maxExecOutput {
			t.Fatalf("exactly %d bytes printed: %d kept, error %v", maxExecOutput, len(got.stdout), got.err)
		}
		s = startExecServer(t, mode)
		start := time.Now()
		got := s.run(t, ctx, 15*time.Second, "head", "-c", "10000000", "/dev/zero")
		if got.err == nil || len(got.stdout) > maxExecOutput {
			t.Fatalf("10 MB printed: %d bytes kept, error %v; want at most %d and an error", len(got.stdout), got.err, maxExecOutput)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Fatalf("the exec took %v", took)
		}
	}
}
