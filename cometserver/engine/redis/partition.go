package redis

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/rueidis"

	"github.com/cometop/comet-operator/cometserver/engine"
)

// partition is one hash tag's subscriptions on this server: one dedicated
// PUB/SUB connection, the channels watched through it, and what it hands
// to the handler.
//
// Every handler call happens under mu, in offset order per channel: a
// publication comes in through PUB/SUB (OnMessage) or, after a gap or a
// reconnect, from the channel's Stream (catchUp); s.last says what the
// handler has, so each reaches it once.
//
// Locks: subMu (held across commands on the connection), then mu. mu is
// never held across a command: the connection's reader calls OnMessage,
// which takes mu.
type partition struct {
	e     *Engine
	k     int
	probe string // this server's probe channel in the partition

	subMu sync.Mutex
	conn  rueidis.DedicatedClient // nil while down; guarded by subMu and mu

	mu        sync.Mutex
	subs      map[string]*sub
	pending   map[string]*pend // by token: this process's publications in flight
	probeSent time.Time        // of the probe not back yet; zero if none
	probeGot  time.Time
	rtt       time.Duration
	up        bool // connected and subscribed
	gen       int  // counts connections: a subscribe spanning two catches up
}

// sub is one watched channel.
type sub struct {
	state    subState
	epoch    string // the channel's, as far as this server knows
	told     string // the epoch the handler knows: of Subscribe's position or the last publication handed
	subEpoch string // the epoch Subscribe returned: Unsubscribe names it
	last     uint64 // the offset of the last publication handed
	// boot is the partition's boot mark under which this server last
	// found the channel in Redis (read with it, see markKey): missing
	// later under the same mark, it was closed (ended); under another,
	// Redis lost it (made again). Per channel: one mark for the engine,
	// taken by the first channel caught up, ended the others.
	boot string
	buf  []message
}

type subState int

const (
	subscribing subState = iota // SSUBSCRIBE sent, position not read yet: buffer
	active                      // deliver in order
	catching                    // reading the Stream: buffer
)

// pend is a publication of this process in flight.
type pend struct {
	id      string
	tracker any
	done    chan struct{}
}

// message is one PUB/SUB message, parsed.
type message struct {
	end     bool
	pos     engine.Position
	token   string
	payload []byte
}

func newPartition(e *Engine, k int) *partition {
	return &partition{
		e:       e,
		k:       k,
		probe:   e.tag(k) + "probe:" + e.node,
		subs:    make(map[string]*sub),
		pending: make(map[string]*pend),
	}
}

func (p *partition) pubsubChannel(id string) string { return p.e.tag(p.k) + "p:" + id }

// health says whether the partition serves: connected, and its last probe
// back in time.
func (p *partition) health() (ready bool, rtt time.Duration, subs int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	late := !p.probeSent.IsZero() && time.Since(p.probeSent) > p.e.o.ProbeTimeout
	return p.up && !late, p.rtt, len(p.subs)
}

// run keeps the partition's connection up until the engine stops:
// connect, subscribe to every watched channel, catch them up, then probe
// until the connection fails or a probe is late; then again, with backoff.
func (p *partition) run() {
	defer p.e.wg.Done()
	b := newBackoff()
	for {
		dead, err := p.connect()
		if err == nil {
			b = newBackoff()
			err = p.watch(dead)
		}
		p.disconnect()
		select {
		case <-p.e.stop:
			return
		default:
		}
		if err != nil {
			p.e.noteError(fmt.Errorf("redis pub/sub partition %d: %w", p.k, err))
		}
		if !b.wait(p.e.stop) {
			return
		}
	}
}

