// Command cometbench is the load generator for the comet server: it runs
// the server as its own process, spreads long-poll clients over worker
// processes (each dialing from its own 127.0.0.x address), and measures
// what a user compares push servers by.
//
//	cometbench hold   --servers comet,nchan --clients 10000 --channels 100
//	cometbench fanout --servers comet,nchan --channels 100 --subscribers 100 --rates 100,200,400
//
// hold: memory per waiting request (the server's RSS over its idle
// baseline) and CPU while holding. fanout: deliveries per second and
// publish-to-read latency for each publish rate; the highest rate held with
// p99 under 100 ms and no error is the sustained rate.
//
// Servers: comet (this project's) and nchan (nginx with Nchan, from
// Debian's nginx-light and libnginx-mod-nchan, configured by
// peers/nchan.conf). Each scenario runs every server in turn, on the same
// machine and the same work, one table row each. A Pushpin driver is to come.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cometop/comet-operator/cometserver/admin"
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
	if len(os.Args) > 1 && os.Args[1] == "worker" {
		if err := runWorker(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: cometbench hold|fanout [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	server := fs.String("cometserver", "", "cometserver binary (default: built from this checkout)")
	servers := fs.String("servers", "comet", "servers to run, in turn: comet, nchan, pushpin")
	clients := fs.Int("clients", 10000, "hold: waiting long polls")
	channelCount := fs.Int("channels", 100, "channels the clients spread over")
	subscribers := fs.Int("subscribers", 100, "fanout: waiting clients per channel")
	rates := fs.String("rates", "50,100,200,400,800", "fanout: publishes per second, one step each")
	step := fs.Duration("step", 5*time.Second, "fanout: length of each step")
	fs.StringVar(&profileFile, "profile", "", "comet server profile to write: CPU during one fanout step, heap while holding")
	fs.IntVar(&profileRate, "profile-rate", 200, "fanout: the step (publishes/s) to profile")
	fs.Parse(os.Args[2:])

	var err error
	names := strings.Split(*servers, ",")
	switch os.Args[1] {
	case "hold":
		printHoldHeader(os.Stdout)
		for _, name := range names {
			if err = hold(name, *server, *clients, *channelCount, os.Stdout); err != nil {
				break
			}
		}
	case "fanout":
		for _, name := range names {
			if err = fanout(name, *server, *channelCount, *subscribers, parseRates(*rates), *step, os.Stdout); err != nil {
				break
			}
		}
	default:
		err = fmt.Errorf("unknown scenario %q", os.Args[1])
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
	PID() int
	Protocol() string // the workers' poller
	URL() string      // what the workers poll
	Channels(n int) ([]string, error)
	Publish(hc *http.Client, channel, body string) error
	Held() (int, error) // long polls the server holds now
	Stop()
}

func startServer(name, cometBin string) (server, error) {
	switch name {
	case "comet":
		return startComet(cometBin)
	case "nchan":
		return startNchan()
	case "pushpin":
		return startPushpin()
	}
	return nil, fmt.Errorf("unknown server %q (comet, nchan, pushpin)", name)
}

// cometTarget is this project's server.
type cometTarget struct {
	cmd       *exec.Cmd
	client    string // long-poll URL
	publisher string
	socket    string
	dir       string
}

func (t *cometTarget) Name() string     { return "cometserver" }
func (t *cometTarget) PID() int         { return t.cmd.Process.Pid }
func (t *cometTarget) Protocol() string { return "comet" }
func (t *cometTarget) URL() string      { return t.client }

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

func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func startComet(bin string) (*cometTarget, error) {
	dir, err := os.MkdirTemp("", "cometbench")
	if err != nil {
		return nil, err
	}
	if bin == "" {
		bin = filepath.Join(dir, "cometserver")
		if out, err := exec.Command("go", "build", "-o", bin, "github.com/cometop/comet-operator/cometserver/cmd/cometserver").CombinedOutput(); err != nil {
			return nil, fmt.Errorf("building cometserver: %v\n%s", err, out)
		}
	}
	t := &cometTarget{socket: filepath.Join(dir, "admin.sock"), dir: dir}
	listen, pub := freeAddr(), freeAddr()
	t.client, t.publisher = "http://"+listen+"/comet", "http://"+pub
	t.cmd = exec.Command(bin, "serve", "--listen", listen, "--publisher-listen", pub,
		"--admin-socket", t.socket, "--timeout", "1h", "--log-level", "error", "--read-header-timeout", "60s",
		"--pprof="+strconv.FormatBool(profileFile != ""))
	t.cmd.Stderr = os.Stderr
	if err := t.cmd.Start(); err != nil {
		return nil, err
	}
	if err := waitUp(t.publisher + "/healthz"); err != nil {
		t.Stop()
		return nil, err
	}
	return t, nil
}

func waitUp(url string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not come up", url)
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
	procs []*exec.Cmd
	ins   []io.WriteCloser
	outs  []*bufio.Scanner
}

func startWorkers(srv server, channels []string, clients int) (*workers, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	w := &workers{}
	for i := 0; clients > 0; i++ {
		n := min(clients, perWorker)
		clients -= n
		cmd := exec.Command(self, "worker")
		cmd.Stderr = os.Stderr
		in, _ := cmd.StdinPipe()
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			w.stop()
			return nil, err
		}
		j, _ := json.Marshal(job{Protocol: srv.Protocol(), URL: srv.URL(), Channels: channels, Clients: n, Source: fmt.Sprintf("127.0.0.%d", 2+i)})
		fmt.Fprintf(in, "%s\n", j)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<30)
		w.procs, w.ins, w.outs = append(w.procs, cmd), append(w.ins, in), append(w.outs, sc)
	}
	return w, nil
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

func printHoldHeader(out io.Writer) {
	fmt.Fprintf(out, "| server | waiting | channels | RSS idle | RSS holding | per waiting request | CPU holding | errors |\n|---|---|---|---|---|---|---|---|\n")
}

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
func setUp(name, cometBin string, channelCount, clients int) (*run, error) {
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
	r := &run{srv: srv, channels: channels, idle: rssKiB(srv.PID())}
	if r.w, err = startWorkers(srv, channels, clients); err != nil {
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

func hold(name, cometBin string, clients, channelCount int, out io.Writer) error {
	run, err := setUp(name, cometBin, channelCount, clients)
	if err != nil {
		return err
	}
	defer run.tearDown()
	srv, w, idle := run.srv, run.w, run.idle
	time.Sleep(2 * time.Second)
	ticks0, at0 := cpuTicks(srv.PID()), time.Now()
	time.Sleep(5 * time.Second)
	cpu := float64(cpuTicks(srv.PID())-ticks0) / 100 / time.Since(at0).Seconds() * 100
	held := rssKiB(srv.PID())
	if c, ok := srv.(*cometTarget); ok && profileFile != "" {
		if err := c.fetch("/debug/pprof/heap", profileFile); err != nil {
			return fmt.Errorf("heap profile: %w", err)
		}
		if err := c.fetch("/metrics", profileFile+".metrics"); err != nil { // stacks, goroutines
			return fmt.Errorf("metrics: %w", err)
		}
	}
	r, err := w.report()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "| %s | %d | %d | %d KiB | %d KiB | %.1f KiB | %.1f%% | %d |\n",
		srv.Name(), clients, channelCount, idle, held, float64(held-idle)/float64(clients), cpu, r.Errors)
	return nil
}

func fanout(name, cometBin string, channelCount, subscribers int, rates []int, step time.Duration, out io.Writer) error {
	run, err := setUp(name, cometBin, channelCount, channelCount*subscribers)
	if err != nil {
		return err
	}
	defer run.tearDown()
	srv, w, channels := run.srv, run.w, run.channels
	fmt.Fprintf(out, "\n%s, %d channels x %d waiting subscribers:\n\n", srv.Name(), channelCount, subscribers)
	fmt.Fprintf(out, "| publishes/s | deliveries/s | p50 | p99 | max | errors | server CPU |\n|---|---|---|---|---|---|---|\n")
	sustained := 0
	for _, rate := range rates {
		ticks0 := cpuTicks(srv.PID())
		var profiled chan error
		if c, ok := srv.(*cometTarget); ok && profileFile != "" && rate == profileRate {
			profiled = make(chan error, 1)
			go func() { profiled <- c.profile(step - time.Second) }()
		}
		publishErrors := publish(srv, channels, rate, step)
		if profiled != nil {
			if err := <-profiled; err != nil {
				return fmt.Errorf("profile: %w", err)
			}
		}
		cpu := float64(cpuTicks(srv.PID())-ticks0) / 100 / step.Seconds() * 100
		time.Sleep(500 * time.Millisecond) // let the last replies land
		r, err := w.report()
		if err != nil {
			return err
		}
		p50, p99, mx := summarize(r.Latencies)
		errs := r.Errors + publishErrors
		perSec := float64(r.Deliveries) / step.Seconds()
		fmt.Fprintf(out, "| %d | %.0f | %.1f ms | %.1f ms | %.1f ms | %d | %.0f%% |\n", rate, perSec, p50, p99, mx, errs, cpu)
		if p99 < 100 && errs == 0 {
			sustained = int(perSec)
		}
	}
	fmt.Fprintf(out, "\n%s sustained deliveries/s (p99 under 100 ms, no error): %d\n", srv.Name(), sustained)
	return nil
}

// publish sends rate messages a second for d, round-robin over channels,
// each carrying its publish time, from a pool of concurrent publishers
// (a write waits for its outcome).
func publish(srv server, channels []string, rate int, d time.Duration) int64 {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	jobs := make(chan string, 1024)
	var errs int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ch := range jobs {
				if err := srv.Publish(hc, ch, strconv.FormatInt(time.Now().UnixNano(), 10)); err != nil {
					mu.Lock()
					errs++
					mu.Unlock()
				}
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
			case jobs <- channels[i%len(channels)]:
				i++
			case <-ctx.Done():
			}
		}
	}
	close(jobs)
	wg.Wait()
	return errs
}
