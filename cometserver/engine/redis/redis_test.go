package redis

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/cometop/comet-operator/cometserver/engine"
	"github.com/cometop/comet-operator/test/bounded"
	"github.com/cometop/comet-operator/test/redistest"
	"github.com/cometop/comet-operator/test/syncbuffer"
)

var bg = context.Background()

func ptr(n int) *int { return &n }

// recorder is a handler that keeps what it was handed, per channel.
type recorder struct {
	mu   sync.Mutex
	pubs map[string][]engine.Publication
	ends map[string][]string
	log  syncbuffer.Buffer // the engine's log
}

func newRecorder() *recorder {
	return &recorder{pubs: map[string][]engine.Publication{}, ends: map[string][]string{}}
}

func (r *recorder) HandlePublication(id string, p engine.Publication) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pubs[id] = append(r.pubs[id], p)
}

func (r *recorder) HandleTop(string, engine.Position) {}

func (r *recorder) HandleEnd(id, epoch string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ends[id] = append(r.ends[id], epoch)
}

// got is what channel id was handed, as "offset:payload" in order.
func (r *recorder) got(id string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var s []string
	for _, p := range r.pubs[id] {
		s = append(s, fmt.Sprintf("%d:%s", p.Position.Offset, p.Payload))
	}
	return strings.Join(s, " ")
}

func (r *recorder) ended(id string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.ends[id]...)
}

// backend is a Redis the tests run against: its URL-less client options.
type backend struct {
	name   string
	client rueidis.ClientOption
	server *redistest.Server // standalone only
}

func backends(t *testing.T) []backend {
	s := redistest.Start(t)
	c := redistest.StartCluster(t, 3)
	return []backend{
		{name: "standalone", client: rueidis.ClientOption{InitAddress: []string{s.Addr}}, server: s},
		{name: "cluster", client: rueidis.ClientOption{InitAddress: c.Addrs()}},
	}
}

