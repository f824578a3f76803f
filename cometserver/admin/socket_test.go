package admin

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cometop/comet-operator/cometserver/metrics"
	"github.com/cometop/comet-operator/test/bounded"
	"github.com/cometop/comet-operator/test/syncbuffer"
)

// The socket's parent directory is made with mode 0700 when missing; one
// that exists is left as it is.
func TestSocketDirectoryMode(t *testing.T) {
	bounded.Test(t, 30*time.Second)
	_, _, path := newSocket(t)
	fi, err := os.Stat(filepath.Dir(path))
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("made directory: %v %v, want mode 0700", fi.Mode(), err)
	}
	shared := t.TempDir()
	os.Chmod(shared, 0o755)
	s, err := ListenSocket(filepath.Join(shared, "admin.sock"), &Executor{Target: &target{}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if fi, _ := os.Stat(shared); fi.Mode().Perm() != 0o755 {
		t.Fatalf("an existing directory changed mode to %v", fi.Mode())
	}
	if s.Addr() != filepath.Join(shared, "admin.sock") {
		t.Fatalf("Addr %q", s.Addr())
	}
}

// A line over 4096 bytes gets an error and the connection closes; one of
// exactly 4096 bytes (with its newline) is read.
func TestSocketLineLimit(t *testing.T) {
	bounded.Test(t, 30*time.Second)
	_, tg, path := newSocket(t)
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	fits := "comet:deactivate" + strings.Repeat(" ", maxLineBytes-len("comet:deactivate")-1) + "\n"
	conn.Write([]byte(fits))
	if line, err := r.ReadString('\n'); line != "ok\n" || err != nil {
		t.Fatalf("a line of exactly %d bytes: %q, %v", maxLineBytes, line, err)
	}
	if tg.Status().Activated {
		t.Fatal("the line of the limit was not applied")
	}
	conn.Write([]byte(strings.Repeat("x", maxLineBytes) + "\ncomet:activate\n"))
	if line, _ := r.ReadString('\n'); line != "error: line longer than 4096 bytes\n" {
		t.Fatalf("answer %q", line)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	// Closed with the rest unread: the client sees an end or a reset.
	if rest, err := r.ReadString('\n'); err == nil || errors.Is(err, os.ErrDeadlineExceeded) || rest != "" {
		t.Fatalf("after a long line: %q, %v; want the connection closed", rest, err)
	}
	if tg.Status().Activated {
		t.Fatal("a line after the long one was applied")
	}
}

// An idle connection is closed after the idle timeout; lines keep it open.
func TestSocketIdleClose(t *testing.T) {
	bounded.Test(t, 30*time.Second)
	path := filepath.Join(t.TempDir(), "admin.sock")
	s, err := ListenSocket(path, &Executor{Target: &target{}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	s.IdleTimeout = 300 * time.Millisecond
	go s.Serve()
	defer s.Close()
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	start := time.Now()
	for range 4 { // 4 x 150ms: past the timeout in all, never idle that long
		time.Sleep(150 * time.Millisecond)
		conn.Write([]byte("comet:status\n"))
		if _, err := r.ReadString('\n'); err != nil {
			t.Fatalf("closed while busy, after %v: %v", time.Since(start), err)
		}
	}
	idleFrom := time.Now()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.ReadByte(); err != io.EOF {
		t.Fatalf("idle connection: %v, want it closed", err)
	}
	if idle := time.Since(idleFrom); idle < 250*time.Millisecond {
		t.Fatalf("closed after %v idle, before the timeout", idle)
	}
}

// Close while clients connect: no handler is added to the wait group once
// Close waits on it (a regression test for 1275cea; run with -race).
func TestSocketCloseWhileConnecting(t *testing.T) {
	bounded.Test(t, time.Minute)
	for i := range 50 {
		path := filepath.Join(t.TempDir(), fmt.Sprint("s", i))
		s, err := ListenSocket(path, &Executor{Target: &target{}, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan error, 1)
		go func() { served <- s.Serve() }()
		var dialers sync.WaitGroup
		stop := make(chan struct{})
		for range 4 {
			dialers.Add(1)
			go func() {
				defer dialers.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					if c, err := net.Dial("unix", path); err == nil {
						c.Write([]byte("comet:status\n"))
						c.Close()
					}
				}
			}()
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		close(stop)
		dialers.Wait()
		if err := bounded.Recv(t, "Serve to return after Close", 5*time.Second, served); err != nil {
			t.Fatalf("Serve: %v", err)
		}
	}
}

// Each command is counted by verb and result, a line that does not parse
// as "invalid"; refusals are logged as warnings, applied commands at info,
// status not at all.
func TestExecutorMetricsAndLogs(t *testing.T) {
	var logs bytes.Buffer
	m := metrics.New(metrics.Sources{Channels: func() float64 { return 0 }, Waiting: func() float64 { return 0 }})
	tg := &target{}
	e := &Executor{Target: tg, Logger: slog.New(slog.NewJSONHandler(&logs, nil)), Metrics: m}
	for _, line := range []string{"comet:activate", "comet:set_timeout 5", "comet:set_timeout 5 KILL", "comet:status", "comet:bogus", "comet:set_timeout x"} {
		e.Exec(line, "test")
	}
	failing := &Executor{Target: refusing{&target{}}, Logger: slog.New(slog.NewJSONHandler(&logs, nil)), Metrics: m}
	if a := failing.Exec("comet:set_timeout 1", "test"); a != "error: frozen" {
		t.Fatalf("a target's error: %q", a)
	}
	for _, tt := range []struct {
		command, result string
		want            float64
	}{
		{"activate", "ok", 1}, {"set_timeout", "ok", 2}, {"status", "ok", 1}, {"invalid", "error", 2}, {"set_timeout", "error", 1}, {"deactivate", "ok", 0},
	} {
		if got := commandCount(t, m, tt.command, tt.result); got != tt.want {
			t.Errorf("comet_admin_commands_total{command=%q,result=%q} = %v, want %v", tt.command, tt.result, got, tt.want)
		}
	}
	var levels []string
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var rec struct{ Level, Msg string }
		json.Unmarshal([]byte(line), &rec)
		levels = append(levels, rec.Level+" "+rec.Msg)
	}
	want := []string{
		"INFO admin command applied", "INFO admin command applied", "INFO admin command applied",
		"WARN admin command refused", "WARN admin command refused", "WARN admin command failed",
	}
	if strings.Join(levels, "|") != strings.Join(want, "|") {
		t.Fatalf("logs %q, want %q", levels, want)
	}
}

type refusing struct{ *target }

func (refusing) SetTimeout(time.Duration, bool) error { return errors.New("frozen") }

func commandCount(t *testing.T, m *metrics.Metrics, command, result string) float64 {
	t.Helper()
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "comet_admin_commands_total" {
			continue
		}
	series:
		for _, s := range f.GetMetric() {
			for _, l := range s.GetLabel() {
				if (l.GetName() == "command" && l.GetValue() != command) || (l.GetName() == "result" && l.GetValue() != result) {
					continue series
				}
			}
			return s.GetCounter().GetValue()
		}
	}
	return 0
}

// The client's answers to what a server might say: an answer that is
// neither ok nor error, a status that is not JSON, a refused status, and a
// server that hangs up without answering.
func TestClientUnexpectedAnswers(t *testing.T) {
	bounded.Test(t, 30*time.Second)
	serve := func(answer string) string {
		path := filepath.Join(t.TempDir(), "odd.sock")
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				bufio.NewReader(c).ReadString('\n')
				io.WriteString(c, answer)
				c.Close()
			}
		}()
		return path
	}
	if err := (Client{Path: serve("maybe\n")}).Run(Command{Verb: Activate}); err == nil || !strings.Contains(err.Error(), `unexpected answer to "comet:activate": "maybe"`) {
		t.Errorf("odd answer: %v", err)
	}
	if _, err := (Client{Path: serve("{nope\n")}).Status(); err == nil || !strings.Contains(err.Error(), "status answer is not JSON") {
		t.Errorf("status not JSON: %v", err)
	}
	var refused *RefusedError
	if _, err := (Client{Path: serve("error: busy\n")}).Status(); !errors.As(err, &refused) || refused.Reason != "busy" || refused.Command != "comet:status" {
		t.Errorf("refused status: %v", err)
	}
	if _, err := (Client{Path: serve("")}).Status(); !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "reading answer") {
		t.Errorf("hung up: %v", err)
	}
	silent := serve("")
	// A server that accepts and never answers: the client gives up at its timeout.
	ln2, _ := net.Listen("unix", silent+".2")
	defer ln2.Close()
	go func() {
		c, err := ln2.Accept()
		if err == nil {
			defer c.Close()
			io.Copy(io.Discard, c)
		}
	}()
	start := time.Now()
	if _, err := (Client{Path: silent + ".2", Timeout: 200 * time.Millisecond}).Do("comet:status"); !errors.Is(err, ErrUnreachable) {
		t.Errorf("silent server: %v", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("the client waited %v past its 200ms timeout", took)
	}
}

// A line one writer leaves without its newline is dropped when it closes
// the pipe, not joined to the next writer's first line (issue 12, finding
// 4).
func TestPipeDropsAFragmentAtItsWritersEnd(t *testing.T) {
	bounded.Test(t, time.Minute)
	path := filepath.Join(t.TempDir(), "cmd.fifo")
	tg := &target{activated: true, timeout: time.Second}
	logs := &syncbuffer.Buffer{}
	p, err := OpenPipe(path, &Executor{Target: tg, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	go p.Serve()
	defer p.Close()
	write := func(s string) {
		w, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		w.WriteString(s)
		w.Close()
	}
	write("comet:deactivate")
	// The next writer comes once the first is gone: a writer that opens the
	// pipe while another has it open shares its session.
	bounded.Wait(t, "the fragment dropped", 5*time.Second, func() bool {
		return strings.Contains(logs.String(), "a line without its newline when the writer left")
	})
	write("comet:set_timeout 7\n")
	bounded.Wait(t, "the second writer's line applied", 5*time.Second, func() bool { return tg.Status().TimeoutDuration() == 7*time.Second })
	if !tg.Status().Activated {
		t.Fatal("the fragment without a newline was applied")
	}
}

// A session whose lines all end with a newline drops nothing and warns of
// nothing; Close returns even while a writer holds the FIFO open, or
// while no writer has it; neither leaves a descriptor behind.
func TestPipeSessions(t *testing.T) {
	bounded.Test(t, time.Minute)
	fds := func() int {
		entries, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(entries)
	}
	before := fds()
	path := filepath.Join(t.TempDir(), "cmd.fifo")
	tg := &target{activated: true, timeout: time.Second}
	logs := &syncbuffer.Buffer{}
	open := func() *Pipe {
		p, err := OpenPipe(path, &Executor{Target: tg, Logger: slog.New(slog.NewTextHandler(logs, nil))})
		if err != nil {
			t.Fatal(err)
		}
		go p.Serve()
		return p
	}

	// A writer that leaves after whole lines: its end is no fragment. The
	// reader sees the end at once; a warning would be logged in
	// microseconds, so a quiet 300ms says there is none.
	p := open()
	w, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.WriteString("comet:set_timeout 3\n")
	w.Close()
	bounded.Wait(t, "the line applied", 5*time.Second, func() bool { return tg.Status().TimeoutDuration() == 3*time.Second })
	if bounded.Until(300*time.Millisecond, func() bool { return strings.Contains(logs.String(), "without its newline") }) {
		t.Fatalf("a fragment reported for a session of whole lines:\n%s", logs)
	}
	p.Close() // no writer: Serve waits in open for one
	if after := fds(); after != before {
		t.Fatalf("%d descriptors open before the pipe, %d after it closed", before, after)
	}

	// Close while a writer holds the FIFO open.
	p = open()
	w, err = os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.WriteString("comet:set_timeout 4\n")
	bounded.Wait(t, "the line applied", 5*time.Second, func() bool { return tg.Status().TimeoutDuration() == 4*time.Second })
	closed := make(chan error, 1)
	go func() { closed <- p.Close() }()
	if err := bounded.Recv(t, "Close with a writer connected", 5*time.Second, closed); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if after := fds(); after != before {
		t.Fatalf("%d descriptors open before the pipe, %d after it closed", before, after)
	}
}
