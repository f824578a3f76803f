// Package channels fans messages out to the requests waiting in this
// process (PROTOCOL.md section 3), over an engine (package engine) that
// holds the channels, their positions and history.
//
// One message's path, top to bottom: Hub.Write publishes it to the engine;
// the engine gives it a position, keeps it, and hands it to the handler of
// every process subscribed to the channel (Hub.HandlePublication here);
// that hands it to each Waiter of the channel; once the locks are let go,
// Hub.Write wakes the waiters it reached (each is answered on the write's
// goroutine where it can be); each waiting request's reply carries it and
// resolves its delivery.
package channels

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cometop/comet-operator/cometserver/engine"
	"github.com/cometop/comet-operator/cometserver/wire"
)

// Errors a Hub returns, the engine's and its own. Callers match them with
// errors.Is.
var (
	ErrTooManyVirtualChannels = engine.ErrTooManyVirtualChannels
	ErrNameTaken              = engine.ErrNameTaken
	ErrInvalidName            = engine.ErrInvalidName
	ErrNotFound               = engine.ErrNotFound
	ErrReservedMessage        = errors.New("the message ENDED_CHANNEL is reserved for the end marker")
)

// ValidName reports whether name may name a channel.
func ValidName(name string) bool { return engine.ValidName(name) }

// Hub is this process's view of the channels: what the long-poll handler
// and the publisher API use.
type Hub struct {
	eng    engine.Engine
	linger time.Duration

	mu    sync.RWMutex
	local map[string]*local // channels this process's requests wait on, or did a moment ago
}

// DefaultLinger is how long this process stays subscribed to a channel
// after its last waiting request here was answered or left. A long-poll
// client is back within milliseconds of each reply, so without it every
// message would unsubscribe and subscribe again each process that serves
// the channel: on a shared engine, round trips on each poll's path.
const DefaultLinger = time.Second

// An Option changes a Hub from its defaults.
type Option func(*Hub)

// Linger sets how long the Hub stays subscribed to a channel nobody here
// waits on any more (DefaultLinger); 0 unsubscribes at once.
func Linger(d time.Duration) Option { return func(h *Hub) { h.linger = d } }

// New returns a Hub over eng, and registers itself as eng's handler.
func New(eng engine.Engine, opts ...Option) *Hub {
	h := &Hub{eng: eng, linger: DefaultLinger, local: make(map[string]*local)}
	for _, o := range opts {
		o(h)
	}
	eng.Register(h)
	return h
}

// Engine is the engine under the hub.
func (h *Hub) Engine() engine.Engine { return h.eng }

// Outcome says what became of one write in this process.
type Outcome struct {
	Delivered int `json:"delivered"` // replies carrying the message that were flushed
	Failed    int `json:"failed"`    // replies carrying it that could not be written
}

// NoListener reports that nobody was waiting when the message was written.
func (o Outcome) NoListener() bool { return o.Delivered == 0 && o.Failed == 0 }

// Info describes a live channel.
type Info struct {
	ID         string `json:"id"`
	Listeners  int    `json:"listeners"` // requests waiting on it in this process
	Position   string `json:"position"`
	HistoryLen int    `json:"history_length"`
}

// Create makes a channel. An empty name asks for a generated, unguessable
// identifier; otherwise the name is the identifier.
func (h *Hub) Create(ctx context.Context, name string) (string, error) {
	return h.eng.Create(ctx, name)
}

// Close ends a channel: its waiting requests get the end marker at once.
func (h *Hub) Close(ctx context.Context, id string) error { return h.eng.Close(ctx, id) }

// Len is the number of live channels.
func (h *Hub) Len(ctx context.Context) (int, error) { return h.eng.Len(ctx) }

// Info describes a live channel.
func (h *Hub) Info(ctx context.Context, id string) (Info, error) {
	ci, err := h.eng.Info(ctx, id)
	if err != nil {
		return Info{}, err
	}
	info := Info{ID: id, Position: ci.Position.String(), HistoryLen: ci.HistoryLen}
	if l := h.lookup(id); l != nil {
		l.mu.Lock()
		info.Listeners = len(l.listeners)
		l.mu.Unlock()
	}
	return info, nil
}

