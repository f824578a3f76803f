package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// run is one scenario's server with its clients all waiting.
type run struct {
	srv      server
	channels []string
	w        *workers
	idle     int64 // the server's RSS before any client, in KiB
}

// setUp starts a server, makes its channels, and waits until clients long
// polls spread over them are held. Its counts start from there: a server
// may refuse polls while it starts. The caller must tearDown.
func setUp(name, cometBin string, channelCount, clients int, abortMean time.Duration) (*run, error) {
	srv, err := startServer(name, cometBin)
	if err != nil {
		return nil, err
	}
	channels, err := srv.Channels(channelCount)
	if err != nil {
		srv.Stop()
		return nil, err
	}
	time.Sleep(time.Second)
	r := &run{srv: srv, channels: channels, idle: rssKiB(srv.PIDs()...)}
	if r.w, err = startWorkers(srv, channels, clients, abortMean); err != nil {
		srv.Stop()
		return nil, err
	}
	if err := waitHeld(srv, clients); err != nil {
		r.tearDown()
		return nil, err
	}
	r.w.report()
	return r, nil
}

func (r *run) tearDown() {
	r.w.stop()
	r.srv.Stop()
}

// cpuMeter measures the CPU of the server's process tree and of the
// generator (this process and its workers) over an interval, in percent of
// one core.
type cpuMeter struct {
	r                         *run
	server, generator, broker int64
	at                        time.Time
}

// brokered is a server with a broker process (Redis) among its PIDs.
type brokered interface{ brokerPIDs() []int }

func (r *run) startCPU() cpuMeter {
	m := cpuMeter{r: r, server: cpuTicks(r.srv.PIDs()...), generator: r.generatorTicks(), at: time.Now()}
	if b, ok := r.srv.(brokered); ok {
		m.broker = cpuTicks(b.brokerPIDs()...)
	}
	return m
}

// brokerCPU is the broker's part of the server CPU since the start, in
// percent of one core; ok false for a server without one.
func (m cpuMeter) brokerCPU() (pct float64, ok bool) {
	b, ok := m.r.srv.(brokered)
	if !ok {
		return 0, false
	}
	return float64(cpuTicks(b.brokerPIDs()...)-m.broker) / time.Since(m.at).Seconds(), true
}

func (m cpuMeter) stop() (server, generator float64) {
	secs := time.Since(m.at).Seconds()
	pct := func(ticks int64) float64 { return float64(ticks) / 100 / secs * 100 }
	return pct(cpuTicks(m.r.srv.PIDs()...) - m.server), pct(m.r.generatorTicks() - m.generator)
}

// generatorTicks is this process alone (the servers are its children too)
// plus its workers.
func (r *run) generatorTicks() int64 {
	t := processTicks(os.Getpid())
	if r.w != nil {
		for _, p := range r.w.procs {
			t += processTicks(p.Process.Pid)
		}
	}
	return t
}

// holdRow is one server holding clients long polls.
type holdRow struct {
	Server             string
	Waiting, Channels  int
	IdleKiB, HeldKiB   int64
	PerRequestKiB, CPU float64
	Errors             int64
	BrokerCPU          *float64 // redis-server's part of CPU, for a fleet
}

const holdHeader = "| server | waiting | channels | RSS idle | RSS holding | per waiting request | CPU holding | errors |\n|---|---|---|---|---|---|---|---|\n"

func (r holdRow) Markdown() string {
	return fmt.Sprintf("| %s | %s | %d | %s KiB | %s KiB | %.1f KiB | %.1f%%%s | %s |\n",
		r.Server, thousands(int64(r.Waiting)), r.Channels, thousands(r.IdleKiB), thousands(r.HeldKiB), r.PerRequestKiB, r.CPU,
		brokerNote(r.BrokerCPU, "%.1f"), thousands(r.Errors))
}

// brokerNote is " (Redis N%)" for a fleet's CPU column, "" otherwise.
func brokerNote(cpu *float64, format string) string {
	if cpu == nil {
		return ""
	}
	return fmt.Sprintf(" (Redis "+format+"%%)", *cpu)
}

