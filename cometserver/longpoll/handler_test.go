package longpoll

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cometop/comet-operator/cometserver/channels"
	"github.com/cometop/comet-operator/cometserver/channels/channelstest"
	"github.com/cometop/comet-operator/cometserver/engine"
	"github.com/cometop/comet-operator/cometserver/metrics"
	"github.com/cometop/comet-operator/cometserver/security"
	"github.com/cometop/comet-operator/test/bounded"
)

// env is a client endpoint on a real loopback listener.
type env struct {
	t       *testing.T
	reg     *channels.Hub
	state   *security.State
	metrics *metrics.Metrics
	h       *Handler
	url     string

	mu       sync.Mutex
	accepted map[string]*net.TCPConn // the server's side of each connection, by client address
	hijacks  atomic.Int64            // connections net/http reports hijacked
}

// mode is how a waiting request waits: inside net/http, or on a
// connection the handler took over (takeover.go). Production takes over.
type mode bool

const (
	plain    mode = false
	takeover mode = true
)

func (m mode) String() string {
	if m == takeover {
		return "takeover"
	}
	return "net-http"
}

// forEachMode runs a test once per mode.
func forEachMode(t *testing.T, test func(*testing.T, mode)) {
	bounded.Test(t, 2*time.Minute)
	for _, m := range []mode{takeover, plain} {
		t.Run(m.String(), func(t *testing.T) { test(t, m) })
	}
}

// envConfig is what a test may change in its endpoint.
type envConfig struct {
	mode    mode
	timeout time.Duration
	opts    Options
	// hub wraps the registry, to make things happen at chosen moments.
	hub func(Subscriber) Subscriber
	// accepted sees each connection the server accepts, to set socket
	// options on it.
	accepted func(net.Conn)
	// limits of the engine; nil: the server's defaults (history on).
	limits *engine.Limits
}

// defaultLimits are the server's default history bounds: every test runs
// with history on, so that a request that does not resume is shown to be
// unaffected by it.
var defaultLimits = engine.Limits{HistorySize: 100, HistoryTTL: 2 * time.Minute}

func newEnv(t *testing.T, m mode, timeout time.Duration, o Options, wrap ...func(Subscriber) Subscriber) *env {
	t.Helper()
	c := envConfig{mode: m, timeout: timeout, opts: o}
	if len(wrap) > 0 {
		c.hub = wrap[0]
	}
	return newEnvWith(t, c)
}

func newEnvWith(t *testing.T, c envConfig) *env {
	t.Helper()
	bounded.Test(t, 2*time.Minute)
	limits := defaultLimits
	if c.limits != nil {
		limits = *c.limits
	}
	e := &env{t: t, reg: channelstest.New(limits), state: security.New(true, c.timeout)}
	t.Cleanup(e.reg.Engine().Stop)
	var hub Subscriber = e.reg
	if c.hub != nil {
		hub = c.hub(hub)
	}
	if c.opts.Metrics == nil {
		c.opts.Metrics = metrics.New(metrics.Sources{Channels: func() float64 { return float64(channelstest.Len(e.reg)) }, Waiting: func() float64 { return float64(e.h.Waiting()) }})
	}
	e.metrics = c.opts.Metrics
	e.h = New(hub, e.state, c.opts)
	mux := http.NewServeMux()
	mux.Handle("/comet", e.h)
	mux.HandleFunc("/other", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "other "+r.Method)
	})
	srv := httptest.NewUnstartedServer(mux)
	// As in production (server.New): the http.Server and the handler share
	// the limits, for the connections the handler gives back.
	srv.Config.MaxHeaderBytes = c.opts.MaxHeaderBytes
	srv.Config.ReadHeaderTimeout = c.opts.ReadHeaderTimeout
	srv.Config.IdleTimeout = c.opts.IdleTimeout
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateHijacked {
			e.hijacks.Add(1)
		}
	}
	e.accepted = map[string]*net.TCPConn{}
	srv.Listener = acceptHook{srv.Listener, func(conn net.Conn) {
		e.mu.Lock()
		e.accepted[conn.RemoteAddr().String()] = conn.(*net.TCPConn)
		e.mu.Unlock()
		if c.accepted != nil {
			c.accepted(conn)
		}
	}}
	if c.mode == takeover {
		srv.Listener = e.h.Listener(srv.Listener)
	}
	srv.Start()
	t.Cleanup(func() {
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		e.h.Shutdown(ctx)
		e.reg.Engine().Stop()
	})
	e.url = srv.URL + "/comet"
	return e
}

