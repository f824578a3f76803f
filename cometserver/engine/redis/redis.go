// Package redis is the shared channel engine: channels, their positions and
// history live in Redis (standalone or Cluster, 7.0 or later), so that every
// server of a fleet sees one channel space, and a write on any server
// reaches the requests waiting on every other.
//
// Layout. Channels are spread over a fixed number of partitions by a hash
// of their name; a partition is one hash tag, so that a channel's meta hash,
// its Stream (the history) and its sharded PUB/SUB channel share one
// Cluster slot and one script can touch them all. A registry (a sorted set
// in a slot of its own) holds every live name: it makes names unique and
// max_virtual_channels one limit for the fleet. Each server keeps one
// dedicated connection per partition for its subscriptions.
//
// Failure. A server that cannot reach Redis is not ready and refuses work
// with engine.ErrUnavailable; it reconnects with backoff, subscribes again
// and catches every watched channel up from its Stream, so a message
// written while its PUB/SUB was down still reaches its listeners. A probe
// through each partition's PUB/SUB notices a subscription that died
// silently. A Redis that comes back empty (history lost) is told apart from
// a closed channel by a boot mark: channels this server watches are made
// again under a new epoch, so resuming clients hear of the gap.
package redis

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/cometop/comet-operator/cometserver/engine"
)

// Partitions is how many hash tags the channels are spread over: the
// number of PUB/SUB connections per server, and of slots a Cluster
// spreads the channels' keys over. Every server of a fleet must agree on
// it: it is a constant, not a setting.
const Partitions = 16

// connBuffer sizes each Redis connection's read and write buffers, unless
// Options.Client does. rueidis's default, 0.5 MiB each way, is made for
// large values; a server holds Partitions PUB/SUB connections and a few
// pipelines, which carry messages of kilobytes (a larger one goes through
// the buffer in pieces). The defaults were 20 MiB of a server's heap, and
// Go's GC lets the heap grow to twice what is live.
const connBuffer = 64 << 10

// Options configure an engine.
type Options struct {
	// Client is the Redis client's option (address, TLS, credentials);
	// see rueidis.ParseURL.
	Client rueidis.ClientOption
	// Prefix starts every key and PUB/SUB channel name, so that several
	// fleets can share one Redis.
	Prefix string
	Limits engine.Limits
	// OpTimeout bounds one Redis operation (default 2s).
	OpTimeout time.Duration
	// ProbeInterval is how often each PUB/SUB connection is probed
	// (default 1s); a probe not back within ProbeTimeout (default 3s)
	// counts the connection dead.
	ProbeInterval, ProbeTimeout time.Duration
	// Logger gets the engine's failures (a line a second at most) and how
	// many watched channels a catch-up found missing; nil: none.
	Logger *slog.Logger
}

// Engine is the Redis engine.
type Engine struct {
	o       Options
	handler engine.Handler
	node    string // this process's name in publication tokens
	seq     atomic.Uint64

	client atomic.Pointer[rueidis.Client] // nil until first connected

	engine.LiveLimits // the fleet's limit on channels (counted in Redis), the history's bounds

	parts [Partitions]*partition

	mu         sync.Mutex
	lastErr    string
	loggedAt   time.Time // of the last failure logged
	suppressed int       // failures not logged since

	stop chan struct{}
	wg   sync.WaitGroup
}

var _ engine.Engine = (*Engine)(nil)

// New returns an engine and starts connecting in the background: until it
// is connected, operations fail with engine.ErrUnavailable and Status is
// not ready.
func New(o Options) (*Engine, error) {
	if o.Prefix == "" {
		return nil, errors.New("redis engine: empty key prefix")
	}
	if o.OpTimeout <= 0 {
		o.OpTimeout = 2 * time.Second
	}
	if o.Client.ReadBufferEachConn == 0 {
		o.Client.ReadBufferEachConn = connBuffer
	}
	if o.Client.WriteBufferEachConn == 0 {
		o.Client.WriteBufferEachConn = connBuffer
	}
	if o.ProbeInterval <= 0 {
		o.ProbeInterval = time.Second
	}
	if o.ProbeTimeout <= 0 {
		o.ProbeTimeout = 3 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	e := &Engine{o: o, node: engine.RandomString(6), stop: make(chan struct{})}
	e.SetHistory(o.Limits.HistorySize, o.Limits.HistoryTTL)
	e.SetMaxVirtualChannels(o.Limits.MaxVirtualChannels)
	for k := range e.parts {
		e.parts[k] = newPartition(e, k)
	}
	e.wg.Add(1)
	go e.connect()
	return e, nil
}

func (e *Engine) Register(h engine.Handler) { e.handler = h }

// connect makes the client, retrying with backoff, then starts the
// partitions' subscribers and the idle sweeper.
func (e *Engine) connect() {
	defer e.wg.Done()
	for b := newBackoff(); ; {
		opt := e.o.Client
		c, err := rueidis.NewClient(opt)
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), e.o.OpTimeout)
			err = c.Do(ctx, c.B().Ping().Build()).Error()
			cancel()
			if err != nil {
				c.Close()
			}
		}
		if err == nil {
			e.client.Store(&c)
			e.noteError(nil)
			break
		}
		e.noteError(fmt.Errorf("connecting: %w", err))
		if !b.wait(e.stop) {
			return
		}
	}
	for _, p := range e.parts {
		e.wg.Add(1)
		go p.run()
	}
	if e.o.Limits.IdleExpiry > 0 {
		e.wg.Add(1)
		go e.sweep()
	}
}