// newEngine starts an engine (one server of a fleet) and waits until it
// is ready.
func newEngine(t *testing.T, b backend, prefix string, l engine.Limits) (*Engine, *recorder) {
	t.Helper()
	r := newRecorder()
	e, err := New(Options{Client: b.client, Prefix: prefix, Limits: l,
		ProbeInterval: 200 * time.Millisecond, ProbeTimeout: time.Second,
		Logger: slog.New(slog.NewTextHandler(&r.log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	e.Register(r)
	t.Cleanup(e.Stop)
	bounded.Wait(t, "the engine to be ready", 15*time.Second, func() bool { return e.Status().Ready })
	return e, r
}

var history = engine.Limits{HistorySize: 10, HistoryTTL: time.Minute}

func TestChannelsAreShared(t *testing.T) {
	bounded.Test(t, 2*time.Minute)
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			a, _ := newEngine(t, b, "shared", engine.Limits{MaxVirtualChannels: ptr(3), HistorySize: 10, HistoryTTL: time.Minute})
			c, _ := newEngine(t, b, "shared", engine.Limits{MaxVirtualChannels: ptr(3), HistorySize: 10, HistoryTTL: time.Minute})
			if _, err := a.Create(bg, "room"); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Create(bg, "room"); !errors.Is(err, engine.ErrNameTaken) {
				t.Fatalf("a name taken on one server, created on another: %v, want ErrNameTaken", err)
			}
			if _, err := c.Create(bg, "bad:name"); !errors.Is(err, engine.ErrInvalidName) {
				t.Fatalf("invalid name: %v", err)
			}
			gen, err := c.Create(bg, "")
			if err != nil || len(gen) < 16 {
				t.Fatalf("generated id %q: %v", gen, err)
			}
			if _, err := a.Create(bg, "third"); err != nil {
				t.Fatal(err)
			}
			// One limit for the fleet: three live, on two servers.
			if _, err := c.Create(bg, "fourth"); !errors.Is(err, engine.ErrTooManyVirtualChannels) {
				t.Fatalf("a fourth channel past a fleet-wide limit of 3: %v", err)
			}
			if n, err := c.Len(bg); err != nil || n != 3 {
				t.Fatalf("Len = %d, %v; want 3", n, err)
			}
			pos, err := c.Publish(bg, "room", []byte("hello"), nil)
			if err != nil || pos.Offset != 1 || !engine.ValidEpoch(pos.Epoch) {
				t.Fatalf("publish on the other server: %v %v", pos, err)
			}
			info, err := a.Info(bg, "room")
			if err != nil || info.Position != pos || info.HistoryLen != 1 {
				t.Fatalf("info on the first server: %+v %v; want position %v and 1 kept", info, err, pos)
			}
			if err := c.Close(bg, "room"); err != nil {
				t.Fatal(err)
			}
			for _, e := range []*Engine{a, c} {
				if _, err := e.Publish(bg, "room", []byte("x"), nil); !errors.Is(err, engine.ErrNotFound) {
					t.Fatalf("publish to a closed channel: %v", err)
				}
				if _, err := e.Subscribe(bg, "room"); !errors.Is(err, engine.ErrNotFound) {
					t.Fatalf("subscribe to a closed channel: %v", err)
				}
				if err := e.Close(bg, "room"); !errors.Is(err, engine.ErrNotFound) {
					t.Fatalf("close twice: %v", err)
				}
			}
			// Closing freed a slot of the limit, and the name.
			if _, err := c.Create(bg, "room"); err != nil {
				t.Fatalf("the name again after close: %v", err)
			}
			info, err = a.Info(bg, "room")
			if err != nil || info.Position.Offset != 0 || info.Position.Epoch == pos.Epoch || info.HistoryLen != 0 {
				t.Fatalf("a channel made again: %+v %v; want offset 0, a new epoch, no history", info, err)
			}
			// The limit changed live on both servers: lowered below the
			// fleet's channels it ends none; raised, it admits again.
			for _, e := range []*Engine{a, c} {
				e.SetMaxVirtualChannels(ptr(2))
			}
			if n, err := c.Len(bg); err != nil || n != 3 {
				t.Fatalf("Len after lowering the limit = %d, %v; want 3", n, err)
			}
			if _, err := a.Create(bg, "fourth"); !errors.Is(err, engine.ErrTooManyVirtualChannels) {
				t.Fatalf("over a lowered limit: %v", err)
			}
			for _, e := range []*Engine{a, c} {
				e.SetMaxVirtualChannels(nil)
			}
			if _, err := a.Create(bg, "fourth"); err != nil || a.Limits().MaxVirtualChannels != nil {
				t.Fatalf("no limit: %v, %v", err, a.Limits().MaxVirtualChannels)
			}
		})
	}
}

func TestFanOutAcrossServers(t *testing.T) {
	bounded.Test(t, 2*time.Minute)
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			a, ra := newEngine(t, b, "fan", history)
			c, rc := newEngine(t, b, "fan", history)
			for i := range 20 { // over several partitions
				id := fmt.Sprintf("ch%d", i)
				if _, err := a.Create(bg, id); err != nil {
					t.Fatal(err)
				}
				if _, err := a.Publish(bg, id, []byte("before"), nil); err != nil {
					t.Fatal(err)
				}
				top, err := c.Subscribe(bg, id)
				if err != nil || top.Offset != 1 {
					t.Fatalf("subscribe %s: %v %v", id, top, err)
				}
				if _, err := a.Subscribe(bg, id); err != nil {
					t.Fatal(err)
				}
				// Each server's own publications come back with their
				// tracker before Publish returns; the others' without.
				for j, e := range []*Engine{a, c, a} {
					tracker := fmt.Sprintf("t%d", j)
					if _, err := e.Publish(bg, id, []byte(fmt.Sprint(j)), tracker); err != nil {
						t.Fatal(err)
					}
					own := map[*Engine]*recorder{a: ra, c: rc}[e]
					own.mu.Lock()
					got := own.pubs[id]
					own.mu.Unlock()
					if len(got) == 0 || got[len(got)-1].Tracker != tracker {
						t.Fatalf("%s: the publishing server's handler did not get its tracker %q before Publish returned: %v", id, tracker, got)
					}
				}
				want := "2:0 3:1 4:2"
				bounded.Wait(t, "both servers to get the three", 10*time.Second, func() bool {
					return ra.got(id) == want && rc.got(id) == want
				})
				ra.mu.Lock()
				for _, p := range ra.pubs[id] {
					if p.Tracker != nil && p.Tracker != "t0" && p.Tracker != "t2" {
						t.Errorf("server a got tracker %v of another server", p.Tracker)
					}
				}
				ra.mu.Unlock()
				if err := c.Close(bg, id); err != nil {
					t.Fatal(err)
				}
				bounded.Wait(t, "both servers to hear the end", 10*time.Second, func() bool {
					return len(ra.ended(id)) == 1 && len(rc.ended(id)) == 1
				})
				if ra.ended(id)[0] != top.Epoch {
					t.Fatalf("end of epoch %v, want %s", ra.ended(id), top.Epoch)
				}
			}
			if n := a.Status().Subscriptions; n != 0 {
				t.Fatalf("%d subscriptions left after every channel ended", n)
			}
		})
	}
}

