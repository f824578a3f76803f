package memory

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cometop/comet-operator/cometserver/engine"
	"github.com/cometop/comet-operator/test/bounded"
)

func ptr(n int) *int { return &n }

var bg = context.Background()

// recorder is a Handler that keeps what it is handed.
type recorder struct {
	mu    sync.Mutex
	got   []string // "id:payload@offset" and "id:END"
	track []any
}

func (r *recorder) HandlePublication(id string, p engine.Publication) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, fmt.Sprintf("%s:%s@%d", id, p.Payload, p.Position.Offset))
	r.track = append(r.track, p.Tracker)
}

func (r *recorder) HandleTop(string, engine.Position) {}

func (r *recorder) HandleEnd(id, _ string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, id+":END")
}

func (r *recorder) all() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.got, " ")
}

func (r *recorder) ends() string {
	var ends []string
	for _, g := range strings.Fields(r.all()) {
		if strings.HasSuffix(g, ":END") {
			ends = append(ends, g)
		}
	}
	return strings.Join(ends, " ")
}

// testEngine is an Engine with a recorder, and the calls of one test.
type testEngine struct {
	*Engine
	h *recorder
}

func newTestEngine(l engine.Limits) testEngine {
	e := New(l)
	h := &recorder{}
	e.Register(h)
	return testEngine{e, h}
}

func (r testEngine) Create(name string) (string, error) { return r.Engine.Create(bg, name) }
func (r testEngine) Close(id string) error              { return r.Engine.Close(bg, id) }
func (r testEngine) Info(id string) (engine.ChannelInfo, error) {
	return r.Engine.Info(bg, id)
}
func (r testEngine) Len() int { n, _ := r.Engine.Len(bg); return n }

func (r testEngine) subscribe(t *testing.T, id string) {
	t.Helper()
	if _, err := r.Subscribe(bg, id); err != nil {
		t.Fatalf("subscribe %s: %v", id, err)
	}
}

func (r testEngine) publish(t *testing.T, id, msg string) engine.Position {
	t.Helper()
	pos, err := r.Publish(bg, id, slices.Clip([]byte(msg)), nil) // its capacity is its length: the stats count capacity
	if err != nil {
		t.Fatalf("publish %q to %s: %v", msg, id, err)
	}
	return pos
}

