package longpoll

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/cometop/comet-operator/cometserver/channels"
	"github.com/cometop/comet-operator/cometserver/channels/channelstest"
	"github.com/cometop/comet-operator/cometserver/engine"
	"github.com/cometop/comet-operator/cometserver/security"
	"github.com/cometop/comet-operator/cometserver/wire"
	"github.com/cometop/comet-operator/test/bounded"
)

// rawConn is a client connection written by hand, to control exactly what
// goes on the wire and see which connection a reply comes on.
type rawConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func (e *env) dial() *rawConn {
	e.t.Helper()
	u, _ := url.Parse(e.url)
	c, err := net.Dial("tcp", u.Host)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return &rawConn{t: e.t, c: c, br: bufio.NewReader(c)}
}

// request renders an HTTP/1.1 request with a Content-Length body.
func rawRequest(method, path, contentType, body string, extra ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: test\r\n", method, path)
	if contentType != "" {
		fmt.Fprintf(&b, "Content-Type: %s\r\n", contentType)
	}
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n%s", len(body), body)
	return b.String()
}

func pollRequest(body string) string { return rawRequest("POST", "/comet", ContentType, body) }

func (r *rawConn) send(s string) {
	r.t.Helper()
	if _, err := io.WriteString(r.c, s); err != nil {
		r.t.Fatal(err)
	}
}

