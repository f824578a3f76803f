package channels

import (
	"sync"
	"sync/atomic"
)

// Event is one thing a waiting request has to report: a message or the end
// of a channel.
type Event struct {
	ID      string
	Payload []byte
	Ended   bool
	d       *delivery // nil for end markers
}

// Waiter is one request waiting on a set of channels. Events gather in it
// until the request detaches, which it does exactly once.
type Waiter struct {
	mu       sync.Mutex
	events   []Event
	detached bool
	subs     []*channel
	ready    chan struct{} // gets a token when the first event arrives
	onReady  func()        // called, outside the lock, when the first event arrives
	inline   [1]Event      // most replies carry one event: no allocation for it in a broadcast
}

func newWaiter() *Waiter {
	w := &Waiter{ready: make(chan struct{}, 1)}
	w.events = w.inline[:0]
	return w
}

// Ready is signalled when at least one event is pending.
func (w *Waiter) Ready() <-chan struct{} { return w.ready }

// Subscribed reports whether the waiter listens on any live channel.
func (w *Waiter) Subscribed() bool { return len(w.subs) > 0 }

// OnReady arranges for f to be called when the first event is pending, or
// at once if one already is. It is for a waiter that cannot select on
// Ready, such as a connection parked in a read; f must not block.
func (w *Waiter) OnReady(f func()) {
	w.mu.Lock()
	pending := len(w.events) > 0
	if !pending {
		w.onReady = f
	}
	w.mu.Unlock()
	if pending {
		f()
	}
}

// push hands ev to the waiter unless it has detached.
func (w *Waiter) push(ev Event) bool {
	w.mu.Lock()
	if w.detached {
		w.mu.Unlock()
		return false
	}
	w.events = append(w.events, ev)
	var notify func()
	if len(w.events) == 1 {
		w.ready <- struct{}{}
		notify = w.onReady
	}
	w.mu.Unlock()
	if notify != nil {
		notify()
	}
	return true
}

// Detach stops the waiter listening and returns every event it gathered.
// After Detach no write reaches it, so the returned events are exactly what
// its reply must carry. The caller must Resolve them.
func (w *Waiter) Detach() []Event {
	w.mu.Lock()
	events, subs := w.events, w.subs
	w.events, w.subs, w.detached, w.onReady = nil, nil, true, nil
	w.mu.Unlock()
	for _, c := range subs {
		c.removeListener(w)
	}
	return events
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
