package channels

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/cometop/comet-operator/cometserver/engine"
	"github.com/cometop/comet-operator/cometserver/engine/memory"
	"github.com/cometop/comet-operator/test/bounded"
)

func ptr(n int) *int { return &n }

// testHub is a Hub over the in-memory engine, with the engine's own
// methods called as the tests of one process need them.
type testHub struct {
	*Hub
	eng *memory.Engine
}

func newTestHub(l engine.Limits) testHub {
	eng := memory.New(l)
	return testHub{Hub: New(eng), eng: eng}
}

var bg = context.Background()

func (r testHub) Stop()                              { r.eng.Stop() }
func (r testHub) Create(name string) (string, error) { return r.Hub.Create(bg, name) }
func (r testHub) Close(id string) error              { return r.Hub.Close(bg, id) }
func (r testHub) Info(id string) (Info, error)       { return r.Hub.Info(bg, id) }
func (r testHub) Len() int                           { n, _ := r.Hub.Len(bg); return n }

func (r testHub) Write(ctx context.Context, id string, msg []byte) (Outcome, error) {
	out, _, err := r.Hub.Write(ctx, id, msg)
	return out, err
}

// Subscribe subscribes without resuming; the in-memory engine cannot fail.
func (r testHub) Subscribe(ids []string) (*Waiter, []string) {
	w, ended, err := r.Hub.Subscribe(bg, ids, nil)
	if err != nil {
		panic(err)
	}
	return w, ended
}

// writeNow writes without waiting for the outcome: the broadcast happens
// before Write looks at its context (with nobody listening the outcome is
// known at once, and either may come back).
func writeNow(t *testing.T, r testHub, id, msg string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.Write(ctx, id, []byte(msg)); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("write %q to %s: %v", msg, id, err)
	}
}

func TestWaiterGathersEverythingUntilDetach(t *testing.T) {
	r := newTestHub(engine.Limits{})
	defer r.Stop()
	r.Create("a")
	r.Create("b")
	w, ended := r.Subscribe([]string{"x", "a", "y", "b"})
	if strings.Join(ended, ",") != "x,y" || !w.Subscribed() {
		t.Fatalf("ended = %q", ended)
	}
	writeNow(t, r, "b", "1")
	writeNow(t, r, "a", "2")
	writeNow(t, r, "b", "3")
	r.Close("a")
	select {
	case <-w.Ready():
	default:
		t.Fatal("not ready after writes")
	}
	events := w.Detach()
	var got []string
	for _, ev := range events {
		if ev.Ended {
			got = append(got, ev.ID+":END")
		} else {
			got = append(got, ev.ID+":"+string(ev.Payload))
		}
	}
	if want := "b:1 a:2 b:3 a:END"; strings.Join(got, " ") != want {
		t.Fatalf("events %q, want %q", got, want)
	}
	Resolve(events, true)
	if out, err := r.Write(context.Background(), "b", []byte("late")); err != nil || !out.NoListener() {
		t.Fatalf("a detached waiter still listens: %+v, %v", out, err)
	}
	if info, _ := r.Info("b"); info.Listeners != 0 {
		t.Fatalf("listeners after detach = %d", info.Listeners)
	}
}

func TestWriteOutcome(t *testing.T) {
	r := newTestHub(engine.Limits{})
	defer r.Stop()
	r.Create("c")
	if out, err := r.Write(context.Background(), "c", []byte("m")); err != nil || !out.NoListener() {
		t.Fatalf("nobody waiting: %+v, %v", out, err)
	}
	var waiters []*Waiter
	for range 3 {
		w, _ := r.Subscribe([]string{"c"})
		waiters = append(waiters, w)
	}
	if info, _ := r.Info("c"); info.Listeners != 3 {
		t.Fatalf("listeners = %d, want 3", info.Listeners)
	}
	done := make(chan Outcome)
	go func() {
		out, err := r.Write(context.Background(), "c", []byte("m"))
		if err != nil {
			t.Error(err)
		}
		done <- out
	}()
	for i, w := range waiters {
		<-w.Ready()
		Resolve(w.Detach(), i != 1) // the second reply fails
	}
	if out := <-done; out != (Outcome{Delivered: 2, Failed: 1}) {
		t.Fatalf("outcome %+v, want 2 delivered, 1 failed", out)
	}
}

func TestWriteErrors(t *testing.T) {
	r := newTestHub(engine.Limits{})
	defer r.Stop()
	r.Create("c")
	if _, err := r.Write(context.Background(), "c", []byte("ENDED_CHANNEL")); !errors.Is(err, ErrReservedMessage) {
		t.Fatalf("reserved message: %v", err)
	}
	if _, err := r.Write(context.Background(), "c", []byte("ENDED_CHANNEL ")); err != nil {
		t.Fatalf("only the exact marker is reserved: %v", err)
	}
	for _, op := range []func() error{
		func() error { _, err := r.Write(context.Background(), "nope", nil); return err },
		func() error { return r.Close("nope") },
		func() error { _, err := r.Info("nope"); return err },
	} {
		if err := op(); !errors.Is(err, ErrNotFound) {
			t.Fatalf("unknown channel: %v, want ErrNotFound", err)
		}
	}
	r.Close("c")
	if err := r.Close("c"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("double close: %v", err)
	}
	if w, ended := r.Subscribe([]string{"c"}); w.Subscribed() || len(ended) != 1 {
		t.Fatal("a closed channel is ended for later subscribers")
	}
}