// read reads one response within 5 seconds.
func (r *rawConn) read() (reply, bool) {
	r.t.Helper()
	r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(r.br, nil)
	if err != nil {
		r.t.Fatalf("reading a response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		r.t.Fatal(err)
	}
	return reply{resp.StatusCode, string(b), resp.Header}, resp.Close
}

// serverUnread is how many bytes the client sent on c that the server has
// not read yet (its socket's receive queue).
func (e *env) serverUnread(c *rawConn) int {
	e.t.Helper()
	e.mu.Lock()
	server := e.accepted[c.c.LocalAddr().String()]
	e.mu.Unlock()
	if server == nil {
		e.t.Fatal("no server side for the connection")
	}
	return socketQueue(e.t, server, unreadQueue)
}

// waitDrained waits until the server has read everything the client sent
// on c: nothing left in the client's send queue, nothing unread in the
// server's receive queue.
func (e *env) waitDrained(c *rawConn) {
	e.t.Helper()
	e.mu.Lock()
	server := e.accepted[c.c.LocalAddr().String()]
	e.mu.Unlock()
	if server == nil {
		e.t.Fatal("no server side for the connection")
	}
	waitFor(e.t, "the server to read what was sent", func() bool {
		return socketQueue(e.t, c.c.(*net.TCPConn), unsentQueue) == 0 && socketQueue(e.t, server, unreadQueue) == 0
	})
}

// closedByServer reports whether the server closed the connection.
func (r *rawConn) closedByServer() bool {
	r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := r.br.ReadByte()
	return err == io.EOF
}

func (e *env) parkedConns() int {
	e.h.mu.Lock()
	defer e.h.mu.Unlock()
	return len(e.h.parked)
}

// park makes c a taken-over connection: a poll waits on it and is answered.
func (e *env) park(c *rawConn) {
	e.t.Helper()
	if _, err := e.reg.Info(context.Background(), "park"); err != nil {
		e.create("park")
	}
	before, _ := e.reg.Info(context.Background(), "park")
	c.send(pollRequest("registration=park"))
	e.waitListeners("park", before.Listeners+1)
	e.write("park", "parked")
	if r, _ := c.read(); r.status != 200 || r.body != "park:parked" {
		e.t.Fatalf("parking poll: %d %q", r.status, r.body)
	}
}

// A waiting poll costs no goroutine once its connection is taken over on
// Linux (it is parked in the epoll loop), one elsewhere, against two
// inside net/http.
func TestTakeoverHoldsAWaitWithNoGoroutine(t *testing.T) {
	bounded.Test(t, time.Minute)
	const n = 200
	taken := [2]int{0, 1}
	if runtime.GOOS != "linux" {
		taken = [2]int{9, 12}
	}
	for _, tt := range []struct {
		m        mode
		min, max int // goroutines per waiting request, times 10
	}{{takeover, taken[0], taken[1]}, {plain, 19, 22}} {
		t.Run(fmt.Sprint(tt.m), func(t *testing.T) {
			e := newEnv(t, tt.m, time.Hour, Options{})
			e.create("a")
			runtime.GC()
			before := runtime.NumGoroutine()
			conns := make([]*rawConn, n)
			for i := range conns {
				conns[i] = e.dial()
				conns[i].send(pollRequest("registration=a"))
			}
			e.waitListeners("a", n)
			// net/http's goroutines of a taken-over request end just after the
			// handler returns: wait for the count to settle in the range.
			per10 := func() int { return (runtime.NumGoroutine() - before) * 10 / n }
			if !bounded.Until(5*time.Second, func() bool { return per10() >= tt.min && per10() <= tt.max }) {
				p := per10()
				t.Fatalf("%d.%d goroutines per waiting request, want %d.%d to %d.%d",
					p/10, p%10, tt.min/10, tt.min%10, tt.max/10, tt.max%10)
			}
			if out := e.write("a", "m"); out.Delivered != n {
				t.Fatalf("outcome %+v", out)
			}
			for _, c := range conns {
				if r, _ := c.read(); r.body != "a:m" {
					t.Fatalf("reply %q", r.body)
				}
			}
		})
	}
}

// On a taken-over connection the next requests are read by the handler
// itself and get exactly the answers net/http would give them.
func TestImmediateRepliesOnATakenOverConnection(t *testing.T) {
	bounded.Test(t, time.Minute)
	e := newEnv(t, takeover, time.Minute, Options{})
	c := e.dial()
	e.park(c)
	counts := map[int]int{}
	defer func() {
		for code, n := range counts {
			if got := e.replies(code); code != 200 && got != n {
				t.Errorf("comet_replies_total{code=%q} = %d, want %d", fmt.Sprint(code), got, n)
			}
		}
	}()
	for _, tt := range immediateCases() {
		counts[tt.status]++
		t.Run(tt.name, func(t *testing.T) {
			if e.parkedConns() != 1 {
				t.Fatalf("%d parked connections, want 1", e.parkedConns())
			}
			c.send(rawRequest(tt.method, "/comet", tt.ct, tt.body))
			r, closing := c.read()
			tt.check(t, r)
			switch {
			case closing: // after a body it did not read: a new connection, parked again
				if !c.closedByServer() {
					t.Fatal("Connection: close, but the connection stayed open")
				}
				c.c.Close()
				waitFor(t, "the closed connection untracked", func() bool { return e.parkedConns() == 0 })
				c = e.dial()
				e.park(c)
			case tt.method != "POST": // given back to net/http, which answered
				e.park(c)
			}
		})
	}
}

// A taken-over connection serves polls one after another, pipelined ones
// included, and gives anything else back to net/http, which serves it and
// can hand the connection over again.
func TestTakenOverConnectionKeepsServing(t *testing.T) {
	bounded.Test(t, time.Minute)
	e := newEnv(t, takeover, time.Minute, Options{})
	e.create("a")
	c := e.dial()
	e.park(c)

	// Two polls in one write: the second waits for the first's reply.
	c.send(pollRequest("registration=a") + pollRequest("registration=a"))
	e.waitListeners("a", 1)
	e.write("a", "one")
	if r, _ := c.read(); r.body != "a:one" {
		t.Fatalf("first pipelined poll: %q", r.body)
	}
	e.waitListeners("a", 1)
	e.write("a", "two")
	if r, _ := c.read(); r.body != "a:two" {
		t.Fatalf("second pipelined poll: %q", r.body)
	}

	// Another path and another method go back to net/http, on this
	// connection, with their bodies intact.
	c.send(rawRequest("GET", "/other", "", ""))
	if r, _ := c.read(); r.status != 200 || r.body != "other GET" {
		t.Fatalf("handed-back GET: %d %q", r.status, r.body)
	}
	waitFor(t, "no parked connection after a hand-back", func() bool { return e.parkedConns() == 0 })
	c.send(rawRequest("OPTIONS", "/comet", "", ""))
	if r, _ := c.read(); r.status != 204 || r.header.Get("Allow") != "POST, OPTIONS" {
		t.Fatalf("handed-back OPTIONS: %d %v", r.status, r.header)
	}
	e.park(c)
	if e.parkedConns() != 1 {
		t.Fatalf("%d parked after parking again, want 1", e.parkedConns())
	}
	c.send(rawRequest("POST", "/comet", ContentType, "registration=a", "Expect: 100-continue"))
	if r, _ := c.read(); r.status != 100 {
		t.Fatalf("Expect: 100-continue: %d, want 100 from net/http", r.status)
	}
	e.waitListeners("a", 1)
	e.write("a", "three")
	if r, _ := c.read(); r.body != "a:three" {
		t.Fatalf("after 100-continue: %q", r.body)
	}
}

// What net/http would refuse on a connection it reads, a taken-over one
// refuses too, then closes.
func TestTakenOverConnectionLimits(t *testing.T) {
	bounded.Test(t, time.Minute)
	e := newEnv(t, takeover, time.Minute, Options{MaxHeaderBytes: 1024, ReadHeaderTimeout: 200 * time.Millisecond})
	for _, tt := range []struct {
		name, send string
		status     int // 0: closed without a reply
	}{
		{"head too large", rawRequest("POST", "/comet", ContentType, "registration=a", "X-Big: "+strings.Repeat("b", 8000)), 431},
		{"malformed head", "POST /comet HTTP/1.1\r\nHost test\r\n\r\n", 400},
		{"head too slow", "POST /comet HTTP/1.1\r\nHost: test\r\n", 0},
		// The blank lines net/http skips are no end of a head.
		{"head too slow after blank lines", "\r\n\r\nPOST /comet HTTP/1.1\r\nHost: test\r\n", 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := e.dial()
			e.park(c)
			c.send(tt.send)
			if tt.status != 0 {
				r, closing := c.read()
				if r.status != tt.status || !closing {
					t.Fatalf("%d (close %v), want %d and close", r.status, closing, tt.status)
				}
			}
			if !c.closedByServer() {
				t.Fatal("connection left open")
			}
			waitFor(t, "no parked connection", func() bool { return e.parkedConns() == 0 })
		})
	}
}

