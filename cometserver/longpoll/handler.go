// Package longpoll serves the comet client endpoint: a POST naming channels
// waits until a message, an end of channel, a timeout or an abort answers it
// (PROTOCOL.md sections 1 and 2).
package longpoll

import (
	"bytes"
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

// Handler is the client endpoint.
type Handler struct {
	hub     channels.Hub
	state   *security.State
	o       Options
	waiting atomic.Int64

	// Connections taken over from net/http (takeover.go).
	mu       sync.Mutex
	handback func(net.Conn) bool // nil until Listener is called
	parked   map[*parked]struct{}
	hijacks  int         // takeovers between their closing check and track
	closing  atomic.Bool // set under mu, so that Shutdown sees every hijack
	hijacked func()      // a test's hook into the window between hijack and track
}

// New returns a Handler serving hub under state.
func New(hub channels.Hub, state *security.State, o Options) *Handler {
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
	return &Handler{hub: hub, state: state, o: o, parked: make(map[*parked]struct{})}
}

// Waiting is the number of requests waiting now.
func (h *Handler) Waiting() int { return int(h.waiting.Load()) }

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.allowOrigin(w.Header(), r)
	switch r.Method {
	case http.MethodPost:
	case http.MethodOptions:
		h.preflight(w, r)
		return
	default:
		w.Header().Set("Allow", "POST, OPTIONS")
		h.fail(w, http.StatusMethodNotAllowed, "method not allowed: comet requests are POST")
		return
	}
	if mediaType(r.Header.Get("Content-Type")) != ContentType {
		h.fail(w, http.StatusUnsupportedMediaType, "unsupported content type: want "+ContentType)
		return
	}

	// 1. Read and decode the registration.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(h.o.ReadTimeout)) // not every ResponseWriter supports deadlines
	ids, code, err := h.readRegistration(r.ContentLength, r.Body)
	if err != nil {
		// The deadline stays: before replying, net/http reads what is left
		// of a body the handler did not read, and must not wait for it
		// forever.
		h.fail(w, code, err.Error())
		return
	}
	_ = rc.SetReadDeadline(time.Time{})

	// 2. Admission: activation, shutdown, and the cap on waiting requests.
	// 3. Listen on the live channels; answer at once if there is none.
	p, status := h.admit(ids)
	switch {
	case status != 0:
		h.fail(w, status, "")
		return
	case p.waiter == nil:
		body, _ := h.answer(p)
		h.reply(w, body)
		return
	}

	// 4. Wait for something to say: on a connection of its own if it can
	// be taken over (takeover.go), here otherwise.
	if h.takeOver(w, r, p) {
		return
	}
	defer h.waiting.Add(-1)
	timer := time.NewTimer(time.Until(p.deadline))
	defer timer.Stop()
	select {
	case <-p.waiter.Ready():
	case <-timer.C:
	case <-p.abort: // deactivate, set_timeout KILL, or shutdown
	case <-r.Context().Done(): // the client hung up: nothing to write
		channels.Resolve(p.waiter.Detach(), false)
		return
	}
	if closed(p.abort) { // it wins over a message that came at the same moment
		channels.Resolve(p.waiter.Detach(), false)
		h.fail(w, http.StatusServiceUnavailable, "")
		return
	}

	// 5. Stop listening and answer with everything gathered meanwhile.
	body, messages := h.answer(p)
	channels.Resolve(messages, h.reply(w, body))
}

// poll is a registration admitted to wait.
type poll struct {
	ids, ended []string
	waiter     *channels.Waiter // nil: nothing to wait for, answer at once
	deadline   time.Time
	abort      <-chan struct{} // closes when the poll must be answered 503
}

// admit applies activation, shutdown and the cap on waiting requests to a
// registration, then subscribes it. A non-zero status refuses it. While
// its waiter is set, a poll counts as waiting until its waiter says done.
func (h *Handler) admit(ids []string) (*poll, int) {
	timeout, abort, err := h.state.Admit()
	if err != nil {
		return nil, http.StatusServiceUnavailable
	}
	if n := h.waiting.Add(1); h.o.MaxWaiting > 0 && n > int64(h.o.MaxWaiting) {
		h.waiting.Add(-1)
		return nil, http.StatusServiceUnavailable
	}
	p := &poll{ids: ids, deadline: time.Now().Add(timeout), abort: abort}
	w, ended := h.hub.Subscribe(ids)
	p.ended = ended
	if w.Subscribed() {
		p.waiter = w
	} else {
		h.waiting.Add(-1)
	}
	return p, 0
}

