package admin

import (
	"bufio"
	"errors"
	"log/slog"
	"math"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cometop/comet-operator/cometserver/contract"
	"github.com/cometop/comet-operator/test/bounded"
)

func TestParse(t *testing.T) {
	tests := []struct {
		line string
		want Command
		err  string
	}{
		{line: "comet:activate", want: Command{Verb: Activate}},
		{line: " \tcomet:deactivate \t", want: Command{Verb: Deactivate}},
		{line: "comet:status", want: Command{Verb: Status}},
		{line: "comet:set_timeout 20", want: Command{Verb: SetTimeout, Timeout: 20 * time.Second}},
		{line: "comet:set_history 100 120", want: Command{Verb: SetHistory, HistorySize: 100, HistoryTTL: 2 * time.Minute}},
		{line: " comet:set_history\t0  0.5 ", want: Command{Verb: SetHistory, HistoryTTL: 500 * time.Millisecond}},
		{line: "comet:set_history 100000 86400", want: Command{Verb: SetHistory, HistorySize: 100000, HistoryTTL: 24 * time.Hour}},
		{line: "comet:set_max_virtual_channels 0", want: Command{Verb: SetMaxVirtualChannels}},
		{line: "comet:set_max_virtual_channels\t2147483647", want: Command{Verb: SetMaxVirtualChannels, MaxVirtualChannels: 2147483647}},
		{line: "comet:set_max_virtual_channels none", want: Command{Verb: SetMaxVirtualChannels, MaxVirtualChannels: Unlimited}},
		{line: "comet:set_timeout\t2.5\tKILL", want: Command{Verb: SetTimeout, Timeout: 2500 * time.Millisecond, Kill: true}},
		{line: "comet:set_timeout .5", want: Command{Verb: SetTimeout, Timeout: 500 * time.Millisecond}},
		{line: "comet:set_timeout 3.", want: Command{Verb: SetTimeout, Timeout: 3 * time.Second}},
		{line: "", err: "empty command"},
		{line: "   ", err: "empty command"},
		{line: "activate", err: `lacks the "comet:" prefix`},
		{line: "Comet:activate", err: "prefix"},
		{line: "comet: activate", err: `unknown command ""`},
		{line: "comet:ACTIVATE", err: `unknown command "ACTIVATE"`},
		{line: "comet:reboot", err: `unknown command "reboot"`},
		{line: "comet:activate now", err: "activate takes no argument"},
		{line: "comet:status x", err: "status takes no argument"},
		{line: "comet:set_timeout", err: "takes <seconds> [KILL], got 0"},
		{line: "comet:set_timeout 1 KILL x", err: "got 3"},
		{line: "comet:set_timeout 1 kill", err: `must be KILL, got "kill"`},
		{line: "comet:set_timeout 0", err: "greater than 0"},
		{line: "comet:set_timeout 0.0000000001", err: "greater than 0"},
		{line: "comet:set_timeout -5", err: "decimal number"},
		{line: "comet:set_timeout inf", err: "decimal number"},
		{line: "comet:set_timeout NaN", err: "decimal number"},
		{line: "comet:set_timeout 1e3", err: "decimal number"},
		{line: "comet:set_timeout 0x10", err: "decimal number"},
		{line: "comet:set_timeout 20s", err: "decimal number"},
		{line: "comet:set_timeout 99999999999999", err: "too large"},
		{line: "comet:set_history", err: "takes <size> <ttl-seconds>, got 0"},
		{line: "comet:set_history 10", err: "got 1"},
		{line: "comet:set_history 10 60 x", err: "got 3"},
		{line: "comet:set_history -1 60", err: "size must be an integer from 0 to 100000"},
		{line: "comet:set_history 100001 60", err: "size must be"},
		{line: "comet:set_history 010 60", err: "size must be"},
		{line: "comet:set_history +5 60", err: "size must be"},
		{line: "comet:set_history 1.5 60", err: "size must be"},
		{line: "comet:set_history 5 0", err: "ttl: seconds must be greater than 0"},
		{line: "comet:set_history 5 2m", err: "ttl: seconds must be a decimal number"},
		{line: "comet:set_max_virtual_channels", err: "takes <count>|none, got 0"},
		{line: "comet:set_max_virtual_channels 1 2", err: "got 2"},
		{line: "comet:set_max_virtual_channels -1", err: `limit must be none or an integer from 0 to 2147483647, got "-1"`},
		{line: "comet:set_max_virtual_channels 2147483648", err: "limit must be"},
		{line: "comet:set_max_virtual_channels 07", err: "limit must be"},
		{line: "comet:set_max_virtual_channels NONE", err: "limit must be"},
		{line: "comet:set_max_virtual_channels 1e3", err: "limit must be"},
		{line: "comet:" + strings.Repeat("v", 58), err: `unknown command "` + strings.Repeat("v", 58) + `"`}, // 58 bytes: not truncated
		{line: "comet:" + strings.Repeat("v", 64), err: `unknown command "` + strings.Repeat("v", 64) + `"`},
		{line: "comet:" + strings.Repeat("v", 65), err: `unknown command "` + strings.Repeat("v", 64) + `..."`},
	}
	for _, tt := range tests {
		got, err := Parse(tt.line)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("Parse(%q) error = %v, want one containing %q", tt.line, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", tt.line, got, err, tt.want)
		}
		if back, err := Parse(got.String()); err != nil || back != got {
			t.Errorf("String() of %+v does not parse back: %q", got, got.String())
		}
	}
}

