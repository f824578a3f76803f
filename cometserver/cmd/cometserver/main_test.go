package main_test

// End-to-end tests (an external test package, so the names server and ctl are free): the real binary, built here, serving on loopback, and
// steered by its own ctl over a real Unix socket.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cometop/comet-operator/cometserver/admin"
	"github.com/cometop/comet-operator/cometserver/cometclient"
	"github.com/cometop/comet-operator/cometserver/contract"
	"github.com/cometop/comet-operator/test/bounded"
)

// testDeadline bounds each test: a hang fails it by name, with every
// goroutine's stack, well before go test's global timeout.
const testDeadline = 2 * time.Minute

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cometserver-e2e")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "cometserver")
	// The race runtime sleeps a second before a successful exit (GORACE
	// atexit_sleep_ms, default 1000): the binary built here runs dozens of
	// times, as ctl, so it is told not to.
	os.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	build := exec.Command("go", "build", "-race", "-o", binary, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building cometserver:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// server is a running "cometserver serve".
type server struct {
	t          *testing.T
	cmd        *exec.Cmd
	socket     string
	pipe       string
	client     string // http://host:port/comet
	publisher  string // http://host:port
	stderr     *bytes.Buffer
	stderrDone chan struct{}
}

func startServer(t *testing.T, yaml string, args ...string) *server {
	t.Helper()
	dir := t.TempDir()
	s := &server{t: t, socket: filepath.Join(dir, "admin.sock"), pipe: filepath.Join(dir, "cmd.fifo"), stderr: &bytes.Buffer{}, stderrDone: make(chan struct{})}
	cfg := filepath.Join(dir, "comet.yaml")
	os.WriteFile(cfg, []byte(yaml), 0o600)
	s.cmd = exec.Command(binary, append([]string{"serve", "--config", cfg,
		"--listen", "127.0.0.1:0", "--publisher-listen", "127.0.0.1:0",
		"--admin-socket", s.socket, "--command-pipe", s.pipe}, args...)...)
	pipe, _ := s.cmd.StderrPipe()
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if s.cmd.ProcessState == nil {
			s.cmd.Process.Kill()
			s.cmd.Wait()
		}
		if t.Failed() { // what the server said, for a failure seen once in CI
			select {
			case <-s.stderrDone:
				log := s.stderr.Bytes()
				t.Logf("%s's log (last 8 KiB):\n%s", s.client, log[max(0, len(log)-8<<10):])
			case <-time.After(5 * time.Second):
			}
		}
	})
	// Learn the bound addresses from the start-up log line.
	started := make(chan map[string]any, 1)
	go func() {
		defer close(s.stderrDone)
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			s.stderr.Write(append(sc.Bytes(), '\n'))
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec["msg"] == "comet server started" {
				started <- rec
			}
		}
	}()
	rec := bounded.Recv(t, "the server's start-up log line", 30*time.Second, started)
	s.client = "http://" + rec["listen"].(string) + "/comet"
	s.publisher = "http://" + rec["publisher_listen"].(string)
	return s
}

// exit waits for the process to end, within d, and returns what Wait
// returns. Its log is read to the end first: Wait closes the pipe.
func (s *server) exit(d time.Duration) error {
	s.t.Helper()
	deadline := time.Now().Add(d)
	bounded.Recv(s.t, "the server to exit", d, s.stderrDone)
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	return bounded.Recv(s.t, "the server to exit", time.Until(deadline)+time.Second, done)
}

// ctl runs "cometserver ctl" and returns its exit code and output.
func ctl(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"ctl"}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), out.String(), errOut.String()
	} else if err != nil {
		t.Fatal(err)
	}
	return 0, out.String(), errOut.String()
}

func (s *server) ctl(args ...string) (int, string, string) {
	s.t.Helper()
	return ctl(s.t, append([]string{"--socket", s.socket}, args...)...)
}

func (s *server) status() contract.Status {
	s.t.Helper()
	code, out, errOut := s.ctl("status")
	var st contract.Status
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
		s.t.Fatalf("ctl status: %d %q %q", code, out, errOut)
	}
	return st
}

func (s *server) createChannel(name string) {
	s.t.Helper()
	resp, err := http.Post(s.publisher+"/v1/channels", "application/json", strings.NewReader(`{"name":"`+name+`"}`))
	if err != nil || resp.StatusCode != 201 {
		s.t.Fatalf("create channel: %v %v", resp, err)
	}
	resp.Body.Close()
}

