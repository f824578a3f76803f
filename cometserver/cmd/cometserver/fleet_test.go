package main_test

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cometop/comet-operator/cometserver/cometclient"
	"github.com/cometop/comet-operator/test/bounded"
	"github.com/cometop/comet-operator/test/losscount"
	"github.com/cometop/comet-operator/test/redistest"
)

// fleet is several server processes on one Redis.
type fleet struct {
	t       *testing.T
	servers []*server
	alive   []atomic.Bool
}

func startFleet(t *testing.T, n int, redisURL string) *fleet {
	t.Helper()
	f := &fleet{t: t, alive: make([]atomic.Bool, n)}
	yaml := "broker: redis\nredis_url: " + redisURL + "\nredis_prefix: fleet\nhistory_size: 1000\nhistory_ttl: 5m\ntimeout: 30s\n"
	for i := range n {
		f.servers = append(f.servers, startServer(t, yaml))
		f.alive[i].Store(true)
	}
	for _, s := range f.servers {
		bounded.Wait(t, "the server to be ready on Redis", 20*time.Second, func() bool {
			resp, err := http.Get(s.publisher + "/readyz")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == 200
		})
	}
	return f
}

// publish writes msg to channel id through server s; it reports whether
// the server acknowledged it (200).
func publish(s *server, id, msg string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.publisher+"/v1/channels/"+id+"/messages", strings.NewReader(msg))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}

// TestFleetLosesNothing runs three servers on one Redis (standalone, then
// a 3-master Cluster). Subscribers poll a different server each time (no
// sticky sessions) with resume; publishers write through every server. One
// server is killed mid-run. Every acknowledged message must reach every
// subscriber exactly once.
func TestFleetLosesNothing(t *testing.T) {
	bounded.Test(t, 3*time.Minute)
	for _, tc := range []struct {
		name string
		url  func(t *testing.T) string
	}{
		{"standalone", func(t *testing.T) string { return "redis://" + redistest.Start(t).Addr }},
		{"cluster", func(t *testing.T) string {
			addrs := redistest.StartCluster(t, 3).Addrs()
			return "redis://" + addrs[0] + "?addr=" + addrs[1] + "&addr=" + addrs[2]
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startFleet(t, 3, tc.url(t))
			channels := []string{"alpha", "beta", "gamma"}
			for _, id := range channels {
				f.servers[0].createChannel(id)
			}
			const subscribers, perPublisher = 6, 40
			ctx, stop := context.WithCancel(context.Background())
			defer stop()
			counts, polls := losscount.Start(ctx, subscribers, channels, func(n int) string {
				if k := n % len(f.servers); f.alive[k].Load() {
					return f.servers[k].client
				}
				return "" // killed: the next poll goes elsewhere
			})
			// Every subscriber waits before the first write: its first
			// poll starts from the channels' positions then.
			bounded.Wait(t, "every subscriber's first poll to wait", 30*time.Second, func() bool {
				n := 0
				for _, s := range f.servers {
					n += s.status().Waiting
				}
				return n == subscribers
			})

			var mu sync.Mutex
			acked := map[string]bool{}
			var pubs sync.WaitGroup
			for k, s := range f.servers {
				pubs.Add(1)
				go func() {
					defer pubs.Done()
					for j := range perPublisher {
						if k == 2 && j == perPublisher/2 {
							f.alive[2].Store(false)
							s.cmd.Process.Kill() // mid-run, with polls waiting on it
							return
						}
						id := channels[j%len(channels)]
						msg := fmt.Sprintf("s%d-%d", k, j)
						if publish(s, id, msg) {
							mu.Lock()
							acked[id+"/"+msg] = true
							mu.Unlock()
						}
						time.Sleep(5 * time.Millisecond)
					}
				}()
			}
			pubs.Wait()
			mu.Lock()
			want := len(acked)
			mu.Unlock()
			if want < 2*perPublisher {
				t.Fatalf("only %d writes acknowledged", want)
			}
			// Well within the poll timeout: a write reaches polls waiting on
			// the other servers through Redis, not at their next poll.
			bounded.Wait(t, "every subscriber to have every acknowledged message", 15*time.Second, func() bool {
				for _, c := range counts {
					if !c.Has(slices.Collect(maps.Keys(acked))...) {
						return false
					}
				}
				return true
			})
			stop()
			polls.Wait()
			for i, c := range counts {
				c.CheckOnce(t, i, 0)
				for _, m := range c.Seen() {
					// s2's last write may have been taken without an answer.
					if !acked[m] && !strings.HasPrefix(m[strings.IndexByte(m, '/')+1:], "s2-") {
						t.Errorf("subscriber %d got %s, never written", i, m)
					}
				}
			}
			t.Logf("%d subscribers x %d acknowledged messages, each once, through a killed server", subscribers, want)
		})
	}
}

