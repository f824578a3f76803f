package controllers

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	cometv1 "github.com/cometop/comet-operator/api/v1alpha1"
	"github.com/cometop/comet-operator/cometserver/config"
)

// firstReleaseKeys are the config keys the first server release read
// (its cometserver/config/default.yaml). A pod that pins it refuses any
// other key at start.
var firstReleaseKeys = []string{"max_virtual_channels", "timeout", "activated", "listen", "path", "cors_origins",
	"publisher_listen", "publisher_token_file", "admin_socket", "command_pipe", "max_body_bytes", "max_ids",
	"max_waiting", "max_message_bytes", "max_header_bytes", "read_header_timeout", "channel_idle_expiry",
	"shutdown_grace", "log_level", "log_format"}

// Version skew, both ways: the file the operator writes holds only keys
// the first server release knows (an older pod keeps starting), and this
// server loads it to the state asked for, every other setting at its own
// default (a newer pod needs nothing from an older operator).
func TestConfigFileSkew(t *testing.T) {
	for _, cs := range []*cometv1.CometServer{
		{}, // every default
		{Spec: cometv1.CometServerSpec{MaxVirtualChannels: ptr.To[int32](7), Port: 9090}},
	} {
		b, err := serverConfig(cs, Live{Activated: false, Timeout: 42e9}).Marshal()
		if err != nil {
			t.Fatal(err)
		}
		var keys map[string]any
		if err := yaml.Unmarshal(b, &keys); err != nil {
			t.Fatal(err)
		}
		for k := range keys {
			if !slices.Contains(firstReleaseKeys, k) {
				t.Errorf("the file sets %q, which a pod on the first release would refuse:\n%s", k, b)
			}
		}
		file := filepath.Join(t.TempDir(), "comet.yaml")
		os.WriteFile(file, b, 0o600)
		c, err := config.Load([]string{"--config", file}, func(string) string { return "" })
		if err != nil {
			t.Fatalf("the server does not load the file: %v\n%s", err, b)
		}
		want := config.Default()
		want.Activated, want.Timeout = false, config.Duration{Duration: 42e9}
		want.Listen, want.PublisherListen = ":8080", ":8081"
		want.PublisherTokenFile, want.AdminSocket = tokenDir+"/"+tokenKey, adminSocket
		if cs.Spec.MaxVirtualChannels != nil {
			want.MaxVirtualChannels = config.OptionalInt{Value: 7, Present: true}
			want.Listen = ":9090"
		}
		got, _ := c.Marshal()
		wantB, _ := want.Marshal()
		if string(got) != string(wantB) {
			t.Errorf("loaded\n%s\nwant\n%s", got, wantB)
		}
	}
}
