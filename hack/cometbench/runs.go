package main

import (
	"fmt"
	"slices"
	"strings"
)

// series is one figure over the runs of a report, in run order.
type series []float64

func (s series) Median() float64 {
	if len(s) == 0 {
		return 0
	}
	c := slices.Clone(s)
	slices.Sort(c)
	if n := len(c); n%2 == 0 {
		return (c[n/2-1] + c[n/2]) / 2
	}
	return c[len(c)/2]
}

// show renders the median, then every run in brackets: "4.1 [3.9, 4.1, 4.6]".
func (s series) Show(format string) string {
	if len(s) == 0 {
		return "n/a"
	}
	runs := make([]string, len(s))
	for i, v := range s {
		runs[i] = fmt.Sprintf(format, v)
	}
	if len(s) == 1 {
		return runs[0]
	}
	return fmt.Sprintf(format, s.Median()) + " [" + strings.Join(runs, ", ") + "]"
}

// holdSummary is one server's memory per waiting request over the runs.
type holdSummary struct {
	Server        string
	Waiting       int
	PerRequestKiB series
	HeldKiB       series
	Errors        int64
}

func summarizeHold(rows []holdRow) []holdSummary {
	var out []holdSummary
	for _, r := range rows {
		i := slices.IndexFunc(out, func(s holdSummary) bool { return s.Server == r.Server && s.Waiting == r.Waiting })
		if i < 0 {
			out = append(out, holdSummary{Server: r.Server, Waiting: r.Waiting})
			i = len(out) - 1
		}
		out[i].PerRequestKiB = append(out[i].PerRequestKiB, r.PerRequestKiB)
		out[i].HeldKiB = append(out[i].HeldKiB, float64(r.HeldKiB-r.IdleKiB))
		out[i].Errors += r.Errors
	}
	return out
}

func (h holdSummary) Markdown() string {
	return fmt.Sprintf("| %s | %s | %s KiB | %s KiB | %s |\n", h.Server, thousands(int64(h.Waiting)),
		h.PerRequestKiB.Show("%.1f"), h.HeldKiB.Show("%.0f"), thousands(h.Errors))
}

// rateSummary is a server at one publish rate over the runs.
type rateSummary struct {
	Rate                            int
	Deliveries, CPUPerDelivery, P99 series
	Errors                          int64
}

// fanSummary is one server's fan-out over the runs.
type fanSummary struct {
	Server    string
	Sustained series
	At        []rateSummary // at the report's compared rates
	Lost, Dup int64
}

func summarizeFanout(results []fanoutResult, rates []int) []fanSummary {
	var out []fanSummary
	for _, f := range results {
		i := slices.IndexFunc(out, func(s fanSummary) bool { return s.Server == f.Server })
		if i < 0 {
			s := fanSummary{Server: f.Server}
			for _, r := range rates {
				s.At = append(s.At, rateSummary{Rate: r})
			}
			out = append(out, s)
			i = len(out) - 1
		}
		s := &out[i]
		s.Sustained = append(s.Sustained, float64(f.Sustained))
		s.Lost += f.Lost
		s.Dup += f.Duplicated
		for j := range s.At {
			for _, step := range f.Steps {
				if step.Rate == s.At[j].Rate {
					a := &s.At[j]
					a.Deliveries = append(a.Deliveries, step.DeliveriesPerSec)
					a.CPUPerDelivery = append(a.CPUPerDelivery, perDelivery(step.ServerCPU, step.DeliveriesPerSec))
					a.P99 = append(a.P99, step.P99)
					a.Errors += step.Errors
				}
			}
		}
	}
	return out
}

// Markdown is the server's row of the summary table; ceiling is the
// trivial handler's median requests/s, 0 if not measured.
func (s fanSummary) Markdown(ceiling float64) string {
	row := fmt.Sprintf("| %s | %s", s.Server, s.Sustained.Show("%.0f"))
	if ceiling > 0 {
		row += fmt.Sprintf(" (%.0f%%)", 100*s.Sustained.Median()/ceiling)
	}
	for _, a := range s.At {
		row += fmt.Sprintf(" | %s µs | %s ms", a.CPUPerDelivery.Show("%.1f"), a.P99.Show("%.1f"))
	}
	return row + " |\n"
}

