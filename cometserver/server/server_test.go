package server

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cometop/comet-operator/cometserver/admin"
	"github.com/cometop/comet-operator/cometserver/cometclient"
	"github.com/cometop/comet-operator/cometserver/config"
	"github.com/cometop/comet-operator/cometserver/contract"
	"github.com/cometop/comet-operator/test/bounded"
)

// running is a Server serving on loopback ports.
type running struct {
	t      *testing.T
	s      *Server
	socket string
	stop   context.CancelFunc
	done   chan error
}

func start(t *testing.T, args ...string) *running {
	t.Helper()
	bounded.Test(t, time.Minute)
	socket := filepath.Join(t.TempDir(), "admin.sock")
	cfg, err := config.Load(append([]string{"--listen", "127.0.0.1:0", "--publisher-listen", "127.0.0.1:0",
		"--admin-socket", socket}, args...), func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{t: t, s: s, socket: socket, stop: cancel, done: make(chan error, 1)}
	go func() { r.done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		bounded.Recv(t, "Run to return", 15*time.Second, r.done)
	})
	bounded.Wait(t, "the server ready", 5*time.Second, func() bool { return r.get("/readyz") == 200 })
	return r
}

func (r *running) get(path string) int {
	resp, err := http.Get("http://" + r.s.PublisherAddr() + path)
	if err != nil {
		return -1
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// Status, on the admin socket and in process, reports every field.
func TestStatus(t *testing.T) {
	bounded.Test(t, time.Minute)
	before := time.Now().UTC().Truncate(time.Second)
	r := start(t, "--max-virtual-channels", "3", "--timeout", "7s", "--activated=false", "--history-size", "7", "--history-ttl", "90s")
	after := time.Now().UTC()
	r.s.Hub().Create(context.Background(), "a")
	r.s.Hub().Create(context.Background(), "b")
	st, err := admin.Client{Path: r.socket}.Status()
	if err != nil {
		t.Fatal(err)
	}
	started, err := time.Parse(time.RFC3339, st.StartedAt)
	if err != nil || started.Before(before) || started.After(after) || !strings.HasSuffix(st.StartedAt, "Z") {
		t.Fatalf("started_at %q, want between %v and %v, in UTC", st.StartedAt, before, after)
	}
	want := contract.Status{Activated: false, Timeout: 7, TimeoutNanoseconds: int64(7 * time.Second), Channels: 2,
		MaxVirtualChannels: st.MaxVirtualChannels, Waiting: 0, Draining: false, Version: Version, PID: os.Getpid(), StartedAt: st.StartedAt,
		HistorySize: 7, HistoryTTL: 90, HistoryTTLNs: int64(90 * time.Second),
		Broker: contract.BrokerStatus{Name: "memory", Ready: true}}
	if st != want || st.MaxVirtualChannels == nil || *st.MaxVirtualChannels != 3 {
		t.Fatalf("status %+v, want %+v with max 3", st, want)
	}

	// set_history changes the bounds live: status shows them and the
	// next write keeps at most the new size.
	if err := (admin.Client{Path: r.socket}).Run(admin.Command{Verb: admin.SetHistory, HistorySize: 2, HistoryTTL: 1500 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	if st, err := (admin.Client{Path: r.socket}).Status(); err != nil || st.HistorySize != 2 || st.HistoryTTL != 1.5 || st.HistoryTTLNs != int64(1500*time.Millisecond) {
		t.Fatalf("after set_history: %+v, %v", st, err)
	}
	for range 3 {
		r.s.Hub().Write(context.Background(), "a", []byte("m"))
	}
	if info, err := r.s.Hub().Info(context.Background(), "a"); err != nil || info.HistoryLen != 2 {
		t.Fatalf("after set_history 2: %+v, %v", info, err)
	}

	// Waiting counts a poll while it waits.
	r.s.Activate()
	c := make(chan cometclient.Reply, 1)
	go func() {
		rep, _ := cometclient.Poll(context.Background(), http.DefaultClient, "http://"+r.s.ClientAddr()+"/comet", "a")
		c <- rep
	}()
	bounded.Wait(t, "one waiting", 5*time.Second, func() bool { return r.s.Status().Waiting == 1 })
	if err := r.s.SetTimeout(0, false); err == nil {
		t.Fatal("a zero timeout accepted")
	}
	r.s.SetTimeout(time.Second, true)
	if rep := bounded.Recv(t, "the poll killed", 5*time.Second, c); rep.Status != 503 {
		t.Fatalf("KILL: %d", rep.Status)
	}
	r.s.Deactivate()
	bounded.Wait(t, "none waiting", 5*time.Second, func() bool { return r.s.Status().Waiting == 0 })
	if st := r.s.Status(); st.Activated || st.TimeoutDuration() != time.Second {
		t.Fatalf("after deactivate and set_timeout: %+v", st)
	}
	if r.s.State().Snapshot().Activated {
		t.Fatal("State does not show the deactivation")
	}
}

// /readyz does not depend on activation; it turns false when the server
// drains, while waiting polls get 503 and the publisher API asks to come
// back; then every listener closes and the socket file goes.
func TestReadinessAndDrain(t *testing.T) {
	bounded.Test(t, time.Minute)
	r := start(t, "--shutdown-grace", "10s")
	r.s.Deactivate()
	if code := r.get("/readyz"); code != 200 {
		t.Fatalf("readyz while deactivated: %d, want 200", code)
	}
	r.s.Activate()
	r.s.Hub().Create(context.Background(), "a")
	polled := make(chan cometclient.Reply, 1)
	go func() {
		rep, _ := cometclient.Poll(context.Background(), http.DefaultClient, "http://"+r.s.ClientAddr()+"/comet", "a")
		polled <- rep
	}()
	bounded.Wait(t, "one waiting", 5*time.Second, func() bool { return r.s.Status().Waiting == 1 })

	// A request whose body never comes keeps the client endpoint's
	// shutdown waiting, which holds the drain open for the checks below.
	stalled, err := net.Dial("tcp", r.s.ClientAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	// Expect: 100-continue makes net/http say when the handler reads the
	// body: then the request is in progress before the drain begins.
	stalled.Write([]byte("POST /comet HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ocsigen-comet\r\nExpect: 100-continue\r\nContent-Length: 100\r\n\r\n"))
	stalled.SetReadDeadline(time.Now().Add(5 * time.Second))
	if resp, err := http.ReadResponse(bufio.NewReader(stalled), nil); err != nil || resp.StatusCode != 100 {
		t.Fatalf("no 100 Continue: %v %v", resp, err)
	}
	stalled.Write([]byte("registration="))

	r.stop()
	if rep := bounded.Recv(t, "the waiting poll's answer", 5*time.Second, polled); rep.Status != 503 {
		t.Fatalf("waiting poll on drain: %d, want 503", rep.Status)
	}
	bounded.Wait(t, "readyz to turn 503", 5*time.Second, func() bool { return r.get("/readyz") == 503 })
	if st := r.s.Status(); !st.Draining {
		t.Fatalf("status while draining: %+v", st)
	}
	resp, err := http.Post("http://"+r.s.PublisherAddr()+"/v1/channels", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "1" || !resp.Close {
		t.Fatalf("publisher while draining: %d, Retry-After %q, close %v", resp.StatusCode, resp.Header.Get("Retry-After"), resp.Close)
	}
	rep, err := cometclient.Poll(context.Background(), http.DefaultClient, "http://"+r.s.ClientAddr()+"/comet", "a")
	if err == nil && rep.Status != 503 {
		t.Fatalf("a new poll while draining: %d", rep.Status)
	}

	stalled.Close() // the last connection goes: Run returns
	if err := bounded.Recv(t, "Run to return", 15*time.Second, r.done); err != nil {
		t.Fatalf("Run: %v", err)
	}
	r.done <- nil // for the cleanup
	if _, err := os.Stat(r.socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("the admin socket file stayed")
	}
	for _, addr := range []string{r.s.ClientAddr(), r.s.PublisherAddr()} {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			t.Fatalf("%s still accepts after Run", addr)
		}
	}
}

// New binds everything before serving; when one bind fails, the ones made
// before it are released.
func TestNewReleasesWhatItBoundOnError(t *testing.T) {
	bounded.Test(t, time.Minute)
	free := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().String()
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	client := free()
	socket := filepath.Join(t.TempDir(), "admin.sock")
	cfg, err := config.Load([]string{"--listen", client, "--publisher-listen", busy.Addr().String(), "--admin-socket", socket}, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(cfg, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "publisher_listen") {
		t.Fatalf("a busy publisher port: %v", err)
	}
	ln, err := net.Listen("tcp", client)
	if err != nil {
		t.Fatalf("the client port stayed bound after New failed: %v", err)
	}
	ln.Close()
	if _, err := os.Stat(socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("an admin socket was made although New failed")
	}

	cfg.Listen = "127.0.0.1:0"
	cfg.PublisherListen = "127.0.0.1:0"
	cfg.PublisherTokenFile = filepath.Join(t.TempDir(), "missing")
	if _, err := New(cfg, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "publisher token") {
		t.Fatalf("a missing token file: %v", err)
	}
	cfg.PublisherTokenFile = ""
	cfg.Timeout.Duration = 0
	if _, err := New(cfg, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "timeout") {
		t.Fatalf("an invalid config: %v", err)
	}
}

// The client listener serves comet.js beside the endpoint, the demo when
// asked, and the publisher listener the server's metrics.
func TestWhatIsServed(t *testing.T) {
	bounded.Test(t, time.Minute)
	r := start(t, "--demo", "--listen", "127.0.0.1:0")
	for path, want := range map[string]string{"/comet.js": "global.Comet = Comet", "/comet.mjs": "export default", "/": "<!doctype html>"} {
		resp, err := http.Get("http://" + r.s.ClientAddr() + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(strings.ToLower(string(b)), strings.ToLower(want)) {
			t.Fatalf("%s: %d, %.80q", path, resp.StatusCode, b)
		}
		// The client follows the server's version: revalidated each time.
		if path != "/" && (resp.Header.Get("Cache-Control") != "no-cache" || resp.Header.Get("Content-Type") != "text/javascript; charset=utf-8") {
			t.Fatalf("%s: Cache-Control %q, Content-Type %q", path, resp.Header.Get("Cache-Control"), resp.Header.Get("Content-Type"))
		}
	}
	if r.s.Status().Channels != 4 {
		t.Fatalf("the demo's channels: %d, want 4", r.s.Status().Channels)
	}
	resp, err := http.Get("http://" + r.s.PublisherAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"comet_channels 4", "comet_waiting_requests 0"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	var st contract.Status
	out, _ := json.Marshal(r.s.Status())
	json.Unmarshal(out, &st)
	if st.PID != os.Getpid() {
		t.Fatalf("pid %d", st.PID)
	}
}

// The HTTP servers' limits are the settings (header size and time) and
// net/http's, for the connections the long-poll handler takes over too;
// there is no server-wide write timeout, and idle connections close after
// two minutes.
func TestHTTPLimits(t *testing.T) {
	r := start(t, "--max-header-bytes", "2048", "--read-header-timeout", "300ms")
	for _, srv := range []*http.Server{r.s.client, r.s.publisher} {
		if srv.MaxHeaderBytes != 2048 || srv.ReadHeaderTimeout != 300*time.Millisecond || srv.IdleTimeout != 2*time.Minute || srv.WriteTimeout != 0 {
			t.Fatalf("http.Server limits %d %v %v %v", srv.MaxHeaderBytes, srv.ReadHeaderTimeout, srv.IdleTimeout, srv.WriteTimeout)
		}
	}
	c, err := net.Dial("tcp", r.s.ClientAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("POST /comet HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("b", 8000) + "\r\n\r\n"))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 431 {
		t.Fatalf("a head over max_header_bytes: %v %v", resp, err)
	}
	slow, err := net.Dial("tcp", r.s.ClientAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	slow.Write([]byte("POST /comet HTTP/1.1\r\n"))
	slow.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	if _, err := slow.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a head that never ends: %v, want the connection closed", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("closed after %v, with a 300ms header timeout", took)
	}
}

// Every refusal is written at once, whatever the client does with the rest
// of its body, and the connection then closes (issue 12, finding 2: a
// refused request whose body never came got no answer, ever). A body that
// stalls is refused after the read timeout.
func TestRefusalsAreWrittenAndClosed(t *testing.T) {
	r := start(t, "--publisher-token-file", writeToken(t, "tok"), "--publisher-listen", "127.0.0.1:0", "--read-timeout", "300ms")
	client, publisher := r.s.ClientAddr(), r.s.PublisherAddr()
	for _, tt := range []struct {
		name, addr, head string
		status           int
	}{
		{"415 at the comet endpoint", client, "POST /comet HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n", 415},
		{"413 by its declared length", client, "POST /comet HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ocsigen-comet\r\nContent-Length: 100000\r\n\r\n", 413},
		{"405 at the comet endpoint", client, "PUT /comet HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n", 405},
		{"404 beside it", client, "POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n", 404},
		{"405 for comet.js", client, "POST /comet.js HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n", 405},
		{"401 at the publisher", publisher, "POST /v1/channels HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n", 401},
		{"404 at the publisher", publisher, "POST /v2 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\nContent-Length: 1000\r\n\r\n", 404},
		{"405 at the publisher", publisher, "PUT /v1/channels HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\nContent-Length: 1000\r\n\r\n", 405},
		{"413 at the publisher", publisher, "POST /v1/channels/c/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\nContent-Length: 100000000\r\n\r\n", 413},
		{"a stalled create", publisher, "POST /v1/channels HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\nContent-Length: 10\r\n\r\n{", 400},
		{"a stalled comet body", client, "POST /comet HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ocsigen-comet\r\nContent-Length: 100\r\n\r\nregistration=", 400},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := net.Dial("tcp", tt.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write([]byte(tt.head))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			start := time.Now()
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("no answer: %v", err)
			}
			io.Copy(io.Discard, resp.Body)
			if resp.StatusCode != tt.status || !resp.Close {
				t.Fatalf("%d (close %v), want %d and close", resp.StatusCode, resp.Close, tt.status)
			}
			if took := time.Since(start); took > 3*time.Second {
				t.Fatalf("answered after %v", took)
			}
			if _, err := br.ReadByte(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("the connection stayed open: %v", err)
			}
		})
	}
}

func writeToken(t *testing.T, token string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