// connect opens the connection and subscribes to the probe and every
// watched channel; then it catches the watched channels up.
func (p *partition) connect() (<-chan error, error) {
	c := *p.e.client.Load()
	conn, release := c.Dedicate()
	dead := conn.SetPubSubHooks(rueidis.PubSubHooks{OnMessage: p.onMessage})
	p.subMu.Lock()
	defer p.subMu.Unlock()
	p.mu.Lock()
	chans := []string{p.probe}
	var ids []string
	for id, s := range p.subs {
		chans = append(chans, p.pubsubChannel(id))
		ids = append(ids, id)
		if s.state == active {
			s.state = catching // its PUB/SUB may have missed some
		}
	}
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), p.e.o.OpTimeout)
	defer cancel()
	if err := conn.Do(ctx, conn.B().Ssubscribe().Channel(chans...).Build()).Error(); err != nil {
		conn.Close()
		release()
		return nil, fmt.Errorf("subscribing: %w", err)
	}
	p.mu.Lock()
	p.conn, p.up = &dedicated{conn, release}, true
	p.probeSent = time.Time{}
	p.gen++
	p.mu.Unlock()
	go p.catchUp(ids)
	return dead, nil
}

// dedicated is a DedicatedClient with its release.
type dedicated struct {
	rueidis.DedicatedClient
	release func()
}

func (p *partition) disconnect() {
	p.subMu.Lock()
	defer p.subMu.Unlock()
	p.mu.Lock()
	conn := p.conn
	p.conn, p.up = nil, false
	p.mu.Unlock()
	if d, ok := conn.(*dedicated); ok {
		d.Close()
		d.release()
	}
}

// watch probes the connection until it fails, a probe is late, or the
// engine stops.
func (p *partition) watch(dead <-chan error) error {
	t := time.NewTicker(p.e.o.ProbeInterval)
	defer t.Stop()
	for {
		select {
		case <-p.e.stop:
			return nil
		case err := <-dead:
			if err == nil {
				err = errors.New("connection closed")
			}
			return err
		case <-t.C:
		}
		p.mu.Lock()
		sent := p.probeSent
		if sent.IsZero() {
			p.probeSent = time.Now()
		}
		p.mu.Unlock()
		if !sent.IsZero() {
			if time.Since(sent) > p.e.o.ProbeTimeout {
				return fmt.Errorf("probe not back after %s", p.e.o.ProbeTimeout)
			}
			continue
		}
		err := p.e.do(context.Background(), "probe", func(ctx context.Context, c rueidis.Client) error {
			return c.Do(ctx, c.B().Spublish().Channel(p.probe).Message("probe").Build()).Error()
		})
		if err != nil {
			return err
		}
	}
}

// onMessage takes one PUB/SUB message. It runs on the connection's reader.
func (p *partition) onMessage(m rueidis.PubSubMessage) {
	if m.Channel == p.probe {
		p.mu.Lock()
		if !p.probeSent.IsZero() {
			p.rtt = time.Since(p.probeSent)
			p.probeSent = time.Time{}
		}
		p.probeGot = time.Now()
		p.mu.Unlock()
		return
	}
	id, ok := strings.CutPrefix(m.Channel, p.e.tag(p.k)+"p:")
	if !ok {
		return
	}
	msg, err := parseMessage(m.Message)
	if err != nil {
		p.e.noteError(fmt.Errorf("channel %q: %w", id, err))
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.subs[id]
	if s == nil {
		p.settle(msg.token)
		return
	}
	if s.state != active {
		s.buf = append(s.buf, msg)
		return
	}
	p.deliver(id, s, msg)
}

// parseMessage reads "p <offset> <epoch> <token>\n<payload>" or "e <epoch>".
func parseMessage(s string) (message, error) {
	if e, ok := strings.CutPrefix(s, "e "); ok {
		return message{end: true, pos: engine.Position{Epoch: e}}, nil
	}
	head, payload, ok := strings.Cut(s, "\n")
	f := strings.Split(head, " ")
	if !ok || len(f) != 4 || f[0] != "p" {
		return message{}, errors.New("malformed pub/sub message")
	}
	off, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return message{}, fmt.Errorf("malformed pub/sub offset: %w", err)
	}
	return message{pos: engine.Position{Offset: off, Epoch: f[2]}, token: f[3], payload: []byte(payload)}, nil
}

