package demo

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/cometop/comet-operator/cometserver/channels"
	"github.com/cometop/comet-operator/cometserver/channels/channelstest"
	"github.com/cometop/comet-operator/cometserver/engine"
	"github.com/cometop/comet-operator/cometserver/engine/memory"
	"github.com/cometop/comet-operator/test/bounded"
)

func TestDemo(t *testing.T) {
	bounded.Test(t, time.Minute)
	reg := channelstest.New(engine.Limits{})
	defer reg.Engine().Stop()
	reg.Create(context.Background(), "demo/news") // an existing room is kept
	d, err := Start(reg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if channelstest.Len(reg) != 4 {
		t.Fatalf("%d channels, want the 3 rooms and the clock", channelstest.Len(reg))
	}
	mux := http.NewServeMux()
	d.Register(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	// The clock ticks every second.
	w, _, _ := reg.Subscribe(context.Background(), []string{Clock}, nil)
	bounded.Recv(t, "a clock tick", 3*time.Second, w.Ready())
	events := w.Detach()
	channels.Resolve(events, true)
	if _, err := time.Parse(time.RFC3339, string(events[0].Payload)); err != nil || events[0].ID != Clock {
		t.Fatalf("tick %q on %s", events[0].Payload, events[0].ID)
	}

	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" || !strings.Contains(string(page), "comet.js") {
		t.Fatalf("page: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if resp, _ := http.Get(srv.URL + "/other"); resp.StatusCode != 404 {
		t.Fatalf("only / is the page: %d", resp.StatusCode)
	}

	post := func(room, body string) (int, string) {
		resp, err := http.Post(srv.URL+"/demo/rooms/"+room+"/messages", "text/plain", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	w, _, _ = reg.Subscribe(context.Background(), []string{"demo/lobby"}, nil)
	go func() {
		<-w.Ready()
		channels.Resolve(w.Detach(), true)
	}()
	code, body := post("lobby", "hi")
	var out channels.Outcome
	if code != 200 || json.Unmarshal([]byte(body), &out) != nil || out.Delivered != 1 {
		t.Fatalf("post: %d %q", code, body)
	}
	for _, tt := range []struct {
		room, body string
		code       int
	}{
		{"clock", "x", 404}, {"nope", "x", 404}, {"lobby", "", 400}, {"lobby", strings.Repeat("x", 1025), 400},
	} {
		if code, body := post(tt.room, tt.body); code != tt.code {
			t.Errorf("post %d bytes to %s: %d %q, want %d", len(tt.body), tt.room, code, body, tt.code)
		}
	}
	if code, _ := post("lobby", strings.Repeat("x", 1024)); code != 200 {
		t.Errorf("1024 bytes: %d", code)
	}
	reg.Close(context.Background(), "demo/random")
	if code, _ := post("random", "x"); code != 400 {
		t.Errorf("a closed room: %d", code)
	}

	d.Stop()
	w, _, _ = reg.Subscribe(context.Background(), []string{Clock}, nil)
	defer w.Detach()
	if !bounded.Quiet(w.Ready(), 1500*time.Millisecond) {
		t.Fatal("the clock ticked after Stop")
	}
	eng := memory.New(engine.Limits{})
	defer eng.Stop()
	if _, err := Start(channels.New(failing{eng}), slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("Start hid a hub error")
	}
}

type failing struct{ engine.Engine }

func (failing) Create(context.Context, string) (string, error) {
	return "", channels.ErrTooManyVirtualChannels
}