// poll starts a long poll; its status code arrives on the channel (-1 if
// the request failed).
func (s *server) poll(ids string) <-chan int {
	c := make(chan int, 1)
	go func() {
		r, err := cometclient.Poll(context.Background(), http.DefaultClient, s.client, ids)
		if err != nil {
			r.Status = -1
		}
		c <- r.Status
	}()
	return c
}

func (s *server) waitWaiting(n int) {
	s.t.Helper()
	bounded.Wait(s.t, fmt.Sprintf("%d waiting requests", n), 10*time.Second, func() bool { return s.status().Waiting == n })
}

func statusCode(t *testing.T, c <-chan int) int {
	t.Helper()
	return bounded.Recv(t, "the poll's reply", 10*time.Second, c)
}

// sent is the commands a ctl apply result says it sent, joined.
func sent(t *testing.T, out string) string {
	t.Helper()
	var res contract.ApplyResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Sent == nil {
		t.Fatalf("ctl apply printed %q: %v", out, err)
	}
	return strings.Join(res.Sent, ", ")
}

func TestCtlApply(t *testing.T) {
	bounded.Test(t, testDeadline)
	s := startServer(t, "timeout: 20s\nactivated: true\nmax_virtual_channels: 4\n")
	st := s.status()
	if !st.Activated || st.Timeout != 20 || st.MaxVirtualChannels == nil || *st.MaxVirtualChannels != 4 {
		t.Fatalf("initial status from the config file: %+v", st)
	}

	code, out, errOut := s.ctl("apply", "--activated=false", "--timeout=5s")
	if code != 0 || errOut != "" || sent(t, out) != "comet:deactivate, comet:set_timeout 5" || !strings.HasPrefix(out, `{"state":{"activated":false,"timeout":5,`) {
		t.Fatalf("apply: %d %q %q", code, out, errOut)
	}
	if code, out, _ := s.ctl("apply", "--activated=false", "--timeout=5s", "--kill-on-change"); code != 0 || sent(t, out) != "" {
		t.Fatalf("apply of the held state sent %q (exit %d)", out, code)
	}
	if code, out, _ := s.ctl("apply", "--activated=true", "--timeout=5s", "--kill-on-change"); code != 0 || sent(t, out) != "comet:activate" {
		t.Fatalf("activate: %d %q", code, out)
	}

	// KILL goes only with a real timeout change.
	s.createChannel("c")
	waiting := s.poll("c")
	s.waitWaiting(1)
	if code, out, _ := s.ctl("apply", "--activated=true", "--timeout=5000ms", "--kill-on-change"); code != 0 || sent(t, out) != "" {
		t.Fatalf("same timeout: %d %q", code, out)
	}
	if st := s.status(); st.Waiting != 1 {
		t.Fatal("a KILL went out although the timeout did not change")
	}
	if code, out, _ := s.ctl("apply", "--activated=true", "--timeout=7s", "--kill-on-change"); code != 0 || sent(t, out) != "comet:set_timeout 7 KILL" {
		t.Fatalf("retime with kill: %d %q", code, out)
	}
	if got := statusCode(t, waiting); got != 503 {
		t.Fatalf("waiting client got %d after KILL, want 503", got)
	}
	waiting = s.poll("c")
	s.waitWaiting(1)
	if code, out, _ := s.ctl("apply", "--activated=true", "--timeout=9s"); code != 0 || sent(t, out) != "comet:set_timeout 9" {
		t.Fatalf("retime without kill: %d %q", code, out)
	}
	if st := s.status(); st.Waiting != 1 || st.TimeoutDuration() != 9*time.Second {
		t.Fatalf("after a retime without kill: %+v", st)
	}
	if code, _, _ := s.ctl("deactivate"); code != 0 || statusCode(t, waiting) != 503 {
		t.Fatal("deactivate did not answer the waiting client 503")
	}
	for _, args := range [][]string{{"activate"}, {"set-timeout", "3", "--kill"}, {"set-timeout", "--kill", "2.5"}, {"set-timeout", "4"}} {
		if code, _, errOut := s.ctl(args...); code != 0 {
			t.Fatalf("ctl %q: %d %q", args, code, errOut)
		}
	}
	if st := s.status(); !st.Activated || st.TimeoutDuration() != 4*time.Second {
		t.Fatalf("after the simple commands: %+v", st)
	}
}