// Writers, closers and waiters race; run with -race. Every write's outcome
// adds up to what its waiters resolved: across all writes, the deliveries
// counted equal the messages the waiters took, and nothing failed.
func TestConcurrentUse(t *testing.T) {
	bounded.Test(t, time.Minute)
	r := newTestHub(engine.Limits{MaxVirtualChannels: ptr(50)})
	defer r.Stop()
	var (
		wg, writers      sync.WaitGroup
		mu               sync.Mutex
		delivered, taken int
		problems         []string
	)
	problem := func(format string, a ...any) {
		mu.Lock()
		problems = append(problems, fmt.Sprintf(format, a...))
		mu.Unlock()
	}
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				name := fmt.Sprint("c", (g*7+i)%20)
				if _, err := r.Create(name); err != nil && !errors.Is(err, ErrNameTaken) {
					problem("create %s: %v", name, err)
				}
				w, _ := r.Subscribe([]string{name, "c3"})
				writers.Add(1)
				go func() {
					defer writers.Done()
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					out, err := r.Write(ctx, name, []byte("m"))
					switch {
					case errors.Is(err, ErrNotFound): // closed meanwhile
					case err != nil:
						problem("write %s: %v", name, err)
					case out.Failed != 0:
						problem("write %s: %+v, nothing should fail", name, out)
					default:
						mu.Lock()
						delivered += out.Delivered
						mu.Unlock()
					}
				}()
				if i%5 == 0 {
					r.Close(name)
				}
				select {
				case <-w.Ready():
				case <-time.After(time.Millisecond):
				}
				events := w.Detach()
				n := 0
				for _, ev := range events {
					if !ev.Ended {
						n++
					}
				}
				mu.Lock()
				taken += n
				mu.Unlock()
				Resolve(events, true)
			}
		}()
	}
	wg.Wait()
	writers.Wait()
	if len(problems) > 0 {
		t.Fatalf("%d problems, the first: %s", len(problems), problems[0])
	}
	if delivered != taken {
		t.Fatalf("writes counted %d deliveries, waiters took %d messages", delivered, taken)
	}
	if taken == 0 {
		t.Fatal("no message reached a waiter: the test proves nothing")
	}
	for i := range 20 {
		if info, err := r.Info(fmt.Sprint("c", i)); err == nil && info.Listeners != 0 {
			t.Fatalf("channel c%d keeps %d listeners", i, info.Listeners)
		}
	}
}

// BenchmarkBroadcast10000 writes one message to 10,000 waiting requests and
// waits until each has taken and resolved it, as their handlers would.
func BenchmarkBroadcast10000(b *testing.B) {
	const n = 10000
	r := newTestHub(engine.Limits{})
	defer r.Stop()
	r.Create("c")
	msg := []byte(`{"price":42}`)
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		waiters := make([]*Waiter, n)
		for i := range waiters {
			waiters[i], _ = r.Subscribe([]string{"c"})
		}
		var wg sync.WaitGroup
		for _, part := range [][]*Waiter{waiters[:n/2], waiters[n/2:]} { // one resolver per core
			wg.Add(1)
			go func() {
				defer wg.Done()
				for _, w := range part {
					<-w.Ready()
					Resolve(w.Detach(), true)
				}
			}()
		}
		b.StartTimer()
		out, err := r.Write(context.Background(), "c", msg)
		if err != nil || out.Delivered != n {
			b.Fatalf("outcome %+v, %v", out, err)
		}
		wg.Wait()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/waiter")
}

// A write waits for its waiters' replies only until its context ends: a
// publisher that hangs up does not hold the write.
func TestWriteStopsWaitingWhenItsContextEnds(t *testing.T) {
	bounded.Test(t, 30*time.Second)
	r := newTestHub(engine.Limits{})
	defer r.Stop()
	r.Create("c")
	w, _ := r.Subscribe([]string{"c"})
	ctx, cancel := context.WithCancel(context.Background())
	type result struct {
		out Outcome
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := r.Write(ctx, "c", []byte("m"))
		done <- result{out, err}
	}()
	bounded.Recv(t, "the message at its waiter", 5*time.Second, w.Ready())
	if !bounded.Quiet(done, 50*time.Millisecond) {
		t.Fatal("the write returned before its waiter resolved")
	}
	cancel()
	res := bounded.Recv(t, "the write to return once its context ended", 5*time.Second, done)
	if !errors.Is(res.err, context.Canceled) || !res.out.NoListener() {
		t.Fatalf("write: %+v, %v; want context.Canceled and nothing resolved yet", res.out, res.err)
	}
	Resolve(w.Detach(), true)
}

// Info counts the requests waiting on a channel now; Subscribe returns the
// unknown ids in the order given.
func TestInfoAndSubscribeOrder(t *testing.T) {
	r := newTestHub(engine.Limits{})
	defer r.Stop()
	r.Create("c")
	var ws []*Waiter
	for i := range 3 {
		w, ended := r.Subscribe([]string{"z", "c", "y", "x"})
		if strings.Join(ended, ",") != "z,y,x" {
			t.Fatalf("ended %q", ended)
		}
		ws = append(ws, w)
		if info, err := r.Info("c"); err != nil || info.ID != "c" || info.Listeners != i+1 {
			t.Fatalf("info %+v, %v", info, err)
		}
	}
	for i, w := range ws {
		w.Detach()
		if info, _ := r.Info("c"); info.Listeners != 2-i {
			t.Fatalf("after %d detached: %d listeners", i+1, info.Listeners)
		}
	}
	if (Outcome{Failed: 1}).NoListener() || (Outcome{Delivered: 1}).NoListener() || !(Outcome{}).NoListener() {
		t.Fatal("NoListener")
	}
}

// events renders a waiter's events as "id:payload@offset" and "id:END".
func render(events []Event) string {
	var out []string
	for _, ev := range events {
		if ev.Ended {
			out = append(out, ev.ID+":END")
		} else {
			out = append(out, fmt.Sprintf("%s:%s@%d", ev.ID, ev.Payload, ev.Pos.Offset))
		}
	}
	return strings.Join(out, " ")
}

// publishing is an engine that publishes one message on the channel whose
// history is read, just before or just after reading it: a write that
// lands while a resuming subscription merges.
type publishing struct {
	engine.Engine
	t     *testing.T
	after bool
	done  chan Outcome
	hub   *Hub
}

func (p *publishing) History(ctx context.Context, id string, since *engine.Position) (engine.History, error) {
	before, err := p.Engine.Info(ctx, id)
	if err != nil {
		return engine.History{}, err
	}
	write := func() {
		go func() { // Write waits for the outcome, which the waiter resolves later
			out, _, err := p.hub.Write(bg, id, []byte("during"))
			if err != nil {
				panic(err)
			}
			p.done <- out
		}()
		bounded.Wait(p.t, "the message in the engine", 5*time.Second, func() bool { // until the engine has it
			info, err := p.Engine.Info(ctx, id)
			return err == nil && info.Position.Offset == before.Position.Offset+1
		})
	}
	if !p.after {
		write()
	}
	h, err := p.Engine.History(ctx, id, since)
	if p.after {
		write()
	}
	return h, err
}

