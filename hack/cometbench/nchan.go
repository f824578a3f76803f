package main

import (
	_ "embed"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

//go:embed peers/nchan.conf
var nchanConf string

// nchanTarget is nginx with the Nchan module, from Debian's packages.
type nchanTarget struct {
	name string
	cmd  *exec.Cmd
	base string
	dir  string
}

// startNchan starts nginx with peers/nchan.conf: messages in nginx's shared
// memory, or, given a Redis address, in Redis (Nchan's "distributed"
// storage, the one that lets several nginx share channels).
func startNchan(name, redisAddr string) (*nchanTarget, error) {
	if _, err := os.Stat("/usr/lib/nginx/modules/ngx_nchan_module.so"); err != nil {
		return nil, fmt.Errorf("nchan: install Debian's nginx-light and libnginx-mod-nchan: %w", err)
	}
	dir, err := os.MkdirTemp("", "cometbench-nchan")
	if err != nil {
		return nil, err
	}
	addr := freeAddr()
	port := addr[strings.LastIndexByte(addr, ':')+1:]
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(nchanConfig(dir, port, redisAddr)), 0o644); err != nil {
		return nil, err
	}
	t := &nchanTarget{name: name, base: "http://" + addr, dir: dir}
	t.cmd = exec.Command("nginx", "-p", dir, "-c", filepath.Join(dir, "nginx.conf"))
	t.cmd.Stderr = os.Stderr
	if err := t.cmd.Start(); err != nil {
		return nil, fmt.Errorf("nginx: %w", err)
	}
	if err := waitUp(t.base+"/status", 10*time.Second); err != nil {
		t.Stop()
		return nil, err
	}
	return t, nil
}

// nchanConfig fills in peers/nchan.conf; with a Redis address, every
// channel is stored there.
func nchanConfig(prefix, port, redisAddr string) string {
	upstream, pass := "", ""
	if redisAddr != "" {
		upstream = "upstream redis { nchan_redis_server redis://" + redisAddr + "; }"
		pass = "nchan_redis_pass redis;"
	}
	return strings.NewReplacer("PREFIX", prefix, "PORT", port, "REDIS_UPSTREAM", upstream, "REDIS_PASS", pass).Replace(nchanConf)
}

func (t *nchanTarget) Name() string     { return t.name }
func (t *nchanTarget) PIDs() []int      { return []int{t.cmd.Process.Pid} }
func (t *nchanTarget) Protocol() string { return "nchan" }
func (t *nchanTarget) URLs() []string   { return []string{t.base} }
func (t *nchanTarget) Stop()            { stopProcess(t.cmd); os.RemoveAll(t.dir) }

// Channels names them: Nchan makes a channel on its first use.
func (t *nchanTarget) Channels(n int) ([]string, error) { return channelNames(n), nil }

func (t *nchanTarget) Resume() bool { return false }

func (t *nchanTarget) Publish(hc *http.Client, channel, body string) error {
	return post(hc, t.base+"/pub/"+channel, body, http.StatusCreated, http.StatusAccepted)
}

var subscribers = regexp.MustCompile(`(?m)^subscribers: (\d+)$`)

// Held reads nchan_stub_status.
func (t *nchanTarget) Held() (int, error) {
	resp, err := http.Get(t.base + "/status")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := subscribers.FindSubmatch(b)
	if m == nil {
		return 0, fmt.Errorf("nchan status without subscribers: %q", b)
	}
	return strconv.Atoi(string(m[1]))
}
