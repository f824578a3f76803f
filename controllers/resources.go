package controllers

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	networkingv1ac "k8s.io/client-go/applyconfigurations/networking/v1"
	policyv1ac "k8s.io/client-go/applyconfigurations/policy/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	cometv1 "github.com/cometop/comet-operator/api/v1alpha1"
	"github.com/cometop/comet-operator/cometserver/contract"
	"github.com/cometop/comet-operator/cometserver/security"
)

// Names of the objects the operator makes; where things sit in the pods is
// the contract package's.
const (
	containerName = "comet"

	labelName      = "app.kubernetes.io/name"
	labelInstance  = "app.kubernetes.io/instance"
	labelManagedBy = "app.kubernetes.io/managed-by"
	managedBy      = "comet-operator"
	appName        = "cometserver"

	// StaticConfigHashAnnotation on the pod template changes when the part
	// of the config that a running server cannot take live changes.
	StaticConfigHashAnnotation = "comet.cometop.dev/static-config-hash"
	// BrokerSecretHashAnnotation on the pod template changes with the
	// broker Secret's keys, which a server reads only at start.
	BrokerSecretHashAnnotation = "comet.cometop.dev/broker-secret-hash"

	// drainDelay is how long a stopping pod keeps serving before it
	// answers its waiting polls: a terminating pod leaves the Service's
	// endpoints as its preStop hook starts, and kube-proxy takes a moment
	// to stop sending it new connections (kubernetes/kubernetes#67592).
	drainDelay = 5 * time.Second
	// exitMargin is left between the server's own shutdown grace and the
	// kubelet's SIGKILL.
	exitMargin = 2 * time.Second
)

// selectorLabels select one CometServer's pods.
func selectorLabels(cs *cometv1.CometServer) map[string]string {
	return map[string]string{labelName: appName, labelInstance: cs.Name}
}

// objectLabels go on every object the operator makes: the managed-by
// label is what its label-scoped caches watch.
func objectLabels(cs *cometv1.CometServer) map[string]string {
	l := selectorLabels(cs)
	l[labelManagedBy] = managedBy
	return l
}

func configMapName(cs *cometv1.CometServer) string { return cs.Name + "-config" }

// publisherServiceName is the Service of the publisher API, apart from the
// client endpoint's, so that exposing one never exposes the other.
func publisherServiceName(cs *cometv1.CometServer) string { return cs.Name + "-publisher" }

func tokenSecretName(cs *cometv1.CometServer) string {
	if cs.Spec.PublisherTokenSecret != "" {
		return cs.Spec.PublisherTokenSecret
	}
	return cs.Name + "-publisher-token"
}

// Live is the part of the spec pushed into running servers. A nil limit
// or history is one the spec leaves to the server's default.
type Live struct {
	Activated          bool
	Timeout            time.Duration
	MaxVirtualChannels *int
	History            *contract.History
}

// Server defaults the spec's absent live fields stand for.
var defaultHistory = contract.History{Size: 100, TTL: 2 * time.Minute}

func liveState(cs *cometv1.CometServer) Live {
	l := Live{Activated: true, Timeout: security.DefaultTimeout}
	if cs.Spec.Activated != nil {
		l.Activated = *cs.Spec.Activated
	}
	if cs.Spec.Timeout != nil {
		l.Timeout = cs.Spec.Timeout.Duration
	}
	if cs.Spec.MaxVirtualChannels != nil {
		l.MaxVirtualChannels = ptr.To(int(*cs.Spec.MaxVirtualChannels))
	}
	if h := cs.Spec.History; h != nil {
		l.History = &contract.History{Size: defaultHistory.Size, TTL: defaultHistory.TTL}
		if h.Size != nil {
			l.History.Size = int(*h.Size)
		}
		if h.TTL != nil {
			l.History.TTL = h.TTL.Duration
		}
	}
	return l
}

func (l Live) String() string {
	return contract.Describe(l.Activated, l.Timeout, l.MaxVirtualChannels, l.History)
}

func port(cs *cometv1.CometServer) int32 {
	if cs.Spec.Port == 0 {
		return 8080
	}
	return cs.Spec.Port
}

