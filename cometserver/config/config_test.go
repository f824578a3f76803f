package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func noEnv(string) string { return "" }

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "comet.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaults(t *testing.T) {
	c, err := Load(nil, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxVirtualChannels.Present || c.Timeout.Duration != 20*time.Second || !c.Activated ||
		c.Listen != ":8080" || c.Path != "/comet" || c.PublisherListen != "127.0.0.1:8081" ||
		c.AdminSocket != "/run/comet/admin.sock" || c.MaxBodyBytes != 8192 || c.MaxIDs != 128 ||
		c.MaxMessageBytes != 65536 || len(c.CORSOrigins) != 0 || c.HistorySize != 100 || c.HistoryTTL.Duration != 2*time.Minute {
		t.Fatalf("defaults %+v", c)
	}
}

func TestPrecedence(t *testing.T) {
	file := writeFile(t, `
max_virtual_channels: 10
timeout: 30s
activated: false
listen: ":9000"
path: /push
cors_origins: ["https://a.example"]
`)
	env := envOf(map[string]string{
		"COMET_CONFIG":               file,
		"COMET_TIMEOUT":              "40s",
		"COMET_PATH":                 "/from-env",
		"COMET_MAX_VIRTUAL_CHANNELS": "",
	})
	c, err := Load([]string{"--path", "/from-flag", "--max-ids=7"}, env)
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxVirtualChannels.Ptr() == nil || *c.MaxVirtualChannels.Ptr() != 10 {
		t.Errorf("max_virtual_channels from file: %v (an empty variable does not override)", c.MaxVirtualChannels)
	}
	if c.Timeout.Duration != 40*time.Second {
		t.Errorf("timeout: env over file, got %v", c.Timeout)
	}
	if c.Path != "/from-flag" || c.MaxIDs != 7 {
		t.Errorf("flags over env: path %q, max_ids %d", c.Path, c.MaxIDs)
	}
	if c.Activated || c.Listen != ":9000" || c.CORSOrigins[0] != "https://a.example" {
		t.Errorf("file over defaults: %+v", c)
	}

	// --config wins over COMET_CONFIG; the flag form of max_virtual_channels.
	other := writeFile(t, "timeout: 5s\n")
	c, err = Load([]string{"--config", other, "--max-virtual-channels", "0", "--activated=false", "--cors-origins", "https://a.example, *,http://b.example:8080"}, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if c.Timeout.Duration != 5*time.Second || *c.MaxVirtualChannels.Ptr() != 0 || c.Activated || len(c.CORSOrigins) != 3 {
		t.Errorf("%+v", c)
	}
}

func TestMaxVirtualChannelsForms(t *testing.T) {
	for yaml, want := range map[string]string{
		`max_virtual_channels: ""`:   "",
		`max_virtual_channels: null`: "",
		`max_virtual_channels: 0`:    "0",
		`max_virtual_channels: 25`:   "25",
		`max_virtual_channels: "25"`: "25", // the seed's string syntax
	} {
		c, err := Load([]string{"--config", writeFile(t, yaml)}, noEnv)
		if err != nil || c.MaxVirtualChannels.String() != want {
			t.Errorf("%s: got %q, %v; want %q", yaml, c.MaxVirtualChannels.String(), err, want)
		}
	}
}

// Every bad setting stops start-up with a message that names it.
func TestErrorsNameTheField(t *testing.T) {
	tests := []struct {
		name string
		file string
		args []string
		env  map[string]string
		want string
	}{
		{name: "unknown key", file: "timeuot: 5s", want: `unknown key "timeuot"`},
		{name: "duplicate key", file: "timeout: 5s\ntimeout: 6s", want: `"timeout" already set`},
		{name: "not a mapping", file: "- a\n- b", want: "want a mapping"},
		{name: "bad yaml", file: "timeout: [", want: "comet.yaml"},
		{name: "negative max", file: "max_virtual_channels: -1", want: "max_virtual_channels: want"},
		{name: "fractional max", file: "max_virtual_channels: 1.5", want: "max_virtual_channels: want"},
		{name: "word max", file: "max_virtual_channels: many", want: "max_virtual_channels: want"},
		{name: "list max", file: "max_virtual_channels: [1]", want: "max_virtual_channels: want"},
		{name: "timeout number", file: "timeout: 20", want: "timeout: want a duration such as 20s"},
		{name: "timeout garbage", file: "timeout: soon", want: "timeout: want a duration"},
		{name: "timeout zero", file: "timeout: 0s", want: "timeout: must be greater than 0"},
		{name: "activated word", file: "activated: maybe", want: "activated:"},
		{name: "limit string", file: "max_ids: lots", want: "max_ids:"},
		{name: "limit zero", file: "max_body_bytes: 0", want: "max_body_bytes: must be from 1 to 1048576, got 0"},
		{name: "limit overflowing", args: []string{"--max-body-bytes", "9223372036854775807"}, want: "max_body_bytes: must be from 1 to 1048576"},
		{name: "too many ids", file: "max_ids: 10001", want: "max_ids: must be from 1 to 10000"},
		{name: "message limit", file: "max_message_bytes: 67108865", want: "max_message_bytes: must be from 1 to 67108864"},
		{name: "header limit", file: "max_header_bytes: 0", want: "max_header_bytes: must be from 1"},
		{name: "negative waiting", file: "max_waiting: -1", want: "max_waiting: must be from 0 to 100000000, got -1"},
		{name: "read timeout zero", file: "read_timeout: 0s", want: "read_timeout: must be from 1ms to 1h0m0s, got 0s"},
		{name: "grace too long", file: "shutdown_grace: 2h", want: "shutdown_grace: must be from 1ms to 1h0m0s"},
		{name: "header timeout", file: "read_header_timeout: 0s", want: "read_header_timeout: must be from 1ms"},
		{name: "negative expiry", file: "channel_idle_expiry: -1s", want: "channel_idle_expiry:"},
		{name: "path", file: "path: comet", want: "path: must start with '/'"},
		{name: "path pattern", args: []string{"--path", "/a{"}, want: `path: must start with '/' and be segments`},
		{name: "path with a space", args: []string{"--path", "/a b"}, want: "path:"},
		{name: "path trailing slash", args: []string{"--path", "/comet/"}, want: "path:"},
		{name: "path dot segment", args: []string{"--path", "/a/../comet"}, want: "path:"},
		{name: "path bad escape", args: []string{"--path", "/a%zz"}, want: "path:"},
		{name: "listen", file: `listen: "8080"`, want: "listen: want host:port"},
		{name: "port", file: `listen: ":http2"`, want: "listen: bad port"},
		{name: "origin with path", file: `cors_origins: ["https://a.example/app"]`, want: "cors_origins:"},
		{name: "origin trailing slash", file: `cors_origins: ["https://a.example/"]`, want: "cors_origins: origin"},
		{name: "origin scheme", file: `cors_origins: ["ftp://a.example"]`, want: "cors_origins: want"},
		{name: "origin without host", file: `cors_origins: ["https://"]`, want: "cors_origins: want"},
		{name: "origin with query", file: `cors_origins: ["https://a.example?x=1"]`, want: "cors_origins: want"},
		{name: "origin with user", file: `cors_origins: ["https://u@a.example"]`, want: "cors_origins: want"},
		{name: "log level", file: "log_level: loud", want: "log_level:"},
		{name: "broker", file: "broker: etcd", want: `broker: must be memory or redis, got "etcd"`},
		{name: "redis without url", args: []string{"--broker", "redis"}, want: "redis_url: must be set when broker is redis"},
		{name: "redis url with password", args: []string{"--broker", "redis", "--redis-url", "redis://u:secret@r:6379"}, want: "redis_url: holds a password: put it in redis_password_file"},
		{name: "redis url scheme", args: []string{"--broker", "redis", "--redis-url", "http://r:6379"}, want: `redis_url: scheme must be redis or rediss (TLS), got "http"`},
		{name: "redis url without host", args: []string{"--broker", "redis", "--redis-url", "redis:///0"}, want: "redis_url: no host"},
		{name: "redis url garbage", args: []string{"--broker", "redis", "--redis-url", "redis://r:6379/%zz"}, want: "redis_url: not a URL"},
		{name: "redis prefix", args: []string{"--broker", "redis", "--redis-url", "redis://r:6379", "--redis-prefix", "a{b}"}, want: `redis_prefix: must be 1 to 64 of A-Z a-z 0-9 - _ ., got "a{b}"`},
		{name: "redis CA without TLS", args: []string{"--broker", "redis", "--redis-url", "redis://r:6379", "--redis-tls-ca-file", "/ca.pem"}, want: `redis_tls_ca_file: is for rediss:// only`},
		{name: "redis prefix empty", file: "broker: redis\nredis_url: redis://r\nredis_prefix: \"\"", want: `redis_prefix: must be 1 to 64`},
		{name: "public publisher without token", file: `publisher_listen: ":8081"`, want: "publisher_listen: without publisher_token_file it must be a loopback address"},
		{name: "empty socket", file: `admin_socket: ""`, want: "admin_socket: must not be empty"},
		{name: "missing file", args: []string{"--config", "/nonexistent/comet.yaml"}, want: "config file: open /nonexistent/comet.yaml"},
		{name: "unknown flag", args: []string{"--timout", "5s"}, want: "flags: flag provided but not defined: -timout"},
		{name: "bad flag", args: []string{"--timeout", "5"}, want: `invalid value "5" for flag -timeout: want a duration such as 20s`},
		{name: "bad flag max", args: []string{"--max-virtual-channels", "-3"}, want: "-max-virtual-channels"},
		{name: "stray argument", args: []string{"extra"}, want: `unexpected argument "extra"`},
		{name: "bad env", env: map[string]string{"COMET_MAX_IDS": "x"}, want: "environment COMET_MAX_IDS:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if tt.file != "" {
				args = append([]string{"--config", writeFile(t, tt.file)}, args...)
			}
			_, err := Load(args, envOf(tt.env))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestPublicPublisherWithToken(t *testing.T) {
	c, err := Load([]string{"--publisher-listen", ":8081", "--publisher-token-file", "/etc/comet/token"}, noEnv)
	if err != nil || c.PublisherListen != ":8081" {
		t.Fatalf("%v", err)
	}
	for addr, want := range map[string]bool{"127.0.0.1:1": true, "[::1]:1": true, "localhost:1": true, "127.9.9.9:1": true, ":1": false, "0.0.0.0:1": false, "10.0.0.1:1": false} {
		if IsLoopback(addr) != want {
			t.Errorf("IsLoopback(%q) = %t", addr, !want)
		}
	}
}

// Marshal writes a file that Load reads back to the same settings, so the
// operator can generate config files with this package.
func TestMarshalRoundTrip(t *testing.T) {
	c := Default()
	c.MaxVirtualChannels = OptionalInt{Value: 3, Present: true}
	c.Timeout.Duration = 90 * time.Second
	c.Activated = false
	b, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Load([]string{"--config", writeFile(t, string(b))}, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if *back.MaxVirtualChannels.Ptr() != 3 || back.Timeout.Duration != 90*time.Second || back.Activated {
		t.Fatalf("round trip: %+v\n%s", back, b)
	}
}

func TestDemoListensOnLoopbackUnlessTold(t *testing.T) {
	c, err := Load([]string{"--demo"}, noEnv)
	if err != nil || c.Listen != "127.0.0.1:8080" || !c.Demo {
		t.Fatalf("--demo: listen %q, %v", c.Listen, err)
	}
	c, err = Load([]string{"--demo", "--listen", ":9090"}, noEnv)
	if err != nil || c.Listen != ":9090" {
		t.Fatalf("--demo --listen :9090: listen %q, %v", c.Listen, err)
	}
	for _, path := range []string{"/comet.js", "/comet.mjs", "/", "/demo/x"} {
		if _, err := Load([]string{"--path", path}, noEnv); err == nil || !strings.Contains(err.Error(), "path:") {
			t.Errorf("--path %s: %v", path, err)
		}
	}
}

// Paths the endpoint may take: what a ServeMux pattern matches as it is.
func TestValidPaths(t *testing.T) {
	for _, p := range []string{"/comet", "/a/b", "/push-v2/x_y.z~", "/%7Euser", "/a:b@c", "/.well", "/azAZ09", "/%09%af%AF%fF"} {
		if _, err := Load([]string{"--path", p}, noEnv); err != nil {
			t.Errorf("--path %s: %v", p, err)
		}
	}
}

// The ranges of the limits include their ends.
func TestLimitRanges(t *testing.T) {
	for _, tt := range []struct {
		flag, value string
		ok          bool
	}{
		{"--max-body-bytes", "1", true}, {"--max-body-bytes", "1048576", true}, {"--max-body-bytes", "1048577", false},
		{"--max-ids", "1", true}, {"--max-ids", "10000", true}, {"--max-ids", "0", false},
		{"--max-waiting", "0", true}, {"--max-waiting", "100000000", true}, {"--max-waiting", "100000001", false},
		{"--max-message-bytes", "67108864", true}, {"--max-header-bytes", "1048576", true}, {"--max-header-bytes", "1048577", false},
		{"--read-timeout", "1ms", true}, {"--read-timeout", "999us", false}, {"--read-timeout", "1h", true}, {"--read-timeout", "1h0m1s", false},
		{"--read-header-timeout", "1ms", true}, {"--shutdown-grace", "1h", true},
		{"--channel-idle-expiry", "0s", true}, {"--channel-idle-expiry", "8760h", true}, {"--channel-idle-expiry", "8761h", false},
		{"--channel-idle-expiry", "-1ns", false},
		{"--history-size", "0", true}, {"--history-size", "100000", true}, {"--history-size", "100001", false}, {"--history-size", "-1", false},
		{"--history-size", "x", false}, {"--history-ttl", "0s", true}, {"--history-ttl", "24h", true}, {"--history-ttl", "24h0m0.000000001s", false},
		{"--history-ttl", "-1s", false}, {"--history-ttl", "5", false},
	} {
		_, err := Load([]string{tt.flag, tt.value}, noEnv)
		if (err == nil) != tt.ok {
			t.Errorf("%s %s: %v, want ok %v", tt.flag, tt.value, err, tt.ok)
		}
	}
}
