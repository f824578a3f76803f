// Command comet-operator runs the CometServer controller.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	_ "k8s.io/client-go/plugin/pkg/client/auth"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	cometv1 "github.com/cometop/comet-operator/api/v1alpha1"
	"github.com/cometop/comet-operator/controllers"
)

// version is set at link time: -ldflags "-X main.version=...".
var version = "dev"

var scheme = runtime.NewScheme()

func init() {
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(cometv1.AddToScheme(scheme))
}

func main() {
	var (
		metricsAddr, probeAddr, image, namespaces string
		secureMetrics, enableHTTP2, leaderElect   bool
		pushConcurrency, reconcileConcurrency     int
		pushTimeout, resync, retry                time.Duration
	)
	flag.StringVar(&metricsAddr, "metrics-bind-address", "0", "Address of the metrics endpoint: :8443 for HTTPS, :8080 for HTTP, 0 to disable.")
	flag.BoolVar(&secureMetrics, "metrics-secure", true, "Serve metrics over HTTPS with authentication and authorization.")
	flag.BoolVar(&enableHTTP2, "enable-http2", false, "Allow HTTP/2 for the metrics server (off: HTTP/2 Stream Cancellation and Rapid Reset CVEs).")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "Address of the health and readiness probes.")
	flag.BoolVar(&leaderElect, "leader-elect", false, "Elect a leader, so that only one operator replica reconciles.")
	flag.StringVar(&image, "cometserver-image", "", "Comet server image for CometServers that name none (required).")
	flag.StringVar(&namespaces, "watch-namespaces", "", "Comma-separated namespaces to watch; empty watches all.")
	flag.IntVar(&pushConcurrency, "push-concurrency", 8, "Pods pushed at once, per CometServer.")
	flag.IntVar(&reconcileConcurrency, "reconcile-concurrency", 16, "CometServers reconciled at once: a slow push to one does not hold the others.")
	flag.DurationVar(&pushTimeout, "push-timeout", 30*time.Second, "Time allowed for one push (an exec into a pod).")
	flag.DurationVar(&resync, "resync-period", 5*time.Minute, "How often each pod's live state is checked again, to correct changes made by hand.")
	flag.DurationVar(&retry, "retry-period", 10*time.Second, "How soon a failed push is tried again.")
	showVersion := flag.Bool("version", false, "Print the version and exit.")
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	if *showVersion {
		fmt.Println(version)
		return
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))
	log := ctrl.Log.WithName("setup")

	if err := checkFlags(image, pushConcurrency, reconcileConcurrency, pushTimeout, resync, retry); err != nil {
		log.Error(err, "invalid flags")
		os.Exit(2)
	}

	var tlsOpts []func(*tls.Config)
	if !enableHTTP2 {
		tlsOpts = append(tlsOpts, func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} })
	}
	metricsOpts := metricsserver.Options{BindAddress: metricsAddr, SecureServing: secureMetrics, TLSOpts: tlsOpts}
	if secureMetrics {
		metricsOpts.FilterProvider = filters.WithAuthenticationAndAuthorization
	}
	cfg := ctrl.GetConfigOrDie()
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsOpts,
		HealthProbeBindAddress: probeAddr,
		LeaderElection:         leaderElect,
		LeaderElectionID:       "comet-operator.comet.cometop.dev",
		// The process exits as soon as the manager stops, so it can hand the
		// lease over at once: a rolling restart need not wait for it to expire.
		LeaderElectionReleaseOnCancel: true,
		Cache:                         controllers.CacheOptions(splitList(namespaces)),
	})
	if err != nil {
		log.Error(err, "unable to start the manager")
		os.Exit(1)
	}
	commander, err := controllers.NewExecCommander(cfg)
	if err != nil {
		log.Error(err, "unable to make the exec client")
		os.Exit(1)
	}
	if err := (&controllers.CometServerReconciler{
		Client:               mgr.GetClient(),
		APIReader:            mgr.GetAPIReader(),
		Scheme:               mgr.GetScheme(),
		Recorder:             mgr.GetEventRecorder("comet-operator"),
		Commander:            commander,
		Image:                image,
		PushConcurrency:      pushConcurrency,
		ReconcileConcurrency: reconcileConcurrency,
		PushTimeout:          pushTimeout,
		ResyncPeriod:         resync,
		RetryPeriod:          retry,
	}).SetupWithManager(mgr); err != nil {
		log.Error(err, "unable to set up the controller")
		os.Exit(1)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		log.Error(err, "unable to set up the health check")
		os.Exit(1)
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		log.Error(err, "unable to set up the ready check")
		os.Exit(1)
	}
	log.Info("starting the manager", "version", version, "cometserverImage", image, "watchNamespaces", namespaces)
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		log.Error(err, "manager stopped")
		os.Exit(1)
	}
}

func checkFlags(image string, concurrency, reconciles int, timeout, resync, retry time.Duration) error {
	switch {
	case strings.TrimSpace(image) == "":
		return fmt.Errorf("--cometserver-image is required")
	case concurrency < 1:
		return fmt.Errorf("--push-concurrency must be at least 1, got %d", concurrency)
	case reconciles < 1:
		return fmt.Errorf("--reconcile-concurrency must be at least 1, got %d", reconciles)
	case timeout < time.Second:
		return fmt.Errorf("--push-timeout must be at least 1s, got %s", timeout)
	case resync <= 0:
		return fmt.Errorf("--resync-period must be greater than 0, got %s", resync)
	case retry <= 0:
		return fmt.Errorf("--retry-period must be greater than 0, got %s", retry)
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for part := range strings.SplitSeq(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}