func TestCreate(t *testing.T) {
	r := newTestEngine(engine.Limits{})
	defer r.Stop()

	id1, err := r.Create("")
	if err != nil {
		t.Fatal(err)
	}
	id2, _ := r.Create("")
	generated := regexp.MustCompile(`^[A-Za-z0-9_-]{22,}$`) // 22 base64 characters hold 128 bits
	if !generated.MatchString(id1) || id1 == id2 {
		t.Fatalf("generated ids %q, %q: want distinct, 128 random bits in A-Z a-z 0-9 - _", id1, id2)
	}
	if id, err := r.Create("news/sport é"); err != nil || id != "news/sport é" {
		t.Fatalf("named create = %q, %v", id, err)
	}
	if _, err := r.Create("news/sport é"); !errors.Is(err, engine.ErrNameTaken) {
		t.Fatalf("second create of a live name: %v, want engine.ErrNameTaken", err)
	}
	for _, bad := range []string{"a:b", "a\nb", "a\rb", strings.Repeat("x", 257), "\xff"} {
		if _, err := r.Create(bad); !errors.Is(err, engine.ErrInvalidName) {
			t.Errorf("Create(%q) = %v, want engine.ErrInvalidName", bad, err)
		}
	}
	if _, err := r.Create(strings.Repeat("x", 256)); err != nil {
		t.Errorf("a 256-byte name: %v", err)
	}
	if err := r.Close("news/sport é"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Create("news/sport é"); err != nil {
		t.Fatalf("a closed channel's name is free again: %v", err)
	}
}

func TestMaxVirtualChannels(t *testing.T) {
	zero := newTestEngine(engine.Limits{MaxVirtualChannels: ptr(0)})
	defer zero.Stop()
	if _, err := zero.Create(""); !errors.Is(err, engine.ErrTooManyVirtualChannels) {
		t.Fatalf("max 0: %v, want engine.ErrTooManyVirtualChannels", err)
	}

	r := newTestEngine(engine.Limits{MaxVirtualChannels: ptr(2)})
	defer r.Stop()
	a, _ := r.Create("")
	if _, err := r.Create("b"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Create("c"); !errors.Is(err, engine.ErrTooManyVirtualChannels) {
		t.Fatalf("third channel: %v, want engine.ErrTooManyVirtualChannels", err)
	}
	if _, err := r.Create("b"); !errors.Is(err, engine.ErrTooManyVirtualChannels) {
		t.Fatalf("the limit is checked first: %v", err)
	}
	r.Close(a)
	if _, err := r.Create("c"); err != nil {
		t.Fatalf("a closed channel frees its slot: %v", err)
	}
	if got := *r.Limits().MaxVirtualChannels; got != 2 || r.Len() != 2 {
		t.Fatalf("max %d, len %d", got, r.Len())
	}
	if newTestEngine(engine.Limits{}).Limits().MaxVirtualChannels != nil {
		t.Fatal("no limit by default")
	}
	if m := zero.Limits().MaxVirtualChannels; m == nil || *m != 0 {
		t.Fatalf("a limit of 0 reads back as %v", m)
	}
}

// A limit changed live: lowered below the live channels it ends none and
// refuses new ones until enough end; raised or removed, it admits again.
func TestMaxVirtualChannelsLive(t *testing.T) {
	r := newTestEngine(engine.Limits{})
	defer r.Stop()
	for _, name := range []string{"a", "b", "c"} {
		if _, err := r.Create(name); err != nil {
			t.Fatal(err)
		}
	}
	r.SetMaxVirtualChannels(ptr(2))
	if r.Len() != 3 {
		t.Fatalf("lowering the limit ended channels: %d live", r.Len())
	}
	if _, err := r.Create("d"); !errors.Is(err, engine.ErrTooManyVirtualChannels) {
		t.Fatalf("over a lowered limit: %v", err)
	}
	r.Close("a")
	if _, err := r.Create("d"); !errors.Is(err, engine.ErrTooManyVirtualChannels) {
		t.Fatalf("2 live under a limit of 2: %v", err)
	}
	r.SetMaxVirtualChannels(ptr(3))
	if _, err := r.Create("d"); err != nil {
		t.Fatalf("under a raised limit: %v", err)
	}
	r.SetMaxVirtualChannels(nil)
	if _, err := r.Create("e"); err != nil || r.Limits().MaxVirtualChannels != nil {
		t.Fatalf("no limit: %v, %v", err, r.Limits().MaxVirtualChannels)
	}
}

// The sweeper closes a channel idle for the expiry: nobody listening and
// no write. It runs on its own, every half expiry.
func TestIdleExpiry(t *testing.T) {
	bounded.Test(t, 30*time.Second)
	r := newTestEngine(engine.Limits{IdleExpiry: 40 * time.Millisecond, MaxVirtualChannels: ptr(2)})
	defer r.Stop()
	r.Create("idle")
	r.Create("busy")
	r.subscribe(t, "busy")
	bounded.Wait(t, "the idle channel to expire", 5*time.Second, func() bool { return r.Len() == 1 })
	if _, err := r.Info("idle"); !errors.Is(err, engine.ErrNotFound) {
		t.Fatal("the idle channel did not expire")
	}
	if _, err := r.Info("busy"); err != nil {
		t.Fatal("a channel with a listener expired")
	}
	if _, err := r.Create("again"); err != nil {
		t.Fatalf("the expired channel's slot is not free: %v", err)
	}
	if r.h.ends() != "" {
		t.Fatalf("the listened channel got an end: %q", r.h.ends())
	}
}

// A channel lives at least the expiry after its last activity and at most
// 1.5 times it, as docs/cometserver.md says: the sweep runs every half
// expiry and closes what was idle for a whole one.
func TestIdleExpiryBounds(t *testing.T) {
	bounded.Test(t, 30*time.Second)
	const expiry = 2 * time.Second
	r := newTestEngine(engine.Limits{IdleExpiry: expiry})
	defer r.Stop()
	r.Create("c")
	created := time.Now()
	gone := func() bool { _, err := r.Info("c"); return err != nil }
	if bounded.Until(expiry*9/10, gone) {
		t.Fatalf("closed %v after its last activity, before the %v expiry", time.Since(created), expiry)
	}
	// 1.5 times the expiry, and half a second for a late tick on a loaded
	// machine (a sweep every whole expiry would close it only at twice it).
	if !bounded.Until(expiry*3/2+500*time.Millisecond-time.Since(created), gone) {
		t.Fatalf("still open %v after its last activity", time.Since(created))
	}
}

// What counts as activity, on the sweep's own clock: a write and a
// listener leaving restart the expiry; a listener present holds it off; an
// expired channel ends for its listeners and later subscribers, and frees
// its slot.
func TestIdleExpiryRules(t *testing.T) {
	r := newTestEngine(engine.Limits{MaxVirtualChannels: ptr(1)}) // no sweeper: the test sweeps
	defer r.Stop()
	age := func(id string, d time.Duration) { // make id's last activity d ago
		c := r.lookup(id)
		c.mu.Lock()
		c.lastActive = time.Now().Add(-d)
		c.mu.Unlock()
	}
	sweep := func() { r.closeIdle(time.Now().Add(-time.Minute)) }
	live := func(id string) bool { _, err := r.Info(id); return err == nil }

	r.Create("c")
	age("c", 59*time.Second)
	sweep()
	if !live("c") {
		t.Fatal("closed before its expiry")
	}
	age("c", 61*time.Second)
	r.publish(t, "c", "m") // a write is activity
	sweep()
	if !live("c") {
		t.Fatal("a write did not restart the expiry")
	}

	r.subscribe(t, "c")
	age("c", time.Hour)
	sweep()
	if !live("c") {
		t.Fatal("a channel with a listener expired")
	}
	r.Unsubscribe(bg, "c", mustEpoch(t, r, "c")) // the last listener leaving is activity
	sweep()
	if !live("c") {
		t.Fatal("a listener leaving did not restart the expiry")
	}

	age("c", time.Minute+time.Second)
	sweep()
	if live("c") {
		t.Fatal("an idle channel outlived its expiry")
	}
	if _, err := r.Create("other"); err != nil {
		t.Fatalf("the expired channel's slot is not free: %v", err)
	}
	if _, err := r.Subscribe(bg, "c"); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("subscribing to an expired channel: %v, want engine.ErrNotFound", err)
	}
}

// Positions count a channel's messages within its epoch; the handler sees
// them in order, with the writer's tracker, only while subscribed.
func TestPositionsAndDelivery(t *testing.T) {
	r := newTestEngine(engine.Limits{HistorySize: 10, HistoryTTL: time.Minute})
	defer r.Stop()
	r.Create("a")
	r.Create("b")
	ia, _ := r.Info("a")
	ib, _ := r.Info("b")
	if ia.Position.Offset != 0 || !engine.ValidEpoch(ia.Position.Epoch) || ia.Position.Epoch == ib.Position.Epoch {
		t.Fatalf("new channels at %v and %v: want offset 0 and distinct valid epochs", ia.Position, ib.Position)
	}
	if p := r.publish(t, "a", "not heard"); p != (engine.Position{Offset: 1, Epoch: ia.Position.Epoch}) {
		t.Fatalf("first position %v", p)
	}
	if top, err := r.Subscribe(bg, "a"); err != nil || top.Offset != 1 || top.Epoch != ia.Position.Epoch {
		t.Fatalf("subscribe: %v, %v; want the channel's position", top, err)
	}
	tracker := new(int)
	if p, err := r.Publish(bg, "a", []byte("x"), tracker); err != nil || p.Offset != 2 {
		t.Fatalf("second position %v, %v", p, err)
	}
	r.publish(t, "b", "other channel")
	r.publish(t, "a", "y")
	if got := r.h.all(); got != "a:x@2 a:y@3" {
		t.Fatalf("handler got %q", got)
	}
	if r.h.track[0] != tracker || r.h.track[1] != nil {
		t.Fatal("the tracker did not come back with its own publication only")
	}
	if err := r.Unsubscribe(bg, "a", "another epoch"); err != nil {
		t.Fatal(err)
	}
	r.publish(t, "a", "still subscribed")
	if err := r.Unsubscribe(bg, "a", ia.Position.Epoch); err != nil {
		t.Fatal(err)
	}
	r.publish(t, "a", "z")
	if err := r.Close("a"); err != nil {
		t.Fatal(err)
	}
	if got := r.h.all(); got != "a:x@2 a:y@3 a:still subscribed@4" {
		t.Fatalf("after unsubscribing, the handler got %q", got)
	}
	if _, err := r.Publish(bg, "a", nil, nil); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("publish to a closed channel: %v", err)
	}
	if err := r.Unsubscribe(bg, "a", ia.Position.Epoch); err != nil {
		t.Fatalf("unsubscribing from an ended channel: %v", err)
	}
}

