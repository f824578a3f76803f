package controllers

import (
	"context"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	networkingv1ac "k8s.io/client-go/applyconfigurations/networking/v1"
	policyv1ac "k8s.io/client-go/applyconfigurations/policy/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// apply server-side applies desired unless the object in the cache holds
// exactly what the operator last applied (its managed fields, extracted
// as client-go's Extract functions do). A pass that changes nothing then
// writes nothing: with many CometServers, no-op applies were most of the
// API server's work and delayed the changes that matter. A copy that
// compares unequal when it is not (a defaulted field) costs one apply.
func apply[O client.Object, A runtime.ApplyConfiguration](ctx context.Context, c client.Client, key types.NamespacedName,
	cur O, desired A, extract func(O, string) (A, error)) error {
	err := c.Get(ctx, key, cur)
	switch {
	case err == nil:
		if had, err := extract(cur, string(fieldOwner)); err == nil && equality.Semantic.DeepEqual(had, desired) {
			return nil
		}
	case !apierrors.IsNotFound(err):
		return err
	}
	return c.Apply(ctx, desired, fieldOwner, client.ForceOwnership)
}

func applyConfigMap(ctx context.Context, c client.Client, a *corev1ac.ConfigMapApplyConfiguration) error {
	return apply(ctx, c, types.NamespacedName{Namespace: *a.Namespace, Name: *a.Name}, &corev1.ConfigMap{}, a, corev1ac.ExtractConfigMap)
}

func applyService(ctx context.Context, c client.Client, a *corev1ac.ServiceApplyConfiguration) error {
	return apply(ctx, c, types.NamespacedName{Namespace: *a.Namespace, Name: *a.Name}, &corev1.Service{}, a, corev1ac.ExtractService)
}

func applyDeployment(ctx context.Context, c client.Client, a *appsv1ac.DeploymentApplyConfiguration) error {
	return apply(ctx, c, types.NamespacedName{Namespace: *a.Namespace, Name: *a.Name}, &appsv1.Deployment{}, a, appsv1ac.ExtractDeployment)
}

func applyNetworkPolicy(ctx context.Context, c client.Client, a *networkingv1ac.NetworkPolicyApplyConfiguration) error {
	return apply(ctx, c, types.NamespacedName{Namespace: *a.Namespace, Name: *a.Name}, &networkingv1.NetworkPolicy{}, a, networkingv1ac.ExtractNetworkPolicy)
}

func applyPodDisruptionBudget(ctx context.Context, c client.Client, a *policyv1ac.PodDisruptionBudgetApplyConfiguration) error {
	return apply(ctx, c, types.NamespacedName{Namespace: *a.Namespace, Name: *a.Name}, &policyv1.PodDisruptionBudget{}, a, policyv1ac.ExtractPodDisruptionBudget)
}
