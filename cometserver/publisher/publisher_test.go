package publisher

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cometop/comet-operator/cometserver/channels"
	"github.com/cometop/comet-operator/cometserver/channels/channelstest"
	"github.com/cometop/comet-operator/cometserver/engine"
	"github.com/cometop/comet-operator/cometserver/engine/memory"
	"github.com/cometop/comet-operator/cometserver/metrics"
	"github.com/cometop/comet-operator/test/bounded"
)

type testAPI struct {
	t     *testing.T
	url   string
	token string
	reg   *channels.Hub
	ready atomic.Bool
}

func newAPI(t *testing.T, token string, max *int) *testAPI {
	t.Helper()
	bounded.Test(t, time.Minute)
	a := &testAPI{t: t, token: token, reg: channelstest.New(engine.Limits{MaxVirtualChannels: max, HistorySize: 3, HistoryTTL: time.Minute})}
	a.ready.Store(true)
	m := metrics.New(metrics.Sources{Channels: func() float64 { return float64(channelstest.Len(a.reg)) }, Waiting: func() float64 { return 0 }})
	srv := httptest.NewServer(New(a.reg, Options{Token: []byte(token), MaxMessageBytes: 16, Metrics: m, Ready: a.ready.Load}))
	t.Cleanup(func() { srv.Close(); a.reg.Engine().Stop() })
	a.url = srv.URL
	return a
}

type answer struct {
	status int
	body   string
	header http.Header
}

func (a *testAPI) call(method, path, body string) answer {
	a.t.Helper()
	req, _ := http.NewRequest(method, a.url+path, strings.NewReader(body))
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, string(b), resp.Header}
}

// expectError checks a JSON error answer.
func expectError(t *testing.T, got answer, status int, code string) {
	t.Helper()
	var e Error
	if got.status != status || json.Unmarshal([]byte(got.body), &e) != nil || e.Code != code || e.Message == "" {
		t.Fatalf("got %d %s, want %d with error code %q", got.status, got.body, status, code)
	}
	if ct := got.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q", ct)
	}
}

