// Package longpoll serves the comet client endpoint: a POST naming channels
// waits until a message, an end of channel, a timeout or an abort answers it
// (PROTOCOL.md sections 1 and 2).
//
// The protocol's steps are in one place, respond, top to bottom. The
// connection a request came on is an exchange: net/http's own
// (httpExchange, exchange.go), or a connection taken over from net/http and
// parked (takeover.go), which costs a waiting request one goroutine and
// no buffers.
package longpoll

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cometop/comet-operator/cometserver/channels"
	"github.com/cometop/comet-operator/cometserver/metrics"
	"github.com/cometop/comet-operator/cometserver/security"
	"github.com/cometop/comet-operator/cometserver/wire"
)

// ContentType is the media type that marks a comet request.
const ContentType = "application/x-ocsigen-comet"

// Options bound what one request may cost.
type Options struct {
	MaxBodyBytes int64         // over it: 413 (default 8192)
	MaxIDs       int           // identifiers per request, over it: 400 (default 128)
	MaxWaiting   int           // requests waiting at once, over it: 503 (0: no cap)
	CORSOrigins  []string      // allowed origins; "*" allows any
	ReadTimeout  time.Duration // to read a request body (default 10s)
	WriteTimeout time.Duration // to write and flush a reply (default 10s)

	// For connections taken over (see Listener), the limits the
	// http.Server would otherwise enforce.
	ReadHeaderTimeout time.Duration // to read a request head (default 10s)
	MaxHeaderBytes    int           // request head size (default http.DefaultMaxHeaderBytes)
	IdleTimeout       time.Duration // between two requests (default 2m)

	Logger  *slog.Logger
	Metrics *metrics.Metrics
}

// Subscriber is what the handler needs of a hub (*channels.Hub).
type Subscriber interface {
	Subscribe(ctx context.Context, ids []string, r *channels.Resume) (*channels.Waiter, []string, error)
}

// Handler is the client endpoint.
type Handler struct {
	hub     Subscriber
	state   *security.State
	o       Options
	waiting atomic.Int64

	// Connections taken over from net/http (takeover.go).
	mu       sync.Mutex
	handback func(net.Conn) bool // nil until Listener is called
	parked   map[*parked]struct{}
	hijacks  int           // takeovers between their closing check and track
	closing  atomic.Bool   // set under mu, so that Shutdown sees every hijack
	stop     chan struct{} // closed with closing, for waits that select
	hijacked func()        // a test's hook into the window between hijack and track
}

// New returns a Handler serving hub under state.
func New(hub Subscriber, state *security.State, o Options) *Handler {
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = 8192
	}
	if o.MaxIDs <= 0 {
		o.MaxIDs = 128
	}
	if o.ReadTimeout <= 0 {
		o.ReadTimeout = 10 * time.Second
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 10 * time.Second
	}
	if o.ReadHeaderTimeout <= 0 {
		o.ReadHeaderTimeout = 10 * time.Second
	}
	if o.MaxHeaderBytes <= 0 {
		o.MaxHeaderBytes = http.DefaultMaxHeaderBytes
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 2 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Handler{hub: hub, state: state, o: o, parked: make(map[*parked]struct{}), stop: make(chan struct{})}
}

// Waiting is the number of requests waiting now.
func (h *Handler) Waiting() int { return int(h.waiting.Load()) }

// ServeHTTP answers a comet request: on a connection of its own when it
// can take it over from net/http (takeover.go), on net/http's otherwise.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.takeOver(w, r) {
		return
	}
	h.respond(&httpExchange{h: h, w: w, r: r}, fromHTTP(r, context.WithoutCancel(r.Context())))
}

// request is what respond needs of a comet request: from net/http's parse
// (fromHTTP) or, for a taken-over connection's next poll, from its own
// (head.go).
type request struct {
	method, contentType, origin string
	preflightMethod             string // Access-Control-Request-Method
	contentLength               int64  // -1: unknown
	body                        io.Reader
	// Not the request's cancellation: a taken-over request outlives the
	// ServeHTTP call that parsed it, and net/http cancels r's context
	// when it returns.
	ctx context.Context
}

