package webclient_test

// comet.js resuming (PROTOCOL.md section 7), in real Chromium against a
// real server: what the seed's protocol lost between two polls arrives,
// once and in order.

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cometop/comet-operator/test/bounded"
)

// writeNow publishes msg on channel without waiting for its outcome (which
// would wait for a listener's reply).
func (s *cometServer) writeNow(channel, msg string) {
	s.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the message is published before Write looks at ctx
	if _, _, err := s.srv.Hub().Write(ctx, channel, []byte(msg)); err != nil && ctx.Err() == nil {
		s.t.Fatalf("write to %s: %v", channel, err)
	}
}

// received is, per channel, the messages the page's client delivered, in
// order, and the channels it was told had gaps.
func received(t *testing.T, ctx context.Context) (map[string][]string, []string) {
	t.Helper()
	msgs := evalJS[[][]string](t, ctx, `got.filter(e => e[0] === "msg").map(e => [e[1], e[2]])`)
	per := map[string][]string{}
	for _, m := range msgs {
		per[m[0]] = append(per[m[0]], m[1])
	}
	gaps := evalJS[[]string](t, ctx, `got.filter(e => e[0] === "gap").map(e => e[1])`)
	return per, gaps
}

// openRooms makes channels and a page whose client (resuming, the
// default) listens on them all.
func openRooms(t *testing.T, s *cometServer, opts string, rooms ...string) context.Context {
	t.Helper()
	for _, id := range rooms {
		if _, err := s.srv.Hub().Create(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
	ctx := tab(t, s.url())
	js := ownClient(`Object.assign({onGap: (id) => { got.push(["gap", id]); record({kind: "gap", id}); }}, ` + opts + `)`)
	for _, id := range rooms {
		js += fmt.Sprintf("c.add(%q);", id)
	}
	evalJS[bool](t, ctx, js+"true")
	s.waitOnlyPoll(rooms, rooms...)
	return ctx
}

// A chat with three rooms, one message to each every 40 ms for 3 seconds:
// the seed's protocol delivered about a third of them (the issue's
// measure). Resuming, every one arrives once, in order per room, and no
// gap is reported.
func TestResumeThreeRoomsLoseNothing(t *testing.T) {
	bounded.Test(t, testDeadline)
	s := startServer(t, "")
	rooms := []string{"room1", "room2", "room3"}
	ctx := openRooms(t, s, `{}`, rooms...)
	const rounds = 75
	want := map[string][]string{}
	tick := time.NewTicker(40 * time.Millisecond)
	for i := range rounds {
		<-tick.C
		for _, r := range rooms { // together, as a back end writing to all three
			msg := fmt.Sprintf("%s-%d", r, i)
			s.writeNow(r, msg)
			want[r] = append(want[r], msg)
		}
	}
	tick.Stop()
	waitJS(t, ctx, "every message", fmt.Sprintf(`got.filter(e => e[0] === "msg").length >= %d`, rounds*len(rooms)), 20*time.Second)
	got, gaps := received(t, ctx)
	for _, r := range rooms {
		if !slices.Equal(got[r], want[r]) {
			t.Errorf("%s: %d messages, want %d, once each in order; got %.300q", r, len(got[r]), len(want[r]), got[r])
		}
	}
	if len(gaps) > 0 {
		t.Errorf("gaps reported: %q", gaps)
	}
}

// Without resume, what is written while the client is between two polls
// is lost: the measure the extension is for, made exact by stopping the
// client while the messages are written, and kept as a check that the
// tests above can fail. With resume, the same steps lose nothing.
func TestWithoutResumeMessagesAreLost(t *testing.T) {
	for _, resume := range []bool{false, true} {
		t.Run(fmt.Sprintf("resume=%v", resume), func(t *testing.T) { lostBetweenPolls(t, resume) })
	}
}

func lostBetweenPolls(t *testing.T, resume bool) {
	bounded.Test(t, testDeadline)
	s := startServer(t, "", "--history-size", "256")
	rooms := []string{"room1", "room2", "room3"}
	ctx := openRooms(t, s, fmt.Sprintf(`{resume: %v}`, resume), rooms...)
	for i, r := range rooms { // a position for each resuming room, from a reply
		s.waitOnlyPoll(rooms, rooms...)
		s.writeNow(r, "first")
		waitJS(t, ctx, "the first messages", fmt.Sprintf(`got.filter(e => e[0] === "msg").length === %d`, i+1), 10*time.Second)
	}
	s.waitOnlyPoll(rooms, rooms...)
	evalJS[bool](t, ctx, `c.stop(); true`)
	bounded.Wait(t, "the page's poll gone", 10*time.Second, func() bool { return s.srv.Status().Waiting == 0 })
	for i := range 200 {
		for _, r := range rooms {
			s.writeNow(r, fmt.Sprintf("%s-%d", r, i))
		}
	}
	evalJS[bool](t, ctx, `c.add("other"); true`) // polls again, positions kept
	s.waitOnlyPoll(rooms, rooms...)              // "other" is unknown: it ends with the next reply
	s.writeNow("room1", "last")
	waitJS(t, ctx, "the last message", `got.some(e => e[0] === "msg" && e[2] === "last")`, 10*time.Second)
	got, _ := received(t, ctx)
	n := len(got["room1"]) + len(got["room2"]) + len(got["room3"]) - 4 // first ones and last
	want := map[bool]int{false: 0, true: 600}[resume]
	if n != want {
		t.Fatalf("resume %v: %d of the 600 written between two polls arrived, want %d", resume, n, want)
	}
}

// A burst of 200 messages per room, back to back, within the history's
// size: every one arrives, once, in order.
func TestResumeBurstWithinHistory(t *testing.T) {
	bounded.Test(t, testDeadline)
	s := startServer(t, "", "--history-size", "256")
	rooms := []string{"a", "b", "c"}
	ctx := openRooms(t, s, `{}`, rooms...)
	want := map[string][]string{}
	for i := range 200 {
		for _, r := range rooms {
			msg := fmt.Sprintf("%s%d", r, i)
			s.writeNow(r, msg)
			want[r] = append(want[r], msg)
		}
	}
	waitJS(t, ctx, "every message", `got.filter(e => e[0] === "msg").length >= 600`, 20*time.Second)
	got, gaps := received(t, ctx)
	for _, r := range rooms {
		if !slices.Equal(got[r], want[r]) {
			t.Errorf("%s: %d messages, want 200 once each in order", r, len(got[r]))
		}
	}
	if len(gaps) > 0 {
		t.Errorf("gaps reported: %q", gaps)
	}
}

// A burst larger than the history, while the client is not polling: the
// page is told of the gap and gets what the history holds, the latest.
func TestResumeBurstOverHistoryReportsTheGap(t *testing.T) {
	bounded.Test(t, testDeadline)
	s := startServer(t, "", "--history-size", "50")
	ctx := openRooms(t, s, `{}`, "a", "b")
	s.writeNow("a", "first")
	waitJS(t, ctx, "the first message", `got.some(e => e[0] === "msg" && e[2] === "first")`, 10*time.Second)
	s.waitOnlyPoll([]string{"a", "b"}, "a", "b")
	evalJS[bool](t, ctx, `c.stop(); true`)
	bounded.Wait(t, "the page's poll gone", 10*time.Second, func() bool { return s.srv.Status().Waiting == 0 })
	for i := range 200 {
		s.writeNow("a", fmt.Sprint("m", i))
	}
	evalJS[bool](t, ctx, `c.add("late"); true`) // a channel change restarts polling, positions kept
	waitJS(t, ctx, "the gap", `got.some(e => e[0] === "gap")`, 10*time.Second)
	waitJS(t, ctx, "the last message", `got.some(e => e[0] === "msg" && e[2] === "m199")`, 10*time.Second)
	got, gaps := received(t, ctx)
	if !slices.Equal(gaps, []string{"a"}) {
		t.Fatalf("gaps %q, want one on a", gaps)
	}
	var want []string
	for i := 150; i < 200; i++ {
		want = append(want, fmt.Sprint("m", i))
	}
	if !slices.Equal(got["a"], append([]string{"first"}, want...)) {
		t.Fatalf("a: %q, want first, then the 50 the history holds", got["a"])
	}
	log := strings.Join(evalJS[[]string](t, ctx, `events.filter(e => e.kind === "gap" || (e.kind === "msg" && e.text === "m150")).map(e => e.kind)`), " ")
	if log != "gap msg" {
		t.Fatalf("order %q: the gap must come before the messages after it", log)
	}
}

// Resuming, adding a channel while a reply is under way aborts it (its
// messages are not lost: the next poll, from the same positions, fetches
// them again), and each poll sends the positions the last reply gave.
func TestResumeAbortsAReplyUnderWayAndRefetches(t *testing.T) {
	bounded.Test(t, testDeadline)
	s := startScripted(t)
	ctx := tab(t, s.url)
	evalJS[bool](t, ctx, ownClient(`{}`)+`c.add("a"); true`)
	p1 := s.next("the first poll", "a")
	if !slices.Equal(p1.resume, []string{""}) {
		t.Fatalf("first poll: resume %q, want one empty resume parameter", p1.resume)
	}
	p1.reply(200, "a:one\na:@1.e")
	waitJS(t, ctx, "the first message", `got.some(e => e[0] === "msg" && e[2] === "one")`, 10*time.Second)
	p2 := s.next("the second poll", "a")
	if !slices.Equal(p2.resume, []string{"a:1.e"}) {
		t.Fatalf("second poll: resume %q, want a's position", p2.resume)
	}
	release := p2.hold(200, "a:tw", "o\na:@2.e")
	waitJS(t, ctx, "the start of the reply", `xhrs.length === 2 && xhrs[1].readyState >= 2`, 10*time.Second)
	aborts := evalJS[int](t, ctx, `c.add("b"); events.filter(e => e.kind === "abort").length`)
	if aborts != 1 {
		t.Fatalf("adding a channel during a reply: %d aborts, want 1", aborts)
	}
	p3 := s.next("the poll after the abort", "a", "b")
	release()
	if !slices.Equal(p3.resume, []string{"a:1.e"}) {
		t.Fatalf("after the abort: resume %q, want a's position before the aborted reply", p3.resume)
	}
	p3.reply(200, "a:two\na:@2.e\nb:@0.f")
	waitJS(t, ctx, "the refetched message", `got.some(e => e[0] === "msg" && e[2] === "two")`, 10*time.Second)
	p4 := s.next("the next poll", "a", "b")
	if !slices.Equal(p4.resume, []string{"a:2.e\nb:0.f"}) {
		t.Fatalf("next poll: resume %q", p4.resume)
	}
	if n := evalJS[int](t, ctx, `got.filter(e => e[0] === "msg" && e[2] === "two").length`); n != 1 {
		t.Fatalf("the message under way delivered %d times", n)
	}
	// A removed channel's position is forgotten; an ended one's too.
	evalJS[bool](t, ctx, `c.remove("b"); true`)
	p5 := s.next("the poll after remove", "a")
	if !slices.Equal(p5.resume, []string{"a:2.e"}) {
		t.Fatalf("after remove: resume %q", p5.resume)
	}
}