// Between requests a taken-over connection is closed after the idle
// timeout, and at once when the handler shuts down.
func TestTakenOverConnectionIdleAndShutdown(t *testing.T) {
	bounded.Test(t, time.Minute)
	e := newEnv(t, takeover, time.Minute, Options{IdleTimeout: 100 * time.Millisecond})
	c := e.dial()
	e.park(c)
	if !c.closedByServer() {
		t.Fatal("idle connection not closed")
	}

	e2 := newEnv(t, takeover, time.Minute, Options{})
	e2.create("a")
	idle, waiting := e2.dial(), e2.dial()
	e2.park(idle)
	waiting.send(pollRequest("registration=a"))
	e2.waitListeners("a", 1)
	e2.state.Drain()
	if r, closing := waiting.read(); r.status != 503 || !closing {
		t.Fatalf("waiting poll on drain: %d (close %v), want 503 and close", r.status, closing)
	}
	if !waiting.closedByServer() {
		t.Fatal("the connection of a poll answered 503 on drain stayed open")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e2.h.Shutdown(ctx)
	if !idle.closedByServer() {
		t.Fatal("idle connection not closed by Shutdown")
	}
	if e2.parkedConns() != 0 {
		t.Fatalf("%d parked after Shutdown", e2.parkedConns())
	}
}

// On a taken-over connection, a poll that net/http must serve goes back to
// it: HTTP/1.0 (answered as HTTP/1.0, then closed) and Connection: close
// (answered, then closed). Both still wait for their message.
func TestTakenOverConnectionHandsBackWhatItDoesNotServe(t *testing.T) {
	bounded.Test(t, time.Minute)
	e := newEnv(t, takeover, time.Minute, Options{})
	e.create("a")
	for _, tt := range []struct {
		name, request, proto string
	}{
		{"HTTP/1.0", strings.Replace(pollRequest("registration=a"), "HTTP/1.1", "HTTP/1.0", 1), "HTTP/1.0"},
		{"Connection: close", rawRequest("POST", "/comet", ContentType, "registration=a", "Connection: close"), "HTTP/1.1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := e.dial()
			e.park(c)
			c.send(tt.request)
			e.waitListeners("a", 1)
			waitFor(t, "the connection back with net/http", func() bool { return e.parkedConns() == 0 })
			e.write("a", "m")
			c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
			resp, err := http.ReadResponse(c.br, nil)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			if resp.Proto != tt.proto || resp.StatusCode != 200 || string(b) != "a:m" || !resp.Close {
				t.Fatalf("%s %d %q (close %v), want %s 200 \"a:m\" and close", resp.Proto, resp.StatusCode, b, resp.Close, tt.proto)
			}
			if !c.closedByServer() {
				t.Fatal("left open")
			}
		})
	}
}

// A client may send its next request while a poll waits; the bytes wait
// for the poll's reply. More than 64 KiB of them closes the connection,
// and the poll stops listening.
func TestBytesSentWhileWaiting(t *testing.T) {
	bounded.Test(t, time.Minute)
	e := newEnv(t, takeover, time.Hour, Options{})
	e.create("a")
	c := e.dial()
	c.send(pollRequest("registration=a"))
	e.waitListeners("a", 1)
	next := rawRequest("GET", "/other", "", "")
	for _, b := range []byte(next) { // byte by byte, each read on its own
		c.send(string(b))
	}
	e.write("a", "first")
	if r, _ := c.read(); r.body != "a:first" {
		t.Fatalf("the waiting poll: %q", r.body)
	}
	if r, _ := c.read(); r.status != 200 || r.body != "other GET" {
		t.Fatalf("the request sent while it waited: %d %q", r.status, r.body)
	}

}

// While a poll waits, the server reads at most one byte the client sends
// ahead, as net/http's background read does: the rest stays in the socket,
// at the client's expense, until the poll is answered (finding 3 of issue
// 12: it read one byte per system call and kept up to 64 KiB).
func TestOnlyOneByteIsReadWhileWaiting(t *testing.T) {
	bounded.Test(t, time.Minute)
	e := newEnv(t, takeover, time.Hour, Options{})
	e.create("a")
	c := e.dial()
	c.send(pollRequest("registration=a"))
	e.waitListeners("a", 1)
	const ahead = 64 << 10
	c.send("GARBAGE\r\n" + strings.Repeat("x", ahead-len("GARBAGE\r\n")))
	// The server's side of the connection: what it left unread.
	bounded.Wait(t, "the bytes sent ahead to reach the server", 5*time.Second, func() bool {
		return e.serverUnread(c) >= ahead-1
	})
	if !openFor(c, 100*time.Millisecond) {
		t.Fatal("the connection closed")
	}
	if n := e.serverUnread(c); n != ahead-1 {
		t.Fatalf("the server left %d bytes unread, want all but one (%d)", n, ahead-1)
	}
	e.write("a", "m")
	if r, _ := c.read(); r.body != "a:m" {
		t.Fatalf("the waiting poll: %q", r.body)
	}
	// Then the bytes are read as the next request, which goes to net/http:
	// it answers 400 and closes, unread bytes and all (so the client may
	// see a reset instead, as from net/http alone).
	c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(c.br, nil)
	if err == nil && (resp.StatusCode != 400 || !resp.Close) || err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the bytes sent ahead as a request: %v, %v; want net/http's 400, or its reset", resp, err)
	}
}

// A later request on a taken-over connection gets the state of that
// moment: 503 while deactivated, with the connection kept for the next;
// 503 and a closed connection while draining.
func TestLaterRequestOnATakenOverConnectionSeesTheState(t *testing.T) {
	bounded.Test(t, time.Minute)
	e := newEnv(t, takeover, time.Minute, Options{})
	e.create("a")
	c := e.dial()
	e.park(c)
	e.state.Deactivate()
	c.send(pollRequest("registration=a"))
	if r, closing := c.read(); r.status != 503 || !closing {
		t.Fatalf("deactivated: %d (close %v), want 503 and close, as every refusal", r.status, closing)
	}
	if !c.closedByServer() {
		t.Fatal("left open after a refusal")
	}
	c.c.Close() // which ends the server's lingering read
	waitFor(t, "the refused connection untracked", func() bool { return e.parkedConns() == 0 })
	e.state.Activate()
	c = e.dial()
	e.park(c)

	// A poll waiting on it when comet is deactivated: 503, the connection
	// kept too.
	c.send(pollRequest("registration=a"))
	e.waitListeners("a", 1)
	e.state.Deactivate()
	if r, closing := c.read(); r.status != 503 || closing {
		t.Fatalf("a waiting poll deactivated: %d (close %v), want 503 on a kept connection", r.status, closing)
	}
	if !openFor(c, 100*time.Millisecond) || e.parkedConns() != 1 {
		t.Fatal("the connection of a waiting poll answered 503 was closed")
	}
	e.state.Activate()
	e.park(c)
	e.state.Drain()
	c.send(pollRequest("registration=a"))
	if r, closing := c.read(); r.status != 503 || !closing {
		t.Fatalf("draining: %d (close %v), want 503 and close", r.status, closing)
	}
	if !c.closedByServer() {
		t.Fatal("left open while draining")
	}
}