// History returns what channel id kept after since (see engine.History).
func (h *Hub) History(ctx context.Context, id string, since *engine.Position) (engine.History, error) {
	return h.eng.History(ctx, id, since)
}

// Write publishes msg on channel id and waits, until ctx ends, for each
// reply of this process that carries it to be flushed or to fail.
func (h *Hub) Write(ctx context.Context, id string, msg []byte) (Outcome, engine.Position, error) {
	if string(msg) == wire.EndedChannel {
		return Outcome{}, engine.Position{}, ErrReservedMessage
	}
	d := newDelivery()
	pos, err := h.eng.Publish(ctx, id, msg, d)
	// The waiters it reached, woken here rather than under the engine's
	// and the channel's locks: each may be answered on this goroutine,
	// which waits for their replies anyway, instead of waking one
	// goroutine per waiter. Even on an error: the message may have
	// reached them (the engine hands the tracker back before Publish
	// returns, never after).
	wakeAll(d.wakes)
	if err != nil {
		return Outcome{}, engine.Position{}, err
	}
	d.release() // the writer's own hold: done closes once every waiter resolved
	select {
	case <-d.done:
		return d.outcome(), pos, nil
	case <-ctx.Done():
		return d.outcome(), pos, ctx.Err()
	}
}

// Resume asks a subscription to resume from positions: a channel in From
// gets what its history holds after that position, or a gap; the others
// start from their position when the subscription takes effect.
type Resume struct {
	From map[string]engine.Position
}

// Subscribe makes a Waiter listening on the live channels among ids (which
// must be distinct) and returns the others, in the order given, as ended.
// With r it keeps a position per channel (Waiter.Cursor) and fetches what
// r asks from the history. On an error it listens nowhere.
func (h *Hub) Subscribe(ctx context.Context, ids []string, r *Resume) (w *Waiter, ended []string, err error) {
	var from map[string]engine.Position
	if r != nil {
		from = r.From
	}
	w = newWaiter(ids, r != nil, from)
	for _, id := range ids {
		ok, err := h.listen(ctx, id, w)
		if err != nil {
			Resolve(w.Detach(), false)
			return nil, nil, err
		}
		if !ok {
			ended = append(ended, id)
		}
	}
	for _, l := range w.subs {
		since, ok := from[l.id]
		if !ok {
			continue // it starts where it joined
		}
		if w.joinedAt(l.id) == since {
			// The client has everything up to the last publication handed
			// here (or the top the engine said, HandleTop), and everything
			// after reaches w live: no history to read (a round trip to a
			// shared engine, at every poll of a client that keeps up).
			w.merge(l.id, since, engine.History{Top: since})
			continue
		}
		after := since // &since would put every poll's since on the heap, read or not
		hist, err := h.eng.History(ctx, l.id, &after)
		switch {
		case errors.Is(err, engine.ErrNotFound):
			// Ended since we listened: its end marker is on its way to w.
		case err != nil:
			Resolve(w.Detach(), false)
			return nil, nil, fmt.Errorf("history of %q: %w", l.id, err)
		default:
			w.merge(l.id, since, hist)
		}
	}
	return w, ended, nil
}

