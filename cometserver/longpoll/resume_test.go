package longpoll

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/cometop/comet-operator/cometserver/channels"
	"github.com/cometop/comet-operator/cometserver/engine"
)

// The resume extension, PROTOCOL.md section 7, over real sockets in both
// ways of waiting.

// resumeBody is a resuming request for ids, with "id:position" lines.
func resumeBody(ids []string, positions ...string) string {
	return "registration=" + url.QueryEscape(strings.Join(ids, "\n")) +
		"&resume=" + url.QueryEscape(strings.Join(positions, "\n"))
}

// position is channel id's current position, as the engine gives it.
func (e *env) position(id string) string {
	e.t.Helper()
	info, err := e.reg.Info(context.Background(), id)
	if err != nil {
		e.t.Fatal(err)
	}
	return info.Position
}

// epoch is the epoch of channel id.
func (e *env) epoch(id string) string {
	_, ep, _ := strings.Cut(e.position(id), ".")
	return ep
}

func expectReply(t *testing.T, what string, r reply, status int, body string) {
	t.Helper()
	if r.status != status || r.body != body {
		t.Fatalf("%s: %d %q, want %d %q", what, r.status, r.body, status, body)
	}
}

func TestResumeGetsWhatTheHistoryHolds(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		e := newEnv(t, m, time.Minute, Options{})
		e.create("c")
		ep := e.epoch("c")
		e.write("c", "before") // nobody resuming has a position before it

		// Without a position: the request starts from now, and learns
		// the position after what it got.
		c := e.pollAsync(resumeBody([]string{"c"}))
		e.waitListeners("c", 1)
		e.write("c", "m2")
		expectReply(t, "a first resuming poll", receive(t, c), 200, "c:m2\nc:@2."+ep)

		// Between two polls: kept, and given at once to the next one.
		e.write("c", "m3")
		e.write("c", "m 4")
		expectReply(t, "a poll resuming from 2", e.poll(resumeBody([]string{"c"}, "c:2."+ep)),
			200, "c:m3\nc:m%204\nc:@4."+ep)

		// Resuming from the top: it waits, and a live message follows.
		c = e.pollAsync(resumeBody([]string{"c"}, "c:4."+ep))
		e.waitListeners("c", 1)
		e.write("c", "m5")
		expectReply(t, "a poll at the top", receive(t, c), 200, "c:m5\nc:@5."+ep)

		// The same position twice gives the same messages: a reply lost
		// on the way (an aborted request) is fetched again.
		for range 2 {
			expectReply(t, "a poll resuming from 3", e.poll(resumeBody([]string{"c"}, "c:3."+ep)),
				200, "c:m%204\nc:m5\nc:@5."+ep)
		}

		// A request that does not resume gets none of it: it waits.
		c = e.pollAsync("registration=c")
		e.waitListeners("c", 1)
		e.write("c", "m6")
		expectReply(t, "a poll that does not resume", receive(t, c), 200, "c:m6")
	})
}

// A resuming poll with nothing to get waits as any other, and its timeout
// reply carries the positions only.
func TestResumeTimeoutCarriesPositions(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		e := newEnv(t, m, 200*time.Millisecond, Options{})
		e.create("a")
		e.create("b")
		e.write("b", "x")
		pa, pb := e.position("a"), e.position("b")
		expectReply(t, "timeout", e.poll(resumeBody([]string{"a", "b"}, "b:"+pb)), 200, "a:@"+pa+"\nb:@"+pb)
		expectReply(t, "timeout without resume", e.poll("registration=a%0Ab"), 200, "")
	})
}

// Every kind of gap is said, with what the history does hold and the
// position to go on from.
func TestResumeGaps(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		e := newEnvWith(t, envConfig{mode: m, timeout: time.Minute,
			limits: &engine.Limits{HistorySize: 2, HistoryTTL: time.Minute}})
		e.create("c")
		ep := e.epoch("c")
		for _, msg := range []string{"1", "2", "3", "4", "5"} {
			e.write("c", msg)
		}
		// Trimmed: 3 is gone, 4 and 5 are held.
		expectReply(t, "trimmed", e.poll(resumeBody([]string{"c"}, "c:2."+ep)), 200, "c:#GAP\nc:4\nc:5\nc:@5."+ep)
		// Just covered: no gap.
		expectReply(t, "covered", e.poll(resumeBody([]string{"c"}, "c:3."+ep)), 200, "c:4\nc:5\nc:@5."+ep)
		// A position this channel never had (ahead of it).
		expectReply(t, "ahead", e.poll(resumeBody([]string{"c"}, "c:9."+ep)), 200, "c:#GAP\nc:4\nc:5\nc:@5."+ep)

		// Another epoch: the channel was closed and made again.
		if err := e.reg.Close(context.Background(), "c"); err != nil {
			t.Fatal(err)
		}
		e.create("c")
		ep2 := e.epoch("c")
		if ep2 == ep {
			t.Fatal("a channel made again kept its epoch")
		}
		e.write("c", "new")
		expectReply(t, "another epoch", e.poll(resumeBody([]string{"c"}, "c:5."+ep)), 200, "c:#GAP\nc:new\nc:@1."+ep2)
	})
}

func TestResumeGapAfterExpiry(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		e := newEnvWith(t, envConfig{mode: m, timeout: time.Minute,
			limits: &engine.Limits{HistorySize: 10, HistoryTTL: 50 * time.Millisecond}})
		e.create("c")
		ep := e.epoch("c")
		e.write("c", "old")
		waitFor(t, "the message to expire", func() bool {
			info, err := e.reg.Info(context.Background(), "c")
			return err == nil && info.HistoryLen == 0
		})
		expectReply(t, "expired", e.poll(resumeBody([]string{"c"}, "c:0."+ep)), 200, "c:#GAP\nc:@1."+ep)
	})
}

