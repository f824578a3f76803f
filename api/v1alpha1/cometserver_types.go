package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// CometServerSpec is the desired state of a fleet of comet servers.
//
// activated and timeout are live settings: a change reaches the running pods
// over their admin socket, with no restart. Every other field changes the
// pods, and changing it rolls them.
type CometServerSpec struct {
	// Activated serves comet requests when true; when false every waiting
	// and new client request gets 503 (comet:deactivate).
	// +kubebuilder:default=true
	// +optional
	Activated *bool `json:"activated,omitempty"`

	// Timeout is how long a client request waits for a message, a duration
	// such as 20s; at least 1s, at most 1h (comet:set_timeout). Below a
	// second every client would re-poll in a tight loop.
	// +kubebuilder:default="20s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s') && duration(self) <= duration('1h')",message="timeout must be at least 1s and at most 1h"
	// +optional
	Timeout *metav1.Duration `json:"timeout,omitempty"`

	// KillOnTimeoutChange answers the requests waiting under the old timeout
	// with 503 when the timeout changes (set_timeout ... KILL). Otherwise they
	// finish under the timeout they started with.
	// +optional
	KillOnTimeoutChange bool `json:"killOnTimeoutChange,omitempty"`

	// MaxVirtualChannels bounds the live channels of each server. Absent
	// means no limit; 0 refuses every channel. Changing it rolls the pods.
	// +kubebuilder:validation:Minimum=0
	// +optional
	MaxVirtualChannels *int32 `json:"maxVirtualChannels,omitempty"`

	// Replicas is the number of comet server pods: 0 or 1. Each server holds
	// its channels in memory, so with several replicas a publisher and a
	// client could reach different pods and miss each other; more replicas
	// need a shared broker, which this version does not have.
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:XValidation:rule="self <= 1",message="replicas above 1 need a shared channel broker, which this version does not have: each replica would hold its own channels and publishers and clients would miss each other"
	// +optional
	Replicas *int32 `json:"replicas,omitempty"`

	// Image of the comet server; by default the operator's --cometserver-image.
	// +kubebuilder:validation:MaxLength=512
	// +kubebuilder:validation:XValidation:rule="self == self.trim() && self != ''",message="image must be a non-empty reference without surrounding spaces"
	// +optional
	Image string `json:"image,omitempty"`

	// Port of the client long-poll endpoint, in the pod and on the Service.
	// +kubebuilder:default=8080
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +kubebuilder:validation:XValidation:rule="self != 8081",message="port 8081 is the publisher API's; choose another"
	// +optional
	Port int32 `json:"port,omitempty"`

	// ServiceType of the Service in front of the pods' client endpoint. The
	// publisher API has a Service of its own, <name>-publisher, always
	// ClusterIP: a LoadBalancer exposes only the client port.
	// +kubebuilder:default=ClusterIP
	// +kubebuilder:validation:Enum=ClusterIP;NodePort;LoadBalancer
	// +optional
	ServiceType corev1.ServiceType `json:"serviceType,omitempty"`

	// PublisherTokenSecret names a Secret in the same namespace whose key
	// "token" holds the publisher API's bearer token. The Secret must opt in
	// with the label comet.cometop.dev/publisher-token: "true": the operator
	// mounts no other Secret, so that whoever may edit a CometServer cannot
	// have any Secret of the namespace mounted into a pod of their image.
	// Without it the operator generates one in the Secret
	// <name>-publisher-token.
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	// +optional
	PublisherTokenSecret string `json:"publisherTokenSecret,omitempty"`

	// Resources of the comet server container.
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`

	// NodeSelector of the pods.
	// +optional
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`

	// Tolerations of the pods.
	// +optional
	// +listType=atomic
	Tolerations []corev1.Toleration `json:"tolerations,omitempty"`

	// Affinity of the pods.
	// +optional
	Affinity *corev1.Affinity `json:"affinity,omitempty"`

	// PodAnnotations are added to the pods.
	// +optional
	PodAnnotations map[string]string `json:"podAnnotations,omitempty"`

	// NetworkPolicy, when set, restricts who reaches the pods: the client
	// port those in clientFrom (everyone when empty), the publisher port
	// (the publisher API, /metrics, /healthz and /readyz) only those in
	// publisherFrom (nobody when empty; most network plugins still let the
	// kubelet's probes through).
	// +optional
	NetworkPolicy *NetworkPolicySpec `json:"networkPolicy,omitempty"`
}

