// Package engine is the seam under the channel hub: where channels exist,
// where their messages get positions and history, and how a message
// written on any server reaches the servers whose clients wait for it.
//
// Its shape follows centrifugal/centrifuge's Broker: Publish returns the
// message's position; History reads what a channel kept since a position;
// Subscribe and Unsubscribe are node-level (the hub calls them when the
// first of its own listeners on a channel arrives and a moment after the
// last one left); publications and channel ends come back through a
// Handler. An engine never sees a client: the hub (package channels) fans
// out to the requests waiting in this process.
//
// The in-memory engine (engine/memory) is the default; a shared one (Redis)
// lives in its own package behind the same interface.
package engine

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Errors an Engine returns. Callers match them with errors.Is.
var (
	ErrTooManyVirtualChannels = errors.New("too many virtual channels")
	ErrNameTaken              = errors.New("channel name taken by a live channel")
	ErrInvalidName            = errors.New("invalid channel name: want 1 to 256 bytes of UTF-8 without ':', CR or LF")
	ErrNotFound               = errors.New("channel unknown or ended")
	// ErrUnavailable wraps a failure of a shared engine's backend (Redis
	// unreachable): the request may succeed if tried again later.
	ErrUnavailable = errors.New("channel engine unavailable")
)

// Engine holds channels, their positions and history.
type Engine interface {
	// Register sets the handler that receives the publications and ends of
	// the channels this process subscribed to. It is called once, before
	// any other method.
	Register(h Handler)

	// Create makes a channel. An empty name asks for a generated,
	// unguessable identifier; otherwise the name is the identifier.
	Create(ctx context.Context, name string) (id string, err error)
	// Close ends a channel; subscribers get HandleEnd.
	Close(ctx context.Context, id string) error
	// Publish gives payload the channel's next position, keeps it in the
	// history and hands it to the subscribers' handlers, in position
	// order. tracker comes back in the Publication this process's handler
	// receives (never to another process), and before Publish returns,
	// never after, error or not: the hub uses it to learn what became of
	// the write, and to wake its waiters. Publish keeps payload;
	// the caller must not change it afterwards.
	Publish(ctx context.Context, id string, payload []byte, tracker any) (Position, error)
	// History returns what the channel holds after since (all it holds,
	// when since is in another epoch), oldest first, and the channel's
	// current position. With since nil it returns only the position.
	History(ctx context.Context, id string, since *Position) (History, error)
	// Info describes a live channel.
	Info(ctx context.Context, id string) (ChannelInfo, error)
	// Len is the number of live channels.
	Len(ctx context.Context) (int, error)

	// Subscribe asks for id's publications and end to reach the handler,
	// and returns the channel's position when it took effect: every later
	// publication reaches the handler. It fails with ErrNotFound if the
	// channel is not live.
	Subscribe(ctx context.Context, id string) (Position, error)
	// Unsubscribe stops them, for the channel of that epoch only: a
	// channel made again under the same name is another subscription.
	Unsubscribe(ctx context.Context, id, epoch string) error
	// Receiving reports whether a subscription to id hands its
	// publications to this process now: false while a shared engine's
	// link for it is down, when a request that joins the channel's
	// listeners would wait for messages that cannot reach it.
	Receiving(id string) bool

	// Limits returns the settings in force; SetHistory changes the
	// history's bounds at run time (existing histories are trimmed at
	// their next write or read). SetMaxVirtualChannels changes the
	// limit on live channels (nil: none): a limit below the channels
	// that live refuses new ones until enough end, and ends none.
	Limits() Limits
	SetHistory(size int, ttl time.Duration)
	SetMaxVirtualChannels(limit *int)

	// Status says how the engine is, for readiness, comet:status and
	// /metrics.
	Status() Status

	// Stop ends the engine's background work.
	Stop()
}

