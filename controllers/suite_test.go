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
	goruntime "runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	cometv1 "github.com/cometop/comet-operator/api/v1alpha1"
	"github.com/cometop/comet-operator/cometserver/contract"
	"github.com/cometop/comet-operator/test/bounded"
)

var (
	k8s        client.Client // talks to the API server directly
	cached     client.Client // the suite manager's client, reading its cache
	testCfg    *rest.Config
	testScheme = runtime.NewScheme()
	commander  = &localCommander{sockets: map[string]string{}}
	ctlBinary  string
	testRoot   string
)

// ownReconcilerLabel on a CometServer keeps the suite's manager away from
// it: a test that needs a reconciler of its own (another resync period)
// starts one with startManager.
const ownReconcilerLabel = "test.cometop.dev/own-reconciler"

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
	// Mutation testing (hack/mutation.sh) runs the tests once per mutant:
	// there, only the tests of pure functions run, without an API server.
	if os.Getenv("COMET_PURE_TESTS") != "" {
		return m.Run()
	}
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
	testCfg = cfg

	utilruntime.Must(clientgoscheme.AddToScheme(testScheme))
	utilruntime.Must(cometv1.AddToScheme(testScheme))
	utilruntime.Must(apiextensionsv1.AddToScheme(testScheme)) // the CRD, for TestPrinterColumns
	cacheOptions := CacheOptions(nil)
	notOwn, err := labels.Parse("!" + ownReconcilerLabel)
	if err != nil {
		panic(err)
	}
	cacheOptions.ByObject[&cometv1.CometServer{}] = cache.ByObject{Label: notOwn}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:  testScheme,
		Metrics: metricsserver.Options{BindAddress: "0"},
		Cache:   cacheOptions,
	})
	if err != nil {
		panic(err)
	}
	if err := newReconciler(mgr, testResync).SetupWithManager(mgr); err != nil {
		panic(err)
	}
	cached = mgr.GetClient()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "manager:", err)
		}
	}()
	defer func() { cancel(); <-done }()
	if k8s, err = client.New(cfg, client.Options{Scheme: testScheme}); err != nil {
		panic(err)
	}
	return m.Run()
}

// newReconciler is the reconciler the tests run: the operator's, with
// short periods, the given resync period, and localCommander for exec.
func newReconciler(mgr ctrl.Manager, resync time.Duration) *CometServerReconciler {
	return &CometServerReconciler{
		Client:               mgr.GetClient(),
		APIReader:            mgr.GetAPIReader(),
		Scheme:               testScheme,
		Recorder:             mgr.GetEventRecorder("comet-operator"),
		Commander:            commander,
		Image:                "cometserver:test",
		PushConcurrency:      2,
		ReconcileConcurrency: 16, // the operator's default
		PushTimeout:          testPush,
		ResyncPeriod:         resync,
		RetryPeriod:          testRetry,
	}
}

// startManager runs a manager of its own for the CometServers of one
// namespace that carry ownReconcilerLabel, with the given resync period,
// until the test ends.
func startManager(t *testing.T, ns string, resync time.Duration) {
	t.Helper()
	mgr, err := ctrl.NewManager(testCfg, ctrl.Options{
		Scheme:  testScheme,
		Metrics: metricsserver.Options{BindAddress: "0"},
		Cache:   CacheOptions([]string{ns}),
	})
	if err != nil {
		t.Fatal(err)
	}
	r := newReconciler(mgr, resync)
	// Not "cometserver": the suite's controller counts its running
	// reconciles under that name, and quiesce waits for that count.
	r.name = "cometserver-" + ns
	if err := r.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	mgrCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(mgrCtx) }()
	t.Cleanup(func() {
		cancel()
		if err := bounded.Recv(t, "the test's manager to stop", 30*time.Second, done); err != nil {
			t.Errorf("the test's manager: %v", err)
		}
	})
}

// quiesce stops the suite's manager from pushing, for tests that read the
// process-wide push metrics: it deletes every CometServer left, waits for
// the manager's cache to hold none, then for no reconcile to be running.
// A reconcile running then began after the cache emptied: it finds no
// CometServer and pushes nothing.
func quiesce(t *testing.T) {
	t.Helper()
	if k8s == nil {
		return // no API server, no manager: nothing else pushes
	}
	var list cometv1.CometServerList
	if err := k8s.List(context.Background(), &list); err != nil {
		t.Fatal(err)
	}
	for i := range list.Items {
		if err := k8s.Delete(context.Background(), &list.Items[i]); client.IgnoreNotFound(err) != nil {
			t.Fatal(err)
		}
	}
	bounded.Wait(t, "the manager's cache to hold no CometServer", 30*time.Second, func() bool {
		var l cometv1.CometServerList
		return cached.List(context.Background(), &l) == nil && len(l.Items) == 0
	})
	// A reconcile that began before the deletes may still be pushing to
	// its pods, one push timeout each; under a loaded CI machine that has
	// taken over 30 seconds. If one is still running after 90, say where.
	var n float64
	if !bounded.Until(90*time.Second, func() bool {
		var ok bool
		n, ok = activeWorkers(t)
		return ok && n == 0
	}) {
		buf := make([]byte, 1<<20)
		for len(buf) == goruntime.Stack(buf, true) { // truncated: grow
			buf = make([]byte, 2*len(buf))
		}
		buf = buf[:goruntime.Stack(buf, true)]
		var running []string
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "comet-operator/controllers.") && !strings.Contains(g, "testing.tRunner") {
				running = append(running, g)
			}
		}
		t.Fatalf("timed out after 90s waiting for the cometserver controller to report no reconcile running (it reports %v); its goroutines:\n%s",
			n, strings.Join(running, "\n\n"))
	}
}

// activeWorkers is controller-runtime's count of the cometserver
// controller's reconciles running now; not ok until the controller has
// started and reports it.
func activeWorkers(t *testing.T) (n float64, ok bool) {
	t.Helper()
	families, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "controller_runtime_active_workers" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "controller" && l.GetValue() == "cometserver" {
					n, ok = n+m.GetGauge().GetValue(), true
				}
			}
		}
	}
	return n, ok
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
	if !ok || container != containerName || argv[0] != contract.ServerBinary {
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
	if k8s == nil {
		t.Skip("COMET_PURE_TESTS is set: no API server")
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "comet-test-"}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

var quiet = slog.New(slog.DiscardHandler)
