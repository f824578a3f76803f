// Command cometbench is the load generator for the comet server: it runs
// each server under test as its own process tree, spreads long-poll
// clients over worker processes (each dialing from its own 127.0.0.x
// address), and measures what a user compares push servers by.
//
//	cometbench hold   --servers comet,nchan,pushpin --clients 10000 --channels 100
//	cometbench fanout --servers comet,nchan,pushpin --channels 100 --subscribers 100 --rates 100,200,400
//	cometbench churn  --servers comet,nchan,pushpin --clients 5000 --rate 100 --abort-mean 5s
//	cometbench report --servers comet,nchan,pushpin --out docs/benchmarks.md
//
// hold: memory per waiting request (the server's RSS over its idle
// baseline) and CPU while holding. fanout: deliveries per second and
// publish-to-read latency for each publish rate; the highest rate held with
// p99 under 100 ms and no error is the sustained rate. churn: clients that
// re-poll after each message and hang up mid-wait at random, then whether
// the server is back to holding nothing. report: all three for every
// server, written as docs/benchmarks.md with a latency plot.
//
// Servers: comet (this project's), nchan (nginx with Nchan, Debian's
// nginx-light and libnginx-mod-nchan, configured by peers/nchan.conf) and
// pushpin (Debian's pushpin with zurl, configured by peers/pushpin.conf, in
// front of an origin inside this tool); comet-redis and nchan-redis run
// three of comet or of nchan on one redis-server, with the clients spread
// evenly over the three. Each scenario runs every server in turn, on the
// same machine and the same work.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cometop/comet-operator/cometserver/admin"
	"github.com/cometop/comet-operator/test/freeport"
)

// profileFile and profileRate ask for a CPU profile of the comet server.
var (
	profileFile string
	profileRate int
)

// perWorker keeps each worker well under the 20,000 open files a process
// may hold here.
const perWorker = 9000