// acceptHook calls f on every connection it accepts.
type acceptHook struct {
	net.Listener
	f func(net.Conn)
}

func (l acceptHook) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.f(c)
	}
	return c, err
}

// replies is how many long-poll replies the endpoint counted with code.
func (e *env) replies(code int) int {
	e.t.Helper()
	return int(counter(e.t, e.metrics, "comet_replies_total", "code", strconv.Itoa(code)))
}

// counter reads a counter of m; label and value select one series.
func counter(t *testing.T, m *metrics.Metrics, name, label, value string) float64 {
	t.Helper()
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, s := range f.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return s.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

type reply struct {
	status int
	body   string
	header http.Header
}

func (e *env) do(ctx context.Context, method, contentType, body string) (reply, error) {
	req, err := http.NewRequestWithContext(ctx, method, e.url, strings.NewReader(body))
	if err != nil {
		return reply{}, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return reply{resp.StatusCode, string(b), resp.Header}, err
}

// poll sends a comet request and returns its reply.
func (e *env) poll(body string) reply {
	e.t.Helper()
	r, err := e.do(context.Background(), http.MethodPost, ContentType, body)
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

// pollAsync starts a comet request and returns where its reply will come.
func (e *env) pollAsync(body string) <-chan reply {
	c := make(chan reply, 1)
	go func() {
		r, err := e.do(context.Background(), http.MethodPost, ContentType, body)
		if err != nil {
			e.t.Error(err)
		}
		c <- r
	}()
	return c
}

// waitFor waits for cond, for at most 5 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	bounded.Wait(t, what, 5*time.Second, cond)
}

func (e *env) waitListeners(id string, n int) {
	e.t.Helper()
	waitFor(e.t, fmt.Sprintf("%d listeners on %s", n, id), func() bool {
		info, err := e.reg.Info(context.Background(), id)
		return err == nil && info.Listeners == n
	})
}

func (e *env) create(name string) string {
	e.t.Helper()
	id, err := e.reg.Create(context.Background(), name)
	if err != nil {
		e.t.Fatal(err)
	}
	return id
}

// write writes msg to id and returns its outcome, which must be known
// within 5 seconds: a reply that never comes fails here, not at the
// test's deadline.
func (e *env) write(id, msg string) channels.Outcome {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, _, err := e.reg.Write(ctx, id, []byte(msg))
	if err != nil {
		e.t.Fatalf("write %q to %s: %+v, %v", msg, id, out, err)
	}
	return out
}

func receive(t *testing.T, c <-chan reply) reply {
	t.Helper()
	return bounded.Recv(t, "a reply", 5*time.Second, c)
}

type immediateCase struct {
	name, method, ct, body string
	status                 int
	want                   string // exact body, or a prefix when it ends with "..."
}

func immediateCases() []immediateCase {
	ids129 := make([]string, 129)
	for i := range ids129 {
		ids129[i] = fmt.Sprint("x", i)
	}
	return []immediateCase{
		{"all unknown", "POST", ContentType, "registration=a%0Ab", 200, "a:ENDED_CHANNEL\nb:ENDED_CHANNEL"},
		{"charset parameter ignored", "POST", ContentType + "; charset=UTF-8", "registration=a", 200, "a:ENDED_CHANNEL"},
		{"merged, deduplicated, registration order", "POST", ContentType, "registration=b%0Aa&x=y&registration=a%0Ac", 200, "b:ENDED_CHANNEL\na:ENDED_CHANNEL\nc:ENDED_CHANNEL"},
		{"plus and %u decode before matching", "POST", ContentType, "registration=a+b%0A%u00E9%0A%uD83D%uDE00", 200, "a b:ENDED_CHANNEL\né:ENDED_CHANNEL\n😀:ENDED_CHANNEL"},
		{"128 ids", "POST", ContentType, "registration=" + strings.Join(ids129[:128], "%0A"), 200, "x0:ENDED_CHANNEL..."},
		{"129 ids", "POST", ContentType, "registration=" + strings.Join(ids129, "%0A"), 400, "too many channel identifiers: 129, at most 128"},
		{"no body", "POST", ContentType, "", 400, "Empty or incorrect registration"},
		{"only separators", "POST", ContentType, "registration=%0A%0A", 400, "Empty or incorrect registration"},
		{"no registration parameter", "POST", ContentType, "channels=a", 400, "Empty or incorrect registration"},
		{"malformed escape", "POST", ContentType, "registration=%E", 400, "malformed body at byte 13: '%' not followed by two hex digits"},
		{"lone surrogate", "POST", ContentType, "registration=%uD800", 400, "malformed body at byte 13: high surrogate..."},
		{"pair without =", "POST", ContentType, "registration", 400, "malformed body at byte 0: parameter without '='"},
		{"body of exactly the limit", "POST", ContentType, "registration=" + strings.Repeat("a", 8192-13), 200, strings.Repeat("a", 8192-13) + ":ENDED_CHANNEL"},
		{"oversize body", "POST", ContentType, "registration=" + strings.Repeat("a", 8192-12), 413, "body too large: at most 8192 bytes"},
		{"an id with ':' can name no channel", "POST", ContentType, "registration=a%3Ab", 200, "a:b:ENDED_CHANNEL"},
		{"an id over 256 bytes can name no channel", "POST", ContentType, "registration=" + strings.Repeat("é", 129), 200, strings.Repeat("é", 129) + ":ENDED_CHANNEL"},
		{"an id that is not UTF-8 can name no channel", "POST", ContentType, "registration=%FF%0Aok", 200, "\xff:ENDED_CHANNEL\nok:ENDED_CHANNEL"},
		{"no content type", "POST", "", "registration=a", 415, "unsupported content type: want application/x-ocsigen-comet"},
		{"form content type", "POST", "application/x-www-form-urlencoded", "registration=a", 415, "unsupported content type..."},
		{"media type is case-sensitive", "POST", "Application/X-Ocsigen-Comet", "registration=a", 415, "unsupported content type..."},
		{"GET", "GET", ContentType, "", 405, "method not allowed: comet requests are POST"},
		// The order of checks: method, content type, size, syntax.
		{"GET without a content type", "GET", "", "", 405, "method not allowed: comet requests are POST"},
		{"oversize with no content type", "POST", "text/plain", "registration=" + strings.Repeat("a", 9000), 415, "unsupported content type..."},
		{"oversize and malformed", "POST", ContentType, "%" + strings.Repeat("a", 9000), 413, "body too large: at most 8192 bytes"},
	}
}

func (tt immediateCase) check(t *testing.T, r reply) {
	t.Helper()
	if r.status != tt.status {
		t.Fatalf("status %d, want %d (body %q)", r.status, tt.status, r.body)
	}
	if prefix, ok := strings.CutSuffix(tt.want, "..."); ok {
		if !strings.HasPrefix(r.body, prefix) {
			t.Fatalf("body %q, want prefix %q", r.body, prefix)
		}
	} else if r.body != tt.want {
		t.Fatalf("body %q, want %q", r.body, tt.want)
	}
	if strings.Contains(r.body, "\n") && r.status != 200 {
		t.Fatalf("reason is not one line: %q", r.body)
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("Content-Type %q", ct)
	}
	if cc := r.header.Get("Cache-Control"); cc != "no-store" {
		t.Fatalf("Cache-Control %q", cc)
	}
}

// Requests that are answered at once, without waiting: section 1's checks
// and the all-unknown row of section 2.
func TestImmediateReplies(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		e := newEnv(t, m, time.Minute, Options{})
		tests := immediateCases()
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				r, err := e.do(context.Background(), tt.method, tt.ct, tt.body)
				if err != nil {
					t.Fatal(err)
				}
				tt.check(t, r)
			})
		}
		// Nothing is left waiting, and each reply is counted once, by its
		// status.
		waitFor(t, "no waiting request", func() bool { return e.h.Waiting() == 0 })
		counts := map[int]int{}
		for _, tt := range tests {
			counts[tt.status]++
		}
		for code, n := range counts {
			if got := e.replies(code); got != n {
				t.Errorf("comet_replies_total{code=%q} = %d, want %d", fmt.Sprint(code), got, n)
			}
		}
	})
}