// Stop closes the connections. Channels stay in Redis.
func (e *Engine) Stop() {
	select {
	case <-e.stop:
		return
	default:
		close(e.stop)
	}
	e.wg.Wait()
	if c := e.client.Load(); c != nil {
		(*c).Close()
	}
}

func (e *Engine) Limits() engine.Limits { return e.Live(e.o.Limits) }

// Status is ready when the client is connected and every partition's
// PUB/SUB answered its last probe in time.
func (e *Engine) Status() engine.Status {
	st := engine.Status{Broker: "redis", Ready: e.client.Load() != nil}
	var rtt time.Duration
	for _, p := range e.parts {
		ready, r, n := p.health()
		st.Ready = st.Ready && ready
		rtt = max(rtt, r)
		st.Subscriptions += n
	}
	st.RTT = rtt
	e.mu.Lock()
	st.LastError = e.lastErr
	e.mu.Unlock()
	return st
}

// noteError records the last failure (nil: a success clears it).
func (e *Engine) noteError(err error) {
	e.mu.Lock()
	if err == nil {
		e.lastErr = ""
		e.mu.Unlock()
		return
	}
	e.lastErr = err.Error()
	// An outage fails every operation and every partition's reconnect:
	// a line a second says so without flooding the log.
	now := time.Now()
	if now.Sub(e.loggedAt) < time.Second {
		e.suppressed++
		e.mu.Unlock()
		return
	}
	suppressed := e.suppressed
	e.loggedAt, e.suppressed = now, 0
	e.mu.Unlock()
	e.o.Logger.Warn("redis engine failure", "err", err, "failures_not_logged_since_last", suppressed)
}

// do runs fn with the client and a bounded context, and turns a backend
// failure into engine.ErrUnavailable.
func (e *Engine) do(ctx context.Context, what string, fn func(ctx context.Context, c rueidis.Client) error) error {
	c := e.client.Load()
	if c == nil {
		return fmt.Errorf("%s: not connected to redis: %w", what, engine.ErrUnavailable)
	}
	opCtx, cancel := context.WithTimeout(ctx, e.o.OpTimeout)
	defer cancel()
	err := fn(opCtx, *c)
	if err == nil || errors.Is(err, engine.ErrNotFound) || errors.Is(err, engine.ErrNameTaken) ||
		errors.Is(err, engine.ErrTooManyVirtualChannels) {
		return err
	}
	if ctx.Err() != nil {
		// The caller gave up (a publisher hung up): not Redis's failure.
		return fmt.Errorf("%s: %w", what, err)
	}
	err = fmt.Errorf("%s: %w: %w", what, engine.ErrUnavailable, err)
	e.noteError(err)
	return err
}

// Keys.

func (e *Engine) registry() string { return e.o.Prefix + ":{r}:channels" }

// markKey is partition k's boot mark: random, set when Redis has none.
// A watched channel missing from Redis under the mark it was found under
// was closed; under another, Redis lost it. One per partition, in the
// partition's slot: a Cluster master that lost its data alone changes the
// marks of its own partitions, and the history script reads a channel and
// its mark in one step.
func (e *Engine) markKey(k int) string { return e.tag(k) + "boot" }

func partitionOf(id string) int {
	h := fnv.New32a()
	h.Write([]byte(id))
	return int(h.Sum32() % Partitions)
}

func (e *Engine) tag(k int) string { return e.o.Prefix + ":{p" + strconv.Itoa(k) + "}:" }

// keys returns channel id's meta key, Stream key and PUB/SUB channel.
func (e *Engine) keys(id string) (meta, stream, pubsub string) {
	t := e.tag(partitionOf(id))
	return t + "m:" + id, t + "s:" + id, t + "p:" + id
}

// Channels.