func TestHistoryAndResume(t *testing.T) {
	bounded.Test(t, 2*time.Minute)
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			e, _ := newEngine(t, b, "hist", engine.Limits{HistorySize: 3, HistoryTTL: time.Minute})
			if _, err := e.Create(bg, "h"); err != nil {
				t.Fatal(err)
			}
			var pos []engine.Position
			for i := 1; i <= 5; i++ {
				p, err := e.Publish(bg, "h", []byte(fmt.Sprint(i)), nil)
				if err != nil {
					t.Fatal(err)
				}
				pos = append(pos, p)
			}
			show := func(h engine.History) string {
				var s []string
				for _, p := range h.Publications {
					s = append(s, fmt.Sprintf("%d:%s", p.Position.Offset, p.Payload))
				}
				return fmt.Sprintf("[%s] top=%d gap=%t", strings.Join(s, " "), h.Top.Offset, h.Gap)
			}
			other := engine.Position{Offset: 1, Epoch: "other"}
			for _, tc := range []struct {
				since *engine.Position
				want  string
			}{
				{nil, "[] top=5 gap=false"},
				{&pos[4], "[] top=5 gap=false"},
				{&pos[2], "[4:4 5:5] top=5 gap=false"},
				{&pos[1], "[3:3 4:4 5:5] top=5 gap=false"},
				{&pos[0], "[3:3 4:4 5:5] top=5 gap=true"}, // 2 was trimmed
				{&other, "[3:3 4:4 5:5] top=5 gap=true"},
				{&engine.Position{Offset: 9, Epoch: pos[0].Epoch}, "[3:3 4:4 5:5] top=5 gap=true"},
			} {
				h, err := e.History(bg, "h", tc.since)
				if err != nil || show(h) != tc.want {
					t.Errorf("History since %v = %s, %v; want %s", tc.since, show(h), err, tc.want)
				}
			}
			e.SetHistory(0, time.Minute)
			if _, err := e.Publish(bg, "h", []byte("6"), nil); err != nil {
				t.Fatal(err)
			}
			if h, _ := e.History(bg, "h", &pos[4]); show(h) != "[] top=6 gap=true" {
				t.Fatalf("with history off: %s", show(h))
			}
		})
	}
}

