package longpoll

// Taking comet connections over from net/http.
//
// While a handler runs, net/http keeps two goroutines on its connection
// (one runs the handler, one reads in the background to notice a hang-up)
// and a 4 KiB reader and writer: about 20 KiB for a request that does
// nothing but wait. So the handler takes a kept-alive HTTP/1.1 poll's
// connection over (Hijack) and serves it from a goroutine of its own.
// While a poll waits, on Linux, the connection holds no goroutine at all:
// it is parked in an epoll set (parkloop_linux.go) that notices a hang-up,
// and an event, an abort, a hang-up or the timeout starts a goroutine that
// answers the poll and goes on with the connection. Elsewhere, and for a
// connection without a file descriptor, the goroutine waits in a one-byte
// read: the read notices a hang-up, and an event, an abort or the timeout
// wakes it by moving the read deadline.
//
// After each reply the same goroutine reads the client's next request. It
// serves it itself only when it is another poll that net/http would take
// exactly as it reads it (see serves): HTTP/1.1, a valid Host, valid header
// names and values, framed by Content-Length alone, no expectation, no
// upgrade. Anything else, and anything that does not parse, goes back to
// net/http through the Listener with every byte read so far, and net/http
// answers it as it would have on its own: a taken-over connection can never
// frame a request differently (request smuggling), nor accept one that
// net/http refuses. Requests read here get net/http's limits: header size
// and time, idle time, and net/http's tolerance of a CRLF after a POST.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/cometop/comet-operator/cometserver/channels"
)

// Listener wraps the client endpoint's listener so that the handler can
// take connections over and give them back to the http.Server serving it.
// Without it the handler answers inside net/http. Call it once, before
// serving; closing the returned listener stops the takeover.
func (h *Handler) Listener(inner net.Listener) net.Listener {
	l := &listener{
		Listener: inner,
		accepted: make(chan accepted),
		back:     make(chan net.Conn, 64),
		done:     make(chan struct{}),
	}
	go l.acceptLoop()
	go h.watchAborts(l.done)
	h.mu.Lock()
	h.handback = l.giveBack
	h.mu.Unlock()
	return l
}

// Shutdown closes the taken-over connections that are idle and waits, until
// ctx ends, for the others to finish their replies; then it closes what
// is left. Waiting polls end when the state drains (security.State.Drain),
// which the caller does first.
func (h *Handler) Shutdown(ctx context.Context) {
	h.mu.Lock()
	if !h.closing.Load() {
		h.closing.Store(true)
		close(h.stop)
	}
	h.mu.Unlock()
	h.wakeAll()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		h.mu.Lock()
		n := len(h.parked) + h.hijacks
		h.mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			h.mu.Lock()
			for c := range h.parked {
				c.conn.Close()
			}
			h.mu.Unlock()
			return
		}
	}
}

// listener merges accepted connections with the ones given back.
type listener struct {
	net.Listener
	accepted  chan accepted
	back      chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
}

type accepted struct {
	c   net.Conn
	err error
}

func (l *listener) acceptLoop() {
	for {
		c, err := l.Listener.Accept()
		select {
		case l.accepted <- accepted{c, err}:
		case <-l.done:
			if c != nil {
				c.Close()
			}
			return
		}
		var temporary interface{ Temporary() bool }
		if err != nil && !(errors.As(err, &temporary) && temporary.Temporary()) {
			return
		}
	}
}

func (l *listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.back:
		return c, nil
	case a := <-l.accepted:
		return a.c, a.err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *listener) Close() error {
	err := net.ErrClosed
	l.closeOnce.Do(func() {
		close(l.done)
		err = l.Listener.Close()
	})
	return err
}

// giveBack hands c to the http.Server as if newly accepted; false if the
// listener is closed.
func (l *listener) giveBack(c net.Conn) bool {
	select {
	case <-l.done:
		return false
	default:
	}
	select {
	case l.back <- c:
		return true
	case <-l.done:
		return false
	}
}

// replayConn serves bytes already read from its connection before reading
// on, for a connection given back in the middle of a request.
type replayConn struct {
	net.Conn
	replay []byte
}