func main() {
	if len(os.Args) > 1 && os.Args[1] == "trivial" {
		if err := runTrivial(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "worker" {
		if err := runWorker(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: cometbench hold|fanout|churn|ceiling|report [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	server := fs.String("cometserver", "", "cometserver binary (default: built from this checkout)")
	servers := fs.String("servers", "comet", "servers to run, in turn: comet, comet-nohistory, comet-resume, comet-redis, nchan, nchan-redis, pushpin")
	clients := fs.Int("clients", 10000, "hold: waiting long polls")
	channelCount := fs.Int("channels", 100, "channels the clients spread over")
	subscribers := fs.Int("subscribers", 100, "fanout: waiting clients per channel")
	rates := fs.String("rates", "50,100,200,400,800", "fanout: publishes per second, one step each")
	step := fs.Duration("step", 5*time.Second, "fanout: length of each step")
	fs.StringVar(&profileFile, "profile", "", "comet server profile to write: CPU during one fanout step, heap while holding")
	fs.IntVar(&profileRate, "profile-rate", 200, "fanout: the step (publishes/s) to profile")
	churnRate := fs.Int("rate", 100, "churn: publishes per second")
	abortMean := fs.Duration("abort-mean", 5*time.Second, "churn: mean time a client waits before hanging up (exponential)")
	duration := fs.Duration("duration", 10*time.Second, "churn: how long to churn")
	out := fs.String("out", "docs/benchmarks.md", "report: the page to write")
	plotFile := fs.String("plot", "docs/benchmarks-latency.png", "report: the latency plot to draw")
	quick := fs.Bool("quick", false, "report: small sizes and short steps, to check the tool itself")
	fs.Parse(os.Args[2:])

	var err error
	names := strings.Split(*servers, ",")
	switch os.Args[1] {
	case "hold":
		fmt.Print(holdHeader)
		for _, name := range names {
			var row holdRow
			if row, err = hold(name, *server, *clients, *channelCount); err != nil {
				break
			}
			fmt.Print(row.Markdown())
		}
	case "fanout":
		for _, name := range names {
			var res fanoutResult
			if res, err = fanout(name, *server, *channelCount, *subscribers, parseRates(*rates), *step, os.Stdout); err != nil {
				break
			}
			fmt.Printf("\n%s sustained deliveries/s (p99 under 100 ms, no error): %d\n", res.Server, res.Sustained)
		}
	case "churn":
		fmt.Print(churnHeader)
		for _, name := range names {
			var row churnRow
			if row, err = churn(name, *server, churnParams{Clients: *clients, Channels: *channelCount, Rate: *churnRate, AbortMean: *abortMean, Duration: *duration}); err != nil {
				break
			}
			fmt.Print(row.Markdown())
		}
	case "ceiling":
		var res ceilingResult
		if res, err = ceiling(*clients, *step); err == nil {
			fmt.Printf("trivial keep-alive handler, %d clients: %.0f requests/s, %.1f µs CPU each (server %.0f%%, generator %.0f%%)\n",
				res.Clients, res.RequestsPerSec, res.CPUPerRequest(), res.ServerCPU, res.GeneratorCPU)
		}
	case "report":
		_, err = writeReport(reportParams{Servers: names, CometBin: *server, Out: *out, Plot: *plotFile, Quick: *quick})
	default:
		err = fmt.Errorf("unknown scenario %q (hold, fanout, churn, ceiling, report)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cometbench:", err)
		os.Exit(1)
	}
}

func parseRates(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && n > 0 {
			out = append(out, n)
		}
	}
	return out
}

// server is a push server under test, running as its own process tree.
type server interface {
	Name() string
	PIDs() []int      // the server's processes; their descendants count too
	Protocol() string // the workers' poller
	URLs() []string   // what the workers poll, one each in turn
	Channels(n int) ([]string, error)
	Publish(hc *http.Client, channel, body string) error
	Held() (int, error) // long polls the server holds now
	Resume() bool       // its clients resume (PROTOCOL.md section 7)
	Stop()
}

func startServer(name, cometBin string) (server, error) {
	switch name {
	case "comet": // defaults: history on, clients that do not resume (the seed's)
		return startComet(cometBin, cometName, false)
	case "comet-nohistory": // the server as it was before history
		return startComet(cometBin, "cometserver, history off", false, "--history-size", "0")
	case "comet-resume": // defaults, clients that resume
		return startComet(cometBin, "cometserver, resuming", true)
	case "nchan":
		return startNchan(nchanName, "")
	case "pushpin":
		return startPushpin()
	case "comet-redis": // three servers on one Redis, clients that resume
		return startFleet(cometFleetName, fleetSize, func(addr string) (server, error) {
			return startCometOnRedis(cometBin, cometFleetName, addr)
		})
	case "nchan-redis": // the same with Nchan: three nginx on one Redis
		return startFleet(nchanFleetName, fleetSize, func(addr string) (server, error) {
			return startNchan(nchanFleetName, addr)
		})
	case "ceiling": // the machine's ceiling: a trivial keep-alive handler
		return startCeiling()
	}
	return nil, fmt.Errorf("unknown server %q (comet, comet-nohistory, comet-resume, comet-redis, nchan, nchan-redis, pushpin)", name)
}

// cometTarget is this project's server.
type cometTarget struct {
	name      string
	resume    bool
	cmd       *exec.Cmd
	client    string // long-poll URL
	publisher string
	socket    string
	dir       string
}

func (t *cometTarget) Name() string     { return t.name }
func (t *cometTarget) Resume() bool     { return t.resume }
func (t *cometTarget) PIDs() []int      { return []int{t.cmd.Process.Pid} }
func (t *cometTarget) Protocol() string { return "comet" }
func (t *cometTarget) URLs() []string   { return []string{t.client} }

// profile writes a CPU profile of d to profileFile.
func (t *cometTarget) profile(d time.Duration) error {
	return t.fetch(fmt.Sprintf("/debug/pprof/profile?seconds=%d", int(d.Seconds())), profileFile)
}

// fetch saves what the server's publisher listener serves at path.
func (t *cometTarget) fetch(path, file string) error {
	resp, err := http.Get(t.publisher + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}

func (t *cometTarget) Held() (int, error) {
	st, err := admin.Client{Path: t.socket}.Status()
	return st.Waiting, err
}

func (t *cometTarget) Publish(hc *http.Client, channel, body string) error {
	return post(hc, t.publisher+"/v1/channels/"+channel+"/messages", body, http.StatusOK)
}

// post sends body and expects one of the want statuses.
func post(hc *http.Client, url, body string, want ...int) error {
	resp, err := hc.Post(url, "text/plain", strings.NewReader(body))
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if !slices.Contains(want, resp.StatusCode) {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}

// channelNames are the channels every scenario uses.
func channelNames(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("bench-%d", i)
	}
	return ids
}

// freeAddr returns a loopback address for a server to listen on (see
// package freeport: a port the kernel picks for ":0" was taken before the
// server bound it, in CI).
func freeAddr() string {
	addr, err := freeport.Addr()
	if err != nil {
		panic(err)
	}
	return addr
}

// buildCometServer builds this checkout's comet server into out, in the
// product's own module: this tool's module only points at it.
func buildCometServer(out string) error {
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/cometop/comet-operator").Output()
	if err != nil {
		return fmt.Errorf("finding the product's module: %w", err)
	}
	cmd := exec.Command("go", "build", "-o", out, "./cometserver/cmd/cometserver")
	cmd.Dir = strings.TrimSpace(string(root))
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building cometserver: %v\n%s", err, b)
	}
	return nil
}

func startComet(bin, name string, resume bool, flags ...string) (*cometTarget, error) {
	dir, err := os.MkdirTemp("", "cometbench")
	if err != nil {
		return nil, err
	}
	if bin == "" {
		bin = filepath.Join(dir, "cometserver")
		if err := buildCometServer(bin); err != nil {
			return nil, err
		}
	}
	t := &cometTarget{name: name, resume: resume, socket: filepath.Join(dir, "admin.sock"), dir: dir}
	listen, pub := freeAddr(), freeAddr()
	t.client, t.publisher = "http://"+listen+"/comet", "http://"+pub
	t.cmd = exec.Command(bin, "serve", "--listen", listen, "--publisher-listen", pub,
		"--admin-socket", t.socket, "--timeout", "1h", "--log-level", "error", "--read-header-timeout", "60s",
		"--pprof="+strconv.FormatBool(profileFile != ""))
	t.cmd.Args = append(t.cmd.Args, flags...)
	t.cmd.Stderr = os.Stderr
	if err := t.cmd.Start(); err != nil {
		return nil, err
	}
	if err := waitUp(t.publisher+"/healthz", 10*time.Second); err != nil {
		t.Stop()
		return nil, err
	}
	return t, nil
}

// waitUp waits for url to answer, with one of codes if any are given, for
// at most d.
func waitUp(url string, d time.Duration, codes ...int) error {
	deadline := time.Now().Add(d)
	for {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if len(codes) == 0 || slices.Contains(codes, resp.StatusCode) {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not answer %v within %s", url, codes, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (t *cometTarget) Stop() { stopProcess(t.cmd); os.RemoveAll(t.dir) }

// stopProcess asks a server to stop and kills it after 15 seconds.
func stopProcess(cmd *exec.Cmd) {
	cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

func (t *cometTarget) Channels(n int) ([]string, error) {
	ids := channelNames(n)
	for _, id := range ids {
		if err := post(http.DefaultClient, t.publisher+"/v1/channels", `{"name":"`+id+`"}`, http.StatusCreated); err != nil {
			return nil, err
		}
	}
	return ids, nil
}

// waitHeld waits until the server holds n long polls.
func waitHeld(srv server, n int) error {
	deadline := time.Now().Add(3 * time.Minute)
	for {
		held, err := srv.Held()
		if err == nil && held >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s holds %d of %d polls after 3 minutes (%v)", srv.Name(), held, n, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// workers is the set of worker processes holding the clients.
type workers struct {
	server string
	procs  []*exec.Cmd
	ins    []io.WriteCloser
	outs   []*bufio.Scanner
}

func startWorkers(srv server, channels []string, clients int, abortMean time.Duration) (*workers, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	w := &workers{server: srv.Name()}
	urls := srv.URLs()
	for i, n := range workerShares(clients, len(urls)) {
		cmd := exec.Command(self, "worker")
		cmd.Stderr = os.Stderr
		in, _ := cmd.StdinPipe()
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			w.stop()
			return nil, err
		}
		j, _ := json.Marshal(job{Protocol: srv.Protocol(), URL: urls[i%len(urls)], Channels: channels, Clients: n, Source: fmt.Sprintf("127.0.0.%d", 2+i),
			AbortMean: abortMean, Resume: srv.Resume()})
		fmt.Fprintf(in, "%s\n", j)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<30)
		w.procs, w.ins, w.outs = append(w.procs, cmd), append(w.ins, in), append(w.outs, sc)
	}
	return w, nil
}

// workerShares splits clients over workers: as few as keep each under
// perWorker, but at least one per URL, the clients shared evenly, so that
// a fleet's servers each get their part (worker i polls URL i mod urls).
func workerShares(clients, urls int) []int {
	count := max((clients+perWorker-1)/perWorker, urls, 1)
	shares := make([]int, count)
	for i := range shares {
		shares[i] = clients / (count - i)
		clients -= shares[i]
	}
	return shares
}

// report asks every worker for its counts since the last report.
func (w *workers) report() (report, error) {
	var total report
	for i, in := range w.ins {
		fmt.Fprintln(in, "report")
		if !w.outs[i].Scan() {
			return total, fmt.Errorf("worker %d stopped: %v", i, w.outs[i].Err())
		}
		var r report
		if err := json.Unmarshal(w.outs[i].Bytes(), &r); err != nil {
			return total, err
		}
		total.Waiting += r.Waiting
		total.Deliveries += r.Deliveries
		total.Errors += r.Errors
		total.Aborts += r.Aborts
		total.Lost += r.Lost
		total.Duplicated += r.Duplicated
		for ch, t := range r.Tails {
			if total.Tails == nil {
				total.Tails = map[string]tail{}
			}
			sum := total.Tails[ch]
			sum.Clients += t.Clients
			sum.LastSum += t.LastSum
			total.Tails[ch] = sum
		}
		for _, e := range r.Samples {
			fmt.Fprintf(os.Stderr, "cometbench: %s: a client error: %s\n", w.server, e)
		}
		total.Latencies = append(total.Latencies, r.Latencies...)
	}
	return total, nil
}

func (w *workers) stop() {
	for _, in := range w.ins {
		in.Close()
	}
	for _, p := range w.procs {
		done := make(chan struct{})
		go func() { p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			p.Process.Kill()
			<-done
		}
	}
}