// newPublishing is a hub over eng that publishes while it reads histories.
func newPublishing(t *testing.T, eng engine.Engine) (*publishing, *Hub) {
	p := &publishing{Engine: eng, t: t, done: make(chan Outcome, 1)}
	h := New(p)
	p.hub = h
	return p, h
}

// A message written while a resuming subscription reads the history
// reaches it once, whether the history has it or not; and its write does
// not wait for a reply that will carry it from the history.
func TestResumeMergesLiveAndHistoryOnce(t *testing.T) {
	bounded.Test(t, 30*time.Second)
	for _, after := range []bool{false, true} {
		eng := memory.New(engine.Limits{HistorySize: 10, HistoryTTL: time.Minute})
		p := &publishing{Engine: eng, t: t, after: after, done: make(chan Outcome, 1)}
		h := New(p)
		p.hub = h
		h.Create(bg, "c")
		_, pos1, _ := h.Write(bg, "c", []byte("first"))
		w, ended, err := h.Subscribe(bg, []string{"c"}, &Resume{From: map[string]engine.Position{"c": {Epoch: pos1.Epoch}}})
		if err != nil || len(ended) != 0 {
			t.Fatal(ended, err)
		}
		bounded.Recv(t, "the waiter ready", 5*time.Second, w.Ready())
		events := w.Detach()
		if got := render(events); got != "c:first@1 c:during@2" {
			t.Errorf("after=%v: events %q, want each message once, in order", after, got)
		}
		Resolve(events, true)
		out := bounded.Recv(t, "the write's outcome", 5*time.Second, p.done)
		if after && out != (Outcome{Delivered: 1}) || !after && !out.NoListener() {
			t.Errorf("after=%v: outcome %+v", after, out)
		}
		if pos, gap, ok := w.Cursor("c"); !ok || gap || pos.Offset != 2 {
			t.Errorf("after=%v: cursor %v %v %v, want offset 2, no gap", after, pos, gap, ok)
		}
		eng.Stop()
	}
}

// A resuming subscription's cursors: a channel without a position starts
// at the top; one with a position gets the history after it; a gap is
// kept; a channel not live has none.
func TestResumeCursors(t *testing.T) {
	r := newTestHub(engine.Limits{HistorySize: 2, HistoryTTL: time.Minute})
	defer r.Stop()
	r.Create("a")
	r.Create("b")
	for range 3 {
		r.Write(bg, "a", []byte("m"))
		r.Write(bg, "b", []byte("m"))
	}
	ia, _ := r.Info("a")
	top, _ := engine.ParsePosition(ia.Position)
	w, ended, err := r.Hub.Subscribe(bg, []string{"a", "b", "x"}, &Resume{From: map[string]engine.Position{"b": {Offset: 0, Epoch: top.Epoch}}})
	if err != nil || strings.Join(ended, ",") != "x" {
		t.Fatal(ended, err)
	}
	events := w.Detach()
	if got := render(events); got != "b:m@2 b:m@3" {
		t.Fatalf("events %q", got)
	}
	if pos, gap, ok := w.Cursor("a"); !ok || gap || pos != top {
		t.Fatalf("a: %v %v %v, want the top %v", pos, gap, ok, top)
	}
	if pos, gap, ok := w.Cursor("b"); !ok || !gap || pos.Offset != 3 {
		t.Fatalf("b: %v %v %v, want offset 3 and a gap (b's epoch differs from a's, and 1 is trimmed)", pos, gap, ok)
	}
	if _, _, ok := w.Cursor("x"); ok {
		t.Fatal("an ended channel has a cursor")
	}
	// A waiter that does not resume has no cursor.
	w2, _ := r.Subscribe([]string{"a"})
	w2.Detach()
	if _, _, ok := w2.Cursor("a"); ok {
		t.Fatal("a waiter that does not resume has a cursor")
	}
}

// A channel without a position starts where the waiter joined it: what
// is written after comes, what was before does not, and the cursor is the
// join position until then.
func TestResumeWithoutPositionStartsAtTheJoin(t *testing.T) {
	r := newTestHub(engine.Limits{HistorySize: 10, HistoryTTL: time.Minute})
	defer r.Stop()
	r.Create("c")
	r.Write(bg, "c", []byte("before"))
	w, _, err := r.Hub.Subscribe(bg, []string{"c"}, &Resume{})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.Ready():
		t.Fatal("ready with nothing written since the join")
	default:
	}
	writeNow(t, r, "c", "after")
	events := w.Detach()
	if got := render(events); got != "c:after@2" {
		t.Fatalf("events %q", got)
	}
	if pos, gap, ok := w.Cursor("c"); !ok || gap || pos.Offset != 2 {
		t.Fatalf("cursor %v %v %v", pos, gap, ok)
	}
	Resolve(events, true)
}

// The end of an earlier channel of the same name does not end the new
// one's waiters; the new one's does.
func TestEndOfAnEarlierChannelIsIgnored(t *testing.T) {
	r := newTestHub(engine.Limits{})
	defer r.Stop()
	r.Create("c")
	old, _ := r.Info("c")
	r.Close("c")
	r.Create("c")
	w, _ := r.Subscribe([]string{"c"})
	oldEpoch := strings.SplitN(old.Position, ".", 2)[1]
	r.Hub.HandleEnd("c", oldEpoch)
	select {
	case <-w.Ready():
		t.Fatal("the end of the earlier channel reached the new one's waiter")
	default:
	}
	writeNow(t, r, "c", "m")
	r.Close("c")
	if got := render(w.Detach()); got != "c:m@1 c:END" {
		t.Fatalf("events %q", got)
	}
}

// failingHistory fails the history read of the channel "bad", after a
// write to "good" has reached its waiters.
type failingHistory struct {
	engine.Engine
	t    *testing.T
	hub  *Hub
	done chan Outcome
}