// serverConfig is the comet server's config file for cs: its static
// settings and the live state, so that a pod that starts later comes up in
// the state the spec asks for. It holds only the keys the operator sets
// (contract.Config says why).
func serverConfig(cs *cometv1.CometServer, live Live, broker brokerVerdict) contract.Config {
	c := contract.Config{
		MaxVirtualChannels: live.MaxVirtualChannels,
		Activated:          live.Activated,
		Timeout:            live.Timeout.String(),
		Listen:             ":" + strconv.Itoa(int(port(cs))),
		PublisherListen:    ":" + strconv.Itoa(contract.PublisherPort),
		PublisherTokenFile: contract.TokenFile,
		AdminSocket:        contract.AdminSocket,
		ShutdownGrace:      shutdownGrace(cs).String(),
	}
	if h := live.History; h != nil {
		c.HistorySize, c.HistoryTTL = ptr.To(h.Size), h.TTL.String()
	}
	if r := redisSpec(cs); r != nil {
		c.Broker = string(cometv1.BrokerRedis)
		c.RedisPrefix = redisPrefix(cs)
		// Only the files the Secret has keys for are mounted.
		if broker.password {
			c.RedisPasswordFile = contract.RedisDir + "/" + contract.RedisPasswordKey
		}
		if broker.ca {
			c.RedisTLSCAFile = contract.RedisDir + "/" + contract.RedisCAKey
		}
	}
	return c
}

// marshalConfig renders the file.
func marshalConfig(c contract.Config) ([]byte, error) { return yaml.Marshal(c) }

// staticConfigHash hashes the config with the live state held fixed, so
// that only a change a running server cannot take rolls the pods.
func staticConfigHash(cs *cometv1.CometServer, broker brokerVerdict) (string, error) {
	b, err := marshalConfig(serverConfig(cs, Live{Activated: true, Timeout: security.DefaultTimeout}, broker))
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8]), nil
}

// redisSpec is the spec's Redis, nil with the in-memory broker.
func redisSpec(cs *cometv1.CometServer) *cometv1.RedisSpec {
	if b := cs.Spec.Broker; b != nil && b.Type == cometv1.BrokerRedis {
		return b.Redis
	}
	return nil
}

// brokerType is the spec's broker, memory unless it says redis.
func brokerType(cs *cometv1.CometServer) cometv1.BrokerType {
	if redisSpec(cs) != nil {
		return cometv1.BrokerRedis
	}
	return cometv1.BrokerMemory
}

// redisPrefix is the spec's key prefix, or one of the CometServer's own,
// comet-<namespace>.<name>:
// two fleets on one Redis never share a channel by accident.
func redisPrefix(cs *cometv1.CometServer) string {
	if p := redisSpec(cs).Prefix; p != "" {
		return p
	}
	// A namespace has no dot: "." keeps namespace and name apart.
	p := "comet-" + cs.Namespace + "." + cs.Name
	if len(p) > 64 { // namespace and name are DNS labels: only the length can be wrong
		sum := sha256.Sum256([]byte(p))
		p = p[:64-17] + "-" + hex.EncodeToString(sum[:8])
	}
	return p
}

// terminationGrace is the pod's termination grace period.
func terminationGrace(cs *cometv1.CometServer) time.Duration {
	if s := cs.Spec.TerminationGracePeriodSeconds; s != nil {
		return time.Duration(*s) * time.Second
	}
	return 30 * time.Second
}

// shutdownGrace is the server's time, after the drain delay, to answer its
// waiting polls and close its connections before the kubelet kills it.
func shutdownGrace(cs *cometv1.CometServer) time.Duration {
	return max(terminationGrace(cs)-drainDelay-exitMargin, time.Second)
}

func ownerReference(cs *cometv1.CometServer) *metav1ac.OwnerReferenceApplyConfiguration {
	return metav1ac.OwnerReference().
		WithAPIVersion(cometv1.GroupVersion.String()).
		WithKind("CometServer").
		WithName(cs.Name).
		WithUID(cs.UID).
		WithController(true).
		WithBlockOwnerDeletion(true)
}

