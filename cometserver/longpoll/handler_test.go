package longpoll

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cometop/comet-operator/cometserver/channels"
	"github.com/cometop/comet-operator/cometserver/security"
)

// env is a client endpoint on a real loopback listener.
type env struct {
	t     *testing.T
	reg   *channels.Registry
	state *security.State
	h     *Handler
	url   string
}

// mode is how a waiting request waits: inside net/http, or on a
// connection the handler took over (takeover.go). Production takes over.
type mode bool

const (
	plain    mode = false
	takeover mode = true
)

// forEachMode runs a test once per mode.
func forEachMode(t *testing.T, test func(*testing.T, mode)) {
	t.Run("takeover", func(t *testing.T) { test(t, takeover) })
	t.Run("net-http", func(t *testing.T) { test(t, plain) })
}

func newEnv(t *testing.T, m mode, timeout time.Duration, o Options, wrap ...func(channels.Hub) channels.Hub) *env {
	t.Helper()
	e := &env{t: t, reg: channels.NewRegistry(channels.Options{}), state: security.New(true, timeout)}
	var hub channels.Hub = e.reg
	for _, w := range wrap {
		hub = w(hub)
	}
	e.h = New(hub, e.state, o)
	mux := http.NewServeMux()
	mux.Handle("/comet", e.h)
	mux.HandleFunc("/other", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "other "+r.Method)
	})
	srv := httptest.NewUnstartedServer(mux)
	if m == takeover {
		srv.Listener = e.h.Listener(srv.Listener)
	}
	srv.Start()
	t.Cleanup(func() {
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		e.h.Shutdown(ctx)
		e.reg.Stop()
	})
	e.url = srv.URL + "/comet"
	return e
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

// waitFor polls cond every few milliseconds for at most 5 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (e *env) waitListeners(id string, n int) {
	e.t.Helper()
	waitFor(e.t, fmt.Sprintf("%d listeners on %s", n, id), func() bool {
		info, err := e.reg.Info(id)
		return err == nil && info.Listeners == n
	})
}

func (e *env) create(name string) string {
	e.t.Helper()
	id, err := e.reg.Create(name)
	if err != nil {
		e.t.Fatal(err)
	}
	return id
}

func (e *env) write(id, msg string) channels.Outcome {
	e.t.Helper()
	out, err := e.reg.Write(context.Background(), id, []byte(msg))
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

func receive(t *testing.T, c <-chan reply) reply {
	t.Helper()
	select {
	case r := <-c:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("no reply within 5s")
		return reply{}
	}
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
		{"oversize body", "POST", ContentType, "registration=" + strings.Repeat("a", 8192), 413, "body too large: at most 8192 bytes"},
		{"no content type", "POST", "", "registration=a", 415, "unsupported content type: want application/x-ocsigen-comet"},
		{"form content type", "POST", "application/x-www-form-urlencoded", "registration=a", 415, "unsupported content type..."},
		{"media type is case-sensitive", "POST", "Application/X-Ocsigen-Comet", "registration=a", 415, "unsupported content type..."},
		{"GET", "GET", ContentType, "", 405, "method not allowed: comet requests are POST"},
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
	})
}

