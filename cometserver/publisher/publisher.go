// Package publisher is the HTTP API through which other processes create,
// write to and close channels (PROTOCOL.md section 5), plus the server's
// /metrics, /healthz and /readyz.
package publisher

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/pprof"
	"os"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cometop/comet-operator/cometserver/channels"
	"github.com/cometop/comet-operator/cometserver/engine"
	"github.com/cometop/comet-operator/cometserver/metrics"
)

// Error codes of the JSON error bodies. They are stable: clients match them.
const (
	CodeUnauthorized     = "unauthorized"
	CodeInvalidBody      = "invalid_body"
	CodeInvalidName      = "invalid_name"
	CodeNameTaken        = "name_taken"
	CodeTooManyChannels  = "too_many_virtual_channels"
	CodeChannelNotFound  = "channel_not_found"
	CodeReservedMessage  = "reserved_message"
	CodeMessageTooLarge  = "message_too_large"
	CodeNotFound         = "not_found"
	CodeMethodNotAllowed = "method_not_allowed"
	CodeUnavailable      = "unavailable"
	CodeInvalidPosition  = "invalid_position"
)

// Options configure the API.
type Options struct {
	// Token is the bearer token; empty means no authentication (the caller
	// must then bind to loopback only).
	Token           []byte
	MaxMessageBytes int64
	Metrics         *metrics.Metrics
	// Ready reports readiness for /readyz.
	Ready func() bool
	// Pprof serves Go's profiler at /debug/pprof/, behind the token.
	Pprof bool
	// ReadTimeout bounds the reading of a request body (default 10s): a
	// publisher that stalls gets 400 rather than holding the connection.
	ReadTimeout time.Duration
}

// ReadToken reads a bearer token from a file; surrounding whitespace,
// such as a trailing newline, is not part of it.
func ReadToken(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("publisher token: %w", err)
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return nil, fmt.Errorf("publisher token file %s is empty", path)
	}
	return b, nil
}

// New returns the API's handler.
func New(hub *channels.Hub, o Options) http.Handler {
	if o.MaxMessageBytes <= 0 {
		o.MaxMessageBytes = 64 << 10
	}
	if o.ReadTimeout <= 0 {
		o.ReadTimeout = 10 * time.Second
	}
	a := &api{hub: hub, o: o}
	if len(o.Token) > 0 {
		sum := sha256.Sum256(o.Token)
		a.tokenSum = sum[:]
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/channels", a.auth(methods{http.MethodPost: a.create}))
	mux.Handle("/v1/channels/{id}", a.auth(methods{http.MethodGet: a.info, http.MethodDelete: a.close}))
	mux.Handle("/v1/channels/{id}/messages", a.auth(methods{http.MethodPost: a.write, http.MethodGet: a.history}))
	if o.Metrics != nil {
		mux.Handle("/metrics", promhttp.HandlerFor(o.Metrics.Registry, promhttp.HandlerOpts{}))
	}
	if o.Pprof {
		mux.Handle("/debug/pprof/", a.auth(http.HandlerFunc(pprof.Index)))
		mux.Handle("/debug/pprof/profile", a.auth(http.HandlerFunc(pprof.Profile)))
		mux.Handle("/debug/pprof/trace", a.auth(http.HandlerFunc(pprof.Trace)))
		mux.Handle("/debug/pprof/symbol", a.auth(http.HandlerFunc(pprof.Symbol)))
	}
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if o.Ready != nil && !o.Ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, CodeNotFound, "no such endpoint")
	})
	return mux
}

type api struct {
	hub      *channels.Hub
	o        Options
	tokenSum []byte
}