func configMap(cs *cometv1.CometServer, broker brokerVerdict) (*corev1ac.ConfigMapApplyConfiguration, error) {
	b, err := marshalConfig(serverConfig(cs, liveState(cs), broker))
	if err != nil {
		return nil, fmt.Errorf("rendering the server config: %w", err)
	}
	return corev1ac.ConfigMap(configMapName(cs), cs.Namespace).
		WithLabels(objectLabels(cs)).
		WithOwnerReferences(ownerReference(cs)).
		WithData(map[string]string{contract.ConfigKey: string(b)}), nil
}

// services are the client endpoint's Service, of the spec's type, and the
// publisher API's, always ClusterIP.
func services(cs *cometv1.CometServer) []*corev1ac.ServiceApplyConfiguration {
	serviceType := cs.Spec.ServiceType
	if serviceType == "" {
		serviceType = corev1.ServiceTypeClusterIP
	}
	svc := func(name string, typ corev1.ServiceType, port *corev1ac.ServicePortApplyConfiguration) *corev1ac.ServiceApplyConfiguration {
		return corev1ac.Service(name, cs.Namespace).
			WithLabels(objectLabels(cs)).
			WithOwnerReferences(ownerReference(cs)).
			WithSpec(corev1ac.ServiceSpec().WithType(typ).WithSelector(selectorLabels(cs)).WithPorts(port))
	}
	return []*corev1ac.ServiceApplyConfiguration{
		svc(cs.Name, serviceType, corev1ac.ServicePort().WithName("comet").WithProtocol(corev1.ProtocolTCP).
			WithPort(port(cs)).WithTargetPort(intstr.FromString("comet"))),
		svc(publisherServiceName(cs), corev1.ServiceTypeClusterIP, corev1ac.ServicePort().WithName("publisher").WithProtocol(corev1.ProtocolTCP).
			WithPort(contract.PublisherPort).WithTargetPort(intstr.FromString("publisher"))),
	}
}

// networkPolicy is the NetworkPolicy that spec.networkPolicy asks for.
func networkPolicy(cs *cometv1.CometServer) (*networkingv1ac.NetworkPolicyApplyConfiguration, error) {
	np := cs.Spec.NetworkPolicy
	rule := func(port int32, from []networkingv1.NetworkPolicyPeer) (*networkingv1ac.NetworkPolicyIngressRuleApplyConfiguration, error) {
		r := networkingv1ac.NetworkPolicyIngressRule().WithPorts(networkingv1ac.NetworkPolicyPort().
			WithProtocol(corev1.ProtocolTCP).WithPort(intstr.FromInt32(port)))
		for _, peer := range from {
			p := networkingv1ac.NetworkPolicyPeer()
			if err := convert(peer, p); err != nil {
				return nil, err
			}
			r.WithFrom(p)
		}
		return r, nil
	}
	client, err := rule(port(cs), np.ClientFrom)
	if err != nil {
		return nil, fmt.Errorf("networkPolicy.clientFrom: %w", err)
	}
	ingress := []*networkingv1ac.NetworkPolicyIngressRuleApplyConfiguration{client}
	if len(np.PublisherFrom) > 0 { // a rule with no peers would let everyone in
		publisher, err := rule(contract.PublisherPort, np.PublisherFrom)
		if err != nil {
			return nil, fmt.Errorf("networkPolicy.publisherFrom: %w", err)
		}
		ingress = append(ingress, publisher)
	}
	return networkingv1ac.NetworkPolicy(cs.Name, cs.Namespace).
		WithLabels(objectLabels(cs)).
		WithOwnerReferences(ownerReference(cs)).
		WithSpec(networkingv1ac.NetworkPolicySpec().
			WithPodSelector(metav1ac.LabelSelector().WithMatchLabels(selectorLabels(cs))).
			WithPolicyTypes(networkingv1.PolicyTypeIngress).
			WithIngress(ingress...)), nil
}