// A body sent in chunks, with no Content-Length, is held to the same limit
// as one of a declared length: exactly the limit is read, one byte more is
// a 413.
func TestChunkedBodyLimit(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		e := newEnv(t, m, time.Minute, Options{MaxBodyBytes: 100})
		chunked := func(body string) string {
			return "POST /comet HTTP/1.1\r\nHost: test\r\nContent-Type: " + ContentType +
				"\r\nTransfer-Encoding: chunked\r\n\r\n" +
				fmt.Sprintf("%x\r\n%s\r\n", 50, body[:50]) + fmt.Sprintf("%x\r\n%s\r\n", len(body)-50, body[50:]) + "0\r\n\r\n"
		}
		fits := "registration=" + strings.Repeat("a", 100-len("registration="))
		c := e.dial()
		c.send(chunked(fits))
		if r, _ := c.read(); r.status != 200 || r.body != strings.TrimPrefix(fits, "registration=")+":ENDED_CHANNEL" {
			t.Fatalf("a chunked body of exactly the limit: %d %q", r.status, r.body)
		}
		c = e.dial()
		c.send(chunked(fits + "a"))
		if r, _ := c.read(); r.status != 413 || r.body != "body too large: at most 100 bytes" {
			t.Fatalf("a chunked body one byte over: %d %q, want 413", r.status, r.body)
		}
	})
}