// auth checks the bearer token in constant time. Hashing both sides first
// keeps the comparison's length, and so its time, independent of the token.
// A server that is not ready (draining for shutdown) answers 503, so that
// publishers retry elsewhere rather than create channels that are about to
// vanish with this process.
func (a *api) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.tokenSum == nil {
			a.ifReady(next, w, r)
			return
		}
		given, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		sum := sha256.Sum256([]byte(given))
		if subtle.ConstantTimeCompare(sum[:], a.tokenSum) != 1 || !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="comet"`)
			writeError(w, http.StatusUnauthorized, CodeUnauthorized, "missing or wrong bearer token")
			return
		}
		a.ifReady(next, w, r)
	})
}

func (a *api) ifReady(next http.Handler, w http.ResponseWriter, r *http.Request) {
	if a.o.Ready != nil && !a.o.Ready() {
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, CodeUnavailable, "server is shutting down")
		return
	}
	next.ServeHTTP(w, r)
}

// methods dispatches by method and answers others with a JSON 405.
type methods map[string]http.HandlerFunc

func (m methods) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h, ok := m[r.Method]; ok {
		h(w, r)
		return
	}
	w.Header().Set("Allow", strings.Join(slices.Sorted(maps.Keys(m)), ", "))
	writeError(w, http.StatusMethodNotAllowed, CodeMethodNotAllowed, r.Method+" is not allowed here")
}

// createRequest is the optional body of POST /v1/channels.
type createRequest struct {
	Name *string `json:"name"` // absent: a generated identifier
}

// readBody reads a request body of at most max bytes within the read
// timeout. A body declared longer is refused before any of it is read.
func (a *api) readBody(w http.ResponseWriter, r *http.Request, max int64) ([]byte, error) {
	if r.ContentLength > max {
		return nil, &http.MaxBytesError{Limit: max}
	}
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(a.o.ReadTimeout))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, max))
	if err == nil {
		// On an error the deadline stays: net/http reads what is left of
		// the body before it replies, and must not wait for it forever.
		_ = rc.SetReadDeadline(time.Time{})
	}
	return body, err
}

func (a *api) create(w http.ResponseWriter, r *http.Request) {
	var req createRequest
	body, err := a.readBody(w, r, 4096)
	if err != nil {
		writeError(w, http.StatusBadRequest, CodeInvalidBody, "cannot read body: "+err.Error())
		return
	}
	if len(bytes.TrimSpace(body)) > 0 {
		// encoding/json would replace invalid UTF-8 with U+FFFD, and two
		// different bad names would then name one channel.
		if !utf8.Valid(body) {
			writeError(w, http.StatusBadRequest, CodeInvalidBody, "the body is not UTF-8")
			return
		}
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeError(w, http.StatusBadRequest, CodeInvalidBody, `want {"name": "..."} or no body: `+err.Error())
			return
		}
		if dec.More() {
			writeError(w, http.StatusBadRequest, CodeInvalidBody, "trailing data after the JSON object")
			return
		}
	}
	name := ""
	if req.Name != nil {
		if *req.Name == "" {
			writeError(w, http.StatusBadRequest, CodeInvalidName, channels.ErrInvalidName.Error())
			return
		}
		name = *req.Name
	}
	id, err := a.hub.Create(r.Context(), name)
	if err != nil {
		writeHubError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]string{"id": id})
}

func (a *api) write(w http.ResponseWriter, r *http.Request) {
	msg, err := a.readBody(w, r, a.o.MaxMessageBytes)
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		writeError(w, http.StatusRequestEntityTooLarge, CodeMessageTooLarge,
			fmt.Sprintf("message over %d bytes", a.o.MaxMessageBytes))
		return
	case err != nil:
		writeError(w, http.StatusBadRequest, CodeInvalidBody, "cannot read body: "+err.Error())
		return
	}
	out, pos, err := a.hub.Write(r.Context(), r.PathValue("id"), msg)
	if err != nil && !errors.Is(err, r.Context().Err()) {
		writeHubError(w, err)
		return
	}
	a.o.Metrics.MessageWritten(out.Delivered, out.Failed)
	writeJSON(w, http.StatusOK, writeReply{Outcome: out, Position: pos.String()})
}

// writeReply is the answer to a write: its outcome and its position.
type writeReply struct {
	channels.Outcome
	Position string `json:"position"`
}

// HistoryReply is the answer to GET /v1/channels/{id}/messages.
type HistoryReply struct {
	Position string           `json:"position"` // the channel's, after the last message
	Gap      bool             `json:"gap"`      // the history does not reach back to since
	Messages []HistoryMessage `json:"messages"` // oldest first
}

// HistoryMessage is one message of a channel's history.
type HistoryMessage struct {
	Position string `json:"position"`
	Data     []byte `json:"data"` // base64
}

// history answers what a channel's history holds after ?since (all of it
// without since).
func (a *api) history(w http.ResponseWriter, r *http.Request) {
	var since *engine.Position
	asked := r.URL.Query().Has("since")
	if q := r.URL.Query(); asked {
		p, err := engine.ParsePosition(q.Get("since"))
		if err != nil {
			writeError(w, http.StatusBadRequest, CodeInvalidPosition, err.Error())
			return
		}
		since = &p
	} else {
		since = &engine.Position{} // before the first message: what it holds, with no gap to report
	}
	h, err := a.hub.History(r.Context(), r.PathValue("id"), since)
	if err != nil {
		writeHubError(w, err)
		return
	}
	reply := HistoryReply{Position: h.Top.String(), Gap: h.Gap && asked, Messages: make([]HistoryMessage, 0, len(h.Publications))}
	for _, p := range h.Publications {
		reply.Messages = append(reply.Messages, HistoryMessage{Position: p.Position.String(), Data: p.Payload})
	}
	writeJSON(w, http.StatusOK, reply)
}

func (a *api) close(w http.ResponseWriter, r *http.Request) {
	if err := a.hub.Close(r.Context(), r.PathValue("id")); err != nil {
		writeHubError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *api) info(w http.ResponseWriter, r *http.Request) {
	info, err := a.hub.Info(r.Context(), r.PathValue("id"))
	if err != nil {
		writeHubError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

func writeHubError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, channels.ErrInvalidName):
		writeError(w, http.StatusBadRequest, CodeInvalidName, err.Error())
	case errors.Is(err, channels.ErrNameTaken):
		writeError(w, http.StatusConflict, CodeNameTaken, err.Error())
	case errors.Is(err, channels.ErrTooManyVirtualChannels):
		writeError(w, http.StatusTooManyRequests, CodeTooManyChannels, err.Error())
	case errors.Is(err, channels.ErrNotFound):
		writeError(w, http.StatusNotFound, CodeChannelNotFound, err.Error())
	case errors.Is(err, channels.ErrReservedMessage):
		writeError(w, http.StatusBadRequest, CodeReservedMessage, err.Error())
	default:
		// The engine's backend (Redis) is unreachable or slow: try again.
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, CodeUnavailable, err.Error())
	}
}

// Error is the JSON body of every error answer.
type Error struct {
	Code    string `json:"error"`
	Message string `json:"message"`
}

func writeError(w http.ResponseWriter, status int, code, message string) {
	writeJSON(w, status, Error{Code: code, Message: message})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client may be gone; nothing to do about it
}
