package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// CometServerSpec is the desired state of a fleet of comet servers.
//
// activated, timeout, maxVirtualChannels and history are live settings: a
// change reaches the running pods over their admin socket, with no restart.
// replicas scales the fleet. Every other field changes the pods, and
// changing it rolls them, one at a time, a new pod first.
// +kubebuilder:validation:XValidation:rule="!has(self.replicas) || self.replicas <= 1 || (has(self.broker) && self.broker.type == 'redis')",fieldPath=".replicas",message="replicas above 1 need a shared broker (spec.broker.type: redis): with the in-memory broker each replica holds its own channels and publishers and clients would miss each other"
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

	// MaxVirtualChannels bounds the live channels: of each server with the
	// in-memory broker, of the whole fleet with Redis. Absent means no
	// limit; 0 refuses every new channel. It is live: lowering it below
	// the channels that live ends none, it refuses new ones until enough
	// end (comet:set_max_virtual_channels).
	// +kubebuilder:validation:Minimum=0
	// +optional
	MaxVirtualChannels *int32 `json:"maxVirtualChannels,omitempty"`

	// History bounds what each channel keeps for clients that resume
	// (PROTOCOL.md section 7), live (comet:set_history). Absent: the
	// server's defaults, 100 messages for 2 minutes.
	// +optional
	History *HistorySpec `json:"history,omitempty"`

	// Replicas is the number of comet server pods. Above 1 needs
	// broker.type redis, so that every pod sees every channel. The scale
	// subresource drives it: kubectl scale, a HorizontalPodAutoscaler.
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000
	// +optional
	Replicas *int32 `json:"replicas,omitempty"`

	// Broker is where channels live: memory (each pod its own, the
	// default) or redis (shared by the fleet, which may then scale).
	// +optional
	Broker *BrokerSpec `json:"broker,omitempty"`

	// PodDisruptionBudget, when set, bounds the pods that voluntary
	// disruptions (node drains) take at once.
	// +optional
	PodDisruptionBudget *PodDisruptionBudgetSpec `json:"podDisruptionBudget,omitempty"`

	// TopologySpreadConstraints of the pods. A constraint without a
	// labelSelector gets the CometServer's pod selector.
	// +optional
	// +listType=atomic
	TopologySpreadConstraints []corev1.TopologySpreadConstraint `json:"topologySpreadConstraints,omitempty"`

	// TerminationGracePeriodSeconds is what a stopping pod gets: 5 s in
	// which it keeps serving while it leaves the Service's endpoints (its
	// clients' next polls go to other pods), then the rest, less 2 s, to
	// answer its waiting polls and close. At least 10.
	// +kubebuilder:default=30
	// +kubebuilder:validation:Minimum=10
	// +kubebuilder:validation:Maximum=3600
	// +optional
	TerminationGracePeriodSeconds *int64 `json:"terminationGracePeriodSeconds,omitempty"`

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

// HistorySpec bounds a channel's history.
type HistorySpec struct {
	// Size is the messages kept per channel; 0 keeps none.
	// +kubebuilder:default=100
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100000
	// +optional
	Size *int32 `json:"size,omitempty"`
	// TTL is how long a message is kept, from 1s to 24h.
	// +kubebuilder:default="2m"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s') && duration(self) <= duration('24h')",message="history ttl must be at least 1s and at most 24h"
	// +optional
	TTL *metav1.Duration `json:"ttl,omitempty"`
}

// BrokerType names a broker.
// +kubebuilder:validation:Enum=memory;redis
type BrokerType string

const (
	BrokerMemory BrokerType = "memory"
	BrokerRedis  BrokerType = "redis"
)

// BrokerSpec chooses where channels live.
// +kubebuilder:validation:XValidation:rule="self.type == 'redis' ? has(self.redis) : !has(self.redis)",message="broker.redis is required with type redis and only then"
type BrokerSpec struct {
	// Type is memory or redis.
	// +kubebuilder:default=memory
	// +optional
	Type BrokerType `json:"type,omitempty"`
	// Redis is the Redis to use when type is redis.
	// +optional
	Redis *RedisSpec `json:"redis,omitempty"`
}

