package main

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
)

// percentile returns the p-th percentile (0-100) of sorted values.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p / 100 * float64(len(sorted)-1))
	return sorted[i]
}

func summarize(lat []float64) (p50, p99, max float64) {
	sort.Float64s(lat)
	if len(lat) == 0 {
		return 0, 0, 0
	}
	return percentile(lat, 50), percentile(lat, 99), lat[len(lat)-1]
}

// procTrees is the processes and their descendants.
func procTrees(pids []int) []int {
	var all []int
	for _, pid := range pids {
		all = append(all, procTree(pid)...)
	}
	return all
}

// procTree is a process and its descendants, for RSS and CPU of a server
// that forks workers (nginx does).
func procTree(pid int) []int {
	pids := []int{pid}
	for i := 0; i < len(pids); i++ {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pids[i], pids[i]))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				pids = append(pids, c)
			}
		}
	}
	return pids
}

// rssKiB is the resident memory of a process tree, in KiB.
func rssKiB(pids ...int) int64 {
	var total int64
	for _, p := range procTrees(pids) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
				total += n
			}
		}
	}
	return total
}

// cpuTicks is the user and system time of a process tree, in clock ticks
// (1/100 s on Linux).
func cpuTicks(pids ...int) int64 {
	var total int64
	for _, p := range procTrees(pids) {
		total += processTicks(p)
	}
	return total
}

// processTicks is the user and system time of one process.
func processTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) <= 12 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	k, _ := strconv.ParseInt(f[12], 10, 64)
	return u + k
}