// Shutdown waits for a poll taken over in the window between its hijack
// and its tracking (a regression test for 2be11ef), as for a tracked
// connection in the middle of a request: each gets its 503 before
// Shutdown returns.
func TestShutdownWaitsForATakeoverInFlight(t *testing.T) {
	bounded.Test(t, time.Minute)
	e := newEnv(t, takeover, time.Hour, Options{})
	e.create("a")
	busy := e.dial() // tracked, reading a body that comes later
	e.park(busy)
	busy.send("POST /comet HTTP/1.1\r\nHost: test\r\nContent-Type: " + ContentType + "\r\nContent-Length: 14\r\n\r\nregist")
	e.waitDrained(busy) // its head read: a request in progress, not an idle connection
	inWindow, release := make(chan struct{}), make(chan struct{})
	e.h.mu.Lock()
	e.h.hijacked = func() { close(inWindow); <-release }
	e.h.mu.Unlock()
	c := e.dial()
	c.send(pollRequest("registration=a"))
	bounded.Recv(t, "the takeover between hijack and track", 5*time.Second, inWindow)

	e.state.Drain()
	shutdown := make(chan struct{})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		e.h.Shutdown(ctx)
		close(shutdown)
	}()
	// Shutdown polls every 5ms: had it missed the connection, it would
	// return within that.
	if !bounded.Quiet(shutdown, 200*time.Millisecond) {
		t.Fatal("Shutdown returned while a takeover was between hijack and track")
	}
	close(release)
	if r, closing := c.read(); r.status != 503 || !closing {
		t.Fatalf("the poll in flight: %d (close %v), want 503 and close", r.status, closing)
	}
	if !bounded.Quiet(shutdown, 100*time.Millisecond) {
		t.Fatal("Shutdown returned while a tracked connection was reading a request")
	}
	busy.send("ration=a")
	if r, closing := busy.read(); r.status != 503 || !closing {
		t.Fatalf("the request being read: %d (close %v), want 503 and close", r.status, closing)
	}
	bounded.Recv(t, "Shutdown to return", 5*time.Second, shutdown)
}

// A head that arrives in pieces within the header timeout, and one over
// 4 KiB but within net/http's default limit, are read on a taken-over
// connection as net/http would read them.
func TestTakenOverConnectionReadsHeadsAsNetHTTP(t *testing.T) {
	bounded.Test(t, time.Minute)
	e := newEnv(t, takeover, time.Minute, Options{})
	c := e.dial()
	e.park(c)
	req := pollRequest("registration=gone")
	c.send(req[:20])
	time.Sleep(50 * time.Millisecond) // the rest comes later, as from a slow client
	c.send(req[20:])
	if r, closing := c.read(); r.status != 200 || r.body != "gone:ENDED_CHANNEL" || closing {
		t.Fatalf("a head in two pieces: %d %q (close %v)", r.status, r.body, closing)
	}
	c.send(rawRequest("POST", "/comet", ContentType, "registration=gone", "X-Big: "+strings.Repeat("b", 8000)))
	if r, closing := c.read(); r.status != 200 || closing {
		t.Fatalf("an 8 KB head under the default limit: %d (close %v)", r.status, closing)
	}
	if e.parkedConns() != 1 || e.hijacks.Load() != 1 {
		t.Fatalf("%d parked, %d hijacks: the connection left the takeover", e.parkedConns(), e.hijacks.Load())
	}
}

// HTTP/2 cannot be taken over: its polls wait inside net/http, and are
// answered there.
func TestHTTP2WaitsInsideNetHTTP(t *testing.T) {
	bounded.Test(t, time.Minute)
	reg := channelstest.New(engine.Limits{})
	defer reg.Engine().Stop()
	h := New(reg, security.New(true, time.Minute), Options{})
	srv := httptest.NewUnstartedServer(h)
	srv.Listener = h.Listener(srv.Listener)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	reg.Create(context.Background(), "a")
	type result struct {
		proto, body string
		err         error
	}
	done := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest("POST", srv.URL+"/comet", strings.NewReader("registration=a"))
		req.Header.Set("Content-Type", ContentType)
		resp, err := srv.Client().Do(req)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		done <- result{resp.Proto, string(b), err}
	}()
	bounded.Wait(t, "the HTTP/2 poll waiting", 5*time.Second, func() bool { info, _ := reg.Info(context.Background(), "a"); return info.Listeners == 1 })
	h.mu.Lock()
	parked := len(h.parked)
	h.mu.Unlock()
	if parked != 0 {
		t.Fatal("an HTTP/2 connection was taken over")
	}
	if out, _, err := reg.Write(context.Background(), "a", []byte("m")); err != nil || out.Delivered != 1 {
		t.Fatalf("outcome %+v, %v", out, err)
	}
	if r := bounded.Recv(t, "the reply", 5*time.Second, done); r.err != nil || r.proto != "HTTP/2.0" || r.body != "a:m" {
		t.Fatalf("reply %+v", r)
	}
}

// Polls pipelined on a new connection: the first is taken over with the
// others already read by net/http, and they are served in order.
func TestPipelinedPollsOnANewConnection(t *testing.T) {
	bounded.Test(t, time.Minute)
	e := newEnv(t, takeover, time.Minute, Options{})
	e.create("a")
	c := e.dial()
	c.send(pollRequest("registration=a") + pollRequest("registration=gone") + pollRequest("registration=a"))
	e.waitListeners("a", 1)
	e.write("a", "one")
	if r, _ := c.read(); r.body != "a:one" {
		t.Fatalf("first: %q", r.body)
	}
	if r, _ := c.read(); r.body != "gone:ENDED_CHANNEL" {
		t.Fatalf("second: %q", r.body)
	}
	e.waitListeners("a", 1)
	e.write("a", "three")
	if r, _ := c.read(); r.body != "a:three" {
		t.Fatalf("third: %q", r.body)
	}
}

