package controllers

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	networkingv1ac "k8s.io/client-go/applyconfigurations/networking/v1"
	"sigs.k8s.io/yaml"

	cometv1 "github.com/cometop/comet-operator/api/v1alpha1"
	"github.com/cometop/comet-operator/cometserver/config"
	"github.com/cometop/comet-operator/cometserver/security"
)

// Names and paths shared by the objects the operator makes and the pods
// it steers.
const (
	containerName = "comet"
	// ServerBinary is where the comet server's binary sits in its image: the
	// operator execs "<ServerBinary> ctl apply ..." there.
	ServerBinary  = "/cometserver"
	adminSocket   = "/run/comet/admin.sock"
	configDir     = "/etc/comet"
	configKey     = "config.yaml"
	tokenDir      = "/etc/comet/token"
	tokenKey      = "token"
	publisherPort = 8081

	labelName      = "app.kubernetes.io/name"
	labelInstance  = "app.kubernetes.io/instance"
	labelManagedBy = "app.kubernetes.io/managed-by"
	managedBy      = "comet-operator"
	appName        = "cometserver"

	// StaticConfigHashAnnotation on the pod template changes when the part
	// of the config that a running server cannot take live changes.
	StaticConfigHashAnnotation = "comet.cometop.dev/static-config-hash"
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

// Live is the part of the spec pushed into running servers.
type Live struct {
	Activated bool
	Timeout   time.Duration
}

func liveState(cs *cometv1.CometServer) Live {
	l := Live{Activated: true, Timeout: security.DefaultTimeout}
	if cs.Spec.Activated != nil {
		l.Activated = *cs.Spec.Activated
	}
	if cs.Spec.Timeout != nil {
		l.Timeout = cs.Spec.Timeout.Duration
	}
	return l
}

func (l Live) String() string {
	return fmt.Sprintf("activated=%t timeout=%s", l.Activated, l.Timeout)
}

func port(cs *cometv1.CometServer) int32 {
	if cs.Spec.Port == 0 {
		return 8080
	}
	return cs.Spec.Port
}

// ownedConfig is the part of the comet server's config file the operator
// writes: only the keys it sets. The server takes every other key from its
// own defaults, so a pod that pins an older server image keeps starting
// when the server gains a setting (it refuses keys it does not know), and
// a new operator rolls a fleet only when a key it sets really changes.
// Every key here is one the first server release already read.
type ownedConfig struct {
	MaxVirtualChannels config.OptionalInt `json:"max_virtual_channels"`
	Timeout            config.Duration    `json:"timeout"`
	Activated          bool               `json:"activated"`
	Listen             string             `json:"listen"`
	PublisherListen    string             `json:"publisher_listen"`
	PublisherTokenFile string             `json:"publisher_token_file"`
	AdminSocket        string             `json:"admin_socket"`
}

// serverConfig is the comet server's config file for cs: its static
// settings and the live state, so that a pod that starts later comes up in
// the state the spec asks for.
func serverConfig(cs *cometv1.CometServer, live Live) ownedConfig {
	c := ownedConfig{
		Activated:          live.Activated,
		Timeout:            config.Duration{Duration: live.Timeout},
		Listen:             ":" + strconv.Itoa(int(port(cs))),
		PublisherListen:    ":" + strconv.Itoa(publisherPort),
		PublisherTokenFile: tokenDir + "/" + tokenKey,
		AdminSocket:        adminSocket,
	}
	if cs.Spec.MaxVirtualChannels != nil {
		c.MaxVirtualChannels = config.OptionalInt{Value: int(*cs.Spec.MaxVirtualChannels), Present: true}
	}
	return c
}

// Marshal renders the file.
func (c ownedConfig) Marshal() ([]byte, error) { return yaml.Marshal(c) }

// staticConfigHash hashes the config with the live state held fixed, so
// that only a change a running server cannot take rolls the pods.
func staticConfigHash(cs *cometv1.CometServer) (string, error) {
	b, err := serverConfig(cs, Live{Activated: true, Timeout: security.DefaultTimeout}).Marshal()
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8]), nil
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

