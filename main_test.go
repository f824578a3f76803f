package main

import (
	"strings"
	"testing"
	"time"
)

func TestCheckFlags(t *testing.T) {
	ok := func() (string, int, int, time.Duration, time.Duration, time.Duration) {
		return "cometserver:1", 4, 4, 30 * time.Second, 5 * time.Minute, 10 * time.Second
	}
	if err := checkFlags(ok()); err != nil {
		t.Fatalf("good flags: %v", err)
	}
	image, conc, recs, timeout, resync, retry := ok()
	if err := checkFlags(image, 1, 1, time.Second, resync, retry); err != nil {
		t.Fatalf("the least flags: %v", err)
	}
	for want, err := range map[string]error{
		"--cometserver-image is required":    checkFlags(" ", conc, recs, timeout, resync, retry),
		"--push-concurrency must be at":      checkFlags(image, 0, recs, timeout, resync, retry),
		"--reconcile-concurrency must be at": checkFlags(image, conc, 0, timeout, resync, retry),
		"--push-timeout must be at least 1s": checkFlags(image, conc, recs, time.Second-1, resync, retry),
		"--resync-period must be greater":    checkFlags(image, conc, recs, timeout, -time.Second, retry),
		"--retry-period must be greater th":  checkFlags(image, conc, recs, timeout, resync, 0),
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v, want %q", err, want)
		}
	}
}

func TestSplitList(t *testing.T) {
	if got := strings.Join(splitList(" a, b,,c ,"), "|"); got != "a|b|c" {
		t.Fatalf("splitList = %q", got)
	}
	if splitList("") != nil {
		t.Fatal("empty list is not nil: it would watch no namespace instead of all")
	}
}