// FuzzParse: a line that parses renders as a line that parses back to the
// same command, timeout included to the nanosecond; a refused line yields
// no command.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"comet:activate", "comet:set_timeout 2.5 KILL", "comet:set_timeout .", "comet:status\t", "comet:", "",
		"comet:set_timeout 9223372036.854775806", "comet:set_timeout 0.0000000005", "comet:set_timeout 123456789.987654321 KILL",
		"comet:set_history 100 120", "comet:set_history 0 .5", "comet:set_history 100000 1",
		"comet:set_max_virtual_channels none", "comet:set_max_virtual_channels 12"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		cmd, err := Parse(line)
		if err != nil {
			if cmd != (Command{}) {
				t.Fatalf("command %+v with error %v", cmd, err)
			}
			return
		}
		if cmd.Verb == SetTimeout && cmd.Timeout <= 0 {
			t.Fatalf("timeout %v accepted from %q", cmd.Timeout, line)
		}
		if cmd.Verb == SetMaxVirtualChannels && (cmd.MaxVirtualChannels < Unlimited || cmd.MaxVirtualChannels > MaxVirtualChannelsLimit) {
			t.Fatalf("limit %d accepted from %q", cmd.MaxVirtualChannels, line)
		}
		if cmd.Verb == SetHistory && (cmd.HistoryTTL <= 0 || cmd.HistorySize < 0 || cmd.HistorySize > MaxHistorySize) {
			t.Fatalf("history %d, %v accepted from %q", cmd.HistorySize, cmd.HistoryTTL, line)
		}
		if back, err := Parse(cmd.String()); err != nil || back != cmd {
			t.Fatalf("%q parsed to %+v, which renders as %q and parses to %+v, %v", line, cmd, cmd.String(), back, err)
		}
	})
}

