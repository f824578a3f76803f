package main

// A worker is a child process holding a share of the long polls: one
// process holds at most ~19,900 connections here (a hard open-file limit
// of 20,000), so the generator spreads its clients over several, each
// dialing from its own 127.0.0.x address (28,000 ephemeral ports each).

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cometop/comet-operator/cometserver/cometclient"
	"golang.org/x/sys/unix"
)

// job is what the parent asks a worker to do.
type job struct {
	Protocol string   `json:"protocol"` // "comet", "nchan" or "pushpin"
	URL      string   `json:"url"`      // the comet endpoint, or Nchan's base URL
	Channels []string `json:"channels"` // client i polls Channels[i % len]
	Clients  int      `json:"clients"`
	Source   string   `json:"source"` // local address to dial from
	// AbortMean, when set, makes each poll hang up after an exponentially
	// distributed time of this mean, unless answered first (churn).
	AbortMean time.Duration `json:"abort_mean"`
	// Resume makes comet clients resume from the positions of their last
	// reply (PROTOCOL.md section 7).
	Resume bool `json:"resume"`
}

// report is what a worker answers to "report": counts since the last one.
type report struct {
	Waiting    int64     `json:"waiting"` // polls sent and not answered
	Deliveries int64     `json:"deliveries"`
	Errors     int64     `json:"errors"`
	Aborts     int64     `json:"aborts"`            // polls the client hung up on mid-wait
	Latencies  []float64 `json:"latencies_ms"`      // publish to read, one per delivery
	Samples    []string  `json:"samples,omitempty"` // the first few errors, to say what they were
	// Each payload carries its channel's sequence number: a client counts,
	// from the first message it gets, every one it skipped (Lost) or got
	// again (Duplicated). Messages after its last are counted by the
	// parent from Tails, which knows what was published.
	Lost       int64           `json:"lost"`
	Duplicated int64           `json:"duplicated"`
	Tails      map[string]tail `json:"tails,omitempty"`
}

// tail sums, over a channel's clients that got a message, the sequence
// number of the last one each got.
type tail struct {
	Clients int64 `json:"clients"`
	LastSum int64 `json:"last_sum"`
}

// runWorker reads a job on stdin, starts its clients, and answers each
// "report" line with a JSON report until stdin closes.
func runWorker() error {
	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() {
		return fmt.Errorf("worker: no job")
	}
	var j job
	if err := json.Unmarshal(in.Bytes(), &j); err != nil {
		return fmt.Errorf("worker: job: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dialer := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(j.Source)}, Control: noPortAtBind}
	w := worker{last: make([]atomic.Int64, j.Clients), channels: j.Channels}
	var wg sync.WaitGroup
	// Clients start at a steady pace, not all in one burst: the figures are
	// about holding and delivering, and a burst of thousands of connects
	// overflows listen backlogs (somaxconn is 4,096 here), Pushpin's and its
	// origin's first of all.
	wg.Add(1)
	go func() {
		defer wg.Done()
		pace := time.NewTicker(time.Second / startsPerSecond)
		defer pace.Stop()
		for i := range j.Clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				hc := &http.Client{Transport: &connTransport{dial: dialer.DialContext}}
				w.client(ctx, i, newPoller(j.Protocol, hc, j.URL, j.Channels[i%len(j.Channels)], j.Resume), j.AbortMean)
			}()
			select {
			case <-pace.C:
			case <-ctx.Done():
				return
			}
		}
	}()
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		if in.Text() == "report" {
			if err := out.Encode(w.take()); err != nil {
				return err
			}
		}
	}
	cancel()
	wg.Wait()
	return nil
}

// startsPerSecond paces each worker's clients as they start.
const startsPerSecond = 2000

// noPortAtBind leaves the choice of the source port to connect: bound to
// an address with port 0, a socket otherwise gets its port at bind, where
// the kernel searches the range for one no socket holds and cannot reuse
// a port in TIME-WAIT, which under churn costs the generator whole cores.
func noPortAtBind(_, _ string, c syscall.RawConn) error {
	var err error
	if cerr := c.Control(func(fd uintptr) {
		err = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	}); cerr != nil {
		return cerr
	}
	return err
}

type worker struct {
	waiting, deliveries, errors, aborts atomic.Int64
	lost, duplicated                    atomic.Int64
	last                                []atomic.Int64 // per client: the sequence number of its last message, 0 before one
	channels                            []string       // client i polls channels[i % len]
	mu                                  sync.Mutex
	latencies                           []float64
	samples                             []string
}

// poller sends one long poll and returns the messages of its reply.
type poller func(ctx context.Context) ([][]byte, error)

func newPoller(protocol string, hc *http.Client, url, channel string, resume bool) poller {
	switch protocol {
	case "nchan":
		return nchanPoller(hc, url, channel)
	case "pushpin":
		return pushpinPoller(hc, url, channel)
	}
	c := &cometclient.Client{Endpoint: url, HTTP: hc, NoResume: !resume}
	c.Add(channel)
	return func(ctx context.Context) ([][]byte, error) {
		r, err := c.Poll(ctx)
		if err != nil {
			return nil, err
		}
		if r.Status != http.StatusOK {
			return nil, fmt.Errorf("status %d", r.Status)
		}
		var msgs [][]byte
		for _, m := range r.Messages {
			if m.Ended {
				return nil, fmt.Errorf("channel %s ended", channel)
			}
			if !m.Gap { // a gap is counted from the sequence numbers
				msgs = append(msgs, m.Data)
			}
		}
		return msgs, nil
	}
}

