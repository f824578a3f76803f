package controllers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	streamspdy "k8s.io/apimachinery/pkg/util/httpstream/spdy"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	utilexec "k8s.io/client-go/util/exec"
	"k8s.io/streaming/pkg/httpstream"
)

// PodCommander runs a command in a container of a pod and returns what it
// printed. A command that ran and exited non-zero returns an *ExitError.
type PodCommander interface {
	Exec(ctx context.Context, pod *corev1.Pod, container string, argv []string) (stdout, stderr []byte, err error)
}

// ExitError is a command that ran and exited non-zero.
type ExitError struct {
	Code   int
	Stderr string
}

func (e *ExitError) Error() string {
	return fmt.Sprintf("exit code %d: %s", e.Code, firstLine(e.Stderr))
}

// ExecCommander runs commands through the pods/exec subresource, over
// WebSocket with a fallback to SPDY for API servers that lack it, as
// kubectl exec does.
type ExecCommander struct {
	config    *rest.Config
	clientset kubernetes.Interface
}

// NewExecCommander returns an ExecCommander talking to the API server of cfg.
func NewExecCommander(cfg *rest.Config) (*ExecCommander, error) {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("exec client: %w", err)
	}
	return &ExecCommander{config: cfg, clientset: cs}, nil
}

func (e *ExecCommander) Exec(ctx context.Context, pod *corev1.Pod, container string, argv []string) ([]byte, []byte, error) {
	req := e.clientset.CoreV1().RESTClient().Post().
		Resource("pods").Namespace(pod.Namespace).Name(pod.Name).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{
			Container: container,
			Command:   argv,
			Stdout:    true,
			Stderr:    true,
		}, scheme.ParameterCodec)
	ws, err := remotecommand.NewWebSocketExecutor(e.config, "GET", req.URL().String())
	if err != nil {
		return nil, nil, fmt.Errorf("websocket executor: %w", err)
	}
	transport, upgrader, err := spdyTransport(e.config)
	if err != nil {
		return nil, nil, fmt.Errorf("spdy transport: %w", err)
	}
	spdy, err := remotecommand.NewSPDYExecutorForTransports(transport, upgrader, "POST", req.URL())
	if err != nil {
		return nil, nil, fmt.Errorf("spdy executor: %w", err)
	}
	exec, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return nil, nil, fmt.Errorf("exec: %w", err)
	}
	// At the deadline client-go returns while its goroutines may still copy
	// the streams: the buffers take their writes under a lock, and what is
	// returned is a copy. They are bounded: what a pod prints is not the
	// operator's memory to spend.
	stdout, stderr := lockedBuffer{limit: maxExecOutput}, lockedBuffer{limit: maxExecOutput}
	err = exec.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &stdout, Stderr: &stderr})
	if stdout.overflowed() || stderr.overflowed() { // client-go only logs a failed copy
		return stdout.Bytes(), stderr.Bytes(), fmt.Errorf("exec in %s/%s: %w", pod.Namespace, pod.Name, errOutputTooLong)
	}
	var exit utilexec.ExitError
	if errors.As(err, &exit) {
		return stdout.Bytes(), stderr.Bytes(), &ExitError{Code: exit.ExitStatus(), Stderr: string(stderr.Bytes())}
	}
	if err != nil {
		return stdout.Bytes(), stderr.Bytes(), fmt.Errorf("exec in %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return stdout.Bytes(), stderr.Bytes(), nil
}

// spdyTransport is client-go's SPDY transport for cfg (spdy.RoundTripperFor)
// on connections bound to the request's context. client-go reads the
// upgrade's answer with no deadline, so an API server that took the request
// and never answered would hold the push, and with it the reconcile, past
// any timeout. The price: the SPDY fallback dials the API server directly,
// without an HTTP proxy (the WebSocket path, tried first, honours one).
func spdyTransport(cfg *rest.Config) (http.RoundTripper, spdy.Upgrader, error) {
	tlsConfig, err := rest.TLSConfigFor(cfg)
	if err != nil {
		return nil, nil, err
	}
	upgrader, err := streamspdy.NewRoundTripperWithConfig(streamspdy.RoundTripperConfig{
		UpgradeTransport: &http.Transport{TLSClientConfig: tlsConfig, DialContext: dialBound},
		PingPeriod:       5 * time.Second, // as spdy.RoundTripperFor
	})
	if err != nil {
		return nil, nil, err
	}
	wrapper, err := rest.HTTPWrappersForConfig(cfg, upgrader)
	if err != nil {
		return nil, nil, err
	}
	return wrapper, upgrader, nil
}

// dialBound dials a connection that fails every read and write once ctx
// ends.
func dialBound(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	return &boundConn{Conn: c, stop: stop}, nil
}

type boundConn struct {
	net.Conn
	stop func() bool
}

func (c *boundConn) Close() error {
	c.stop()
	return c.Conn.Close()
}

// maxExecOutput bounds what the operator reads of a command's stdout and of
// its stderr: ctl apply prints a line of JSON and a few lines of log.
const maxExecOutput = 64 << 10

// errOutputTooLong ends an exec whose command printed more than it may.
var errOutputTooLong = fmt.Errorf("the command printed more than %d bytes", maxExecOutput)

// lockedBuffer is a bytes.Buffer of at most limit bytes, safe for a writer
// and a reader at once.
type lockedBuffer struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	limit int
	over  bool
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len()+len(p) > b.limit {
		b.over = true
		return 0, errOutputTooLong
	}
	return b.buf.Write(p)
}

func (b *lockedBuffer) overflowed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.over
}

// Bytes returns a copy of what was written so far.
func (b *lockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

func firstLine(s string) string {
	for i, c := range s {
		if c == '\n' {
			return s[:i]
		}
	}
	return s
}
