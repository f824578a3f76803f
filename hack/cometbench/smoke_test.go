package main

import (
	"bytes"
	"image/png"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// The test binary is also the workers' binary: startWorkers runs
// os.Executable() with "worker".
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "trivial" {
		if err := runTrivial(); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}
	if len(os.Args) > 1 && os.Args[1] == "worker" {
		if err := runWorker(); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// A quick report against the real server: every scenario, the page and the
// plot, at sizes that check the generator, not benchmark anything (make
// bench does that).
func TestSmokeReport(t *testing.T) {
	dir := t.TempDir()
	d, err := writeReport(reportParams{Servers: []string{"comet", "comet-resume"}, Quick: true,
		Out: filepath.Join(dir, "benchmarks.md"), Plot: filepath.Join(dir, "latency.png")})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range d.Hold {
		if kib := r.PerRequestKiB.Median(); r.Errors != 0 || kib <= 0 || kib > 200 {
			t.Errorf("hold %d: %.1f KiB a waiting request, %d errors: the measurement is off", r.Waiting, kib, r.Errors)
		}
	}
	if len(d.Hold) != 2 || len(d.Fanout) != 2 || len(d.Summary) != 2 || len(d.Churn) != 2 {
		t.Fatalf("rows: %d hold, %d fanout, %d summary, %d churn", len(d.Hold), len(d.Fanout), len(d.Summary), len(d.Churn))
	}
	for _, s := range d.Summary {
		for _, a := range s.At {
			if len(a.CPUPerDelivery) != 1 || len(a.P99) != 1 || a.Deliveries.Median() == 0 {
				t.Errorf("%s at %d publishes/s: %+v", s.Server, a.Rate, a)
			}
		}
	}
	if c := d.Ceiling; c.RequestsPerSec.Median() <= 0 || c.CPUPerRequest.Median() <= 0 {
		t.Errorf("ceiling %+v: want a rate and a CPU per request", c)
	}
	// Resuming clients lose nothing and get nothing twice, through
	// hang-ups; the same clients not resuming may lose what came between
	// their polls (a handful at these sizes, so not asserted).
	if f, c := d.Fanout[1], d.Churn[1]; f.Lost != 0 || f.Duplicated != 0 || c.Lost != 0 || c.Duplicated != 0 {
		t.Errorf("resuming: fan-out lost %d, duplicated %d; churn lost %d, duplicated %d; want none", f.Lost, f.Duplicated, c.Lost, c.Duplicated)
	}
	if c := d.Churn[0]; c.Duplicated != 0 {
		t.Errorf("not resuming, under churn: duplicated %d; a message can be lost, never had twice", c.Duplicated)
	}
	t.Logf("lost/duplicated: fan-out %d/%d and %d/%d resuming; churn %d/%d and %d/%d resuming",
		d.Fanout[0].Lost, d.Fanout[0].Duplicated, d.Fanout[1].Lost, d.Fanout[1].Duplicated,
		d.Churn[0].Lost, d.Churn[0].Duplicated, d.Churn[1].Lost, d.Churn[1].Duplicated)
	for _, s := range d.Fanout[0].Steps {
		// CPU is counted in 10 ms ticks, so a light step may show 0; more
		// than the machine would mean counting a process twice.
		limit := float64(100 * runtime.NumCPU())
		if s.DeliveriesPerSec == 0 || s.Errors != 0 || s.ServerCPU < 0 || s.ServerCPU > limit || s.GeneratorCPU < 0 || s.GeneratorCPU > limit {
			t.Errorf("fanout step %+v", s)
		}
	}
	c := d.Churn[1]
	if c.DeliveriesPerSec == 0 || c.AbortsPerSec == 0 || c.Errors != 0 || !strings.HasPrefix(c.HeldAfter, "0 (") {
		t.Errorf("churn %+v: want deliveries, hang-ups, no error, nothing held after", c)
	}

	page, err := os.ReadFile(filepath.Join(dir, "benchmarks.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| cometserver | 600 | ", "**cometserver** (sustained:", "| cometserver | 200 | 20 |", "| cometserver, resuming | 200 | 20 |", "**The machine's ceiling**", "![p99 and p50", "(latency.png)", "quick run"} {
		if !strings.Contains(string(page), want) {
			t.Errorf("the page lacks %q:\n%s", want, page)
		}
	}
	f, err := os.ReadFile(filepath.Join(dir, "latency.png"))
	if err != nil {
		t.Fatal(err)
	}
	if img, err := png.Decode(bytes.NewReader(f)); err != nil || img.Bounds().Dx() < 600 {
		t.Fatalf("plot: %v", err)
	}
}

// The fleet target: three servers on one Redis, clients spread over them,
// publishers on each; resuming clients lose nothing and get nothing twice.
func TestSmokeRedisFleet(t *testing.T) {
	row, err := hold("comet-redis", "", 300, 10)
	if err != nil {
		t.Fatal(err)
	}
	if row.Errors != 0 || row.Waiting != 300 || row.PerRequestKiB <= 0 {
		t.Errorf("hold: %+v", row)
	}
	res, err := fanout("comet-redis", "", 10, 20, []int{50, 100}, 2*time.Second, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if res.Lost != 0 || res.Duplicated != 0 {
		t.Errorf("fan-out across the fleet: lost %d, duplicated %d; want none", res.Lost, res.Duplicated)
	}
	for _, s := range res.Steps {
		if s.DeliveriesPerSec == 0 || s.Errors != 0 {
			t.Errorf("fanout step %+v", s)
		}
	}
}