func (f *failingHistory) History(ctx context.Context, id string, since *engine.Position) (engine.History, error) {
	if id != "bad" {
		return f.Engine.History(ctx, id, since)
	}
	go func() {
		out, _, _ := f.hub.Write(bg, "good", []byte("m"))
		f.done <- out
	}()
	bounded.Wait(f.t, "the write to good", 5*time.Second, func() bool {
		info, err := f.Engine.Info(ctx, "good")
		return err == nil && info.Position.Offset == 1
	})
	return engine.History{}, errors.New("engine down")
}

// A subscription that fails leaves nothing subscribed, and resolves what
// it had gathered: a write to it does not wait for a reply that will
// never come.
func TestFailedSubscribeResolvesWhatItGathered(t *testing.T) {
	bounded.Test(t, 30*time.Second)
	eng := memory.New(engine.Limits{HistorySize: 10, HistoryTTL: time.Minute})
	defer eng.Stop()
	f := &failingHistory{Engine: eng, t: t, done: make(chan Outcome, 1)}
	h := New(f)
	f.hub = h
	h.Create(bg, "good")
	h.Create(bg, "bad")
	bad, _ := h.Info(bg, "bad")
	since, _ := engine.ParsePosition(bad.Position)
	h.Write(bg, "bad", []byte("missed")) // so that the history must be read
	_, _, err := h.Subscribe(bg, []string{"good", "bad"}, &Resume{From: map[string]engine.Position{"bad": since}})
	if err == nil || !strings.Contains(err.Error(), "engine down") {
		t.Fatalf("subscribe: %v", err)
	}
	if out := bounded.Recv(t, "the write's outcome", 5*time.Second, f.done); out != (Outcome{Failed: 1}) {
		t.Fatalf("outcome %+v, want the gathered message failed", out)
	}
	if info, _ := h.Info(bg, "good"); info.Listeners != 0 {
		t.Fatalf("%d listeners left", info.Listeners)
	}
}

// A reply replays at most MaxReplayBytes of history (and at least one
// message); the next poll, from the cursors, gets the rest: every message
// once, no gap.
func TestReplayBudget(t *testing.T) {
	bounded.Test(t, 30*time.Second)
	r := newTestHub(engine.Limits{HistorySize: 100, HistoryTTL: time.Minute})
	defer r.Stop()
	ids := []string{"a", "b", "c"}
	from := map[string]engine.Position{}
	msg := strings.Repeat("x", 8<<10)
	for _, id := range ids {
		r.Create(id)
		i, _ := r.Info(id)
		p, _ := engine.ParsePosition(i.Position)
		from[id] = p
		for n := range 100 {
			r.Write(bg, id, []byte(fmt.Sprintf("%s%03d%s", id, n, msg)))
		}
	}
	got := map[string]int{}
	for poll := 0; poll < 10 && len(got) < 3 || got["a"]+got["b"]+got["c"] < 300; poll++ {
		w, _, err := r.Hub.Subscribe(bg, ids, &Resume{From: from})
		if err != nil {
			t.Fatal(err)
		}
		events := w.Detach()
		size := 0
		for _, ev := range events {
			size += len(ev.Payload)
			if want := fmt.Sprintf("%s%03d", ev.ID, got[ev.ID]); string(ev.Payload[:4]) != want {
				t.Fatalf("poll %d: %q, want %q next", poll, ev.Payload[:4], want)
			}
			got[ev.ID]++
		}
		if size > MaxReplayBytes+len(msg)+4 {
			t.Fatalf("poll %d replayed %d bytes", poll, size)
		}
		for _, id := range ids {
			pos, gap, ok := w.Cursor(id)
			if !ok || gap {
				t.Fatalf("poll %d: cursor of %s %v %v %v", poll, id, pos, gap, ok)
			}
			from[id] = pos
		}
		if poll > 5 {
			t.Fatalf("%d polls and still %v", poll, got)
		}
	}
	if got["a"] != 100 || got["b"] != 100 || got["c"] != 100 {
		t.Fatalf("got %v, want 100 each", got)
	}
}

// A resuming waiter with nothing to get waits: resumed from the top, or
// without a position on a channel with or without messages. Its cursor is
// the channel's position, offset 0 included.
func TestResumeAtTheTopWaits(t *testing.T) {
	r := newTestHub(engine.Limits{HistorySize: 10, HistoryTTL: time.Minute})
	defer r.Stop()
	r.Create("fresh")
	r.Create("used")
	_, top, _ := r.Hub.Write(bg, "used", []byte("m"))
	fresh, _ := r.Info("fresh")
	for _, from := range []map[string]engine.Position{nil, {"used": top}} {
		w, _, err := r.Hub.Subscribe(bg, []string{"fresh", "used"}, &Resume{From: from})
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-w.Ready():
			t.Fatalf("from %v: ready with nothing to say", from)
		default:
		}
		w.Detach()
		if pos, gap, ok := w.Cursor("fresh"); !ok || gap || pos.String() != fresh.Position {
			t.Fatalf("from %v: fresh at %v %v %v, want %s", from, pos, gap, ok, fresh.Position)
		}
		if pos, gap, ok := w.Cursor("used"); !ok || gap || pos != top {
			t.Fatalf("from %v: used at %v %v %v, want %v", from, pos, gap, ok, top)
		}
	}
}

// The last listener leaving unsubscribes this process, so that the
// engine's idle expiry can close the channel; one still listening keeps
// it subscribed.
func TestLastListenerLeavingUnsubscribes(t *testing.T) {
	bounded.Test(t, 30*time.Second)
	r := newTestHub(engine.Limits{IdleExpiry: 100 * time.Millisecond})
	defer r.Stop()
	r.Create("c")
	w1, _ := r.Subscribe([]string{"c"})
	w2, _ := r.Subscribe([]string{"c"})
	w1.Detach()
	if bounded.Until(500*time.Millisecond, func() bool { _, err := r.Info("c"); return err != nil }) {
		t.Fatal("the channel expired while a listener was still there")
	}
	w2.Detach()
	bounded.Wait(t, "the idle channel to expire once nobody listens", 5*time.Second, func() bool {
		_, err := r.Info("c")
		return err != nil
	})
}

