package channels

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/cometop/comet-operator/cometserver/wire"
)

// Registry is the in-process Hub: channels live in this process's memory.
type Registry struct {
	max    int // live channels allowed; negative means no limit
	expiry time.Duration

	mu       sync.RWMutex
	channels map[string]*channel

	stop chan struct{}
	done chan struct{}
}

var _ Hub = (*Registry)(nil)

// Options configure a Registry.
type Options struct {
	// MaxVirtualChannels bounds the live channels; nil means no limit and
	// 0 refuses every create.
	MaxVirtualChannels *int
	// IdleExpiry closes a channel that has had no listener and no write for
	// this long. Zero keeps channels until they are closed.
	IdleExpiry time.Duration
}

// NewRegistry returns an empty Registry. With an idle expiry it runs a
// sweeper until Stop.
func NewRegistry(o Options) *Registry {
	r := &Registry{
		max:      -1,
		expiry:   o.IdleExpiry,
		channels: make(map[string]*channel),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	if o.MaxVirtualChannels != nil {
		r.max = *o.MaxVirtualChannels
	}
	if r.expiry > 0 {
		go r.sweep()
	} else {
		close(r.done)
	}
	return r
}

// Stop ends the idle sweeper, if any. Channels stay as they are.
func (r *Registry) Stop() {
	select {
	case <-r.stop:
	default:
		close(r.stop)
	}
	<-r.done
}

// MaxVirtualChannels returns the limit, or nil for none.
func (r *Registry) MaxVirtualChannels() *int {
	if r.max < 0 {
		return nil
	}
	m := r.max
	return &m
}

// ValidName reports whether name may name a channel.
func ValidName(name string) bool {
	return len(name) >= 1 && len(name) <= 256 && utf8.ValidString(name) &&
		!strings.ContainsAny(name, ":\r\n")
}

func (r *Registry) Create(name string) (string, error) {
	if name != "" && !ValidName(name) {
		return "", ErrInvalidName
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.max >= 0 && len(r.channels) >= r.max {
		return "", ErrTooManyVirtualChannels
	}
	id := name
	if id == "" {
		for id == "" || r.channels[id] != nil { // a user may have named a channel like a generated id
			id = newID()
		}
	} else if r.channels[id] != nil {
		return "", ErrNameTaken
	}
	r.channels[id] = &channel{id: id, listeners: make(map[*Waiter]struct{}), lastActive: time.Now()}
	return id, nil
}

// newID returns 128 random bits in the alphabet A-Z a-z 0-9 - _.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func (r *Registry) lookup(id string) *channel {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.channels[id]
}

func (r *Registry) Write(ctx context.Context, id string, msg []byte) (Outcome, error) {
	if string(msg) == wire.EndedChannel {
		return Outcome{}, ErrReservedMessage
	}
	c := r.lookup(id)
	if c == nil {
		return Outcome{}, ErrNotFound
	}
	d := newDelivery()
	if !c.broadcast(msg, d, time.Now()) {
		return Outcome{}, ErrNotFound // closed between lookup and write
	}
	d.release() // the writer's own hold: done closes once every waiter resolved
	select {
	case <-d.done:
		return d.outcome(), nil
	case <-ctx.Done():
		return d.outcome(), ctx.Err()
	}
}

func (r *Registry) Close(id string) error {
	r.mu.Lock()
	c := r.channels[id]
	delete(r.channels, id)
	r.mu.Unlock()
	if c == nil {
		return ErrNotFound
	}
	c.end()
	return nil
}

func (r *Registry) Info(id string) (Info, error) {
	c := r.lookup(id)
	if c == nil {
		return Info{}, ErrNotFound
	}
	return Info{ID: id, Listeners: c.listenerCount()}, nil
}

func (r *Registry) Subscribe(ids []string) (*Waiter, []string) {
	w := newWaiter()
	var ended []string
	for _, id := range ids {
		if c := r.lookup(id); c != nil && c.addListener(w) {
			w.subs = append(w.subs, c)
		} else {
			ended = append(ended, id)
		}
	}
	return w, ended
}

func (r *Registry) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.channels)
}

// sweep closes idle channels every half expiry period, so a channel lives
// at most 1.5 times the expiry after its last activity.
func (r *Registry) sweep() {
	defer close(r.done)
	t := time.NewTicker(r.expiry / 2)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
			r.closeIdle(time.Now().Add(-r.expiry))
		}
	}
}

func (r *Registry) closeIdle(before time.Time) {
	r.mu.Lock()
	var idle []*channel
	for id, c := range r.channels {
		if c.idleSince(before) {
			delete(r.channels, id)
			idle = append(idle, c)
		}
	}
	r.mu.Unlock()
	for _, c := range idle {
		c.end()
	}
}

// channel is one live channel and the waiters listening on it.
type channel struct {
	id         string
	mu         sync.Mutex
	closed     bool
	listeners  map[*Waiter]struct{}
	lastActive time.Time
}

func (c *channel) addListener(w *Waiter) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.listeners[w] = struct{}{}
	return true
}

func (c *channel) removeListener(w *Waiter) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.listeners, w)
	c.lastActive = time.Now()
}

func (c *channel) listenerCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.listeners)
}

// broadcast hands msg to every current listener, adding each to d.
func (c *channel) broadcast(msg []byte, d *delivery, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.lastActive = now
	for w := range c.listeners {
		d.pending.Add(1)
		if !w.push(Event{ID: c.id, Payload: msg, d: d}) {
			d.pending.Add(-1) // detached meanwhile: its reply will not carry msg
		}
	}
	return true
}

// end closes the channel and gives every listener the end marker.
func (c *channel) end() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	for w := range c.listeners {
		w.push(Event{ID: c.id, Ended: true})
	}
	clear(c.listeners)
}

func (c *channel) idleSince(before time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.listeners) == 0 && c.lastActive.Before(before)
}
