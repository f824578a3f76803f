package main

import (
	"bytes"
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// The test binary is also the workers' binary: startWorkers runs
// os.Executable() with "worker".
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "worker" {
		if err := runWorker(); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// A short run of both scenarios against the real server: a smoke test of
// the generator, not a benchmark (make bench runs those).
func TestSmoke(t *testing.T) {
	var out bytes.Buffer
	if err := hold("comet", "", 300, 10, &out); err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile(`\| cometserver \| 300 \| 10 \| \d+ KiB \| \d+ KiB \| ([\d.]+) KiB \| [\d.]+% \| 0 \|`)
	m := row.FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("hold:\n%s", &out)
	}
	if kib, _ := strconv.ParseFloat(m[1], 64); kib <= 0 || kib > 200 {
		t.Fatalf("%s KiB a waiting request: the measurement is off\n%s", m[1], &out)
	}

	out.Reset()
	if err := fanout("comet", "", 5, 10, []int{20, 40}, time.Second, &out); err != nil {
		t.Fatal(err)
	}
	steps := regexp.MustCompile(`(?m)^\| (\d+) \| (\d+) \| [\d.]+ ms \| [\d.]+ ms \| [\d.]+ ms \| (\d+) \|`).FindAllStringSubmatch(out.String(), -1)
	if len(steps) != 2 {
		t.Fatalf("fanout:\n%s", &out)
	}
	for _, s := range steps {
		if d, _ := strconv.Atoi(s[2]); d == 0 || s[3] != "0" {
			t.Fatalf("step at %s publishes/s: %s deliveries/s, %s errors\n%s", s[1], s[2], s[3], &out)
		}
	}
}
