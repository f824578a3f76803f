package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sync/atomic"
	"time"

	"github.com/cometop/comet-operator/test/redistest"
)

// fleetTarget is several comet servers on one Redis (broker: redis),
// started fresh: clients are spread over the servers, publishers write
// through each in turn, and the CPU and memory are those of every server
// and of redis-server together (brokerPIDs tells Redis's share apart).
type fleetTarget struct {
	servers []*cometTarget
	redis   *exec.Cmd
	dir     string
	next    atomic.Uint64 // publishes round-robin over the servers
}

func startFleet(cometBin string, n int) (*fleetTarget, error) {
	dir, err := os.MkdirTemp("", "cometbench-redis")
	if err != nil {
		return nil, err
	}
	f := &fleetTarget{dir: dir}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server is missing (hack/install-redis.sh installs it): %w", err)
	}
	addr := freeAddr()
	_, port, _ := net.SplitHostPort(addr)
	f.redis = exec.Command(bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--daemonize", "no", "--dir", dir, "--maxclients", "1000")
	if err := f.redis.Start(); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if r, err := redistest.Do(addr, "PING"); err == nil && r == "PONG" {
			break
		}
		if time.Now().After(deadline) {
			f.Stop()
			return nil, fmt.Errorf("redis-server on %s did not answer", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i := range n {
		t, err := startComet(cometBin, "cometserver x3, Redis", true,
			"--broker", "redis", "--redis-url", "redis://"+addr, "--redis-prefix", "bench")
		if err != nil {
			f.Stop()
			return nil, fmt.Errorf("server %d: %w", i, err)
		}
		f.servers = append(f.servers, t)
		if err := waitUp(t.publisher+"/readyz", 20*time.Second, http.StatusOK); err != nil { // on Redis
			f.Stop()
			return nil, err
		}
	}
	return f, nil
}

func (f *fleetTarget) Name() string     { return f.servers[0].name }
func (f *fleetTarget) Resume() bool     { return true }
func (f *fleetTarget) Protocol() string { return "comet" }

func (f *fleetTarget) PIDs() []int {
	pids := f.brokerPIDs()
	for _, s := range f.servers {
		pids = append(pids, s.PIDs()...)
	}
	return pids
}

func (f *fleetTarget) brokerPIDs() []int { return []int{f.redis.Process.Pid} }

func (f *fleetTarget) URLs() []string {
	var urls []string
	for _, s := range f.servers {
		urls = append(urls, s.client)
	}
	return urls
}

// Channels are made through the first server: every server sees them.
func (f *fleetTarget) Channels(n int) ([]string, error) { return f.servers[0].Channels(n) }

func (f *fleetTarget) Publish(hc *http.Client, channel, body string) error {
	s := f.servers[f.next.Add(1)%uint64(len(f.servers))]
	return s.Publish(hc, channel, body)
}

func (f *fleetTarget) Held() (int, error) {
	total := 0
	for _, s := range f.servers {
		n, err := s.Held()
		if err != nil {
			return total, err
		}
		total += n
	}
	return total, nil
}

func (f *fleetTarget) Stop() {
	for _, s := range f.servers {
		s.Stop()
	}
	if f.redis != nil && f.redis.Process != nil {
		stopProcess(f.redis)
	}
	os.RemoveAll(f.dir)
}