// Many requests sent while a poll waits, more than one read holds, are all
// answered in order once it is.
func TestManyRequestsSentWhileWaiting(t *testing.T) {
	bounded.Test(t, time.Minute)
	e := newEnv(t, takeover, time.Minute, Options{})
	e.create("a")
	c := e.dial()
	c.send(pollRequest("registration=a"))
	e.waitListeners("a", 1)
	var ahead strings.Builder
	for i := range 100 {
		ahead.WriteString(pollRequest(fmt.Sprint("registration=gone", i)))
	}
	c.send(ahead.String()) // about 13 KB, read once the poll is answered
	e.write("a", "m")
	if r, _ := c.read(); r.body != "a:m" {
		t.Fatalf("the waiting poll: %q", r.body)
	}
	for i := range 100 {
		if r, closing := c.read(); r.status != 200 || r.body != fmt.Sprint("gone", i, ":ENDED_CHANNEL") || closing {
			t.Fatalf("request %d sent ahead: %d %q (close %v)", i, r.status, r.body, closing)
		}
	}
}

// A request handed back to net/http with more bytes than net/http reads at
// once (here sent while a poll waited): the rest of them reach the next
// poll taken over, in order.
func TestHandBackWithMoreThanOneRead(t *testing.T) {
	bounded.Test(t, time.Minute)
	e := newEnv(t, takeover, time.Minute, Options{})
	e.create("a")
	c := e.dial()
	c.send(pollRequest("registration=a"))
	e.waitListeners("a", 1)
	var b strings.Builder
	b.WriteString("GET /other HTTP/1.1\r\nHost: test\r\nX-Pad: " + strings.Repeat("p", 6000) + "\r\n\r\n")
	b.WriteString(pollRequest("registration=a")) // taken over again, with bytes still to replay
	for i := range 60 {
		b.WriteString(pollRequest(fmt.Sprint("registration=gone", i)))
	}
	c.send(b.String())
	e.write("a", "m")
	if r, _ := c.read(); r.body != "a:m" {
		t.Fatalf("the waiting poll: %q", r.body)
	}
	if r, _ := c.read(); r.status != 200 || r.body != "other GET" {
		t.Fatalf("handed back: %d %q", r.status, r.body)
	}
	e.waitListeners("a", 1)
	e.write("a", "m2")
	if r, _ := c.read(); r.body != "a:m2" {
		t.Fatalf("the poll after the hand-back: %q", r.body)
	}
	for i := range 60 {
		if r, _ := c.read(); r.status != 200 || r.body != fmt.Sprint("gone", i, ":ENDED_CHANNEL") {
			t.Fatalf("poll %d after the hand-back: %d %q", i, r.status, r.body)
		}
	}
}

// openFor reports whether c stays open, with nothing to read, for d.
func openFor(c *rawConn, d time.Duration) bool {
	c.c.SetReadDeadline(time.Now().Add(d))
	defer c.c.SetReadDeadline(time.Time{})
	_, err := c.br.Peek(1)
	return errors.Is(err, os.ErrDeadlineExceeded)
}

// A refusal that closes a taken-over connection lingers: it reads what the
// client still sends, so the client gets its answer rather than a reset.
func TestRefusalClosesWithoutLosingTheAnswer(t *testing.T) {
	bounded.Test(t, time.Minute)
	e := newEnv(t, takeover, time.Minute, Options{})
	c := e.dial()
	e.park(c)
	body := strings.Repeat("x", 100<<10)
	c.send(fmt.Sprintf("POST /comet HTTP/1.1\r\nHost: test\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n", len(body)))
	sent := make(chan error, 1)
	go func() { // the body comes slowly, after the server has answered
		var err error
		for i := 0; i < len(body) && err == nil; i += 8 << 10 {
			time.Sleep(20 * time.Millisecond)
			_, err = c.c.Write([]byte(body[i:min(i+8<<10, len(body))]))
		}
		sent <- err
	}()
	if err := bounded.Recv(t, "the body sent", 10*time.Second, sent); err != nil {
		t.Fatalf("sending the body the server refused: %v", err)
	}
	if r, closing := c.read(); r.status != 415 || !closing {
		t.Fatalf("%d (close %v), want 415 and close", r.status, closing)
	}
}

// CORS headers are on replies written on a taken-over connection too: a
// poll answered after waiting, and a request read there.
func TestCORSOnATakenOverConnection(t *testing.T) {
	bounded.Test(t, time.Minute)
	e := newEnv(t, takeover, time.Minute, Options{CORSOrigins: []string{"https://app.example"}})
	e.create("a")
	c := e.dial()
	origin := "Origin: https://app.example"
	c.send(rawRequest("POST", "/comet", ContentType, "registration=a", origin))
	e.waitListeners("a", 1)
	waitFor(t, "the poll taken over", func() bool { return e.parkedConns() == 1 })
	e.write("a", "m")
	if r, _ := c.read(); r.body != "a:m" || r.header.Get("Access-Control-Allow-Origin") != "https://app.example" {
		t.Fatalf("a waited poll: %q %v", r.body, r.header)
	}
	c.send(rawRequest("POST", "/comet", ContentType, "registration=gone", origin))
	if r, _ := c.read(); r.status != 200 || r.header.Get("Access-Control-Allow-Origin") != "https://app.example" || r.header.Get("Vary") != "Origin" {
		t.Fatalf("a request read on the taken-over connection: %d %v", r.status, r.header)
	}
	c.send(pollRequest("registration=gone"))
	if r, _ := c.read(); r.header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("a request without an origin got %v", r.header)
	}
	if e.parkedConns() != 1 {
		t.Fatal("the connection left the takeover")
	}
}

