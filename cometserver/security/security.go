// Package security holds the comet server's activation state and timeout,
// the knobs of PROTOCOL.md section 4 (Ocsigen_comet.Security).
package security

import (
	"errors"
	"sync"
	"time"
)

// Errors Admit returns: the request is answered 503.
var (
	ErrDeactivated = errors.New("comet is deactivated")
	ErrDraining    = errors.New("server is shutting down")
)

// DefaultTimeout is how long a request waits when nobody set a timeout.
const DefaultTimeout = 20 * time.Second

// State is the activation state and timeout shared by every request.
//
// Waiting requests watch an abort channel; deactivate, set_timeout with KILL
// and Drain close it (answering them 503) and put a fresh one in its place
// for the requests that come after.
type State struct {
	mu        sync.Mutex
	activated bool
	draining  bool
	timeout   time.Duration
	abort     chan struct{}
}

// New returns a State with the given initial values.
func New(activated bool, timeout time.Duration) *State {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &State{activated: activated, timeout: timeout, abort: make(chan struct{})}
}

// Admit lets a request start waiting: it returns the timeout in force now
// and the channel that closes if the request must be answered 503.
func (s *State) Admit() (timeout time.Duration, abort <-chan struct{}, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.draining:
		return 0, nil, ErrDraining
	case !s.activated:
		return 0, nil, ErrDeactivated
	}
	return s.timeout, s.abort, nil
}

// Aborted returns the channel that closes when the requests admitted until
// now must be answered 503: for code that watches on their behalf.
func (s *State) Aborted() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.abort
}

// Activate resumes comet activity; it does nothing if already active.
func (s *State) Activate() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.activated = true
}

// Deactivate stops comet activity: waiting requests are answered 503 now,
// new ones at once. It does nothing if already deactivated.
func (s *State) Deactivate() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.activated {
		s.activated = false
		s.abortWaitingLocked()
	}
}

// SetTimeout sets the timeout of requests that start waiting from now on.
// With kill, every waiting request is answered 503 at once.
func (s *State) SetTimeout(d time.Duration, kill bool) error {
	if d <= 0 {
		return errors.New("timeout must be greater than 0")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.timeout = d
	if kill {
		s.abortWaitingLocked()
	}
	return nil
}

// Drain answers every waiting and later request 503, for shutdown. It cannot
// be undone.
func (s *State) Drain() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.draining {
		s.draining = true
		s.abortWaitingLocked()
	}
}

func (s *State) abortWaitingLocked() {
	close(s.abort)
	s.abort = make(chan struct{})
}

// Snapshot is the state at one instant.
type Snapshot struct {
	Activated bool
	Draining  bool
	Timeout   time.Duration
}

// Snapshot returns the current state.
func (s *State) Snapshot() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Snapshot{Activated: s.activated, Draining: s.draining, Timeout: s.timeout}
}