// listen adds w to channel id's listeners, subscribing this process to the
// channel first if w is its first listener here. It reports false if the
// channel is not live.
func (h *Hub) listen(ctx context.Context, id string, w *Waiter) (bool, error) {
	for {
		l := h.localFor(id)
		l.subMu.Lock()
		if l.gone.Load() { // released or ended while we waited: take the new one
			l.subMu.Unlock()
			continue
		}
		if l.subscribed && !h.eng.Receiving(id) {
			// Joining listeners that wait for what cannot come: refused
			// as a subscribe would be, so that the client retries
			// (elsewhere). The subscription stays: the engine catches it
			// up once its link is back.
			l.subMu.Unlock()
			return false, fmt.Errorf("listen to %q: its publications do not reach this process now: %w", id, engine.ErrUnavailable)
		}
		if !l.subscribed {
			top, err := h.eng.Subscribe(ctx, id)
			if err != nil {
				l.gone.Store(true)
				h.forget(l)
				l.subMu.Unlock()
				if errors.Is(err, engine.ErrNotFound) {
					return false, nil
				}
				return false, fmt.Errorf("subscribe to %q: %w", id, err)
			}
			l.subscribed, l.epoch = true, top.Epoch
			l.mu.Lock()
			if !l.top.Covers(top) { // unless a publication came first
				l.top = top
			}
			if l.endSeen == top.Epoch { // and its end too
				l.ended = true
			}
			l.mu.Unlock()
		}
		l.mu.Lock()
		live := !l.ended
		if live {
			l.listeners[w] = struct{}{}
			w.join(id, l.top) // under l.mu: no publication between the two
		}
		l.mu.Unlock()
		if !live {
			l.gone.Store(true)
			h.forget(l)
		}
		l.subMu.Unlock()
		if live {
			w.subs = append(w.subs, l)
		}
		return live, nil
	}
}

// lookup returns channel id's local view, nil if no request here waits on
// it (nor did for the Hub's linger).
func (h *Hub) lookup(id string) *local {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.local[id]
}

