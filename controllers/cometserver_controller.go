// Package controllers holds the CometServer controller: it keeps a
// Deployment of comet servers, their config and Service in line with each
// CometServer, and pushes the live part of the spec (activated, timeout)
// into the running servers through their admin socket, with no restart.
package controllers

import (
	"cmp"
	"context"
	"fmt"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
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
// +kubebuilder:rbac:groups=policy,resources=poddisruptionbudgets,verbs=get;list;watch;create;patch;delete
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

	// 0. A new generation: say at once that the pods do not hold it yet,
	// before the pushes that may take seconds.
	if c := meta.FindStatusCondition(cs.Status.Conditions, cometv1.ConditionConfigApplied); c == nil || c.ObservedGeneration != cs.Generation {
		if err := r.writeStatus(ctx, &cs, newGenerationStatus(&cs)); err != nil {
			return ctrl.Result{}, err
		}
	}

	// 1. The objects: the Secrets' verdicts, config file, Deployment
	// (unless a Secret it would mount is refused), Services,
	// NetworkPolicy, PodDisruptionBudget.
	token, err := r.tokenSecret(ctx, &cs)
	if err != nil {
		return ctrl.Result{}, err
	}
	broker, err := r.brokerSecret(ctx, &cs)
	if err != nil {
		return ctrl.Result{}, err
	}
	cm, err := configMap(&cs, broker)
	if err != nil {
		return ctrl.Result{}, err
	}
	if err := applyConfigMap(ctx, r.Client, cm); err != nil {
		return ctrl.Result{}, fmt.Errorf("applying the config map: %w", err)
	}
	hash, err := staticConfigHash(&cs, broker)
	if err != nil {
		return ctrl.Result{}, err
	}
	var dep appsv1.Deployment
	previousHash := ""
	if err := r.Get(ctx, req.NamespacedName, &dep); err == nil {
		previousHash = dep.Spec.Template.Annotations[StaticConfigHashAnnotation]
	}
	if token.accepted && broker.accepted {
		depApply, err := deployment(&cs, r.Image, hash, broker)
		if err != nil {
			return ctrl.Result{}, err
		}
		if err := applyDeployment(ctx, r.Client, depApply); err != nil {
			return ctrl.Result{}, fmt.Errorf("applying the deployment: %w", err)
		}
		if previousHash != "" && previousHash != hash {
			r.Recorder.Eventf(&cs, nil, corev1.EventTypeNormal, "RollingOut", "Rollout",
				"static config changed (hash %s to %s): rolling the pods", previousHash, hash)
		}
	}
	for _, svc := range services(&cs) {
		if err := applyService(ctx, r.Client, svc); err != nil {
			return ctrl.Result{}, fmt.Errorf("applying service %s: %w", *svc.Name, err)
		}
	}
	if err := r.reconcileNetworkPolicy(ctx, &cs); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.reconcilePodDisruptionBudget(ctx, &cs); err != nil {
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
	status := computeStatus(&cs, &dep, owned, pods, live, hash, token, broker)
	if !equality.Semantic.DeepEqual(cs.Status, status) {
		if err := r.writeStatus(ctx, &cs, status); err != nil {
			return ctrl.Result{}, err
		}
	}

	// 4. When to look again: soon after a failed push, a refused Secret
	// (which may opt in at any time) or a pod whose broker is down, else
	// when the oldest check of a pod's live state is due.
	if failing := failingPods(pods); len(failing) > 0 {
		log.Info("push failed; retrying", "pods", failing, "after", r.RetryPeriod)
		return ctrl.Result{RequeueAfter: r.RetryPeriod}, nil
	}
	if !token.accepted || !broker.accepted || len(needsRetry(pods, brokerType(&cs))) > 0 {
		return ctrl.Result{RequeueAfter: r.RetryPeriod}, nil
	}
	return ctrl.Result{RequeueAfter: r.nextCheck(req.NamespacedName)}, nil
}

// writeStatus sets the whole status by server-side apply: the status is
// the operator's alone, so it needs no resourceVersion precondition (a
// reconcile that read the CometServer from a cache a write behind would
// otherwise fail on a conflict and wait out the queue's backoff), and,
// unlike a patch computed against that cached copy, an apply leaves
// nothing of an earlier write that this one does not repeat.
func (r *CometServerReconciler) writeStatus(ctx context.Context, cs *cometv1.CometServer, status cometv1.CometServerStatus) error {
	fields, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&status)
	if err != nil {
		return fmt.Errorf("writing status: %w", err)
	}
	u := &unstructured.Unstructured{Object: map[string]any{"status": fields}}
	u.SetGroupVersionKind(cometv1.GroupVersion.WithKind("CometServer"))
	u.SetNamespace(cs.Namespace)
	u.SetName(cs.Name)
	if err := r.Status().Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner(fieldOwner), client.ForceOwnership); err != nil {
		return fmt.Errorf("writing status: %w", err)
	}
	cs.Status = status
	return nil
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

// reconcileNetworkPolicy applies the NetworkPolicy spec.networkPolicy asks
// for, or deletes the operator's own once it no longer does.
func (r *CometServerReconciler) reconcileNetworkPolicy(ctx context.Context, cs *cometv1.CometServer) error {
	if cs.Spec.NetworkPolicy != nil {
		np, err := networkPolicy(cs)
		if err != nil {
			return err
		}
		if err := applyNetworkPolicy(ctx, r.Client, np); err != nil {
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

// reconcilePodDisruptionBudget applies the PodDisruptionBudget the spec
// asks for, or deletes the operator's own once it no longer does.
func (r *CometServerReconciler) reconcilePodDisruptionBudget(ctx context.Context, cs *cometv1.CometServer) error {
	if cs.Spec.PodDisruptionBudget != nil {
		if err := applyPodDisruptionBudget(ctx, r.Client, podDisruptionBudget(cs)); err != nil {
			return fmt.Errorf("applying the pod disruption budget: %w", err)
		}
		return nil
	}
	var pdb policyv1.PodDisruptionBudget // the cache holds only the operator's own
	if err := r.Get(ctx, types.NamespacedName{Namespace: cs.Namespace, Name: cs.Name}, &pdb); err != nil {
		return client.IgnoreNotFound(err)
	}
	if err := r.Delete(ctx, &pdb); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("deleting the pod disruption budget: %w", err)
	}
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
		Owns(&policyv1.PodDisruptionBudget{}).
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
		&corev1.Pod{}:                   managed,
		&corev1.Secret{}:                managed,
		&corev1.ConfigMap{}:             managed,
		&corev1.Service{}:               managed,
		&appsv1.Deployment{}:            managed,
		&appsv1.ReplicaSet{}:            managed,
		&networkingv1.NetworkPolicy{}:   managed,
		&policyv1.PodDisruptionBudget{}: managed,
	}}
	if len(namespaces) > 0 {
		o.DefaultNamespaces = map[string]cache.Config{}
		for _, ns := range namespaces {
			o.DefaultNamespaces[ns] = cache.Config{}
		}
	}
	return o
}