func (e *Engine) Create(ctx context.Context, name string) (string, error) {
	if name != "" && !engine.ValidName(name) {
		return "", engine.ErrInvalidName
	}
	limit := e.MaxChannels()
	var id string
	err := e.do(ctx, "create", func(ctx context.Context, c rueidis.Client) error {
		for {
			id = name
			if id == "" {
				id = engine.RandomString(16)
			}
			r, err := registerScript.Exec(ctx, c, []string{e.registry()}, []string{id, strconv.Itoa(limit)}).ToString()
			if err != nil {
				return err
			}
			switch r {
			case "taken":
				if name == "" {
					continue // a user named a channel like a generated id
				}
				return engine.ErrNameTaken
			case "full":
				return engine.ErrTooManyVirtualChannels
			}
			meta, stream, _ := e.keys(id)
			if err := makeChannelScript.Exec(ctx, c, []string{meta, stream}, []string{engine.RandomString(6), "0"}).Error(); err != nil {
				// Give the name back; if that fails too, the idle sweep
				// (or a later Close) clears it.
				_ = c.Do(context.WithoutCancel(ctx), c.B().Zrem().Key(e.registry()).Member(id).Build()).Error()
				return err
			}
			return nil
		}
	})
	if err != nil {
		return "", err
	}
	return id, nil
}

func (e *Engine) Close(ctx context.Context, id string) error {
	return e.do(ctx, "close", func(ctx context.Context, c rueidis.Client) error {
		meta, stream, ch := e.keys(id)
		r, err := closeScript.Exec(ctx, c, []string{meta, stream}, []string{ch, ""}).ToString()
		if err != nil {
			return err
		}
		if r != "ended" {
			return engine.ErrNotFound
		}
		return c.Do(ctx, c.B().Zrem().Key(e.registry()).Member(id).Build()).Error()
	})
}

func (e *Engine) Publish(ctx context.Context, id string, payload []byte, tracker any) (engine.Position, error) {
	p := e.parts[partitionOf(id)]
	token := e.node + "." + strconv.FormatUint(e.seq.Add(1), 36)
	// Only a channel this process listens on hands the publication back;
	// then Publish waits for it, so the hub learns what became of it.
	done := p.expect(id, token, tracker)
	defer p.forget(token)
	var pos engine.Position
	err := e.do(ctx, "publish", func(ctx context.Context, c rueidis.Client) error {
		meta, stream, ch := e.keys(id)
		ttl := max(e.HistoryTTL().Milliseconds(), 0)
		r, err := publishScript.Exec(ctx, c, []string{meta, stream}, []string{
			string(payload), strconv.Itoa(e.HistorySize()), strconv.FormatInt(ttl, 10), token, ch}).ToArray()
		if rueidis.IsRedisNil(err) {
			return engine.ErrNotFound
		}
		if err != nil {
			return err
		}
		if len(r) != 2 {
			return fmt.Errorf("publish script answered %d values", len(r))
		}
		off, err := r[0].AsInt64()
		if err != nil {
			return err
		}
		epoch, err := r[1].ToString()
		if err != nil {
			return err
		}
		pos = engine.Position{Offset: uint64(off), Epoch: epoch}
		return nil
	})
	if err != nil {
		return engine.Position{}, err
	}
	if done != nil {
		// Bounded: a PUB/SUB that lost it is noticed by the probe, and the
		// catch-up hands it without the tracker.
		t := time.NewTimer(e.o.ProbeTimeout)
		defer t.Stop()
		select {
		case <-done:
		case <-ctx.Done():
		case <-t.C:
		}
	}
	return pos, nil
}

// history reads channel id's position and kept messages from offset from
// on (none if from is 0), dropping those older than the history TTL.
func (e *Engine) history(ctx context.Context, c rueidis.Client, id string, from uint64) (top engine.Position, pubs []engine.Publication, err error) {
	top, pubs, _, err = e.markedHistory(ctx, c, id, from)
	return top, pubs, err
}