// deliver hands msg to the handler if it is the next of s; it starts a
// catch-up if messages are missing before it. mu is held.
func (p *partition) deliver(id string, s *sub, msg message) {
	switch {
	case msg.end:
		if msg.pos.Epoch != s.epoch {
			return // the end of an earlier channel of that name
		}
		p.drop(id)
		p.e.handler.HandleEnd(id, s.told)
	case msg.pos.Epoch == s.epoch && msg.pos.Offset <= s.last:
		p.settle(msg.token) // had it
	case msg.pos.Epoch == s.epoch && msg.pos.Offset == s.last+1:
		p.hand(id, s, msg.pos, msg.payload, msg.token)
	default:
		// Missing some, or another epoch: read them from the Stream.
		s.state = catching
		s.buf = append(s.buf, msg)
		go p.catchUp([]string{id})
	}
}

// hand gives the handler one publication, with its tracker if it is this
// process's own. mu is held.
func (p *partition) hand(id string, s *sub, pos engine.Position, payload []byte, token string) {
	s.epoch, s.told, s.last = pos.Epoch, pos.Epoch, pos.Offset
	var tracker any
	if pd := p.pending[token]; pd != nil {
		tracker = pd.tracker
	}
	p.e.handler.HandlePublication(id, engine.Publication{Position: pos, Payload: payload, Tracker: tracker})
	p.settle(token)
}

// settle tells a publisher of this process waiting for token that it has
// been handed, or will not be. mu is held.
func (p *partition) settle(token string) {
	if pd := p.pending[token]; pd != nil {
		delete(p.pending, token)
		close(pd.done)
	}
}

// drop forgets a watched channel and settles its publications in flight.
// mu is held. The PUB/SUB subscription goes later, outside mu.
func (p *partition) drop(id string) {
	delete(p.subs, id)
	for token, pd := range p.pending {
		if pd.id == id {
			p.settle(token)
		}
	}
	go p.unsubscribeConn(id)
}

// expect registers a publication of this process before it is made, if
// the channel is watched here; the returned channel closes once it has
// been handed (or will not be). nil if not watched.
func (p *partition) expect(id, token string, tracker any) <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.subs[id] == nil || !p.up {
		return nil // not watched, or its PUB/SUB is down: the catch-up hands it
	}
	pd := &pend{id: id, tracker: tracker, done: make(chan struct{})}
	p.pending[token] = pd
	return pd.done
}

func (p *partition) forget(token string) {
	p.mu.Lock()
	delete(p.pending, token)
	p.mu.Unlock()
}

// catchUp reads what each channel in ids has after what its handler has,
// hands it, then what came through PUB/SUB meanwhile.
func (p *partition) catchUp(ids []string) {
	var remade, ended int
	defer func() {
		if remade+ended > 0 {
			// made_again: Redis lost its data (its boot mark changed), and
			// their clients are told of the gap; ended: closed meanwhile.
			p.e.o.Logger.Warn("redis engine: watched channels missing from Redis on catching up",
				"partition", p.k, "made_again", remade, "ended", ended)
		}
	}()
	for _, id := range ids {
		got, err := p.catchUpOne(id)
		switch got {
		case madeAgain:
			remade++
		case closedMeanwhile:
			ended++
		}
		if err != nil { // noted by e.do
			// The partition reconnects when its probe fails; until then
			// the channel waits in catching and buffers.
			go func() {
				t := time.NewTimer(p.e.o.ProbeInterval)
				defer t.Stop()
				select {
				case <-p.e.stop:
				case <-t.C:
					p.catchUp([]string{id})
				}
			}()
		}
	}
}

// caughtUp says what a catch-up found of a channel missing from Redis.
type caughtUp int

const (
	found caughtUp = iota
	madeAgain
	closedMeanwhile
)