// RedisSpec says how to reach Redis. Nothing secret is here: the address
// and credentials are in a Secret.
type RedisSpec struct {
	// SecretName names a Secret in the same namespace, labelled
	// comet.cometop.dev/broker: "true" (the operator mounts no other), with
	// the keys "url" (redis:// or rediss://host:port, an ACL user as the
	// URL's user name, no password; a Redis Cluster by its seed nodes,
	// rediss://host:port?addr=host2:port2), and optionally "password" and
	// "ca.crt" (the CAs of a private Redis certificate). A Cluster is
	// recognised by the client itself. A change of the Secret's keys rolls
	// the pods (they read it at start) at the operator's next pass.
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	SecretName string `json:"secretName"`
	// Prefix starts every key of this fleet, so that fleets can share one
	// Redis; by default "comet-<namespace>.<name>" (hashed past 64
	// characters). A change moves the fleet to new keys: its channels stay
	// behind under the old ones.
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9._-]{1,64}$`
	// +optional
	Prefix string `json:"prefix,omitempty"`
}

// PodDisruptionBudgetSpec is either bound of a PodDisruptionBudget.
// +kubebuilder:validation:XValidation:rule="has(self.minAvailable) != has(self.maxUnavailable)",message="set exactly one of minAvailable and maxUnavailable"
type PodDisruptionBudgetSpec struct {
	// +optional
	MinAvailable *intstr.IntOrString `json:"minAvailable,omitempty"`
	// +optional
	MaxUnavailable *intstr.IntOrString `json:"maxUnavailable,omitempty"`
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

	// Ready is whether the pod was ready (in the Service's endpoints).
	// +optional
	Ready bool `json:"ready"`

	// Activated as the server reported it after the last push.
	// +optional
	Activated *bool `json:"activated,omitempty"`

	// Timeout as the server reported it after the last push.
	// +optional
	Timeout *metav1.Duration `json:"timeout,omitempty"`

	// MaxVirtualChannels as the server reported it; absent for no limit.
	// +optional
	MaxVirtualChannels *int32 `json:"maxVirtualChannels,omitempty"`

	// HistorySize and HistoryTTL as the server reported them.
	// +optional
	HistorySize *int32 `json:"historySize,omitempty"`
	// +optional
	HistoryTTL *metav1.Duration `json:"historyTTL,omitempty"`

	// Broker is the pod's broker as it reported it at the last check.
	// +optional
	Broker *PodBrokerState `json:"broker,omitempty"`

	// Waiting is the number of polls the pod held at the last check.
	// +optional
	Waiting int32 `json:"waiting,omitempty"`

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

// PodBrokerState is one pod's broker as it reported it.
type PodBrokerState struct {
	// Name is memory or redis.
	Name string `json:"name"`
	// Ready is whether the pod could reach its broker.
	Ready bool `json:"ready"`
	// LastError is the broker's last failure, if any since its last success.
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

	// UpdatedReplicas is the number of pods of the current pod template.
	// +optional
	UpdatedReplicas int32 `json:"updatedReplicas,omitempty"`

	// Waiting is the number of polls the fleet's pods held at their last
	// check.
	// +optional
	Waiting int32 `json:"waiting"`

	// Broker is the broker the pods use, memory or redis.
	// +optional
	Broker BrokerType `json:"broker,omitempty"`

	// Activated and Timeout are what every ready pod holds, when they
	// agree and hold the current generation; absent otherwise.
	// +optional
	Activated *bool `json:"activated,omitempty"`
	// +optional
	Timeout *metav1.Duration `json:"timeout,omitempty"`

	// Selector selects the pods, for the scale subresource.
	// +optional
	Selector string `json:"selector,omitempty"`

	// Pods is the live state of each running pod, by name.
	// +optional
	// +listType=map
	// +listMapKey=name
	Pods []PodState `json:"pods,omitempty"`

	// Conditions: Available, Progressing, ConfigApplied, BrokerReady,
	// Degraded, PublisherTokenAccepted.
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
	// ConditionBrokerReady: every ready pod reports its broker ready.
	ConditionBrokerReady = "BrokerReady"
	// ConditionDegraded: pushes fail, the rollout is stuck, or the
	// publisher token Secret is refused.
	ConditionDegraded = "Degraded"
	// ConditionPublisherTokenAccepted: the publisher token the pods mount
	// is the generated one, or a Secret that opted in.
	ConditionPublisherTokenAccepted = "PublisherTokenAccepted"

	// PublisherTokenLabel opts a Secret in as a publisher token Secret.
	PublisherTokenLabel = "comet.cometop.dev/publisher-token"
	// BrokerSecretLabel opts a Secret in as a broker Secret.
	BrokerSecretLabel = "comet.cometop.dev/broker"
)

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:subresource:scale:specpath=.spec.replicas,statuspath=.status.replicas,selectorpath=.status.selector
// +kubebuilder:resource:shortName=comet
// +kubebuilder:printcolumn:name="Replicas",type=integer,JSONPath=`.status.replicas`
// +kubebuilder:printcolumn:name="Ready",type=integer,JSONPath=`.status.readyReplicas`
// +kubebuilder:printcolumn:name="Activated",type=boolean,JSONPath=`.status.activated`,description="what the pods hold"
// +kubebuilder:printcolumn:name="Timeout",type=string,JSONPath=`.status.timeout`,description="what the pods hold"
// +kubebuilder:printcolumn:name="Broker",type=string,JSONPath=`.status.broker`
// +kubebuilder:printcolumn:name="Waiting",type=integer,JSONPath=`.status.waiting`,priority=1
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