// With history off, resume still gives positions and says every gap.
func TestResumeWithHistoryOff(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		e := newEnvWith(t, envConfig{mode: m, timeout: 200 * time.Millisecond, limits: &engine.Limits{}})
		e.create("c")
		ep := e.epoch("c")
		e.write("c", "lost")
		expectReply(t, "history off", e.poll(resumeBody([]string{"c"}, "c:0."+ep)), 200, "c:#GAP\nc:@1."+ep)
		expectReply(t, "at the top", e.poll(resumeBody([]string{"c"}, "c:1."+ep)), 200, "c:@1."+ep)
	})
}

// The order of a resuming reply: ended, gaps, messages, positions.
func TestResumeReplyOrder(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		e := newEnvWith(t, envConfig{mode: m, timeout: time.Minute,
			limits: &engine.Limits{HistorySize: 1, HistoryTTL: time.Minute}})
		e.create("a")
		e.create("b")
		ea, eb := e.epoch("a"), e.epoch("b")
		e.write("b", "b1")
		e.write("a", "a1")
		e.write("a", "a2")
		r := e.poll(resumeBody([]string{"gone", "a", "b"}, "a:0."+ea, "b:0."+eb))
		expectReply(t, "order", r, 200,
			"gone:ENDED_CHANNEL\na:#GAP\na:a2\nb:b1\na:@2."+ea+"\nb:@1."+eb)
	})
}

// A channel closed while a resuming request waits ends it, with no
// position for that channel; the other channels keep theirs.
func TestResumeChannelClosedWhileWaiting(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		e := newEnv(t, m, time.Minute, Options{})
		e.create("a")
		e.create("b")
		pb := e.position("b")
		c := e.pollAsync(resumeBody([]string{"a", "b"}, "a:"+e.position("a")))
		e.waitListeners("a", 1)
		if err := e.reg.Close(context.Background(), "a"); err != nil {
			t.Fatal(err)
		}
		expectReply(t, "closed while waiting", receive(t, c), 200, "a:ENDED_CHANNEL\nb:@"+pb)
	})
}

// Nothing a payload can hold looks like a marker.
func TestResumeMarkersCannotBeForged(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		e := newEnv(t, m, time.Minute, Options{})
		e.create("c")
		ep := e.epoch("c")
		e.write("c", "#GAP")
		e.write("c", "@1."+ep)
		e.write("c", "ENDED_CHANNEL.")
		expectReply(t, "marker-like payloads", e.poll(resumeBody([]string{"c"}, "c:0."+ep)), 200,
			"c:%23GAP\nc:%401."+ep+"\nc:ENDED_CHANNEL.\nc:@3."+ep)
	})
}

// Malformed resume parameters are refused with a one-line reason.
func TestResumeBadRequests(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		e := newEnv(t, m, time.Minute, Options{})
		e.create("c")
		p := e.position("c")
		for _, tt := range []struct{ body, reason string }{
			{"registration=c&resume=c", "a line without ':'"},
			{"registration=c&resume=c:", "malformed position"},
			{"registration=c&resume=c:1", "malformed position"},
			{"registration=c&resume=c:01.abc", "malformed position"},
			{"registration=c&resume=c:1.a%2Fb", "malformed position"},
			{"registration=c&resume=c:-1.abc", "malformed position"},
			{"registration=c&resume=c:18446744073709551616.abc", "malformed position"},
			{"registration=c&resume=c:1." + strings.Repeat("e", 65), "malformed position"},
			{"registration=c&resume=d:" + p, "a position for a channel not registered"},
			{"registration=c&resume=c:" + p + "%0Ac:" + p, "two positions for one channel"},
			{"registration=c&resume=c:" + p + "&resume=c:" + p, "two positions for one channel"},
		} {
			r := e.poll(tt.body)
			if r.status != 400 || !strings.HasPrefix(r.body, "malformed resume parameter: ") ||
				!strings.Contains(r.body, tt.reason) || strings.Contains(r.body, "\n") {
				t.Errorf("%s: %d %q, want 400 with %q", tt.body, r.status, r.body, tt.reason)
			}
		}
		// What is valid: an empty line, a position with an id holding
		// ':' (split at the last one: unknown, so ended), and the
		// largest offset.
		expectReply(t, "an unknown id with ':'", e.poll(resumeBody([]string{"x:y"}, "", "x:y:"+p)), 200, "x:y:ENDED_CHANNEL")
		expectReply(t, "the largest offset", e.poll(resumeBody([]string{"z"}, "z:18446744073709551615.e")), 200, "z:ENDED_CHANNEL")
	})
}

// refusesCancelled is a hub whose Subscribe fails on a cancelled context,
// as a networked engine's would.
type refusesCancelled struct{ Subscriber }

func (h refusesCancelled) Subscribe(ctx context.Context, ids []string, r *channels.Resume) (*channels.Waiter, []string, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	return h.Subscriber.Subscribe(ctx, ids, r)
}

// A request is subscribed with a live context in both ways of waiting:
// net/http cancels a request's context when ServeHTTP returns, which for a
// taken-over connection is before its request is served.
func TestSubscribeContextOutlivesTheTakeover(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		e := newEnv(t, m, time.Minute, Options{}, func(h Subscriber) Subscriber { return refusesCancelled{h} })
		e.create("c")
		c := e.pollAsync("registration=c")
		e.waitListeners("c", 1)
		e.write("c", "m")
		expectReply(t, "a poll", receive(t, c), 200, "c:m")
	})
}
