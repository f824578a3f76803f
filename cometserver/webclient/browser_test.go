package webclient_test

// Browser tests: comet.js in real headless Chromium (Debian's, at
// /usr/bin/chromium or $CHROMIUM), driven by chromedp, against a real comet
// server on loopback. hack/install-chromium.sh installs it; make test runs it.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/cometop/comet-operator/cometserver/channels"
	"github.com/cometop/comet-operator/cometserver/config"
	"github.com/cometop/comet-operator/cometserver/server"
	"github.com/cometop/comet-operator/cometserver/webclient"
	"github.com/cometop/comet-operator/test/bounded"
)

// testDeadline bounds each test: a hang fails it, by name, with every
// goroutine's stack, instead of stalling the package until go test's own
// timeout. It is well above the waits inside a test, which report first.
const testDeadline = 90 * time.Second

var browser context.Context // the allocator every test opens tabs in

func TestMain(m *testing.M) {
	path := os.Getenv("CHROMIUM")
	if path == "" {
		path = "/usr/bin/chromium"
	}
	if _, err := os.Stat(path); err != nil {
		fmt.Fprintf(os.Stderr, "browser tests need Chromium at %s (hack/install-chromium.sh installs it): %v\n", path, err)
		os.Exit(1)
	}
	dir, _ := os.MkdirTemp("", "chromium-profile")
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path), chromedp.UserDataDir(dir),
		// Chromium is killed at the end, and so leaves its singleton
		// directory in TMPDIR: inside the profile, it goes with it.
		chromedp.Env("TMPDIR=" + dir),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.WindowSize(1100, 720),
	}
	ctx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	browser = ctx
	code := m.Run()
	cancel()
	os.RemoveAll(dir)
	os.Exit(code)
}

// cometServer is a real comet server with the demo, on a loopback port.
type cometServer struct {
	t    *testing.T
	srv  *server.Server
	addr string
	stop context.CancelFunc
	done chan struct{}
}

func startServer(t *testing.T, addr string, extra ...string) *cometServer {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	args := append([]string{"--demo", "--listen", addr, "--publisher-listen", "127.0.0.1:0",
		"--admin-socket", filepath.Join(t.TempDir(), "admin.sock")}, extra...)
	cfg, err := config.Load(args, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &cometServer{t: t, srv: srv, addr: srv.ClientAddr(), stop: cancel, done: make(chan struct{})}
	go func() { defer close(s.done); srv.Run(ctx) }()
	t.Cleanup(s.shutdown)
	return s
}

func (s *cometServer) shutdown() {
	s.stop()
	<-s.done
}

func (s *cometServer) url() string { return "http://" + s.addr }

// post publishes to a demo room through the page's own glue, once: the
// page's client resumes, so a message written between two of its polls
// comes with the next one.
func (s *cometServer) post(room, text string) {
	s.t.Helper()
	resp, err := http.Post(s.url()+"/demo/rooms/"+room+"/messages", "text/plain", strings.NewReader(text))
	if err != nil {
		s.t.Fatal(err)
	}
	var out channels.Outcome
	err = json.NewDecoder(resp.Body).Decode(&out)
	resp.Body.Close()
	if resp.StatusCode != 200 || err != nil {
		s.t.Fatalf("post to %s: %d, %v", room, resp.StatusCode, err)
	}
}

// publish writes to a channel through the hub, as a publisher would, once
// (see post), and fails on a reply that could not be written.
func (s *cometServer) publish(channel string, msg []byte) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	out, _, err := s.srv.Hub().Write(ctx, channel, msg)
	cancel()
	if err != nil || out.Failed > 0 {
		s.t.Fatalf("write to %s: %+v, %v", channel, out, err)
	}
}

// replies reads comet_replies_total from the server's /metrics, on its
// publisher listener: how many long-poll requests (preflights included)
// were answered, by status code.
func (s *cometServer) replies() map[int]int {
	s.t.Helper()
	resp, err := http.Get("http://" + s.srv.PublisherAddr() + "/metrics")
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		s.t.Fatalf("GET /metrics: %s", resp.Status)
	}
	const prefix = `comet_replies_total{code="`
	got := map[int]int{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), prefix)
		if !ok {
			continue
		}
		code, value, ok := strings.Cut(rest, `"} `)
		c, err1 := strconv.Atoi(code)
		v, err2 := strconv.ParseFloat(value, 64)
		if !ok || err1 != nil || err2 != nil {
			s.t.Fatalf("metrics line %q", sc.Text())
		}
		got[c] = int(v)
	}
	if err := sc.Err(); err != nil {
		s.t.Fatal(err)
	}
	return got
}

// tab opens a page in a new browser tab.
func tab(t *testing.T, url string) context.Context {
	t.Helper()
	ctx, cancel := chromedp.NewContext(browser)
	t.Cleanup(cancel)
	ctx, cancel2 := context.WithTimeout(ctx, testDeadline-10*time.Second)
	t.Cleanup(cancel2)
	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
		t.Fatal(err)
	}
	return ctx
}

// waitJS polls a JavaScript expression until it is true, for at most d.
func waitJS(t *testing.T, ctx context.Context, what, expr string, d time.Duration) {
	t.Helper()
	var err error
	if bounded.Until(d, func() bool {
		var ok bool
		ok, err = chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
		return err == nil && ok
	}) {
		return
	}
	state, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`(document.getElementById("state") || {}).textContent || ""`))
	log, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`(document.getElementById("log") || document.body).textContent`))
	got, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`JSON.stringify(window.got || null)`))
	t.Fatalf("timed out after %v waiting for %s (%s): %v; state %q, log %q, got %.2000s", d, what, expr, err, state, log, got)
}

