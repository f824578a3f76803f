package main

// The machine's ceiling: a trivial keep-alive Go handler that answers
// every request at once, driven by the same workers as the push servers.
// One long-poll delivery is one reply plus one new request, so what this
// handler answers per second, and its CPU per request, bound what any
// server can deliver here.

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"sync/atomic"
	"time"
)

// runTrivial serves the trivial handler on the address in os.Args[2]:
// GET /held answers the connections open, anything else a payload of
// sequence number 1 stamped with the time.
func runTrivial() error {
	if len(os.Args) < 3 {
		return fmt.Errorf("usage: cometbench trivial <address>")
	}
	var open atomic.Int64
	srv := &http.Server{
		Addr: os.Args[2],
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/held" {
				fmt.Fprint(w, open.Load()-1) // not this request's own connection
				return
			}
			w.Write([]byte(payload(1, time.Now())))
		}),
		ConnState: func(_ net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				open.Add(1)
			case http.StateClosed, http.StateHijacked:
				open.Add(-1)
			}
		},
	}
	return srv.ListenAndServe()
}

// ceilingTarget is the trivial handler as a server under test.
type ceilingTarget struct {
	cmd  *exec.Cmd
	base string
}

func startCeiling() (*ceilingTarget, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	addr := freeAddr()
	t := &ceilingTarget{cmd: exec.Command(self, "trivial", addr), base: "http://" + addr}
	t.cmd.Stderr = os.Stderr
	if err := t.cmd.Start(); err != nil {
		return nil, err
	}
	if err := waitUp(t.base+"/held", 10*time.Second); err != nil {
		t.Stop()
		return nil, err
	}
	return t, nil
}

func (t *ceilingTarget) Name() string                               { return "trivial keep-alive handler" }
func (t *ceilingTarget) PIDs() []int                                { return []int{t.cmd.Process.Pid} }
func (t *ceilingTarget) Protocol() string                           { return "pushpin" } // a GET whose body is the message
func (t *ceilingTarget) URLs() []string                             { return []string{t.base} }
func (t *ceilingTarget) Channels(n int) ([]string, error)           { return channelNames(n), nil }
func (t *ceilingTarget) Publish(*http.Client, string, string) error { return nil }
func (t *ceilingTarget) Resume() bool                               { return false }

func (t *ceilingTarget) Held() (int, error) {
	_, _, body, err := get(context.Background(), http.DefaultClient, t.base+"/held", nil)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(string(body))
}

func (t *ceilingTarget) Stop() {
	t.cmd.Process.Kill()
	t.cmd.Wait()
}

// ceilingResult is the trivial handler's rate with clients that each send
// their next request as soon as the last is answered.
type ceilingResult struct {
	Clients                 int
	RequestsPerSec          float64
	ServerCPU, GeneratorCPU float64
}

// CPUPerRequest is the handler's CPU per request, in microseconds.
func (c ceilingResult) CPUPerRequest() float64 { return perDelivery(c.ServerCPU, c.RequestsPerSec) }

func ceiling(clients int, d time.Duration) (ceilingResult, error) {
	res := ceilingResult{Clients: clients}
	run, err := setUp("ceiling", "", 1, clients, 0)
	if err != nil {
		return res, err
	}
	defer run.tearDown()
	run.w.report()
	meter := run.startCPU()
	time.Sleep(d)
	res.ServerCPU, res.GeneratorCPU = meter.stop()
	r, err := run.w.report()
	if err != nil {
		return res, err
	}
	res.RequestsPerSec = float64(r.Deliveries) / d.Seconds()
	return res, nil
}

// perDelivery turns a CPU share (percent of one core) at a rate into
// microseconds of CPU per event.
func perDelivery(cpuPct, perSec float64) float64 {
	if perSec <= 0 {
		return 0
	}
	return cpuPct / 100 / perSec * 1e6
}
