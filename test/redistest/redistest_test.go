package redistest

import (
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A standalone server answers, keeps what it is told, is stopped by PID,
// and comes back empty after a restart.
func TestStandalone(t *testing.T) {
	s := Start(t)
	if _, err := Do(s.Addr, "SET", "k", "v"); err != nil {
		t.Fatal(err)
	}
	if v, err := Do(s.Addr, "GET", "k"); err != nil || v != "v" {
		t.Fatalf("GET: %q, %v", v, err)
	}
	if _, err := Do(s.Addr, "NOSUCHCOMMAND"); err == nil || !strings.Contains(err.Error(), "unknown command") {
		t.Fatalf("an error reply: %v", err)
	}
	pid := s.PID()
	s.Restart()
	if s.PID() == pid {
		t.Fatal("the same process after a restart")
	}
	if v, err := Do(s.Addr, "GET", "k"); err != nil || v != "" {
		t.Fatalf("after a restart without persistence: %q, %v; want nothing", v, err)
	}
	pid = s.PID()
	s.Stop()
	if err := syscall.Kill(pid, 0); err == nil {
		t.Fatalf("process %d still runs after Stop", pid)
	}
	if c, err := net.DialTimeout("tcp", s.Addr, time.Second); err == nil {
		c.Close()
		t.Fatal("the port still answers after Stop")
	}
	s.Stop() // twice: nothing
}

// A server with a password is driven by the harness all the same: its
// data survives RestartKeepingData.
func TestPasswordAndKeptData(t *testing.T) {
	s := Start(t, "--requirepass", "pw")
	if _, err := Do(s.Addr, "SET", "k", "v"); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Fatalf("unauthenticated SET: %v", err)
	}
	if _, err := s.Do("SET", "k", "v"); err != nil {
		t.Fatal(err)
	}
	pid := s.PID()
	s.RestartKeepingData(0)
	if v, err := s.Do("GET", "k"); err != nil || v != "v" || s.PID() == pid {
		t.Fatalf("after RestartKeepingData: %q, %v (pid %d, was %d)", v, err, s.PID(), pid)
	}
}

// A 3-master cluster covers every slot, and answers MOVED for a key of
// another node's slot.
func TestCluster(t *testing.T) {
	c := StartCluster(t, 3)
	info, err := Do(c.Addrs()[0], "CLUSTER", "INFO")
	if err != nil || !strings.Contains(info, "cluster_slots_assigned:16384") || !strings.Contains(info, "cluster_known_nodes:3") {
		t.Fatalf("CLUSTER INFO: %q, %v", info, err)
	}
	moved := 0
	for _, addr := range c.Addrs() {
		if _, err := Do(addr, "SET", "{a}k", "v"); err != nil && strings.Contains(err.Error(), "MOVED") {
			moved++
		}
	}
	if moved != 2 {
		t.Fatalf("%d of 3 nodes answered MOVED for one key, want 2", moved)
	}
}