func hold(name, cometBin string, clients, channelCount int) (holdRow, error) {
	run, err := setUp(name, cometBin, channelCount, clients, 0)
	if err != nil {
		return holdRow{}, err
	}
	defer run.tearDown()
	srv := run.srv
	time.Sleep(2 * time.Second)
	meter := run.startCPU()
	time.Sleep(5 * time.Second)
	cpu, _ := meter.stop()
	var brokerCPU *float64
	if b, ok := meter.brokerCPU(); ok {
		brokerCPU = &b
	}
	held := rssKiB(srv.PIDs()...)
	if c := profiledServer(srv); c != nil && profileFile != "" {
		if err := c.fetch("/debug/pprof/heap", profileFile); err != nil {
			return holdRow{}, fmt.Errorf("heap profile: %w", err)
		}
		if err := c.fetch("/metrics", profileFile+".metrics"); err != nil { // stacks, goroutines
			return holdRow{}, fmt.Errorf("metrics: %w", err)
		}
	}
	r, err := run.w.report()
	if err != nil {
		return holdRow{}, err
	}
	return holdRow{
		Server: srv.Name(), Waiting: clients, Channels: channelCount, IdleKiB: run.idle, HeldKiB: held,
		PerRequestKiB: float64(held-run.idle) / float64(clients), CPU: cpu, Errors: r.Errors, BrokerCPU: brokerCPU,
	}, nil
}

// stepRow is one publish rate of the fan-out.
type stepRow struct {
	Rate                    int
	DeliveriesPerSec        float64
	P50, P99, Max           float64 // ms
	Errors                  int64
	ServerCPU, GeneratorCPU float64
	BrokerCPU               *float64 // redis-server's part of ServerCPU, for a fleet
}

// fanoutResult is one server's fan-out.
type fanoutResult struct {
	Server                string
	Channels, Subscribers int
	Steps                 []stepRow
	Sustained             int   // deliveries/s at the highest rate with p99 under 100 ms and no error
	Lost, Duplicated      int64 // over every step, counted by the clients
}

const stepHeader = "| publishes/s | deliveries/s | p50 | p99 | max | errors | server CPU | generator CPU |\n|---|---|---|---|---|---|---|---|\n"

func (s stepRow) Markdown() string {
	return fmt.Sprintf("| %d | %s | %s | %s | %s | %s | %.0f%%%s | %.0f%% |\n", s.Rate, thousands(int64(s.DeliveriesPerSec)),
		ms(s.P50), ms(s.P99), ms(s.Max), thousands(s.Errors), s.ServerCPU, brokerNote(s.BrokerCPU, "%.0f"), s.GeneratorCPU)
}

// fanout steps the publish rate up over channelCount channels with
// subscribers waiting on each, printing each step to progress as it ends.
func fanout(name, cometBin string, channelCount, subscribers int, rates []int, step time.Duration, progress io.Writer) (fanoutResult, error) {
	res := fanoutResult{Channels: channelCount, Subscribers: subscribers}
	run, err := setUp(name, cometBin, channelCount, channelCount*subscribers, 0)
	if err != nil {
		return res, err
	}
	defer run.tearDown()
	srv, w, channels := run.srv, run.w, run.channels
	res.Server = srv.Name()
	pub := newPublisher(srv, channels)
	var last report
	fmt.Fprintf(progress, "\n%s, %d channels x %d waiting subscribers:\n\n%s", srv.Name(), channelCount, subscribers, stepHeader)
	for _, rate := range rates {
		meter := run.startCPU()
		var profiled chan error
		if c := profiledServer(srv); c != nil && profileFile != "" && rate == profileRate {
			profiled = make(chan error, 1)
			go func() { profiled <- c.profile(step - time.Second) }()
		}
		publishErrors := pub.run(rate, step)
		if profiled != nil {
			if err := <-profiled; err != nil {
				return res, fmt.Errorf("profile: %w", err)
			}
		}
		serverCPU, generatorCPU := meter.stop()
		var brokerCPU *float64
		if b, ok := meter.brokerCPU(); ok {
			brokerCPU = &b
		}
		time.Sleep(500 * time.Millisecond) // let the last replies land
		r, err := w.report()
		if err != nil {
			return res, err
		}
		last = r
		res.Lost += r.Lost
		res.Duplicated += r.Duplicated
		p50, p99, mx := summarize(r.Latencies)
		row := stepRow{Rate: rate, DeliveriesPerSec: float64(r.Deliveries) / step.Seconds(), P50: p50, P99: p99, Max: mx,
			Errors: r.Errors + publishErrors, ServerCPU: serverCPU, GeneratorCPU: generatorCPU, BrokerCPU: brokerCPU}
		fmt.Fprint(progress, row.Markdown())
		res.Steps = append(res.Steps, row)
		if p99 < 100 && row.Errors == 0 {
			res.Sustained = int(row.DeliveriesPerSec)
		}
	}
	// What is still on its way is not lost: wait until nothing more
	// arrives before counting what never came.
	r, err := w.settle()
	if err != nil {
		return res, err
	}
	if r.Tails != nil {
		last = r
	}
	res.Lost += r.Lost + pub.tailLost(last.Tails)
	res.Duplicated += r.Duplicated
	return res, nil
}

