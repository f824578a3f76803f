package main

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
)

//go:embed peers/pushpin.conf
var pushpinConf string

// pushpinTarget is Pushpin from Debian's package, proxying to an origin
// inside this process that holds each poll on its channel (GRIP).
type pushpinTarget struct {
	cmd     *exec.Cmd
	base    string // Pushpin's HTTP port: what clients poll
	publish string // its publish endpoint
	dir     string
	origin  *http.Server
	holds   atomic.Int64
}

func startPushpin() (*pushpinTarget, error) {
	if _, err := exec.LookPath("pushpin"); err != nil {
		return nil, fmt.Errorf("pushpin: install Debian's pushpin: %w", err)
	}
	dir, err := os.MkdirTemp("", "cometbench-pushpin")
	if err != nil {
		return nil, err
	}
	t := &pushpinTarget{dir: dir}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	t.origin = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		channel := strings.TrimPrefix(r.URL.Path, "/sub/")
		t.holds.Add(1)
		w.Header().Set("Grip-Hold", "response")
		w.Header().Set("Grip-Channel", channel)
		w.Header().Set("Grip-Timeout", "3600")
		w.Header().Set("Content-Type", "text/plain")
	})}
	go t.origin.Serve(ln)

	port := func() string { a := freeAddr(); return a[strings.LastIndexByte(a, ':')+1:] }
	httpPort, publishPort := port(), port()
	conf := strings.NewReplacer("PREFIX", dir, "HTTP_PORT", httpPort, "PUBLISH_PORT", publishPort,
		"PUSH_IN_PORT", port(), "PUSH_SUB_PORT", port(), "COMMAND_PORT", port()).Replace(pushpinConf)
	for _, sub := range []string{"run", "log", "lib/runner"} {
		os.MkdirAll(filepath.Join(dir, sub), 0o755)
	}
	if err := privateLibdir(filepath.Join(dir, "lib")); err != nil {
		return nil, err
	}
	os.WriteFile(filepath.Join(dir, "pushpin.conf"), []byte(conf), 0o644)
	os.WriteFile(filepath.Join(dir, "routes"), []byte("* "+ln.Addr().String()+"\n"), 0o644)
	t.base = "http://127.0.0.1:" + httpPort
	t.publish = "http://127.0.0.1:" + publishPort + "/publish/"
	t.cmd = exec.Command("pushpin", "--config", filepath.Join(dir, "pushpin.conf"), "--port", "127.0.0.1:"+httpPort)
	t.cmd.Stdout, t.cmd.Stderr = io.Discard, os.Stderr
	if err := t.cmd.Start(); err != nil {
		return nil, fmt.Errorf("pushpin: %w", err)
	}
	if err := waitUp("http://127.0.0.1:"+publishPort+"/", 10*time.Second); err != nil {
		t.Stop()
		return nil, err
	}
	return t, nil
}

// privateLibdir copies Pushpin's library folder with two changes: the
// runner's zurl talks over the run folder (Debian's points at a system zurl
// service) and allows a loopback origin (the shipped deny list refuses it).
func privateLibdir(dst string) error {
	const src = "/usr/lib/pushpin"
	internal, err := os.ReadFile(src + "/internal.conf")
	if err != nil {
		return fmt.Errorf("pushpin: %w", err)
	}
	internal = []byte(strings.ReplaceAll(string(internal), "ipc:///var/run/zurl/zurl-", "ipc://{rundir}/{ipc_prefix}zurl-"))
	if err := os.WriteFile(filepath.Join(dst, "internal.conf"), internal, 0o644); err != nil {
		return err
	}
	entries, err := os.ReadDir(src + "/runner")
	if err != nil {
		return fmt.Errorf("pushpin: %w", err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(src, "runner", e.Name()))
		if err != nil {
			return err
		}
		if e.Name() == "zurl.conf.template" {
			s := strings.Replace(string(b), "deny=127.*,10.*,192.168.*,*.local", "deny=", 1)
			b = []byte(strings.Replace(s, "max_open_requests=2000", "max_open_requests=50000", 1))
		}
		if err := os.WriteFile(filepath.Join(dst, "runner", e.Name()), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func (t *pushpinTarget) Name() string     { return "pushpin" }
func (t *pushpinTarget) PIDs() []int      { return []int{t.cmd.Process.Pid} }
func (t *pushpinTarget) Protocol() string { return "pushpin" }
func (t *pushpinTarget) URLs() []string   { return []string{t.base} }

func (t *pushpinTarget) Stop() {
	stopProcess(t.cmd)
	t.origin.Close()
	os.RemoveAll(t.dir)
}

func (t *pushpinTarget) Channels(n int) ([]string, error) { return channelNames(n), nil }

// Held counts the polls the origin told Pushpin to hold: before any
// publish, one per waiting client.
func (t *pushpinTarget) Held() (int, error) { return int(t.holds.Load()), nil }

func (t *pushpinTarget) Resume() bool { return false }

func (t *pushpinTarget) Publish(hc *http.Client, channel, body string) error {
	item := map[string]any{"items": []any{map[string]any{
		"channel": channel,
		"formats": map[string]any{"http-response": map[string]any{"body": body}},
	}}}
	b, _ := json.Marshal(item)
	return post(hc, t.publish, string(b), http.StatusOK)
}