// A body sent in chunks, with no Content-Length, is held to the same limit.
func TestChunkedOversizeBody(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		e := newEnv(t, m, time.Minute, Options{MaxBodyBytes: 100})
		pr, pw := io.Pipe()
		go func() {
			pw.Write([]byte("registration=" + strings.Repeat("a", 200)))
			pw.Close()
		}()
		req, _ := http.NewRequest("POST", e.url, pr)
		req.Header.Set("Content-Type", ContentType)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 413 || req.ContentLength > 0 {
			t.Fatalf("status %d, want 413", resp.StatusCode)
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
		if info, _ := e.reg.Info(id); info.Listeners != 0 {
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
	channels.Hub
	then func()
}

func (h writeDuringSubscribe) Subscribe(ids []string) (*channels.Waiter, []string) {
	w, ended := h.Hub.Subscribe(ids)
	h.then()
	return w, ended
}

func TestSeveralEventsInOneReply(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		var reg *channels.Registry
		e := newEnv(t, m, time.Minute, Options{}, func(h channels.Hub) channels.Hub {
			return writeDuringSubscribe{h, func() {
				// A cancelled context makes Write broadcast and return without
				// waiting for the reply, which cannot come before we return.
				ctx, cancel := context.WithCancel(context.Background())
				cancel()
				for _, w := range []struct{ id, msg string }{{"a", "1"}, {"b", "2"}, {"a", "3"}} {
					reg.Write(ctx, w.id, []byte(w.msg))
				}
				reg.Close("c")
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
		e.reg.Close("b")
		if r := receive(t, c); r.status != 200 || r.body != "b:ENDED_CHANNEL" {
			t.Fatalf("reply %d %q", r.status, r.body)
		}
		if info, _ := e.reg.Info("a"); info.Listeners != 0 {
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

func TestSetTimeoutAppliesToNewWaitsOnly(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		e := newEnv(t, m, time.Hour, Options{})
		e.create("a")
		old := e.pollAsync("registration=a")
		e.waitListeners("a", 1)
		e.state.SetTimeout(30*time.Millisecond, false)
		start := time.Now()
		if r := e.poll("registration=a"); r.status != 200 || r.body != "" {
			t.Fatalf("new request: %d %q", r.status, r.body)
		}
		if time.Since(start) > 10*time.Second {
			t.Fatal("the new timeout did not apply to the new request")
		}
		select {
		case r := <-old:
			t.Fatalf("the old request got %d under the new timeout", r.status)
		default:
		}
		e.write("a", "x")
		if r := receive(t, old); r.body != "a:x" {
			t.Fatalf("old request: %q", r.body)
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
// no waiting count, no goroutine, and writes see nobody.
func TestClientHangUpCostsNothing(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		e := newEnv(t, m, time.Hour, Options{})
		e.create("a")
		before := runtime.NumGoroutine()
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
		waitFor(t, "goroutines back to the start", func() bool { return runtime.NumGoroutine() <= before })
		if out := e.write("a", "m"); !out.NoListener() {
			t.Fatalf("outcome %+v, want no listener", out)
		}
	})
}

func TestCORS(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		e := newEnv(t, m, time.Minute, Options{CORSOrigins: []string{"https://app.example"}})
		preflight := func(origin string) *http.Response {
			req, _ := http.NewRequest("OPTIONS", e.url, nil)
			req.Header.Set("Origin", origin)
			req.Header.Set("Access-Control-Request-Method", "POST")
			req.Header.Set("Access-Control-Request-Headers", "content-type")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp
		}
		ok := preflight("https://app.example")
		if ok.StatusCode != 204 || ok.Header.Get("Access-Control-Allow-Origin") != "https://app.example" ||
			!strings.Contains(ok.Header.Get("Access-Control-Allow-Headers"), "Content-Type") {
			t.Fatalf("allowed preflight: %d %v", ok.StatusCode, ok.Header)
		}
		if bad := preflight("https://evil.example"); bad.StatusCode != 403 || bad.Header.Get("Access-Control-Allow-Origin") != "" {
			t.Fatalf("refused preflight: %d %v", bad.StatusCode, bad.Header)
		}
		req, _ := http.NewRequest("POST", e.url, strings.NewReader("registration=x"))
		req.Header.Set("Content-Type", ContentType)
		req.Header.Set("Origin", "https://app.example")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example" {
			t.Fatal("no CORS header on the actual request")
		}

		none := newEnv(t, m, time.Minute, Options{})
		req, _ = http.NewRequest("POST", none.url, strings.NewReader("registration=x"))
		req.Header.Set("Content-Type", ContentType)
		req.Header.Set("Origin", "https://app.example")
		resp, _ = http.DefaultClient.Do(req)
		resp.Body.Close()
		if resp.Header.Get("Access-Control-Allow-Origin") != "" {
			t.Fatal("an origin was allowed by default")
		}
	})
}