// CloseWrite lets net/http half-close the connection as it does a TCP
// connection of its own, so that a refusal is not lost to a reset.
func (c *replayConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

func (c *replayConn) Read(b []byte) (int, error) {
	if len(c.replay) > 0 {
		n := copy(b, c.replay)
		c.replay = c.replay[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// watchAborts wakes every parked connection when the state aborts its
// waiting requests (deactivate, set_timeout KILL, drain), until done.
func (h *Handler) watchAborts(done <-chan struct{}) {
	for {
		select {
		case <-h.state.Aborted():
			h.wakeAll()
		case <-done:
			return
		}
	}
}

func (h *Handler) wakeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for c := range h.parked {
		c.wake(false)
	}
}

// takeOver hijacks the connection of r, a poll that net/http read, and
// serves it and the connection's next requests from a goroutine of its
// own. It reports false, touching nothing, where the takeover is off or
// r is not for it: the caller then answers inside net/http.
func (h *Handler) takeOver(w http.ResponseWriter, r *http.Request) bool {
	h.mu.Lock()
	handback := h.handback
	// Only kept-alive HTTP/1.1 polls with a body of a known length are
	// taken: anything else is rare and net/http knows its rules.
	if handback == nil || h.closing.Load() || r.Method != http.MethodPost || r.ProtoMajor != 1 || r.ProtoMinor != 1 ||
		r.Close || r.ContentLength < 0 || r.Header.Get("Expect") != "" || r.Header.Get("Upgrade") != "" {
		h.mu.Unlock()
		return false
	}
	// net/http's Shutdown stops waiting for a connection once it is
	// hijacked: until it is tracked, ours must count it instead.
	h.hijacks++
	hijacked := h.hijacked
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		h.hijacks--
		h.mu.Unlock()
	}()
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return false // HTTP/2, a recorder: not a connection of our own
	}
	if hijacked != nil {
		hijacked()
	}
	if rc, ok := conn.(*replayConn); ok && len(rc.replay) == 0 {
		conn = rc.Conn // given back earlier, and its replay is read
	}
	c := &parked{h: h, conn: conn, path: r.URL.Path, quick: quickPath(r.URL.Path), handback: handback}
	c.wakeFn = c.wake
	if sc, ok := conn.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			c.raw, c.loop = raw, theParkLoop()
		}
	}
	buffered, _ := brw.Reader.Peek(brw.Reader.Buffered()) // the body, or more, that net/http read with the head
	c.pending = append([]byte(nil), buffered...)
	// After a hijack the request's body is no longer net/http's to read:
	// it is read from the connection here.
	s := c.serving()
	s.req = *fromHTTP(r, context.WithoutCancel(r.Context()))
	s.body = bodyReader{r: connReader{c}, left: r.ContentLength}
	s.req.body = &s.body
	c.bodyBuffered = int64(len(c.pending)) >= r.ContentLength
	h.track(c)
	go c.serve(&s.req)
	return true
}

func (h *Handler) track(c *parked) {
	h.mu.Lock()
	h.parked[c] = struct{}{}
	h.mu.Unlock()
}

func (h *Handler) untrack(c *parked) {
	h.mu.Lock()
	delete(h.parked, c)
	h.mu.Unlock()
}

// parked is a connection taken over from net/http: an exchange for
// respond, and the keep-alive loop that reads its next requests.
type parked struct {
	h            *Handler
	conn         net.Conn
	path         string              // the path its polls must go to, to be served here
	quick        bool                // path can be matched in a head's bytes (parseHead)
	s            *serving            // while a request is read and served, from servingPool
	handback     func(net.Conn) bool // the Listener's giveBack
	hdr          http.Header         // extra headers of the current reply (CORS)
	pending      []byte              // read from conn, not yet parsed
	br           *bufio.Reader       // s.br while a head is read and after; nil before
	one          [1]byte             // for the read that waits
	recording    bool                // a head is being read: keep its bytes in rec
	bodyBuffered bool                // the current request's body is already read
	sentAhead    bool                // the client sent more while a poll waited
	done         bool                // the connection closes after this reply
	here         bool                // served where nothing may wait: a publisher's goroutine, a loop batch
	writeUntil   time.Time           // the write deadline set last
	wakeFn       func(bool)          // c.wake, made once: a method value allocates at each use
	unsent       *unsentReply        // what a reply written with here left unwritten
	mu           sync.Mutex          // guards inRequest, the read deadline and the park state

	// Parked with no goroutine (park): the loop and the connection's file
	// descriptor, the poll that waits, what ends its wait.
	loop        *parkLoop       // nil: polls wait on a goroutine
	raw         syscall.RawConn // nil without a file descriptor
	loopID      int32           // the socket's identifier in the loop, 0 before its first park
	state       parkState
	waitFor     *poll       // the poll parked; nil: parked between requests
	timer       *time.Timer // fires by until while parked (armTimer), made once
	timerAt     monotime    // when timer fires; 0: not armed
	until       monotime    // the parked wait's end: the poll's deadline, or the idle timeout
	readable    bool        // the loop woke it: the client sent something or left
	edge        bool        // the loop saw data or a hang-up since the last read began
	hup         bool        // the loop saw the client's end: a read that returns data leaves it unread
	drained     bool        // the last read left nothing in the socket
	sent        bool        // resumed by the loop's edge: the next request is there, usually
	nonblocking bool        // connReader reads without waiting (readNow)
	inRequest   bool        // a request is being read: wakes must not cut it (guarded by mu)
	idleUntil   time.Time   // the idle timeout before the next request
}

type parkState uint8

const (
	running  parkState = iota // a goroutine serves the connection
	inLoop                    // a poll waits, no goroutine: the next wake starts one
	resuming                  // woken: a goroutine is starting
)

var aLongTimeAgo = time.Unix(1, 0)

var crlfcrlf = []byte("\r\n\r\n")

// arm's first argument.
const (
	awaiting  = false // an event, or the next request: a wake cuts the read
	inRequest = true  // a request is being read: a wake must not cut it
)