// ceilingSummary is the trivial handler over the runs.
type ceilingSummary struct {
	Clients                                          int
	RequestsPerSec, CPUPerRequest, Server, Generator series
}

func summarizeCeiling(runs []ceilingResult) ceilingSummary {
	var c ceilingSummary
	for _, r := range runs {
		c.Clients = r.Clients
		c.RequestsPerSec = append(c.RequestsPerSec, r.RequestsPerSec)
		c.CPUPerRequest = append(c.CPUPerRequest, r.CPUPerRequest())
		c.Server = append(c.Server, r.ServerCPU)
		c.Generator = append(c.Generator, r.GeneratorCPU)
	}
	return c
}

// The servers the performance issue's targets name, as the report names
// them (a fleet's name says its size, fleetSize).
const (
	cometName      = "cometserver"
	cometFleetName = "cometserver x3, Redis"
	nchanName      = "nginx+nchan"
	nchanFleetName = "nginx+nchan x3, Redis"
)

// targetPairs are the comparisons the targets make: each comet server
// against Nchan run the same way (in memory, or three on one Redis), and the
// comet fleet also against one Nchan in memory, the stricter of its two.
var targetPairs = [][2]string{
	{cometName, nchanName},
	{cometFleetName, nchanFleetName},
	{cometFleetName, nchanName},
}

// issueTargets checks the performance issue's targets for the comet server,
// in memory and on Redis, against Nchan's medians in the same run.
func issueTargets(fan []fanSummary, hold []holdSummary, holdAt int) []target {
	find := func(name string) (fanSummary, bool) {
		i := slices.IndexFunc(fan, func(s fanSummary) bool { return s.Server == name })
		if i < 0 {
			return fanSummary{}, false
		}
		return fan[i], true
	}
	heldKiB := func(name string) (float64, int64, bool) {
		i := slices.IndexFunc(hold, func(h holdSummary) bool { return h.Server == name && h.Waiting == holdAt })
		if i < 0 {
			return 0, 0, false
		}
		return hold[i].PerRequestKiB.Median(), hold[i].Errors, true
	}
	var out []target
	for _, pair := range targetPairs {
		name, peer := pair[0], pair[1]
		mine, mok := find(name)
		other, ook := find(peer)
		if mok && ook {
			for j, a := range mine.At {
				n := other.At[j]
				out = append(out,
					target{
						What:     fmt.Sprintf("%s: CPU per delivery at %s/s at most %s's", name, thousands(int64(n.Deliveries.Median())), peer),
						Measured: fmt.Sprintf("%.1f vs %.1f µs (%.2fx)", a.CPUPerDelivery.Median(), n.CPUPerDelivery.Median(), a.CPUPerDelivery.Median()/n.CPUPerDelivery.Median()),
						Met:      a.Errors == 0 && a.CPUPerDelivery.Median() <= n.CPUPerDelivery.Median(),
					},
					target{
						What:     fmt.Sprintf("%s: p99 at %s/s at most %s's", name, thousands(int64(n.Deliveries.Median())), peer),
						Measured: fmt.Sprintf("%.1f vs %.1f ms", a.P99.Median(), n.P99.Median()),
						Met:      a.Errors == 0 && a.P99.Median() <= n.P99.Median(),
					})
			}
			m, nm := mine.Sustained.Median(), other.Sustained.Median()
			out = append(out, target{
				What:     fmt.Sprintf("%s: sustained deliveries/s at least 1.3x %s's", name, peer),
				Measured: fmt.Sprintf("%s vs %s (%.2fx)", thousands(int64(m)), thousands(int64(nm)), m/max(nm, 1)),
				Met:      m >= 1.3*nm && nm > 0,
			})
		}
		kib, errs, mok := heldKiB(name)
		peerKiB, _, ook := heldKiB(peer)
		if mok && ook && peerKiB > 0 {
			out = append(out, target{
				What:     fmt.Sprintf("%s: memory per waiting request at %s at most 5.4 KiB and half %s's", name, thousands(int64(holdAt)), peer),
				Measured: fmt.Sprintf("%.1f KiB vs %.1f KiB (%.2fx)", kib, peerKiB, kib/peerKiB),
				Met:      errs == 0 && kib <= 5.4 && kib <= peerKiB/2,
			})
		}
	}
	return out
}
