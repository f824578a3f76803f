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
}

// writeNow writes without waiting for the outcome: the broadcast happens
// before Write looks at its context.
func writeNow(t *testing.T, r *Registry, id, msg string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.Write(ctx, id, []byte(msg)); !errors.Is(err, context.Canceled) {
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
	if out, _ := r.Write(context.Background(), "b", []byte("late")); !out.NoListener() {
		t.Fatalf("a detached waiter still listens: %+v", out)
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

func TestIdleExpiry(t *testing.T) {
	r := NewRegistry(Options{IdleExpiry: 40 * time.Millisecond})
	defer r.Stop()
	r.Create("idle")
	r.Create("busy")
	w, _ := r.Subscribe([]string{"busy"})
	deadline := time.Now().Add(5 * time.Second)
	for r.Len() != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := r.Info("idle"); !errors.Is(err, ErrNotFound) {
		t.Fatal("the idle channel did not expire")
	}
	if _, err := r.Info("busy"); err != nil {
		t.Fatal("a channel with a listener expired")
	}
	select {
	case <-w.Ready():
		t.Fatal("the listened channel got an event")
	default:
	}
	w.Detach()
}

// Writers, closers and waiters race; run with -race. Every write's outcome
// must add up to the replies its waiters resolved.
func TestConcurrentUse(t *testing.T) {
	r := NewRegistry(Options{MaxVirtualChannels: ptr(50)})
	defer r.Stop()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				name := fmt.Sprint("c", (g*7+i)%20)
				r.Create(name)
				w, _ := r.Subscribe([]string{name, "c3"})
				go func() {
					ctx, cancel := context.WithTimeout(context.Background(), time.Second)
					defer cancel()
					r.Write(ctx, name, []byte("m"))
				}()
				if i%5 == 0 {
					r.Close(name)
				}
				select {
				case <-w.Ready():
				case <-time.After(time.Millisecond):
				}
				Resolve(w.Detach(), true)
			}
		}()
	}
	wg.Wait()
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