// settle waits, for at most 10 seconds, until half a second passes with
// no delivery, and returns what came meanwhile: the lost and duplicated
// counts and the tails once the replies still under way have landed.
func (w *workers) settle() (report, error) {
	var total report
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		time.Sleep(500 * time.Millisecond)
		r, err := w.report()
		if err != nil {
			return total, err
		}
		total.Lost += r.Lost
		total.Duplicated += r.Duplicated
		total.Tails = r.Tails
		if r.Deliveries == 0 {
			break
		}
	}
	return total, nil
}

// churnParams shape the churn scenario.
type churnParams struct {
	Clients, Channels, Rate int
	AbortMean, Duration     time.Duration
}

// churnRow is one server under churn.
type churnRow struct {
	Server string
	churnParams
	DeliveriesPerSec, AbortsPerSec float64
	P50, P99                       float64
	Errors                         int64
	ServerCPU, GeneratorCPU        float64
	HeldAfter                      string // polls the server still holds once every client left
	RSSAfterKiB, IdleKiB           int64
	Lost, Duplicated               int64 // counted by the clients
}

const churnHeader = "| server | clients | publishes/s | deliveries/s | hang-ups/s | lost | duplicated | p50 | p99 | errors | server CPU | generator CPU | held after | RSS idle / after |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"

func (r churnRow) Markdown() string {
	return fmt.Sprintf("| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %.0f%% | %.0f%% | %s | %s / %s KiB |\n",
		r.Server, thousands(int64(r.Clients)), r.Rate, thousands(int64(r.DeliveriesPerSec)), thousands(int64(r.AbortsPerSec)),
		thousands(r.Lost), thousands(r.Duplicated),
		ms(r.P50), ms(r.P99), thousands(r.Errors), r.ServerCPU, r.GeneratorCPU, r.HeldAfter, thousands(r.IdleKiB), thousands(r.RSSAfterKiB))
}