func fromHTTP(r *http.Request, ctx context.Context) *request {
	return &request{
		method:          r.Method,
		contentType:     r.Header.Get("Content-Type"),
		origin:          r.Header.Get("Origin"),
		preflightMethod: r.Header.Get("Access-Control-Request-Method"),
		contentLength:   r.ContentLength,
		body:            r.Body,
		ctx:             ctx,
	}
}

// exchange is the connection a request came on, as respond uses it.
type exchange interface {
	// header holds the reply's extra headers (CORS, Allow).
	header() http.Header
	// bodyDeadline bounds the reading of the request's body; the zero
	// time ends the bound.
	bodyDeadline(t time.Time)
	// park takes p over when it can wait without a goroutine: whatever
	// ends the wait then calls finish on a goroutine of its own. False:
	// the caller waits.
	park(p *poll) bool
	// wait blocks until p has something to say: an event, its deadline,
	// an abort. It reports false if the client left first.
	wait(p *poll) bool
	// reply writes a whole response, and closes the connection after it
	// with close. It resolves the messages it carries: delivered once the
	// response is flushed, or not if it fails.
	reply(status int, body []byte, close bool, carried []channels.Event)
}

// respond is the protocol, for one request on x. It reports false when x
// parked the request, to be finished by whatever ends its wait.
func (h *Handler) respond(x exchange, r *request) bool {
	h.allowOrigin(x, r)
	switch r.method {
	case http.MethodPost:
	case http.MethodOptions:
		h.preflight(x, r)
		return true
	default:
		x.header().Set("Allow", "POST, OPTIONS")
		h.refuse(x, http.StatusMethodNotAllowed, "method not allowed: comet requests are POST")
		return true
	}
	if mediaType(r.contentType) != ContentType {
		h.refuse(x, http.StatusUnsupportedMediaType, "unsupported content type: want "+ContentType)
		return true
	}

	// 1. Read and decode the registration.
	x.bodyDeadline(time.Now().Add(h.o.ReadTimeout))
	req, code, err := h.readRegistration(r.contentLength, r.body)
	if err != nil {
		h.refuse(x, code, err.Error())
		return true
	}
	x.bodyDeadline(time.Time{})

	// 2. Admission: activation, shutdown, and the cap on waiting requests.
	// 3. Listen on the live channels; answer at once if there is none.
	p, status := h.admit(r.ctx, req)
	switch {
	case status != 0:
		h.refuse(x, status, "")
		return true
	case p.waiter == nil:
		buf := replyBodies.Get().(*[]byte)
		body, _ := h.answer(p, (*buf)[:0])
		h.o.Metrics.Reply(http.StatusOK)
		x.reply(http.StatusOK, body, false, nil)
		putReplyBody(buf, body)
		return true
	}

	// 4. Wait for something to say: parked with no goroutine of its own
	// where x can (takeover.go), else here.
	if x.park(p) {
		return false
	}
	h.finish(x, p, x.wait(p))
	return true
}

// finish ends a poll whose wait is over; present is false if its client
// left.
func (h *Handler) finish(x exchange, p *poll, present bool) {
	defer h.waiting.Add(-1)
	if !present {
		channels.Resolve(p.waiter.Detach(), false) // the client hung up: nothing to write
		return
	}
	if closed(p.abort) || h.closing.Load() { // it wins over a message that came at the same moment
		channels.Resolve(p.waiter.Detach(), false)
		h.o.Metrics.Reply(http.StatusServiceUnavailable)
		x.reply(http.StatusServiceUnavailable, nil, h.draining(), nil)
		return
	}

	// 5. Stop listening and answer with everything gathered meanwhile.
	buf := replyBodies.Get().(*[]byte)
	body, messages := h.answer(p, (*buf)[:0])
	h.o.Metrics.Reply(http.StatusOK)
	x.reply(http.StatusOK, body, false, messages)
	putReplyBody(buf, body)
}

