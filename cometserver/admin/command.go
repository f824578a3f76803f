// Package admin carries the comet admin commands of PROTOCOL.md section 4:
// their parser, the Unix socket and command pipe that take them, and the
// client that the ctl subcommand uses.
package admin

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Verb names an admin command.
type Verb string

const (
	Activate   Verb = "activate"
	Deactivate Verb = "deactivate"
	SetTimeout Verb = "set_timeout"
	Status     Verb = "status"
)

// Prefix starts every command line.
const Prefix = "comet:"

// Command is one parsed command line.
type Command struct {
	Verb    Verb
	Timeout time.Duration // set_timeout only
	Kill    bool          // set_timeout only
}

// String renders c as the line that Parse reads back.
func (c Command) String() string {
	if c.Verb != SetTimeout {
		return Prefix + string(c.Verb)
	}
	s := Prefix + string(SetTimeout) + " " + FormatSeconds(c.Timeout)
	if c.Kill {
		s += " KILL"
	}
	return s
}

// maxTimeout keeps seconds within what a time.Duration holds.
const maxTimeout = time.Duration(math.MaxInt64)

var decimal = regexp.MustCompile(`^([0-9]+(\.[0-9]*)?|\.[0-9]+)$`)

// Parse reads one command line. Spaces and tabs separate words; leading and
// trailing ones are ignored.
func Parse(line string) (Command, error) {
	words := strings.FieldsFunc(line, func(r rune) bool { return r == ' ' || r == '\t' })
	if len(words) == 0 {
		return Command{}, errors.New("empty command")
	}
	verb, ok := strings.CutPrefix(words[0], Prefix)
	if !ok {
		return Command{}, fmt.Errorf("command %q lacks the %q prefix", truncate(words[0]), Prefix)
	}
	args := words[1:]
	switch v := Verb(verb); v {
	case Activate, Deactivate, Status:
		if len(args) > 0 {
			return Command{}, fmt.Errorf("%s takes no argument, got %d", v, len(args))
		}
		return Command{Verb: v}, nil
	case SetTimeout:
		if len(args) < 1 || len(args) > 2 {
			return Command{}, fmt.Errorf("set_timeout takes <seconds> [KILL], got %d arguments", len(args))
		}
		d, err := ParseSeconds(args[0])
		if err != nil {
			return Command{}, fmt.Errorf("set_timeout: %w", err)
		}
		kill := len(args) == 2
		if kill && args[1] != "KILL" {
			return Command{}, fmt.Errorf("set_timeout: second argument must be KILL, got %q", truncate(args[1]))
		}
		return Command{Verb: SetTimeout, Timeout: d, Kill: kill}, nil
	default:
		return Command{}, fmt.Errorf("unknown command %q", truncate(verb))
	}
}

// ParseSeconds reads a decimal number of seconds, finite and greater than 0.
func ParseSeconds(s string) (time.Duration, error) {
	if !decimal.MatchString(s) {
		return 0, fmt.Errorf("seconds must be a decimal number such as 20 or 2.5, got %q", truncate(s))
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("seconds %q: %w", truncate(s), err)
	}
	ns := math.Round(f * float64(time.Second))
	switch {
	case ns < 1:
		return 0, fmt.Errorf("seconds must be greater than 0, got %q", truncate(s))
	case ns >= float64(maxTimeout):
		return 0, fmt.Errorf("seconds %q too large", truncate(s))
	}
	return time.Duration(ns), nil
}

// FormatSeconds renders d as decimal seconds that ParseSeconds reads back.
func FormatSeconds(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', -1, 64)
}

// truncate keeps untrusted input short in error lines.
func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
