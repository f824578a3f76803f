package longpoll

// Taking waiting connections over from net/http.
//
// While a handler runs, net/http keeps two goroutines on its connection
// (one runs the handler, one reads in the background to notice a hang-up)
// and a 4 KiB reader and writer: about 20 KiB for a request that does
// nothing but wait. So once a poll must wait, the handler takes its
// connection over (Hijack) and parks it: one goroutine blocked in a one-byte
// read, which notices a hang-up and which an event, an abort or the timeout
// wakes by moving the read deadline. After the reply the same goroutine reads
// the client's next request itself when it is another poll on the same path,
// and gives the connection back to net/http, through the Listener, for
// anything else. Requests read here get net/http's limits: header size and
// time, body size and time, idle time.

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/cometop/comet-operator/cometserver/channels"
)

// Listener wraps the client endpoint's listener so that the handler can
// take waiting connections over and give them back to the http.Server
// serving it. Without it the handler waits inside net/http. Call it once,
// before serving; closing the returned listener stops the takeover.
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
	h.closing.Store(true)
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
		c.wake()
	}
}

// takeOver hijacks the connection of r, whose poll p must wait, and serves
// it from a parked goroutine. It reports false, touching nothing, where
// the takeover is off or cannot be done: the caller then waits as usual.
func (h *Handler) takeOver(w http.ResponseWriter, r *http.Request, p *poll) bool {
	h.mu.Lock()
	handback := h.handback
	// Only kept-alive HTTP/1.1 is taken: anything else is rare and net/http
	// knows its rules.
	if handback == nil || h.closing.Load() || !r.ProtoAtLeast(1, 1) || r.Close {
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
	c := &parked{h: h, conn: conn, path: r.URL.Path, handback: handback}
	pipelined, _ := brw.Reader.Peek(brw.Reader.Buffered()) // what net/http read past this request
	c.pending = append([]byte(nil), pipelined...)
	c.header = cloneNonEmpty(w.Header())
	h.track(c)
	go c.serve(p)
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

// parked is a connection taken over from net/http.
type parked struct {
	h         *Handler
	conn      net.Conn
	path      string              // the path its polls must go to, to be served here
	handback  func(net.Conn) bool // the Listener's giveBack
	header    http.Header         // extra headers of the current reply (CORS)
	pending   []byte              // read from conn, not yet parsed
	rec       []byte              // what the current request's head consumed, to give back
	one       [1]byte             // for the read that waits
	recording bool                // a head is being read: keep its bytes in rec
	mu        sync.Mutex          // guards inRequest and the read deadline
	inRequest bool                // a request is being read: wakes must not cut it
}

var aLongTimeAgo = time.Unix(1, 0)

// arm's first argument.
const (
	awaiting  = false // an event, or the next request: a wake cuts the read
	inRequest = true  // a request is being read: a wake must not cut it
)

// wake cuts short a read that waits for a poll's event or, between
// requests, for the next one.
func (c *parked) wake() {
	c.mu.Lock()
	if !c.inRequest {
		c.conn.SetReadDeadline(aLongTimeAgo)
	}
	c.mu.Unlock()
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

// serve waits for p and answers it, then goes on with the connection's next
// requests until it closes or goes back to net/http.
func (c *parked) serve(p *poll) {
	defer c.h.untrack(c)
	for p != nil {
		if !c.waitAndAnswer(p) {
			c.close()
			return
		}
		p = c.next()
	}
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

// waitAndAnswer is step 4 and 5 of ServeHTTP for a parked connection. It
// reports whether the connection stays open.
func (c *parked) waitAndAnswer(p *poll) bool {
	defer c.h.waiting.Add(-1)
	p.waiter.OnReady(c.wake)
	for {
		c.arm(awaiting, p.deadline)
		switch {
		case closed(p.abort), c.h.closing.Load(): // an abort wins over a message at the same moment
			channels.Resolve(p.waiter.Detach(), false)
			draining := c.h.draining()
			return c.write(http.StatusServiceUnavailable, nil, draining) == nil && !draining
		case ready(p.waiter), !time.Now().Before(p.deadline):
			body, messages := c.h.answer(p)
			err := c.write(http.StatusOK, body, false)
			channels.Resolve(messages, err == nil)
			return err == nil
		}
		if !c.readWhileWaiting() {
			channels.Resolve(p.waiter.Detach(), false) // the client hung up: nothing to write
			return false
		}
	}
}

// maxPending bounds what a client may send ahead while it waits.
const maxPending = 64 << 10

// readWhileWaiting blocks until a wake, a deadline or the client's bytes,
// keeping those for the next request. It reports false once the client is
// gone or sent too much.
func (c *parked) readWhileWaiting() bool {
	n, err := c.conn.Read(c.one[:])
	if n > 0 {
		c.pending = append(c.pending, c.one[0])
		return len(c.pending) <= maxPending
	}
	return isTimeout(err)
}

// next reads the connection's next request and answers it, at once or
// after waiting. It returns the poll to wait for, or nil once the
// connection is closed or given back.
func (c *parked) next() *poll {
	for {
		req, br, ok := c.readHead()
		if !ok {
			return nil
		}
		if !c.takes(req) {
			c.giveBack(br)
			return nil
		}
		c.recording = false
		bodyBuffered := req.ContentLength >= 0 && int64(br.Buffered()) >= req.ContentLength
		p, keep := c.serveRequest(req, bodyBuffered)
		c.release(br)
		if p != nil {
			return p
		}
		if !keep {
			c.close()
			return nil
		}
	}
}

// readHead waits, within the idle timeout, for the client's next request
// and reads its head within the header limits, through a pooled reader
// that goes on to serve the body. On false the connection is closed.
func (c *parked) readHead() (*http.Request, *bufio.Reader, bool) {
	br := readerPool.Get().(*bufio.Reader)
	br.Reset(connReader{c})
	c.rec, c.recording = c.rec[:0], true
	// Wait for the request in the reader: its first read then takes the
	// whole head, usually the body too, in one system call.
	idleUntil := time.Now().Add(c.h.o.IdleTimeout)
	for {
		c.arm(awaiting, idleUntil)
		if c.h.closing.Load() || !time.Now().Before(idleUntil) {
			c.release(br)
			c.conn.Close()
			return nil, nil, false
		}
		_, err := br.Peek(1)
		if err == nil {
			break
		}
		if !isTimeout(err) { // the client left
			c.release(br)
			c.conn.Close()
			return nil, nil, false
		}
	}
	c.arm(inRequest, time.Now().Add(c.h.o.ReadHeaderTimeout))
	req, err := http.ReadRequest(br)
	if err != nil {
		c.release(br)
		switch {
		case errors.Is(err, errHeadTooLarge):
			c.write(http.StatusRequestHeaderFieldsTooLarge, []byte("request header too large"), true)
		case !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !isTimeout(err):
			c.write(http.StatusBadRequest, []byte("malformed request"), true)
		}
		c.close()
		return nil, nil, false
	}
	return req, br, true
}

// release returns br to its pool; what it holds past the request belongs
// to the next one.
func (c *parked) release(br *bufio.Reader) {
	if n := br.Buffered(); n > 0 {
		rest, _ := br.Peek(n)
		c.pending = append(append(make([]byte, 0, n+len(c.pending)), rest...), c.pending...)
	}
	br.Reset(nil)
	readerPool.Put(br)
}

var readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

var errHeadTooLarge = errors.New("request head too large")

// connReader feeds the pooled reader from pending, then from the
// connection. While a head is read it records every byte, so that the head
// can be given back to net/http whole, and enforces net/http's size limit.
type connReader struct{ c *parked }

func (r connReader) Read(b []byte) (int, error) {
	c := r.c
	if c.recording {
		left := c.h.o.MaxHeaderBytes + 4096 - len(c.rec) // net/http's allowance
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
		n, err = c.conn.Read(b)
	}
	if c.recording {
		c.rec = append(c.rec, b[:n]...)
	}
	return n, err
}

// takes reports whether req is a poll this connection serves itself: a
// kept-alive HTTP/1.1 POST to the same path that expects no 100-continue.
// Anything else goes back to net/http and its mux.
func (c *parked) takes(req *http.Request) bool {
	return req.Method == http.MethodPost && req.URL.Path == c.path && req.ProtoAtLeast(1, 1) &&
		!req.Close && req.Host != "" && req.Header.Get("Expect") == "" && !c.h.closing.Load()
}

// giveBack hands the connection to net/http with every byte read so far,
// the head of the request in br included, to be read again.
func (c *parked) giveBack(br *bufio.Reader) {
	br.Reset(nil)
	readerPool.Put(br)
	replay := append(c.rec, c.pending...)
	c.rec, c.pending, c.recording = nil, nil, false
	c.arm(inRequest, time.Time{})
	if !c.handback(&replayConn{Conn: c.conn, replay: replay}) {
		c.conn.Close()
	}
}

// serveRequest is ServeHTTP for a request read on a parked connection: it
// answers at once, or returns the admitted poll to wait for. keep reports
// whether the connection stays open after an answer.
func (c *parked) serveRequest(req *http.Request, bodyBuffered bool) (p *poll, keep bool) {
	c.header = nil
	if req.Header.Get("Origin") != "" && len(c.h.o.CORSOrigins) > 0 {
		c.header = make(http.Header, 2)
		c.h.allowOrigin(c.header, req)
	}
	if mediaType(req.Header.Get("Content-Type")) != ContentType {
		// The body is left unread: close rather than guess where it ends.
		return nil, c.fail(http.StatusUnsupportedMediaType, "unsupported content type: want "+ContentType, true)
	}

	// 1. Read and decode the registration.
	if !bodyBuffered { // else the head's deadline is enough: nothing more is read
		c.arm(inRequest, time.Now().Add(c.h.o.ReadTimeout))
	}
	ids, code, err := c.h.readRegistration(req.ContentLength, req.Body)
	if err != nil {
		// A body refused half-read cannot be skipped safely: close after.
		return nil, c.fail(code, err.Error(), code != http.StatusBadRequest || errors.Is(err, errUnreadable))
	}

	// 2 and 3. Admission, then listen or answer at once.
	p, status := c.h.admit(ids)
	switch {
	case status != 0:
		return nil, c.fail(status, "", c.h.draining())
	case p.waiter == nil:
		body, _ := c.h.answer(p)
		return nil, c.write(http.StatusOK, body, false) == nil
	}
	return p, true
}

// fail answers with status and a one-line reason, closing the connection
// after it if closing; it reports whether the connection stays open.
func (c *parked) fail(status int, reason string, closing bool) bool {
	c.h.refused(status, reason)
	var body []byte
	if reason != "" {
		body = []byte(oneLine(reason))
	}
	return c.write(status, body, closing) == nil && !closing
}

var replyPool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// write sends one whole response in one write, with the headers net/http
// would give it.
func (c *parked) write(status int, body []byte, closing bool) error {
	c.h.o.Metrics.Reply(status)
	bp := replyPool.Get().(*[]byte)
	b := append((*bp)[:0], "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(status)...)
	b = append(b, "\r\nContent-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n"...)
	for k, vs := range c.header {
		for _, v := range vs {
			b = append(append(append(append(b, k...), ": "...), v...), "\r\n"...)
		}
	}
	b = append(b, "Date: "...)
	b = time.Now().UTC().AppendFormat(b, http.TimeFormat)
	b = append(b, "\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	if closing {
		b = append(b, "\r\nConnection: close"...)
	}
	b = append(b, "\r\n\r\n"...)
	b = append(b, body...)
	c.conn.SetWriteDeadline(time.Now().Add(c.h.o.WriteTimeout))
	_, err := c.conn.Write(b)
	if cap(b) <= 16<<10 { // keep the pool small; big replies are rare
		*bp = b
		replyPool.Put(bp)
	}
	return err
}

func ready(w *channels.Waiter) bool {
	select {
	case <-w.Ready():
		return true
	default:
		return false
	}
}

func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// isTimeout reports a deadline that passed (errors.As would allocate on
// this path, taken at every wake).
func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

func cloneNonEmpty(h http.Header) http.Header {
	if len(h) == 0 {
		return nil
	}
	return h.Clone()
}
