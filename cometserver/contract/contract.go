// Package contract is what the operator and the comet server's pods agree
// on: where the binary, the admin socket and the config file sit, the ports
// and HTTP paths, the config keys the operator writes, the argv of
// "cometserver ctl apply" and the JSON it prints. Both sides import it, so
// that none of it is a string copied between packages.
//
// An operator may steer pods that pin an older server image, and a new
// server may be steered by an older operator: a change here must keep old
// readers working (see the skew tests on both sides).
package contract

// Where things sit in the comet server's image and pods.
const (
	// ServerBinary is the comet server's binary; the operator execs
	// "<ServerBinary> ctl ..." next to it.
	ServerBinary = "/cometserver"
	// RunDir is a writable directory of the pod, for the admin socket.
	RunDir = "/run/comet"
	// AdminSocket is the admin socket, and ctl's default.
	AdminSocket = RunDir + "/admin.sock"
	// ConfigDir holds the config file that the operator renders.
	ConfigDir = "/etc/comet"
	// ConfigKey is the config file's name in ConfigDir and its key in
	// the ConfigMap.
	ConfigKey  = "config.yaml"
	ConfigFile = ConfigDir + "/" + ConfigKey
	// TokenDir holds the publisher token, TokenKey in its Secret.
	TokenDir  = ConfigDir + "/token"
	TokenKey  = "token"
	TokenFile = TokenDir + "/" + TokenKey
	// RedisDir holds the Redis broker's password and CA files, by the
	// keys of the broker Secret.
	RedisDir = ConfigDir + "/redis"
	// UID is the unprivileged user the image runs as.
	UID = 65532
)

// Ports and HTTP paths.
const (
	// ClientPort is the client long-poll endpoint's default port.
	ClientPort = 8080
	// PublisherPort serves the publisher API and the paths below.
	PublisherPort = 8081
	ReadyzPath    = "/readyz"
	HealthzPath   = "/healthz"
	MetricsPath   = "/metrics"
)

// Environment variables the server reads; each config key has one, and
// these are the ones the operator sets from a Secret.
const (
	EnvRedisURL = "COMET_REDIS_URL"
)