// churn runs clients that re-poll after each reply and hang up mid-wait
// after an exponentially distributed time (then poll again on a new
// connection), under a steady publish rate; then every client leaves and
// the server should hold nothing.
func churn(name, cometBin string, p churnParams) (churnRow, error) {
	row := churnRow{churnParams: p}
	run, err := setUp(name, cometBin, p.Channels, p.Clients, p.AbortMean)
	if err != nil {
		return row, err
	}
	defer run.srv.Stop()
	row.Server, row.IdleKiB = run.srv.Name(), run.idle
	meter := run.startCPU()
	pub := newPublisher(run.srv, run.channels)
	publishErrors := pub.run(p.Rate, p.Duration)
	row.ServerCPU, row.GeneratorCPU = meter.stop()
	r, err := run.w.report()
	if err != nil {
		run.w.stop()
		return row, err
	}
	tail, err := run.w.settle() // the last replies land before counting what was lost
	if err != nil {
		run.w.stop()
		return row, err
	}
	r.Lost += tail.Lost
	r.Duplicated += tail.Duplicated
	r.Tails = tail.Tails
	row.DeliveriesPerSec = float64(r.Deliveries) / p.Duration.Seconds()
	row.AbortsPerSec = float64(r.Aborts) / p.Duration.Seconds()
	row.P50, row.P99, _ = summarize(r.Latencies)
	row.Errors = r.Errors + publishErrors
	row.Lost, row.Duplicated = r.Lost+pub.tailLost(r.Tails), r.Duplicated

	run.w.stop()
	row.HeldAfter = "n/a" // Pushpin's count is of holds asked for, not held now
	if _, cumulative := run.srv.(*pushpinTarget); !cumulative {
		deadline := time.Now().Add(10 * time.Second)
		held, err := run.srv.Held()
		for ; err == nil && held > 0 && time.Now().Before(deadline); held, err = run.srv.Held() {
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			return row, err
		}
		row.HeldAfter = strconv.Itoa(held)
		if c, ok := run.srv.(*cometTarget); ok {
			// A leak would show as goroutines (one per parked connection),
			// once the server's pooled goroutines, which end after a second
			// idle, are gone.
			time.Sleep(2 * time.Second)
			n, err := c.goroutines()
			if err != nil {
				return row, err
			}
			row.HeldAfter += fmt.Sprintf(" (%d goroutines)", n)
		}
	}
	time.Sleep(time.Second)
	row.RSSAfterKiB = rssKiB(run.srv.PIDs()...)
	return row, nil
}

// goroutines reads the server's go_goroutines metric.
func (t *cometTarget) goroutines() (int, error) {
	resp, err := http.Get(t.publisher + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "go_goroutines "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return int(f), err
		}
	}
	return 0, fmt.Errorf("no go_goroutines in %s/metrics", t.publisher)
}

// publisher sends messages that carry their channel's sequence number.
// The messages of one channel go one at a time, so that their sequence is
// their order on the server and a client can count what it lost or got
// twice.
type publisher struct {
	srv      server
	channels []string
	mu       []sync.Mutex
	seq      []int64 // per channel: the last one sent, guarded by mu
}

func newPublisher(srv server, channels []string) *publisher {
	return &publisher{srv: srv, channels: channels, mu: make([]sync.Mutex, len(channels)), seq: make([]int64, len(channels))}
}

// run sends rate messages a second for d, round-robin over the channels,
// each carrying its publish time, from a pool of concurrent publishers (a
// write waits for its outcome). It returns the number of failed publishes.
func (p *publisher) run(rate int, d time.Duration) int64 {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	jobs := make(chan int, 1024)
	var errs atomic.Int64
	var wg sync.WaitGroup
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ch := range jobs {
				p.mu[ch].Lock()
				p.seq[ch]++
				if err := p.srv.Publish(hc, p.channels[ch], payload(p.seq[ch], time.Now())); err != nil {
					p.seq[ch]-- // not published: the next message takes its number
					errs.Add(1)
				}
				p.mu[ch].Unlock()
			}
		}()
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	sent, start := 0, time.Now()
	for i := 0; ctx.Err() == nil; {
		<-tick.C
		due := int(float64(rate) * time.Since(start).Seconds())
		for ; sent < due; sent++ {
			select {
			case jobs <- i % len(p.channels):
				i++
			case <-ctx.Done():
			}
		}
	}
	close(jobs)
	wg.Wait()
	return errs.Load()
}

// tailLost is what the clients of tails did not get after their last
// message: each should have got up to its channel's last sequence number.
func (p *publisher) tailLost(tails map[string]tail) int64 {
	var lost int64
	for i, ch := range p.channels {
		t := tails[ch]
		lost += t.Clients*p.seq[i] - t.LastSum
	}
	return lost
}

// thousands formats n with comma separators, as the tables do.
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := n < 0
	if neg {
		s = s[1:]
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		return "-" + s
	}
	return s
}

func ms(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) + " ms" }

// profiledServer is the comet server a profile is taken of: the target's
// own, or a fleet's first (each gets a third of the load); nil for peers.
func profiledServer(srv server) *cometTarget {
	switch t := srv.(type) {
	case *cometTarget:
		return t
	case *fleetTarget:
		return profiledServer(t.members[0])
	}
	return nil
}