func TestCommandPipe(t *testing.T) {
	bounded.Test(t, testDeadline)
	s := startServer(t, "")
	f, err := os.OpenFile(s.pipe, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("comet:set_timeout 12\ncomet:garbage\ncomet:deactivate\n")
	f.Close()
	var st contract.Status
	if !bounded.Until(10*time.Second, func() bool {
		st = s.status()
		return !st.Activated && st.TimeoutDuration() == 12*time.Second
	}) {
		t.Fatalf("pipe commands not applied within 10s: %+v", st)
	}
}

func TestCtlErrors(t *testing.T) {
	bounded.Test(t, testDeadline)
	s := startServer(t, "")
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.sock")
	ln, _ := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	ln.SetUnlinkOnClose(false)
	ln.Close() // the file stays, nobody listens: connection refused

	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{}, 2, "error: no command"},
		{[]string{"reboot"}, 2, `unknown command "reboot"`},
		{[]string{"activate", "now"}, 2, "activate takes no argument"},
		{[]string{"set-timeout"}, 2, "exactly one SECONDS"},
		{[]string{"set-timeout", "soon"}, 2, "decimal number"},
		{[]string{"set-timeout", "0"}, 2, "greater than 0"},
		{[]string{"apply", "--timeout=5s"}, 2, `--activated must be true or false, got ""`},
		{[]string{"apply", "--activated=maybe", "--timeout=5s"}, 2, "--activated must be true or false"},
		{[]string{"apply", "--activated=true"}, 2, "--timeout must be a duration"},
		{[]string{"apply", "--activated=true", "--timeout=-1s"}, 2, "--timeout must be a duration greater than 0"},
		{[]string{"apply", "--activated=true", "--timeout=5s", "extra"}, 2, "no positional argument"},
		{[]string{"--socket", filepath.Join(dir, "none.sock"), "status"}, 3, "admin socket unreachable"},
		{[]string{"--socket", stale, "activate"}, 3, "connection refused"},
		{[]string{"--socket", stale, "apply", "--activated=true", "--timeout=1s"}, 3, "admin socket unreachable"},
	}
	for _, tt := range tests {
		code, out, errOut := s.ctl(tt.args...)
		// An apply that ran prints its result, with the error, whatever
		// its exit code; no other command prints on a failure.
		if ran := tt.code == 3 && tt.args[2] == "apply"; ran {
			if !strings.HasPrefix(out, `{"sent":[],"error":"admin socket unreachable`) {
				t.Errorf("ctl %q printed %q", tt.args, out)
			}
			out = ""
		}
		if code != tt.code || !strings.Contains(errOut, tt.want) || out != "" {
			t.Errorf("ctl %q: exit %d, stderr %q; want exit %d with %q", tt.args, code, errOut, tt.code, tt.want)
		}
	}
	if st := s.status(); !st.Activated || st.TimeoutDuration() != 20*time.Second {
		t.Fatalf("a refused ctl changed the server: %+v", st)
	}
}

// refusingTarget is a stand-in server state, behind the real admin socket,
// that refuses set_timeout or ignores everything: the two ways a real server
// could fail to reach the state ctl asks for.
type refusingTarget struct{ ignore bool }

func (r refusingTarget) Activate()                        {}
func (r refusingTarget) Deactivate()                      {}
func (r refusingTarget) SetMaxVirtualChannels(*int) error { return fmt.Errorf("refused") }
func (r refusingTarget) SetHistory(int, time.Duration) error {
	return fmt.Errorf("refused")
}
func (r refusingTarget) SetTimeout(time.Duration, bool) error {
	if r.ignore {
		return nil
	}
	return fmt.Errorf("timeouts are frozen")
}
func (r refusingTarget) Status() contract.Status {
	return contract.Status{Activated: true, Timeout: 20, TimeoutNanoseconds: int64(20 * time.Second)}
}

