package controllers

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
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
	spdy, err := remotecommand.NewSPDYExecutor(e.config, "POST", req.URL())
	if err != nil {
		return nil, nil, fmt.Errorf("spdy executor: %w", err)
	}
	exec, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return nil, nil, fmt.Errorf("exec: %w", err)
	}
	var stdout, stderr bytes.Buffer
	err = exec.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &stdout, Stderr: &stderr})
	var exit utilexec.ExitError
	if errors.As(err, &exit) {
		return stdout.Bytes(), stderr.Bytes(), &ExitError{Code: exit.ExitStatus(), Stderr: stderr.String()}
	}
	if err != nil {
		return stdout.Bytes(), stderr.Bytes(), fmt.Errorf("exec in %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return stdout.Bytes(), stderr.Bytes(), nil
}

func firstLine(s string) string {
	for i, c := range s {
		if c == '\n' {
			return s[:i]
		}
	}
	return s
}
