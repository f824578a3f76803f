package main

import (
	"bytes"
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"text/template"
	"time"
)

// reportParams say what `cometbench report` runs and where it writes.
type reportParams struct {
	Servers        []string
	CometBin       string
	Out, Plot      string
	Quick          bool // small sizes, to check the tool
	HoldSizes      []int
	HoldChannels   int
	FleetHold      int // comet-redis also holds this many, over its three processes
	FanChannels    int
	FanSubscribers int
	Rates          []int
	Step           time.Duration
	Churn          churnParams
}

func (p *reportParams) sizes() {
	if p.Quick {
		p.HoldSizes, p.HoldChannels, p.FleetHold = []int{300, 600}, 10, 900
		p.FanChannels, p.FanSubscribers, p.Rates, p.Step = 10, 10, []int{20, 40}, time.Second
		p.Churn = churnParams{Clients: 200, Channels: 10, Rate: 20, AbortMean: 500 * time.Millisecond, Duration: 3 * time.Second}
		return
	}
	p.HoldSizes, p.HoldChannels, p.FleetHold = []int{10000, 19000}, 100, 50000
	p.FanChannels, p.FanSubscribers, p.Rates, p.Step = 100, 100, []int{50, 100, 200, 300, 400, 600, 800}, 5*time.Second
	p.Churn = churnParams{Clients: 5000, Channels: 100, Rate: 100, AbortMean: 5 * time.Second, Duration: 20 * time.Second}
}

// reportData is what the page template renders.
type reportData struct {
	Date, Machine, Go, Kernel, Comet, Nginx, Nchan, Pushpin, Zurl string
	Params                                                        reportParams
	Hold                                                          []holdRow
	Fanout                                                        []fanoutResult
	Churn                                                         []churnRow
	Targets                                                       []target
	Plot                                                          string // the PNG, relative to the page
}

//go:embed report.md.tmpl
var reportTemplate string

// writeReport runs every scenario for every server, alternating, and writes
// the page and its plot.
func writeReport(p reportParams) (reportData, error) {
	d, err := runReport(p)
	if err != nil {
		return d, err
	}
	return d, d.write()
}

func runReport(p reportParams) (reportData, error) {
	p.sizes()
	if p.CometBin == "" { // build once, not once per scenario
		dir, err := os.MkdirTemp("", "cometbench-bin")
		if err != nil {
			return reportData{}, err
		}
		defer os.RemoveAll(dir)
		p.CometBin = filepath.Join(dir, "cometserver")
		if err := buildCometServer(p.CometBin); err != nil {
			return reportData{}, err
		}
	}
	d := reportData{Params: p, Date: time.Now().UTC().Format("2006-01-02")}
	d.describeMachine()

	say := func(f string, a ...any) { fmt.Fprintf(os.Stderr, "cometbench: "+f+"\n", a...) }
	for _, n := range p.HoldSizes {
		for _, name := range p.Servers {
			say("hold %d on %s", n, name)
			row, err := hold(name, p.CometBin, n, p.HoldChannels)
			if err != nil {
				return d, fmt.Errorf("hold %d on %s: %w", n, name, err)
			}
			d.Hold = append(d.Hold, row)
		}
	}
	if slices.Contains(p.Servers, "comet-redis") { // past one process's open-file cap
		say("hold %d on comet-redis", p.FleetHold)
		row, err := hold("comet-redis", p.CometBin, p.FleetHold, p.HoldChannels)
		if err != nil {
			return d, fmt.Errorf("hold %d on comet-redis: %w", p.FleetHold, err)
		}
		d.Hold = append(d.Hold, row)
	}
	for _, name := range p.Servers {
		say("fanout on %s", name)
		res, err := fanout(name, p.CometBin, p.FanChannels, p.FanSubscribers, p.Rates, p.Step, os.Stderr)
		if err != nil {
			return d, fmt.Errorf("fanout on %s: %w", name, err)
		}
		d.Fanout = append(d.Fanout, res)
	}
	for _, name := range p.Servers {
		say("churn on %s", name)
		row, err := churn(name, p.CometBin, p.Churn)
		if err != nil {
			return d, fmt.Errorf("churn on %s: %w", name, err)
		}
		d.Churn = append(d.Churn, row)
	}
	d.Targets = targets(d.Hold, d.Fanout)
	return d, nil
}

// write draws the plot and renders the page.
func (d *reportData) write() error {
	p := d.Params

	if p.Plot != "" {
		if err := plotLatency(d.Fanout, p.Plot); err != nil {
			return fmt.Errorf("plot: %w", err)
		}
		rel, err := filepath.Rel(filepath.Dir(p.Out), p.Plot)
		if err != nil {
			rel = p.Plot
		}
		d.Plot = filepath.ToSlash(rel)
	}
	var page bytes.Buffer
	t := template.Must(template.New("page").Funcs(template.FuncMap{
		"thousands":   func(n int) string { return thousands(int64(n)) },
		"thousands64": thousands,
	}).Parse(reportTemplate))
	if err := t.Execute(&page, *d); err != nil {
		return err
	}
	return os.WriteFile(p.Out, page.Bytes(), 0o644)
}