func TestCtlAgainstRefusingServer(t *testing.T) {
	bounded.Test(t, testDeadline)
	for _, tt := range []struct {
		ignore bool
		want   string
	}{
		{false, `error: server refused "comet:set_timeout 5": timeouts are frozen`},
		{true, "error: not converged: server holds activated=true timeout=20s, want activated=true timeout=5s"},
	} {
		path := filepath.Join(t.TempDir(), "admin.sock")
		sock, err := admin.ListenSocket(path, &admin.Executor{Target: refusingTarget{tt.ignore}, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		go sock.Serve()
		code, _, errOut := ctl(t, "--socket", path, "apply", "--activated=true", "--timeout=5s")
		if code != 1 || !strings.Contains(errOut, tt.want) {
			t.Errorf("exit %d, stderr %q; want 1 with %q", code, errOut, tt.want)
		}
		code, _, errOut = ctl(t, "--socket", path, "set-timeout", "5")
		if !tt.ignore && (code != 1 || !strings.Contains(errOut, "timeouts are frozen")) {
			t.Errorf("set-timeout: exit %d, stderr %q", code, errOut)
		}
		sock.Close()
	}
}

func TestGracefulShutdown(t *testing.T) {
	bounded.Test(t, testDeadline)
	s := startServer(t, "shutdown_grace: 5s\n")
	s.createChannel("c")
	waiting := s.poll("c")
	s.waitWaiting(1)
	start := time.Now()
	s.cmd.Process.Signal(syscall.SIGTERM)
	if got := statusCode(t, waiting); got != 503 {
		t.Fatalf("waiting client got %d on SIGTERM, want 503", got)
	}
	if err := s.exit(10 * time.Second); err != nil {
		t.Fatalf("exit: %v\n%s", err, s.stderr)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("shutdown took %v, over the grace period", took)
	}
	if _, err := os.Stat(s.socket); !os.IsNotExist(err) {
		t.Fatal("the admin socket file stayed after exit")
	}
	// JSON logs; the open-file limit, which bounds the clients one process
	// can hold, is logged at start.
	log := s.stderr.String()
	if !strings.Contains(log, `"msg":"stopped"`) || !strings.Contains(log, `"msg":"open-file limit bounds the clients this process can hold","soft":`) {
		t.Fatalf("log:\n%s", log)
	}
}

// /readyz does not follow activation (the operator activates ready pods),
// but turns 503 as soon as SIGTERM arrives, while the process drains: a
// request held half-read keeps net/http's Shutdown, and so the process,
// waiting, which makes the drain window observable. During it the
// publisher API refuses with 503 and Retry-After: 1; once the held request
// is answered (503) the process exits 0, well before its grace period.
func TestReadyzDuringDeactivationAndDrain(t *testing.T) {
	bounded.Test(t, testDeadline)
	const grace = 60 * time.Second // far longer than the test takes
	s := startServer(t, fmt.Sprintf("shutdown_grace: %v\n", grace))
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	do := func(method, path string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest(method, s.publisher+path, nil)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("%s %s: reading the body: %v", method, path, err)
		}
		return resp, string(b)
	}
	readyz := func() int { t.Helper(); resp, _ := do("GET", "/readyz"); return resp.StatusCode }

	if got := readyz(); got != 200 {
		t.Fatalf("/readyz of a fresh server: %d", got)
	}
	if code, _, errOut := s.ctl("deactivate"); code != 0 {
		t.Fatalf("ctl deactivate: %d %q", code, errOut)
	}
	if st := s.status(); st.Activated || st.Draining {
		t.Fatalf("after deactivate: %+v", st)
	}
	if got := statusCode(t, s.poll("c")); got != 503 {
		t.Fatalf("a poll while deactivated got %d, want 503", got)
	}
	if got := readyz(); got != 200 {
		t.Fatalf("/readyz of a deactivated server: %d, want 200 (it must stay ready)", got)
	}

	// A comet request whose body is 100 bytes, of which only 40 come.
	// With Expect: 100-continue, net/http answers "100 Continue" once the
	// handler reads the body: from then on the request is in progress and
	// Shutdown must wait for it.
	u, _ := url.Parse(s.client)
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(testDeadline))
	body := "registration=c&pad=" + strings.Repeat("x", 81)
	if len(body) != 100 {
		t.Fatalf("body of %d bytes", len(body))
	}
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: %s\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n",
		u.Path, u.Host, cometclient.ContentType)
	br := bufio.NewReader(conn)
	if line, err := br.ReadString('\n'); err != nil || line != "HTTP/1.1 100 Continue\r\n" {
		t.Fatalf("interim response %q, %v", line, err)
	}
	if line, err := br.ReadString('\n'); err != nil || line != "\r\n" {
		t.Fatalf("after 100 Continue: %q, %v", line, err)
	}
	if _, err := io.WriteString(conn, body[:40]); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	bounded.Wait(t, "/readyz to answer 503 after SIGTERM", 10*time.Second, func() bool { return readyz() == 503 })

	// Still draining: the held request keeps the process up.
	resp, body503 := do("POST", "/v1/channels")
	var apiErr struct{ Error string }
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "1" ||
		json.Unmarshal([]byte(body503), &apiErr) != nil || apiErr.Error != "unavailable" {
		t.Errorf("POST /v1/channels while draining: %d, Retry-After %q, %q; want 503 unavailable with Retry-After: 1",
			resp.StatusCode, resp.Header.Get("Retry-After"), body503)
	}
	if st := s.status(); !st.Draining {
		t.Errorf("status while draining: %+v", st)
	}
	if got := readyz(); got != 503 {
		t.Errorf("/readyz later in the drain: %d", got)
	}

	// The rest of the body: the request is answered 503, and closed.
	if _, err := io.WriteString(conn, body[40:]); err != nil {
		t.Fatal(err)
	}
	held, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("the held request's reply: %v", err)
	}
	held.Body.Close()
	if held.StatusCode != 503 || !held.Close {
		t.Errorf("the held request got %d (close %v), want 503 and Connection: close", held.StatusCode, held.Close)
	}
	if err := s.exit(10 * time.Second); err != nil {
		t.Fatalf("exit: %v, want exit code 0\n%s", err, s.stderr)
	}
	if took := time.Since(start); took >= grace {
		t.Fatalf("the drain took %v: it waited for the grace period", took)
	}
	// JSON logs; the open-file limit, which bounds the clients one process
	// can hold, is logged at start.
	log := s.stderr.String()
	if !strings.Contains(log, `"msg":"stopped"`) || !strings.Contains(log, `"msg":"open-file limit bounds the clients this process can hold","soft":`) {
		t.Fatalf("log:\n%s", log)
	}
}

