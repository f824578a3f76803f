package longpoll

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/cometop/comet-operator/cometserver/channels"
	"github.com/cometop/comet-operator/cometserver/security"
	"github.com/cometop/comet-operator/test/bounded"
	"github.com/cometop/comet-operator/test/syncbuffer"
)

// thenOnSubscribe is a Hub whose Subscribe runs then with the new waiter,
// after it listens and before the request starts waiting: what happens in
// then is already there when the request looks.
type thenOnSubscribe struct {
	Subscriber
	then func(*channels.Waiter)
}

func (h thenOnSubscribe) Subscribe(ctx context.Context, ids []string, r *channels.Resume) (*channels.Waiter, []string, error) {
	w, ended, err := h.Subscriber.Subscribe(ctx, ids, r)
	if err == nil && w.Subscribed() {
		h.then(w)
	}
	return w, ended, err
}

// An abort that comes together with a message wins: the request gets 503
// and the message counts as failed for it (docs/cometserver.md). The
// message and the abort are both there before the request waits, so
// whichever it looks at first decides.
func TestAbortWinsOverASimultaneousMessage(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		for name, abort := range map[string]func(*security.State){
			"deactivate":       func(s *security.State) { s.Deactivate() },
			"set_timeout KILL": func(s *security.State) { s.SetTimeout(time.Hour, true) },
			"drain":            func(s *security.State) { s.Drain() },
		} {
			t.Run(name, func(t *testing.T) {
				var e *env
				outcome := make(chan channels.Outcome, 1)
				e = newEnvWith(t, envConfig{mode: m, timeout: time.Hour, hub: func(h Subscriber) Subscriber {
					return thenOnSubscribe{h, func(w *channels.Waiter) {
						pushed := make(chan struct{})
						w.OnReady(func(bool) { close(pushed) })
						go func() {
							out, _, err := e.reg.Write(context.Background(), "a", []byte("m"))
							if err != nil {
								t.Error(err)
							}
							outcome <- out
						}()
						bounded.Recv(t, "the message in the waiter", 5*time.Second, pushed)
						abort(e.state)
					}}
				}})
				e.create("a")
				if r := e.poll("registration=a"); r.status != 503 || r.body != "" {
					t.Fatalf("reply %d %q, want an empty 503", r.status, r.body)
				}
				if out := bounded.Recv(t, "the outcome", 5*time.Second, outcome); out != (channels.Outcome{Failed: 1}) {
					t.Fatalf("outcome %+v, want the message failed once", out)
				}
				if e.replies(503) != 1 || e.replies(200) != 0 {
					t.Fatalf("replies counted: 503 %d, 200 %d", e.replies(503), e.replies(200))
				}
			})
		}
	})
}

// A reply whose write fails counts its messages as failed, not delivered:
// here the client reads nothing and both socket buffers are small, so a
// reply of a megabyte cannot leave within the write timeout.
func TestFailedReplyCountsAsFailed(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		e := newEnvWith(t, envConfig{mode: m, timeout: time.Hour, opts: Options{WriteTimeout: 200 * time.Millisecond},
			accepted: func(c net.Conn) { c.(*net.TCPConn).SetWriteBuffer(4096) }})
		e.create("a")
		c := e.dial()
		c.c.(*net.TCPConn).SetReadBuffer(4096)
		c.send(pollRequest("registration=a"))
		e.waitListeners("a", 1)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		out, _, err := e.reg.Write(ctx, "a", []byte(strings.Repeat("\x00", 1<<20)))
		if err != nil || out != (channels.Outcome{Failed: 1}) {
			t.Fatalf("outcome %+v, %v; want the reply failed", out, err)
		}
		waitFor(t, "no waiting request", func() bool { return e.h.Waiting() == 0 })
	})
}

// A reply whose last write (the flush) fails counts as failed, even when
// writing it into a buffer worked: here every write's deadline has passed
// when it is made.
func TestFailedFlushCountsAsFailed(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		e := newEnv(t, m, time.Hour, Options{WriteTimeout: time.Nanosecond})
		e.create("a")
		c := e.dial()
		c.send(pollRequest("registration=a"))
		e.waitListeners("a", 1)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if out, _, err := e.reg.Write(ctx, "a", []byte("m")); err != nil || out != (channels.Outcome{Failed: 1}) {
			t.Fatalf("outcome %+v, %v; want the reply failed", out, err)
		}
	})
}

// A body must arrive within the read timeout (10 s by default): a stalled
// one gets 400 and the connection closes.
func TestStalledBodyGets400(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		e := newEnv(t, m, time.Minute, Options{ReadTimeout: 200 * time.Millisecond})
		conns := map[string]*rawConn{"a new connection": e.dial()}
		if m == takeover {
			parked := e.dial()
			e.park(parked)
			conns["a taken-over connection"] = parked
		}
		if m == takeover { // a chunked body, whose length the head does not tell
			chunked := e.dial()
			e.park(chunked)
			chunked.send("POST /comet HTTP/1.1\r\nHost: test\r\nContent-Type: " + ContentType + "\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nregis")
			start := time.Now()
			if r, _ := chunked.read(); r.status != 400 || time.Since(start) > 3*time.Second {
				t.Fatalf("a stalled chunked body on a taken-over connection: %d after %v", r.status, time.Since(start))
			}
		}
		for name, c := range conns {
			start := time.Now()
			c.send("POST /comet HTTP/1.1\r\nHost: test\r\nContent-Type: " + ContentType + "\r\nContent-Length: 40\r\n\r\nregistration=")
			r, _ := c.read()
			if r.status != 400 || !strings.HasPrefix(r.body, "cannot read body") {
				t.Fatalf("%s: %d %q, want 400", name, r.status, r.body)
			}
			if took := time.Since(start); took > 3*time.Second {
				t.Fatalf("%s: the 400 came after %v", name, took)
			}
			if !c.closedByServer() {
				t.Fatalf("%s: left open after a body it could not read", name)
			}
		}
	})
}

// panicky is a Hub that panics on Subscribe to the channel "boom".
type panicky struct{ Subscriber }

func (h panicky) Subscribe(ctx context.Context, ids []string, r *channels.Resume) (*channels.Waiter, []string, error) {
	if len(ids) > 0 && ids[0] == "boom" {
		panic("a bug in a hub")
	}
	return h.Subscriber.Subscribe(ctx, ids, r)
}

// A panic while serving a taken-over connection is logged with its stack
// and closes that connection, as net/http does with a handler's; the
// server goes on serving the others.
func TestPanicInATakenOverConnection(t *testing.T) {
	logs := &syncbuffer.Buffer{}
	e := newEnvWith(t, envConfig{mode: takeover, timeout: time.Minute,
		opts: Options{Logger: slog.New(slog.NewTextHandler(logs, nil))},
		hub:  func(h Subscriber) Subscriber { return panicky{h} }})
	c := e.dial()
	e.park(c)
	c.send(pollRequest("registration=boom"))
	if !c.closedByServer() {
		t.Fatal("the connection stayed open after a panic")
	}
	waitFor(t, "the panic logged", func() bool {
		return strings.Contains(logs.String(), "panic serving a comet connection") && strings.Contains(logs.String(), "a bug in a hub")
	})
	other := e.dial()
	e.park(other)
	waitFor(t, "the panicked connection untracked", func() bool { return e.parkedConns() == 1 })
}