func (d *reportData) describeMachine() {
	run := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return "not installed"
		}
		return strings.TrimSpace(string(out))
	}
	pkg := func(name string) string { return run("dpkg-query", "-W", "-f", "${Version}", name) }
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	memGiB := 0.0
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kib float64
		fmt.Sscanf(strings.TrimPrefix(strings.Split(string(b), "\n")[0], "MemTotal:"), "%f", &kib)
		memGiB = kib / (1 << 20)
	}
	d.Machine = fmt.Sprintf("%d vCPU (%s), %.0f GiB", runtime.NumCPU(), model, memGiB)
	d.Go, d.Kernel = runtime.Version(), run("uname", "-r")
	d.Comet = run("git", "describe", "--always", "--dirty")
	d.Nginx, d.Nchan, d.Pushpin, d.Zurl = pkg("nginx-light"), pkg("libnginx-mod-nchan"), pkg("pushpin"), pkg("zurl")
}

// target is one of the benchmark issue's targets, checked on this run.
type target struct {
	What, Measured string
	Met            bool
}

// targets checks the comet server against the best peer in this run.
func targets(hold []holdRow, fan []fanoutResult) []target {
	var out []target
	sustained := map[string]fanoutResult{}
	for _, f := range fan {
		sustained[f.Server] = f
	}
	comet, ok := sustained["cometserver"]
	if ok {
		if n, ok := sustained["nginx+nchan"]; ok {
			out = append(out, target{
				What:     "sustained deliveries/s at least 2x Nchan's",
				Measured: fmt.Sprintf("%s vs %s (%.2fx)", thousands(int64(comet.Sustained)), thousands(int64(n.Sustained)), ratio(comet.Sustained, n.Sustained)),
				Met:      comet.Sustained >= 2*n.Sustained,
			})
		}
		if p, ok := sustained["pushpin"]; ok {
			out = append(out, target{
				What:     "sustained deliveries/s above Pushpin's",
				Measured: fmt.Sprintf("%s vs %s", thousands(int64(comet.Sustained)), thousands(int64(p.Sustained))),
				Met:      comet.Sustained > p.Sustained,
			})
		}
		out = append(out, halfLoadTarget(comet, fan))
	}
	for _, n := range distinct(hold) {
		var mine float64
		best, bestName := 0.0, ""
		for _, r := range hold {
			switch {
			case r.Waiting != n:
			case r.Server == "cometserver":
				mine = r.PerRequestKiB
			case variant(r.Server): // the comet server in another setting: not a peer
			case r.Errors == 0 && (bestName == "" || r.PerRequestKiB < best):
				best, bestName = r.PerRequestKiB, r.Server
			}
		}
		if bestName != "" && mine > 0 {
			out = append(out, target{
				What:     fmt.Sprintf("memory per waiting request at %s within 1.5x of the best peer's", thousands(int64(n))),
				Measured: fmt.Sprintf("%.1f KiB vs %.1f KiB (%s, %.2fx)", mine, best, bestName, mine/best),
				Met:      mine <= 1.5*best,
			})
		}
	}
	return out
}

// halfLoadTarget compares p99 at the publish rate nearest half the comet
// server's sustained load, across servers without errors at that rate.
func halfLoadTarget(comet fanoutResult, fan []fanoutResult) target {
	t := target{What: "p99 at half the sustained load no worse than the best peer's"}
	half := 0
	for _, s := range comet.Steps {
		if s.DeliveriesPerSec <= float64(comet.Sustained)/2+1 {
			half = s.Rate
		}
	}
	if half == 0 {
		t.Measured = "no step at or under half the sustained load"
		return t
	}
	mine, best, bestName := -1.0, 0.0, ""
	for _, f := range fan {
		for _, s := range f.Steps {
			switch {
			case s.Rate != half:
			case f.Server == "cometserver":
				mine = s.P99
			case variant(f.Server):
			case s.Errors == 0 && (bestName == "" || s.P99 < best):
				best, bestName = s.P99, f.Server
			}
		}
	}
	if bestName == "" || mine < 0 {
		t.Measured = fmt.Sprintf("at %d publishes/s: no peer without errors to compare with", half)
		return t
	}
	t.Measured = fmt.Sprintf("at %d publishes/s: %s vs %s (%s)", half, ms(mine), ms(best), bestName)
	t.Met = mine <= best
	return t
}

// variant reports whether a server's name is the comet server's in a
// setting other than its defaults ("cometserver, history off").
func variant(name string) bool {
	return strings.HasPrefix(name, "cometserver, ") || strings.HasPrefix(name, "cometserver x")
}

func distinct(rows []holdRow) []int {
	var out []int
	for _, r := range rows {
		if len(out) == 0 || out[len(out)-1] != r.Waiting {
			out = append(out, r.Waiting)
		}
	}
	return out
}

func ratio(a, b int) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}