func TestChannelLifecycle(t *testing.T) {
	a := newAPI(t, "", nil)
	r := a.call("POST", "/v1/channels", "")
	var created struct{ ID string }
	if r.status != 201 || json.Unmarshal([]byte(r.body), &created) != nil || len(created.ID) < 22 {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	if r := a.call("POST", "/v1/channels", `{"name":"room/42"}`); r.status != 201 || r.body != "{\"id\":\"room/42\"}\n" {
		t.Fatalf("named create: %d %s", r.status, r.body)
	}
	expectError(t, a.call("POST", "/v1/channels", `{"name":"room/42"}`), 409, CodeNameTaken)
	expectError(t, a.call("POST", "/v1/channels", `{"name":"a:b"}`), 400, CodeInvalidName)
	expectError(t, a.call("POST", "/v1/channels", `{"nom":"x"}`), 400, CodeInvalidBody)
	expectError(t, a.call("POST", "/v1/channels", `{"name":"x"} {}`), 400, CodeInvalidBody)
	expectError(t, a.call("POST", "/v1/channels", `[1]`), 400, CodeInvalidBody)

	path := "/v1/channels/" + url.PathEscape("room/42")
	info := regexp.MustCompile(`^\{"id":"room/42","listeners":0,"position":"0\.([A-Za-z0-9_-]+)","history_length":0\}\n$`)
	r = a.call("GET", path, "")
	m := info.FindStringSubmatch(r.body)
	if r.status != 200 || m == nil {
		t.Fatalf("info: %d %s", r.status, r.body)
	}
	epoch := m[1]
	if r := a.call("POST", path+"/messages", "hello"); r.status != 200 || r.body != `{"delivered":0,"failed":0,"position":"1.`+epoch+`"}`+"\n" {
		t.Fatalf("write with no listener: %d %s", r.status, r.body)
	}
	expectError(t, a.call("POST", path+"/messages", "ENDED_CHANNEL"), 400, CodeReservedMessage)
	if r := a.call("POST", path+"/messages", strings.Repeat("x", 16)); r.status != 200 {
		t.Fatalf("a message of exactly the limit: %d %s", r.status, r.body)
	}
	expectError(t, a.call("POST", path+"/messages", strings.Repeat("x", 17)), 413, CodeMessageTooLarge)
	expectError(t, a.call("PUT", path, ""), 405, CodeMethodNotAllowed)
	if r := a.call("DELETE", path, ""); r.status != 204 {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	expectError(t, a.call("DELETE", path, ""), 404, CodeChannelNotFound)
	expectError(t, a.call("GET", path, ""), 404, CodeChannelNotFound)
	expectError(t, a.call("POST", path+"/messages", "x"), 404, CodeChannelNotFound)
	expectError(t, a.call("GET", "/v2/anything", ""), 404, CodeNotFound)
}

func TestWriteOutcomeOverHTTP(t *testing.T) {
	a := newAPI(t, "", nil)
	a.reg.Create(context.Background(), "c")
	var waiters []*channels.Waiter
	for range 2 {
		w, _, _ := a.reg.Subscribe(context.Background(), []string{"c"}, nil)
		waiters = append(waiters, w)
	}
	go func() {
		for i, w := range waiters {
			<-w.Ready()
			channels.Resolve(w.Detach(), i == 0)
		}
	}()
	if r := a.call("POST", "/v1/channels/c/messages", "m"); r.status != 200 || !regexp.MustCompile(`^\{"delivered":1,"failed":1,"position":"1\.[A-Za-z0-9_-]+"\}\n$`).MatchString(r.body) {
		t.Fatalf("outcome: %d %s", r.status, r.body)
	}
}

func TestTooManyVirtualChannels(t *testing.T) {
	one := 1
	a := newAPI(t, "", &one)
	a.call("POST", "/v1/channels", "")
	expectError(t, a.call("POST", "/v1/channels", ""), 429, CodeTooManyChannels)
}

func TestBearerToken(t *testing.T) {
	a := newAPI(t, "s3cret", nil)
	if r := a.call("POST", "/v1/channels", ""); r.status != 201 {
		t.Fatalf("right token: %d", r.status)
	}
	for _, header := range []string{"", "Bearer wrong", "Bearer s3cret2", "Bearer s3cre", "Basic s3cret", "s3cret", "bearer s3cret"} {
		req, _ := http.NewRequest("POST", a.url+"/v1/channels", nil)
		if header != "" {
			req.Header.Set("Authorization", header)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got := answer{resp.StatusCode, string(b), resp.Header}
		expectError(t, got, 401, CodeUnauthorized)
		if !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
			t.Fatalf("Authorization %q: no WWW-Authenticate: Bearer", header)
		}
	}
	if channelstest.Len(a.reg) != 1 {
		t.Fatalf("%d channels: a refused request created one", channelstest.Len(a.reg))
	}
	// Probes and metrics stay open, for kubelets and Prometheus.
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		resp, err := http.Get(a.url + path)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %v %v", path, resp.StatusCode, err)
		}
		resp.Body.Close()
	}
}

func TestProbesAndMetrics(t *testing.T) {
	a := newAPI(t, "", nil)
	a.call("POST", "/v1/channels", `{"name":"c"}`)
	a.call("POST", "/v1/channels/c/messages", "m")
	a.ready.Store(false)
	if r := a.call("GET", "/readyz", ""); r.status != 503 {
		t.Fatalf("readyz while not ready: %d", r.status)
	}
	r503 := a.call("POST", "/v1/channels", "")
	expectError(t, r503, 503, CodeUnavailable)
	if r503.header.Get("Retry-After") == "" {
		t.Fatal("no Retry-After while draining")
	}
	if r := a.call("GET", "/healthz", ""); r.status != 200 {
		t.Fatalf("healthz: %d", r.status)
	}
	r := a.call("GET", "/metrics", "")
	for _, want := range []string{"comet_channels 1", "comet_messages_written_total 1", "comet_waiting_requests 0", "go_goroutines"} {
		if !strings.Contains(r.body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func TestReadToken(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "token")
	os.WriteFile(good, []byte("  abc\n"), 0o600)
	if tok, err := ReadToken(good); err != nil || string(tok) != "abc" {
		t.Fatalf("ReadToken = %q, %v", tok, err)
	}
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, []byte("\n"), 0o600)
	if _, err := ReadToken(empty); err == nil || !strings.Contains(err.Error(), "is empty") {
		t.Fatalf("empty token file: %v", err)
	}
	if _, err := ReadToken(filepath.Join(dir, "none")); err == nil {
		t.Fatal("missing token file accepted")
	}
}

// A publisher that hangs up while its write waits for an outcome frees
// the server: the request ends, it does not hold the handler.
func TestPublisherHangUpEndsTheWrite(t *testing.T) {
	bounded.Test(t, 30*time.Second)
	reg := channelstest.New(engine.Limits{})
	defer reg.Engine().Stop()
	m := metrics.New(metrics.Sources{Channels: func() float64 { return 0 }, Waiting: func() float64 { return 0 }})
	srv := httptest.NewUnstartedServer(New(reg, Options{Metrics: m}))
	closed := make(chan struct{}, 1)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateClosed {
			closed <- struct{}{}
		}
	}
	srv.Start()
	defer srv.Close()
	reg.Create(context.Background(), "c")
	w, _, _ := reg.Subscribe(context.Background(), []string{"c"}, nil) // never resolves
	defer w.Detach()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "POST", srv.URL+"/v1/channels/c/messages", strings.NewReader("m"))
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	bounded.Recv(t, "the message at its waiter", 5*time.Second, w.Ready())
	cancel()
	if err := bounded.Recv(t, "the client to give up", 5*time.Second, errc); err == nil {
		t.Fatal("the write answered before its outcome was known")
	}
	bounded.Recv(t, "the server to end the request of a publisher that left", 5*time.Second, closed)
	bounded.Wait(t, "the write counted", 5*time.Second, func() bool {
		return gather(t, m, "comet_messages_written_total", "", "") == 1
	})
}

// gather reads a counter of m; label and value, if given, select a series.
func gather(t *testing.T, m *metrics.Metrics, name, label, value string) float64 {
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
			if label == "" {
				return s.GetCounter().GetValue()
			}
			for _, l := range s.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return s.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// Deliveries are counted by result, from each write's outcome.
func TestDeliveryMetrics(t *testing.T) {
	bounded.Test(t, 30*time.Second)
	reg := channelstest.New(engine.Limits{})
	defer reg.Engine().Stop()
	m := metrics.New(metrics.Sources{Channels: func() float64 { return float64(channelstest.Len(reg)) }, Waiting: func() float64 { return 0 }})
	srv := httptest.NewServer(New(reg, Options{Metrics: m}))
	defer srv.Close()
	reg.Create(context.Background(), "c")
	for round, fates := range [][]bool{{true, false, true}, {false}, {}} {
		var ws []*channels.Waiter
		for range fates {
			w, _, _ := reg.Subscribe(context.Background(), []string{"c"}, nil)
			ws = append(ws, w)
		}
		go func() {
			for i, w := range ws {
				<-w.Ready()
				channels.Resolve(w.Detach(), fates[i])
			}
		}()
		resp, err := http.Post(srv.URL+"/v1/channels/c/messages", "text/plain", strings.NewReader("m"))
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("round %d: %v %v", round, resp, err)
		}
		resp.Body.Close()
	}
	for _, tt := range []struct {
		name, label, value string
		want               float64
	}{
		{"comet_messages_written_total", "", "", 3},
		{"comet_message_deliveries_total", "result", "delivered", 2},
		{"comet_message_deliveries_total", "result", "failed", 2},
	} {
		if got := gather(t, m, tt.name, tt.label, tt.value); got != tt.want {
			t.Errorf("%s{%s=%q} = %v, want %v", tt.name, tt.label, tt.value, got, tt.want)
		}
	}
}

// failingEngine fails creates with an error the API does not know.
type failingEngine struct{ engine.Engine }

func (failingEngine) Create(context.Context, string) (string, error) {
	return "", errors.New("broker down")
}

// Bodies and errors the API must answer precisely.
func TestRequestEdges(t *testing.T) {
	bounded.Test(t, 30*time.Second)
	a := newAPI(t, "", nil)
	for _, body := range []string{"", "  \n", "{}", `{"name":null}`} {
		var created struct{ ID string }
		if r := a.call("POST", "/v1/channels", body); r.status != 201 || json.Unmarshal([]byte(r.body), &created) != nil || len(created.ID) != 22 {
			t.Fatalf("create with body %q: %d %s, want a generated id", body, r.status, r.body)
		}
	}
	big := `{"name":"` + strings.Repeat("x", 4096) + `"}`
	if r := a.call("POST", "/v1/channels", big); r.status != 400 || !strings.Contains(r.body, "cannot read body") {
		t.Fatalf("a create body over 4 KiB: %d %s", r.status, r.body)
	}
	expectError(t, a.call("POST", "/v1/channels", `{"name":1}`), 400, CodeInvalidBody)
	// A name is 1 to 256 bytes of UTF-8: an empty one is refused, not
	// taken for no name; invalid UTF-8 is refused, not replaced by U+FFFD
	// (issue 12, finding 4: "caf\xe9" and "caf\xe8" were both created, as
	// one channel).
	expectError(t, a.call("POST", "/v1/channels", `{"name":""}`), 400, CodeInvalidName)
	expectError(t, a.call("POST", "/v1/channels", "{\"name\":\"caf\xe9\"}"), 400, CodeInvalidBody)
	expectError(t, a.call("POST", "/v1/channels", "{\"name\":\"caf\xe8\"}"), 400, CodeInvalidBody)
	if _, err := a.reg.Info(context.Background(), "caf\uFFFD"); err == nil {
		t.Fatal("an invalid UTF-8 name became a channel")
	}
	expectError(t, a.call("POST", "/v1/channels", `{"name":"`+strings.Repeat("x", 257)+`"}`), 400, CodeInvalidName)
	r := a.call("PUT", "/v1/channels/x", "")
	expectError(t, r, 405, CodeMethodNotAllowed)
	if r.header.Get("Allow") != "DELETE, GET" {
		t.Fatalf("Allow %q", r.header.Get("Allow"))
	}
	if r := a.call("GET", "/v1/channels", ""); r.status != 405 || r.header.Get("Allow") != "POST" {
		t.Fatalf("GET /v1/channels: %d, Allow %q", r.status, r.header.Get("Allow"))
	}
	if r := a.call("PUT", "/v1/channels/c/messages", ""); r.status != 405 || r.header.Get("Allow") != "GET, POST" {
		t.Fatalf("PUT messages: %d, Allow %q", r.status, r.header.Get("Allow"))
	}
	if r := a.call("GET", "/healthz", ""); r.status != 200 || r.body != "ok\n" {
		t.Fatalf("healthz: %d %q", r.status, r.body)
	}
	if r := a.call("POST", "/v1/channels", `{"name":"c"}`); r.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("Cache-Control %q", r.header.Get("Cache-Control"))
	}

	eng := memory.New(engine.Limits{})
	defer eng.Stop()
	srv := httptest.NewServer(New(channels.New(failingEngine{eng}), Options{}))
	defer srv.Close()
	resp, err := http.Post(srv.URL+"/v1/channels", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	expectError(t, answer{resp.StatusCode, string(b), resp.Header}, 503, CodeUnavailable)
	if !strings.Contains(string(b), "broker down") {
		t.Fatalf("the hub's error is not told: %s", b)
	}
	// No Ready function: always ready.
	if resp, err := http.Get(srv.URL + "/readyz"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("readyz without a Ready function: %v %v", resp, err)
	}
}

// The token is checked before readiness: a stranger learns nothing, not
// even that the server drains.
func TestTokenBeforeReadiness(t *testing.T) {
	a := newAPI(t, "s3cret", nil)
	a.ready.Store(false)
	req, _ := http.NewRequest("POST", a.url+"/v1/channels", nil)
	req.Header.Set("Authorization", "Bearer nope")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("wrong token while draining: %d, want 401", resp.StatusCode)
	}
	r := a.call("POST", "/v1/channels", "")
	expectError(t, r, 503, CodeUnavailable)
	if r.header.Get("Retry-After") != "1" {
		t.Fatalf("Retry-After %q", r.header.Get("Retry-After"))
	}
	for _, tok := range []string{"Bearer ", "Bearer  s3cret", "Bearer\ts3cret"} {
		req, _ := http.NewRequest("GET", a.url+"/v1/channels/x", nil)
		req.Header.Set("Authorization", tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Fatalf("Authorization %q: %d, want 401", tok, resp.StatusCode)
		}
	}
}

func TestPprofIsOptInAndBehindTheToken(t *testing.T) {
	off := newAPI(t, "", nil)
	expectError(t, off.call("GET", "/debug/pprof/", ""), 404, CodeNotFound)

	reg := channelstest.New(engine.Limits{})
	defer reg.Engine().Stop()
	srv := httptest.NewServer(New(reg, Options{Token: []byte("tok"), Pprof: true}))
	defer srv.Close()
	resp, _ := http.Get(srv.URL + "/debug/pprof/")
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("pprof without the token: %d", resp.StatusCode)
	}
	req, _ := http.NewRequest("GET", srv.URL+"/debug/pprof/", nil)
	req.Header.Set("Authorization", "Bearer tok")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("pprof with the token: %v %v", resp.StatusCode, err)
	}
	resp.Body.Close()
}

// A body must arrive within the read timeout (10 s by default): a slow
// one within it is read, a stalled one is refused after it.
func TestBodyReadTimeout(t *testing.T) {
	bounded.Test(t, time.Minute)
	for _, tt := range []struct {
		timeout   time.Duration
		pause     time.Duration
		want      int
		stallOnly bool
	}{
		{0, 300 * time.Millisecond, 201, false},                     // the default: a body in two parts is fine
		{200 * time.Millisecond, 50 * time.Millisecond, 201, false}, // within the timeout
		{200 * time.Millisecond, 0, 400, true},                      // never finished: refused after the timeout
	} {
		reg := channelstest.New(engine.Limits{})
		srv := httptest.NewServer(New(reg, Options{ReadTimeout: tt.timeout}))
		c, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		body := `{"name":"slow"}`
		io.WriteString(c, fmt.Sprintf("POST /v1/channels HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", len(body), body[:5]))
		if !tt.stallOnly {
			time.Sleep(tt.pause) // a slow client, the behaviour under test
			io.WriteString(c, body[5:])
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		start := time.Now()
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != tt.want {
			t.Fatalf("timeout %v: %v %v, want %d", tt.timeout, resp, err, tt.want)
		}
		if tt.stallOnly && time.Since(start) > 2*time.Second {
			t.Fatalf("a stalled body refused after %v", time.Since(start))
		}
		c.Close()
		srv.Close()
		reg.Engine().Stop()
	}
}

// A write answers its position; GET on the channel shows the position and
// the history's length; GET on its messages reads the history.
func TestPositionsAndHistory(t *testing.T) {
	a := newAPI(t, "tok", nil)
	a.call("POST", "/v1/channels", `{"name":"c"}`)
	var positions []string
	for _, m := range []string{"one", "two", "three", "\x00\xff"} {
		var w struct{ Position string }
		r := a.call("POST", "/v1/channels/c/messages", m)
		if r.status != 200 || json.Unmarshal([]byte(r.body), &w) != nil {
			t.Fatalf("write %q: %d %s", m, r.status, r.body)
		}
		positions = append(positions, w.Position)
	}
	epoch := strings.TrimPrefix(positions[0], "1.")
	for i, p := range positions {
		if p != fmt.Sprintf("%d.%s", i+1, epoch) {
			t.Fatalf("positions %q: want 1 to 4 in one epoch", positions)
		}
	}
	if r := a.call("GET", "/v1/channels/c", ""); r.body != `{"id":"c","listeners":0,"position":"4.`+epoch+`","history_length":3}`+"\n" {
		t.Fatalf("info: %s", r.body)
	}
	history := func(query string) HistoryReply {
		t.Helper()
		var h HistoryReply
		r := a.call("GET", "/v1/channels/c/messages"+query, "")
		if r.status != 200 || json.Unmarshal([]byte(r.body), &h) != nil {
			t.Fatalf("history%s: %d %s", query, r.status, r.body)
		}
		return h
	}
	render := func(h HistoryReply) string {
		var out []string
		for _, m := range h.Messages {
			out = append(out, fmt.Sprintf("%q@%s", m.Data, strings.TrimSuffix(m.Position, "."+epoch)))
		}
		return fmt.Sprintf("%s top=%s gap=%v", strings.Join(out, " "), strings.TrimSuffix(h.Position, "."+epoch), h.Gap)
	}
	for _, tt := range []struct{ query, want string }{
		{"", `"two"@2 "three"@3 "\x00\xff"@4 top=4 gap=false`},
		{"?since=2." + epoch, `"three"@3 "\x00\xff"@4 top=4 gap=false`},
		{"?since=4." + epoch, ` top=4 gap=false`},
		{"?since=0." + epoch, `"two"@2 "three"@3 "\x00\xff"@4 top=4 gap=true`},
		{"?since=2.otherepoch", `"two"@2 "three"@3 "\x00\xff"@4 top=4 gap=true`},
	} {
		if got := render(history(tt.query)); got != tt.want {
			t.Errorf("history%s: %s, want %s", tt.query, got, tt.want)
		}
	}
	if r := a.call("GET", "/v1/channels/c/messages?since=", ""); r.status != 400 {
		t.Fatalf("an empty since: %d", r.status)
	}
	expectError(t, a.call("GET", "/v1/channels/c/messages?since=x", ""), 400, CodeInvalidPosition)
	expectError(t, a.call("GET", "/v1/channels/nope/messages", ""), 404, CodeChannelNotFound)
	a.token = "wrong"
	expectError(t, a.call("GET", "/v1/channels/c/messages", ""), 401, CodeUnauthorized)
}
