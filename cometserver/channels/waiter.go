package channels

import (
	"sync"
	"sync/atomic"

	"github.com/cometop/comet-operator/cometserver/engine"
)

// Event is one thing a waiting request has to report: a message or the end
// of a channel.
type Event struct {
	ID      string
	Payload []byte
	Pos     engine.Position // a message's position
	Ended   bool
	d       *delivery // nil for end markers and messages read from history
}

// Waiter is one request waiting on a set of channels. Events gather in it
// until the request detaches, which it does exactly once.
type Waiter struct {
	mu       sync.Mutex
	events   []Event
	detached bool
	news     bool // something to report: an event or a gap
	subs     []*local
	cursors  map[string]*cursor // resuming waiters only
	replayed int                // events[:replayed] came from histories
	budget   int                // payload bytes the histories may still add
	ready    chan struct{}      // gets a token when there is news
	onReady  func(bool)         // called, outside the lock, when there is news
	inline   [1]Event           // most replies carry one event: no allocation for it in a broadcast
	oneSub   [1]*local          // most polls listen on one channel: no allocation for subs
}

// MaxReplayBytes bounds the payload bytes that histories add to one
// reply (at least one message is always added): a request resuming many
// channels far back gets the rest with its next poll, at once, instead of
// a reply of gigabytes.
const MaxReplayBytes = 1 << 20

// cursor is a resuming waiter's position in one channel.
type cursor struct {
	pos       engine.Position // the client has everything up to here
	waiting   bool            // its history is yet to merge: live events gather unfiltered
	gap       bool            // the history could not cover the client's position
	truncated bool            // the reply stops at pos: later messages come with the next poll
	ended     bool
}

func newWaiter(ids []string, resume bool, from map[string]engine.Position) *Waiter {
	w := &Waiter{ready: make(chan struct{}, 1), budget: MaxReplayBytes}
	w.events, w.subs = w.inline[:0], w.oneSub[:0]
	if resume {
		w.cursors = make(map[string]*cursor, len(ids))
		for _, id := range ids {
			_, resumes := from[id]
			w.cursors[id] = &cursor{waiting: resumes}
		}
	}
	return w
}

// Ready is signalled when there is something to report.
func (w *Waiter) Ready() <-chan struct{} { return w.ready }

// Subscribed reports whether the waiter listens on any live channel.
func (w *Waiter) Subscribed() bool { return len(w.subs) > 0 }

// OnReady arranges for f to be called when there is something to report,
// or at once if there already is. It is for a waiter that cannot select
// on Ready, such as a connection parked with no goroutine.
//
// lockFree tells f whether its caller holds locks. Most often f runs on
// the goroutine of the write that brought the news, after the engine's
// locks are let go (lockFree true): f may then answer the request there,
// as long as it never waits (on a slow client, say). Otherwise (an end,
// another process's publication, news already there) it must not block.
func (w *Waiter) OnReady(f func(lockFree bool)) {
	w.mu.Lock()
	news := w.news
	if !news {
		w.onReady = f
	}
	w.mu.Unlock()
	if news {
		f(false)
	}
}

// signal marks news, once, and returns the function to call outside the
// lock. w.mu is held.
func (w *Waiter) signal() func(bool) {
	if w.news {
		return nil
	}
	w.news = true
	w.ready <- struct{}{}
	return w.onReady
}