func TestIdleExpiryIsShared(t *testing.T) {
	bounded.Test(t, 2*time.Minute)
	b := backends(t)[0]
	l := engine.Limits{IdleExpiry: 2 * time.Second, HistorySize: 10, HistoryTTL: time.Minute}
	a, _ := newEngine(t, b, "idle", l)
	c, rc := newEngine(t, b, "idle", l)
	for _, id := range []string{"quiet", "watched"} {
		if _, err := a.Create(bg, id); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Subscribe(bg, "watched"); err != nil {
		t.Fatal(err)
	}
	bounded.Wait(t, "the quiet channel to expire", 10*time.Second, func() bool {
		_, err := a.Info(bg, "quiet")
		return errors.Is(err, engine.ErrNotFound)
	})
	// A listener on another server keeps its channel alive: 4 s is past
	// 1.5 times the expiry, when an idle channel is surely swept.
	time.Sleep(4 * time.Second)
	if _, err := a.Info(bg, "watched"); err != nil {
		t.Fatalf("a channel with a listener expired: %v", err)
	}
	if n, _ := a.Len(bg); n != 1 {
		t.Fatalf("Len = %d after expiry, want 1", n)
	}
	if err := c.Unsubscribe(bg, "watched", mustEpoch(t, a, "watched")); err != nil {
		t.Fatal(err)
	}
	bounded.Wait(t, "the channel to expire once its listener left", 10*time.Second, func() bool {
		_, err := a.Info(bg, "watched")
		return errors.Is(err, engine.ErrNotFound)
	})
	if len(rc.ended("watched")) != 0 {
		t.Fatalf("an end handed after unsubscribing: %v", rc.ended("watched"))
	}
}

func mustEpoch(t *testing.T, e *Engine, id string) string {
	t.Helper()
	info, err := e.Info(bg, id)
	if err != nil {
		t.Fatal(err)
	}
	return info.Position.Epoch
}

// TestPubSubOutageLosesNothing kills the servers' PUB/SUB connections
// while another server publishes: the subscriber reconnects and catches
// up from the Stream, in order, nothing twice.
func TestPubSubOutageLosesNothing(t *testing.T) {
	bounded.Test(t, 2*time.Minute)
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			pub, _ := newEngine(t, b, "outage", history)
			sub, rs := newEngine(t, b, "outage", history)
			if _, err := pub.Create(bg, "o"); err != nil {
				t.Fatal(err)
			}
			if _, err := sub.Subscribe(bg, "o"); err != nil {
				t.Fatal(err)
			}
			var want []string
			for i := 1; i <= 8; i++ {
				if i == 3 {
					killPubSub(t, b)
				}
				if _, err := pub.Publish(bg, "o", []byte(fmt.Sprint(i)), nil); err != nil {
					t.Fatal(err)
				}
				want = append(want, fmt.Sprintf("%d:%d", i, i))
			}
			bounded.Wait(t, "the subscriber to have all 8 once, in order", 15*time.Second, func() bool {
				return rs.got("o") == strings.Join(want, " ")
			})
		})
	}
}

// killPubSub closes every PUB/SUB connection of every node.
func killPubSub(t *testing.T, b backend) {
	t.Helper()
	killed := 0
	for _, addr := range b.client.InitAddress {
		n, err := redistest.Do(addr, "CLIENT", "KILL", "TYPE", "pubsub")
		if err != nil {
			t.Fatal(err)
		}
		k, _ := strconv.Atoi(n)
		killed += k
	}
	if killed < 2*Partitions {
		t.Fatalf("killed %d pub/sub connections, want the two servers' %d", killed, 2*Partitions)
	}
}