// wake ends a parked poll's wait, or cuts short a read that waits for a
// poll's event or, between requests, for the next one. A parked poll is
// answered on the caller's goroutine when it holds no lock (answerHere),
// else on a resumer.
func (c *parked) wake(lockFree bool) {
	c.mu.Lock()
	switch {
	case c.state == inLoop:
		c.state = resuming
		if lockFree {
			c.mu.Unlock()
			c.answerHere()
			return
		}
		resumeOn(c)
	case !c.inRequest:
		c.conn.SetReadDeadline(aLongTimeAgo)
	}
	c.mu.Unlock()
}

// onEdge is the loop's news: the client sent something, or left (hup).
// A parked connection is the loop's to resume (resume true; see
// resumeReady); a running one reads on before it parks.
func (c *parked) onEdge(hup bool) (resume bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.edge = true
	c.hup = c.hup || hup
	if c.state != inLoop {
		return false
	}
	c.state, c.readable = resuming, true
	return true
}

// park leaves p to wait with no goroutine (see parkIn), or on a resumer
// when the connection may not wait here (c.here).
func (c *parked) park(p *poll) bool {
	return c.parkIn(p) || c.here && c.handOff(wakeup{p: p})
}

// parkIn leaves the connection, with the poll p waiting or (nil) between
// requests, with no goroutine until a wake, the loop's news of the
// client, or the deadline (p's, or the idle timeout): on Linux, for a
// connection with a file descriptor, and only when its socket holds
// nothing unread. It reports false if the caller must go on instead.
func (c *parked) parkIn(p *poll) bool {
	if c.loop == nil || c.raw == nil || len(c.pending) > 0 || c.sentAhead || (c.br != nil && c.br.Buffered() > 0) {
		return false
	}
	// A socket added now reports what it holds as an edge. One added
	// earlier parks at once if a read emptied it and no edge came since;
	// else a read that does not wait tells (an edge can reach the loop
	// after the read it announced).
	c.mu.Lock()
	unsure, hup := c.loopID != 0 && (c.edge || !c.drained), c.hup
	c.mu.Unlock()
	if hup {
		return false // the caller reads to the end
	}
	if unsure && (!c.takeByte() || len(c.pending) > 0) {
		return false // the client sent more, or left: the caller reads it
	}
	c.mu.Lock()
	if c.edge && c.loopID != 0 { // it came during that read
		c.mu.Unlock()
		return false
	}
	// Added at its first park only. A later park does not notice a close:
	// only Shutdown closes a connection from outside, after setting
	// closing, and the check after the park below wakes it.
	if c.loopID == 0 {
		var err error
		if cerr := c.raw.Control(func(fd uintptr) { err = c.loop.watch(int(fd), c) }); cerr != nil {
			c.mu.Unlock()
			return false // closed meanwhile (a forced shutdown)
		}
		if err != nil {
			// The set is full (fs.epoll.max_user_watches), say: this
			// connection's polls wait on their goroutine from now on.
			c.loop = nil
			c.mu.Unlock()
			c.h.o.Logger.Warn("cannot park a comet connection, waiting on a goroutine", "err", err)
			return false
		}
	}
	c.releaseReader() // a parked connection holds no buffer
	c.here = false    // whoever resumes it says
	c.state, c.waitFor, c.readable = inLoop, p, false
	parks.Add(1)
	c.until = mono(c.idleUntil)
	if p != nil {
		c.until = mono(p.deadline)
	}
	c.armTimer()
	c.mu.Unlock()
	// From here on c may be resumed, and belongs to that goroutine.
	if p != nil {
		p.waiter.OnReady(c.wakeFn)
		if closed(p.abort) || c.h.closing.Load() { // came before the park: wakeAll found it running
			c.wake(false)
		}
	} else if c.h.closing.Load() {
		c.wake(false)
	}
	return true
}

// armTimer makes the timer fire by c.until; c.mu is held. It only ever
// moves the timer earlier: a poll is answered and its connection parks
// again far sooner than its timeout, so most parks leave the timer as it
// is, and when it fires before the wait's end, timeUp sets it again for
// what is left. Moving a runtime timer at every park and stopping it at
// every resume cost about 2% of the CPU per delivery.
func (c *parked) armTimer() {
	if c.timerAt != 0 && c.timerAt <= c.until {
		return
	}
	c.timerAt = c.until
	if c.timer == nil {
		c.timer = time.AfterFunc(c.until.left(), c.timeUp)
	} else {
		c.timer.Reset(c.until.left())
	}
}

// timeUp is the timer: it resumes a connection whose parked wait is over,
// and sets itself again for one whose wait goes on. A connection that is
// not parked bounds its own reads and parks again with armTimer.
func (c *parked) timeUp() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.timerAt = 0
	if c.state != inLoop {
		return
	}
	if left := c.until.left(); left > 0 {
		c.timerAt = c.until
		c.timer.Reset(left)
		return
	}
	c.state = resuming
	resumeOn(c)
}