// A taken-over connection reads its next polls itself: net/http, and its
// hijack, are involved once per connection, not once per poll.
func TestNextPollsAreReadByTheTakenOverConnection(t *testing.T) {
	bounded.Test(t, time.Minute)
	e := newEnv(t, takeover, time.Minute, Options{})
	c := e.dial()
	e.park(c)
	for i := range 10 {
		c.send(pollRequest("registration=gone"))
		if r, _ := c.read(); r.status != 200 {
			t.Fatalf("poll %d: %d", i, r.status)
		}
		e.park(c)
	}
	if n := e.hijacks.Load(); n != 1 {
		t.Fatalf("%d hijacks for 21 polls on one connection, want 1", n)
	}
}

// A wake that is not for a connection parked between requests (here the
// abort of set_timeout KILL, which wakes every taken-over connection)
// parks it again: it holds no goroutine after, and serves its next poll.
func TestIdleConnectionsStayParkedThroughAnAbort(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the park loop is Linux's")
	}
	bounded.Test(t, time.Minute)
	const n = 100
	e := newEnv(t, takeover, time.Hour, Options{})
	conns := make([]*rawConn, n)
	for i := range conns {
		conns[i] = e.dial()
		e.park(conns[i]) // a poll answered: the connection now waits for its next request
	}
	own := func() int64 { return int64(runtime.NumGoroutine()) - resumersAlive.Load() }
	waitFor(t, "every connection parked between requests", func() bool {
		e.h.mu.Lock()
		defer e.h.mu.Unlock()
		for c := range e.h.parked {
			c.mu.Lock()
			state := c.state
			c.mu.Unlock()
			if state != inLoop {
				return false
			}
		}
		return len(e.h.parked) == n
	})
	before, parked := own(), parks.Load()
	if err := e.state.SetTimeout(time.Hour, true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every idle connection woken and parked again", func() bool { return parks.Load() >= parked+n })
	if got := own(); got > before+n/10 {
		t.Fatalf("%d goroutines after the abort, %d before: idle connections left on goroutines", got, before)
	}
	e.create("after")
	for _, c := range conns {
		c.send(pollRequest("registration=after"))
	}
	e.waitListeners("after", n)
	if out := e.write("after", "m"); out.Delivered != n {
		t.Fatalf("outcome %+v", out)
	}
	for _, c := range conns {
		if r, _ := c.read(); r.status != 200 || r.body != "after:m" {
			t.Fatalf("after the abort: %d %q", r.status, r.body)
		}
	}
}

// A client that pipelines a second poll and then half-closes, while its
// first poll waits parked, still gets the first poll's answer, as from
// net/http: the end comes after a request, which keeps the client there.
func TestPipelinedPollThenHalfCloseWhileParked(t *testing.T) {
	bounded.Test(t, time.Minute)
	e := newEnv(t, takeover, time.Hour, Options{})
	e.create("a")
	e.create("b")
	c := e.dial()
	e.park(c)
	c.send(pollRequest("registration=a"))
	e.waitListeners("a", 1)
	c.send(pollRequest("registration=b"))
	c.c.(*net.TCPConn).CloseWrite()
	// Time for the server to take the half-close wrongly for a hang-up.
	time.Sleep(300 * time.Millisecond)
	if out := e.write("a", "m"); out.Delivered != 1 {
		t.Fatalf("outcome %+v: the waiting poll was dropped", out)
	}
	if r, _ := c.read(); r.status != 200 || r.body != "a:m" {
		t.Fatalf("first poll: %d %q", r.status, r.body)
	}
	if !c.closedByServer() {
		t.Fatal("connection left open after the client's end")
	}
}

// The timer of a parked connection moves only earlier (armTimer): when it
// fires for a wait that is no longer the current one, it sets itself for
// the rest of the current wait. A poll answered at once leaves the timer
// at its 400 ms deadline: the connection, parked idle, must outlive it
// (the timer then set for the 3 s idle timeout), a poll parked next must
// time out at its own deadline (the timer moved earlier), and the idle
// connection close at the idle timeout, whichever wait set the timer.
func TestParkedTimerFollowsEachWait(t *testing.T) {
	bounded.Test(t, time.Minute)
	e := newEnv(t, takeover, 400*time.Millisecond, Options{IdleTimeout: 3 * time.Second})
	e.create("a")
	closesWhenIdle := func(c *rawConn, from time.Time) {
		t.Helper()
		if !openFor(c, 1500*time.Millisecond) {
			t.Fatal("the idle connection closed before its idle timeout")
		}
		if !c.closedByServer() {
			t.Fatal("the idle connection was not closed")
		}
		if idle := time.Since(from); idle < 2500*time.Millisecond {
			t.Fatalf("closed after %v idle, want the 3s idle timeout", idle)
		}
	}

	c := e.dial()
	e.park(c) // the timer is now set for that poll's deadline
	if !openFor(c, time.Second) {
		t.Fatal("the idle connection closed when the answered poll's timer fired")
	}
	parked := parks.Load()
	start := time.Now()
	c.send(pollRequest("registration=a"))
	r, _ := c.read()
	if took := time.Since(start); r.status != 200 || r.body != "" || took < 350*time.Millisecond || took > 1200*time.Millisecond {
		t.Fatalf("a poll with nothing to say: %d %q after %v, want 200 and nothing after its 400ms timeout", r.status, r.body, took)
	}
	if parks.Load() == parked {
		t.Fatal("the poll did not wait parked")
	}
	closesWhenIdle(c, time.Now())

	c = e.dial()
	e.park(c)
	closesWhenIdle(c, time.Now())
}

