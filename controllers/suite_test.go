package controllers

// The controller tests run against a real kube-apiserver and etcd (envtest),
// built from Go module sources by hack/envtest-binaries.sh. envtest has no
// kubelet and no controllers of its own, so each test creates the pods a
// ReplicaSet would, marks them running and ready, and starts a real comet
// server for each; localCommander stands in for the pods/exec transport (the
// real-cluster issue proves that one) and runs the real cometserver ctl.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	cometv1 "github.com/cometop/comet-operator/api/v1alpha1"
)

var (
	k8s       client.Client
	commander = &localCommander{sockets: map[string]string{}}
	ctlBinary string
	testRoot  string
)

const (
	testResync = 2 * time.Second
	testRetry  = 300 * time.Millisecond
	testPush   = 3 * time.Second
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	logf.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.UseDevMode(false), zap.Level(zapLevel())))
	var err error
	if testRoot, err = os.MkdirTemp("", "comet-envtest"); err != nil {
		panic(err)
	}
	defer os.RemoveAll(testRoot)

	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		out, err := exec.Command("../hack/envtest-binaries.sh").Output()
		if err != nil {
			fmt.Fprintln(os.Stderr, "building the envtest binaries:", err)
			return 1
		}
		assets = strings.TrimSpace(string(out))
	}
	ctlBinary = filepath.Join(testRoot, "cometserver")
	if out, err := exec.Command("go", "build", "-o", ctlBinary, "../cometserver/cmd/cometserver").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building cometserver: %v\n%s", err, out)
		return 1
	}

	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
	}
	cfg, err := env.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting envtest:", err)
		return 1
	}
	defer env.Stop()

	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(cometv1.AddToScheme(scheme))
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:  scheme,
		Metrics: metricsserver.Options{BindAddress: "0"},
		Cache:   CacheOptions(nil),
	})
	if err != nil {
		panic(err)
	}
	if err := (&CometServerReconciler{
		Client:          mgr.GetClient(),
		Scheme:          scheme,
		Recorder:        mgr.GetEventRecorder("comet-operator"),
		Commander:       commander,
		Image:           "cometserver:test",
		PushConcurrency: 2,
		PushTimeout:     testPush,
		ResyncPeriod:    testResync,
		RetryPeriod:     testRetry,
	}).SetupWithManager(mgr); err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "manager:", err)
		}
	}()
	defer func() { cancel(); <-done }()
	if k8s, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		panic(err)
	}
	return m.Run()
}

func zapLevel() zapcore.Level {
	if os.Getenv("TEST_VERBOSE_LOGS") != "" {
		return zapcore.DebugLevel
	}
	return zapcore.ErrorLevel + 1 // quiet: push failures are expected in some tests
}

// localCommander stands in for pods/exec, which needs a kubelet: it runs
// the argv the operator would run in the pod with the real cometserver
// binary, against the real comet server the test started for that pod.
type localCommander struct {
	mu      sync.Mutex
	sockets map[string]string // namespace/pod: admin socket path
	calls   []string          // the argv of every exec, for assertions
}

func (l *localCommander) setSocket(pod *corev1.Pod, path string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sockets[pod.Namespace+"/"+pod.Name] = path
}

func (l *localCommander) Exec(ctx context.Context, pod *corev1.Pod, container string, argv []string) ([]byte, []byte, error) {
	l.mu.Lock()
	socket, ok := l.sockets[pod.Namespace+"/"+pod.Name]
	l.calls = append(l.calls, pod.Namespace+"/"+pod.Name+": "+strings.Join(argv, " "))
	l.mu.Unlock()
	if !ok || container != containerName || argv[0] != ServerBinary {
		return nil, nil, fmt.Errorf("localCommander: no pod %s/%s container %s binary %s", pod.Namespace, pod.Name, container, argv[0])
	}
	args := append([]string(nil), argv[1:]...)
	for i := range args {
		if i > 0 && args[i-1] == "--socket" {
			args[i] = socket // the pod's /run/comet/admin.sock, on this machine
		}
	}
	cmd := exec.CommandContext(ctx, ctlBinary, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) && ctx.Err() == nil {
		return stdout.Bytes(), stderr.Bytes(), &ExitError{Code: exit.ExitCode(), Stderr: stderr.String()}
	}
	return stdout.Bytes(), stderr.Bytes(), err
}

func (l *localCommander) callsFor(ns string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, c := range l.calls {
		if strings.HasPrefix(c, ns+"/") {
			out = append(out, c)
		}
	}
	return out
}

// eventually polls cond every 50ms for at most 20 seconds.
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var err error
	for {
		if err = cond(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func newNamespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "comet-test-"}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

var quiet = slog.New(slog.DiscardHandler)