func configMap(cs *cometv1.CometServer) (*corev1ac.ConfigMapApplyConfiguration, error) {
	b, err := serverConfig(cs, liveState(cs)).Marshal()
	if err != nil {
		return nil, fmt.Errorf("rendering the server config: %w", err)
	}
	return corev1ac.ConfigMap(configMapName(cs), cs.Namespace).
		WithLabels(objectLabels(cs)).
		WithOwnerReferences(ownerReference(cs)).
		WithData(map[string]string{configKey: string(b)}), nil
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
			WithPort(publisherPort).WithTargetPort(intstr.FromString("publisher"))),
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
		publisher, err := rule(publisherPort, np.PublisherFrom)
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

func deployment(cs *cometv1.CometServer, image, hash string) (*appsv1ac.DeploymentApplyConfiguration, error) {
	if cs.Spec.Image != "" {
		image = cs.Spec.Image
	}
	replicas := int32(1)
	if cs.Spec.Replicas != nil {
		replicas = *cs.Spec.Replicas
	}
	annotations := map[string]string{StaticConfigHashAnnotation: hash}
	for k, v := range cs.Spec.PodAnnotations {
		if k != StaticConfigHashAnnotation {
			annotations[k] = v
		}
	}
	container := corev1ac.Container().
		WithName(containerName).
		WithImage(image).
		WithArgs("serve", "--config", configDir+"/"+configKey).
		WithPorts(
			corev1ac.ContainerPort().WithName("comet").WithContainerPort(port(cs)).WithProtocol(corev1.ProtocolTCP),
			corev1ac.ContainerPort().WithName("publisher").WithContainerPort(publisherPort).WithProtocol(corev1.ProtocolTCP),
		).
		WithReadinessProbe(corev1ac.Probe().
			WithHTTPGet(corev1ac.HTTPGetAction().WithPath("/readyz").WithPort(intstr.FromString("publisher"))).
			WithPeriodSeconds(5)).
		WithLivenessProbe(corev1ac.Probe().
			WithHTTPGet(corev1ac.HTTPGetAction().WithPath("/healthz").WithPort(intstr.FromString("publisher"))).
			WithPeriodSeconds(10).WithFailureThreshold(3)).
		WithVolumeMounts(
			corev1ac.VolumeMount().WithName("config").WithMountPath(configDir).WithReadOnly(true),
			corev1ac.VolumeMount().WithName("publisher-token").WithMountPath(tokenDir).WithReadOnly(true),
			corev1ac.VolumeMount().WithName("run").WithMountPath("/run/comet"),
		).
		WithSecurityContext(corev1ac.SecurityContext().
			WithRunAsNonRoot(true).
			WithAllowPrivilegeEscalation(false).
			WithReadOnlyRootFilesystem(true).
			WithCapabilities(corev1ac.Capabilities().WithDrop("ALL")).
			WithSeccompProfile(corev1ac.SeccompProfile().WithType(corev1.SeccompProfileTypeRuntimeDefault)))
	if r := cs.Spec.Resources; len(r.Limits) > 0 || len(r.Requests) > 0 {
		container.WithResources(corev1ac.ResourceRequirements().WithLimits(r.Limits).WithRequests(r.Requests))
	}

	pod := corev1ac.PodSpec().
		WithContainers(container).
		WithSecurityContext(corev1ac.PodSecurityContext().WithRunAsUser(65532).WithRunAsGroup(65532).WithFSGroup(65532)).
		WithTerminationGracePeriodSeconds(30).
		WithEnableServiceLinks(false).
		// The comet server never calls the Kubernetes API.
		WithAutomountServiceAccountToken(false).
		WithVolumes(
			corev1ac.Volume().WithName("config").WithConfigMap(corev1ac.ConfigMapVolumeSource().WithName(configMapName(cs))),
			corev1ac.Volume().WithName("publisher-token").WithSecret(corev1ac.SecretVolumeSource().
				WithSecretName(tokenSecretName(cs)).
				WithItems(corev1ac.KeyToPath().WithKey(tokenKey).WithPath(tokenKey))),
			corev1ac.Volume().WithName("run").WithEmptyDir(corev1ac.EmptyDirVolumeSource()),
		)
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

	return appsv1ac.Deployment(cs.Name, cs.Namespace).
		WithLabels(objectLabels(cs)).
		WithOwnerReferences(ownerReference(cs)).
		WithSpec(appsv1ac.DeploymentSpec().
			WithReplicas(replicas).
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(selectorLabels(cs))).
			WithTemplate(corev1ac.PodTemplateSpec().
				WithLabels(objectLabels(cs)).
				WithAnnotations(annotations).
				WithSpec(pod))), nil
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
