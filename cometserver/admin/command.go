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

	"github.com/cometop/comet-operator/cometserver/contract"
)

// Verb names an admin command.
type Verb string

const (
	Activate   Verb = "activate"
	Deactivate Verb = "deactivate"
	SetTimeout Verb = "set_timeout"
	Status     Verb = "status"
	// SetHistory is an extension: "set_history <size> <ttl-seconds>".
	SetHistory Verb = "set_history"
	// SetMaxVirtualChannels is an extension:
	// "set_max_virtual_channels <count>|none".
	SetMaxVirtualChannels Verb = "set_max_virtual_channels"
)

// NoLimit is set_max_virtual_channels's word for "no limit", Unlimited
// its value.
const (
	NoLimit   = contract.NoLimit
	Unlimited = contract.Unlimited
)

// MaxVirtualChannelsLimit bounds set_max_virtual_channels: the Redis
// register script and the Kubernetes API (int32) both take it.
const MaxVirtualChannelsLimit = math.MaxInt32

// MaxHistorySize bounds the messages a channel's history may keep.
const MaxHistorySize = 100_000

// Prefix starts every command line.
const Prefix = "comet:"

// Command is one parsed command line.
type Command struct {
	Verb    Verb
	Timeout time.Duration // set_timeout only
	Kill    bool          // set_timeout only

	HistorySize int           // set_history only
	HistoryTTL  time.Duration // set_history only

	MaxVirtualChannels int // set_max_virtual_channels only; Unlimited: no limit
}

// String renders c as the line that Parse reads back.
func (c Command) String() string {
	if c.Verb == SetMaxVirtualChannels {
		return Prefix + string(SetMaxVirtualChannels) + " " + FormatLimit(c.MaxVirtualChannels)
	}
	if c.Verb == SetHistory {
		return Prefix + string(SetHistory) + " " + strconv.Itoa(c.HistorySize) + " " + FormatSeconds(c.HistoryTTL)
	}
	if c.Verb != SetTimeout {
		return Prefix + string(c.Verb)
	}
	s := Prefix + string(SetTimeout) + " " + FormatSeconds(c.Timeout)
	if c.Kill {
		s += " KILL"
	}
	return s
}

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
	case SetHistory:
		if len(args) != 2 {
			return Command{}, fmt.Errorf("set_history takes <size> <ttl-seconds>, got %d arguments", len(args))
		}
		size, err := ParseHistorySize(args[0])
		if err != nil {
			return Command{}, fmt.Errorf("set_history: %w", err)
		}
		ttl, err := ParseSeconds(args[1])
		if err != nil {
			return Command{}, fmt.Errorf("set_history: ttl: %w", err)
		}
		return Command{Verb: SetHistory, HistorySize: size, HistoryTTL: ttl}, nil
	case SetMaxVirtualChannels:
		if len(args) != 1 {
			return Command{}, fmt.Errorf("set_max_virtual_channels takes <count>|%s, got %d arguments", NoLimit, len(args))
		}
		limit, err := ParseLimit(args[0])
		if err != nil {
			return Command{}, fmt.Errorf("set_max_virtual_channels: %w", err)
		}
		return Command{Verb: SetMaxVirtualChannels, MaxVirtualChannels: limit}, nil
	default:
		return Command{}, fmt.Errorf("unknown command %q", truncate(verb))
	}
}

// ParseLimit reads a limit on live channels: "none" (Unlimited) or a
// decimal integer from 0 (refuse every new channel) to
// MaxVirtualChannelsLimit.
func ParseLimit(s string) (int, error) {
	if s == NoLimit {
		return Unlimited, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > MaxVirtualChannelsLimit || s != strconv.Itoa(n) {
		return 0, fmt.Errorf("limit must be %s or an integer from 0 to %d, got %q", NoLimit, MaxVirtualChannelsLimit, truncate(s))
	}
	return n, nil
}

// FormatLimit renders a limit as ParseLimit reads it.
func FormatLimit(limit int) string { return contract.FormatLimit(limit) }

// LimitPtr is a limit as the engine takes it: nil for none.
func LimitPtr(limit int) *int {
	if limit < 0 {
		return nil
	}
	return &limit
}

// ParseHistorySize reads a history size: a decimal integer from 0 (no
// history) to MaxHistorySize.
func ParseHistorySize(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > MaxHistorySize || s != strconv.Itoa(n) {
		return 0, fmt.Errorf("size must be an integer from 0 to %d, got %q", MaxHistorySize, truncate(s))
	}
	return n, nil
}

// ParseSeconds reads a decimal number of seconds, finite and greater than
// 0, rounded to the nanosecond (half up), below the largest Go duration.
// It works on the digits, not through a float, so that every duration
// FormatSeconds writes comes back exactly.
func ParseSeconds(s string) (time.Duration, error) {
	if !decimal.MatchString(s) {
		return 0, fmt.Errorf("seconds must be a decimal number such as 20 or 2.5, got %q", truncate(s))
	}
	whole, frac, _ := strings.Cut(s, ".")
	whole = strings.TrimLeft(whole, "0")
	const maxSeconds = math.MaxInt64 / int64(time.Second)
	if len(whole) > len(strconv.FormatInt(maxSeconds, 10)) {
		return 0, fmt.Errorf("seconds %q too large", truncate(s))
	}
	var sec, ns int64
	for _, c := range []byte(whole) {
		sec = sec*10 + int64(c-'0')
	}
	for i := range 9 {
		ns *= 10
		if i < len(frac) {
			ns += int64(frac[i] - '0')
		}
	}
	if len(frac) > 9 && frac[9] >= '5' {
		ns++ // 999999999 + 1 carries into the seconds below, exactly
	}
	if sec > maxSeconds || sec == maxSeconds && ns >= math.MaxInt64%int64(time.Second) {
		return 0, fmt.Errorf("seconds %q too large", truncate(s))
	}
	d := time.Duration(sec)*time.Second + time.Duration(ns)
	if d < 1 {
		return 0, fmt.Errorf("seconds must be greater than 0, got %q", truncate(s))
	}
	return d, nil
}

// FormatSeconds renders d (at least 0) as decimal seconds, exactly, which
// ParseSeconds reads back to d.
func FormatSeconds(d time.Duration) string {
	sec, ns := int64(d/time.Second), int64(d%time.Second)
	if ns == 0 {
		return strconv.FormatInt(sec, 10)
	}
	frac := strings.TrimRight(fmt.Sprintf("%09d", ns), "0")
	return strconv.FormatInt(sec, 10) + "." + frac
}

// truncate keeps untrusted input short in error lines.
func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