// pubSub starts two engines on b, a publisher and a subscriber of channel
// id, which holds one message, first; it returns the subscriber's handler
// and the position it subscribed at.
func pubSub(t *testing.T, b backend, id, first string) (pub, sub *Engine, rs *recorder, top engine.Position) {
	t.Helper()
	pub, _ = newEngine(t, b, id, history)
	sub, rs = newEngine(t, b, id, history)
	if _, err := pub.Create(bg, id); err != nil {
		t.Fatal(err)
	}
	top, err := sub.Subscribe(bg, id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pub.Publish(bg, id, []byte(first), nil); err != nil {
		t.Fatal(err)
	}
	return pub, sub, rs, top
}

func TestRedisRestart(t *testing.T) {
	bounded.Test(t, 2*time.Minute)
	b := backends(t)[0]
	pub, sub, rs, top := pubSub(t, b, "r", "1")

	// Same data: down, not ready, refusing; back, nothing lost.
	b.server.RestartKeepingData(0)
	if _, err := pub.Publish(bg, "r", []byte("2"), nil); err != nil {
		// The client may not have noticed yet; once it has, it answers
		// ErrUnavailable until reconnected.
		if !errors.Is(err, engine.ErrUnavailable) {
			t.Fatalf("publish during a restart: %v, want ErrUnavailable", err)
		}
		bounded.Wait(t, "publish to work again", 15*time.Second, func() bool {
			_, err := pub.Publish(bg, "r", []byte("2"), nil)
			return err == nil
		})
	}
	bounded.Wait(t, "the subscriber to get both", 15*time.Second, func() bool { return rs.got("r") == "1:1 2:2" })
	bounded.Wait(t, "both to be ready", 15*time.Second, func() bool { return pub.Status().Ready && sub.Status().Ready })

	// Empty: every watched channel is made again under a new epoch (not
	// only the first one caught up); a resume from the old one is told of
	// the gap.
	var qTop engine.Position
	bounded.Wait(t, "a second watched channel", 15*time.Second, func() bool {
		// The first command on a connection the restart broke may fail
		// (ErrUnavailable), as a client's poll would: it is tried again.
		if _, err := pub.Create(bg, "q"); err != nil && !errors.Is(err, engine.ErrNameTaken) {
			return false
		}
		var err error
		qTop, err = sub.Subscribe(bg, "q")
		return err == nil
	})
	logBefore := len(rs.log.String())
	b.server.Restart()
	for id, old := range map[string]string{"r": top.Epoch, "q": qTop.Epoch} {
		bounded.Wait(t, "the watched channel "+id+" to be made again", 20*time.Second, func() bool {
			info, err := pub.Info(bg, id)
			return err == nil && info.Position.Epoch != old
		})
	}
	for _, id := range []string{"r", "q"} {
		if len(rs.ended(id)) != 0 {
			t.Fatalf("watched channel %s ended by an empty restart: %v", id, rs.ended(id))
		}
	}
	// The log says what happened, without naming every channel.
	bounded.Wait(t, "the subscriber's log to count both channels made again", 10*time.Second, func() bool {
		made, ended := missingLogged(rs.log.String()[logBefore:])
		return made >= 2 && ended == 0
	})
	pos, err := pub.Publish(bg, "r", []byte("3"), nil)
	if err != nil || pos.Offset != 1 {
		t.Fatalf("publish after an empty restart: %v %v", pos, err)
	}
	bounded.Wait(t, "the subscriber to get it", 15*time.Second, func() bool { return rs.got("r") == "1:1 2:2 1:3" })
	h, err := pub.History(bg, "r", &engine.Position{Offset: 2, Epoch: top.Epoch})
	if err != nil || !h.Gap || len(h.Publications) != 1 {
		t.Fatalf("resume from the old epoch: %+v %v; want a gap and the one message", h, err)
	}
}

// An outage fails every operation: the log gets a line a second, with
// the count of failures it did not log.
func TestFailuresAreLoggedALineASecond(t *testing.T) {
	var log syncbuffer.Buffer
	e := &Engine{o: Options{Logger: slog.New(slog.NewTextHandler(&log, nil))}}
	for i := range 100 {
		e.noteError(fmt.Errorf("failure %d", i))
	}
	time.Sleep(1100 * time.Millisecond)
	e.noteError(errors.New("failure 100"))
	lines := strings.Split(strings.TrimSpace(log.String()), "\n")
	if len(lines) != 2 ||
		!strings.Contains(lines[0], `err="failure 0" failures_not_logged_since_last=0`) ||
		!strings.Contains(lines[1], `err="failure 100" failures_not_logged_since_last=99`) {
		t.Errorf("log:\n%s", log.String())
	}
	if e.lastErr != "failure 100" { // what comet:status says
		t.Errorf("last error %q", e.lastErr)
	}
}

// missingLogged sums the channels an engine's log says it made again and
// ended on catching up.
func missingLogged(log string) (made, ended int) {
	for _, m := range regexp.MustCompile(`made_again=(\d+) ended=(\d+)`).FindAllStringSubmatch(log, -1) {
		a, _ := strconv.Atoi(m[1])
		b, _ := strconv.Atoi(m[2])
		made, ended = made+a, ended+b
	}
	return made, ended
}

// A channel closed while a server's PUB/SUB was down (its end never came
// through) is found missing when the server catches up, under the same
// boot mark: it ends there, and the one beside it that was not closed
// stays. The close is made as Close makes it, without its end message,
// so that only the catch-up can tell.
func TestChannelClosedWhileAwayEnds(t *testing.T) {
	bounded.Test(t, 2*time.Minute)
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			pub, _ := newEngine(t, b, "away", history)
			sub, rs := newEngine(t, b, "away", history)
			for _, id := range []string{"gone", "kept"} {
				if _, err := pub.Create(bg, id); err != nil {
					t.Fatal(err)
				}
				if _, err := sub.Subscribe(bg, id); err != nil {
					t.Fatal(err)
				}
			}
			c := *pub.client.Load()
			meta, stream, _ := pub.keys("gone")
			for _, cmd := range []rueidis.Completed{
				c.B().Del().Key(meta, stream).Build(), // one slot
				c.B().Zrem().Key(pub.registry()).Member("gone").Build(),
			} {
				if err := c.Do(bg, cmd).Error(); err != nil {
					t.Fatal(err)
				}
			}
			killPubSub(t, b) // the subscriber reconnects and catches up
			bounded.Wait(t, "the closed channel to end at the subscriber", 15*time.Second, func() bool { return len(rs.ended("gone")) == 1 })
			bounded.Wait(t, "the catch-up to log it", 10*time.Second, func() bool {
				made, ended := missingLogged(rs.log.String())
				return made == 0 && ended == 1
			})
			if _, err := pub.Publish(bg, "kept", []byte("still"), nil); err != nil {
				t.Fatal(err)
			}
			bounded.Wait(t, "the other channel to go on", 15*time.Second, func() bool { return rs.got("kept") == "1:still" })
			if e := rs.ended("kept"); len(e) != 0 {
				t.Errorf("the channel not closed ended: %v", e)
			}
		})
	}
}

