package ctl

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cometop/comet-operator/cometserver/admin"
	"github.com/cometop/comet-operator/cometserver/contract"
	"github.com/cometop/comet-operator/cometserver/security"
	"github.com/cometop/comet-operator/test/bounded"
)

// server is a real admin socket in front of a real security.State: what
// ctl talks to inside a pod, in this process.
type server struct {
	state *security.State
	path  string
	mu    sync.Mutex
	lines []string // every command line the socket received
	limit *int
	hist  [2]int64 // history size, ttl
}

func (s *server) Activate()   { s.state.Activate() }
func (s *server) Deactivate() { s.state.Deactivate() }
func (s *server) SetTimeout(d time.Duration, kill bool) error {
	return s.state.SetTimeout(d, kill)
}
func (s *server) SetHistory(size int, ttl time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hist = [2]int64{int64(size), int64(ttl)}
	return nil
}
func (s *server) SetMaxVirtualChannels(limit *int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.limit = limit
	return nil
}
func (s *server) Status() contract.Status {
	snap := s.state.Snapshot()
	s.mu.Lock()
	defer s.mu.Unlock()
	return contract.Status{Activated: snap.Activated, Timeout: snap.Timeout.Seconds(), TimeoutNanoseconds: int64(snap.Timeout),
		MaxVirtualChannels: s.limit, HistorySize: int(s.hist[0]), HistoryTTLNs: s.hist[1]}
}

// recording wraps a Target to record each command it is given.
type recording struct {
	admin.Target
	s *server
}

func (r recording) note(line string) {
	r.s.mu.Lock()
	r.s.lines = append(r.s.lines, line)
	r.s.mu.Unlock()
}
func (r recording) Activate()   { r.note("activate"); r.Target.Activate() }
func (r recording) Deactivate() { r.note("deactivate"); r.Target.Deactivate() }
func (r recording) SetTimeout(d time.Duration, kill bool) error {
	r.note(admin.Command{Verb: admin.SetTimeout, Timeout: d, Kill: kill}.String())
	return r.Target.SetTimeout(d, kill)
}

func (r recording) SetMaxVirtualChannels(limit *int) error {
	r.note("max " + contract.FormatLimit(contract.LimitOf(limit)))
	return r.Target.SetMaxVirtualChannels(limit)
}
func (r recording) SetHistory(size int, ttl time.Duration) error {
	r.note(fmt.Sprintf("history %d %s", size, ttl))
	return r.Target.SetHistory(size, ttl)
}

func startServer(t *testing.T, activated bool, timeout time.Duration) *server {
	t.Helper()
	s := &server{state: security.New(activated, timeout), path: filepath.Join(t.TempDir(), "admin.sock")}
	sock, err := admin.ListenSocket(s.path, &admin.Executor{Target: recording{s, s}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	go sock.Serve()
	t.Cleanup(func() { sock.Close() })
	return s
}

func (s *server) commands() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.lines...)
}

