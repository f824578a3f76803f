// Package memory is the in-process channel engine: channels, positions and
// history live in this process's memory, and a restart loses them (a
// channel's epoch is made when it is created, so a channel of the same name
// made later starts a new epoch).
package memory

import (
	"bytes"
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cometop/comet-operator/cometserver/engine"
)

// Engine is the in-memory engine.
type Engine struct {
	handler engine.Handler
	start   time.Time // history times are monotonic offsets from it

	mu                sync.RWMutex
	channels          map[string]*channel
	engine.LiveLimits // the limit on channels and the history's bounds
	expiry            time.Duration

	// What every history holds, for /metrics.
	histMessages atomic.Int64
	histBytes    atomic.Int64
	subscribed   atomic.Int64 // channels with channel.subscribed set

	stop chan struct{}
	done chan struct{}
}

var _ engine.Engine = (*Engine)(nil)

// New returns an empty engine with the given limits. With an idle expiry
// it runs a sweeper until Stop.
func New(l engine.Limits) *Engine {
	e := &Engine{
		start:    time.Now(),
		channels: make(map[string]*channel),
		expiry:   l.IdleExpiry,
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	e.SetMaxVirtualChannels(l.MaxVirtualChannels)
	e.SetHistory(l.HistorySize, l.HistoryTTL)
	if e.expiry > 0 {
		go e.sweep()
	} else {
		close(e.done)
	}
	return e
}

func (e *Engine) Register(h engine.Handler) { e.handler = h }

// Stop ends the idle sweeper, if any. Channels stay as they are.
func (e *Engine) Stop() {
	select {
	case <-e.stop:
	default:
		close(e.stop)
	}
	<-e.done
}

func (e *Engine) Limits() engine.Limits { return e.Live(engine.Limits{IdleExpiry: e.expiry}) }

// Status is always ready: the engine is this process.
func (e *Engine) Status() engine.Status {
	return engine.Status{Broker: "memory", Ready: true, Subscriptions: int(e.subscribed.Load())}
}

// HistoryStats returns the messages and payload bytes all histories hold.
func (e *Engine) HistoryStats() (messages, bytes int64) {
	return e.histMessages.Load(), e.histBytes.Load()
}

func (e *Engine) Create(_ context.Context, name string) (string, error) {
	if name != "" && !engine.ValidName(name) {
		return "", engine.ErrInvalidName
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if m := e.MaxChannels(); m >= 0 && len(e.channels) >= m {
		return "", engine.ErrTooManyVirtualChannels
	}
	id := name
	if id == "" {
		for id == "" || e.channels[id] != nil { // a user may have named a channel like a generated id
			id = engine.RandomString(16)
		}
	} else if e.channels[id] != nil {
		return "", engine.ErrNameTaken
	}
	e.channels[id] = &channel{id: id, epoch: engine.RandomString(6), lastActive: time.Now()}
	return id, nil
}

func (e *Engine) lookup(id string) *channel {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.channels[id]
}

func (e *Engine) Close(_ context.Context, id string) error {
	e.mu.Lock()
	c := e.channels[id]
	delete(e.channels, id)
	e.mu.Unlock()
	if c == nil {
		return engine.ErrNotFound
	}
	e.end(c)
	return nil
}

func (e *Engine) end(c *channel) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	e.dropHistory(c, len(c.hist))
	if c.subscribed {
		c.subscribed = false
		e.subscribed.Add(-1)
		e.handler.HandleEnd(c.id, c.epoch)
	}
}

func (e *Engine) Publish(_ context.Context, id string, payload []byte, tracker any) (engine.Position, error) {
	c := e.lookup(id)
	if c == nil {
		return engine.Position{}, engine.ErrNotFound
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return engine.Position{}, engine.ErrNotFound // closed between lookup and write
	}
	c.lastActive = now
	c.top++
	pos := engine.Position{Offset: c.top, Epoch: c.epoch}
	e.keep(c, entry{offset: c.top, at: now.Sub(e.start), payload: payload})
	if c.subscribed {
		// Under the channel's lock: the handler sees positions in order.
		e.handler.HandlePublication(id, engine.Publication{Position: pos, Payload: payload, Tracker: tracker})
	}
	return pos, nil
}

func (e *Engine) History(_ context.Context, id string, since *engine.Position) (engine.History, error) {
	c := e.lookup(id)
	if c == nil {
		return engine.History{}, engine.ErrNotFound
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return engine.History{}, engine.ErrNotFound
	}
	e.trim(c, time.Now())
	h := engine.History{Top: engine.Position{Offset: c.top, Epoch: c.epoch}}
	if since == nil || *since == h.Top {
		return h, nil
	}
	from := 0 // index in c.hist of the first message after since
	switch {
	case since.Epoch != c.epoch || since.Offset > c.top:
		h.Gap = true // another epoch, or a position this channel never had
	case len(c.hist) == 0 || c.hist[0].offset > since.Offset+1:
		h.Gap = true // trimmed or expired
	default:
		from = int(since.Offset + 1 - c.hist[0].offset)
	}
	h.Publications = make([]engine.Publication, 0, len(c.hist)-from)
	for _, m := range c.hist[from:] {
		h.Publications = append(h.Publications, engine.Publication{
			Position: engine.Position{Offset: m.offset, Epoch: c.epoch}, Payload: m.payload})
	}
	return h, nil
}

func (e *Engine) Info(_ context.Context, id string) (engine.ChannelInfo, error) {
	c := e.lookup(id)
	if c == nil {
		return engine.ChannelInfo{}, engine.ErrNotFound
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e.trim(c, time.Now())
	return engine.ChannelInfo{Position: engine.Position{Offset: c.top, Epoch: c.epoch}, HistoryLen: len(c.hist)}, nil
}

func (e *Engine) Len(context.Context) (int, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return len(e.channels), nil
}

func (e *Engine) Subscribe(_ context.Context, id string) (engine.Position, error) {
	c := e.lookup(id)
	if c == nil {
		return engine.Position{}, engine.ErrNotFound
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return engine.Position{}, engine.ErrNotFound
	}
	if !c.subscribed {
		c.subscribed = true
		e.subscribed.Add(1)
	}
	return engine.Position{Offset: c.top, Epoch: c.epoch}, nil
}

func (e *Engine) Unsubscribe(_ context.Context, id, epoch string) error {
	c := e.lookup(id)
	if c == nil || c.epoch != epoch {
		return nil // ended meanwhile, or made again: nothing of this subscription to stop
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.subscribed {
		c.subscribed = false
		e.subscribed.Add(-1)
	}
	c.lastActive = time.Now() // the idle time counts from the hub's unsubscribe
	return nil
}

// Receiving is always true: the engine is this process.
func (e *Engine) Receiving(string) bool { return true }

// sweep closes idle channels every half expiry period, so a channel lives
// at most 1.5 times the expiry after its last activity.
func (e *Engine) sweep() {
	defer close(e.done)
	t := time.NewTicker(e.expiry / 2)
	defer t.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-t.C:
			e.closeIdle(time.Now().Add(-e.expiry))
		}
	}
}

func (e *Engine) closeIdle(before time.Time) {
	e.mu.Lock()
	var idle []*channel
	for id, c := range e.channels {
		if c.idleSince(before) {
			delete(e.channels, id)
			idle = append(idle, c)
		}
	}
	e.mu.Unlock()
	for _, c := range idle {
		e.end(c)
	}
}

// channel is one live channel.
type channel struct {
	id    string
	epoch string

	mu         sync.Mutex
	closed     bool
	subscribed bool // this process's hub has listeners on it, or had a moment ago
	top        uint64
	hist       []entry // oldest first, offsets consecutive, ending at top
	lastActive time.Time
}

// entry is one message kept in a history: 40 bytes and the payload.
type entry struct {
	offset  uint64
	at      time.Duration // since the engine's start (monotonic)
	payload []byte
}

func (c *channel) idleSince(before time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.subscribed && c.lastActive.Before(before)
}

// keep appends m to c's history within the size and age bounds. c.mu is held.
func (e *Engine) keep(c *channel, m entry) {
	size := e.HistorySize()
	if size == 0 || e.HistoryTTL() <= 0 {
		e.dropHistory(c, len(c.hist))
		return
	}
	if over := len(c.hist) + 1 - size; over > 0 {
		e.dropHistory(c, over)
	}
	m.payload = kept(m.payload)
	c.hist = append(c.hist, m)
	e.histMessages.Add(1)
	e.histBytes.Add(int64(cap(m.payload)))
	e.trimAge(c, m.at)
}

// trim applies the bounds in force (they may have changed) to c's history.
func (e *Engine) trim(c *channel, now time.Time) {
	if over := len(c.hist) - e.HistorySize(); over > 0 {
		e.dropHistory(c, over)
	}
	e.trimAge(c, now.Sub(e.start))
}

func (e *Engine) trimAge(c *channel, now time.Duration) {
	ttl := e.HistoryTTL()
	n := 0
	for n < len(c.hist) && now-c.hist[n].at > ttl {
		n++
	}
	e.dropHistory(c, n)
}

// kept is payload as a history keeps it: a buffer much larger than its
// message (io.ReadAll's) is copied, so that a kept message holds no more
// than it needs.
func kept(payload []byte) []byte {
	if cap(payload)-len(payload) > len(payload)/8+64 {
		return bytes.Clone(payload)
	}
	return payload
}

// dropHistory forgets the n oldest messages of c's history.
func (e *Engine) dropHistory(c *channel, n int) {
	if n <= 0 {
		return
	}
	var size int
	for i := range n {
		size += cap(c.hist[i].payload)
		c.hist[i] = entry{} // let the payload go
	}
	e.histMessages.Add(-int64(n))
	e.histBytes.Add(-int64(size))
	c.hist = c.hist[n:]
	if len(c.hist) == 0 {
		c.hist = nil // a quiet channel holds no array
	}
}
