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
	cmd  *exec.Cmd
	base string
	dir  string
}

func startNchan() (*nchanTarget, error) {
	if _, err := os.Stat("/usr/lib/nginx/modules/ngx_nchan_module.so"); err != nil {
		return nil, fmt.Errorf("nchan: install Debian's nginx-light and libnginx-mod-nchan: %w", err)
	}
	dir, err := os.MkdirTemp("", "cometbench-nchan")
	if err != nil {
		return nil, err
	}
	addr := freeAddr()
	port := addr[strings.LastIndexByte(addr, ':')+1:]
	conf := strings.NewReplacer("PREFIX", dir, "PORT", port).Replace(nchanConf)
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(conf), 0o644); err != nil {
		return nil, err
	}
	t := &nchanTarget{base: "http://" + addr, dir: dir}
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

func (t *nchanTarget) Name() string     { return "nginx+nchan" }
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
