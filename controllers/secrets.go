package controllers

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	cometv1 "github.com/cometop/comet-operator/api/v1alpha1"
	"github.com/cometop/comet-operator/cometserver/config"
	"github.com/cometop/comet-operator/cometserver/contract"
)

// The Secrets a CometServer's pods mount: the publisher token, generated
// or the user's, and the Redis broker's. The operator mounts a user's
// Secret only if it opted in with a label, so that whoever may edit a
// CometServer cannot have any Secret of the namespace mounted into a pod
// of their image.

// tokenVerdict is what became of the publisher token Secret.
type tokenVerdict struct {
	accepted        bool
	reason, message string
}

// tokenSecret creates the generated publisher token once, unless the spec
// names the user's own Secret, which must opt in. An existing token is
// never replaced: publishers hold it.
func (r *CometServerReconciler) tokenSecret(ctx context.Context, cs *cometv1.CometServer) (tokenVerdict, error) {
	if name := cs.Spec.PublisherTokenSecret; name != "" {
		// Read past the cache, which holds only the operator's own Secrets.
		var s corev1.Secret
		err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: cs.Namespace, Name: name}, &s)
		switch {
		case apierrors.IsNotFound(err):
			return tokenVerdict{reason: "SecretNotFound", message: fmt.Sprintf("secret %s not found", name)}, nil
		case err != nil:
			return tokenVerdict{}, fmt.Errorf("reading secret %s: %w", name, err)
		case s.Labels[cometv1.PublisherTokenLabel] != "true":
			return tokenVerdict{reason: "SecretNotOptedIn", message: fmt.Sprintf(
				"secret %s lacks the label %s=true: the operator mounts only Secrets that opt in", name, cometv1.PublisherTokenLabel)}, nil
		case len(s.Data[contract.TokenKey]) == 0:
			return tokenVerdict{reason: "SecretHasNoToken", message: fmt.Sprintf("secret %s has no key %q", name, contract.TokenKey)}, nil
		}
		return tokenVerdict{accepted: true, reason: "OptedIn", message: fmt.Sprintf("secret %s opted in", name)}, nil
	}
	if err := r.ensureTokenSecret(ctx, cs); err != nil {
		return tokenVerdict{}, err
	}
	return tokenVerdict{accepted: true, reason: "Generated", message: fmt.Sprintf("generated in secret %s", tokenSecretName(cs))}, nil
}

// ensureTokenSecret creates the generated publisher token once. An
// existing token is never replaced: publishers hold it.
func (r *CometServerReconciler) ensureTokenSecret(ctx context.Context, cs *cometv1.CometServer) error {
	var s corev1.Secret
	err := r.Get(ctx, types.NamespacedName{Namespace: cs.Namespace, Name: tokenSecretName(cs)}, &s)
	if err == nil || !apierrors.IsNotFound(err) {
		return err
	}
	token := make([]byte, 32)
	_, _ = rand.Read(token) // crypto/rand.Read never fails (Go 1.24+)
	s = corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: tokenSecretName(cs), Namespace: cs.Namespace, Labels: objectLabels(cs)},
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{contract.TokenKey: []byte(base64.RawURLEncoding.EncodeToString(token))},
	}
	if err := controllerutil.SetControllerReference(cs, &s, r.Scheme); err != nil {
		return err
	}
	if err := r.Create(ctx, &s); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("secret %s exists but is not managed by the operator (no %s=%s label): name it in spec.publisherTokenSecret or remove it",
				s.Name, labelManagedBy, managedBy)
		}
		return fmt.Errorf("creating the publisher token secret: %w", err)
	}
	r.Recorder.Eventf(cs, nil, corev1.EventTypeNormal, "TokenCreated", "Create", "generated the publisher token in secret %s", s.Name)
	return nil
}

// brokerVerdict is what became of the Redis broker's Secret, and which of
// its optional keys it has.
type brokerVerdict struct {
	accepted        bool
	reason, message string
	password, ca    bool
	// hash of the Secret's keys: on the pod template, so that a changed
	// address, password or CA, which a server reads at start, rolls the pods.
	hash string
}

// brokerSecret checks the Secret a Redis broker names: opted in, with a
// URL. The in-memory broker needs none.
func (r *CometServerReconciler) brokerSecret(ctx context.Context, cs *cometv1.CometServer) (brokerVerdict, error) {
	spec := redisSpec(cs)
	if spec == nil {
		return brokerVerdict{accepted: true, reason: "InMemory", message: "the in-memory broker needs no Secret"}, nil
	}
	name := spec.SecretName
	var s corev1.Secret
	// Read past the cache, which holds only the operator's own Secrets.
	err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: cs.Namespace, Name: name}, &s)
	switch {
	case apierrors.IsNotFound(err):
		return brokerVerdict{reason: "SecretNotFound", message: fmt.Sprintf("broker secret %s not found", name)}, nil
	case err != nil:
		return brokerVerdict{}, fmt.Errorf("reading broker secret %s: %w", name, err)
	case s.Labels[cometv1.BrokerSecretLabel] != "true":
		return brokerVerdict{reason: "SecretNotOptedIn", message: fmt.Sprintf(
			"broker secret %s lacks the label %s=true: the operator mounts only Secrets that opt in", name, cometv1.BrokerSecretLabel)}, nil
	case len(s.Data[contract.RedisURLKey]) == 0:
		return brokerVerdict{reason: "SecretHasNoURL", message: fmt.Sprintf("broker secret %s has no key %q", name, contract.RedisURLKey)}, nil
	}
	// What the server would refuse at start is refused here, with a
	// reason, rather than crash-looping the pods.
	url := string(s.Data[contract.RedisURLKey])
	if err := config.CheckRedisURL(url); err != nil {
		return brokerVerdict{reason: "InvalidURL", message: fmt.Sprintf("broker secret %s: key %q: %v", name, contract.RedisURLKey, err)}, nil
	}
	ca := len(s.Data[contract.RedisCAKey]) > 0
	if ca && !strings.HasPrefix(url, "rediss://") {
		return brokerVerdict{reason: "CAWithoutTLS", message: fmt.Sprintf("broker secret %s has %q for a URL that is not rediss://", name, contract.RedisCAKey)}, nil
	}
	sum := sha256.New()
	for _, k := range []string{contract.RedisURLKey, contract.RedisPasswordKey, contract.RedisCAKey} {
		fmt.Fprintf(sum, "%s=%d:%s\n", k, len(s.Data[k]), s.Data[k])
	}
	return brokerVerdict{accepted: true, reason: "OptedIn", message: fmt.Sprintf("broker secret %s opted in", name),
		password: len(s.Data[contract.RedisPasswordKey]) > 0, ca: ca, hash: hex.EncodeToString(sum.Sum(nil)[:8])}, nil
}
