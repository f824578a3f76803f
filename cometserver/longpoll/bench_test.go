package longpoll

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cometop/comet-operator/cometserver/channels/channelstest"
	"github.com/cometop/comet-operator/cometserver/engine"
	"github.com/cometop/comet-operator/cometserver/security"
)

// BenchmarkHTTPBroadcast measures the whole path over loopback: one write
// fanned out to n long polls, each reply written and flushed, and each
// client back waiting. Client and server share this process, so the
// open-file limit (20,000 here, two descriptors a client) bounds n.
func BenchmarkHTTPBroadcast(b *testing.B) {
	const n = 2000
	reg := channelstest.New(engine.Limits{})
	defer reg.Engine().Stop()
	reg.Create(context.Background(), "c")
	h := New(reg, security.New(true, time.Hour), Options{})
	srv := httptest.NewUnstartedServer(h)
	srv.Listener = h.Listener(srv.Listener) // as in production
	srv.Start()
	defer srv.Close()
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