// replyBodies hold replies' bodies while they are written: an exchange's
// reply copies the body out (into the connection's write, or net/http's
// buffer) before it returns.
var replyBodies = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

func putReplyBody(buf *[]byte, body []byte) {
	if cap(body) <= 16<<10 { // keep the pool small; big replies are rare
		*buf = body
		replyBodies.Put(buf)
	}
}

// refuse answers with status and a one-line reason (none for 503), then
// closes the connection: whatever the client does with the rest of its
// body, the refusal goes out at once and nothing more is read.
func (h *Handler) refuse(x exchange, status int, reason string) {
	h.o.Metrics.Reply(status)
	if status != http.StatusServiceUnavailable {
		h.o.Logger.Debug("comet request refused", "status", status, "reason", reason)
	}
	x.reply(status, []byte(oneLine(reason)), true, nil)
}

// poll is a registration admitted to wait.
type poll struct {
	ids, ended []string
	resume     bool             // the reply carries positions (PROTOCOL.md section 7)
	waiter     *channels.Waiter // nil: nothing to wait for, answer at once
	deadline   time.Time
	abort      <-chan struct{} // closes when the poll must be answered 503
}

// admit applies activation, shutdown and the cap on waiting requests to a
// registration, then subscribes it. A non-zero status refuses it. While
// its waiter is set, a poll counts as waiting until its waiter says done.
func (h *Handler) admit(ctx context.Context, req wire.Request) (*poll, int) {
	timeout, abort, err := h.state.Admit()
	if err != nil {
		return nil, http.StatusServiceUnavailable
	}
	if n := h.waiting.Add(1); h.o.MaxWaiting > 0 && n > int64(h.o.MaxWaiting) {
		h.waiting.Add(-1)
		return nil, http.StatusServiceUnavailable
	}
	p := &poll{ids: req.IDs, resume: req.Resume, deadline: time.Now().Add(timeout), abort: abort}
	var resume *channels.Resume
	if req.Resume {
		resume = &channels.Resume{From: req.From}
	}
	w, ended, err := h.hub.Subscribe(ctx, req.IDs, resume)
	if err != nil {
		h.waiting.Add(-1)
		h.o.Logger.Warn("cannot subscribe a comet request", "err", err)
		return nil, http.StatusServiceUnavailable
	}
	p.ended = ended
	if w.Subscribed() {
		p.waiter = w
	} else {
		h.waiting.Add(-1)
	}
	return p, 0
}

// answer stops p listening and appends its reply to dst: the ended identifiers
// (in registration order), then for a resuming poll the gaps (the same
// order), the messages (in write order), then for a resuming poll each
// live channel's position after them. The caller must Resolve the
// messages with the fate of the reply.
func (h *Handler) answer(p *poll, dst []byte) (body []byte, messages []channels.Event) {
	ended := p.ended
	if p.waiter != nil {
		events := p.waiter.Detach() // ours now: filtered in place
		messages = events[:0]
		for _, ev := range events {
			if ev.Ended {
				ended = append(ended, ev.ID)
			} else {
				messages = append(messages, ev)
			}
		}
	}
	var few [8]wire.Line // on the stack for the usual reply
	lines := few[:0]
	for _, id := range p.ids {
		if slices.Contains(ended, id) {
			lines = append(lines, wire.Line{ID: id, Ended: true})
		}
	}
	if p.resume && p.waiter != nil {
		for _, id := range p.ids {
			if _, gap, ok := p.waiter.Cursor(id); ok && gap && !slices.Contains(ended, id) {
				lines = append(lines, wire.Line{ID: id, Gap: true})
			}
		}
	}
	for _, m := range messages {
		lines = append(lines, wire.Line{ID: m.ID, Payload: m.Payload})
	}
	if p.resume && p.waiter != nil {
		for _, id := range p.ids {
			if pos, _, ok := p.waiter.Cursor(id); ok && !slices.Contains(ended, id) {
				lines = append(lines, wire.Line{ID: id, Position: pos.String()})
			}
		}
	}
	return wire.AppendReply(dst, lines), messages
}