func history(t *testing.T, r testEngine, id string, since *engine.Position) string {
	t.Helper()
	h, err := r.History(bg, id, since)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range h.Publications {
		if p.Position.Epoch != h.Top.Epoch {
			t.Fatalf("a publication of epoch %q in a history of %q", p.Position.Epoch, h.Top.Epoch)
		}
		out = append(out, fmt.Sprintf("%s@%d", p.Payload, p.Position.Offset))
	}
	return fmt.Sprintf("%s top=%d gap=%v", strings.Join(out, ","), h.Top.Offset, h.Gap)
}

// The history keeps the last HistorySize messages; History answers what
// follows a position, or says there is a gap.
func TestHistoryBySize(t *testing.T) {
	r := newTestEngine(engine.Limits{HistorySize: 3, HistoryTTL: time.Hour})
	defer r.Stop()
	r.Create("c")
	ep := func(off uint64) *engine.Position {
		i, _ := r.Info("c")
		return &engine.Position{Offset: off, Epoch: i.Position.Epoch}
	}
	if got := history(t, r, "c", nil); got != " top=0 gap=false" {
		t.Fatalf("empty: %s", got)
	}
	if got := history(t, r, "c", ep(0)); got != " top=0 gap=false" {
		t.Fatalf("empty, from 0: %s", got)
	}
	for i := range 5 {
		r.publish(t, "c", fmt.Sprint("m", i+1))
	}
	for _, tt := range []struct {
		since *engine.Position
		want  string
	}{
		{nil, " top=5 gap=false"},
		{ep(5), " top=5 gap=false"},
		{ep(4), "m5@5 top=5 gap=false"},
		{ep(2), "m3@3,m4@4,m5@5 top=5 gap=false"},
		{ep(1), "m3@3,m4@4,m5@5 top=5 gap=true"},
		{ep(0), "m3@3,m4@4,m5@5 top=5 gap=true"},
		{ep(6), "m3@3,m4@4,m5@5 top=5 gap=true"},
		{&engine.Position{Offset: 4, Epoch: "other"}, "m3@3,m4@4,m5@5 top=5 gap=true"},
	} {
		if got := history(t, r, "c", tt.since); got != tt.want {
			t.Errorf("since %v: %s, want %s", tt.since, got, tt.want)
		}
	}
	if i, _ := r.Info("c"); i.HistoryLen != 3 {
		t.Fatalf("history length %d", i.HistoryLen)
	}
	if n, b := r.HistoryStats(); n != 3 || b != 6 {
		t.Fatalf("stats %d messages, %d bytes; want 3, 6", n, b)
	}

	// A payload in a much larger buffer is kept in a copy of its size.
	big := make([]byte, 10, 64<<10)
	r.Publish(bg, "c", big, nil)
	if n, b := r.HistoryStats(); n != 3 || b > 4+16 {
		t.Fatalf("stats after a message in a 64 KiB buffer: %d messages, %d bytes; want it kept in a copy of its size", n, b)
	}
	r.Close("c")
	r.Create("c")
	for i := range 5 {
		r.publish(t, "c", fmt.Sprint("m", i+1))
	}

	// Shrunk at run time: trimmed at the next read.
	r.SetHistory(1, time.Hour)
	if got := history(t, r, "c", ep(3)); got != "m5@5 top=5 gap=true" {
		t.Fatalf("after shrinking: %s", got)
	}
	if l := r.Limits(); l.HistorySize != 1 || l.HistoryTTL != time.Hour {
		t.Fatalf("limits %+v", l)
	}
	// Off: nothing kept, every gap said.
	r.SetHistory(0, time.Hour)
	r.publish(t, "c", "m6")
	if got := history(t, r, "c", ep(5)); got != " top=6 gap=true" {
		t.Fatalf("history off: %s", got)
	}
	if n, b := r.HistoryStats(); n != 0 || b != 0 {
		t.Fatalf("stats with history off: %d, %d", n, b)
	}
	// A closed channel's history is freed.
	r.SetHistory(3, time.Hour)
	r.publish(t, "c", "m7")
	r.Close("c")
	if n, b := r.HistoryStats(); n != 0 || b != 0 {
		t.Fatalf("stats after close: %d, %d", n, b)
	}
	if _, err := r.History(bg, "c", nil); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("history of a closed channel: %v", err)
	}
}