// get sends one GET with headers and returns the reply's status, headers
// and body.
func get(ctx context.Context, hc *http.Client, url string, headers map[string]string) (int, http.Header, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, nil, err
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, body, err
}

// nchanPoller is Nchan's long-poll subscriber: GET /sub/<channel>, then
// again with the Last-Modified and Etag of the last reply, for the message
// after it.
func nchanPoller(hc *http.Client, base, channel string) poller {
	var lastModified, etag string
	return func(ctx context.Context) ([][]byte, error) {
		var headers map[string]string
		if lastModified != "" {
			headers = map[string]string{"If-Modified-Since": lastModified, "If-None-Match": etag}
		}
		status, h, body, err := get(ctx, hc, base+"/sub/"+channel, headers)
		switch {
		case err != nil:
			return nil, err
		case status == http.StatusOK:
			lastModified, etag = h.Get("Last-Modified"), h.Get("Etag")
			return [][]byte{body}, nil
		case status == http.StatusNotModified || status == http.StatusRequestTimeout:
			return nil, nil // its timeout: poll again
		}
		return nil, fmt.Errorf("status %d", status)
	}
}

// pushpinPoller is a plain long poll through Pushpin: GET /sub/<channel>,
// held by the origin's GRIP instruction until a publish answers it.
func pushpinPoller(hc *http.Client, base, channel string) poller {
	return func(ctx context.Context) ([][]byte, error) {
		status, _, body, err := get(ctx, hc, base+"/sub/"+channel, nil)
		switch {
		case err != nil:
			return nil, err
		case status != http.StatusOK:
			return nil, fmt.Errorf("status %d", status)
		case len(body) == 0:
			return nil, nil // the hold timed out
		}
		return [][]byte{body}, nil
	}
}

// client polls until ctx ends, re-polling at once after each reply, and
// records each message's delay from its publish time (the payload is the
// publish time in Unix nanoseconds: one clock, one machine). With
// abortMean it hangs up mid-wait at random; net/http then closes the
// connection, and the next poll dials a new one.
func (w *worker) client(ctx context.Context, i int, poll poller, abortMean time.Duration) {
	for ctx.Err() == nil {
		pollCtx, cancel := ctx, context.CancelFunc(func() {})
		if abortMean > 0 {
			pollCtx, cancel = context.WithTimeout(ctx, time.Duration(rand.ExpFloat64()*float64(abortMean)))
		}
		w.waiting.Add(1)
		msgs, err := poll(pollCtx)
		w.waiting.Add(-1)
		// A hang-up is a poll that failed because its own deadline came;
		// one whose reply arrived just before that counts as answered (a
		// resuming client has already moved past its messages).
		hungUp := err != nil && pollCtx.Err() != nil && ctx.Err() == nil
		cancel()
		now := time.Now().UnixNano()
		if hungUp {
			w.aborts.Add(1)
			continue
		}
		if err != nil {
			if ctx.Err() == nil {
				w.errors.Add(1)
				w.sample(err)
				time.Sleep(100 * time.Millisecond)
			}
			continue
		}
		for _, m := range msgs {
			seq, sent, ok := parsePayload(m)
			if !ok {
				continue
			}
			switch last := w.last[i].Load(); {
			case last == 0: // its first: counting starts here
				w.last[i].Store(seq)
			case seq <= last:
				w.duplicated.Add(1)
			default:
				w.lost.Add(seq - last - 1)
				w.last[i].Store(seq)
			}
			w.deliveries.Add(1)
			w.mu.Lock()
			w.latencies = append(w.latencies, float64(now-sent)/1e6)
			w.mu.Unlock()
		}
	}
}

// sample keeps the first errors of a report.
func (w *worker) sample(err error) {
	w.mu.Lock()
	if len(w.samples) < 3 {
		w.samples = append(w.samples, err.Error())
	}
	w.mu.Unlock()
}

func (w *worker) take() report {
	w.mu.Lock()
	lat, samples := w.latencies, w.samples
	w.latencies, w.samples = nil, nil
	w.mu.Unlock()
	tails := map[string]tail{}
	for i := range w.last {
		if last := w.last[i].Load(); last > 0 {
			ch := w.channels[i%len(w.channels)]
			t := tails[ch]
			t.Clients++
			t.LastSum += last
			tails[ch] = t
		}
	}
	return report{Waiting: w.waiting.Load(), Deliveries: w.deliveries.Swap(0), Errors: w.errors.Swap(0),
		Aborts: w.aborts.Swap(0), Latencies: lat, Samples: samples,
		Lost: w.lost.Swap(0), Duplicated: w.duplicated.Swap(0), Tails: tails}
}

// payload is what the publisher sends: the channel's sequence number (from
// 1) and the publish time in Unix nanoseconds.
func payload(seq int64, at time.Time) string {
	return strconv.FormatInt(seq, 10) + " " + strconv.FormatInt(at.UnixNano(), 10)
}

func parsePayload(m []byte) (seq, sent int64, ok bool) {
	a, b, found := strings.Cut(string(m), " ")
	seq, err1 := strconv.ParseInt(a, 10, 64)
	sent, err2 := strconv.ParseInt(b, 10, 64)
	return seq, sent, found && err1 == nil && err2 == nil && seq > 0
}