func TestStartupErrors(t *testing.T) {
	bounded.Test(t, testDeadline)
	s := startServer(t, "")
	dir := t.TempDir()
	cfg := filepath.Join(dir, "bad.yaml")
	os.WriteFile(cfg, []byte("timeout: 20\n"), 0o600)
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"serve", "--config", cfg}, 2, "timeout: want a duration such as 20s"},
		{[]string{"serve", "--publisher-listen", ":0"}, 2, "publisher_listen: without publisher_token_file"},
		{[]string{"serve", "--listen", "127.0.0.1:0", "--publisher-listen", "127.0.0.1:0", "--admin-socket", s.socket}, 1, "another server is listening there"},
		{[]string{"serve", "--listen", "127.0.0.1:0", "--publisher-listen", "127.0.0.1:0", "--admin-socket", filepath.Join(dir, "a.sock"),
			"--publisher-token-file", filepath.Join(dir, "missing")}, 1, "publisher token"},
		{[]string{"bogus"}, 2, `unknown subcommand "bogus"`},
		{[]string{}, 2, "usage: cometserver serve"},
	}
	for _, tt := range tests {
		cmd := exec.Command(binary, tt.args...)
		out, err := cmd.CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != tt.code || !strings.Contains(string(out), tt.want) {
			t.Errorf("cometserver %q: %v, output %q; want exit %d with %q", tt.args, err, out, tt.code, tt.want)
		}
	}
	if st := s.status(); !st.Activated {
		t.Fatal("the running server was disturbed")
	}
}

// Clients that hold their connections past the grace period are cut, and
// the stop is still a clean one: exit 0 within the grace (issue 12,
// finding 2: five stalled clients made SIGTERM exit 1 after the full grace).
func TestSIGTERMWithStalledClientsExitsZero(t *testing.T) {
	bounded.Test(t, testDeadline)
	s := startServer(t, "shutdown_grace: 1s\nread_timeout: 1h\n")
	addr := strings.TrimPrefix(strings.TrimSuffix(s.client, "/comet"), "http://")
	for range 5 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// Expect: 100-continue makes net/http say when the handler reads
		// the body: then the request is in progress, and its body stalls.
		c.Write([]byte("POST /comet HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ocsigen-comet\r\nExpect: 100-continue\r\nContent-Length: 100\r\n\r\n"))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || resp.StatusCode != 100 {
			t.Fatalf("no 100 Continue: %v %v", resp, err)
		}
		c.Write([]byte("registration="))
	}
	start := time.Now()
	s.cmd.Process.Signal(syscall.SIGTERM)
	if err := s.exit(10 * time.Second); err != nil {
		t.Fatalf("exit: %v\n%s", err, s.stderr)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("exited after %v, with a 1s grace", took)
	}
	if !strings.Contains(s.stderr.String(), "shutdown grace period over: open connections cut") {
		t.Fatalf("log:\n%s", s.stderr)
	}
}