// stopTimer lets go of a connection that ends: a timer set far ahead would
// hold it until then.
func (c *parked) stopTimer() {
	c.mu.Lock()
	if c.timer != nil {
		c.timer.Stop()
	}
	c.timerAt = 0
	c.mu.Unlock()
}

// resumers are the goroutines idle after resuming a connection, waiting
// for the next one. A goroutine started afresh for each resume grew its
// stack to the depth of a request's path every time (about 7% of the CPU
// per delivery); one that served a connection before has grown it already.
var resumers = make(chan resumeWork)

// resumeWork is a resumer's work: one connection, or the ones the loop
// found ready in one wait (ready), served with nothing waiting.
type resumeWork struct {
	c     *parked
	ready []*parked
}

// readyBatch bounds the connections one resumer serves in turn: the loop
// finds a handful ready per wait at 10,000 deliveries/s, and dozens at
// 20,000; more than this go to another resumer, for the other processors.
const readyBatch = 16

// slowServe is how long serving one connection of a batch may take before
// the rest of the batch goes to other resumers: an engine's round trip
// (Redis) must not hold the others back.
const slowServe = time.Millisecond

// resumerIdle is how long an idle resumer waits for work before it ends:
// publishes come in bursts, each resuming every poll of a channel at once,
// and a second covers the gaps between them at any rate worth a pool.
const resumerIdle = time.Second

// resumersAlive counts the resumers, busy or idle: goroutines of a pool,
// not of a connection. For the tests: parks counts the parks,
// answeredHere the polls answered on a publisher's goroutine, and
// handOffs those that went on on a resumer from there.
var resumersAlive, parks, answeredHere, handOffs atomic.Int64

// resumeOn resumes c on an idle resumer, or on a new one if none is idle.
func resumeOn(c *parked) { work(resumeWork{c: c}) }

// resumeReady resumes the connections the loop found ready in one wait,
// readyBatch at a time per resumer: one goroutine hand-off for several
// connections instead of one each. ready is the caller's to reuse.
func resumeReady(ready []*parked) {
	for len(ready) > 0 {
		n := min(len(ready), readyBatch)
		work(resumeWork{ready: slices.Clone(ready[:n])})
		ready = ready[n:]
	}
}

func work(w resumeWork) {
	select {
	case resumers <- w:
	default:
		go resumer(w)
	}
}

func resumer(w resumeWork) {
	resumersAlive.Add(1)
	defer resumersAlive.Add(-1)
	idle := time.NewTimer(resumerIdle)
	defer idle.Stop()
	for {
		w.do()
		idle.Reset(resumerIdle)
		select {
		case w = <-resumers:
		case <-idle.C:
			return
		}
	}
}

func (w resumeWork) do() {
	if w.c != nil {
		w.c.resume()
		return
	}
	// Each served with nothing waiting (c.here): a head in pieces, a body
	// still coming, a poll that cannot park go on on a resumer of their
	// own, so that no client holds the others back.
	for i, c := range w.ready {
		start := time.Now()
		c.here = true
		c.resume()
		if i+1 < len(w.ready) && time.Since(start) > slowServe {
			for _, c := range w.ready[i+1:] {
				resumeOn(c)
			}
			return
		}
	}
}

// answerHere answers a parked poll on the goroutine that brought its
// news, a publisher's, instead of waking a resumer for it: that saves a
// goroutine hand-off per delivery, about a tenth of the CPU a delivery
// costs. It goes only as far as needs no wait (c.here, as for a batch the
// loop found ready): a reply the socket does not take whole, or a
// connection that cannot park again, goes on on a resumer (handOff).
func (c *parked) answerHere() {
	answeredHere.Add(1)
	c.here = true
	c.resume()
}

// handOff leaves the connection to a resumer, to go on from w; the caller
// lets go of it.
func (c *parked) handOff(w wakeup) bool {
	handOffs.Add(1)
	c.here = false
	c.mu.Lock()
	c.state, c.waitFor, c.readable = resuming, w.p, w.readable
	resumeOn(c)
	c.mu.Unlock()
	return true
}

// resume goes on with a parked connection, on the goroutine that a wake
// started: it ends the parked poll's wait, or reads the next request.
func (c *parked) resume() {
	c.mu.Lock()
	w := wakeup{p: c.waitFor, readable: c.readable, hup: c.hup}
	c.state, c.waitFor, c.readable = running, nil, false
	c.mu.Unlock()
	c.run(nil, &w)
}

// wakeup is what resumed a parked connection.
type wakeup struct {
	p             *poll // the poll that waited; nil: between requests
	readable, hup bool  // the loop's news: data, or the client's end
}