func evalJS[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("%s: %v", expr, err)
	}
	return v
}

// waitListening waits until a poll of the page listens on channel.
func waitListening(t *testing.T, s *cometServer, channel string) {
	t.Helper()
	if !bounded.Until(20*time.Second, func() bool {
		info, err := s.srv.Hub().Info(context.Background(), channel)
		return err == nil && info.Listeners > 0
	}) {
		t.Fatalf("no poll listening on %s for 20s: %+v", channel, s.srv.Status())
	}
}

func TestDemoPage(t *testing.T) {
	bounded.Test(t, testDeadline)
	s := startServer(t, "")
	ctx := tab(t, s.url())
	waitJS(t, ctx, "the clock", `/\d{4}-\d\d-\d\dT/.test(document.getElementById("clock").textContent)`, 10*time.Second)
	waitListening(t, s, "demo/lobby")
	s.post("lobby", "hello from Go, é ✓ 日本")
	waitJS(t, ctx, "the message rendered", `document.getElementById("log").textContent.includes("#lobbyhello from Go, é ✓ 日本")`, 10*time.Second)

	// Typed into the page's own form, as a person would.
	if err := chromedp.Do(ctx,
		chromedp.SetValue(chromedp.CSS("#to"), "news"),
		chromedp.SendKeys(chromedp.CSS("#text"), "typed in the browser"),
		chromedp.Click(chromedp.CSS("#post button")),
	); err != nil {
		t.Fatal(err)
	}
	waitJS(t, ctx, "the typed message", `document.getElementById("log").textContent.includes("#newstyped in the browser")`, 10*time.Second)

	// The ES module form is the same client.
	same, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`import("/comet.mjs").then(m => m.default === window.Comet)`, chromedp.EvalAwaitPromise))
	if err != nil || !same {
		t.Fatalf("import(\"/comet.mjs\"): %v, %v", same, err)
	}

	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // quality 100 gives a PNG
	if err != nil {
		t.Fatal(err)
	}
	dir := os.Getenv("ARTIFACTS_DIR")
	if dir == "" {
		dir = filepath.Join("..", "..", "bin", "artifacts")
	}
	os.MkdirAll(dir, 0o755)
	if err := os.WriteFile(filepath.Join(dir, "demo-page.png"), shot, 0o644); err != nil {
		t.Fatal(err)
	}
	if len(shot) < 5000 {
		t.Fatalf("screenshot of %d bytes", len(shot))
	}
}

// capture replaces the page client's handlers with ones that record every
// call, in order: in window.got as arrays, and in window.events as objects
// (pageEvent) stamped with performance.now().
const capture = `window.got = [];
window.events = [];
window.record = (e) => { e.at = performance.now(); events.push(e); };
comet.onMessage = (id, text) => { got.push(["msg", id, text]); record({kind: "msg", id, text}); };
comet.onEnded = (id) => { got.push(["ended", id]); record({kind: "ended", id}); };
comet.onError = (e) => { got.push(["error", e.status]); record({kind: "error", status: e.status}); };
comet.onState = (s, d) => {
  got.push(["state", s, d && d.status]);
  record({kind: "state", state: s, status: d && d.status, delay: d && d.delay, failures: d && d.failures});
};
true`

// pageEvent is one entry of window.events.
type pageEvent struct {
	Kind     string  `json:"kind"`  // state, msg, ended, error
	State    string  `json:"state"` // of a state event: polling, backoff, stopped
	Status   int     `json:"status"`
	Delay    int     `json:"delay"`
	Failures int     `json:"failures"`
	ID       string  `json:"id"`
	Text     string  `json:"text"`
	At       float64 `json:"at"`  // performance.now(), in ms
	Rnd      float64 `json:"rnd"` // what Math.random returned, where stubbed
}

func (e pageEvent) is(kind, state string) bool { return e.Kind == kind && e.State == state }

func (e pageEvent) String() string {
	switch e.Kind {
	case "state":
		if e.State == "backoff" {
			return fmt.Sprintf("@%.1f backoff(status %d, delay %d, failures %d)", e.At, e.Status, e.Delay, e.Failures)
		}
		return fmt.Sprintf("@%.1f %s", e.At, e.State)
	case "error":
		return fmt.Sprintf("@%.1f error(%d)", e.At, e.Status)
	}
	return fmt.Sprintf("@%.1f %s(%s %q)", e.At, e.Kind, e.ID, e.Text)
}

func TestPayloadsRoundTrip(t *testing.T) {
	bounded.Test(t, testDeadline)
	s := startServer(t, "")
	ctx := tab(t, s.url())
	evalJS[bool](t, ctx, capture)
	// Until its first reply the page has no position for the lobby: a
	// message written while it re-registers (the demo adds its channels
	// one by one) would go to the poll it just aborted, and its next poll
	// would start after it. Wait for the position (the clock's next tick
	// ends the poll, and the reply carries every channel's).
	waitJS(t, ctx, "a position for the lobby", `comet._positions["demo/lobby"] !== undefined`, 10*time.Second)
	waitListening(t, s, "demo/lobby")
	payloads := []string{
		"é ✓ 日本 😀",
		"a:b\nc\r\nd",                      // separators of the wire format
		"100% %41 %u0041 + & = ; / ? #",    // escapes that must not be decoded twice
		"\x00\x01\x02\x7f ENDED_CHANNEL x", // control bytes, and the marker inside a payload
		strings.Repeat("long ", 2000),
	}
	for _, p := range payloads {
		waitListening(t, s, "demo/lobby")
		s.publish("demo/lobby", []byte(p))
	}
	waitJS(t, ctx, "every payload", fmt.Sprintf(`got.filter(e => e[0] === "msg" && e[1] === "demo/lobby").length >= %d`, len(payloads)), 10*time.Second)
	got := evalJS[[]string](t, ctx, `got.filter(e => e[0] === "msg" && e[1] === "demo/lobby").map(e => e[2])`)
	for i, p := range payloads {
		if got[i] != p {
			t.Errorf("payload %d: got %.80q, want %.80q", i, got[i], p)
		}
	}
	if len(got) != len(payloads) {
		t.Errorf("%d messages for %d payloads: a double delivery", len(got), len(payloads))
	}
}

