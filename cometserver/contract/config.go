package contract

// Config is the part of the comet server's config file that the operator
// writes: only the keys it sets; the server takes every other key from its
// own defaults. A server refuses keys it does not know, so:
//   - the keys without omitempty are ones the first server release read,
//     and a pod that pins an older image keeps starting;
//   - the others are written only when the CometServer asks for what they
//     do (a Redis broker, a history), which needs a server that has them.
//
// The values are as the server's config file reads them: durations as
// strings such as "20s", a limit of none as null.
type Config struct {
	MaxVirtualChannels *int   `json:"max_virtual_channels"`
	Timeout            string `json:"timeout"`
	Activated          bool   `json:"activated"`
	Listen             string `json:"listen"`
	PublisherListen    string `json:"publisher_listen"`
	PublisherTokenFile string `json:"publisher_token_file"`
	AdminSocket        string `json:"admin_socket"`
	ShutdownGrace      string `json:"shutdown_grace"`

	HistorySize       *int   `json:"history_size,omitempty"`
	HistoryTTL        string `json:"history_ttl,omitempty"`
	Broker            string `json:"broker,omitempty"`
	RedisPasswordFile string `json:"redis_password_file,omitempty"`
	RedisPrefix       string `json:"redis_prefix,omitempty"`
	RedisTLSCAFile    string `json:"redis_tls_ca_file,omitempty"`
}

// Keys of the broker Secret (RedisSpec.SecretName), and the files that
// its password and CA become in RedisDir.
const (
	RedisURLKey      = "url"
	RedisPasswordKey = "password"
	RedisCAKey       = "ca.crt"
)