func TestMessageDelivery(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		e := newEnv(t, m, time.Minute, Options{})
		id := e.create("")
		e.create("news/é")
		c := e.pollAsync("registration=gone%0A" + id + "%0Anews%2F%C3%A9")
		e.waitListeners("news/é", 1)
		out := e.write("news/é", "hello: world\n100%")
		r := receive(t, c)
		if r.status != 200 || r.body != "gone:ENDED_CHANNEL\nnews/é:hello%3A%20world%0A100%25" {
			t.Fatalf("reply %d %q", r.status, r.body)
		}
		if out != (channels.Outcome{Delivered: 1}) {
			t.Fatalf("outcome %+v, want delivered to 1", out)
		}
		if info, _ := e.reg.Info(context.Background(), id); info.Listeners != 0 {
			t.Fatalf("%d listeners left after the reply", info.Listeners)
		}
	})
}

func TestBroadcastToManyWaiters(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		e := newEnv(t, m, time.Minute, Options{})
		const n = 200
		e.create("c")
		replies := make([]<-chan reply, n)
		for i := range replies {
			replies[i] = e.pollAsync("registration=c")
		}
		e.waitListeners("c", n)
		if out := e.write("c", "tick"); out.Delivered != n || out.Failed != 0 {
			t.Fatalf("outcome %+v, want %d delivered", out, n)
		}
		for _, c := range replies {
			if r := receive(t, c); r.status != 200 || r.body != "c:tick" {
				t.Fatalf("reply %d %q", r.status, r.body)
			}
		}
	})
}

// writeDuringSubscribe is a Hub whose Subscribe lets things happen on the
// real registry between the request subscribing and it starting to wait,
// which is how several events come to share one reply.
type writeDuringSubscribe struct {
	Subscriber
	then func()
}

func (h writeDuringSubscribe) Subscribe(ctx context.Context, ids []string, r *channels.Resume) (*channels.Waiter, []string, error) {
	w, ended, err := h.Subscriber.Subscribe(ctx, ids, r)
	h.then()
	return w, ended, err
}