// A connection the loop wakes reads the next request without waiting
// first (readNow); a head that came only in part then waits, under its
// deadline, for the rest.
func TestHeadInPiecesAfterAnIdlePark(t *testing.T) {
	bounded.Test(t, time.Minute)
	e := newEnv(t, takeover, time.Minute, Options{})
	c := e.dial()
	parked := parks.Load()
	e.park(c)
	waitFor(t, "the connection parked idle", func() bool { return parks.Load() >= parked+2 })
	poll := pollRequest("registration=gone")
	c.send(poll[:2])
	time.Sleep(100 * time.Millisecond)
	c.send(poll[2:20])
	time.Sleep(100 * time.Millisecond)
	c.send(poll[20:])
	if r, closing := c.read(); r.status != 200 || r.body != "gone:"+wire.EndedChannel || closing {
		t.Fatalf("a poll sent in pieces: %d %q (close %v)", r.status, r.body, closing)
	}
}

// A parked connection gives its serving state (reader, request, body,
// head record) back to the pool: a waiting poll, and an idle connection,
// hold none of it, and the connection itself stays in a 256-byte size
// class.
func TestParkedConnectionHoldsNoServingState(t *testing.T) {
	bounded.Test(t, time.Minute)
	e := newEnv(t, takeover, time.Minute, Options{})
	e.create("a")
	idle, waiting := e.dial(), e.dial()
	e.park(idle)
	e.park(waiting)
	waiting.send(pollRequest("registration=a"))
	e.waitListeners("a", 1)
	waitFor(t, "both connections parked", func() bool { return e.inLoop() == 2 })
	e.h.mu.Lock()
	for c := range e.h.parked {
		c.mu.Lock()
		if c.state == inLoop && (c.s != nil || c.br != nil) {
			t.Errorf("a parked connection (waiting for a poll: %v) holds its serving state", c.waitFor != nil)
		}
		c.mu.Unlock()
	}
	e.h.mu.Unlock()
	if size := unsafe.Sizeof(parked{}); size > 256 {
		t.Errorf("a parked connection takes %d bytes, over the 256-byte size class", size)
	}
	e.write("a", "m")
	if r, _ := waiting.read(); r.status != 200 || r.body != "a:m" {
		t.Fatalf("the parked poll after the check: %d %q", r.status, r.body)
	}
}

// inLoop is how many connections are parked in the loop.
func (e *env) inLoop() int {
	e.h.mu.Lock()
	defer e.h.mu.Unlock()
	n := 0
	for c := range e.h.parked {
		c.mu.Lock()
		if c.state == inLoop {
			n++
		}
		c.mu.Unlock()
	}
	return n
}

// A publish answers the polls parked on its channel on its own goroutine,
// once the engine's locks are let go: no goroutine is woken per delivery.
func TestPublisherAnswersParkedPolls(t *testing.T) {
	bounded.Test(t, time.Minute)
	const n = 20
	e := newEnv(t, takeover, time.Hour, Options{})
	e.create("a")
	conns := make([]*rawConn, n)
	for i := range conns {
		conns[i] = e.dial()
		conns[i].send(pollRequest("registration=a"))
	}
	e.waitListeners("a", n)
	waitFor(t, "every poll parked", func() bool { return e.inLoop() == n })
	here, off := answeredHere.Load(), handOffs.Load()
	if out := e.write("a", "m"); out.Delivered != n {
		t.Fatalf("outcome %+v, want %d delivered", out, n)
	}
	for _, c := range conns {
		if r, _ := c.read(); r.status != 200 || r.body != "a:m" {
			t.Fatalf("reply %d %q", r.status, r.body)
		}
	}
	if got := answeredHere.Load() - here; got != n {
		t.Fatalf("%d polls answered on the publisher's goroutine, want %d", got, n)
	}
	if got := handOffs.Load() - off; got != 0 {
		t.Fatalf("%d polls went on on a resumer, want none", got)
	}
	// And they park again, and serve the next poll.
	for _, c := range conns {
		c.send(pollRequest("registration=a"))
	}
	e.waitListeners("a", n)
	if out := e.write("a", "again"); out.Delivered != n {
		t.Fatalf("outcome %+v, want %d delivered", out, n)
	}
	for _, c := range conns {
		if r, _ := c.read(); r.body != "a:again" {
			t.Fatalf("second reply %q", r.body)
		}
	}
}

// A reply the socket does not take whole goes on on a resumer: the
// publisher's goroutine never waits for a client. Here one client does not
// read until the others have their whole reply, every reply is bigger than
// the sockets' buffers hold, and the write timeout is far longer than the
// test: a publisher that waited on the slow client would hold back the
// replies it had not written yet.
func TestPublisherNeverWaitsForAClient(t *testing.T) {
	bounded.Test(t, time.Minute)
	const fast = 7
	e := newEnv(t, takeover, time.Hour, Options{WriteTimeout: time.Minute})
	e.create("a")
	var conns []*rawConn
	for range fast + 1 {
		c := e.dial()
		c.send(pollRequest("registration=a"))
		conns = append(conns, c)
	}
	slow, quick := conns[0], conns[1:]
	e.waitListeners("a", fast+1)
	waitFor(t, "every poll parked", func() bool { return e.inLoop() == fast+1 })
	msg := strings.Repeat("x", 4<<20)
	off := handOffs.Load()
	outcome := make(chan channels.Outcome, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, _, _ := e.reg.Write(ctx, "a", []byte(msg))
		outcome <- out
	}()
	for _, c := range quick {
		if r, _ := c.read(); r.body != "a:"+msg {
			t.Fatalf("a reading client's reply: %d bytes, want %d", len(r.body), len(msg)+2)
		}
	}
	if r, _ := slow.read(); r.body != "a:"+msg {
		t.Fatalf("the slow client's reply: %d bytes, want %d", len(r.body), len(msg)+2)
	}
	if out := bounded.Recv(t, "the outcome", 5*time.Second, outcome); out.Delivered != fast+1 || out.Failed != 0 {
		t.Fatalf("outcome %+v, want %d delivered", out, fast+1)
	}
	if handOffs.Load() == off {
		t.Fatal("no reply went on on a resumer")
	}
}

