// Package controllers holds the CometServer controller: it keeps a
// Deployment of comet servers, their config and Service in line with each
// CometServer, and pushes the live part of the spec (activated, timeout)
// into the running servers through their admin socket, with no restart.
package controllers

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	cometv1 "github.com/cometop/comet-operator/api/v1alpha1"
)

// fieldOwner is the operator's name in server-side apply.
const fieldOwner = client.FieldOwner("comet-operator")

// CometServerReconciler reconciles CometServer objects.
type CometServerReconciler struct {
	client.Client
	// APIReader reads past the cache: for the user's token Secret, which
	// the label-scoped cache does not hold.
	APIReader client.Reader
	Scheme    *runtime.Scheme
	Recorder  events.EventRecorder
	Commander PodCommander

	// Image runs the comet server when a spec names none.
	Image string
	// PushConcurrency bounds the pods pushed at once, per CometServer.
	PushConcurrency int
	// ReconcileConcurrency is how many CometServers are reconciled at
	// once, so that a slow push to one does not hold the others.
	ReconcileConcurrency int
	// PushTimeout bounds one push (one exec).
	PushTimeout time.Duration
	// ResyncPeriod is how often a pod's live state is checked again, to
	// correct changes made by hand.
	ResyncPeriod time.Duration
	// RetryPeriod is how soon a failed push is tried again.
	RetryPeriod time.Duration

	mu       sync.Mutex
	verified map[types.NamespacedName]map[types.UID]time.Time // last good push, per pod

	// name is the controller's name in logs and metrics, "cometserver"
	// unless set: a second controller in one process needs its own, or
	// controller-runtime's per-name gauges (active workers) are shared
	// and reset by whichever starts last.
	name string
}

// +kubebuilder:rbac:groups=comet.cometop.dev,resources=cometservers,verbs=get;list;watch
// +kubebuilder:rbac:groups=comet.cometop.dev,resources=cometservers/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=comet.cometop.dev,resources=cometservers/finalizers,verbs=update
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=apps,resources=replicasets,verbs=get;list;watch
// +kubebuilder:rbac:groups=networking.k8s.io,resources=networkpolicies,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups="",resources=services;configmaps,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=pods/exec,verbs=create;get
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile brings one CometServer's objects and pods to its spec.
func (r *CometServerReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	log := logf.FromContext(ctx)
	var cs cometv1.CometServer
	if err := r.Get(ctx, req.NamespacedName, &cs); err != nil {
		if apierrors.IsNotFound(err) {
			r.forget(req.NamespacedName) // owner references collect the rest
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !cs.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}

	// 1. The objects: publisher token, config file, Deployment (unless its
	// token Secret is refused), Services, NetworkPolicy.
	token, err := r.tokenSecret(ctx, &cs)
	if err != nil {
		return ctrl.Result{}, err
	}
	cm, err := configMap(&cs)
	if err != nil {
		return ctrl.Result{}, err
	}
	if err := r.Apply(ctx, cm, fieldOwner, client.ForceOwnership); err != nil {
		return ctrl.Result{}, fmt.Errorf("applying the config map: %w", err)
	}
	hash, err := staticConfigHash(&cs)
	if err != nil {
		return ctrl.Result{}, err
	}
	var dep appsv1.Deployment
	previousHash := ""
	if err := r.Get(ctx, req.NamespacedName, &dep); err == nil {
		previousHash = dep.Spec.Template.Annotations[StaticConfigHashAnnotation]
	}
	if token.accepted {
		depApply, err := deployment(&cs, r.Image, hash)
		if err != nil {
			return ctrl.Result{}, err
		}
		if err := r.Apply(ctx, depApply, fieldOwner, client.ForceOwnership); err != nil {
			return ctrl.Result{}, fmt.Errorf("applying the deployment: %w", err)
		}
		if previousHash != "" && previousHash != hash {
			r.Recorder.Eventf(&cs, nil, corev1.EventTypeNormal, "RollingOut", "Rollout",
				"static config changed (hash %s to %s): rolling the pods", previousHash, hash)
		}
	}
	for _, svc := range services(&cs) {
		if err := r.Apply(ctx, svc, fieldOwner, client.ForceOwnership); err != nil {
			return ctrl.Result{}, fmt.Errorf("applying service %s: %w", *svc.Name, err)
		}
	}
	if err := r.reconcileNetworkPolicy(ctx, &cs); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.Get(ctx, req.NamespacedName, &dep); err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, fmt.Errorf("reading the deployment: %w", err)
	}

	// 2. The pods of this CometServer's Deployment (not any pod that has
	// its labels): push the live state into every ready one that is behind.
	var podList corev1.PodList
	if err := r.List(ctx, &podList, client.InNamespace(cs.Namespace), client.MatchingLabels(selectorLabels(&cs))); err != nil {
		return ctrl.Result{}, fmt.Errorf("listing pods: %w", err)
	}
	var rsList appsv1.ReplicaSetList
	if err := r.List(ctx, &rsList, client.InNamespace(cs.Namespace), client.MatchingLabels(selectorLabels(&cs))); err != nil {
		return ctrl.Result{}, fmt.Errorf("listing replica sets: %w", err)
	}
	owned := ownedPods(&dep, rsList.Items, podList.Items)
	live := liveState(&cs)
	pods := r.pushWhereBehind(ctx, &cs, owned, live)

	// 3. The status, written only when it changed.
	status := computeStatus(&cs, &dep, owned, pods, live, hash, token)
	if !equality.Semantic.DeepEqual(cs.Status, status) {
		cs.Status = status
		if err := r.Status().Update(ctx, &cs); err != nil {
			return ctrl.Result{}, fmt.Errorf("updating status: %w", err)
		}
	}

	// 4. When to look again: soon after a failed push or a refused Secret
	// (which may opt in at any time), else when the oldest check of a
	// pod's live state is due.
	if failing := failingPods(pods); len(failing) > 0 {
		log.Info("push failed; retrying", "pods", failing, "after", r.RetryPeriod)
		return ctrl.Result{RequeueAfter: r.RetryPeriod}, nil
	}
	if !token.accepted {
		return ctrl.Result{RequeueAfter: r.RetryPeriod}, nil
	}
	return ctrl.Result{RequeueAfter: r.nextCheck(req.NamespacedName)}, nil
}