func TestSeveralEventsInOneReply(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		var reg *channels.Hub
		e := newEnv(t, m, time.Minute, Options{}, func(h Subscriber) Subscriber {
			return writeDuringSubscribe{h, func() {
				// A cancelled context makes Write broadcast and return without
				// waiting for the reply, which cannot come before we return.
				ctx, cancel := context.WithCancel(context.Background())
				cancel()
				for _, w := range []struct{ id, msg string }{{"a", "1"}, {"b", "2"}, {"a", "3"}} {
					reg.Write(ctx, w.id, []byte(w.msg))
				}
				reg.Close(context.Background(), "c")
			}}
		})
		reg = e.reg
		for _, id := range []string{"a", "b", "c"} {
			e.create(id)
		}
		r := e.poll("registration=zz%0Ac%0Ab%0Aa")
		if want := "zz:ENDED_CHANNEL\nc:ENDED_CHANNEL\na:1\nb:2\na:3"; r.status != 200 || r.body != want {
			t.Fatalf("reply %d %q, want %q", r.status, r.body, want)
		}
	})
}

func TestCloseWhileWaiting(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		e := newEnv(t, m, time.Minute, Options{})
		e.create("a")
		e.create("b")
		c := e.pollAsync("registration=a%0Ab")
		e.waitListeners("b", 1)
		e.reg.Close(context.Background(), "b")
		if r := receive(t, c); r.status != 200 || r.body != "b:ENDED_CHANNEL" {
			t.Fatalf("reply %d %q", r.status, r.body)
		}
		if info, _ := e.reg.Info(context.Background(), "a"); info.Listeners != 0 {
			t.Fatal("the request still listens on a")
		}
		e.state.SetTimeout(20*time.Millisecond, false) // a is live, so the next request waits for its timeout
		if r := e.poll("registration=a%0Ab"); r.body != "b:ENDED_CHANNEL" {
			t.Fatalf("later requests do not get b's end marker: %q", r.body)
		}
	})
}

func TestTimeout(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		e := newEnv(t, m, 50*time.Millisecond, Options{})
		e.create("a")
		if r := e.poll("registration=a"); r.status != 200 || r.body != "" {
			t.Fatalf("timeout reply %d %q, want an empty 200", r.status, r.body)
		}
		if r := e.poll("registration=gone%0Aa"); r.status != 200 || r.body != "gone:ENDED_CHANNEL" {
			t.Fatalf("timeout with an unknown id: %d %q", r.status, r.body)
		}
	})
}

func TestDefaultTimeoutIs20s(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		e := newEnv(t, m, 0, Options{})
		if got, _, _ := e.state.Admit(); got != 20*time.Second {
			t.Fatalf("default timeout %v", got)
		}
	})
}

// set_timeout applies to requests that start waiting from then on: a
// request already waiting keeps the timeout it started with.
func TestSetTimeoutAppliesToNewWaitsOnly(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		e := newEnv(t, m, time.Hour, Options{})
		e.create("a")
		old := e.pollAsync("registration=a")
		e.waitListeners("a", 1)
		e.state.SetTimeout(30*time.Millisecond, false)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r, err := e.do(ctx, "POST", ContentType, "registration=a")
		if err != nil || r.status != 200 || r.body != "" {
			t.Fatalf("a new request under a 30ms timeout: %d %q, %v; want an empty 200 well within 5s", r.status, r.body, err)
		}
		// Ten times the new timeout later, the old request still waits.
		if !bounded.Quiet(old, 300*time.Millisecond) {
			t.Fatal("the request that started under the old timeout was answered under the new one")
		}
		if info, _ := e.reg.Info(context.Background(), "a"); info.Listeners != 1 {
			t.Fatalf("%d listeners, want the old request alone", info.Listeners)
		}
		e.write("a", "x")
		if r := receive(t, old); r.status != 200 || r.body != "a:x" {
			t.Fatalf("old request: %d %q", r.status, r.body)
		}
	})
}