func (p *partition) catchUpOne(id string) (caughtUp, error) {
	p.mu.Lock()
	s := p.subs[id]
	if s == nil || s.state != catching {
		p.mu.Unlock()
		return found, nil
	}
	epoch, from, seenIn := s.epoch, s.last+1, s.boot
	p.mu.Unlock()

	var top engine.Position
	var pubs []engine.Publication
	var foundUnder string // the mark it was found (or made again) under, once it was
	got := found
	err := p.e.do(context.Background(), "catch up", func(ctx context.Context, c rueidis.Client) error {
		var mark string
		var err error
		top, pubs, mark, err = p.e.markedHistory(ctx, c, id, from)
		switch {
		case errors.Is(err, engine.ErrNotFound):
			// Closed while we were away, or Redis lost its data: the boot
			// mark tells which. Lost: make the channel again (new epoch).
			if mark == seenIn {
				got = closedMeanwhile
				return nil
			}
			if err := p.e.remake(ctx, c, id); err != nil {
				return err
			}
			got, foundUnder = madeAgain, mark
			top, pubs, err = p.e.history(ctx, c, id, 1)
		case err == nil:
			foundUnder = mark
			if top.Epoch == epoch && top.Offset < from-1 {
				// Redis lost writes this server saw (a restart from an
				// older snapshot, a failover to a lagging replica): their
				// offsets would name other messages. A new epoch tells
				// resuming clients of the gap.
				meta, stream, _ := p.e.keys(id)
				err = newEpochScript.Exec(ctx, c, []string{meta, stream}, []string{epoch, engine.RandomString(6)}).Error()
				if err != nil && !rueidis.IsRedisNil(err) {
					return err
				}
				top, pubs, err = p.e.history(ctx, c, id, 1)
			}
			if err == nil && top.Epoch != epoch {
				top, pubs, err = p.e.history(ctx, c, id, 1) // made again: all of the new epoch
			}
		}
		if errors.Is(err, engine.ErrNotFound) && foundUnder != "" {
			got = closedMeanwhile // there a moment ago, under this mark
			return nil
		}
		return err
	})
	if err != nil {
		p.mu.Lock()
		if foundUnder != "" && p.subs[id] == s {
			s.boot = foundUnder // a retry judges it missing against this mark
		}
		p.mu.Unlock()
		return found, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.subs[id] != s {
		return got, nil // unsubscribed meanwhile
	}
	if got == closedMeanwhile {
		p.drop(id)
		p.e.handler.HandleEnd(id, s.told)
		return got, nil
	}
	s.boot = foundUnder
	if top.Epoch != s.epoch {
		s.epoch, s.last = top.Epoch, 0
	}
	for _, pub := range pubs {
		if pub.Position.Offset > s.last {
			token, _ := pub.Tracker.(string)
			p.hand(id, s, pub.Position, pub.Payload, token)
		}
	}
	// What the Stream no longer holds, or a new epoch with nothing in it
	// yet, is lost to this server's listeners: the handler learns where
	// the channel is, so that a client resuming from before reads the
	// history, which reports the gap.
	if top.Epoch == s.epoch && (top.Offset > s.last || s.told != s.epoch) {
		s.last, s.told = top.Offset, top.Epoch
		p.e.handler.HandleTop(id, top)
	}
	s.state = active
	buf := s.buf
	s.buf = nil
	for _, msg := range buf {
		if s.state != active {
			s.buf = append(s.buf, msg)
			continue
		}
		if msg.end || msg.pos.Epoch != s.epoch || msg.pos.Offset <= s.last+1 {
			p.deliver(id, s, msg)
			if p.subs[id] != s {
				return got, nil // ended
			}
			continue
		}
		// Still a hole after reading the Stream: trimmed before we read it.
		p.hand(id, s, msg.pos, msg.payload, msg.token)
	}
	return got, nil
}

// remake makes channel id again after Redis lost it, with a new epoch, and
// takes its name back in the registry (over the limit if need be: it was
// live).
func (e *Engine) remake(ctx context.Context, c rueidis.Client, id string) error {
	meta, stream, _ := e.keys(id)
	if err := c.Do(ctx, c.B().Zadd().Key(e.registry()).Nx().ScoreMember().ScoreMember(float64(time.Now().UnixMilli()), id).Build()).Error(); err != nil {
		return err
	}
	return makeChannelScript.Exec(ctx, c, []string{meta, stream}, []string{engine.RandomString(6), "1"}).Error()
}

// subscribe watches channel id through the partition's connection and
// returns its position once the subscription took effect.
func (p *partition) subscribe(ctx context.Context, id string) (engine.Position, error) {
	p.subMu.Lock()
	defer p.subMu.Unlock()
	p.mu.Lock()
	conn := p.conn
	if conn == nil || !p.up {
		p.mu.Unlock()
		return engine.Position{}, fmt.Errorf("subscribe to %q: pub/sub partition %d down: %w", id, p.k, engine.ErrUnavailable)
	}
	s := p.subs[id]
	if s != nil { // already watched: a subscribe that raced an end
		pos := engine.Position{Offset: s.last, Epoch: s.epoch}
		p.mu.Unlock()
		return pos, nil
	}
	s = &sub{state: subscribing}
	p.subs[id] = s
	gen := p.gen
	p.mu.Unlock()

	fail := func(err error) (engine.Position, error) {
		p.mu.Lock()
		if p.subs[id] == s {
			p.drop(id)
		}
		p.mu.Unlock()
		return engine.Position{}, err
	}
	cctx, cancel := context.WithTimeout(ctx, p.e.o.OpTimeout)
	defer cancel()
	if err := conn.Do(cctx, conn.B().Ssubscribe().Channel(p.pubsubChannel(id)).Build()).Error(); err != nil {
		return fail(fmt.Errorf("subscribe to %q: %w: %w", id, engine.ErrUnavailable, err))
	}
	var top engine.Position
	var boot string
	err := p.e.do(ctx, "subscribe", func(ctx context.Context, c rueidis.Client) (err error) {
		top, _, boot, err = p.e.markedHistory(ctx, c, id, 0)
		return err
	})
	if err != nil {
		return fail(err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.subs[id] != s {
		return engine.Position{}, fmt.Errorf("subscribe to %q: connection lost: %w", id, engine.ErrUnavailable)
	}
	s.epoch, s.told, s.subEpoch, s.last, s.boot = top.Epoch, top.Epoch, top.Epoch, top.Offset, boot
	if p.gen != gen {
		// A reconnect came between: what the old connection lost is in
		// the Stream.
		s.state = catching
		go p.catchUp([]string{id})
		return top, nil
	}
	s.state = active
	buf := s.buf
	s.buf = nil
	for _, msg := range buf {
		if s.state == active {
			p.deliver(id, s, msg)
		} else {
			s.buf = append(s.buf, msg)
		}
		if p.subs[id] != s {
			break
		}
	}
	return top, nil
}

func (p *partition) unsubscribe(_ context.Context, id, epoch string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.subs[id]
	if s == nil || (s.subEpoch != epoch && s.epoch != epoch) {
		return nil // ended meanwhile, or made again: not this subscription
	}
	p.drop(id)
	return nil
}

// unsubscribeConn drops the PUB/SUB subscription of a channel no longer
// watched (unless it is watched again by then).
func (p *partition) unsubscribeConn(id string) {
	p.subMu.Lock()
	defer p.subMu.Unlock()
	p.mu.Lock()
	conn, again := p.conn, p.subs[id] != nil
	p.mu.Unlock()
	if conn == nil || again {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.e.o.OpTimeout)
	defer cancel()
	// A failure leaves a subscription nobody reads: the next reconnect
	// forgets it.
	_ = conn.Do(ctx, conn.B().Sunsubscribe().Channel(p.pubsubChannel(id)).Build()).Error()
}
