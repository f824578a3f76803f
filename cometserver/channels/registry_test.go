package channels

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cometop/comet-operator/test/bounded"
)

func ptr(n int) *int { return &n }

func TestCreate(t *testing.T) {
	r := NewRegistry(Options{})
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
	if _, err := r.Create("news/sport é"); !errors.Is(err, ErrNameTaken) {
		t.Fatalf("second create of a live name: %v, want ErrNameTaken", err)
	}
	for _, bad := range []string{"a:b", "a\nb", "a\rb", strings.Repeat("x", 257), "\xff"} {
		if _, err := r.Create(bad); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Create(%q) = %v, want ErrInvalidName", bad, err)
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
	zero := NewRegistry(Options{MaxVirtualChannels: ptr(0)})
	defer zero.Stop()
	if _, err := zero.Create(""); !errors.Is(err, ErrTooManyVirtualChannels) {
		t.Fatalf("max 0: %v, want ErrTooManyVirtualChannels", err)
	}

	r := NewRegistry(Options{MaxVirtualChannels: ptr(2)})
	defer r.Stop()
	a, _ := r.Create("")
	if _, err := r.Create("b"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Create("c"); !errors.Is(err, ErrTooManyVirtualChannels) {
		t.Fatalf("third channel: %v, want ErrTooManyVirtualChannels", err)
	}
	if _, err := r.Create("b"); !errors.Is(err, ErrTooManyVirtualChannels) {
		t.Fatalf("the limit is checked first: %v", err)
	}
	r.Close(a)
	if _, err := r.Create("c"); err != nil {
		t.Fatalf("a closed channel frees its slot: %v", err)
	}
	if got := *r.MaxVirtualChannels(); got != 2 || r.Len() != 2 {
		t.Fatalf("max %d, len %d", got, r.Len())
	}
	if NewRegistry(Options{}).MaxVirtualChannels() != nil {
		t.Fatal("no limit by default")
	}
	if m := zero.MaxVirtualChannels(); m == nil || *m != 0 {
		t.Fatalf("a limit of 0 reads back as %v", m)
	}
}

// writeNow writes without waiting for the outcome: the broadcast happens
// before Write looks at its context (with nobody listening the outcome is
// known at once, and either may come back).
func writeNow(t *testing.T, r *Registry, id, msg string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.Write(ctx, id, []byte(msg)); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("write %q to %s: %v", msg, id, err)
	}
}

func TestWaiterGathersEverythingUntilDetach(t *testing.T) {
	r := NewRegistry(Options{})
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
	r := NewRegistry(Options{})
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
	r := NewRegistry(Options{})
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

// The sweeper closes a channel idle for the expiry: nobody listening and
// no write. It runs on its own, every half expiry.
func TestIdleExpiry(t *testing.T) {
	bounded.Test(t, 30*time.Second)
	r := NewRegistry(Options{IdleExpiry: 40 * time.Millisecond, MaxVirtualChannels: ptr(2)})
	defer r.Stop()
	r.Create("idle")
	r.Create("busy")
	w, _ := r.Subscribe([]string{"busy"})
	bounded.Wait(t, "the idle channel to expire", 5*time.Second, func() bool { return r.Len() == 1 })
	if _, err := r.Info("idle"); !errors.Is(err, ErrNotFound) {
		t.Fatal("the idle channel did not expire")
	}
	if _, err := r.Info("busy"); err != nil {
		t.Fatal("a channel with a listener expired")
	}
	if _, err := r.Create("again"); err != nil {
		t.Fatalf("the expired channel's slot is not free: %v", err)
	}
	select {
	case <-w.Ready():
		t.Fatal("the listened channel got an event")
	default:
	}
	w.Detach()
}

// A channel lives at least the expiry after its last activity and at most
// 1.5 times it, as docs/cometserver.md says: the sweep runs every half
// expiry and closes what was idle for a whole one.
func TestIdleExpiryBounds(t *testing.T) {
	bounded.Test(t, 30*time.Second)
	const expiry = 2 * time.Second
	r := NewRegistry(Options{IdleExpiry: expiry})
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
	r := NewRegistry(Options{MaxVirtualChannels: ptr(1)}) // no sweeper: the test sweeps
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
	writeNow(t, r, "c", "m") // a write is activity
	sweep()
	if !live("c") {
		t.Fatal("a write did not restart the expiry")
	}

	w, _ := r.Subscribe([]string{"c"})
	age("c", time.Hour)
	sweep()
	if !live("c") {
		t.Fatal("a channel with a listener expired")
	}
	w.Detach() // a listener leaving is activity
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
	if later, ended := r.Subscribe([]string{"c"}); later.Subscribed() || len(ended) != 1 {
		t.Fatal("an expired channel is not ended for later subscribers")
	}
}

// Writers, closers and waiters race; run with -race. Every write's outcome
// adds up to what its waiters resolved: across all writes, the deliveries
// counted equal the messages the waiters took, and nothing failed.
func TestConcurrentUse(t *testing.T) {
	bounded.Test(t, time.Minute)
	r := NewRegistry(Options{MaxVirtualChannels: ptr(50)})
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
	r := NewRegistry(Options{})
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
	r := NewRegistry(Options{})
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
	r := NewRegistry(Options{})
	defer r.Stop()
	r.Create("c")
	var ws []*Waiter
	for i := range 3 {
		w, ended := r.Subscribe([]string{"z", "c", "y", "x"})
		if strings.Join(ended, ",") != "z,y,x" {
			t.Fatalf("ended %q", ended)
		}
		ws = append(ws, w)
		if info, err := r.Info("c"); err != nil || info != (Info{ID: "c", Listeners: i + 1}) {
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
