// Package bounded keeps tests from hanging: every wait in a test is on a
// condition with a deadline, and a test that runs past its own deadline
// fails at once, naming itself and showing every goroutine, instead of
// hanging its package until go test's global timeout.
package bounded

import (
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"
)

// Test gives t a deadline. If t (with its subtests and cleanups) is still
// running after d, the test binary stops with a message that names t and
// a dump of every goroutine: a hang fails fast and says where it is.
func Test(t testing.TB, d time.Duration) {
	t.Helper()
	name := t.Name()
	timer := time.AfterFunc(d, func() {
		buf := make([]byte, 4<<20)
		buf = buf[:runtime.Stack(buf, true)]
		fmt.Fprintf(os.Stderr, "\n%s: still running after its %v deadline; goroutines:\n%s\n", name, d, buf)
		panic(fmt.Sprintf("%s: hung (deadline %v)", name, d))
	})
	t.Cleanup(func() { timer.Stop() })
}

// Wait polls cond until it holds, failing t with what if it does not
// within d.
func Wait(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	if !Until(d, cond) {
		t.Fatalf("timed out after %v waiting for %s", d, what)
	}
}

// Until polls cond until it holds or d passes, and reports whether it held.
// The poll starts fast and backs off to 10ms, so that quick conditions are
// seen quickly without spinning on slow ones.
func Until(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	pause := 100 * time.Microsecond
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pause)
		pause = min(2*pause, 10*time.Millisecond)
	}
	return true
}

// Recv receives from c, failing t with what if nothing arrives within d.
func Recv[T any](t testing.TB, what string, d time.Duration, c <-chan T) T {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case v := <-c:
		return v
	case <-timer.C:
		t.Fatalf("timed out after %v waiting for %s", d, what)
		panic("unreachable")
	}
}

// Quiet reports whether nothing arrives on c for d: for asserting that
// something does not happen, over a stated window.
func Quiet[T any](c <-chan T, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-c:
		return false
	case <-timer.C:
		return true
	}
}
