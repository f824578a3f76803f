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

// fleetSize is how many servers a fleet on Redis runs: a user who outgrew
// one pod runs a few.
const fleetSize = 3

// fleetTarget is several servers of one kind on one Redis, started fresh:
// clients are spread over the servers, publishers write through each in
// turn, and the CPU and memory are those of every server and of
// redis-server together (brokerPIDs tells Redis's share apart). The comet
// server's fleet and Nchan's run the same way, so that they compare.
type fleetTarget struct {
	name    string
	members []server
	redis   *exec.Cmd
	dir     string
	next    atomic.Uint64 // publishes round-robin over the servers
}

// startFleet starts a redis-server, then n servers that start makes on it.
func startFleet(name string, n int, start func(redisAddr string) (server, error)) (*fleetTarget, error) {
	dir, err := os.MkdirTemp("", "cometbench-redis")
	if err != nil {
		return nil, err
	}
	f := &fleetTarget{name: name, dir: dir}
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
		s, err := start(addr)
		if err != nil {
			f.Stop()
			return nil, fmt.Errorf("%s, server %d: %w", name, i, err)
		}
		f.members = append(f.members, s)
	}
	return f, nil
}

// startCometOnRedis is one comet server of a fleet, ready once it has
// reached Redis.
func startCometOnRedis(cometBin, name, redisAddr string) (server, error) {
	t, err := startComet(cometBin, name, true,
		"--broker", "redis", "--redis-url", "redis://"+redisAddr, "--redis-prefix", "bench")
	if err != nil {
		return nil, err
	}
	if err := waitUp(t.publisher+"/readyz", 20*time.Second, http.StatusOK); err != nil {
		t.Stop()
		return nil, err
	}
	return t, nil
}

func (f *fleetTarget) Name() string     { return f.name }
func (f *fleetTarget) Resume() bool     { return f.members[0].Resume() }
func (f *fleetTarget) Protocol() string { return f.members[0].Protocol() }

func (f *fleetTarget) PIDs() []int {
	pids := f.brokerPIDs()
	for _, s := range f.members {
		pids = append(pids, s.PIDs()...)
	}
	return pids
}

func (f *fleetTarget) brokerPIDs() []int { return []int{f.redis.Process.Pid} }

func (f *fleetTarget) URLs() []string {
	var urls []string
	for _, s := range f.members {
		urls = append(urls, s.URLs()...)
	}
	return urls
}

// Channels are made through the first server: every server sees them.
func (f *fleetTarget) Channels(n int) ([]string, error) { return f.members[0].Channels(n) }

func (f *fleetTarget) Publish(hc *http.Client, channel, body string) error {
	s := f.members[f.next.Add(1)%uint64(len(f.members))]
	return s.Publish(hc, channel, body)
}

func (f *fleetTarget) Held() (int, error) {
	total := 0
	for _, s := range f.members {
		n, err := s.Held()
		if err != nil {
			return total, err
		}
		total += n
	}
	return total, nil
}

func (f *fleetTarget) Stop() {
	for _, s := range f.members {
		s.Stop()
	}
	if f.redis != nil && f.redis.Process != nil {
		stopProcess(f.redis)
	}
	os.RemoveAll(f.dir)
}
