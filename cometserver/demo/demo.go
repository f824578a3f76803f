// Package demo is the page that "cometserver serve --demo" serves: a small
// live chat with several rooms and a clock ticker, built on comet.js, and
// the minimum glue to publish from the page. It is for trying the server,
// not for production: anyone who reaches the page can post.
package demo

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/cometop/comet-operator/cometserver/channels"
)

//go:embed demo.html
var page []byte

// Rooms are the chat channels the demo creates; Clock ticks every second.
var Rooms = []string{"demo/lobby", "demo/news", "demo/random"}

const (
	Clock          = "demo/clock"
	maxPostBytes   = 1024
	publishTimeout = 5 * time.Second
)

// Demo is the demo page, its channels and its clock.
type Demo struct {
	hub  *channels.Hub
	log  *slog.Logger
	stop chan struct{}
	wg   sync.WaitGroup
}

// Start creates the demo channels (keeping any that exist) and starts the
// clock. Stop ends it.
func Start(hub *channels.Hub, log *slog.Logger) (*Demo, error) {
	for _, name := range append(slices.Clone(Rooms), Clock) {
		if _, err := hub.Create(context.Background(), name); err != nil && !errors.Is(err, channels.ErrNameTaken) {
			return nil, err
		}
	}
	d := &Demo{hub: hub, log: log, stop: make(chan struct{})}
	d.wg.Add(1)
	go d.tick()
	return d, nil
}

// Stop ends the clock.
func (d *Demo) Stop() {
	close(d.stop)
	d.wg.Wait()
}

func (d *Demo) tick() {
	defer d.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case now := <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
			d.hub.Write(ctx, Clock, []byte(now.UTC().Format(time.RFC3339)))
			cancel()
		}
	}
}

// Register serves the page at / and the publish glue on mux.
func (d *Demo) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-cache")
		w.Write(page)
	})
	// POST /demo/rooms/{room}/messages: the body, at most 1 KiB, goes to
	// the room; the answer is the write's outcome.
	mux.HandleFunc("POST /demo/rooms/{room}/messages", func(w http.ResponseWriter, r *http.Request) {
		room := "demo/" + r.PathValue("room")
		if !slices.Contains(Rooms, room) {
			http.Error(w, "no such room", http.StatusNotFound)
			return
		}
		msg, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxPostBytes))
		if err != nil || len(msg) == 0 {
			http.Error(w, "want a message of 1 to 1024 bytes", http.StatusBadRequest)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), publishTimeout)
		defer cancel()
		out, _, err := d.hub.Write(ctx, room, msg)
		if err != nil && !errors.Is(err, ctx.Err()) {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(out)
	})
}
