package main

import (
	"bytes"
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
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
	FleetHold      int // a fleet on Redis also holds this many, over its three processes
	FanChannels    int
	FanSubscribers int
	Rates          []int
	Step           time.Duration
	Churn          churnParams
	Runs           int   // rounds of hold and fan-out, every server in turn in each
	CompareRates   []int // the publish rates the summary and targets compare at
}

func (p *reportParams) sizes() {
	if p.Quick {
		p.HoldSizes, p.HoldChannels, p.FleetHold = []int{600}, 10, 900
		p.FanChannels, p.FanSubscribers, p.Rates, p.Step = 10, 10, []int{20, 40}, time.Second
		p.Runs, p.CompareRates = 1, []int{20, 40}
		p.Churn = churnParams{Clients: 200, Channels: 10, Rate: 20, AbortMean: 500 * time.Millisecond, Duration: 3 * time.Second}
		return
	}
	// 19,000 waiting requests is about what one process can hold here.
	p.HoldSizes, p.HoldChannels, p.FleetHold = []int{19000}, 100, 50000
	// 100 and 200 publishes/s to 100 subscribers each: 10,000 and 20,000
	// deliveries/s, the rates the targets compare at. Past 200, steps of
	// 2,000 deliveries/s: the knee of every server here lies between
	// 20,000 and 30,000 (the machine's ceiling is about 29,000 requests/s),
	// and a coarser grid shows them all at 20,000.
	p.FanChannels, p.FanSubscribers, p.Rates, p.Step = 100, 100, []int{50, 100, 200, 220, 240, 260, 280, 300, 400}, 5*time.Second
	p.Runs, p.CompareRates = 3, []int{100, 200}
	p.Churn = churnParams{Clients: 5000, Channels: 100, Rate: 100, AbortMean: 5 * time.Second, Duration: 20 * time.Second}
}

// reportData is what the page template renders.
type reportData struct {
	Date, Machine, Go, Kernel, Comet, Nginx, Nchan, Pushpin, Zurl string
	Params                                                        reportParams
	Hold                                                          []holdSummary
	Fanout                                                        []fanoutResult // the first run's, step by step
	Summary                                                       []fanSummary   // every run's
	Ceiling                                                       ceilingSummary
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
	// Rounds: each server in turn, then the next round, so that a drift of
	// the machine over the run spreads over every server alike.
	var holds []holdRow
	for run := 1; run <= p.Runs; run++ {
		for _, n := range p.HoldSizes {
			for _, name := range p.Servers {
				say("hold %d on %s (run %d of %d)", n, name, run, p.Runs)
				row, err := hold(name, p.CometBin, n, p.HoldChannels)
				if err != nil {
					return d, fmt.Errorf("hold %d on %s: %w", n, name, err)
				}
				holds = append(holds, row)
			}
		}
	}
	for _, name := range p.Servers { // a fleet also holds past one process's open-file cap
		if !strings.HasSuffix(name, "-redis") {
			continue
		}
		say("hold %d on %s", p.FleetHold, name)
		row, err := hold(name, p.CometBin, p.FleetHold, p.HoldChannels)
		if err != nil {
			return d, fmt.Errorf("hold %d on %s: %w", p.FleetHold, name, err)
		}
		holds = append(holds, row)
	}
	d.Hold = summarizeHold(holds)
	var all []fanoutResult
	var ceilings []ceilingResult
	for run := 1; run <= p.Runs; run++ {
		for _, name := range p.Servers {
			say("fanout on %s (run %d of %d)", name, run, p.Runs)
			res, err := fanout(name, p.CometBin, p.FanChannels, p.FanSubscribers, p.Rates, p.Step, os.Stderr)
			if err != nil {
				return d, fmt.Errorf("fanout on %s: %w", name, err)
			}
			all = append(all, res)
			if run == 1 {
				d.Fanout = append(d.Fanout, res)
			}
		}
		say("ceiling (run %d of %d)", run, p.Runs)
		c, err := ceiling(p.FanChannels*p.FanSubscribers, p.Step)
		if err != nil {
			return d, fmt.Errorf("ceiling: %w", err)
		}
		ceilings = append(ceilings, c)
	}
	d.Summary = summarizeFanout(all, p.CompareRates)
	d.Ceiling = summarizeCeiling(ceilings)
	for _, name := range p.Servers {
		say("churn on %s", name)
		row, err := churn(name, p.CometBin, p.Churn)
		if err != nil {
			return d, fmt.Errorf("churn on %s: %w", name, err)
		}
		d.Churn = append(d.Churn, row)
	}
	d.Targets = issueTargets(d.Summary, d.Hold, p.HoldSizes[len(p.HoldSizes)-1])
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