// answer stops p listening and returns its reply: the ended identifiers
// (in registration order) then the messages (in write order). The caller
// must Resolve the messages with the fate of the reply.
func (h *Handler) answer(p *poll) (body []byte, messages []channels.Event) {
	ended := p.ended
	if p.waiter != nil {
		for _, ev := range p.waiter.Detach() {
			if ev.Ended {
				ended = append(ended, ev.ID)
			} else {
				messages = append(messages, ev)
			}
		}
	}
	lines := make([]wire.Line, 0, len(ended)+len(messages))
	for _, id := range p.ids {
		if slices.Contains(ended, id) {
			lines = append(lines, wire.Line{ID: id, Ended: true})
		}
	}
	for _, m := range messages {
		lines = append(lines, wire.Line{ID: m.ID, Payload: m.Payload})
	}
	return wire.AppendReply(nil, lines), messages
}

var bodyPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// errUnreadable marks a body that could not be read to its end.
var errUnreadable = errors.New("cannot read body")

// readRegistration reads a body of the declared length (-1: unknown)
// within the size limit and returns its identifiers, or the status code
// and reason to refuse it with.
func (h *Handler) readRegistration(length int64, body io.Reader) ([]string, int, error) {
	max := h.o.MaxBodyBytes
	if length > max {
		return nil, http.StatusRequestEntityTooLarge, errBodyTooLarge(max)
	}
	// A pooled buffer: the identifiers are copied out of it.
	buf := bodyPool.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= 64<<10 {
			buf.Reset()
			bodyPool.Put(buf)
		}
	}()
	_, err := buf.ReadFrom(io.LimitReader(body, max+1))
	switch {
	case err != nil:
		return nil, http.StatusBadRequest, fmt.Errorf("%w: %v", errUnreadable, err)
	case int64(buf.Len()) > max:
		return nil, http.StatusRequestEntityTooLarge, errBodyTooLarge(max)
	}
	ids, err := wire.ParseRegistration(buf.Bytes(), h.o.MaxIDs)
	if err != nil {
		return nil, http.StatusBadRequest, err
	}
	return ids, 0, nil
}

// draining reports whether the server is shutting down, when replies
// close their connection.
func (h *Handler) draining() bool { return h.state.Snapshot().Draining || h.closing.Load() }

func errBodyTooLarge(max int64) error {
	return errors.New("body too large: at most " + strconv.FormatInt(max, 10) + " bytes")
}

// reply writes a 200 with body and reports whether it was flushed.
func (h *Handler) reply(w http.ResponseWriter, body []byte) bool {
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Now().Add(h.o.WriteTimeout))
	setReplyHeaders(w)
	// With its length known the reply goes out in one write when flushed;
	// without, net/http would chunk it and write the last chunk separately.
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	h.o.Metrics.Reply(http.StatusOK)
	if _, err := w.Write(body); err != nil {
		return false
	}
	return rc.Flush() == nil
}

// fail answers with status and a one-line reason (none for 503).
func (h *Handler) fail(w http.ResponseWriter, status int, reason string) {
	setReplyHeaders(w)
	w.WriteHeader(status)
	h.o.Metrics.Reply(status)
	if reason != "" {
		io.WriteString(w, oneLine(reason))
	}
	h.refused(status, reason)
}

// refused logs a refusal; 503s are routine and not logged.
func (h *Handler) refused(status int, reason string) {
	if status != http.StatusServiceUnavailable && status != http.StatusOK {
		h.o.Logger.Debug("comet request refused", "status", status, "reason", reason)
	}
}

func setReplyHeaders(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
}

// allowOrigin sets the CORS headers when the request's Origin is allowed.
func (h *Handler) allowOrigin(hdr http.Header, r *http.Request) {
	origin := r.Header.Get("Origin")
	if origin == "" || len(h.o.CORSOrigins) == 0 {
		return
	}
	hdr.Add("Vary", "Origin")
	if slices.Contains(h.o.CORSOrigins, origin) || slices.Contains(h.o.CORSOrigins, "*") {
		hdr.Set("Access-Control-Allow-Origin", origin)
	}
}

// preflight answers a CORS preflight for the custom content type.
func (h *Handler) preflight(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Origin") == "" || r.Header.Get("Access-Control-Request-Method") == "" {
		w.Header().Set("Allow", "POST, OPTIONS")
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if w.Header().Get("Access-Control-Allow-Origin") == "" {
		h.fail(w, http.StatusForbidden, "origin not allowed")
		return
	}
	w.Header().Set("Access-Control-Allow-Methods", "POST")
	w.Header().Set("Access-Control-Allow-Headers", "Content-Type")
	w.Header().Set("Access-Control-Max-Age", "600")
	w.WriteHeader(http.StatusNoContent)
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