// ownedPods are the pods of dep: those a ReplicaSet that dep controls
// controls. Anyone who may label a pod could otherwise have the operator
// exec into it and take its output for the server's state.
func ownedPods(dep *appsv1.Deployment, replicaSets []appsv1.ReplicaSet, pods []corev1.Pod) []corev1.Pod {
	if dep.UID == "" {
		return nil
	}
	ours := map[types.UID]bool{}
	for i := range replicaSets {
		if ref := metav1.GetControllerOf(&replicaSets[i]); ref != nil && ref.UID == dep.UID && ref.Kind == "Deployment" {
			ours[replicaSets[i].UID] = true
		}
	}
	var owned []corev1.Pod
	for i := range pods {
		if ref := metav1.GetControllerOf(&pods[i]); ref != nil && ref.Kind == "ReplicaSet" && ours[ref.UID] {
			owned = append(owned, pods[i])
		}
	}
	return owned
}

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
		case len(s.Data[tokenKey]) == 0:
			return tokenVerdict{reason: "SecretHasNoToken", message: fmt.Sprintf("secret %s has no key %q", name, tokenKey)}, nil
		}
		return tokenVerdict{accepted: true, reason: "OptedIn", message: fmt.Sprintf("secret %s opted in", name)}, nil
	}
	if err := r.ensureTokenSecret(ctx, cs); err != nil {
		return tokenVerdict{}, err
	}
	return tokenVerdict{accepted: true, reason: "Generated", message: fmt.Sprintf("generated in secret %s", tokenSecretName(cs))}, nil
}