func TestHungRedisIsNotReady(t *testing.T) {
	bounded.Test(t, 2*time.Minute)
	b := backends(t)[0]
	e, _ := newEngine(t, b, "hung", history)
	if _, err := e.Create(bg, "w"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Subscribe(bg, "w"); err != nil || !e.Receiving("w") {
		t.Fatalf("subscribed with Redis up: %v, receiving %v", err, e.Receiving("w"))
	}
	b.server.Pause()
	bounded.Wait(t, "a hung Redis to make the engine not ready", 10*time.Second, func() bool { return !e.Status().Ready })
	bounded.Wait(t, "the subscription to count as not receiving", 10*time.Second, func() bool { return !e.Receiving("w") })
	if _, err := e.Create(bg, "x"); !errors.Is(err, engine.ErrUnavailable) {
		t.Errorf("create with Redis hung: %v", err)
	}
	if st := e.Status(); st.LastError == "" {
		t.Errorf("no last error reported: %+v", st)
	}
	b.server.Resume()
	bounded.Wait(t, "the engine to be ready again", 15*time.Second, func() bool { return e.Status().Ready })
	if !e.Receiving("w") {
		t.Error("the subscription does not count as receiving once the engine is ready again")
	}
	// Another name: the create refused while Redis hung may still have
	// been applied once it went on (its command was sent, its answer
	// late), as any write whose answer was lost.
	if _, err := e.Create(bg, "y"); err != nil {
		t.Fatal(err)
	}
}

// A Redis that comes back from an older save has lost writes a server
// handed out; the watched channel gets a new epoch, so that no offset
// names two messages, and a resume from the old epoch is a gap.
func TestLostWritesGetANewEpoch(t *testing.T) {
	bounded.Test(t, 2*time.Minute)
	b := backends(t)[0]
	pub, _, rs, top := pubSub(t, b, "l", "kept")
	b.server.RestartLosingWrites(func() {
		for _, m := range []string{"lost1", "lost2"} {
			if _, err := pub.Publish(bg, "l", []byte(m), nil); err != nil {
				t.Fatal(err)
			}
		}
		bounded.Wait(t, "the subscriber to get all three", 10*time.Second, func() bool { return rs.got("l") == "1:kept 2:lost1 3:lost2" })
	})
	bounded.Wait(t, "a new epoch for the channel", 20*time.Second, func() bool {
		info, err := pub.Info(bg, "l")
		return err == nil && info.Position.Epoch != top.Epoch
	})
	pos, err := pub.Publish(bg, "l", []byte("new"), nil)
	if err != nil || pos.Offset != 2 {
		t.Fatalf("publish after the loss: %v %v; want offset 2 of the new epoch", pos, err)
	}
	bounded.Wait(t, "the subscriber to get it", 10*time.Second, func() bool { return rs.got("l") == "1:kept 2:lost1 3:lost2 2:new" })
	rs.mu.Lock()
	last := rs.pubs["l"][3].Position
	rs.mu.Unlock()
	if last.Epoch == top.Epoch {
		t.Fatalf("the message after the loss came in the old epoch: %v", last)
	}
	if h, err := pub.History(bg, "l", &engine.Position{Offset: 3, Epoch: top.Epoch}); err != nil || !h.Gap {
		t.Fatalf("resume from the old epoch: %+v %v; want a gap", h, err)
	}
}

// The connections' buffers are smaller than rueidis's (connBuffer): a
// message several times their size still goes through whole, live to
// another server and from the history.
func TestMessagesLargerThanTheConnectionBuffers(t *testing.T) {
	bounded.Test(t, 2*time.Minute)
	payload := make([]byte, 4*connBuffer+1)
	for i := range payload {
		payload[i] = byte('a' + i%26)
	}
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			a, _ := newEngine(t, b, "big", history)
			c, rc := newEngine(t, b, "big", history)
			if a.o.Client.ReadBufferEachConn != connBuffer || a.o.Client.WriteBufferEachConn != connBuffer {
				t.Fatalf("buffers %d and %d, want %d", a.o.Client.ReadBufferEachConn, a.o.Client.WriteBufferEachConn, connBuffer)
			}
			if _, err := a.Create(bg, "c"); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Subscribe(bg, "c"); err != nil {
				t.Fatal(err)
			}
			pos, err := a.Publish(bg, "c", payload, nil)
			if err != nil {
				t.Fatal(err)
			}
			bounded.Wait(t, "the other server to get the message", 10*time.Second, func() bool {
				rc.mu.Lock()
				defer rc.mu.Unlock()
				return len(rc.pubs["c"]) == 1
			})
			rc.mu.Lock()
			live := rc.pubs["c"][0]
			rc.mu.Unlock()
			if live.Position != pos || !bytes.Equal(live.Payload, payload) {
				t.Fatalf("live: position %v, %d bytes; want %v, the %d bytes published", live.Position, len(live.Payload), pos, len(payload))
			}
			h, err := c.History(bg, "c", &engine.Position{Offset: 0, Epoch: pos.Epoch})
			if err != nil {
				t.Fatal(err)
			}
			if len(h.Publications) != 1 || !bytes.Equal(h.Publications[0].Payload, payload) {
				t.Fatalf("history: %d publications, want the one published whole", len(h.Publications))
			}
		})
	}
}