// TestFleetThroughRedisRestart stops Redis for three seconds mid-run and
// brings it back with its data: servers answer 503 meanwhile, publishers
// retry, and every acknowledged message reaches every subscriber once.
// Then Redis comes back empty: the channel is made again under a new
// epoch and every subscriber is told of the gap before the next message.
func TestFleetThroughRedisRestart(t *testing.T) {
	bounded.Test(t, 3*time.Minute)
	r := redistest.Start(t)
	f := startFleet(t, 2, "redis://"+r.Addr)
	f.servers[0].createChannel("news")
	const subscribers = 4
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	counts, polls := losscount.Start(ctx, subscribers, []string{"news"}, func(n int) string { return f.servers[n%len(f.servers)].client })
	bounded.Wait(t, "every subscriber's first poll to wait", 30*time.Second, func() bool {
		return f.servers[0].status().Waiting+f.servers[1].status().Waiting == subscribers
	})
	// write publishes msg through server k until one acknowledges, as a
	// publisher that honours 503 Retry-After does, and returns what was
	// acknowledged. Each attempt carries its own payload: a write that
	// failed may still have reached Redis (the answer was lost, not the
	// write), so a retry of the same payload could be had twice for
	// reasons of the publisher's, not the server's.
	var refused atomic.Int32
	write := func(k int, msg string) (string, error) {
		deadline := time.Now().Add(60 * time.Second)
		for attempt := 0; ; attempt++ {
			p := fmt.Sprintf("%s#%d", msg, attempt)
			if publish(f.servers[k%2], "news", p) {
				return "news/" + p, nil
			}
			refused.Add(1)
			if time.Now().After(deadline) {
				return "", fmt.Errorf("%s not acknowledged in 60s", msg)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	var mu sync.Mutex
	var all []string // what was acknowledged
	var pubs sync.WaitGroup
	for k := range 2 {
		pubs.Add(1)
		go func() {
			defer pubs.Done()
			for j := range 30 {
				m, err := write(k, fmt.Sprintf("m%d-%d", k, j))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				all = append(all, m)
				mu.Unlock()
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	r.RestartKeepingData(3 * time.Second)
	pubs.Wait()
	if refused.Load() == 0 {
		t.Fatal("no write was refused while Redis was down")
	}
	if len(all) != 60 {
		t.Fatalf("%d of 60 writes acknowledged", len(all))
	}
	bounded.Wait(t, "every subscriber to have all 60", 30*time.Second, func() bool {
		for _, c := range counts {
			if !c.Has(all...) {
				return false
			}
		}
		return true
	})

	r.Restart() // empty
	after, err := write(0, "after")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i, c := range counts {
				t.Logf("subscriber %d: missing %v, %d gaps, %d channel ends", i, c.Missing(after), c.Gaps(), c.Ends())
			}
		}
	})
	bounded.Wait(t, "every subscriber to have the message after the empty restart", 30*time.Second, func() bool {
		for _, c := range counts {
			if !c.Has(after) {
				return false
			}
		}
		return true
	})
	stop()
	polls.Wait()
	for i, c := range counts {
		c.CheckOnce(t, i, 1) // the gap: the empty restart
	}
}

// httpStatus sends a request and returns its status and Retry-After.
func httpStatus(t *testing.T, method, url, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if method == http.MethodPost && strings.HasSuffix(url, "/comet") {
		req.Header.Set("Content-Type", cometclient.ContentType)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return -1, ""
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Retry-After")
}

// A server whose Redis is gone is not ready, and answers so that clients
// and publishers retry; it comes back by itself. Its password comes from
// a file, and a wrong one is reported.
func TestRedisDownIsNotReady(t *testing.T) {
	bounded.Test(t, 2*time.Minute)
	r := redistest.Start(t, "--requirepass", "s3cret")
	pw := t.TempDir() + "/pw"
	os.WriteFile(pw, []byte("s3cret\n"), 0o600)
	s := startServer(t, "broker: redis\nredis_url: redis://"+r.Addr+"\nredis_password_file: "+pw+"\n")
	ready := func() bool { code, _ := httpStatus(t, http.MethodGet, s.publisher+"/readyz", ""); return code == 200 }
	bounded.Wait(t, "ready with the password from its file", 20*time.Second, ready)
	s.createChannel("c")
	if st := s.status(); st.Broker.Name != "redis" || !st.Broker.Ready || st.Broker.Subscriptions != 0 || st.Channels != 1 {
		t.Fatalf("status %+v", st)
	}
	brokerReady := func() string {
		resp, err := http.Get(s.publisher + "/metrics")
		if err != nil {
			return err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "comet_broker_ready ") {
				return line
			}
		}
		return "no comet_broker_ready"
	}
	if got := brokerReady(); got != "comet_broker_ready 1" {
		t.Fatalf("metrics say %q while ready", got)
	}

	// A poll that waits on "c" through the outage keeps this server
	// subscribed to it: a later poll on "c" must still be refused, not
	// join a subscription that receives nothing.
	go httpStatus(t, http.MethodPost, s.client, cometclient.Body("c"))
	bounded.Wait(t, "a poll waiting on c", 10*time.Second, func() bool { return s.status().Waiting == 1 })
	r.Stop()
	bounded.Wait(t, "not ready once Redis is gone", 15*time.Second, func() bool { return !ready() })
	if code, retry := httpStatus(t, http.MethodPost, s.publisher+"/v1/channels/c/messages", "m"); code != 503 || retry == "" {
		t.Errorf("write with Redis down: %d, Retry-After %q; want 503 with Retry-After", code, retry)
	}
	if code, _ := httpStatus(t, http.MethodPost, s.client, cometclient.Body("c")); code != 503 {
		t.Errorf("poll with Redis down: %d, want 503", code)
	}
	if st := s.status(); st.Broker.Ready || st.Broker.LastError == "" {
		t.Errorf("status with Redis down: %+v; want not ready, with the error", st.Broker)
	}
	if got := brokerReady(); got != "comet_broker_ready 0" {
		t.Errorf("metrics say %q with Redis down", got)
	}
	r.Restart() // empty, same password
	bounded.Wait(t, "ready again", 20*time.Second, ready)

	// A wrong password: never ready, and the status says why.
	os.WriteFile(pw, []byte("wrong"), 0o600)
	s2 := startServer(t, "broker: redis\nredis_url: redis://"+r.Addr+"\nredis_password_file: "+pw+"\n")
	bounded.Wait(t, "the status to say WRONGPASS", 10*time.Second, func() bool {
		b := s2.status().Broker
		return strings.Contains(b.LastError, "WRONGPASS")
	})
	if code, _ := httpStatus(t, http.MethodGet, s2.publisher+"/readyz", ""); code != 503 {
		t.Fatalf("ready with a wrong password: %d", code)
	}
}

// An ACL user: the name in the URL, its password from the file.
func TestRedisACLUser(t *testing.T) {
	bounded.Test(t, time.Minute)
	r := redistest.Start(t, "--user", "comet", "on", ">s3cret", "~*", "&*", "+@all", "--user", "default", "off")
	pw := t.TempDir() + "/pw"
	os.WriteFile(pw, []byte("s3cret"), 0o600)
	s := startServer(t, "broker: redis\nredis_url: redis://comet@"+r.Addr+"\nredis_password_file: "+pw+"\n")
	bounded.Wait(t, "ready as the ACL user", 20*time.Second, func() bool { return s.status().Broker.Ready })
	s.createChannel("c")
	if code, _ := httpStatus(t, http.MethodPost, s.publisher+"/v1/channels/c/messages", "m"); code != 200 {
		t.Fatalf("write as the ACL user: %d", code)
	}
}

// rediss:// with a private CA: the server trusts what redis_tls_ca_file
// holds, and nothing else.
func TestRedisTLS(t *testing.T) {
	bounded.Test(t, time.Minute)
	r := redistest.StartTLS(t)
	s := startServer(t, "broker: redis\nredis_url: rediss://"+r.Addr+"\nredis_tls_ca_file: "+r.CAFile+"\n")
	bounded.Wait(t, "ready over TLS", 20*time.Second, func() bool { return s.status().Broker.Ready })
	s.createChannel("c")
	// Without the CA, the certificate is not trusted: never ready, and
	// the status says why.
	s2 := startServer(t, "broker: redis\nredis_url: rediss://"+r.Addr+"\n")
	bounded.Wait(t, "the status to name the certificate", 20*time.Second, func() bool {
		return strings.Contains(s2.status().Broker.LastError, "certificate")
	})
	if s2.status().Broker.Ready {
		t.Fatal("ready with an untrusted certificate")
	}
}