// Messages older than HistoryTTL leave the history; a TTL of 0 keeps none.
func TestHistoryByAge(t *testing.T) {
	bounded.Test(t, 30*time.Second)
	r := newTestEngine(engine.Limits{HistorySize: 10, HistoryTTL: 300 * time.Millisecond})
	defer r.Stop()
	r.Create("c")
	r.publish(t, "c", "old")
	time.Sleep(150 * time.Millisecond)
	r.publish(t, "c", "new")
	if got := history(t, r, "c", &engine.Position{Epoch: mustEpoch(t, r, "c")}); got != "old@1,new@2 top=2 gap=false" {
		t.Fatalf("both young: %s", got)
	}
	bounded.Wait(t, "the old message to expire", 5*time.Second, func() bool {
		i, _ := r.Info("c")
		return i.HistoryLen == 1
	})
	if got := history(t, r, "c", &engine.Position{Epoch: mustEpoch(t, r, "c")}); got != "new@2 top=2 gap=true" {
		t.Fatalf("old expired: %s", got)
	}
	r.SetHistory(10, 0)
	r.publish(t, "c", "kept for no time")
	if i, _ := r.Info("c"); i.HistoryLen != 0 {
		t.Fatalf("a TTL of 0 kept %d messages", i.HistoryLen)
	}
}