// bodyPool holds buffers for registration bodies, each with the limit
// reader that bounds the read (pooled too: one made per request would be
// an allocation per delivery).
var bodyPool = sync.Pool{New: func() any { return new(bodyBuffer) }}

type bodyBuffer struct {
	bytes.Buffer
	limit io.LimitedReader
}

// errUnreadable marks a body that could not be read to its end.
var errUnreadable = errors.New("cannot read body")

// readRegistration reads a body of the declared length (-1: unknown)
// within the size limit and returns its identifiers, or the status code
// and reason to refuse it with.
func (h *Handler) readRegistration(length int64, body io.Reader) (wire.Request, int, error) {
	max := h.o.MaxBodyBytes
	if length > max {
		return wire.Request{}, http.StatusRequestEntityTooLarge, errBodyTooLarge(max)
	}
	// A pooled buffer: the identifiers are copied out of it.
	buf := bodyPool.Get().(*bodyBuffer)
	defer func() {
		if buf.Cap() <= 64<<10 {
			buf.Reset()
			bodyPool.Put(buf)
		}
	}()
	// Bounded even with a known length: a middleware may have swapped the
	// body for one that reads on (a decompressor, say).
	buf.limit = io.LimitedReader{R: body, N: max + 1}
	_, err := buf.ReadFrom(&buf.limit)
	buf.limit.R = nil
	switch {
	case err != nil:
		return wire.Request{}, http.StatusBadRequest, fmt.Errorf("%w: %v", errUnreadable, err)
	case int64(buf.Len()) > max:
		return wire.Request{}, http.StatusRequestEntityTooLarge, errBodyTooLarge(max)
	}
	req, err := wire.ParseRequest(buf.Bytes(), h.o.MaxIDs)
	if err != nil {
		return wire.Request{}, http.StatusBadRequest, err
	}
	return req, 0, nil
}

// draining reports whether the server is shutting down, when replies
// close their connection.
func (h *Handler) draining() bool { return h.state.Snapshot().Draining || h.closing.Load() }

func errBodyTooLarge(max int64) error {
	return errors.New("body too large: at most " + strconv.FormatInt(max, 10) + " bytes")
}

// allowOrigin sets the CORS headers when the request's Origin is allowed.
func (h *Handler) allowOrigin(x exchange, r *request) {
	origin := r.origin
	if origin == "" || len(h.o.CORSOrigins) == 0 {
		return
	}
	hdr := x.header()
	hdr.Add("Vary", "Origin")
	if slices.Contains(h.o.CORSOrigins, origin) || slices.Contains(h.o.CORSOrigins, "*") {
		hdr.Set("Access-Control-Allow-Origin", origin)
	}
}

// preflight answers a CORS preflight for the custom content type.
func (h *Handler) preflight(x exchange, r *request) {
	hdr := x.header()
	if r.origin == "" || r.preflightMethod == "" {
		hdr.Set("Allow", "POST, OPTIONS")
		x.reply(http.StatusNoContent, nil, false, nil)
		return
	}
	if hdr.Get("Access-Control-Allow-Origin") == "" {
		h.refuse(x, http.StatusForbidden, "origin not allowed")
		return
	}
	hdr.Set("Access-Control-Allow-Methods", "POST")
	hdr.Set("Access-Control-Allow-Headers", "Content-Type")
	hdr.Set("Access-Control-Max-Age", "600")
	x.reply(http.StatusNoContent, nil, false, nil)
}

// mediaType returns a Content-Type's media type without parameters, as
// sent: the comparison with ContentType is case-sensitive.
func mediaType(ct string) string {
	mt, _, _ := strings.Cut(ct, ";")
	return strings.TrimSpace(mt)
}

func oneLine(s string) string {
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		return s[:i]
	}
	return s
}

func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