// staleHistory answers every history read as it stood after the first
// message: a read that lags behind the channel.
type staleHistory struct{ engine.Engine }

func (s staleHistory) History(ctx context.Context, id string, since *engine.Position) (engine.History, error) {
	h, err := s.Engine.History(ctx, id, since)
	if err != nil || len(h.Publications) == 0 {
		return h, err
	}
	h.Publications = h.Publications[:1]
	h.Top = h.Publications[0].Position
	return h, nil
}

// A history read older than the waiter's join stops the reply at the
// history: what it lacks comes with the next poll, nothing is skipped.
func TestResumeFromAStaleHistoryStopsThere(t *testing.T) {
	eng := memory.New(engine.Limits{HistorySize: 10, HistoryTTL: time.Minute})
	defer eng.Stop()
	h := New(staleHistory{eng})
	h.Create(bg, "c")
	var first engine.Position
	for i := range 3 {
		_, p, _ := h.Write(bg, "c", []byte(fmt.Sprint("m", i+1)))
		if i == 0 {
			first = p
		}
	}
	w, _, err := h.Subscribe(bg, []string{"c"}, &Resume{From: map[string]engine.Position{"c": {Epoch: first.Epoch}}})
	if err != nil {
		t.Fatal(err)
	}
	writeNow(t, testHub{Hub: h}, "c", "m4") // live, after a hole the stale read left
	events := w.Detach()
	if got := render(events); got != "c:m1@1" {
		t.Fatalf("events %q, want the history's message only", got)
	}
	Resolve(events, true)
	if pos, gap, ok := w.Cursor("c"); !ok || gap || pos != first {
		t.Fatalf("cursor %v %v %v, want %v", pos, gap, ok, first)
	}
}

// A message that lands while a resuming subscription (one message behind,
// at position 1) reads the history is delivered once: from the history
// when it holds it (the history's last message; the live copy is dropped
// and its write does not count this reply), live when the history is off
// (with a gap: the message before it is lost).
func TestResumeMergeAtTheHistoryEdge(t *testing.T) {
	bounded.Test(t, 30*time.Second)
	for _, tt := range []struct {
		name   string
		limits engine.Limits
		events string
		gap    bool
		want   Outcome
	}{
		{"history on", engine.Limits{HistorySize: 10, HistoryTTL: time.Minute}, "c:second@2 c:during@3", false, Outcome{}},
		{"history off", engine.Limits{}, "c:during@3", true, Outcome{Delivered: 1}},
	} {
		eng := memory.New(tt.limits)
		p, h := newPublishing(t, eng)
		h.Create(bg, "c")
		_, pos1, _ := h.Write(bg, "c", []byte("first"))
		h.Write(bg, "c", []byte("second"))
		w, _, err := h.Subscribe(bg, []string{"c"}, &Resume{From: map[string]engine.Position{"c": pos1}})
		if err != nil {
			t.Fatal(err)
		}
		bounded.Recv(t, "the waiter ready", 5*time.Second, w.Ready())
		events := w.Detach()
		if got := render(events); got != tt.events {
			t.Errorf("%s: events %q, want %q", tt.name, got, tt.events)
		}
		Resolve(events, true)
		if out := bounded.Recv(t, "the outcome", 5*time.Second, p.done); out != tt.want {
			t.Errorf("%s: outcome %+v, want %+v", tt.name, out, tt.want)
		}
		if pos, gap, ok := w.Cursor("c"); !ok || gap != tt.gap || pos.Offset != 3 {
			t.Errorf("%s: cursor %v %v %v, want 3, gap %v", tt.name, pos, gap, ok, tt.gap)
		}
		eng.Stop()
	}
}

// countingHistory counts the history reads of an engine.
type countingHistory struct {
	engine.Engine
	reads atomic.Int64
}

func (c *countingHistory) History(ctx context.Context, id string, since *engine.Position) (engine.History, error) {
	c.reads.Add(1)
	return c.Engine.History(ctx, id, since)
}

// A client that resumes from the last publication this process was handed
// (one that keeps up) needs no history read, a round trip on a shared
// engine: what comes next reaches it live. One behind reads the history.
func TestResumeAtTheTopReadsNoHistory(t *testing.T) {
	bounded.Test(t, 30*time.Second)
	eng := &countingHistory{Engine: memory.New(engine.Limits{HistorySize: 10, HistoryTTL: time.Minute})}
	defer eng.Stop()
	h := New(eng)
	h.Create(bg, "c")
	_, pos1, _ := h.Write(bg, "c", []byte("first"))
	// Subscribed here (the first waiter subscribes this process), at the top.
	keep, _, _ := h.Subscribe(bg, []string{"c"}, nil)
	defer func() { Resolve(keep.Detach(), false) }()
	w, _, err := h.Subscribe(bg, []string{"c"}, &Resume{From: map[string]engine.Position{"c": pos1}})
	if err != nil {
		t.Fatal(err)
	}
	if n := eng.reads.Load(); n != 0 {
		t.Fatalf("%d history reads for a client at the top, want none", n)
	}
	written := make(chan struct{})
	go func() { h.Write(bg, "c", []byte("next")); close(written) }()
	bounded.Recv(t, "the waiter ready", 5*time.Second, w.Ready())
	events := w.Detach()
	if got := render(events); got != "c:next@2" {
		t.Fatalf("events %q, want the next message", got)
	}
	Resolve(events, true)
	if pos, gap, ok := w.Cursor("c"); !ok || gap || pos.Offset != 2 {
		t.Fatalf("cursor %v %v %v, want 2 without a gap", pos, gap, ok)
	}
	Resolve(keep.Detach(), true) // it had "next" too
	keep, _, _ = h.Subscribe(bg, []string{"c"}, nil)
	bounded.Recv(t, "the write's end", 5*time.Second, written)

	w, _, err = h.Subscribe(bg, []string{"c"}, &Resume{From: map[string]engine.Position{"c": pos1}})
	if err != nil {
		t.Fatal(err)
	}
	defer Resolve(w.Detach(), false)
	if n := eng.reads.Load(); n != 1 {
		t.Fatalf("%d history reads for a client one behind, want 1", n)
	}
	bounded.Recv(t, "the waiter ready", 5*time.Second, w.Ready())
}