func TestEndedChannel(t *testing.T) {
	bounded.Test(t, testDeadline)
	s := startServer(t, "")
	if _, err := s.srv.Hub().Create(context.Background(), "short-lived"); err != nil {
		t.Fatal(err)
	}
	ctx := tab(t, s.url())
	evalJS[bool](t, ctx, capture+`; comet.add("short-lived"); comet.add("never-existed"); true`)
	waitJS(t, ctx, "the unknown channel ended", `got.some(e => e[0] === "ended" && e[1] === "never-existed")`, 10*time.Second)
	waitListening(t, s, "short-lived")
	if err := s.srv.Hub().Close(context.Background(), "short-lived"); err != nil {
		t.Fatal(err)
	}
	waitJS(t, ctx, "the closed channel ended", `got.some(e => e[0] === "ended" && e[1] === "short-lived")`, 10*time.Second)
	ids := evalJS[[]string](t, ctx, `comet.channels()`)
	if strings.Contains(strings.Join(ids, ","), "short-lived") || strings.Contains(strings.Join(ids, ","), "never-existed") {
		t.Fatalf("ended channels still registered: %v", ids)
	}
}

// The demo page's client, with the documented defaults (1 s base), backs
// off while comet is deactivated: each failure in a row waits longer, every
// poll comes only after the delay the client announced, and after activate
// the client resumes on its own.
func TestDeactivateBacksOffAndActivateResumes(t *testing.T) {
	bounded.Test(t, testDeadline)
	s := startServer(t, "")
	ctx := tab(t, s.url())
	evalJS[bool](t, ctx, capture)
	waitListening(t, s, "demo/news")
	s.srv.Deactivate()
	waitJS(t, ctx, "two backoffs after 503", `events.filter(e => e.kind === "state" && e.state === "backoff" && e.status === 503).length >= 2`, 15*time.Second)
	s.srv.Activate()
	waitListening(t, s, "demo/news") // resumed after its backoff, without a reload
	s.post("news", "after activate")
	waitJS(t, ctx, "a message after activate", `got.some(e => e[0] === "msg" && e[2] === "after activate")`, 10*time.Second)

	// From the first 503 on: backoff, poll, backoff, poll, ... until the
	// poll that activate let through. A poll without a backoff before it,
	// or before its delay was over, would be a retry storm.
	events := evalJS[[]pageEvent](t, ctx, `events.filter(e => e.kind === "state")`)
	first := -1
	for i, e := range events {
		if e.is("state", "backoff") {
			first = i
			break
		}
	}
	if first < 0 {
		t.Fatalf("no backoff: %v", events)
	}
	backoffs := 0
	i := first
	for ; i+1 < len(events) && events[i].is("state", "backoff"); i += 2 {
		b, next := events[i], events[i+1]
		backoffs++
		base := min(64000, 1000<<(backoffs-1))
		if b.Status != 503 || b.Failures != backoffs || b.Delay < base || b.Delay > base+1000 {
			t.Errorf("backoff %d: %v; want status 503, failures %d, delay in [%d, %d]", backoffs, b, backoffs, base, base+1000)
		}
		if !next.is("state", "polling") {
			t.Errorf("after backoff %d: %v, want a poll", backoffs, next)
		}
		// Timers never fire early; performance.now() is coarsened a little.
		if waited := next.At - b.At; waited < float64(b.Delay)-2 {
			t.Errorf("poll %.1f ms after a backoff of %d ms", waited, b.Delay)
		}
	}
	if backoffs < 2 {
		t.Errorf("%d backoffs in a row, want at least 2", backoffs)
	}
	if t.Failed() {
		t.Fatalf("state events from the first backoff: %v", events[first:])
	}
}

// backoffPage replaces the demo page's client with one of small backoff,
// recording every call in window.events. Math.random returns window.rnd
// (0 at first), so every delay is exact; each backoff event records the
// rnd its delay was drawn with.
const backoffPage = `comet.stop();
window.rnd = 0;
Math.random = () => rnd;
window.events = [];
window.record = (e) => { e.at = performance.now(); events.push(e); };
window.c = new Comet("/comet", {
  retryBase: 20, retryMax: 80,
  onMessage: (id, text) => record({kind: "msg", id, text}),
  onError: (e) => record({kind: "error", status: e.status}),
  onState: (s, d) => record({kind: "state", state: s, status: d && d.status, delay: d && d.delay, failures: d && d.failures, rnd}),
});
c.add("demo/lobby");
true`