// reconcileNetworkPolicy applies the NetworkPolicy spec.networkPolicy asks
// for, or deletes the operator's own once it no longer does.
func (r *CometServerReconciler) reconcileNetworkPolicy(ctx context.Context, cs *cometv1.CometServer) error {
	if cs.Spec.NetworkPolicy != nil {
		np, err := networkPolicy(cs)
		if err != nil {
			return err
		}
		if err := r.Apply(ctx, np, fieldOwner, client.ForceOwnership); err != nil {
			return fmt.Errorf("applying the network policy: %w", err)
		}
		return nil
	}
	var np networkingv1.NetworkPolicy // the cache holds only the operator's own
	if err := r.Get(ctx, types.NamespacedName{Namespace: cs.Namespace, Name: cs.Name}, &np); err != nil {
		return client.IgnoreNotFound(err)
	}
	if err := r.Delete(ctx, &np); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("deleting the network policy: %w", err)
	}
	return nil
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
		Data:       map[string][]byte{tokenKey: []byte(base64.RawURLEncoding.EncodeToString(token))},
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

// markVerified records that pod holds the live state as of now.
func (r *CometServerReconciler) markVerified(cs types.NamespacedName, pod types.UID, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.verified == nil {
		r.verified = map[types.NamespacedName]map[types.UID]time.Time{}
	}
	if r.verified[cs] == nil {
		r.verified[cs] = map[types.UID]time.Time{}
	}
	r.verified[cs][pod] = at
}

// verifiedAt is when pod last confirmed the live state; zero if never, as
// after an operator restart, which checks every pod again.
func (r *CometServerReconciler) verifiedAt(cs types.NamespacedName, pod types.UID) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.verified[cs][pod]
}

// keepVerified forgets the pods of cs that are not in live.
func (r *CometServerReconciler) keepVerified(cs types.NamespacedName, live map[types.UID]bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for uid := range r.verified[cs] {
		if !live[uid] {
			delete(r.verified[cs], uid)
		}
	}
}

func (r *CometServerReconciler) forget(cs types.NamespacedName) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.verified, cs)
}

// nextCheck is the time until the oldest pod check of cs falls due.
func (r *CometServerReconciler) nextCheck(cs types.NamespacedName) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	var next time.Duration
	for _, at := range r.verified[cs] {
		due := time.Until(at.Add(r.ResyncPeriod))
		if due < time.Second {
			due = time.Second
		}
		if next == 0 || due < next {
			next = due
		}
	}
	return next
}

// SetupWithManager watches CometServers (spec changes only: the status is
// the operator's own), the objects they own, and their pods.
func (r *CometServerReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&cometv1.CometServer{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Owns(&appsv1.Deployment{}).
		Owns(&corev1.Service{}).
		Owns(&corev1.ConfigMap{}).
		Owns(&corev1.Secret{}).
		Owns(&networkingv1.NetworkPolicy{}).
		// Pods are owned by ReplicaSets; their instance label names the CometServer.
		Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			name := o.GetLabels()[labelInstance]
			if name == "" || o.GetLabels()[labelName] != appName {
				return nil
			}
			return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: name}}}
		})).
		Named(cmp.Or(r.name, "cometserver")).
		WithOptions(controller.Options{MaxConcurrentReconciles: max(1, r.ReconcileConcurrency)}).
		Complete(r)
}

// CacheOptions scopes the manager's caches to the objects this operator
// makes (by their managed-by label) and to the watched namespaces (all if
// none): it never holds every Pod or Secret of the cluster.
func CacheOptions(namespaces []string) cache.Options {
	managed := cache.ByObject{Label: labels.SelectorFromSet(labels.Set{labelManagedBy: managedBy})}
	o := cache.Options{ByObject: map[client.Object]cache.ByObject{
		&corev1.Pod{}:                 managed,
		&corev1.Secret{}:              managed,
		&corev1.ConfigMap{}:           managed,
		&corev1.Service{}:             managed,
		&appsv1.Deployment{}:          managed,
		&appsv1.ReplicaSet{}:          managed,
		&networkingv1.NetworkPolicy{}: managed,
	}}
	if len(namespaces) > 0 {
		o.DefaultNamespaces = map[string]cache.Config{}
		for _, ns := range namespaces {
			o.DefaultNamespaces[ns] = cache.Config{}
		}
	}
	return o
}
