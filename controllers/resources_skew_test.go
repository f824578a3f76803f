package controllers

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	cometv1 "github.com/cometop/comet-operator/api/v1alpha1"
	"github.com/cometop/comet-operator/cometserver/config"
	"github.com/cometop/comet-operator/cometserver/contract"
)

// firstReleaseKeys are the config keys the first server release read
// (its cometserver/config/default.yaml). A pod that pins it refuses any
// other key at start.
var firstReleaseKeys = []string{"max_virtual_channels", "timeout", "activated", "listen", "path", "cors_origins",
	"publisher_listen", "publisher_token_file", "admin_socket", "command_pipe", "max_body_bytes", "max_ids",
	"max_waiting", "max_message_bytes", "max_header_bytes", "read_header_timeout", "channel_idle_expiry",
	"shutdown_grace", "log_level", "log_format"}

// loadConfig loads a config file as the server does at start.
func loadConfig(t *testing.T, b []byte) (config.Config, error) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "comet.yaml")
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
	// In a pod the Redis URL comes from the broker Secret, through the
	// environment; the server reads it only with the Redis broker.
	return config.Load([]string{"--config", file}, func(k string) string {
		if k == contract.EnvRedisURL {
			return "redis://redis.example:6379"
		}
		return ""
	})
}

// New operator, older server: the file the operator writes for a
// CometServer that asks for nothing newer holds only keys the first
// server release knows, so an older pod keeps starting. A CometServer that
// asks for a history or a Redis broker gets those keys too, which only a
// server that has them can take. Either way this server loads the file to
// the state asked for, every other setting at its own default.
func TestConfigFileSkew(t *testing.T) {
	redis := brokerVerdict{accepted: true, password: true}
	for _, tt := range []struct {
		cs     *cometv1.CometServer
		broker brokerVerdict
		newer  bool // may use keys newer than the first release
	}{
		{cs: &cometv1.CometServer{}}, // every default
		{cs: &cometv1.CometServer{Spec: cometv1.CometServerSpec{MaxVirtualChannels: ptr.To[int32](7), Port: 9090, TerminationGracePeriodSeconds: ptr.To[int64](60)}}},
		{cs: &cometv1.CometServer{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "news"},
			Spec: cometv1.CometServerSpec{
				History: &cometv1.HistorySpec{Size: ptr.To[int32](5), TTL: &metav1.Duration{Duration: time.Hour}},
				Broker:  &cometv1.BrokerSpec{Type: cometv1.BrokerRedis, Redis: &cometv1.RedisSpec{SecretName: "redis"}},
			}}, broker: redis, newer: true},
	} {
		live := liveState(tt.cs)
		live.Activated, live.Timeout = false, 42*time.Second
		b, err := marshalConfig(serverConfig(tt.cs, live, tt.broker))
		if err != nil {
			t.Fatal(err)
		}
		var keys map[string]any
		if err := yaml.Unmarshal(b, &keys); err != nil {
			t.Fatal(err)
		}
		for k := range keys {
			if !tt.newer && !slices.Contains(firstReleaseKeys, k) {
				t.Errorf("the file sets %q, which a pod on the first release would refuse:\n%s", k, b)
			}
		}
		c, err := loadConfig(t, b)
		if err != nil {
			t.Fatalf("the server does not load the file: %v\n%s", err, b)
		}
		want := config.Default()
		want.Activated, want.Timeout = false, config.Duration{Duration: 42 * time.Second}
		want.Listen, want.PublisherListen = ":8080", ":8081"
		want.PublisherTokenFile, want.AdminSocket = contract.TokenFile, contract.AdminSocket
		want.ShutdownGrace = config.Duration{Duration: 23 * time.Second} // 30 s less the drain and the margin
		want.RedisURL = "redis://redis.example:6379"                     // the environment's, read only with the Redis broker
		if tt.cs.Spec.MaxVirtualChannels != nil {
			want.MaxVirtualChannels = config.OptionalInt{Value: 7, Present: true}
			want.Listen = ":9090"
			want.ShutdownGrace = config.Duration{Duration: 53 * time.Second}
		}
		if tt.newer {
			want.HistorySize, want.HistoryTTL = 5, config.Duration{Duration: time.Hour}
			want.Broker, want.RedisPrefix = "redis", "comet-ns.news"
			want.RedisPasswordFile = contract.RedisDir + "/" + contract.RedisPasswordKey
		}
		got, _ := c.Marshal()
		wantB, _ := want.Marshal()
		if string(got) != string(wantB) {
			t.Errorf("loaded\n%s\nwant\n%s", got, wantB)
		}
	}
}

// Older operator, new server: the file the first operator release wrote
// (every key of that day's server) still loads, to that day's defaults.
func TestConfigFileFromTheFirstOperator(t *testing.T) {
	b, err := os.ReadFile("testdata/config-first-operator.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := loadConfig(t, b)
	if err != nil {
		t.Fatalf("this server refuses the first operator's file: %v", err)
	}
	if !c.Activated || c.Timeout.Duration != 20*time.Second || c.MaxVirtualChannels.Present ||
		c.PublisherTokenFile != contract.TokenFile || c.AdminSocket != contract.AdminSocket || c.Broker != "memory" {
		t.Fatalf("loaded %+v", c)
	}
}

// A redis prefix of the CometServer's own fits the server's rule even for
// the longest namespace and name.
func TestRedisPrefix(t *testing.T) {
	long := string(make([]byte, 63))
	for i := range []byte(long) {
		long = long[:i] + "a" + long[i+1:]
	}
	for _, cs := range []*cometv1.CometServer{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "news"}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: long, Name: long + ".b"}},
	} {
		cs.Spec.Broker = &cometv1.BrokerSpec{Type: cometv1.BrokerRedis, Redis: &cometv1.RedisSpec{SecretName: "r"}}
		p := redisPrefix(cs)
		c := config.Default()
		c.Broker, c.RedisURL, c.RedisPrefix = "redis", "redis://127.0.0.1:6379", p
		b, _ := c.Marshal()
		if _, err := loadConfig(t, b); err != nil || len(p) > 64 {
			t.Errorf("prefix %q (%d): %v", p, len(p), err)
		}
	}
	other := &cometv1.CometServer{ObjectMeta: metav1.ObjectMeta{Namespace: long, Name: long + ".c"}}
	other.Spec.Broker = &cometv1.BrokerSpec{Type: cometv1.BrokerRedis, Redis: &cometv1.RedisSpec{SecretName: "r"}}
	mine := &cometv1.CometServer{ObjectMeta: metav1.ObjectMeta{Namespace: long, Name: long + ".b"}}
	mine.Spec.Broker = other.Spec.Broker
	if redisPrefix(other) == redisPrefix(mine) {
		t.Errorf("two long names share the prefix %q", redisPrefix(mine))
	}
}