// create makes channels and returns their positions: before their first
// message.
func create(r testHub, ids ...string) map[string]engine.Position {
	from := map[string]engine.Position{}
	for _, id := range ids {
		r.Create(id)
		i, _ := r.Info(id)
		from[id], _ = engine.ParsePosition(i.Position)
	}
	return from
}

// One reply replays at most one message past the budget.
func TestReplayBudgetIsExceededByOneMessageAtMost(t *testing.T) {
	r := newTestHub(engine.Limits{HistorySize: 10, HistoryTTL: time.Minute})
	defer r.Stop()
	from := create(r, "a", "b")
	r.Write(bg, "a", make([]byte, 600<<10))
	for range 3 {
		r.Write(bg, "b", make([]byte, 500<<10))
	}
	w, _, err := r.Hub.Subscribe(bg, []string{"a", "b"}, &Resume{From: from})
	if err != nil {
		t.Fatal(err)
	}
	if got := render(w.Detach()); strings.Count(got, "a:") != 1 || strings.Count(got, "b:") != 1 {
		t.Fatalf("%d events: want a's message and one of b's (the one that crosses the budget)", strings.Count(got, " ")+1)
	}
	if pos, _, _ := w.Cursor("b"); pos.Offset != 1 {
		t.Fatalf("b's cursor %v, want after its first message", pos)
	}
}

// A budget used up exactly stops the reply there.
func TestReplayBudgetUsedUpExactly(t *testing.T) {
	r := newTestHub(engine.Limits{HistorySize: 10, HistoryTTL: time.Minute})
	defer r.Stop()
	from := create(r, "a", "b")
	r.Write(bg, "a", make([]byte, MaxReplayBytes))
	r.Write(bg, "b", []byte("next time"))
	w, _, err := r.Hub.Subscribe(bg, []string{"a", "b"}, &Resume{From: from})
	if err != nil {
		t.Fatal(err)
	}
	events := w.Detach()
	if len(events) != 1 || events[0].ID != "a" {
		t.Fatalf("%d events, want a's only", len(events))
	}
	if pos, gap, ok := w.Cursor("b"); !ok || gap || pos != from["b"] {
		t.Fatalf("b's cursor %v %v %v, want where it was", pos, gap, ok)
	}
}

// A live message in another epoch than the cursor's (a shared engine's
// backend came back without the channel's history) comes with a gap.
func TestEpochChangeLiveIsAGap(t *testing.T) {
	r := newTestHub(engine.Limits{HistorySize: 10, HistoryTTL: time.Minute})
	defer r.Stop()
	r.Create("c")
	w, _, err := r.Hub.Subscribe(bg, []string{"c"}, &Resume{})
	if err != nil {
		t.Fatal(err)
	}
	writeNow(t, r, "c", "old")
	if _, gap, _ := w.Cursor("c"); gap {
		t.Fatal("a gap in the same epoch")
	}
	r.Hub.HandlePublication("c", engine.Publication{Position: engine.Position{Offset: 1, Epoch: "remade"}, Payload: []byte("new")})
	events := w.Detach()
	if got := render(events); got != "c:old@1 c:new@1" {
		t.Fatalf("events %q", got)
	}
	if pos, gap, ok := w.Cursor("c"); !ok || !gap || pos.Epoch != "remade" {
		t.Fatalf("cursor %v gap %v %v; want the new epoch, with a gap", pos, gap, ok)
	}
	Resolve(events, true)
}

// A write wakes the waiters it reached on its own goroutine once the
// engine's and the channel's locks are let go (lockFree), so that a wake
// may answer its request there; an end, under the locks, does not say so.
// Here each wake reads the channel back through the hub, which under the
// locks would never return.
func TestWakesRunOnTheWriterWithoutLocks(t *testing.T) {
	bounded.Test(t, 10*time.Second)
	r := newTestHub(engine.Limits{HistorySize: 10, HistoryTTL: time.Minute})
	defer r.Stop()
	r.Create("a")
	const n = 3
	wakes := make(chan bool, n) // each wake's lockFree
	for range n {
		w, _ := r.Subscribe([]string{"a"})
		w.OnReady(func(lockFree bool) {
			if lockFree {
				r.Info("a") // takes the engine's and the channel's locks
			}
			wakes <- lockFree
			Resolve(w.Detach(), true)
		})
	}
	out, err := r.Write(bg, "a", []byte("m"))
	if err != nil || out.Delivered != n {
		t.Fatalf("outcome %+v, %v; want %d delivered", out, err, n)
	}
	for range n {
		if !bounded.Recv(t, "a wake", 5*time.Second, wakes) {
			t.Fatal("a write's wake ran as if under a lock")
		}
	}

	w, _ := r.Subscribe([]string{"a"})
	w.OnReady(func(lockFree bool) { wakes <- lockFree })
	r.Close("a")
	if bounded.Recv(t, "the end's wake", 5*time.Second, wakes) {
		t.Fatal("an end's wake, under the channel's lock, said it held none")
	}
}

// Another process's publication comes on the engine's goroutine, under the
// engine's lock: the waiters it reached are woken on a goroutine of their
// own, with no lock held, rather than there.
func TestOtherProcessesPublicationsWakeWithoutLocks(t *testing.T) {
	bounded.Test(t, 10*time.Second)
	r := newTestHub(engine.Limits{})
	defer r.Stop()
	r.Create("a")
	var engineLock sync.Mutex // stands for the engine's
	wakes := make(chan bool, 1)
	w, _ := r.Subscribe([]string{"a"})
	w.OnReady(func(lockFree bool) {
		engineLock.Lock() // never returns if called under it
		engineLock.Unlock()
		wakes <- lockFree
	})
	info, _ := r.Info("a")
	pos, _ := engine.ParsePosition(info.Position)
	pos.Offset++
	engineLock.Lock()
	r.HandlePublication("a", engine.Publication{Position: pos, Payload: []byte("m")}) // no tracker: not this process's
	engineLock.Unlock()
	if !bounded.Recv(t, "the wake", 5*time.Second, wakes) {
		t.Fatal("the wake said it ran under a lock")
	}
	if ev := w.Detach(); len(ev) != 1 || string(ev[0].Payload) != "m" {
		t.Fatalf("events %+v", ev)
	}
}

