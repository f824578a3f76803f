// Package longpoll serves the comet client endpoint: a POST naming channels
// waits until a message, an end of channel, a timeout or an abort answers it
// (PROTOCOL.md sections 1 and 2).
package longpoll

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
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
	Logger       *slog.Logger
	Metrics      *metrics.Metrics
}

// Handler is the client endpoint.
type Handler struct {
	hub     channels.Hub
	state   *security.State
	o       Options
	waiting atomic.Int64
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
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Handler{hub: hub, state: state, o: o}
}

// Waiting is the number of requests waiting now.
func (h *Handler) Waiting() int { return int(h.waiting.Load()) }

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.allowOrigin(w, r)
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
	ids, code, err := h.readRegistration(w, r)
	if err != nil {
		h.fail(w, code, err.Error())
		return
	}

	// 2. Admission: activation, shutdown, and the cap on waiting requests.
	timeout, abort, err := h.state.Admit()
	if err != nil {
		h.fail(w, http.StatusServiceUnavailable, "")
		return
	}
	if n := h.waiting.Add(1); h.o.MaxWaiting > 0 && n > int64(h.o.MaxWaiting) {
		h.waiting.Add(-1)
		h.fail(w, http.StatusServiceUnavailable, "")
		return
	}
	defer h.waiting.Add(-1)

	// 3. Listen on the live channels; answer at once if there is none.
	waiter, ended := h.hub.Subscribe(ids)
	if !waiter.Subscribed() {
		h.reply(w, ids, ended, nil)
		return
	}

	// 4. Wait for something to say.
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-waiter.Ready():
	case <-timer.C:
	case <-abort: // deactivate, set_timeout KILL, or shutdown
		channels.Resolve(waiter.Detach(), false)
		h.fail(w, http.StatusServiceUnavailable, "")
		return
	case <-r.Context().Done(): // the client hung up: nothing to write
		channels.Resolve(waiter.Detach(), false)
		return
	}

	// 5. Stop listening and answer with everything gathered meanwhile.
	events := waiter.Detach()
	var messages []channels.Event
	for _, ev := range events {
		if ev.Ended {
			ended = append(ended, ev.ID)
		} else {
			messages = append(messages, ev)
		}
	}
	channels.Resolve(messages, h.reply(w, ids, ended, messages))
}

// readRegistration reads the body within the size and time limits and
// returns its identifiers, or the status code and reason to refuse it with.
func (h *Handler) readRegistration(w http.ResponseWriter, r *http.Request) ([]string, int, error) {
	if r.ContentLength > h.o.MaxBodyBytes {
		return nil, http.StatusRequestEntityTooLarge, errBodyTooLarge(h.o.MaxBodyBytes)
	}
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(h.o.ReadTimeout)) // not every ResponseWriter supports deadlines
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.o.MaxBodyBytes))
	_ = rc.SetReadDeadline(time.Time{})
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return nil, http.StatusRequestEntityTooLarge, errBodyTooLarge(h.o.MaxBodyBytes)
	case err != nil:
		return nil, http.StatusBadRequest, errors.New("cannot read body: " + err.Error())
	}
	ids, err := wire.ParseRegistration(body, h.o.MaxIDs)
	if err != nil {
		return nil, http.StatusBadRequest, err
	}
	return ids, 0, nil
}

func errBodyTooLarge(max int64) error {
	return errors.New("body too large: at most " + strconv.FormatInt(max, 10) + " bytes")
}

// reply writes a 200 with the ended identifiers (in registration order)
// then the messages (in write order), and reports whether it was flushed.
func (h *Handler) reply(w http.ResponseWriter, ids, ended []string, messages []channels.Event) bool {
	lines := make([]wire.Line, 0, len(ended)+len(messages))
	if len(ended) > 0 {
		for _, id := range ids {
			if slices.Contains(ended, id) {
				lines = append(lines, wire.Line{ID: id, Ended: true})
			}
		}
	}
	for _, m := range messages {
		lines = append(lines, wire.Line{ID: m.ID, Payload: m.Payload})
	}
	body := wire.AppendReply(nil, lines)

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
	if status != http.StatusServiceUnavailable {
		h.o.Logger.Debug("comet request refused", "status", status, "reason", reason)
	}
}

func setReplyHeaders(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
}

// allowOrigin sets the CORS headers when the request's Origin is allowed.
func (h *Handler) allowOrigin(w http.ResponseWriter, r *http.Request) {
	origin := r.Header.Get("Origin")
	if origin == "" || len(h.o.CORSOrigins) == 0 {
		return
	}
	w.Header().Add("Vary", "Origin")
	if slices.Contains(h.o.CORSOrigins, origin) || slices.Contains(h.o.CORSOrigins, "*") {
		w.Header().Set("Access-Control-Allow-Origin", origin)
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