// NetworkPolicySpec says who may reach a CometServer's pods.
type NetworkPolicySpec struct {
	// ClientFrom may reach the client endpoint; empty means everyone.
	// +optional
	// +listType=atomic
	ClientFrom []networkingv1.NetworkPolicyPeer `json:"clientFrom,omitempty"`
	// PublisherFrom may reach the publisher API; empty means nobody.
	// +optional
	// +listType=atomic
	PublisherFrom []networkingv1.NetworkPolicyPeer `json:"publisherFrom,omitempty"`
}

// PodState is what the operator last learned from one pod's comet server.
type PodState struct {
	// Name of the pod.
	Name string `json:"name"`

	// Activated as the server reported it after the last push.
	// +optional
	Activated *bool `json:"activated,omitempty"`

	// Timeout as the server reported it after the last push.
	// +optional
	Timeout *metav1.Duration `json:"timeout,omitempty"`

	// AppliedGeneration is the CometServer generation whose live state the
	// pod last confirmed holding.
	// +optional
	AppliedGeneration int64 `json:"appliedGeneration,omitempty"`

	// ContainerID of the comet container at the last push: another one means
	// the container restarted and is pushed again.
	// +optional
	ContainerID string `json:"containerID,omitempty"`

	// LastError of the last push; empty when it succeeded.
	// +optional
	LastError string `json:"lastError,omitempty"`
}

// CometServerStatus is the observed state of a CometServer.
type CometServerStatus struct {
	// ObservedGeneration is the generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Replicas is the number of comet server pods.
	// +optional
	Replicas int32 `json:"replicas"`

	// ReadyReplicas is the number of ready comet server pods.
	// +optional
	ReadyReplicas int32 `json:"readyReplicas"`

	// Selector selects the pods, for the scale subresource.
	// +optional
	Selector string `json:"selector,omitempty"`

	// Pods is the live state of each ready pod, by name.
	// +optional
	// +listType=map
	// +listMapKey=name
	Pods []PodState `json:"pods,omitempty"`

	// Conditions: Available, Progressing, ConfigApplied, Degraded,
	// PublisherTokenAccepted.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Condition types.
const (
	// ConditionAvailable: the desired number of pods is ready.
	ConditionAvailable = "Available"
	// ConditionProgressing: a rollout is under way.
	ConditionProgressing = "Progressing"
	// ConditionConfigApplied: every ready pod holds the spec's live state.
	ConditionConfigApplied = "ConfigApplied"
	// ConditionDegraded: pushes fail, the rollout is stuck, or the
	// publisher token Secret is refused.
	ConditionDegraded = "Degraded"
	// ConditionPublisherTokenAccepted: the publisher token the pods mount
	// is the generated one, or a Secret that opted in.
	ConditionPublisherTokenAccepted = "PublisherTokenAccepted"

	// PublisherTokenLabel opts a Secret in as a publisher token Secret.
	PublisherTokenLabel = "comet.cometop.dev/publisher-token"
)

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:subresource:scale:specpath=.spec.replicas,statuspath=.status.replicas,selectorpath=.status.selector
// +kubebuilder:resource:shortName=comet
// +kubebuilder:printcolumn:name="Ready",type=integer,JSONPath=`.status.readyReplicas`
// +kubebuilder:printcolumn:name="Activated",type=boolean,JSONPath=`.spec.activated`
// +kubebuilder:printcolumn:name="Timeout",type=string,JSONPath=`.spec.timeout`
// +kubebuilder:printcolumn:name="Applied",type=string,JSONPath=`.status.conditions[?(@.type=="ConfigApplied")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`

// CometServer runs comet push servers and steers them live.
type CometServer struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +optional
	Spec CometServerSpec `json:"spec,omitempty"`
	// +optional
	Status CometServerStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// CometServerList is a list of CometServers.
type CometServerList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []CometServer `json:"items"`
}

func init() {
	SchemeBuilder.Register(&CometServer{}, &CometServerList{})
}
