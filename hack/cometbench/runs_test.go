package main

import (
	"slices"
	"strings"
	"testing"
)

// Each client in exactly one worker, at least one worker per URL, none
// past perWorker, and the shares within one of each other.
func TestWorkerShares(t *testing.T) {
	for _, tt := range []struct{ clients, urls, workers int }{
		{10000, 1, 2}, {10000, 3, 3}, {50000, 3, 6}, {300, 3, 3}, {9000, 1, 1}, {9001, 1, 2}, {2, 3, 3}, {0, 1, 1},
	} {
		shares := workerShares(tt.clients, tt.urls)
		sum := 0
		for _, n := range shares {
			sum += n
		}
		if len(shares) != tt.workers || sum != tt.clients || slices.Max(shares) > perWorker || slices.Max(shares)-slices.Min(shares) > 1 {
			t.Errorf("%d clients over %d URLs: %v, want %d workers sharing them evenly", tt.clients, tt.urls, shares, tt.workers)
		}
	}
}

// In memory, Nchan's config names no Redis; on Redis, both locations store
// there.
func TestNchanConfig(t *testing.T) {
	mem := nchanConfig("/p", "8080", "")
	if strings.Contains(mem, "nchan_redis") || strings.Contains(mem, "REDIS_") || !strings.Contains(mem, "listen 127.0.0.1:8080") {
		t.Errorf("in memory:\n%s", mem)
	}
	red := nchanConfig("/p", "8080", "127.0.0.1:6390")
	if !strings.Contains(red, "nchan_redis_server redis://127.0.0.1:6390;") || strings.Count(red, "nchan_redis_pass redis;") != 2 {
		t.Errorf("on Redis:\n%s", red)
	}
}

// Each comet server is held to Nchan run the same way, and the fleet also
// to one Nchan in memory; a target is met only by the figures it names.
func TestIssueTargetsPairServers(t *testing.T) {
	at := func(cpu, p99 float64) []rateSummary {
		return []rateSummary{{Rate: 100, Deliveries: series{10000}, CPUPerDelivery: series{cpu}, P99: series{p99}}}
	}
	fan := []fanSummary{
		{Server: cometName, Sustained: series{30000}, At: at(20, 5)},
		{Server: nchanName, Sustained: series{20000}, At: at(25, 8)},
		{Server: cometFleetName, Sustained: series{20000}, At: at(50, 30)},
		{Server: nchanFleetName, Sustained: series{20000}, At: at(60, 20)},
	}
	hold := []holdSummary{
		{Server: cometName, Waiting: 19000, PerRequestKiB: series{3}},
		{Server: nchanName, Waiting: 19000, PerRequestKiB: series{10}},
	}
	met := map[string]bool{}
	for _, tg := range issueTargets(fan, hold, 19000) {
		met[tg.What] = tg.Met
	}
	want := map[string]bool{
		"cometserver: CPU per delivery at 10,000/s at most nginx+nchan's":                          true,
		"cometserver: p99 at 10,000/s at most nginx+nchan's":                                       true,
		"cometserver: sustained deliveries/s at least 1.3x nginx+nchan's":                          true,
		"cometserver: memory per waiting request at 19,000 at most 5.4 KiB and half nginx+nchan's": true,
		"cometserver x3, Redis: CPU per delivery at 10,000/s at most nginx+nchan x3, Redis's":      true,
		"cometserver x3, Redis: p99 at 10,000/s at most nginx+nchan x3, Redis's":                   false,
		"cometserver x3, Redis: sustained deliveries/s at least 1.3x nginx+nchan x3, Redis's":      false,
		"cometserver x3, Redis: CPU per delivery at 10,000/s at most nginx+nchan's":                false,
		"cometserver x3, Redis: p99 at 10,000/s at most nginx+nchan's":                             false,
		"cometserver x3, Redis: sustained deliveries/s at least 1.3x nginx+nchan's":                false,
	}
	for what, w := range want {
		if got, ok := met[what]; !ok || got != w {
			t.Errorf("%q: met %v (listed %v), want %v", what, got, ok, w)
		}
	}
	if len(met) != len(want) {
		t.Errorf("%d targets, want %d: %v", len(met), len(want), met)
	}
}
