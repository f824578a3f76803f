package main

import (
	"strings"
	"testing"
	"time"
)

func TestCheckFlags(t *testing.T) {
	ok := func() (string, int, time.Duration, time.Duration, time.Duration) {
		return "cometserver:1", 4, 30 * time.Second, 5 * time.Minute, 10 * time.Second
	}
	if err := checkFlags(ok()); err != nil {
		t.Fatalf("good flags: %v", err)
	}
	image, conc, timeout, resync, retry := ok()
	for want, err := range map[string]error{
		"--cometserver-image is required":   checkFlags(" ", conc, timeout, resync, retry),
		"--push-concurrency must be at":     checkFlags(image, 0, timeout, resync, retry),
		"--push-timeout must be greater":    checkFlags(image, conc, 0, resync, retry),
		"--resync-period must be greater":   checkFlags(image, conc, timeout, -time.Second, retry),
		"--retry-period must be greater th": checkFlags(image, conc, timeout, resync, 0),
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