func (h *Hub) localFor(id string) *local {
	l := h.lookup(id)
	if l != nil {
		return l
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if l = h.local[id]; l == nil {
		l = &local{hub: h, id: id, listeners: make(map[*Waiter]struct{})}
		h.local[id] = l
	}
	return l
}

// forget removes l from the map, unless another took its place.
func (h *Hub) forget(l *local) {
	h.mu.Lock()
	if h.local[l.id] == l {
		delete(h.local, l.id)
	}
	h.mu.Unlock()
}

// release unsubscribes this process from l's channel once its last
// listener here has left, after the Hub's linger: a listener that comes
// back first finds it still subscribed.
func (h *Hub) release(l *local) {
	l.subMu.Lock()
	defer l.subMu.Unlock()
	if h.linger <= 0 || l.gone.Load() {
		h.unsubscribeIdle(l)
		return
	}
	l.leftAt = time.Now()
	if l.lingering {
		return // its timer is set, and reads leftAt when it fires
	}
	l.lingering = true
	if l.linger == nil {
		l.linger = time.AfterFunc(h.linger, func() { h.lingered(l) })
	} else {
		l.linger.Reset(h.linger)
	}
}

// lingered runs when l's linger timer fires: it unsubscribes if nobody
// came back since, or waits out the linger of whoever left last.
func (h *Hub) lingered(l *local) {
	l.subMu.Lock()
	defer l.subMu.Unlock()
	if rest := h.linger - time.Since(l.leftAt); rest > 0 {
		l.linger.Reset(rest)
		return
	}
	l.lingering = false
	h.unsubscribeIdle(l) // a listener here now calls release again when it leaves
}

// unsubscribeIdle unsubscribes this process from l's channel if nobody
// here listens on it. The caller holds l.subMu.
func (h *Hub) unsubscribeIdle(l *local) {
	l.mu.Lock()
	idle := len(l.listeners) == 0
	l.mu.Unlock()
	if !idle || l.gone.Load() {
		return // a listener came back meanwhile, or another release won
	}
	l.gone.Store(true)
	if l.subscribed {
		// Before forget: a newcomer's l can subscribe only after this. By
		// epoch: a channel made again meanwhile is not this subscription.
		// An engine that fails here stays subscribed: the cost is a few
		// publications for nobody.
		_ = h.eng.Unsubscribe(context.Background(), l.id, l.epoch)
	}
	h.forget(l)
}

// HandlePublication hands a publication to the channel's waiters here.
// It implements engine.Handler. The waiters it reached are woken with no
// lock held: by the write, for this process's own (Hub.Write), else by one
// goroutine for them all, since the engine's goroutine holds its lock.
func (h *Hub) HandlePublication(id string, pub engine.Publication) {
	l := h.lookup(id)
	if l == nil {
		return
	}
	d, _ := pub.Tracker.(*delivery)
	ev := Event{ID: id, Payload: pub.Payload, Pos: pub.Position, d: d}
	var wakes []func(bool)
	l.mu.Lock()
	l.top = pub.Position
	for w := range l.listeners {
		if d != nil {
			d.pending.Add(1)
		}
		ok, wake := w.push(ev)
		if !ok && d != nil {
			d.pending.Add(-1) // detached meanwhile, or had it: its reply will not carry it
		}
		if wake != nil {
			if wakes == nil {
				wakes = make([]func(bool), 0, len(l.listeners))
			}
			wakes = append(wakes, wake)
		}
	}
	l.mu.Unlock()
	if d != nil {
		d.wakes = wakes
	} else if len(wakes) > 0 {
		go wakeAll(wakes)
	}
}

// wakeChunk is how many waiters one goroutine wakes in turn: a broadcast
// to more spreads over goroutines, so over the processors, rather than
// answering every request one after the other.
const wakeChunk = 64

// wakeAll runs the wakes of the waiters one publication reached, on
// goroutines that hold no lock: each may answer its request there. The
// caller's goroutine takes the first chunk.
func wakeAll(wakes []func(bool)) {
	for len(wakes) > wakeChunk {
		go wakeAll(wakes[len(wakes)-wakeChunk:])
		wakes = wakes[:len(wakes)-wakeChunk]
	}
	for _, wake := range wakes {
		wake(true)
	}
}

// HandleEnd gives the channel's waiters here the end marker. It implements
// engine.Handler.
func (h *Hub) HandleEnd(id, epoch string) {
	l := h.lookup(id)
	if l == nil {
		return
	}
	l.mu.Lock()
	switch l.top.Epoch {
	case "": // still subscribing: listen ends it once it knows the epoch
		l.endSeen = epoch
		l.mu.Unlock()
		return
	case epoch:
	default:
		l.mu.Unlock()
		return // the end of an earlier channel of that name
	}
	l.ended = true
	for w := range l.listeners {
		if _, wake := w.push(Event{ID: id, Ended: true}); wake != nil {
			wake(false)
		}
	}
	clear(l.listeners)
	l.mu.Unlock()
	l.gone.Store(true)
	h.forget(l)
}

// HandleTop moves the channel's top here without a publication. It
// implements engine.Handler: a client resuming from before it then reads
// the history, which reports the gap, instead of being taken as up to date
// (see Subscribe).
func (h *Hub) HandleTop(id string, top engine.Position) {
	l := h.lookup(id)
	if l == nil {
		return
	}
	l.mu.Lock()
	l.top = top
	l.mu.Unlock()
}

// local is a channel as this process sees it: its waiters, and whether
// this process is subscribed to it in the engine.
//
// Locks: subMu, then the engine's, then mu. The engine calls the handler
// under its own lock, so nothing holding mu may call the engine.
type local struct {
	hub   *Hub
	id    string
	subMu sync.Mutex // held across the engine's Subscribe and Unsubscribe
	// subscribed and epoch (the subscribed channel's) are guarded by subMu.
	subscribed bool
	epoch      string
	// Linger (see Hub.release), guarded by subMu: since when nobody here
	// listens, and the timer that unsubscribes once that lasted the
	// Hub's linger.
	leftAt    time.Time
	lingering bool
	linger    *time.Timer
	gone      atomic.Bool // out of the map: a newcomer must make a new one

	mu        sync.Mutex
	ended     bool
	top       engine.Position // of the last publication handed here
	endSeen   string          // the epoch of an end that came before top was known
	listeners map[*Waiter]struct{}
}

// removeListener takes w off l and reports whether l has no listener left.
func (l *local) removeListener(w *Waiter) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.listeners, w)
	return len(l.listeners) == 0 && !l.ended
}