// resumed is the first step of a resumed connection: it answers the
// parked poll, or reads the next request, or parks again after a wake that
// was not for it. It reports the next request and whether the connection
// parked again.
func (c *parked) resumed(w *wakeup) (*request, bool) {
	if c.here && !w.readable && (w.p == nil || !c.over(w.p)) {
		// A wake that came late: the poll waits on, parked again if it can.
		if w.p != nil && c.parkIn(w.p) {
			return nil, true
		}
		return nil, c.handOff(*w)
	}
	if w.p == nil {
		if c.unsent != nil || c.done { // left by a serve with c.here (see after)
			c.flushUnsent()
			return c.after()
		}
		// An abort, or a timer or an edge that came late: nothing new.
		if !w.readable && !c.h.closing.Load() && time.Now().Before(c.idleUntil) && c.parkIn(nil) {
			return nil, true
		}
		// The next request (read whole in one system call, usually), a
		// hang-up, the idle timeout or a shutdown.
		c.sent = w.readable
		return c.next()
	}
	// What the client sent, or its end, decides, as the one-byte read did:
	// a poll it pipelined before half-closing keeps it present.
	present := !(w.readable || w.hup) || c.takeByte()
	// Woken by an edge that a read already took: park again.
	if w.readable && present && len(c.pending) == 0 && !c.over(w.p) && c.parkIn(w.p) {
		return nil, true
	}
	if c.here && present && !c.over(w.p) { // the client sent more ahead: wait on a resumer
		return nil, c.handOff(wakeup{p: w.p})
	}
	c.h.finish(c, w.p, present && c.wait(w.p))
	return c.after()
}

// arm sets the read deadline, and whether a request is being read, under
// the lock wake takes: a wake that came earlier is overwritten, so callers
// re-check their conditions after arming, and one that comes later cuts
// the read.
func (c *parked) arm(request bool, deadline time.Time) {
	c.mu.Lock()
	c.inRequest = request
	c.conn.SetReadDeadline(deadline)
	c.mu.Unlock()
}

// serve answers r, then the connection's next requests, until it closes,
// goes back to net/http or parks a poll.
func (c *parked) serve(r *request) { c.run(r, nil) }

// run serves the connection on this goroutine: first what woke it, if it
// was parked, then requests from r on, until the connection closes, goes
// back to net/http, or parks, when its wake goes on from there. A panic is
// logged and closes the connection, as net/http does with a handler's.
func (c *parked) run(r *request, w *wakeup) {
	handedOn := false // parked: c belongs to whoever resumes it
	defer func() {
		if !handedOn {
			c.stopTimer()
			if c.loop != nil {
				c.loop.forget(c, -1) // closed, or given back (and forgotten there)
			}
			c.h.untrack(c)
		}
	}()
	defer func() {
		if err := recover(); err != nil && err != http.ErrAbortHandler {
			buf := make([]byte, 64<<10)
			buf = buf[:runtime.Stack(buf, false)]
			c.h.o.Logger.Error("panic serving a comet connection", "remote", c.conn.RemoteAddr().String(), "panic", err, "stack", string(buf))
			c.conn.Close()
		}
	}()
	if w != nil {
		if r, handedOn = c.resumed(w); handedOn {
			return
		}
	}
	for r != nil {
		if !c.h.respond(c, r) {
			handedOn = true
			return
		}
		r, handedOn = c.after()
	}
}

// after ends a request: it closes the connection, parks it until the
// client sends more (parked true), or reads the next request, which it
// returns if this connection serves it.
func (c *parked) after() (next *request, parked bool) {
	c.releaseReader()
	if c.unsent != nil || c.here && c.done {
		// The rest of a reply written without waiting, or the close after
		// it (which reads what the client still sends): on a resumer.
		return nil, c.handOff(wakeup{})
	}
	if c.done {
		c.close()
		return nil, false
	}
	c.idleUntil = time.Now().Add(c.h.o.IdleTimeout)
	if c.parkIn(nil) {
		return nil, true
	}
	if c.here { // the client sent more, or left: reading it may wait
		return nil, c.handOff(wakeup{readable: true})
	}
	return c.next()
}

func (c *parked) header() http.Header {
	if c.hdr == nil {
		c.hdr = make(http.Header, 2)
	}
	return c.hdr
}

func (c *parked) bodyDeadline(t time.Time) {
	if !c.bodyBuffered && !t.IsZero() { // else nothing is read, or wait arms its own
		c.arm(inRequest, t)
	}
}

// wait blocks in a one-byte read until a wake, the deadline or the
// client's bytes. Like net/http's background read it keeps at most one
// byte the client sends ahead and then stops reading: the rest waits in
// the socket for the next request.
func (c *parked) wait(p *poll) bool {
	if c.over(p) { // a resumed poll, usually: no deadline to move
		return true
	}
	p.waiter.OnReady(c.wakeFn)
	for {
		c.arm(awaiting, p.deadline)
		if c.over(p) {
			return true
		}
		if c.sentAhead {
			return c.waitWithoutReading(p)
		}
		n, err := c.conn.Read(c.one[:])
		switch {
		case n > 0:
			c.pending = append(c.pending, c.one[0])
			c.sentAhead = true
		case !isTimeout(err):
			return false // the client left
		}
	}
}

// over reports whether p has something to say: an abort, a shutdown,
// news, its deadline.
func (c *parked) over(p *poll) bool {
	return closed(p.abort) || c.h.closing.Load() || ready(p.waiter) || !time.Now().Before(p.deadline)
}