// The engine moved the channel's top with no publication handed here
// (HandleTop: a Redis catch-up found the history lost, a new epoch): a
// client resuming from the old top is not taken as up to date, and reads
// the history, which says the gap.
func TestResumeFromBeforeAMovedTopSaysTheGap(t *testing.T) {
	bounded.Test(t, 30*time.Second)
	eng := memory.New(engine.Limits{HistorySize: 10, HistoryTTL: time.Minute})
	defer eng.Stop()
	h := New(eng)
	pos1 := subscribedAfterOne(t, h)
	// The channel is made again behind this process's back, as Redis
	// coming back without it does, and the engine says where it is now.
	eng.Unsubscribe(bg, "c", pos1.Epoch)
	eng.Close(bg, "c")
	eng.Create(bg, "c")
	info, _ := eng.Info(bg, "c")
	h.HandleTop("c", info.Position)

	w, _, err := h.Subscribe(bg, []string{"c"}, &Resume{From: map[string]engine.Position{"c": pos1}})
	if err != nil {
		t.Fatal(err)
	}
	bounded.Recv(t, "the gap", 5*time.Second, w.Ready())
	Resolve(w.Detach(), true)
	if pos, gap, ok := w.Cursor("c"); !ok || !gap || pos != info.Position {
		t.Fatalf("cursor %v, gap %v, %v; want %v with a gap", pos, gap, ok, info.Position)
	}
}

// Messages lost to this process between two it was handed (its
// subscription was down, and the history trimmed meanwhile) are a gap for
// a resuming waiter, said when the next one comes.
func TestHoleInLiveMessagesIsAGap(t *testing.T) {
	bounded.Test(t, 30*time.Second)
	eng := memory.New(engine.Limits{HistorySize: 1, HistoryTTL: time.Minute})
	defer eng.Stop()
	h := New(eng)
	pos1 := subscribedAfterOne(t, h)
	// Publications this process is not handed (its PUB/SUB is down).
	eng.Unsubscribe(bg, "c", pos1.Epoch)
	var pos4 engine.Position
	for _, m := range []string{"m2", "m3", "m4"} {
		pos4, _ = eng.Publish(bg, "c", []byte(m), nil)
	}
	w, _, err := h.Subscribe(bg, []string{"c"}, &Resume{From: map[string]engine.Position{"c": pos1}})
	if err != nil {
		t.Fatal(err)
	}
	// The catch-up hands what the history still holds.
	h.HandlePublication("c", engine.Publication{Position: pos4, Payload: []byte("m4")})
	bounded.Recv(t, "the waiter ready", 5*time.Second, w.Ready())
	events := w.Detach()
	Resolve(events, true)
	if pos, gap, ok := w.Cursor("c"); render(events) != "c:m4@4" || !ok || !gap || pos != pos4 {
		t.Fatalf("events %q, cursor %v gap %v %v; want m4 with a gap", render(events), pos, gap, ok)
	}
}

// failingPublish publishes, then fails (on Redis: the script ran and
// PUB/SUB handed the message back, then the reply was lost).
type failingPublish struct{ engine.Engine }

func (f failingPublish) Publish(ctx context.Context, id string, p []byte, tr any) (engine.Position, error) {
	f.Engine.Publish(ctx, id, p, tr)
	return engine.Position{}, errors.New("reply lost")
}

// A write that fails after its message reached waiters still wakes them.
func TestFailedPublishStillWakes(t *testing.T) {
	bounded.Test(t, 30*time.Second)
	eng := memory.New(engine.Limits{})
	defer eng.Stop()
	h := New(failingPublish{eng})
	h.Create(bg, "c")
	w, _, _ := h.Subscribe(bg, []string{"c"}, nil)
	woken := make(chan bool, 1)
	w.OnReady(func(lockFree bool) { woken <- lockFree })
	if _, _, err := h.Write(bg, "c", []byte("m")); err == nil {
		t.Fatal("the write did not fail")
	}
	bounded.Recv(t, "the wake", time.Second, woken)
	Resolve(w.Detach(), true)
}

// A broadcast to more waiters than one goroutine wakes in turn spreads
// over goroutines: here the wakes wait for each other, which waking them
// one after the other never lets happen.
func TestBroadcastWakesOnSeveralGoroutines(t *testing.T) {
	bounded.Test(t, 10*time.Second)
	r := newTestHub(engine.Limits{})
	defer r.Stop()
	r.Create("a")
	var running atomic.Int64
	together := make(chan struct{})
	var once sync.Once
	for range 2 * wakeChunk {
		w, _ := r.Subscribe([]string{"a"})
		w.OnReady(func(bool) {
			if running.Add(1) >= 2 {
				once.Do(func() { close(together) })
			}
			<-together
			Resolve(w.Detach(), true)
		})
	}
	out, err := r.Write(bg, "a", []byte("m"))
	if err != nil || out.Delivered != 2*wakeChunk {
		t.Fatalf("outcome %+v, %v", out, err)
	}
}

// subscribedAfterOne makes channel "c" on h with one message, m1, and
// keeps this process subscribed to it (one listener, until the test ends);
// it returns m1's position.
func subscribedAfterOne(t *testing.T, h *Hub) engine.Position {
	t.Helper()
	h.Create(bg, "c")
	keep, _, _ := h.Subscribe(bg, []string{"c"}, nil)
	ctx, cancel := context.WithTimeout(bg, 50*time.Millisecond)
	defer cancel()
	_, pos1, _ := h.Write(ctx, "c", []byte("m1"))
	Resolve(keep.Detach(), true)
	keep, _, _ = h.Subscribe(bg, []string{"c"}, nil)
	t.Cleanup(func() { Resolve(keep.Detach(), false) })
	return pos1
}

// countingSubscriptions counts an engine's subscribes and unsubscribes.
type countingSubscriptions struct {
	engine.Engine
	subs, unsubs atomic.Int64
}

