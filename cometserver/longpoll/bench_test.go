package longpoll

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cometop/comet-operator/cometserver/channels"
	"github.com/cometop/comet-operator/cometserver/channels/channelstest"
	"github.com/cometop/comet-operator/cometserver/engine"
	"github.com/cometop/comet-operator/cometserver/security"
)

// benchServer is a handler on a real loopback listener, taken over as in
// production, in front of a hub with the channel "c"; both stop with b.
func benchServer(b *testing.B, limits engine.Limits) (*channels.Hub, *httptest.Server) {
	reg := channelstest.New(limits)
	b.Cleanup(reg.Engine().Stop)
	reg.Create(context.Background(), "c")
	h := New(reg, security.New(true, time.Hour), Options{})
	srv := httptest.NewUnstartedServer(h)
	srv.Listener = h.Listener(srv.Listener)
	srv.Start()
	b.Cleanup(srv.Close)
	return reg, srv
}

// BenchmarkHTTPBroadcast measures the whole path over loopback: one write
// fanned out to n long polls, each reply written and flushed, and each
// client back waiting. Client and server share this process, so the
// open-file limit (20,000 here, two descriptors a client) bounds n.
func BenchmarkHTTPBroadcast(b *testing.B) {
	const n = 2000
	reg, srv := benchServer(b, engine.Limits{})
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: n, MaxConnsPerHost: n}}

	ctx, cancel := context.WithCancel(context.Background())
	var clients sync.WaitGroup
	for range n {
		clients.Add(1)
		go func() {
			defer clients.Done()
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, "POST", srv.URL, strings.NewReader("registration=c"))
				req.Header.Set("Content-Type", ContentType)
				resp, err := client.Do(req)
				if err != nil {
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	allWaiting := func() {
		for info, _ := reg.Info(context.Background(), "c"); info.Listeners < n; info, _ = reg.Info(context.Background(), "c") {
			time.Sleep(100 * time.Microsecond)
		}
	}
	allWaiting()
	b.ResetTimer()
	for b.Loop() {
		out, _, err := reg.Write(context.Background(), "c", []byte(`{"price":42}`))
		if err != nil || out.Delivered != n {
			b.Fatalf("outcome %+v, %v", out, err)
		}
		allWaiting()
	}
	b.StopTimer()
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "deliveries/s")
	cancel()
	clients.Wait()
}

// BenchmarkPollCycle measures one long-poll cycle over loopback, one
// client on a kept-alive connection: the poll arrives and waits, a write
// wakes it, the reply is written and read, and the next poll is sent. Its
// allocations (-benchmem) are the whole cycle's, client side included, so
// a regression on the data path of a comet request shows here.
func BenchmarkPollCycle(b *testing.B) {
	for _, resume := range []bool{false, true} {
		name := "plain"
		if resume {
			name = "resume"
		}
		b.Run(name, func(b *testing.B) {
			reg, srv := benchServer(b, engine.Limits{HistorySize: 100, HistoryTTL: time.Minute})
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}

			position := ""
			poll := func() <-chan string {
				body := "registration=c"
				if resume {
					body = "registration=c&resume=" + url.QueryEscape("c:"+position)
				}
				done := make(chan string, 1)
				go func() {
					req, _ := http.NewRequest("POST", srv.URL, strings.NewReader(body))
					req.Header.Set("Content-Type", ContentType)
					resp, err := client.Do(req)
					if err != nil {
						done <- "error: " + err.Error()
						return
					}
					reply, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					done <- string(reply)
				}()
				return done
			}
			waiting := func(reply <-chan string) {
				for info, _ := reg.Info(context.Background(), "c"); info.Listeners < 1; info, _ = reg.Info(context.Background(), "c") {
					select {
					case got := <-reply:
						b.Fatalf("answered before the write: %q", got)
					case <-time.After(10 * time.Microsecond):
					}
				}
			}
			if resume { // start from the position of a first message
				_, pos, err := reg.Write(context.Background(), "c", []byte("first"))
				if err != nil {
					b.Fatal(err)
				}
				position = pos.String()
			}
			b.ReportAllocs()
			for b.Loop() {
				reply := poll()
				waiting(reply)
				out, pos, err := reg.Write(context.Background(), "c", []byte(`{"price":42}`))
				// A write that comes while a resuming poll still reads the
				// history reaches it through the history, untracked: the
				// outcome then counts no delivery, and the reply tells.
				if err != nil || out.Failed != 0 || out.Delivered != 1 && !(resume && out.Delivered == 0) {
					b.Fatalf("outcome %+v, %v", out, err)
				}
				if got := <-reply; !strings.Contains(got, "c:%7B%22price%22%3A42%7D") {
					b.Fatalf("reply %q", got)
				}
				position = pos.String()
			}
		})
	}
}