// markedHistory is history with the boot mark of the channel's partition
// read in the same step: ErrNotFound comes with the mark too.
func (e *Engine) markedHistory(ctx context.Context, c rueidis.Client, id string, from uint64) (top engine.Position, pubs []engine.Publication, mark string, err error) {
	meta, stream, _ := e.keys(id)
	arg := ""
	if from > 0 {
		arg = strconv.FormatUint(from, 10)
	}
	r, err := historyScript.Exec(ctx, c, []string{meta, stream, e.markKey(partitionOf(id))}, []string{arg, engine.RandomString(6)}).ToArray()
	if err != nil {
		return top, nil, "", err
	}
	if len(r) != 1 && len(r) != 5 {
		return top, nil, "", fmt.Errorf("history script answered %d values", len(r))
	}
	if mark, err = r[0].ToString(); err != nil {
		return top, nil, "", err
	}
	if len(r) == 1 {
		return top, nil, mark, engine.ErrNotFound
	}
	if top.Epoch, err = r[1].ToString(); err != nil {
		return top, nil, "", err
	}
	t, err := r[2].ToString()
	if err != nil {
		return top, nil, "", err
	}
	if top.Offset, err = strconv.ParseUint(t, 10, 64); err != nil {
		return top, nil, "", fmt.Errorf("channel %q: top offset %q: %w", id, t, err)
	}
	nowS, err := r[3].ToString()
	if err != nil {
		return top, nil, "", err
	}
	now, _ := strconv.ParseInt(nowS, 10, 64)
	entries, err := r[4].AsXRange()
	if err != nil {
		return top, nil, "", err
	}
	oldest := now - e.HistoryTTL().Milliseconds()
	size := e.HistorySize()
	if len(entries) > size {
		entries = entries[len(entries)-size:] // the size was lowered since they were kept
	}
	for _, x := range entries {
		at, _ := strconv.ParseInt(x.FieldValues["t"], 10, 64)
		if at < oldest {
			continue // expired
		}
		off, _, _ := cutDash(x.ID)
		pubs = append(pubs, engine.Publication{
			Position: engine.Position{Offset: off, Epoch: top.Epoch},
			Payload:  []byte(x.FieldValues["d"]),
			Tracker:  x.FieldValues["k"], // the token; the partition turns it into a tracker
		})
	}
	return top, pubs, mark, nil
}

func cutDash(id string) (uint64, string, bool) {
	for i := 0; i < len(id); i++ {
		if id[i] == '-' {
			n, err := strconv.ParseUint(id[:i], 10, 64)
			return n, id[i+1:], err == nil
		}
	}
	return 0, "", false
}

func (e *Engine) History(ctx context.Context, id string, since *engine.Position) (engine.History, error) {
	var h engine.History
	err := e.do(ctx, "history", func(ctx context.Context, c rueidis.Client) error {
		var from uint64
		if since != nil {
			from = since.Offset + 1
		}
		top, pubs, err := e.history(ctx, c, id, from)
		if err != nil {
			return err
		}
		h.Top = top
		if since == nil || *since == top {
			return nil
		}
		if since.Epoch != top.Epoch || since.Offset > top.Offset {
			// Another epoch, or a position it never had: all it holds.
			if _, pubs, err = e.history(ctx, c, id, 1); err != nil {
				return err
			}
			h.Gap = true
		} else if len(pubs) == 0 || pubs[0].Position.Offset > since.Offset+1 {
			h.Gap = true // trimmed or expired
		}
		for i := range pubs {
			pubs[i].Tracker = nil
		}
		h.Publications = pubs
		return nil
	})
	return h, err
}

func (e *Engine) Info(ctx context.Context, id string) (engine.ChannelInfo, error) {
	var info engine.ChannelInfo
	err := e.do(ctx, "info", func(ctx context.Context, c rueidis.Client) error {
		top, pubs, err := e.history(ctx, c, id, 1)
		info = engine.ChannelInfo{Position: top, HistoryLen: len(pubs)}
		return err
	})
	return info, err
}

func (e *Engine) Len(ctx context.Context) (int, error) {
	var n int64
	err := e.do(ctx, "count channels", func(ctx context.Context, c rueidis.Client) (err error) {
		n, err = c.Do(ctx, c.B().Zcard().Key(e.registry()).Build()).AsInt64()
		return err
	})
	return int(n), err
}

func (e *Engine) Subscribe(ctx context.Context, id string) (engine.Position, error) {
	return e.parts[partitionOf(id)].subscribe(ctx, id)
}

func (e *Engine) Unsubscribe(ctx context.Context, id, epoch string) error {
	return e.parts[partitionOf(id)].unsubscribe(ctx, id, epoch)
}

// Receiving is false while id's partition's PUB/SUB connection is down or
// its last probe is late, as for readiness (Status).
func (e *Engine) Receiving(id string) bool {
	ready, _, _ := e.parts[partitionOf(id)].health()
	return ready
}

// backoff waits 100 ms, doubling to 5 s, each wait jittered by up to half.
type backoff struct{ d time.Duration }

func newBackoff() *backoff { return &backoff{d: 100 * time.Millisecond} }

// wait sleeps for the next period; false if stop closed first.
func (b *backoff) wait(stop <-chan struct{}) bool {
	var j [1]byte
	_, _ = rand.Read(j[:])
	d := b.d/2 + b.d*time.Duration(j[0])/512
	b.d = min(2*b.d, 5*time.Second)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-stop:
		return false
	case <-t.C:
		return true
	}
}