// Status is an engine's health.
type Status struct {
	Broker string // "memory" or "redis"
	// Ready is false while the engine cannot serve: its backend is
	// unreachable or its subscriptions are not known to work.
	Ready         bool
	LastError     string        // the last backend failure, "" if none since the last success
	RTT           time.Duration // the last round trip through the backend's PUB/SUB; 0 if none
	Subscriptions int           // channels this process is subscribed to
}

// Handler receives what an engine delivers for subscribed channels. Its
// methods run on the engine's goroutines, in position order per channel,
// and must not block or call back into the engine.
type Handler interface {
	HandlePublication(id string, pub Publication)
	// HandleEnd says that the channel of that epoch ended.
	HandleEnd(id, epoch string)
	// HandleTop says that the channel is at top, though no publication
	// handed here says so: what came before it is lost to this process
	// (its history trimmed, or a new epoch, while its subscription was
	// down), and the next publication comes after top.
	HandleTop(id string, top Position)
}

// Limits are an engine's settings.
type Limits struct {
	MaxVirtualChannels *int          // nil: no limit
	HistorySize        int           // messages kept per channel; 0: none
	HistoryTTL         time.Duration // how long one is kept
	IdleExpiry         time.Duration // 0: channels live until closed
}

// MaxOrUnlimited is limit's value, or -1 for no limit.
func MaxOrUnlimited(limit *int) int {
	if limit == nil || *limit < 0 {
		return -1
	}
	return *limit
}

// Publication is one message with its position.
type Publication struct {
	Position Position
	Payload  []byte
	Tracker  any // the tracker given to Publish, for this process's own writes
}

// History is what a channel kept after a position.
type History struct {
	Publications []Publication // oldest first
	Top          Position      // the channel's position: that of its last message
	// Gap is true when the history cannot cover everything after the
	// position asked for: trimmed, expired, or another epoch.
	Gap bool
}

// ChannelInfo describes a live channel.
type ChannelInfo struct {
	Position   Position
	HistoryLen int
}

// Position is where a message stands in its channel: Offset counts the
// channel's messages within Epoch, and the epoch changes whenever the
// history behind it may have been lost. Offset 0 is "before the first
// message".
type Position struct {
	Offset uint64
	Epoch  string
}

// String is the position's wire form, "offset.epoch": opaque to clients,
// and made only of characters that percent-encoding keeps as they are.
func (p Position) String() string {
	return strconv.FormatUint(p.Offset, 10) + "." + p.Epoch
}

// Covers reports whether a client at p already has the message at q.
func (p Position) Covers(q Position) bool { return p.Epoch == q.Epoch && q.Offset <= p.Offset }

// ErrBadPosition is a position string that no engine made.
var ErrBadPosition = errors.New("malformed position: want OFFSET.EPOCH")

// ParsePosition reads a position's wire form.
func ParsePosition(s string) (Position, error) {
	off, epoch, ok := strings.Cut(s, ".")
	if !ok || off == "" || len(off) > 20 || !ValidEpoch(epoch) {
		return Position{}, ErrBadPosition
	}
	// ParseUint takes decimal digits only (no sign, no '_' in base 10).
	n, err := strconv.ParseUint(off, 10, 64)
	if err != nil || (len(off) > 1 && off[0] == '0') {
		return Position{}, ErrBadPosition // out of range, or not the one form String gives
	}
	return Position{Offset: n, Epoch: epoch}, nil
}

// ValidEpoch reports whether e may be an epoch: 1 to 64 characters of
// A-Z a-z 0-9 - _.
func ValidEpoch(e string) bool {
	if len(e) == 0 || len(e) > 64 {
		return false
	}
	for i := 0; i < len(e); i++ {
		c := e[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// RandomString returns n random bytes in base64url, the alphabet of
// epochs and generated identifiers (A-Z a-z 0-9 - _).
func RandomString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b)
}

// ValidName reports whether name may name a channel.
func ValidName(name string) bool {
	return len(name) >= 1 && len(name) <= 256 && utf8.ValidString(name) &&
		!strings.ContainsAny(name, ":\r\n")
}