// waitWithoutReading waits for p on channels, once reading has stopped.
func (c *parked) waitWithoutReading(p *poll) bool {
	timer := time.NewTimer(time.Until(p.deadline))
	defer timer.Stop()
	select {
	case <-p.waiter.Ready():
	case <-timer.C:
	case <-p.abort:
	case <-c.h.stop:
	}
	return true
}

var replyPool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// reply sends one whole response in one write, with the headers net/http
// would give it, and resolves what it carries. With c.here the write does
// not wait: what the socket does not take is kept in c.unsent, for a
// resumer to write and resolve.
func (c *parked) reply(status int, body []byte, close bool, carried []channels.Event) {
	c.done = c.done || close
	bp := replyPool.Get().(*[]byte)
	b := append((*bp)[:0], "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(status)...)
	b = append(b, "\r\nContent-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n"...)
	for k, vs := range c.hdr {
		for _, v := range vs {
			b = append(append(append(append(b, k...), ": "...), v...), "\r\n"...)
		}
	}
	now := time.Now()
	b = append(b, "Date: "...)
	b = appendDate(b, now)
	b = append(b, "\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	if close {
		b = append(b, "\r\nConnection: close"...)
	}
	b = append(b, "\r\n\r\n"...)
	b = append(b, body...)
	c.boundWrite(now)
	var err error
	if c.here {
		var n int
		if !time.Now().Before(c.writeUntil) {
			err = os.ErrDeadlineExceeded // as a write past its deadline fails
		} else if n, err = c.writeNow(b); err == nil && n < len(b) || err == errWouldBlock {
			c.unsent = &unsentReply{b: append([]byte(nil), b[n:]...), carried: carried}
			err, carried = nil, nil
		}
	} else {
		_, err = c.conn.Write(b)
	}
	if cap(b) <= 16<<10 { // keep the pool small; big replies are rare
		*bp = b
		replyPool.Put(bp)
	}
	if err != nil {
		c.done = true
	}
	channels.Resolve(carried, err == nil)
}

// unsentReply is what a reply written without waiting left unwritten, and
// the messages it carries.
type unsentReply struct {
	b       []byte
	carried []channels.Event
}

// flushUnsent writes the rest of a reply begun with c.here, waiting as
// any reply does, and resolves the messages it carries.
func (c *parked) flushUnsent() {
	u := c.unsent
	if u == nil {
		return
	}
	c.unsent = nil
	c.boundWrite(time.Now())
	_, err := c.conn.Write(u.b)
	if err != nil {
		c.done = true
	}
	channels.Resolve(u.carried, err == nil)
}

// boundWrite bounds the reply about to be written by the write timeout.
// Moving a deadline costs a runtime timer update, so it moves only once
// less than half the timeout is left: a reply then has between half the
// timeout and the whole of it, never more.
func (c *parked) boundWrite(now time.Time) {
	if c.writeUntil.Sub(now) < c.h.o.WriteTimeout/2 {
		c.writeUntil = now.Add(c.h.o.WriteTimeout)
		c.conn.SetWriteDeadline(c.writeUntil)
	}
}

// dateCache holds the Date header's value for the current second:
// formatting it costs more than the rest of a reply's head.
var dateCache atomic.Pointer[cachedDate]

type cachedDate struct {
	sec  int64
	text []byte
}

// appendDate appends now in http.TimeFormat, as net/http's Date header.
func appendDate(b []byte, now time.Time) []byte {
	sec := now.Unix()
	if d := dateCache.Load(); d != nil && d.sec == sec {
		return append(b, d.text...)
	}
	d := &cachedDate{sec: sec, text: now.UTC().AppendFormat(nil, http.TimeFormat)}
	dateCache.Store(d)
	return append(b, d.text...)
}

// close closes the connection the way net/http does after refusing a
// request: the client may still be sending, and closing with its bytes
// unread would reset the connection and could destroy the reply before
// the client reads it. So stop writing, then read what comes for a while.
func (c *parked) close() {
	if cw, ok := c.conn.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
		c.arm(inRequest, time.Now().Add(500*time.Millisecond))
		io.Copy(io.Discard, io.LimitReader(c.conn, 256<<10))
	}
	c.conn.Close()
}

// next reads the connection's next request. It returns it when this
// connection serves it, or nil once the connection is closed or given back
// to net/http, or (handedOn true) left to a resumer (see readHead).
func (c *parked) next() (*request, bool) {
	c.hdr, c.sentAhead = nil, false
	req, ok := c.readHead()
	switch {
	case !ok:
		return nil, false
	case req == handedOff:
		return nil, true
	case req == nil:
		c.giveBack()
		return nil, false
	}
	c.recording = false
	c.bodyBuffered = int64(c.br.Buffered()) >= req.contentLength
	return req, false
}

// handedOff is what readHead returns for a head it left to a resumer.
var handedOff = new(request)