// join records where the waiter joined channel id: the position of the
// channel's last publication handed to this process. Called under the
// channel's lock, so every later publication reaches push.
func (w *Waiter) join(id string, top engine.Position) {
	if w.cursors == nil { // not resuming (cursors never changes after newWaiter)
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if c := w.cursors[id]; c != nil {
		c.pos = top
	}
}

// joinedAt is where a resuming waiter joined channel id (see join), until
// its history is merged.
func (w *Waiter) joinedAt(id string) engine.Position {
	w.mu.Lock()
	defer w.mu.Unlock()
	if c := w.cursors[id]; c != nil && c.waiting {
		return c.pos
	}
	return engine.Position{}
}

// push hands ev to the waiter unless it has detached or, resuming, already
// has the message or stopped that channel's reply short. It returns the
// waiter's wake when this is its first news, for the caller to run once
// its locks are let go.
func (w *Waiter) push(ev Event) (bool, func(bool)) {
	w.mu.Lock()
	if w.detached {
		w.mu.Unlock()
		return false, nil
	}
	if c := w.cursors[ev.ID]; c != nil {
		switch {
		case ev.Ended:
			c.ended = true
		case c.waiting: // the merge sorts these out
		case c.truncated || c.pos.Covers(ev.Pos):
			w.mu.Unlock()
			return false, nil
		default:
			if c.pos.Epoch != ev.Pos.Epoch || ev.Pos.Offset > c.pos.Offset+1 {
				// The channel's history was lost behind it (a shared
				// engine's backend came back without it): what came before
				// in the new epoch, or after c.pos in the old, is unknown.
				// Or messages between were lost to this process (its
				// subscription was down, and the history trimmed since).
				c.gap = true
			}
			c.pos = ev.Pos
		}
	}
	w.events = append(w.events, ev)
	notify := w.signal()
	w.mu.Unlock()
	return true, notify
}

// merge adds what channel id's history holds after since to the reply.
// The channel's live events so far are sorted against it: those the
// history also holds are dropped, those older than its first message go
// before it (the history was trimmed past them), the rest stay after. The
// history's messages go after those of earlier merges and before any live
// message, within the waiter's replay budget.
func (w *Waiter) merge(id string, since engine.Position, hist engine.History) {
	w.mu.Lock()
	c := w.cursors[id]
	if w.detached || c == nil || !c.waiting || c.ended {
		w.mu.Unlock()
		return
	}
	joined := c.pos // live events of id all come after it
	pubs := hist.Publications
	inHistory := func(p engine.Position) bool {
		return len(pubs) > 0 && p.Epoch == pubs[0].Position.Epoch &&
			p.Offset >= pubs[0].Position.Offset && p.Offset <= pubs[len(pubs)-1].Position.Offset
	}
	var older, rest []Event
	var dropped []*delivery
	for _, ev := range w.events[w.replayed:] {
		switch {
		case ev.ID != id || ev.Ended:
			rest = append(rest, ev)
		case since.Covers(ev.Pos):
			dropped = append(dropped, ev.d) // the client has it
		case inHistory(ev.Pos):
			dropped = append(dropped, ev.d) // the history carries it
		case len(pubs) > 0 && ev.Pos.Epoch == pubs[0].Position.Epoch && ev.Pos.Offset < pubs[0].Position.Offset:
			older = append(older, ev)
		default:
			rest = append(rest, ev)
		}
	}
	replay := older
	for _, p := range pubs {
		replay = append(replay, Event{ID: id, Payload: p.Payload, Pos: p.Position})
	}
	// Within the budget; what does not fit comes with the next poll.
	n := 0
	for n < len(replay) && (w.budget > 0 || w.replayed+n == 0) {
		w.budget -= len(replay[n].Payload)
		n++
	}
	// A history read older than the join (an engine whose reads may lag)
	// leaves a hole before the live events: stop the reply at the history
	// too, and the next poll reads on from there.
	stale := joined.Epoch == hist.Top.Epoch && joined.Offset > hist.Top.Offset
	if n < len(replay) || stale {
		c.truncated = true
		for _, ev := range replay[n:] {
			dropped = append(dropped, ev.d)
		}
		replay = replay[:n]
		kept := rest[:0]
		for _, ev := range rest {
			if ev.ID == id && !ev.Ended {
				dropped = append(dropped, ev.d) // after the cut: the next poll gets it
			} else {
				kept = append(kept, ev)
			}
		}
		rest = kept
	}

	// A gap is said unless what came live reaches back to since (the
	// history, trimmed or off, did not need to).
	liveCovers := joined.Epoch == since.Epoch && joined.Offset <= since.Offset && since.Offset <= hist.Top.Offset
	c.gap = hist.Gap && !liveCovers
	c.pos, c.waiting = hist.Top, false
	if c.truncated {
		c.pos = since
		if len(replay) > 0 {
			c.pos = replay[len(replay)-1].Pos
		} else {
			c.gap = false // nothing of it in this reply: the next one says it
		}
	} else {
		for _, ev := range rest {
			if ev.ID == id && !ev.Ended {
				c.pos = ev.Pos
			}
		}
		if len(replay) > 0 && !c.pos.Covers(replay[len(replay)-1].Pos) {
			c.pos = replay[len(replay)-1].Pos
		}
	}

	events := make([]Event, 0, w.replayed+len(replay)+len(rest))
	events = append(events, w.events[:w.replayed]...)
	events = append(events, replay...)
	w.replayed = len(events)
	w.events = append(events, rest...)
	var notify func(bool)
	if len(w.events) > 0 || c.gap {
		notify = w.signal()
	}
	w.mu.Unlock()
	for _, d := range dropped {
		if d != nil {
			d.release() // this reply will not carry it (the history does, or the next poll)
		}
	}
	if notify != nil {
		notify(false)
	}
}

// Detach stops the waiter listening and returns every event it gathered.
// After Detach no write reaches it, so the returned events are exactly what
// its reply must carry. The caller must Resolve them.
func (w *Waiter) Detach() []Event {
	w.mu.Lock()
	events, subs := w.events, w.subs // subs may be w.oneSub: left as it is
	w.events, w.subs, w.detached, w.onReady = nil, nil, true, nil
	w.mu.Unlock()
	for _, l := range subs {
		if l.removeListener(w) {
			l.hub.release(l)
		}
	}
	return events
}

// Cursor returns, for a resuming waiter after Detach, channel id's
// position after the reply and whether the history had a gap before it.
// ok is false for a channel it did not follow to the end: not live, ended,
// or whose history it could not read.
func (w *Waiter) Cursor(id string) (pos engine.Position, gap, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := w.cursors[id]
	if c == nil || c.waiting || c.ended || c.pos.Epoch == "" {
		return engine.Position{}, false, false
	}
	return c.pos, c.gap, true
}

// Resolve records the fate of the reply that carried events: flushed
// (delivered) or not. Each write waiting on an outcome learns it here.
func Resolve(events []Event, delivered bool) {
	for _, ev := range events {
		if ev.d != nil {
			ev.d.resolve(delivered)
		}
	}
}

// delivery tracks the outcome of one write across the waiters it reached.
type delivery struct {
	pending   atomic.Int64 // waiters yet to resolve, plus one held by the writer
	delivered atomic.Int64
	failed    atomic.Int64
	done      chan struct{}
	wakes     []func(bool) // of the waiters it reached: the writer runs them (Hub.Write)
}

func newDelivery() *delivery {
	d := &delivery{done: make(chan struct{})}
	d.pending.Store(1)
	return d
}

func (d *delivery) resolve(delivered bool) {
	if delivered {
		d.delivered.Add(1)
	} else {
		d.failed.Add(1)
	}
	d.release()
}

func (d *delivery) release() {
	if d.pending.Add(-1) == 0 {
		close(d.done)
	}
}

func (d *delivery) outcome() Outcome {
	return Outcome{Delivered: int(d.delivered.Load()), Failed: int(d.failed.Load())}
}