// comet.js backs off as docs/cometserver.md says: after the n-th failure
// in a row, min(retryMax, retryBase * 2^(n-1)) plus a random part; a 200
// resets it; 503 is not an error, status 0 and other codes are.
func TestBackoffIsExactAndResets(t *testing.T) {
	bounded.Test(t, testDeadline)
	s := startServer(t, "")
	ctx := tab(t, s.url())
	s.srv.Deactivate()
	evalJS[bool](t, ctx, backoffPage)
	backoffsJS := `events.filter(e => e.kind === "state" && e.state === "backoff"`
	waitJS(t, ctx, "six failures while deactivated", backoffsJS+`).length >= 6`, 10*time.Second)

	// A 200 (with a message) resets the count.
	s.srv.Activate()
	waitListening(t, s, "demo/lobby")
	s.publish("demo/lobby", []byte("reset"))
	waitJS(t, ctx, "the message", `events.some(e => e.kind === "msg" && e.text === "reset")`, 10*time.Second)
	afterMsg := `events.slice(events.findIndex(e => e.kind === "msg"))`
	s.srv.Deactivate()
	waitJS(t, ctx, "two failures after the 200", afterMsg+`.filter(e => e.kind === "state" && e.state === "backoff").length >= 2`, 10*time.Second)

	// Errors other than 503 back off the same way, and are reported:
	// a 404 (a wrong endpoint), then status 0 (nothing listens any more).
	// From now on the random part is half of retryBase.
	evalJS[bool](t, ctx, `c.url = "/no-such-endpoint"; true`)
	waitJS(t, ctx, "a 404", afterMsg+`.some(e => e.kind === "state" && e.status === 404)`, 10*time.Second)
	evalJS[bool](t, ctx, `rnd = 0.5; true`)
	s.shutdown()
	waitJS(t, ctx, "a network error", afterMsg+`.filter(e => e.kind === "state" && e.state === "backoff" && e.status === 0).length >= 2`, 10*time.Second)
	evalJS[bool](t, ctx, `c.stop(); true`)

	events := evalJS[[]pageEvent](t, ctx, `events`)
	defer func() {
		if t.Failed() {
			t.Logf("events: %v", events)
		}
	}()
	msg := -1
	for i, e := range events {
		if e.Kind == "msg" {
			msg = i
			break
		}
	}
	var before, after []pageEvent // backoff events
	for i, e := range events {
		switch {
		case e.is("state", "backoff") && i < msg:
			before = append(before, e)
		case e.is("state", "backoff"):
			after = append(after, e)
		}
		if e.Kind == "msg" && i != msg {
			t.Errorf("event %d: a second message %v", i, e)
		}
	}

	// The exact sequence: doubling from retryBase, then capped at retryMax.
	want := []int{20, 40, 80, 80, 80, 80}
	if len(before) < len(want) {
		t.Fatalf("%d failures before the 200, want at least %d", len(before), len(want))
	}
	for i, w := range want {
		if b := before[i]; b.Delay != w || b.Failures != i+1 || b.Status != 503 {
			t.Errorf("failure %d while deactivated: %v, want delay %d", i+1, b, w)
		}
	}
	for i, b := range before[len(want):] {
		n := len(want) + i + 1
		if b.Failures != n || b.Delay != 80 || b.Status != 503 {
			t.Errorf("failure %d while deactivated: %v, want delay 80", n, b)
		}
	}
	// After the 200 the count starts again at 1, whatever the status; the
	// random part, up to retryBase, comes on top.
	statuses := map[int]bool{}
	random := 0
	for i, b := range after {
		statuses[b.Status] = true
		want := min(80, 20<<min(i, 3)) + int(math.Round(b.Rnd*20))
		if b.Rnd != 0 {
			random++
		}
		if b.Failures != i+1 || b.Delay != want {
			t.Errorf("failure %d after the 200: %v (random %v), want failures %d, delay %d", i+1, b, b.Rnd, i+1, want)
		}
	}
	if !statuses[503] || !statuses[404] || !statuses[0] || len(statuses) != 3 {
		t.Errorf("statuses after the 200: %v, want 503, 404 and 0", statuses)
	}
	if random == 0 {
		t.Errorf("no failure drawn with a random part: %v", after)
	}

	// onError gets exactly the failures other than 503, each just before
	// its backoff.
	errors, reported := 0, 0
	for i, e := range events {
		switch {
		case e.Kind == "error":
			errors++
			if i+1 >= len(events) || !events[i+1].is("state", "backoff") || events[i+1].Status != e.Status {
				t.Errorf("event %d: %v not followed by its backoff", i, e)
			}
		case e.is("state", "backoff") && e.Status != 503:
			reported++
			if i == 0 || events[i-1].Kind != "error" || events[i-1].Status != e.Status {
				t.Errorf("event %d: %v not reported to onError", i, e)
			}
		}
	}
	if errors != reported || errors < 3 {
		t.Errorf("%d onError calls for %d failures other than 503", errors, reported)
	}
}

func TestServerRestartIsSurvived(t *testing.T) {
	bounded.Test(t, testDeadline)
	s := startServer(t, "")
	addr := s.addr
	ctx := tab(t, s.url())
	evalJS[bool](t, ctx, capture)
	waitListening(t, s, "demo/lobby")
	s.shutdown() // drains: the waiting poll gets 503, later ones fail to connect
	waitJS(t, ctx, "a network error", `got.some(e => e[0] === "state" && e[1] === "backoff" && e[2] === 0)`, 15*time.Second)
	s2 := startServer(t, addr) // same address, a new process state
	waitListening(t, s2, "demo/lobby")
	s2.post("lobby", "after the restart")
	waitJS(t, ctx, "a message from the new server", `got.some(e => e[0] === "msg" && e[2] === "after the restart")`, 10*time.Second)
}

// The page of a second origin polls the comet server: it works only when
// the server allows that origin. A disallowed origin's preflight is
// refused, so its poll never reaches the server.
func TestCORS(t *testing.T) {
	bounded.Test(t, 2*testDeadline)
	for _, allowed := range []bool{true, false} {
		t.Run(fmt.Sprint("allowed=", allowed), func(t *testing.T) {
			bounded.Test(t, testDeadline)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			origin := "http://" + ln.Addr().String()
			// A short timeout: a poll that got through would be answered
			// (and counted) well before the page has failed three times.
			extra := []string{"--timeout", "100ms"}
			if allowed {
				extra = append(extra, "--cors-origins", origin)
			}
			s := startServer(t, "", extra...)
			other := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, `<!doctype html><script src="%[1]s/comet.js"></script><script>
window.got = [];
window.comet = new Comet("%[1]s/comet", {
  retryBase: 50, retryMax: 200,
  onMessage: (id, text) => got.push(["msg", id, text]),
  onError: (e) => got.push(["error", e.status]),
});
comet.add("demo/lobby");
</script>`, s.url())
			}))
			other.Listener = ln
			other.Start()
			defer other.Close()
			ctx := tab(t, origin)
			if allowed {
				waitListening(t, s, "demo/lobby")
				s.post("lobby", "cross-origin hello")
				waitJS(t, ctx, "the cross-origin message", `got.some(e => e[0] === "msg" && e[2] === "cross-origin hello")`, 10*time.Second)
				if r := s.replies(); r[200] == 0 {
					t.Fatalf("replies %v: the allowed origin's polls were not counted", r)
				}
				return
			}
			waitJS(t, ctx, "three refused polls", `got.filter(e => e[0] === "error").length >= 3`, 10*time.Second)
			evalJS[bool](t, ctx, `comet.stop(); true`)
			got := evalJS[[][]any](t, ctx, `got`)
			for _, e := range got {
				if len(e) != 2 || e[0] != "error" || e[1] != float64(0) {
					t.Errorf("page event %v, want only errors with status 0", e)
				}
			}
			// The server refused a preflight for each failed poll, and
			// answered no poll: none got through to it.
			replies := s.replies()
			for code, n := range replies {
				if code != http.StatusForbidden {
					t.Errorf("%d replies with status %d to a disallowed origin", n, code)
				}
			}
			if replies[http.StatusForbidden] < len(got) {
				t.Errorf("%d refused preflights for %d failed polls", replies[http.StatusForbidden], len(got))
			}
			if st := s.srv.Status(); st.Waiting != 0 {
				t.Errorf("a disallowed origin's poll is waiting: %+v", st)
			}
			ctx2, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if out, _, err := s.srv.Hub().Write(ctx2, "demo/lobby", []byte("must not arrive")); err != nil || out.Delivered != 0 {
				t.Errorf("write to demo/lobby: %+v, %v: a disallowed origin listens", out, err)
			}
		})
	}
}

// ownClient stops the page's own client, if it has one (the demo's), and
// makes window.c, a client of the test's with capture's recording handlers
// (polling state events also record their registration, as channels) and
// options opts. It records every XMLHttpRequest opened from then on in
// window.xhrs, each abort of one as an "abort" event, and the message of
// every exception that reaches the window in window.uncaught.
func ownClient(opts string) string {
	return `(() => {
  if (typeof comet !== "undefined") comet.stop();
  window.got = [];
  window.events = [];
  window.uncaught = [];
  window.xhrs = [];
  window.record = (e) => { e.at = performance.now(); events.push(e); };
  addEventListener("error", (e) => uncaught.push(e.error ? e.error.message : e.message));
  const open = XMLHttpRequest.prototype.open;
  XMLHttpRequest.prototype.open = function (...args) {
    xhrs.push(this);
    this.addEventListener("abort", () => record({kind: "abort"}));
    return open.apply(this, args);
  };
  window.c = new Comet("/comet", Object.assign({
    onMessage: (id, text) => { got.push(["msg", id, text]); record({kind: "msg", id, text}); },
    onEnded: (id) => { got.push(["ended", id]); record({kind: "ended", id}); },
    onError: (e) => { got.push(["error", e.status]); record({kind: "error", status: e.status}); },
    onState: (s, d) => {
      got.push(["state", s, d && d.status]);
      record({kind: "state", state: s, status: d && d.status, delay: d && d.delay, failures: d && d.failures, channels: d && d.channels});
    },
  }, ` + opts + `));
})();
`
}

// pageLog is what the page's client did, in order, one short line per
// call or abort: "polling a,b", "msg a one", "ended b", "backoff 503",
// "stopped", "abort" (errors too, as "error 404").
const pageLog = `events.map(e =>
  e.kind === "state" ? (e.state === "polling" ? "polling " + e.channels.join(",") : e.state === "backoff" ? "backoff " + e.status : e.state) :
  e.kind === "msg" ? "msg " + e.id + " " + e.text :
  e.kind === "ended" ? "ended " + e.id :
  e.kind === "error" ? "error " + e.status : e.kind)`

// listeners is how many polls listen on channel id now (-1: no such
// channel).
func (s *cometServer) listeners(id string) int {
	info, err := s.srv.Hub().Info(context.Background(), id)
	if err != nil {
		return -1
	}
	return info.Listeners
}

// waitOnlyPoll waits until exactly one poll waits on the server and it
// listens on exactly the channels want among all: the page's client has
// one poll, registered as it should be, and any poll it replaced has gone.
func (s *cometServer) waitOnlyPoll(want []string, all ...string) {
	s.t.Helper()
	got := map[string]int{}
	waiting := 0
	if bounded.Until(10*time.Second, func() bool {
		waiting = s.srv.Status().Waiting
		ok := waiting == 1
		for _, id := range all {
			got[id] = s.listeners(id)
			ok = ok && got[id] == map[bool]int{true: 1, false: 0}[slices.Contains(want, id)]
		}
		return ok
	}) {
		return
	}
	s.t.Fatalf("timed out waiting for one poll on %v: %d waiting, listeners %v", want, waiting, got)
}

// scripted is a comet endpoint whose replies the test writes, on a server
// of its own that serves comet.js and a blank page loading it at /. Each
// poll comes to the test on polls, with its registration, and waits there
// to be answered.
type scripted struct {
	t     *testing.T
	url   string
	polls chan *scriptedPoll
}

type scriptedPoll struct {
	ids    []string
	resume []string // the values of its resume parameters
	answer chan scriptedReply
	hungUp chan struct{} // closed if the client hangs up before the whole reply
}

type scriptedReply struct {
	status      int
	first, rest string        // the body, in two parts
	hold        chan struct{} // when set, the rest waits for it to close
}

func startScripted(t *testing.T) *scripted {
	s := &scripted{t: t, polls: make(chan *scriptedPoll, 64)}
	quit := make(chan struct{})
	mux := http.NewServeMux()
	webclient.Register(mux)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `<!doctype html><title>scripted comet endpoint</title><script src="/comet.js"></script>`)
	})
	mux.HandleFunc("POST /comet", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		form, err2 := url.ParseQuery(string(body))
		if ct := r.Header.Get("Content-Type"); err != nil || err2 != nil || !strings.HasPrefix(ct, "application/x-ocsigen-comet") {
			t.Errorf("scripted endpoint: a poll of type %q, body %q: %v, %v", ct, body, err, err2)
			http.Error(w, "bad poll", http.StatusBadRequest)
			return
		}
		p := &scriptedPoll{ids: strings.Split(form.Get("registration"), "\n"), resume: form["resume"], answer: make(chan scriptedReply, 1), hungUp: make(chan struct{})}
		select {
		case s.polls <- p:
		default:
			t.Errorf("scripted endpoint: %d polls the test did not take", cap(s.polls))
			return
		}
		var a scriptedReply
		select {
		case a = <-p.answer:
		case <-r.Context().Done():
			close(p.hungUp)
			return
		case <-quit:
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		// Without it Chromium sniffs a text/plain body for binary content
		// and keeps the whole reply from the page (readyState 1) until
		// 1024 bytes of the body or its end have come.
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Content-Length", strconv.Itoa(len(a.first)+len(a.rest)))
		w.WriteHeader(a.status)
		io.WriteString(w, a.first)
		if a.hold != nil {
			if err := http.NewResponseController(w).Flush(); err != nil {
				t.Errorf("scripted endpoint: flushing a head: %v", err)
			}
			select {
			case <-a.hold:
			case <-r.Context().Done():
				close(p.hungUp)
				return
			case <-quit:
				return
			}
		}
		io.WriteString(w, a.rest)
	})
	srv := httptest.NewServer(mux)
	// Registered before any tab, so it runs after the tabs have closed:
	// quit unblocks what is left.
	t.Cleanup(func() { close(quit); srv.Close() })
	s.url = srv.URL
	return s
}

// next is the next poll, which must register want.
func (s *scripted) next(what string, want ...string) *scriptedPoll {
	s.t.Helper()
	p := bounded.Recv(s.t, what, 10*time.Second, s.polls)
	if !slices.Equal(p.ids, want) {
		s.t.Fatalf("%s registers %q, want %q", what, p.ids, want)
	}
	return p
}

// reply answers p at once.
func (p *scriptedPoll) reply(status int, body string) {
	p.answer <- scriptedReply{status: status, first: body}
}

// hold starts p's reply at once: its head (status, and the Content-Length
// of first+rest) and first, flushed. The rest follows when release is
// called. (The head alone is not enough: Chromium moves an
// XMLHttpRequest to readyState 2 only once some of the body has come.)
func (p *scriptedPoll) hold(status int, first, rest string) (release func()) {
	c := make(chan struct{})
	p.answer <- scriptedReply{status: status, first: first, rest: rest, hold: c}
	return func() { close(c) }
}

func (p *scriptedPoll) hungUpOn() bool {
	select {
	case <-p.hungUp:
		return true
	default:
		return false
	}
}