// FuzzParseSeconds checks ParseSeconds against exact rational arithmetic:
// the seconds times 10^9, rounded half up, when that is at least 1 and
// below the largest duration; refused otherwise.
func FuzzParseSeconds(f *testing.F) {
	for _, s := range []string{"20", "2.5", ".5", "3.", "0", "0.0000000004", "0.0000000005", "9223372036.854775806",
		"9223372036.854775807", "99999999999", "1.9999999995", "00000000000000000001", "-1", "1e3", "", "."} {
		f.Add(s)
	}
	billion := big.NewRat(int64(time.Second), 1)
	half := big.NewRat(1, 2)
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseSeconds(s)
		if !decimal.MatchString(s) {
			if err == nil {
				t.Fatalf("%q is no plain decimal, yet parsed to %v", s, got)
			}
			return
		}
		r, ok := new(big.Rat).SetString(s)
		if !ok {
			t.Fatalf("big.Rat cannot read %q", s)
		}
		r.Mul(r, billion).Add(r, half)
		want := new(big.Int).Quo(r.Num(), r.Denom()) // floor(x*1e9 + 1/2): half up
		switch {
		case want.Sign() <= 0:
			if err == nil || !strings.Contains(err.Error(), "greater than 0") {
				t.Fatalf("%q: %v, %v; want refused as not greater than 0", s, got, err)
			}
		case want.Cmp(big.NewInt(math.MaxInt64)) >= 0:
			if err == nil || !strings.Contains(err.Error(), "too large") {
				t.Fatalf("%q: %v, %v; want refused as too large", s, got, err)
			}
		case err != nil || int64(got) != want.Int64():
			t.Fatalf("%q: %d ns, %v; want %s ns", s, got, err, want)
		default:
			if back, err := ParseSeconds(FormatSeconds(got)); err != nil || back != got {
				t.Fatalf("%v renders as %q, which reads back as %v, %v", got, FormatSeconds(got), back, err)
			}
		}
	})
}

// target records what commands did, standing in for the server's state.
type target struct {
	mu        sync.Mutex
	activated bool
	timeout   time.Duration
	kills     int
	history   [2]int64 // size, ttl
	limit     *int
}

func (t *target) SetMaxVirtualChannels(limit *int) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.limit = limit
	return nil
}

func (t *target) SetHistory(size int, ttl time.Duration) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.history = [2]int64{int64(size), int64(ttl)}
	return nil
}

func (t *target) Activate()   { t.mu.Lock(); t.activated = true; t.mu.Unlock() }
func (t *target) Deactivate() { t.mu.Lock(); t.activated = false; t.mu.Unlock() }
func (t *target) SetTimeout(d time.Duration, kill bool) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.timeout = d
	if kill {
		t.kills++
	}
	return nil
}
func (t *target) Status() contract.Status {
	t.mu.Lock()
	defer t.mu.Unlock()
	return contract.Status{Activated: t.activated, Timeout: t.timeout.Seconds(), TimeoutNanoseconds: int64(t.timeout)}
}

func newSocket(t *testing.T) (*Socket, *target, string) {
	t.Helper()
	bounded.Test(t, time.Minute)
	path := filepath.Join(t.TempDir(), "run", "admin.sock")
	tg := &target{activated: true, timeout: 20 * time.Second}
	s, err := ListenSocket(path, &Executor{Target: tg, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	t.Cleanup(func() { s.Close() })
	return s, tg, path
}

func TestSocket(t *testing.T) {
	_, tg, path := newSocket(t)
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("socket file: %v %v, want a socket with mode 0600", fi.Mode(), err)
	}
	c := Client{Path: path}
	answers, err := c.Do("comet:deactivate", "comet:bogus", "comet:set_timeout 5 KILL", "comet:set_timeout 0 KILL", "comet:status", "comet:set_history 9 1.5", "comet:set_max_virtual_channels 7")
	if err != nil {
		t.Fatal(err)
	}
	if empty, err := c.Do("", "\r", " \t"); err != nil || strings.Join(empty, "|") != "error: empty command|error: empty command|error: empty command" {
		t.Fatalf("empty lines: %q, %v", empty, err)
	}
	want := []string{"ok", `error: unknown command "bogus"`, "ok", "error: set_timeout: seconds must be greater than 0, got \"0\""}
	for i, w := range want {
		if answers[i] != w {
			t.Errorf("answer %d = %q, want %q", i, answers[i], w)
		}
	}
	if !strings.HasPrefix(answers[4], `{"activated":false,"timeout":5,`) {
		t.Errorf("status = %q", answers[4])
	}
	tg.mu.Lock()
	history := tg.history
	tg.mu.Unlock()
	if answers[5] != "ok" || history != [2]int64{9, int64(1500 * time.Millisecond)} {
		t.Errorf("set_history: %q, target got %v", answers[5], history)
	}
	tg.mu.Lock()
	limit := tg.limit
	tg.mu.Unlock()
	if answers[6] != "ok" || limit == nil || *limit != 7 {
		t.Errorf("set_max_virtual_channels: %q, target got %v", answers[6], limit)
	}
	tg.mu.Lock()
	activated, timeout, kills := tg.activated, tg.timeout, tg.kills
	tg.mu.Unlock()
	if activated || timeout != 5*time.Second || kills != 1 {
		t.Fatalf("activated %t, timeout %v, kills %d: the refused line changed something", activated, timeout, kills)
	}
	if err := c.Run(Command{Verb: Activate}); err != nil || !tg.Status().Activated {
		t.Fatalf("Run(activate): %v", err)
	}
	st, err := c.Status()
	if err != nil || !st.Activated || st.TimeoutDuration() != 5*time.Second {
		t.Fatalf("Status = %+v, %v", st, err)
	}
}

func TestSocketLineTooLong(t *testing.T) {
	_, _, path := newSocket(t)
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte(strings.Repeat("x", 5000) + "\n"))
	line, _ := bufio.NewReader(conn).ReadString('\n')
	if line != "error: line longer than 4096 bytes\n" {
		t.Fatalf("answer %q", line)
	}
}

