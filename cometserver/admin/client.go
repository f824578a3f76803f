package admin

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/cometop/comet-operator/cometserver/contract"
)

// ErrUnreachable wraps every failure to reach the socket: missing, refused,
// permission denied, or no answer in time.
var ErrUnreachable = errors.New("admin socket unreachable")

// RefusedError is a command the server answered with "error: ...".
type RefusedError struct {
	Command string
	Reason  string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("server refused %q: %s", e.Command, e.Reason)
}

// DefaultTimeout bounds a client's exchange with the socket unless told
// otherwise.
const DefaultTimeout = 10 * time.Second

// Client talks to an admin socket.
type Client struct {
	Path    string
	Timeout time.Duration // for each exchange; 0 means DefaultTimeout
	// Deadline, if set, ends every exchange by then too: for a command
	// made of several exchanges that must fit in a time of its own.
	Deadline time.Time
}

// Do sends lines on one connection and returns the answer to each.
func (c Client) Do(lines ...string) ([]string, error) {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	if !c.Deadline.IsZero() {
		timeout = min(timeout, time.Until(c.Deadline))
		if timeout <= 0 {
			return nil, fmt.Errorf("%w: out of time", ErrUnreachable)
		}
	}
	conn, err := net.DialTimeout("unix", c.Path, timeout)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := conn.Write([]byte(strings.Join(lines, "\n") + "\n")); err != nil {
		return nil, fmt.Errorf("%w: sending: %w", ErrUnreachable, err)
	}
	r := bufio.NewReader(conn)
	answers := make([]string, 0, len(lines))
	for range lines {
		a, err := r.ReadString('\n')
		if err != nil {
			return answers, fmt.Errorf("%w: reading answer: %w", ErrUnreachable, err)
		}
		answers = append(answers, strings.TrimRight(a, "\n"))
	}
	return answers, nil
}

// Run sends one command and expects "ok".
func (c Client) Run(cmd Command) error {
	line := cmd.String()
	a, err := c.Do(line)
	if err != nil {
		return err
	}
	return checkOK(line, a[0])
}

func checkOK(line, answer string) error {
	if reason, ok := strings.CutPrefix(answer, "error: "); ok {
		return &RefusedError{Command: line, Reason: reason}
	}
	if answer != "ok" {
		return fmt.Errorf("unexpected answer to %q: %q", line, answer)
	}
	return nil
}

// Status asks for the server's status.
func (c Client) Status() (contract.Status, error) {
	line := Command{Verb: Status}.String()
	a, err := c.Do(line)
	if err != nil {
		return contract.Status{}, err
	}
	if reason, ok := strings.CutPrefix(a[0], "error: "); ok {
		return contract.Status{}, &RefusedError{Command: line, Reason: reason}
	}
	var s contract.Status
	if err := json.Unmarshal([]byte(a[0]), &s); err != nil {
		return contract.Status{}, fmt.Errorf("status answer is not JSON: %w", err)
	}
	return s, nil
}
