package cometclient

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/cometop/comet-operator/cometserver/channels"
	"github.com/cometop/comet-operator/cometserver/longpoll"
	"github.com/cometop/comet-operator/cometserver/security"
	"github.com/cometop/comet-operator/test/bounded"
)

// The client against the real endpoint over a real socket: every byte of
// a payload and a UTF-8 channel name survive the round trip.
func TestPollRoundTrip(t *testing.T) {
	bounded.Test(t, time.Minute)
	reg := channels.NewRegistry(channels.Options{})
	defer reg.Stop()
	state := security.New(true, time.Minute)
	srv := httptest.NewServer(longpoll.New(reg, state, longpoll.Options{}))
	defer srv.Close()
	reg.Create("room/é")
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
	bounded.Wait(t, "the poll waiting", 5*time.Second, func() bool { info, _ := reg.Info("room/é"); return info.Listeners == 1 })
	if out, err := reg.Write(context.Background(), "room/é", all); err != nil || out.Delivered != 1 {
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
	msgs, err := Decode([]byte("a:ENDED_CHANNEL\nb:x%3Ay\nc:"))
	if err != nil || len(msgs) != 3 || !msgs[0].Ended || string(msgs[1].Data) != "x:y" || len(msgs[2].Data) != 0 {
		t.Fatalf("%+v %v", msgs, err)
	}
	for _, bad := range []string{"no separator", "a:%zz"} {
		if _, err := Decode([]byte(bad)); err == nil || !strings.Contains(err.Error(), "line 1") {
			t.Errorf("Decode(%q) = %v", bad, err)
		}
	}
	if msgs, err := Decode(nil); err != nil || msgs != nil {
		t.Fatal("an empty reply is no message")
	}
}