// readHead waits, within the idle timeout, for the client's next request
// and reads its head within the header limits, through a pooled reader
// that goes on to serve the body. It returns nil and true for a head that
// this connection does not serve, or that does not parse: net/http must
// read it again and answer it. On false the connection is closed. With
// c.here it takes only a request that came whole, head and body, and
// parseHead reads; it leaves any other to a resumer (handedOff).
func (c *parked) readHead() (*request, bool) {
	s := c.serving()
	c.br = s.br
	c.br.Reset(connReader{c})
	s.rec, c.recording = s.rec[:0], true
	// Wait for the request in the reader: its first read then takes the
	// whole head, usually the body too, in one system call. As net/http,
	// wait for four bytes: a connection that ends before closes unanswered.
	// A connection the loop woke because the client sent something reads
	// it first without waiting, and so without a deadline to move.
	idleUntil := c.idleUntil
	for now := c.sent; ; now = false {
		c.sent = false
		if !now {
			c.arm(awaiting, idleUntil)
		}
		if c.h.closing.Load() || !time.Now().Before(idleUntil) {
			c.releaseReader()
			c.conn.Close()
			return nil, false
		}
		c.nonblocking = now
		_, err := c.br.Peek(4)
		c.nonblocking = false
		if err == nil {
			break
		}
		if c.here {
			return c.handHeadOff()
		}
		if !isTimeout(err) && err != errWouldBlock { // the client left
			c.releaseReader()
			c.conn.Close()
			return nil, false
		}
	}
	// net/http's tolerance for old clients, after a POST (as every request
	// served here is): a CR or LF or two before the next request are
	// skipped. They are not given back with the request.
	peek, _ := c.br.Peek(4)
	skip := 0
	for skip < len(peek) && (peek[skip] == '\r' || peek[skip] == '\n') {
		skip++
	}
	c.br.Discard(skip)
	s.rec = s.rec[skip:]
	// A head read whole with its first bytes (the usual case) reads the
	// connection no more: no deadline to move then. And the usual poll's
	// head is read in place (head.go).
	buffered, _ := c.br.Peek(c.br.Buffered())
	end := bytes.Index(buffered, crlfcrlf) + len(crlfcrlf)
	if end >= len(crlfcrlf) && end <= c.h.o.MaxHeaderBytes && c.quick && !c.h.closing.Load() {
		if q, ok := parseHead(buffered[:end], c.path); ok && (!c.here || int64(len(buffered)-end) >= q.contentLength) {
			c.br.Discard(end)
			return c.quickRequest(q), true
		}
	}
	if c.here { // the rest would be read waiting, or by net/http
		return c.handHeadOff()
	}
	if end < len(crlfcrlf) {
		c.arm(inRequest, time.Now().Add(c.h.o.ReadHeaderTimeout))
	}
	req, err := http.ReadRequest(c.br)
	switch {
	case err == nil && c.serves(req):
		s.req = *fromHTTP(req, context.Background())
		return &s.req, true
	case err == nil:
		return nil, true
	case isCommonNetReadError(err): // net/http answers these with nothing either
		c.releaseReader()
		c.conn.Close()
		return nil, false
	}
	return nil, true
}

// handHeadOff leaves the head being read, and what came after it, to a
// resumer, which reads it again from the start.
func (c *parked) handHeadOff() (*request, bool) {
	c.releaseReader()
	c.handOff(wakeup{readable: true})
	return handedOff, true
}

// quickRequest is the request of a head that parseHead read.
func (c *parked) quickRequest(q quickHead) *request {
	contentType := ContentType // no copy for the usual value
	if string(q.contentType) != ContentType {
		contentType = string(q.contentType)
	}
	s := c.s
	s.body = bodyReader{r: c.br, left: q.contentLength}
	s.req = request{
		method:        http.MethodPost,
		contentType:   contentType,
		origin:        string(q.origin),
		contentLength: q.contentLength,
		body:          &s.body,
		ctx:           context.Background(), // as http.ReadRequest gives it
	}
	return &s.req
}

// isCommonNetReadError is net/http's own test (server.go) of a read error
// that closes a connection without an answer.
func isCommonNetReadError(err error) bool {
	if err == io.EOF {
		return true
	}
	if neterr, ok := err.(net.Error); ok && neterr.Timeout() {
		return true
	}
	if oe, ok := err.(*net.OpError); ok && oe.Op == "read" {
		return true
	}
	return false
}

// serves reports whether req is a poll this connection serves itself, as
// net/http would read it: a kept-alive HTTP/1.1 POST to the same path,
// which net/http's own checks accept (http.Server's readRequest: the
// version, one valid Host, valid header names and values), framed by its
// Content-Length alone, with no expectation and no upgrade. Anything else
// goes back to net/http, which answers it as it would have on its own.
func (c *parked) serves(req *http.Request) bool {
	if req.Method != http.MethodPost || req.URL.Path != c.path || len(req.RequestURI) == 0 || req.RequestURI[0] != '/' ||
		req.ProtoMajor != 1 || req.ProtoMinor != 1 || req.Close || c.h.closing.Load() ||
		len(req.TransferEncoding) > 0 || req.ContentLength < 0 ||
		req.Header.Get("Expect") != "" || req.Header.Get("Upgrade") != "" {
		return false
	}
	// http.ReadRequest has refused a second Host and moved the one Host
	// header, if any, to req.Host: an empty one is a missing or an empty
	// header, which net/http tells apart (400, or served).
	if req.Host == "" || !httpguts.ValidHostHeader(req.Host) {
		return false
	}
	for k, vs := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return false
		}
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				return false
			}
		}
	}
	return true
}