func (c *countingSubscriptions) Subscribe(ctx context.Context, id string) (engine.Position, error) {
	c.subs.Add(1)
	return c.Engine.Subscribe(ctx, id)
}

func (c *countingSubscriptions) Unsubscribe(ctx context.Context, id, epoch string) error {
	c.unsubs.Add(1)
	return c.Engine.Unsubscribe(ctx, id, epoch)
}

// A channel stays subscribed for the linger after its last waiter left, so
// that a client's next poll costs the engine nothing; what is published
// meanwhile still reaches that poll (from the history), and once the
// linger has passed with nobody back, the process unsubscribes. The linger
// runs from the last waiter leaving: not from the first (a timer set then
// fires between two polls), and not from before a poll that outlasted it.
func TestLingerKeepsAChannelSubscribedBetweenPolls(t *testing.T) {
	bounded.Test(t, 30*time.Second)
	const linger, away = time.Second, 300 * time.Millisecond
	eng := &countingSubscriptions{Engine: memory.New(engine.Limits{HistorySize: 10, HistoryTTL: time.Minute})}
	defer eng.Stop()
	h := New(eng, Linger(linger))
	h.Create(bg, "c")
	_, pos1, _ := h.Write(bg, "c", []byte("first"))
	from := &Resume{From: map[string]engine.Position{"c": pos1}}
	var left time.Time
	leave := func(w *Waiter) []Event {
		left = time.Now()
		evs := w.Detach()
		Resolve(evs, false)
		return evs
	}

	for i := range 3 { // polls that come back every away
		w, _, err := h.Subscribe(bg, []string{"c"}, from)
		if err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			// Published while nobody waits (the reply went, the next poll
			// is not there yet): the next poll gets it.
			leave(w)
			_, pos2, _ := h.Write(bg, "c", []byte("meanwhile"))
			w, _, _ = h.Subscribe(bg, []string{"c"}, from)
			if evs := leave(w); len(evs) != 1 || string(evs[0].Payload) != "meanwhile" {
				t.Fatalf("the poll after a publication with nobody waiting got %v, want the publication", evs)
			}
			from = &Resume{From: map[string]engine.Position{"c": pos2}}
		} else {
			leave(w)
		}
		if i < 2 {
			time.Sleep(away)
		}
	}
	if s, u := eng.subs.Load(), eng.unsubs.Load(); s != 1 || u != 0 {
		t.Fatalf("polls that came back within the linger: %d subscribes and %d unsubscribes, want 1 and 0", s, u)
	}
	bounded.Wait(t, "the unsubscribe once the linger passed", 5*time.Second, func() bool { return eng.unsubs.Load() == 1 })
	if waited := time.Since(left); waited < linger {
		t.Fatalf("unsubscribed %v after the last waiter left, before the linger of %v", waited, linger)
	}

	// Subscribed again; a poll that outlasts the linger set by the one
	// before it keeps the channel, and the linger starts over when it
	// leaves.
	w, _, err := h.Subscribe(bg, []string{"c"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s := eng.subs.Load(); s != 2 {
		t.Fatalf("%d subscribes, want a second one after the unsubscribe", s)
	}
	leave(w)
	w, _, _ = h.Subscribe(bg, []string{"c"}, nil)
	time.Sleep(linger + away)
	if u := eng.unsubs.Load(); u != 1 {
		t.Fatalf("%d unsubscribes with a poll waiting, want still 1", u)
	}
	leave(w)
	bounded.Wait(t, "the unsubscribe a linger after the long poll left", 5*time.Second, func() bool { return eng.unsubs.Load() == 2 })
	if waited := time.Since(left); waited < linger {
		t.Fatalf("unsubscribed %v after the long poll left, before the linger of %v", waited, linger)
	}
}

// With a linger of 0 the last waiter leaving unsubscribes at once.
func TestNoLingerUnsubscribesAtOnce(t *testing.T) {
	bounded.Test(t, 30*time.Second)
	eng := &countingSubscriptions{Engine: memory.New(engine.Limits{})}
	defer eng.Stop()
	h := New(eng, Linger(0))
	h.Create(bg, "c")
	w, _, _ := h.Subscribe(bg, []string{"c"}, nil)
	Resolve(w.Detach(), false)
	if u := eng.unsubs.Load(); u != 1 {
		t.Fatalf("%d unsubscribes right after the last waiter left, want 1", u)
	}
}

// A waiting poll pays for its Waiter's size class (the memory per waiting
// request), and a poll on a channel this process already listens on
// allocates only its waiter and the waiter's ready channel, plus a
// resuming poll's cursors: no position, no channel list, no history read.
func TestAPollOnASubscribedChannelAllocatesItsWaiterOnly(t *testing.T) {
	if size := unsafe.Sizeof(Waiter{}); size > 192 {
		t.Errorf("a Waiter takes %d bytes, over the 192-byte size class", size)
	}
	eng := memory.New(engine.Limits{HistorySize: 10, HistoryTTL: time.Minute})
	defer eng.Stop()
	h := New(eng)
	if _, err := h.Create(bg, "c"); err != nil {
		t.Fatal(err)
	}
	_, top, err := h.Write(bg, "c", []byte("first"))
	if err != nil {
		t.Fatal(err)
	}
	keep, _, err := h.Subscribe(bg, []string{"c"}, nil) // this process listens on c from here
	if err != nil {
		t.Fatal(err)
	}
	defer func() { Resolve(keep.Detach(), false) }()
	for _, tc := range []struct {
		name   string
		resume *Resume
		max    float64
	}{
		{"plain", nil, 2},
		{"resuming at the top", &Resume{From: map[string]engine.Position{"c": top}}, 5}, // and its cursors: a map (two objects), a cursor
	} {
		allocs := testing.AllocsPerRun(100, func() {
			w, _, err := h.Subscribe(bg, []string{"c"}, tc.resume)
			if err != nil {
				t.Fatal(err)
			}
			Resolve(w.Detach(), false)
		})
		if allocs > tc.max {
			t.Errorf("%s: %.1f allocations per poll, want at most %.0f", tc.name, allocs, tc.max)
		}
	}
}