// takeFromLoop takes the connections of clients, parked idle, from the
// loop, as it takes what it finds ready: a batch to serve by hand.
func (e *env) takeFromLoop(clients ...*rawConn) []*parked {
	e.t.Helper()
	waitFor(e.t, "the connections parked idle", func() bool { return e.inLoop() >= len(clients) })
	byClient := map[string]*parked{}
	e.h.mu.Lock()
	for c := range e.h.parked {
		c.mu.Lock()
		if c.state == inLoop {
			c.state, c.readable = resuming, true
			byClient[c.conn.RemoteAddr().String()] = c
		}
		c.mu.Unlock()
	}
	e.h.mu.Unlock()
	var batch []*parked
	for _, cl := range clients {
		c := byClient[cl.c.LocalAddr().String()]
		if c == nil {
			e.t.Fatal("a connection was not parked")
		}
		batch = append(batch, c)
	}
	return batch
}

// A batch of connections the loop found ready is served on one goroutine,
// and no client in it holds the others back: a head that came in part goes
// on on a resumer of its own. Here the batch is taken from the loop and
// served by hand, so that both connections are surely in it.
func TestReadyBatchIsNotHeldByAHeadInPieces(t *testing.T) {
	bounded.Test(t, time.Minute)
	e := newEnv(t, takeover, time.Minute, Options{})
	e.create("a")
	slow, quick := e.dial(), e.dial()
	e.park(slow)
	e.park(quick)
	batch := e.takeFromLoop(slow, quick)
	poll := pollRequest("registration=a")
	slow.send(poll[:20])
	quick.send(poll)
	waitFor(t, "both sent", func() bool { return e.serverUnread(slow) == 20 && e.serverUnread(quick) == len(poll) })

	served := make(chan struct{})
	go func() {
		resumeWork{ready: batch}.do()
		close(served)
	}()
	bounded.Recv(t, "the batch served", 2*time.Second, served)
	e.waitListeners("a", 1) // the quick client's poll waits
	slow.send(poll[20:])
	e.waitListeners("a", 2)
	if out := e.write("a", "m"); out.Delivered != 2 {
		t.Fatalf("outcome %+v, want both delivered", out)
	}
	for _, c := range []*rawConn{slow, quick} {
		if r, _ := c.read(); r.status != 200 || r.body != "a:m" {
			t.Fatalf("reply %d %q", r.status, r.body)
		}
	}
}

// slowSubscribe takes its time to subscribe to the channel "slow", as an
// engine's round trip might.
type slowSubscribe struct {
	Subscriber
	d time.Duration
}

func (h slowSubscribe) Subscribe(ctx context.Context, ids []string, r *channels.Resume) (*channels.Waiter, []string, error) {
	if slices.Contains(ids, "slow") {
		time.Sleep(h.d)
	}
	return h.Subscriber.Subscribe(ctx, ids, r)
}

// A connection of a batch that is slow to serve (an engine's round trip)
// sends the rest of the batch to other goroutines: behind two such polls
// of 1.5 s each, the third waits for one of them, not both.
func TestReadyBatchSpillsPastASlowConnection(t *testing.T) {
	bounded.Test(t, time.Minute)
	const slowFor = 1500 * time.Millisecond
	e := newEnv(t, takeover, time.Minute, Options{}, func(s Subscriber) Subscriber { return slowSubscribe{s, slowFor} })
	e.create("slow")
	e.create("a")
	clients := []*rawConn{e.dial(), e.dial(), e.dial()}
	for _, c := range clients {
		e.park(c)
	}
	batch := e.takeFromLoop(clients...)
	polls := []string{"registration=slow", "registration=slow", "registration=a"}
	for i, c := range clients {
		c.send(pollRequest(polls[i]))
	}
	waitFor(t, "all sent", func() bool {
		for i, c := range clients {
			if e.serverUnread(c) != len(pollRequest(polls[i])) {
				return false
			}
		}
		return true
	})
	start := time.Now()
	go resumeWork{ready: batch}.do()
	e.waitListeners("a", 1)
	if took := time.Since(start); took > slowFor+time.Second {
		t.Fatalf("the third poll waited %v, behind both slow ones", took)
	}
	e.waitListeners("slow", 2)
}

// A wake that comes late, for a parked poll with nothing to say (a
// publisher's, gathered before the poll was answered another way), neither
// holds its caller nor takes the poll out of the loop.
func TestLateWakeLeavesThePollParked(t *testing.T) {
	bounded.Test(t, time.Minute)
	e := newEnv(t, takeover, time.Hour, Options{})
	e.create("a")
	c := e.dial()
	c.send(pollRequest("registration=a"))
	e.waitListeners("a", 1)
	waitFor(t, "the poll parked", func() bool { return e.inLoop() == 1 })
	var pc *parked
	e.h.mu.Lock()
	for p := range e.h.parked {
		pc = p
	}
	e.h.mu.Unlock()
	done := make(chan struct{})
	go func() { pc.wakeFn(true); close(done) }()
	bounded.Recv(t, "the late wake's return", 2*time.Second, done)
	if e.inLoop() != 1 {
		t.Fatal("after a late wake the poll is no longer parked")
	}
	if out := e.write("a", "m"); out.Delivered != 1 {
		t.Fatalf("outcome %+v", out)
	}
	if r, _ := c.read(); r.body != "a:m" {
		t.Fatalf("reply %q", r.body)
	}
}