// releaseReader returns the current request's reader to its pool; what it
// holds past the request belongs to the next one.
func (c *parked) releaseReader() {
	if br := c.br; br != nil {
		if n := br.Buffered(); n > 0 {
			rest, _ := br.Peek(n)
			c.pending = slices.Concat(rest, c.pending)
		}
		c.br = nil
	}
	c.putServing()
}

// serving is what a connection holds only while it reads and serves a
// request: the reader, the request and its body, the head's bytes. It goes
// back to servingPool when the connection parks, so that a waiting poll
// holds none of it (a connection that kept them cost 0.8 KiB more per
// waiting request).
type serving struct {
	br   *bufio.Reader
	req  request
	body bodyReader
	rec  []byte // what the current request's head consumed, to give back
}

var servingPool = sync.Pool{New: func() any { return &serving{br: bufio.NewReaderSize(nil, 4096)} }}

// serving returns the connection's serving state, taken from the pool if
// it holds none.
func (c *parked) serving() *serving {
	if c.s == nil {
		c.s = servingPool.Get().(*serving)
	}
	return c.s
}

// putServing returns the serving state to the pool; c.br must no longer
// be in use.
func (c *parked) putServing() {
	s := c.s
	if s == nil {
		return
	}
	c.s = nil
	s.br.Reset(nil)
	s.req, s.body = request{}, bodyReader{}
	if cap(s.rec) > 64<<10 { // a huge head's record is not kept
		s.rec = nil
	}
	servingPool.Put(s)
}

// monotime is a point in time as nanoseconds on the process's monotonic
// clock: 8 bytes against time.Time's 24, for fields every parked
// connection holds.
type monotime int64

var monoBase = time.Now()

func mono(t time.Time) monotime { return monotime(t.Sub(monoBase)) }

// left is how long until m.
func (m monotime) left() time.Duration { return time.Duration(m) - time.Since(monoBase) }

var errHeadTooLarge = errors.New("request head too large")

// errWouldBlock is a read or write without waiting (readNow, writeNow)
// that found nothing to read, or no room to write.
var errWouldBlock = errors.New("the socket would block")

// connReader feeds the pooled reader from pending, then from the
// connection. While a head is read it records every byte, so that the head
// can be given back to net/http whole, and stops at net/http's size limit.
type connReader struct{ c *parked }

func (r connReader) Read(b []byte) (int, error) {
	c := r.c
	if c.recording {
		left := c.h.o.MaxHeaderBytes + 4096 - len(c.s.rec) // net/http's allowance
		if left <= 0 {
			return 0, errHeadTooLarge
		}
		b = b[:min(len(b), left)]
	}
	var n int
	var err error
	if len(c.pending) > 0 {
		n = copy(b, c.pending)
		c.pending = c.pending[n:]
	} else {
		c.mu.Lock()
		c.edge = false // what comes from here on is news to the loop
		c.mu.Unlock()
		if c.nonblocking {
			n, err = c.readNow(b)
		} else {
			n, err = c.conn.Read(b)
		}
		c.drained = err == nil && n < len(b) || err == errWouldBlock
	}
	if c.recording {
		c.s.rec = append(c.s.rec, b[:n]...)
	}
	return n, err
}

// bodyReader reads a body of a known length as net/http's does: an end
// before it is io.ErrUnexpectedEOF.
type bodyReader struct {
	r    io.Reader
	left int64
}

func (b *bodyReader) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, io.EOF
	}
	n, err := b.r.Read(p[:min(int64(len(p)), b.left)])
	b.left -= int64(n)
	if err == io.EOF && b.left > 0 {
		err = io.ErrUnexpectedEOF
	}
	if b.left == 0 && err == nil {
		err = io.EOF
	}
	return n, err
}

func (b *bodyReader) Close() error { return nil }

// giveBack hands the connection to net/http with every byte read since
// the head began (the CR and LF net/http would skip aside), to be read
// again.
func (c *parked) giveBack() {
	replay := append(c.s.rec, c.pending...)
	c.s.rec = nil // replay has it now
	c.br = nil    // its bytes are all in replay: recorded
	c.putServing()
	c.pending, c.recording = nil, false
	c.arm(inRequest, time.Time{})
	// net/http, with no write timeout of its own, must not inherit the
	// bound of our last reply.
	c.conn.SetWriteDeadline(time.Time{})
	c.writeUntil = time.Time{}
	if c.loop != nil && c.raw != nil {
		c.raw.Control(func(fd uintptr) { c.loop.forget(c, int(fd)) })
	}
	if !c.handback(&replayConn{Conn: c.conn, replay: replay}) {
		c.conn.Close()
	}
}

func ready(w interface{ Ready() <-chan struct{} }) bool {
	return len(w.Ready()) > 0 // the token stays: over may ask twice
}

// isTimeout reports a deadline that passed (errors.As would allocate on
// this path, taken at every wake).
func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }
