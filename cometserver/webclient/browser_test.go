package webclient_test

// Browser tests: comet.js in real headless Chromium (Debian's, at
// /usr/bin/chromium or $CHROMIUM), driven by chromedp, against a real comet
// server on loopback. hack/install-chromium.sh installs it; make test runs it.

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/cometop/comet-operator/cometserver/channels"
	"github.com/cometop/comet-operator/cometserver/config"
	"github.com/cometop/comet-operator/cometserver/server"
)

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

// post publishes to a demo room through the page's own glue, again while
// its outcome says nobody was waiting (the page re-polls after every clock
// tick, so a message can fall between two polls: the protocol does not
// buffer, and the outcome says so).
func (s *cometServer) post(room, text string) {
	s.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
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
		if out.Delivered > 0 {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("post to %s: nobody listening for 10s", room)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// publish writes to a channel through the hub, as a publisher would, again
// while nobody was waiting.
func (s *cometServer) publish(channel string, msg []byte) {
	s.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err := s.srv.Hub().Write(ctx, channel, msg)
		cancel()
		switch {
		case err != nil:
			s.t.Fatalf("write to %s: %v", channel, err)
		case out.Failed > 0:
			s.t.Fatalf("write to %s: %+v", channel, out)
		case out.Delivered > 0:
			return
		case time.Now().After(deadline):
			s.t.Fatalf("write to %s: nobody listening for 10s", channel)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tab opens a page in a new browser tab.
func tab(t *testing.T, url string) context.Context {
	t.Helper()
	ctx, cancel := chromedp.NewContext(browser)
	t.Cleanup(cancel)
	ctx, cancel2 := context.WithTimeout(ctx, 60*time.Second)
	t.Cleanup(cancel2)
	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
		t.Fatal(err)
	}
	return ctx
}

// waitJS polls a JavaScript expression until it is true, for at most d.
func waitJS(t *testing.T, ctx context.Context, what, expr string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			state, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`(document.getElementById("state") || {}).textContent || ""`))
			log, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`(document.getElementById("log") || document.body).textContent`))
			t.Fatalf("timed out waiting for %s (%s): %v; state %q, log %q", what, expr, err, state, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
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
	deadline := time.Now().Add(20 * time.Second)
	for {
		if info, err := s.srv.Hub().Info(channel); err == nil && info.Listeners > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no poll listening on %s: %+v", channel, s.srv.Status())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestDemoPage(t *testing.T) {
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
// call, in order, in window.got.
const capture = `window.got = [];
comet.onMessage = (id, text) => got.push(["msg", id, text]);
comet.onEnded = (id) => got.push(["ended", id]);
comet.onError = (e) => got.push(["error", e.status]);
comet.onState = (s, d) => got.push(["state", s, d && d.status]);
true`

func TestPayloadsRoundTrip(t *testing.T) {
	s := startServer(t, "")
	ctx := tab(t, s.url())
	evalJS[bool](t, ctx, capture)
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
	s := startServer(t, "")
	if _, err := s.srv.Hub().Create("short-lived"); err != nil {
		t.Fatal(err)
	}
	ctx := tab(t, s.url())
	evalJS[bool](t, ctx, capture+`; comet.add("short-lived"); comet.add("never-existed"); true`)
	waitJS(t, ctx, "the unknown channel ended", `got.some(e => e[0] === "ended" && e[1] === "never-existed")`, 10*time.Second)
	waitListening(t, s, "short-lived")
	if err := s.srv.Hub().Close("short-lived"); err != nil {
		t.Fatal(err)
	}
	waitJS(t, ctx, "the closed channel ended", `got.some(e => e[0] === "ended" && e[1] === "short-lived")`, 10*time.Second)
	ids := evalJS[[]string](t, ctx, `comet.channels()`)
	if strings.Contains(strings.Join(ids, ","), "short-lived") || strings.Contains(strings.Join(ids, ","), "never-existed") {
		t.Fatalf("ended channels still registered: %v", ids)
	}
}

func TestDeactivateBacksOffAndActivateResumes(t *testing.T) {
	s := startServer(t, "")
	ctx := tab(t, s.url())
	evalJS[bool](t, ctx, capture)
	waitListening(t, s, "demo/news")
	s.srv.Deactivate()
	waitJS(t, ctx, "backoff after 503", `got.some(e => e[0] === "state" && e[1] === "backoff" && e[2] === 503)`, 10*time.Second)
	// While deactivated the client keeps backing off: few polls, no storm.
	time.Sleep(2500 * time.Millisecond)
	polls := evalJS[int](t, ctx, `got.filter(e => e[0] === "state" && e[1] === "polling").length`)
	if polls > 4 {
		t.Fatalf("%d polls in 2.5 s while deactivated: no backoff", polls)
	}
	s.srv.Activate()
	waitListening(t, s, "demo/news") // resumed after its backoff, without a reload
	s.post("news", "after activate")
	waitJS(t, ctx, "a message after activate", `got.some(e => e[0] === "msg" && e[2] === "after activate")`, 10*time.Second)
}

func TestServerRestartIsSurvived(t *testing.T) {
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
// the server allows that origin.
func TestCORS(t *testing.T) {
	for _, allowed := range []bool{true, false} {
		t.Run(fmt.Sprint("allowed=", allowed), func(t *testing.T) {
			ln, _ := net.Listen("tcp", "127.0.0.1:0")
			origin := "http://" + ln.Addr().String()
			var extra []string
			if allowed {
				extra = []string{"--cors-origins", origin}
			}
			s := startServer(t, "", extra...)
			other := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, `<!doctype html><script src="%[1]s/comet.js"></script><script>
window.got = [];
window.comet = new Comet("%[1]s/comet", {
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
				return
			}
			waitJS(t, ctx, "the browser refusing the reply", `got.some(e => e[0] === "error" && e[1] === 0)`, 10*time.Second)
			// Nothing listens: the browser never lets the poll through.
			if info, _ := s.srv.Hub().Info("demo/lobby"); info.Listeners != 0 {
				// The request reached the server (CORS is enforced on the reply):
				// write, then check the page did not get it.
				s.srv.Hub().Write(context.Background(), "demo/lobby", []byte("must not arrive"))
			}
			time.Sleep(500 * time.Millisecond)
			n := evalJS[int](t, ctx, `got.filter(e => e[0] === "msg").length`)
			if n != 0 {
				t.Fatal("a disallowed origin read a message")
			}
		})
	}
}
