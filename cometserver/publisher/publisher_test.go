package publisher

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cometop/comet-operator/cometserver/channels"
	"github.com/cometop/comet-operator/cometserver/metrics"
)

type testAPI struct {
	t     *testing.T
	url   string
	token string
	reg   *channels.Registry
	ready atomic.Bool
}

func newAPI(t *testing.T, token string, max *int) *testAPI {
	t.Helper()
	a := &testAPI{t: t, token: token, reg: channels.NewRegistry(channels.Options{MaxVirtualChannels: max})}
	a.ready.Store(true)
	m := metrics.New(func() float64 { return float64(a.reg.Len()) }, func() float64 { return 0 })
	srv := httptest.NewServer(New(a.reg, Options{Token: []byte(token), MaxMessageBytes: 16, Metrics: m, Ready: a.ready.Load}))
	t.Cleanup(func() { srv.Close(); a.reg.Stop() })
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
	if r := a.call("GET", path, ""); r.status != 200 || r.body != "{\"id\":\"room/42\",\"listeners\":0}\n" {
		t.Fatalf("info: %d %s", r.status, r.body)
	}
	if r := a.call("POST", path+"/messages", "hello"); r.status != 200 || r.body != "{\"delivered\":0,\"failed\":0}\n" {
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
	a.reg.Create("c")
	var waiters []*channels.Waiter
	for range 2 {
		w, _ := a.reg.Subscribe([]string{"c"})
		waiters = append(waiters, w)
	}
	go func() {
		for i, w := range waiters {
			<-w.Ready()
			channels.Resolve(w.Detach(), i == 0)
		}
	}()
	if r := a.call("POST", "/v1/channels/c/messages", "m"); r.status != 200 || r.body != "{\"delivered\":1,\"failed\":1}\n" {
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
	if a.reg.Len() != 1 {
		t.Fatalf("%d channels: a refused request created one", a.reg.Len())
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

// A publisher that gives up waiting for an outcome gets what is known.
func TestWriteGivesUp(t *testing.T) {
	a := newAPI(t, "", nil)
	a.reg.Create("c")
	w, _ := a.reg.Subscribe([]string{"c"}) // never resolves
	defer w.Detach()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", a.url+"/v1/channels/c/messages", strings.NewReader("m"))
	if _, err := http.DefaultClient.Do(req); err == nil {
		t.Fatal("the write answered before its outcome was known")
	}
}

func TestPprofIsOptInAndBehindTheToken(t *testing.T) {
	off := newAPI(t, "", nil)
	expectError(t, off.call("GET", "/debug/pprof/", ""), 404, CodeNotFound)

	reg := channels.NewRegistry(channels.Options{})
	defer reg.Stop()
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
