package cometclient

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/cometop/comet-operator/cometserver/channels/channelstest"
	"github.com/cometop/comet-operator/cometserver/engine"
	"github.com/cometop/comet-operator/cometserver/longpoll"
	"github.com/cometop/comet-operator/cometserver/security"
	"github.com/cometop/comet-operator/test/bounded"
)

// The client against the real endpoint over a real socket: every byte of
// a payload and a UTF-8 channel name survive the round trip.
func TestPollRoundTrip(t *testing.T) {
	bounded.Test(t, time.Minute)
	reg := channelstest.New(engine.Limits{})
	defer reg.Engine().Stop()
	state := security.New(true, time.Minute)
	srv := httptest.NewServer(longpoll.New(reg, state, longpoll.Options{}))
	defer srv.Close()
	reg.Create(context.Background(), "room/é")
	var all []byte
	for c := range 256 {
		all = append(all, byte(c))
	}
	done := make(chan Reply, 1)
	go func() {
		r, err := Poll(context.Background(), http.DefaultClient, srv.URL, "gone", "room/é")
		if err != nil {
			t.Error(err)
		}
		done <- r
	}()
	bounded.Wait(t, "the poll waiting", 5*time.Second, func() bool { info, _ := reg.Info(context.Background(), "room/é"); return info.Listeners == 1 })
	if out, _, err := reg.Write(context.Background(), "room/é", all); err != nil || out.Delivered != 1 {
		t.Fatalf("write: %+v %v", out, err)
	}
	r := bounded.Recv(t, "the reply", 5*time.Second, done)
	if r.Status != 200 || len(r.Messages) != 2 || !r.Messages[0].Ended || r.Messages[0].Channel != "gone" ||
		r.Messages[1].Channel != "room/é" || string(r.Messages[1].Data) != string(all) {
		t.Fatalf("reply %+v", r)
	}

	state.Deactivate()
	if r, err := Poll(context.Background(), http.DefaultClient, srv.URL, "room/é"); err != nil || r.Status != 503 || r.Messages != nil {
		t.Fatalf("deactivated: %+v %v", r, err)
	}
}

func TestDecode(t *testing.T) {
	msgs, pos, err := Decode([]byte("a:ENDED_CHANNEL\nb:x%3Ay\nc:\nb:#GAP\nb:%23GAP\nb:@4.e\nc:y:@0.f"))
	if err != nil || len(msgs) != 5 || !msgs[0].Ended || string(msgs[1].Data) != "x:y" || len(msgs[2].Data) != 0 ||
		!msgs[3].Gap || msgs[3].Channel != "b" || string(msgs[4].Data) != "#GAP" || msgs[4].Gap ||
		len(pos) != 2 || pos["b"] != "4.e" || pos["c:y"] != "0.f" {
		t.Fatalf("%+v %v %v", msgs, pos, err)
	}
	for _, bad := range []string{"no separator", "a:%zz"} {
		if _, _, err := Decode([]byte(bad)); err == nil || !strings.Contains(err.Error(), "line 1") {
			t.Errorf("Decode(%q) = %v", bad, err)
		}
	}
	if msgs, pos, err := Decode(nil); err != nil || msgs != nil || pos != nil {
		t.Fatal("an empty reply is no message")
	}
}

// A Client resumes by default: nothing written between its polls is lost
// or repeated, a reply lost on the way comes again, a gap is reported,
// and an ended channel is dropped. With NoResume it loses what comes
// between polls, as the seed's clients did.
func TestClientResumes(t *testing.T) {
	bounded.Test(t, time.Minute)
	reg := channelstest.New(engine.Limits{HistorySize: 3, HistoryTTL: time.Minute})
	defer reg.Engine().Stop()
	srv := httptest.NewServer(longpoll.New(reg, security.New(true, 200*time.Millisecond), longpoll.Options{}))
	defer srv.Close()
	ctx := context.Background()
	reg.Create(ctx, "a")
	reg.Create(ctx, "b")
	write := func(id, msg string) {
		t.Helper()
		if _, _, err := reg.Write(ctx, id, []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	poll := func(c *Client) string {
		t.Helper()
		r, err := c.Poll(ctx)
		if err != nil || r.Status != 200 {
			t.Fatalf("poll: %+v %v", r, err)
		}
		var out []string
		for _, m := range r.Messages {
			switch {
			case m.Ended:
				out = append(out, m.Channel+":END")
			case m.Gap:
				out = append(out, m.Channel+":GAP")
			default:
				out = append(out, m.Channel+"="+string(m.Data))
			}
		}
		return strings.Join(out, " ")
	}

	c := &Client{Endpoint: srv.URL}
	c.Add("a", "b", "a")
	if got := poll(c); got != "" { // times out; learns the positions
		t.Fatalf("first poll: %q", got)
	}
	write("a", "1")
	write("b", "2")
	write("a", "3")
	if got := poll(c); got != "a=1 a=3 b=2" {
		t.Fatalf("between polls: %q", got)
	}
	// A reply that never reached the client: its positions are kept.
	saved, _ := c.Position("a")
	write("a", "4")
	if got := poll(c); got != "a=4" {
		t.Fatalf("a fourth message: %q", got)
	}
	c.mu.Lock()
	c.positions["a"] = saved
	c.mu.Unlock()
	if got := poll(c); got != "a=4" {
		t.Fatalf("from the saved position: %q", got)
	}
	// A gap: more than the history holds.
	for i := range 5 {
		write("b", fmt.Sprint("x", i))
	}
	if got := poll(c); got != "b:GAP b=x2 b=x3 b=x4" {
		t.Fatalf("over the history: %q", got)
	}
	// An ended channel is dropped with its position.
	reg.Close(ctx, "a")
	if got := poll(c); got != "a:END" {
		t.Fatalf("ended: %q", got)
	}
	if _, ok := c.Position("a"); ok || strings.Join(c.Channels(), ",") != "b" {
		t.Fatalf("after the end: channels %q", c.Channels())
	}
	// One poll at a time.
	first := make(chan error, 1)
	go func() { _, err := c.Poll(ctx); first <- err }()
	bounded.Wait(t, "the first poll waiting", 5*time.Second, func() bool {
		info, _ := reg.Info(ctx, "b")
		return info.Listeners == 1
	})
	if _, err := c.Poll(ctx); err == nil || !strings.Contains(err.Error(), "already under way") {
		t.Fatalf("a second poll at once: %v", err)
	}
	if err := bounded.Recv(t, "the first poll", 5*time.Second, first); err != nil {
		t.Fatal(err)
	}
	c.Remove("b")
	if _, err := c.Poll(ctx); err == nil {
		t.Fatal("a poll with no channel")
	}

	old := &Client{Endpoint: srv.URL, NoResume: true}
	old.Add("b")
	write("b", "lost")
	if got := poll(old); got != "" {
		t.Fatalf("without resume: %q, want nothing", got)
	}
	if _, ok := old.Position("b"); ok {
		t.Fatal("a client that does not resume got a position")
	}
}
