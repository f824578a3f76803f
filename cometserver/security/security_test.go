package security

import (
	"errors"
	"testing"
	"time"
)

func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func TestState(t *testing.T) {
	s := New(true, 0)
	timeout, abort, err := s.Admit()
	if err != nil || timeout != DefaultTimeout {
		t.Fatalf("Admit = %v, %v; want the 20s default", timeout, err)
	}

	if err := s.SetTimeout(5*time.Second, false); err != nil {
		t.Fatal(err)
	}
	if closed(abort) {
		t.Fatal("set_timeout without KILL aborted waiting requests")
	}
	if got, _, _ := s.Admit(); got != 5*time.Second {
		t.Fatalf("new requests wait %v, want 5s", got)
	}

	s.SetTimeout(time.Second, true)
	if !closed(abort) {
		t.Fatal("set_timeout KILL did not abort waiting requests")
	}
	_, abort2, _ := s.Admit()
	if closed(abort2) {
		t.Fatal("requests after a KILL start aborted")
	}

	s.Deactivate()
	if !closed(abort2) {
		t.Fatal("deactivate did not abort waiting requests")
	}
	if _, _, err := s.Admit(); !errors.Is(err, ErrDeactivated) {
		t.Fatalf("Admit while deactivated: %v", err)
	}
	s.Deactivate() // a no-op, must not panic on the closed channel
	s.Activate()
	s.Activate()
	_, abort3, err := s.Admit()
	if err != nil {
		t.Fatal(err)
	}

	s.Drain()
	if !closed(abort3) {
		t.Fatal("drain did not abort waiting requests")
	}
	s.Activate()
	if _, _, err := s.Admit(); !errors.Is(err, ErrDraining) {
		t.Fatalf("Admit after drain: %v", err)
	}
	if snap := s.Snapshot(); !snap.Activated || !snap.Draining || snap.Timeout != time.Second {
		t.Fatalf("snapshot %+v", snap)
	}
	if err := s.SetTimeout(0, false); err == nil {
		t.Fatal("a zero timeout was accepted")
	}
}
