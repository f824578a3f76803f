// Package losscount is a resuming comet client that counts what it
// receives, for the tests that claim nothing is lost and nothing comes
// twice: through a killed server, a Redis restart, a rollout.
package losscount

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/cometop/comet-operator/cometserver/cometclient"
)

// Counter counts, for one subscriber, how many times each message
// ("channel/data") arrived, and the gaps it was told of.
type Counter struct {
	mu   sync.Mutex
	seen map[string]int
	gaps int
	ends int
}

// Follow polls ids until ctx ends, resuming, its n-th poll (from first)
// to the endpoint endpoint(n) names (none: skip it), and counts what
// comes. A failed poll is retried after 50 ms, as comet.js backs off.
func (c *Counter) Follow(ctx context.Context, ids []string, first int, endpoint func(n int) string) {
	cl := &cometclient.Client{HTTP: &http.Client{Timeout: 40 * time.Second}}
	cl.Add(ids...)
	for n := first; ctx.Err() == nil; n++ {
		if cl.Endpoint = endpoint(n); cl.Endpoint == "" {
			continue
		}
		r, err := cl.Poll(ctx)
		if err != nil || r.Status != 200 {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		c.mu.Lock()
		for _, m := range r.Messages {
			switch {
			case m.Gap:
				c.gaps++
			case m.Ended:
				c.ends++ // the client follows that channel no more
			default:
				c.seen[m.Channel+"/"+string(m.Data)]++
			}
		}
		c.mu.Unlock()
	}
}

// Start starts n subscribers following ids until ctx ends, subscriber i's
// k-th poll going to endpoint(i+k); wait on the group once ctx ended.
func Start(ctx context.Context, n int, ids []string, endpoint func(n int) string) ([]*Counter, *sync.WaitGroup) {
	counts := make([]*Counter, n)
	var polls sync.WaitGroup
	for i := range n {
		counts[i] = &Counter{seen: map[string]int{}}
		polls.Add(1)
		go func() {
			defer polls.Done()
			counts[i].Follow(ctx, ids, i, endpoint)
		}()
	}
	return counts, &polls
}

// Has reports whether c counted every one of msgs ("channel/data").
func (c *Counter) Has(msgs ...string) bool {
	return len(c.Missing(msgs...)) == 0
}

// Missing returns those of msgs that c never counted.
func (c *Counter) Missing(msgs ...string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var missing []string
	for _, m := range msgs {
		if c.seen[m] == 0 {
			missing = append(missing, m)
		}
	}
	return missing
}

// Duplicates returns the messages c counted more than once.
func (c *Counter) Duplicates() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var dup []string
	for m, n := range c.seen {
		if n > 1 {
			dup = append(dup, m)
		}
	}
	return dup
}

// Seen returns every message c counted, once each.
func (c *Counter) Seen() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var all []string
	for m := range c.seen {
		all = append(all, m)
	}
	return all
}

// Gaps is the number of gaps c was told of.
func (c *Counter) Gaps() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gaps
}

// Ends is the number of channel ends c was told of.
func (c *Counter) Ends() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ends
}

// T is what CheckOnce needs of a *testing.T (this package is also the
// demo's loss watcher, which is no test).
type T interface {
	Helper()
	Errorf(format string, args ...any)
}

// CheckOnce fails the test for every message subscriber i got twice, and
// if it was told of a number of gaps other than gaps.
func (c *Counter) CheckOnce(t T, i, gaps int) {
	t.Helper()
	for _, m := range c.Duplicates() {
		t.Errorf("subscriber %d got %s more than once", i, m)
	}
	if g := c.Gaps(); g != gaps {
		t.Errorf("subscriber %d was told of %d gaps, want %d", i, g, gaps)
	}
}

// Publisher writes "m<seq>" to a channel at a steady rate through Post,
// and remembers which writes were acknowledged, and which may have been
// taken without an answer (no reply, or the one in flight): a subscriber
// may get those, and must get every acknowledged one.
type Publisher struct {
	Channel string
	// Post writes msg to channel; a nil error with code 200 is an
	// acknowledgement, another code a refusal, an error no answer.
	Post func(ctx context.Context, channel, msg string) (code int, err error)

	mu       sync.Mutex
	acked    []string
	ackedSet map[string]bool
	unknown  map[string]bool
	inflight string
	refused  int
}

// Run publishes every period until ctx ends.
func (p *Publisher) Run(ctx context.Context, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for seq := 0; ; seq++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		msg := "m" + strconv.Itoa(seq)
		id := p.Channel + "/" + msg
		p.mu.Lock()
		p.inflight = id
		p.mu.Unlock()
		code, err := p.Post(ctx, p.Channel, msg)
		p.mu.Lock()
		p.inflight = ""
		switch {
		case err == nil && code == 200:
			p.acked = append(p.acked, id)
			if p.ackedSet == nil {
				p.ackedSet = map[string]bool{}
			}
			p.ackedSet[id] = true
		case err != nil:
			if p.unknown == nil {
				p.unknown = map[string]bool{}
			}
			p.unknown[id] = true
		default:
			p.refused++
		}
		p.mu.Unlock()
	}
}

// Acked returns the acknowledged writes so far, in order.
func (p *Publisher) Acked() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.acked...)
}

// Refused is the number of writes refused or never answered.
func (p *Publisher) Refused() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.refused + len(p.unknown)
}

// MayHaveWritten reports whether m ("channel/data") may have been
// written: acknowledged, unanswered, or in flight.
func (p *Publisher) MayHaveWritten(m string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ackedSet[m] || p.unknown[m] || m == p.inflight
}