func TestAbortsAnswer503(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		for name, abort := range map[string]func(*security.State){
			"deactivate":        func(s *security.State) { s.Deactivate() },
			"set_timeout KILL":  func(s *security.State) { s.SetTimeout(time.Second, true) },
			"drain on shutdown": func(s *security.State) { s.Drain() },
		} {
			t.Run(name, func(t *testing.T) {
				e := newEnv(t, m, time.Hour, Options{})
				e.create("a")
				var waiting []<-chan reply
				for range 3 {
					waiting = append(waiting, e.pollAsync("registration=a"))
				}
				e.waitListeners("a", 3)
				abort(e.state)
				for _, c := range waiting {
					if r := receive(t, c); r.status != 503 || r.body != "" {
						t.Fatalf("waiting request: %d %q, want an empty 503", r.status, r.body)
					}
				}
				waitFor(t, "no waiting request", func() bool { return e.h.Waiting() == 0 })
				if out := e.write("a", "m"); !out.NoListener() {
					t.Fatalf("aborted requests still listen: %+v", out)
				}
			})
		}
	})
}

func TestDeactivated(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		e := newEnv(t, m, time.Hour, Options{})
		e.create("a")
		e.state.Deactivate()
		if r := e.poll("registration=a"); r.status != 503 {
			t.Fatalf("new request while deactivated: %d", r.status)
		}
		if r := e.poll("registration="); r.status != 400 {
			t.Fatalf("a bad request is still told why: %d", r.status)
		}
		e.state.Activate()
		c := e.pollAsync("registration=a")
		e.waitListeners("a", 1)
		e.write("a", "back")
		if r := receive(t, c); r.status != 200 || r.body != "a:back" {
			t.Fatalf("after activate: %d %q", r.status, r.body)
		}
	})
}

func TestMaxWaiting(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		e := newEnv(t, m, time.Hour, Options{MaxWaiting: 2})
		e.create("a")
		first := e.pollAsync("registration=a")
		second := e.pollAsync("registration=a")
		e.waitListeners("a", 2)
		if r := e.poll("registration=a"); r.status != 503 {
			t.Fatalf("third request: %d, want 503", r.status)
		}
		e.write("a", "m")
		receive(t, first)
		receive(t, second)
		if r := e.poll("registration=gone"); r.status != 200 {
			t.Fatalf("after the others left: %d", r.status)
		}
	})
}

// A client that hangs up while waiting leaves nothing behind: no listener,
// no waiting count, no goroutine (but the pool's resumers, idle for a
// while), and writes see nobody.
func TestClientHangUpCostsNothing(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		e := newEnv(t, m, time.Hour, Options{})
		e.create("a")
		theParkLoop() // the process's one loop goroutine, as Go's own poller, starts on first use
		own := func() int64 { return int64(runtime.NumGoroutine()) - resumersAlive.Load() }
		before := own()
		var cancels []context.CancelFunc
		var done sync.WaitGroup
		for range 50 {
			ctx, cancel := context.WithCancel(context.Background())
			cancels = append(cancels, cancel)
			done.Add(1)
			go func() {
				defer done.Done()
				e.do(ctx, "POST", ContentType, "registration=a")
			}()
		}
		e.waitListeners("a", 50)
		if e.h.Waiting() != 50 {
			t.Fatalf("waiting %d, want 50", e.h.Waiting())
		}
		for _, cancel := range cancels {
			cancel()
		}
		done.Wait()
		e.waitListeners("a", 0)
		waitFor(t, "waiting count back to 0", func() bool { return e.h.Waiting() == 0 })
		http.DefaultClient.CloseIdleConnections()
		waitFor(t, "goroutines back to the start", func() bool { return own() <= before })
		if out := e.write("a", "m"); !out.NoListener() {
			t.Fatalf("outcome %+v, want no listener", out)
		}
	})
}