func deployment(cs *cometv1.CometServer, image, hash string, broker brokerVerdict) (*appsv1ac.DeploymentApplyConfiguration, error) {
	if cs.Spec.Image != "" {
		image = cs.Spec.Image
	}
	replicas := int32(1)
	if cs.Spec.Replicas != nil {
		replicas = *cs.Spec.Replicas
	}
	annotations := map[string]string{StaticConfigHashAnnotation: hash}
	if broker.hash != "" {
		annotations[BrokerSecretHashAnnotation] = broker.hash
	}
	for k, v := range cs.Spec.PodAnnotations {
		if k != StaticConfigHashAnnotation && k != BrokerSecretHashAnnotation {
			annotations[k] = v
		}
	}
	mounts := []*corev1ac.VolumeMountApplyConfiguration{
		corev1ac.VolumeMount().WithName("config").WithMountPath(contract.ConfigDir).WithReadOnly(true),
		corev1ac.VolumeMount().WithName("publisher-token").WithMountPath(contract.TokenDir).WithReadOnly(true),
		corev1ac.VolumeMount().WithName("run").WithMountPath(contract.RunDir),
	}
	volumes := []*corev1ac.VolumeApplyConfiguration{
		corev1ac.Volume().WithName("config").WithConfigMap(corev1ac.ConfigMapVolumeSource().WithName(configMapName(cs))),
		corev1ac.Volume().WithName("publisher-token").WithSecret(corev1ac.SecretVolumeSource().
			WithSecretName(tokenSecretName(cs)).
			WithItems(corev1ac.KeyToPath().WithKey(contract.TokenKey).WithPath(contract.TokenKey))),
		corev1ac.Volume().WithName("run").WithEmptyDir(corev1ac.EmptyDirVolumeSource()),
	}
	container := corev1ac.Container().
		WithName(containerName).
		WithImage(image).
		WithArgs("serve", "--config", contract.ConfigFile).
		WithPorts(
			corev1ac.ContainerPort().WithName("comet").WithContainerPort(port(cs)).WithProtocol(corev1.ProtocolTCP),
			corev1ac.ContainerPort().WithName("publisher").WithContainerPort(contract.PublisherPort).WithProtocol(corev1.ProtocolTCP),
		).
		WithReadinessProbe(corev1ac.Probe().
			WithHTTPGet(corev1ac.HTTPGetAction().WithPath(contract.ReadyzPath).WithPort(intstr.FromString("publisher"))).
			WithPeriodSeconds(5)).
		WithLivenessProbe(corev1ac.Probe().
			WithHTTPGet(corev1ac.HTTPGetAction().WithPath(contract.HealthzPath).WithPort(intstr.FromString("publisher"))).
			WithPeriodSeconds(10).WithFailureThreshold(3)).
		// The drain, in order: the pod leaves the Service's endpoints as
		// this hook starts and keeps serving while kube-proxy catches up;
		// then SIGTERM, and the server answers its waiting polls (their
		// clients re-poll on another pod) and exits within shutdown_grace.
		WithLifecycle(corev1ac.Lifecycle().WithPreStop(corev1ac.LifecycleHandler().
			WithSleep(corev1ac.SleepAction().WithSeconds(int64(drainDelay / time.Second))))).
		WithSecurityContext(corev1ac.SecurityContext().
			WithRunAsNonRoot(true).
			WithAllowPrivilegeEscalation(false).
			WithReadOnlyRootFilesystem(true).
			WithCapabilities(corev1ac.Capabilities().WithDrop("ALL")).
			WithSeccompProfile(corev1ac.SeccompProfile().WithType(corev1.SeccompProfileTypeRuntimeDefault)))
	if r := redisSpec(cs); r != nil {
		// The address comes from the Secret through the environment, the
		// password and CA as files: nothing secret in argv or the spec.
		container.WithEnv(corev1ac.EnvVar().WithName(contract.EnvRedisURL).WithValueFrom(corev1ac.EnvVarSource().
			WithSecretKeyRef(corev1ac.SecretKeySelector().WithName(r.SecretName).WithKey(contract.RedisURLKey))))
		var items []*corev1ac.KeyToPathApplyConfiguration
		for key, has := range map[string]bool{contract.RedisPasswordKey: broker.password, contract.RedisCAKey: broker.ca} {
			if has {
				items = append(items, corev1ac.KeyToPath().WithKey(key).WithPath(key))
			}
		}
		if len(items) > 0 {
			slices.SortFunc(items, func(a, b *corev1ac.KeyToPathApplyConfiguration) int { return strings.Compare(*a.Key, *b.Key) })
			mounts = append(mounts, corev1ac.VolumeMount().WithName("redis").WithMountPath(contract.RedisDir).WithReadOnly(true))
			volumes = append(volumes, corev1ac.Volume().WithName("redis").WithSecret(corev1ac.SecretVolumeSource().
				WithSecretName(r.SecretName).WithItems(items...)))
		}
	}
	container.WithVolumeMounts(mounts...)
	if r := cs.Spec.Resources; len(r.Limits) > 0 || len(r.Requests) > 0 {
		container.WithResources(corev1ac.ResourceRequirements().WithLimits(r.Limits).WithRequests(r.Requests))
	}

	pod := corev1ac.PodSpec().
		WithContainers(container).
		WithSecurityContext(corev1ac.PodSecurityContext().WithRunAsUser(contract.UID).WithRunAsGroup(contract.UID).WithFSGroup(contract.UID)).
		WithTerminationGracePeriodSeconds(int64(terminationGrace(cs) / time.Second)).
		WithEnableServiceLinks(false).
		// The comet server never calls the Kubernetes API.
		WithAutomountServiceAccountToken(false).
		WithVolumes(volumes...)
	if len(cs.Spec.NodeSelector) > 0 {
		pod.WithNodeSelector(cs.Spec.NodeSelector)
	}
	if len(cs.Spec.Tolerations) > 0 {
		var tolerations []*corev1ac.TolerationApplyConfiguration
		if err := convert(cs.Spec.Tolerations, &tolerations); err != nil {
			return nil, fmt.Errorf("tolerations: %w", err)
		}
		pod.WithTolerations(tolerations...)
	}
	if cs.Spec.Affinity != nil {
		affinity := corev1ac.Affinity()
		if err := convert(cs.Spec.Affinity, affinity); err != nil {
			return nil, fmt.Errorf("affinity: %w", err)
		}
		pod.WithAffinity(affinity)
	}
	for _, tsc := range cs.Spec.TopologySpreadConstraints {
		c := corev1ac.TopologySpreadConstraint()
		if err := convert(tsc, c); err != nil {
			return nil, fmt.Errorf("topologySpreadConstraints: %w", err)
		}
		if c.LabelSelector == nil {
			c.WithLabelSelector(metav1ac.LabelSelector().WithMatchLabels(selectorLabels(cs)))
		}
		pod.WithTopologySpreadConstraints(c)
	}

	return appsv1ac.Deployment(cs.Name, cs.Namespace).
		WithLabels(objectLabels(cs)).
		WithOwnerReferences(ownerReference(cs)).
		WithSpec(appsv1ac.DeploymentSpec().
			WithReplicas(replicas).
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(selectorLabels(cs))).
			// One new pod first, then one old pod drained at a time: the
			// fleet never has fewer ready pods than it asks for.
			WithStrategy(appsv1ac.DeploymentStrategy().WithType(appsv1.RollingUpdateDeploymentStrategyType).
				WithRollingUpdate(appsv1ac.RollingUpdateDeployment().
					WithMaxSurge(intstr.FromInt32(1)).WithMaxUnavailable(intstr.FromInt32(0)))).
			WithTemplate(corev1ac.PodTemplateSpec().
				WithLabels(objectLabels(cs)).
				WithAnnotations(annotations).
				WithSpec(pod))), nil
}

// podDisruptionBudget is the PodDisruptionBudget spec.podDisruptionBudget
// asks for.
func podDisruptionBudget(cs *cometv1.CometServer) *policyv1ac.PodDisruptionBudgetApplyConfiguration {
	spec := policyv1ac.PodDisruptionBudgetSpec().
		WithSelector(metav1ac.LabelSelector().WithMatchLabels(selectorLabels(cs)))
	if b := cs.Spec.PodDisruptionBudget; b.MinAvailable != nil {
		spec.WithMinAvailable(*b.MinAvailable)
	} else {
		spec.WithMaxUnavailable(*b.MaxUnavailable)
	}
	return policyv1ac.PodDisruptionBudget(cs.Name, cs.Namespace).
		WithLabels(objectLabels(cs)).
		WithOwnerReferences(ownerReference(cs)).
		WithSpec(spec)
}

// convert copies a core type into its apply configuration, which has the
// same JSON shape.
func convert(in, out any) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, out)
}