func run(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = Main(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// apply sends only what differs, deactivate first and activate last, KILL
// only with a real timeout change, prints one JSON result (the state it
// left and what it sent) and exits 0 once the server holds the state.
func TestApply(t *testing.T) {
	bounded.Test(t, time.Minute)
	s := startServer(t, true, 20*time.Second)
	for _, tt := range []struct {
		args      []string
		sent      []string // in the result
		commands  string   // what the server received
		activated bool
		timeout   time.Duration
	}{
		{[]string{"--activated=false", "--timeout=5s"}, []string{"comet:deactivate", "comet:set_timeout 5"}, "deactivate,comet:set_timeout 5", false, 5 * time.Second},
		{[]string{"--activated=false", "--timeout=5s", "--kill-on-change"}, []string{}, "", false, 5 * time.Second},
		{[]string{"--activated=true", "--timeout=5000ms", "--kill-on-change"}, []string{"comet:activate"}, "activate", true, 5 * time.Second},
		{[]string{"--activated=true", "--timeout=1.5s", "--kill-on-change"}, []string{"comet:set_timeout 1.5 KILL"}, "comet:set_timeout 1.5 KILL", true, 1500 * time.Millisecond},
		{[]string{"--activated=false", "--timeout=2s", "--kill-on-change"}, []string{"comet:deactivate", "comet:set_timeout 2 KILL"}, "deactivate,comet:set_timeout 2 KILL", false, 2 * time.Second},
		{[]string{"--activated=true", "--timeout=3s"}, []string{"comet:set_timeout 3", "comet:activate"}, "comet:set_timeout 3,activate", true, 3 * time.Second},
		{[]string{"--activated=true", "--timeout=3s", "--max-virtual-channels=4", "--history-size=7", "--history-ttl=90s"},
			[]string{"comet:set_max_virtual_channels 4", "comet:set_history 7 90"}, "max 4,history 7 1m30s", true, 3 * time.Second},
		{[]string{"--activated=true", "--timeout=3s", "--max-virtual-channels=4", "--history-size=7", "--history-ttl=90s"}, []string{}, "", true, 3 * time.Second},
		{[]string{"--activated=true", "--timeout=3s", "--max-virtual-channels=none"}, []string{"comet:set_max_virtual_channels none"}, "max none", true, 3 * time.Second},
	} {
		before := len(s.commands())
		code, stdout, stderr := run(append([]string{"--socket", s.path, "apply"}, tt.args...)...)
		if code != ExitOK || stderr != "" {
			t.Fatalf("apply %q: exit %d, stderr %q; want 0 and nothing", tt.args, code, stderr)
		}
		if got := strings.Join(s.commands()[before:], ","); got != tt.commands {
			t.Fatalf("apply %q: the server got %q, want %q", tt.args, got, tt.commands)
		}
		var res contract.ApplyResult
		if err := json.Unmarshal([]byte(stdout), &res); err != nil || !strings.HasSuffix(stdout, "}\n") || strings.Count(stdout, "\n") != 1 {
			t.Fatalf("apply %q printed %q: %v", tt.args, stdout, err)
		}
		if res.State == nil || res.State.Activated != tt.activated || res.State.TimeoutDuration() != tt.timeout || res.Error != "" ||
			!slices.Equal(res.Sent, tt.sent) {
			t.Fatalf("apply %q printed %s; want sent %q", tt.args, stdout, tt.sent)
		}
		if snap := s.state.Snapshot(); snap.Activated != tt.activated || snap.Timeout != tt.timeout {
			t.Fatalf("apply %q: the server holds %+v", tt.args, snap)
		}
	}
}

// The simple commands, with the socket from the flag or the environment.
func TestCommands(t *testing.T) {
	bounded.Test(t, time.Minute)
	s := startServer(t, true, 20*time.Second)
	t.Setenv("COMET_ADMIN_SOCKET", s.path)
	for _, tt := range []struct {
		args      []string
		activated bool
		timeout   time.Duration
		command   string
	}{
		{[]string{"deactivate"}, false, 20 * time.Second, "deactivate"},
		{[]string{"activate"}, true, 20 * time.Second, "activate"},
		{[]string{"set-timeout", "3", "--kill"}, true, 3 * time.Second, "comet:set_timeout 3 KILL"},
		{[]string{"set-timeout", "--kill", "2.5"}, true, 2500 * time.Millisecond, "comet:set_timeout 2.5 KILL"},
		{[]string{"--timeout", "2s", "set-timeout", "4"}, true, 4 * time.Second, "comet:set_timeout 4"},
		{[]string{"set-timeout", "-kill", ".25"}, true, 250 * time.Millisecond, "comet:set_timeout 0.25 KILL"},
	} {
		before := len(s.commands())
		if code, stdout, stderr := run(tt.args...); code != ExitOK || stdout != "" || stderr != "" {
			t.Fatalf("ctl %q: exit %d, %q %q", tt.args, code, stdout, stderr)
		}
		if got := strings.Join(s.commands()[before:], ","); got != tt.command {
			t.Fatalf("ctl %q sent %q, want %q", tt.args, got, tt.command)
		}
		if snap := s.state.Snapshot(); snap.Activated != tt.activated || snap.Timeout != tt.timeout {
			t.Fatalf("ctl %q: server holds %+v", tt.args, snap)
		}
	}
	code, stdout, _ := run("status")
	var st contract.Status
	if code != ExitOK || json.Unmarshal([]byte(stdout), &st) != nil || !st.Activated || st.TimeoutDuration() != 250*time.Millisecond {
		t.Fatalf("status: %d %q", code, stdout)
	}
}

// Every way ctl can fail, with its exit code and message; none of them
// changes the server.
func TestErrors(t *testing.T) {
	bounded.Test(t, time.Minute)
	s := startServer(t, true, 20*time.Second)
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.sock")
	ln, _ := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	ln.SetUnlinkOnClose(false)
	ln.Close() // the file stays, nobody listens: connection refused
	sock := []string{"--socket", s.path}
	for _, tt := range []struct {
		args []string
		code int
		want string
	}{
		{nil, ExitUsage, "error: no command"},
		{[]string{"--bogus"}, ExitUsage, "flag provided but not defined: -bogus"},
		{[]string{"--timeout", "soon", "status"}, ExitUsage, `invalid value "soon" for flag -timeout`},
		{[]string{"--timeout", "0s", "status"}, ExitUsage, "--timeout must be greater than 0, got 0s"},
		{[]string{"reboot"}, ExitUsage, `unknown command "reboot"`},
		{[]string{"activate", "now"}, ExitUsage, "activate takes no argument"},
		{[]string{"deactivate", "now"}, ExitUsage, "deactivate takes no argument"},
		{[]string{"status", "now"}, ExitUsage, "status takes no argument"},
		{[]string{"set-timeout"}, ExitUsage, "exactly one SECONDS"},
		{[]string{"set-timeout", "1", "2"}, ExitUsage, "exactly one SECONDS"},
		{[]string{"set-timeout", "--nope", "1"}, ExitUsage, "flag provided but not defined: -nope"},
		{[]string{"set-timeout", "soon"}, ExitUsage, "decimal number"},
		{[]string{"set-timeout", "0"}, ExitUsage, "greater than 0"},
		{[]string{"apply", "--timeout=5s"}, ExitUsage, `--activated must be true or false, got ""`},
		{[]string{"apply", "--activated=maybe", "--timeout=5s"}, ExitUsage, "--activated must be true or false"},
		{[]string{"apply", "--activated=true"}, ExitUsage, "--timeout must be a duration"},
		{[]string{"apply", "--activated=true", "--timeout=0s"}, ExitUsage, "--timeout must be a duration greater than 0"},
		{[]string{"apply", "--activated=true", "--timeout=-1s"}, ExitUsage, "--timeout must be a duration greater than 0"},
		{[]string{"apply", "--activated=true", "--timeout=5s", "extra"}, ExitUsage, `no positional argument, got "extra"`},
		{[]string{"apply", "--activated=true", "--timeout=5s", "--force"}, ExitUsage, "flag provided but not defined: -force"},
		{[]string{"apply", "--activated=true", "--timeout=5s", "--max-virtual-channels=-1"}, ExitUsage, "--max-virtual-channels: limit must be none or an integer"},
		{[]string{"apply", "--activated=true", "--timeout=5s", "--max-virtual-channels="}, ExitUsage, "--max-virtual-channels: limit must be"},
		{[]string{"apply", "--activated=true", "--timeout=5s", "--history-size=5"}, ExitUsage, "--history-size and --history-ttl go together"},
		{[]string{"apply", "--activated=true", "--timeout=5s", "--history-ttl=5s"}, ExitUsage, "go together"},
		{[]string{"apply", "--activated=true", "--timeout=5s", "--history-size=100001", "--history-ttl=5s"}, ExitUsage, "--history-size: size must be"},
		{[]string{"apply", "--activated=true", "--timeout=5s", "--history-size=5", "--history-ttl=0s"}, ExitUsage, "--history-ttl must be a duration greater than 0"},
		{[]string{"--socket", filepath.Join(dir, "none.sock"), "status"}, ExitUnreachable, "admin socket unreachable"},
		{[]string{"--socket", stale, "activate"}, ExitUnreachable, "connection refused"},
		{[]string{"--socket", stale, "set-timeout", "1"}, ExitUnreachable, "admin socket unreachable"},
		{[]string{"--socket", stale, "apply", "--activated=true", "--timeout=1s"}, ExitUnreachable, "admin socket unreachable"},
	} {
		args := tt.args
		if tt.code != ExitUnreachable {
			args = append(append([]string(nil), sock...), args...)
		}
		code, stdout, stderr := run(args...)
		// Only an apply that ran prints its result, with the error.
		wantStdout := ""
		if tt.code == ExitUnreachable && tt.args[2] == "apply" {
			wantStdout = `{"sent":[],"error":"` + stderr[len("error: "):len(stderr)-1] + `"}` + "\n"
		}
		if code != tt.code || !strings.Contains(stderr, tt.want) || stdout != wantStdout {
			t.Errorf("ctl %q: exit %d, stdout %q, stderr %q; want exit %d with %q", tt.args, code, stdout, stderr, tt.code, tt.want)
		}
		if tt.code == ExitUsage && !strings.Contains(stderr, "usage: cometserver ctl") {
			t.Errorf("ctl %q: a usage error without the usage: %q", tt.args, stderr)
		}
		if tt.code != ExitUsage && strings.Contains(stderr, "usage:") {
			t.Errorf("ctl %q: usage printed for a failure that is not one: %q", tt.args, stderr)
		}
	}
	if len(s.commands()) != 0 {
		t.Fatalf("a refused ctl sent %q", s.commands())
	}
}

// frozen is a server that refuses set_timeout, or ignores every command:
// the two ways a server can fail to reach the state apply asks for.
type frozen struct{ ignore bool }

func (frozen) Activate()                           {}
func (frozen) Deactivate()                         {}
func (frozen) SetHistory(int, time.Duration) error { return nil }
func (frozen) SetMaxVirtualChannels(*int) error    { return nil }
func (f frozen) SetTimeout(time.Duration, bool) error {
	if f.ignore {
		return nil
	}
	return errors.New("timeouts are frozen")
}
func (frozen) Status() contract.Status {
	return contract.Status{Activated: true, Timeout: 20, TimeoutNanoseconds: int64(20 * time.Second)}
}

func TestApplyAgainstAServerThatDoesNotComply(t *testing.T) {
	bounded.Test(t, time.Minute)
	for _, tt := range []struct {
		ignore bool
		stdout bool
		want   string
	}{
		{false, false, `error: server refused "comet:set_timeout 5": timeouts are frozen`},
		{true, true, "error: not converged: server holds activated=true timeout=20s, want activated=false timeout=5s"},
	} {
		path := filepath.Join(t.TempDir(), "admin.sock")
		sock, err := admin.ListenSocket(path, &admin.Executor{Target: frozen{tt.ignore}, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		go sock.Serve()
		code, stdout, stderr := run("--socket", path, "apply", "--activated=false", "--timeout=5s")
		var res contract.ApplyResult
		jerr := json.Unmarshal([]byte(stdout), &res)
		if code != ExitRefused || !strings.Contains(stderr, tt.want) || jerr != nil || "error: "+res.Error+"\n" != stderr ||
			(res.State != nil) != tt.stdout || !slices.Equal(res.Sent, []string{"comet:deactivate"}) && !tt.ignore {
			t.Errorf("ignore=%v: exit %d, stdout %q, stderr %q; want 1 with %q, the state only if read", tt.ignore, code, stdout, stderr, tt.want)
		}
		code, _, stderr = run("--socket", path, "set-timeout", "5")
		if tt.ignore && code != ExitOK || !tt.ignore && (code != ExitRefused || !strings.Contains(stderr, "timeouts are frozen")) {
			t.Errorf("ignore=%v: set-timeout exit %d, stderr %q", tt.ignore, code, stderr)
		}
		sock.Close()
	}
}

// Apply reads the status once when nothing differs, and again after
// sending; a failure midway reports what was sent before it.
func TestApplyFunction(t *testing.T) {
	bounded.Test(t, time.Minute)
	s := startServer(t, true, 20*time.Second)
	c := admin.Client{Path: s.path}
	got, sent, err := Apply(c, contract.Apply{Activated: true, Timeout: 20 * time.Second, KillOnChange: true})
	if err != nil || sent != nil || !got.Activated || got.TimeoutDuration() != 20*time.Second || len(s.commands()) != 0 {
		t.Fatalf("held state: %+v %v %v, server got %q", got, sent, err, s.commands())
	}
	got, sent, err = Apply(c, contract.Apply{Activated: false, Timeout: time.Second})
	if err != nil || len(sent) != 2 || got.Activated || got.TimeoutDuration() != time.Second {
		t.Fatalf("change: %+v %v %v", got, sent, err)
	}
	if _, _, err := Apply(admin.Client{Path: filepath.Join(t.TempDir(), "none")}, contract.Apply{Timeout: time.Second}); !errors.Is(err, admin.ErrUnreachable) {
		t.Fatalf("unreachable: %v", err)
	}
}

// --timeout bounds the whole command, not each exchange: apply against a
// server that answers its status and then nothing gives up in time (the
// operator relies on it to fit ctl inside its push timeout).
func TestTimeoutBoundsTheWholeCommand(t *testing.T) {
	bounded.Test(t, time.Minute)
	path := filepath.Join(t.TempDir(), "slow.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	status := `{"activated":true,"timeout":20,"timeout_ns":20000000000}` + "\n"
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, _ := bufio.NewReader(c).ReadString('\n')
				if strings.HasPrefix(line, "comet:status") {
					time.Sleep(700 * time.Millisecond) // slow, within one exchange's time
					io.WriteString(c, status)
					return
				}
				io.Copy(io.Discard, c) // never answers a command
			}()
		}
	}()
	start := time.Now()
	code, _, stderr := run("--socket", path, "--timeout", "1s", "apply", "--activated=false", "--timeout=5s")
	// With a second per exchange it would take 1.7s: 0.7s, then 1s.
	if took := time.Since(start); code != ExitUnreachable || took > 1450*time.Millisecond {
		t.Fatalf("exit %d after %v: %s; want 3 within the 1s (and some slack)", code, took, stderr)
	}
}