func mustEpoch(t *testing.T, r testEngine, id string) string {
	t.Helper()
	i, err := r.Info(id)
	if err != nil {
		t.Fatal(err)
	}
	return i.Position.Epoch
}

// Publishers, readers and subscribers race; run with -race. Offsets stay
// consecutive and the handler sees them in order.
func TestConcurrentPublish(t *testing.T) {
	bounded.Test(t, time.Minute)
	e := New(engine.Limits{HistorySize: 50, HistoryTTL: time.Minute})
	defer e.Stop()
	h := &orderCheck{last: map[string]uint64{}}
	e.Register(h)
	e.Create(bg, "c")
	e.Subscribe(bg, "c")
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for range 500 {
				if _, err := e.Publish(bg, "c", []byte("m"), nil); err != nil {
					t.Error(err)
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			for range 200 {
				hist, err := e.History(bg, "c", &engine.Position{})
				if err != nil {
					t.Error(err)
					return
				}
				for i, p := range hist.Publications {
					if p.Position.Offset != hist.Top.Offset-uint64(len(hist.Publications)-1-i) {
						t.Errorf("history not consecutive up to its top: %d at %d of %d", p.Position.Offset, i, hist.Top.Offset)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	if h.bad != "" || h.last["c"] != 2000 {
		t.Fatalf("handler: %s, last %d of 2000", h.bad, h.last["c"])
	}
}

type orderCheck struct {
	mu   sync.Mutex
	last map[string]uint64
	bad  string
}

func (o *orderCheck) HandlePublication(id string, p engine.Publication) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if p.Position.Offset != o.last[id]+1 && o.bad == "" {
		o.bad = fmt.Sprintf("%d after %d", p.Position.Offset, o.last[id])
	}
	o.last[id] = p.Position.Offset
}

func (o *orderCheck) HandleEnd(string, string)          {}
func (o *orderCheck) HandleTop(string, engine.Position) {}

// BenchmarkHistoryFootprint measures what history costs in memory: 1,000
// channels, each with a full history of 100 messages of 32 bytes, against
// the same channels without history. It reports the heap per kept message
// (payload included) and per channel.
func BenchmarkHistoryFootprint(b *testing.B) {
	const channels, size, payload = 1000, 100, 32
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	fill := func(history int) (*Engine, uint64) {
		before := heap()
		e := New(engine.Limits{HistorySize: history, HistoryTTL: time.Hour})
		msg := make([]byte, payload)
		for i := range channels {
			id, _ := e.Create(bg, fmt.Sprint("c", i))
			for range 2 * size { // twice over: the ring at its steady state
				e.Publish(bg, id, append([]byte(nil), msg...), nil)
			}
		}
		return e, heap() - before
	}
	var with, without uint64
	for b.Loop() {
		e1, w1 := fill(0)
		e2, w2 := fill(size)
		with, without = w2, w1
		runtime.KeepAlive(e1)
		runtime.KeepAlive(e2)
	}
	b.ReportMetric(float64(with-without)/channels/size, "B/message")
	b.ReportMetric(float64(with-without)/channels, "B/channel")
	b.ReportMetric(payload, "payload-B")
}