// CORS (docs/cometserver.md): listed origins, or "*", get
// Access-Control-Allow-Origin on every reply and an answered preflight;
// others get a 403 preflight and no CORS header.
func TestCORS(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		preflight := func(e *env, origin, method string) reply {
			t.Helper()
			req, _ := http.NewRequest("OPTIONS", e.url, nil)
			if origin != "" {
				req.Header.Set("Origin", origin)
			}
			if method != "" {
				req.Header.Set("Access-Control-Request-Method", method)
				req.Header.Set("Access-Control-Request-Headers", "content-type")
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return reply{resp.StatusCode, string(b), resp.Header}
		}
		post := func(e *env, origin string) reply {
			t.Helper()
			req, _ := http.NewRequest("POST", e.url, strings.NewReader("registration=x"))
			req.Header.Set("Content-Type", ContentType)
			req.Header.Set("Origin", origin)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return reply{resp.StatusCode, "", resp.Header}
		}
		allowed := func(r reply, origin string) bool {
			return r.header.Get("Access-Control-Allow-Origin") == origin && r.header.Get("Vary") == "Origin"
		}

		for _, origins := range [][]string{{"https://app.example"}, {"*"}} {
			e := newEnv(t, m, time.Minute, Options{CORSOrigins: origins})
			ok := preflight(e, "https://app.example", "POST")
			if ok.status != 204 || !allowed(ok, "https://app.example") ||
				ok.header.Get("Access-Control-Allow-Methods") != "POST" ||
				ok.header.Get("Access-Control-Allow-Headers") != "Content-Type" ||
				ok.header.Get("Access-Control-Max-Age") != "600" {
				t.Fatalf("%q: allowed preflight: %d %v", origins, ok.status, ok.header)
			}
			if r := post(e, "https://app.example"); r.status != 200 || !allowed(r, "https://app.example") {
				t.Fatalf("%q: the actual request: %d %v", origins, r.status, r.header)
			}
		}

		e := newEnv(t, m, time.Minute, Options{CORSOrigins: []string{"https://app.example"}})
		if bad := preflight(e, "https://evil.example", "POST"); bad.status != 403 || bad.body != "origin not allowed" ||
			bad.header.Get("Access-Control-Allow-Origin") != "" || bad.header.Get("Access-Control-Allow-Methods") != "" {
			t.Fatalf("refused preflight: %d %q %v", bad.status, bad.body, bad.header)
		}
		if r := post(e, "https://evil.example"); r.header.Get("Access-Control-Allow-Origin") != "" {
			t.Fatalf("a reply to an origin not listed carries %v", r.header)
		}
		// An OPTIONS that is no preflight is answered with what is allowed.
		for _, r := range []reply{preflight(e, "", ""), preflight(e, "https://app.example", "")} {
			if r.status != 204 || r.header.Get("Allow") != "POST, OPTIONS" || r.header.Get("Access-Control-Allow-Methods") != "" {
				t.Fatalf("plain OPTIONS: %d %v", r.status, r.header)
			}
		}

		none := newEnv(t, m, time.Minute, Options{})
		if r := post(none, "https://app.example"); r.header.Get("Access-Control-Allow-Origin") != "" || r.header.Get("Vary") != "" {
			t.Fatalf("an origin was allowed by default: %v", r.header)
		}
		if r := preflight(none, "https://app.example", "POST"); r.status != 403 {
			t.Fatalf("a preflight with no origin allowed: %d", r.status)
		}
	})
}

// Refusals are logged at debug level with their status and reason; 503s
// and answers are routine and not logged.
func TestRefusalsAreLogged(t *testing.T) {
	var logs bytes.Buffer
	e := newEnv(t, takeover, time.Minute, Options{Logger: slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	e.poll("registration=a%zz")
	e.poll("registration=gone")
	e.state.Deactivate()
	e.poll("registration=gone")
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var rec struct {
			Level, Msg, Reason string
			Status             int
		}
		json.Unmarshal([]byte(line), &rec)
		got = append(got, fmt.Sprint(rec.Level, " ", rec.Msg, " ", rec.Status, " ", rec.Reason))
	}
	if want := "DEBUG comet request refused 400 malformed body at byte 14: '%' not followed by two hex digits"; strings.Join(got, "|") != want {
		t.Fatalf("logs %q, want only %q", got, want)
	}
}

// A reason is one line: whatever follows a CR or LF is cut.
func TestOneLine(t *testing.T) {
	for in, want := range map[string]string{"a": "a", "a\nb": "a", "a\r\nb": "a", "\nb": "", "": ""} {
		if got := oneLine(in); got != want {
			t.Errorf("oneLine(%q) = %q, want %q", in, got, want)
		}
	}
}