func TestSocketFileHandling(t *testing.T) {
	s, _, path := newSocket(t)
	if _, err := ListenSocket(path, &Executor{}); err == nil || !strings.Contains(err.Error(), "another server is listening") {
		t.Fatalf("second server on a live socket: %v", err)
	}
	s.Close()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("the socket file stayed after Close")
	}

	// A stale socket (its server died without cleaning up) is replaced.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	s2, err := ListenSocket(path, &Executor{Target: &target{}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	s2.Close()

	regular := filepath.Join(t.TempDir(), "file")
	os.WriteFile(regular, []byte("keep me"), 0o600)
	if _, err := ListenSocket(regular, &Executor{}); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("a regular file in the way: %v", err)
	}
	if b, _ := os.ReadFile(regular); string(b) != "keep me" {
		t.Fatal("a regular file was overwritten")
	}
}

func TestClientErrors(t *testing.T) {
	missing := Client{Path: filepath.Join(t.TempDir(), "none.sock")}
	if _, err := missing.Status(); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("missing socket: %v", err)
	}
	_, _, path := newSocket(t)
	err := Client{Path: path}.Run(Command{Verb: "reboot"})
	var refused *RefusedError
	if !errors.As(err, &refused) || refused.Reason != `unknown command "reboot"` {
		t.Fatalf("refused command: %v", err)
	}
}

func TestPipe(t *testing.T) {
	bounded.Test(t, time.Minute)
	path := filepath.Join(t.TempDir(), "cmd.fifo")
	tg := &target{activated: true, timeout: time.Second}
	p, err := OpenPipe(path, &Executor{Target: tg, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	go p.Serve()
	fi, _ := os.Stat(path)
	if fi.Mode().Type() != os.ModeNamedPipe || fi.Mode().Perm() != 0o600 {
		t.Fatalf("pipe mode %v", fi.Mode())
	}
	// Two writers in turn: the reader must survive the first one leaving.
	for _, lines := range []string{"comet:deactivate\ncomet:nonsense\n", strings.Repeat("y", 5000) + "\ncomet:set_timeout 7\n"} {
		w, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		w.WriteString(lines)
		w.Close()
	}
	bounded.Wait(t, "the pipe's commands applied", 5*time.Second, func() bool { return tg.Status().TimeoutDuration() == 7*time.Second })
	if st := tg.Status(); st.Activated || st.TimeoutDuration() != 7*time.Second {
		t.Fatalf("after the pipe: %+v", st)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	// The FIFO may be reused by the next server.
	p2, err := OpenPipe(path, &Executor{})
	if err != nil {
		t.Fatal(err)
	}
	go p2.Serve()
	p2.Close()

	regular := filepath.Join(t.TempDir(), "file")
	os.WriteFile(regular, nil, 0o600)
	if _, err := OpenPipe(regular, &Executor{}); err == nil || !strings.Contains(err.Error(), "not a FIFO") {
		t.Fatalf("regular file as pipe: %v", err)
	}
}