// Adding a channel while the poll waits with no reply started aborts that
// poll: one poll, registered on both channels, takes its place at once
// (the server would otherwise keep the old one for a minute).
func TestAddAbortsAWaitingPoll(t *testing.T) {
	bounded.Test(t, testDeadline)
	s := startServer(t, "", "--timeout", "60s")
	for _, id := range []string{"a", "other"} {
		if _, err := s.srv.Hub().Create(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
	ctx := tab(t, s.url())
	evalJS[bool](t, ctx, ownClient(`{}`)+`c.add("a"); true`)
	s.waitOnlyPoll([]string{"a"}, "a", "other")

	// readyState 1: sent, and nothing of a reply has come.
	before := evalJS[[]int](t, ctx, `(() => {
  const rs = xhrs[0].readyState;
  c.add("other");
  return [rs, xhrs.length, events.filter(e => e.kind === "abort").length];
})()`)
	if !slices.Equal(before, []int{1, 2, 1}) {
		t.Fatalf("adding a channel: [readyState before, requests, aborts] = %v, want [1 2 1]: the waiting poll not aborted and replaced at once", before)
	}
	s.waitOnlyPoll([]string{"a", "other"}, "a", "other")
	s.publish("other", []byte("to the new channel"))
	waitJS(t, ctx, "the message to the new channel", `got.some(e => e[0] === "msg" && e[2] === "to the new channel")`, 10*time.Second)
	s.publish("a", []byte("to the old one"))
	waitJS(t, ctx, "the message to the old channel", `got.some(e => e[0] === "msg" && e[2] === "to the old one")`, 10*time.Second)

	log := evalJS[[]string](t, ctx, pageLog)
	want := []string{"polling a", "abort", "polling a,other", "msg other to the new channel", "polling a,other", "msg a to the old one", "polling a,other"}
	if !slices.Equal(log, want) {
		t.Fatalf("page log %q, want %q", log, want)
	}
}

// Without resume, adding a channel while a reply is under way (readyState
// 2 or more: its head and the start of its body have come, the rest has
// not) does not abort it: the reply is read to its end and its message delivered once,
// then the next poll carries the new registration. For a 503 under way
// too: the new registration follows at once, not after the backoff the
// 503 announced.
func TestReplyUnderWayIsReadBeforeReRegistering(t *testing.T) {
	bounded.Test(t, testDeadline)
	s := startScripted(t)
	ctx := tab(t, s.url)
	evalJS[bool](t, ctx, ownClient(`{retryBase: 60000, resume: false}`)+`c.add("a"); true`)
	p1 := s.next("the first poll", "a")
	release := p1.hold(200, "a:o", "ne")
	waitJS(t, ctx, "the start of the reply", `xhrs.length === 1 && xhrs[0].readyState >= 2`, 10*time.Second)
	// add neither aborts the reply nor sends a request (and the page log
	// at the end shows that nothing did later, before the reply ended).
	now := evalJS[[]int](t, ctx, `c.add("b"); [xhrs.length, events.filter(e => e.kind === "abort").length]`)
	if !slices.Equal(now, []int{1, 0}) {
		t.Fatalf("adding a channel during a reply: [requests, aborts] = %v, want [1 0]", now)
	}
	release()
	waitJS(t, ctx, "the message of the reply under way", `got.some(e => e[0] === "msg" && e[2] === "one")`, 10*time.Second)
	p2 := s.next("the poll after the reply", "a", "b")
	if p1.hungUpOn() {
		t.Fatal("the client hung up on the reply under way")
	}
	p2.reply(200, "b:two")
	waitJS(t, ctx, "the message to the new channel", `got.some(e => e[0] === "msg" && e[2] === "two")`, 10*time.Second)

	// A 503 under way: the backoff is announced (a minute), but the new
	// registration follows at once.
	p3 := s.next("the poll after the second reply", "a", "b")
	release = p3.hold(503, "unavail", "able")
	waitJS(t, ctx, "the start of the 503", `xhrs.length === 3 && xhrs[2].readyState >= 2`, 10*time.Second)
	now = evalJS[[]int](t, ctx, `c.add("c"); [xhrs.length, events.filter(e => e.kind === "abort").length]`)
	if !slices.Equal(now, []int{3, 0}) {
		t.Fatalf("adding a channel during a 503: [requests, aborts] = %v, want [3 0]", now)
	}
	release()
	s.next("the poll after the 503", "a", "b", "c")
	if p3.hungUpOn() {
		t.Fatal("the client hung up on the 503 under way")
	}

	log := evalJS[[]string](t, ctx, pageLog)
	want := []string{"polling a", "msg a one", "polling a,b", "msg b two", "polling a,b", "backoff 503", "polling a,b,c"}
	if !slices.Equal(log, want) {
		t.Fatalf("page log %q, want %q", log, want)
	}
	if delay := evalJS[int](t, ctx, `events.find(e => e.state === "backoff").delay`); delay < 60000 {
		t.Fatalf("backoff of %d ms announced, want at least a minute", delay)
	}
}

// A handler that throws stops neither the delivery of the rest of its
// reply nor polling: onMessage throws on the first message, onEnded and
// onState every time. Each exception still reaches the window, rethrown
// asynchronously.
func TestThrowingHandlersDoNotStopDelivery(t *testing.T) {
	bounded.Test(t, testDeadline)
	s := startScripted(t)
	ctx := tab(t, s.url)
	evalJS[bool](t, ctx, ownClient(`{}`)+`
let messages = 0;
c.onMessage = (id, text) => { got.push(["msg", id, text]); if (++messages === 1) throw new Error("boom: onMessage"); };
c.onEnded = (id) => { got.push(["ended", id]); throw new Error("boom: onEnded"); };
c.onState = (s) => { got.push(["state", s]); throw new Error("boom: onState " + s); };
c.add("a");
true`)
	s.next("the first poll", "a").reply(200, "a:one\na:two\na:three")
	p := s.next("the poll after a throwing onMessage", "a")
	evalJS[bool](t, ctx, `c.add("b"); true`) // aborts p, which waits
	s.next("the poll with b", "a", "b").reply(200, "b:ENDED_CHANNEL\na:four")
	s.next("the poll after a throwing onEnded", "a").reply(200, "a:five")
	s.next("the poll after that", "a")
	if !bounded.Until(10*time.Second, p.hungUpOn) {
		t.Fatal("the poll replaced by adding b was not aborted")
	}

	delivered := evalJS[[]string](t, ctx, `got.filter(e => e[0] !== "state").map(e => e.join(" "))`)
	want := []string{"msg a one", "msg a two", "msg a three", "ended b", "msg a four", "msg a five"}
	if !slices.Equal(delivered, want) {
		t.Fatalf("delivered %q, want %q", delivered, want)
	}
	// Five polls: each onState("polling") threw.
	waitJS(t, ctx, "every exception in the window", `uncaught.filter(m => m === "boom: onState polling").length === 5`, 10*time.Second)
	uncaught := evalJS[[]string](t, ctx, `uncaught`)
	count := map[string]int{}
	for _, m := range uncaught {
		count[m]++
	}
	if len(count) != 3 || count["boom: onMessage"] != 1 || count["boom: onEnded"] != 1 {
		t.Fatalf("exceptions in the window: %q, want onMessage's and onEnded's once, onState's five times", uncaught)
	}
}

// An identifier the server can never name a channel by, because it holds
// ':', comes back as "a:b:ENDED_CHANNEL": the line is split at its last
// ':', so onEnded gets the whole identifier, as registered, and it is
// dropped from the registration.
func TestEndedIDWithColons(t *testing.T) {
	bounded.Test(t, testDeadline)
	s := startServer(t, "")
	if _, err := s.srv.Hub().Create(context.Background(), "live"); err != nil {
		t.Fatal(err)
	}
	ctx := tab(t, s.url())
	evalJS[bool](t, ctx, ownClient(`{}`)+`c.add("a:b"); c.add("x:y:z"); c.add("live"); true`)
	waitListening(t, s, "live")
	s.publish("live", []byte("hi: there"))
	waitJS(t, ctx, "the message", `got.some(e => e[0] === "msg")`, 10*time.Second)
	delivered := evalJS[[]string](t, ctx, `got.filter(e => e[0] !== "state").map(e => e.join(" "))`)
	want := []string{"ended a:b", "ended x:y:z", "msg live hi: there"}
	if !slices.Equal(delivered, want) {
		t.Fatalf("delivered %q, want %q", delivered, want)
	}
	if ids := evalJS[[]string](t, ctx, `c.channels()`); !slices.Equal(ids, []string{"live"}) {
		t.Fatalf("still registered: %q, want [live]", ids)
	}
	waitJS(t, ctx, "a poll on live alone", `events.at(-1).kind === "state" && events.at(-1).state === "polling" && events.at(-1).channels.join() === "live"`, 10*time.Second)
}

// Removing a channel re-registers at once; removing the last one stops
// polling: onState("stopped"), the waiting poll is aborted (the server
// sees its listener leave) and no request follows.
func TestRemovingTheLastChannelStopsPolling(t *testing.T) {
	bounded.Test(t, testDeadline)
	s := startServer(t, "", "--timeout", "60s")
	for _, id := range []string{"a", "b"} {
		if _, err := s.srv.Hub().Create(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
	ctx := tab(t, s.url())
	evalJS[bool](t, ctx, ownClient(`{}`)+`c.add("a"); c.add("b"); true`)
	s.waitOnlyPoll([]string{"a", "b"}, "a", "b")
	evalJS[bool](t, ctx, `c.remove("a"); true`)
	s.waitOnlyPoll([]string{"b"}, "a", "b")

	requests := evalJS[int](t, ctx, `xhrs.length`)
	now := evalJS[[]string](t, ctx, `c.remove("b"); [String(xhrs.length), `+pageLog+`.at(-1), c.channels().join()]`)
	if want := []string{strconv.Itoa(requests), "stopped", ""}; !slices.Equal(now, want) {
		t.Fatalf("removing the last channel: [requests, last event, channels] = %q, want %q", now, want)
	}
	if !bounded.Until(10*time.Second, func() bool { return s.srv.Status().Waiting == 0 && s.listeners("b") == 0 }) {
		t.Fatalf("the poll on b still waits after the last remove: %+v, %d listeners", s.srv.Status(), s.listeners("b"))
	}
	// No request follows: none from the page, none at the server (a poll
	// would wait, or be answered and counted), over a second.
	replies := s.replies()
	if bounded.Until(time.Second, func() bool {
		return evalJS[int](t, ctx, `xhrs.length`) != requests || s.srv.Status().Waiting != 0
	}) {
		t.Fatalf("a request after the last remove: page log %q, %+v", evalJS[[]string](t, ctx, pageLog), s.srv.Status())
	}
	if after := s.replies(); !maps.Equal(after, replies) {
		t.Fatalf("replies went from %v to %v after the last remove", replies, after)
	}
	log := evalJS[[]string](t, ctx, pageLog)
	want := []string{"polling a", "abort", "polling a,b", "abort", "polling b", "abort", "stopped"}
	if !slices.Equal(log, want) {
		t.Fatalf("page log %q, want %q", log, want)
	}
}

// stop() aborts a waiting poll: the server sees its listener leave at
// once, not at the poll's timeout, and a message written then reaches
// nobody.
func TestStopAbortsAWaitingPoll(t *testing.T) {
	bounded.Test(t, testDeadline)
	s := startServer(t, "", "--timeout", "60s")
	if _, err := s.srv.Hub().Create(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
	ctx := tab(t, s.url())
	evalJS[bool](t, ctx, ownClient(`{}`)+`c.add("a"); true`)
	s.waitOnlyPoll([]string{"a"}, "a")
	now := evalJS[[]string](t, ctx, `c.stop(); `+pageLog)
	if want := []string{"polling a", "abort", "stopped"}; !slices.Equal(now, want) {
		t.Fatalf("page log after stop %q, want %q", now, want)
	}
	if !bounded.Until(10*time.Second, func() bool { return s.srv.Status().Waiting == 0 && s.listeners("a") == 0 }) {
		t.Fatalf("the poll still waits after stop: %+v, %d listeners", s.srv.Status(), s.listeners("a"))
	}
	wctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, _, err := s.srv.Hub().Write(wctx, "a", []byte("after stop")); err != nil || !out.NoListener() {
		t.Fatalf("write after stop: %+v, %v: a listener", out, err)
	}
	if log := evalJS[[]string](t, ctx, pageLog); !slices.Equal(log, now) {
		t.Fatalf("page log %q after stop, want %q", log, now)
	}
}
