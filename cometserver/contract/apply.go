package contract

import (
	"fmt"
	"strconv"
	"time"
)

// "ctl apply" and its flags.
const (
	CtlCommand   = "ctl"
	ApplyCommand = "apply"

	FlagSocket     = "socket"  // ctl's: the admin socket
	FlagCtlTimeout = "timeout" // ctl's: the whole command's time

	FlagActivated          = "activated"
	FlagTimeout            = "timeout"
	FlagKillOnChange       = "kill-on-change"
	FlagMaxVirtualChannels = "max-virtual-channels"
	FlagHistorySize        = "history-size"
	FlagHistoryTTL         = "history-ttl"
)

// NoLimit is how a limit on live channels says "none", in the admin
// command and ctl's flag; Unlimited is its value.
const (
	NoLimit   = "none"
	Unlimited = -1
)

// Apply is the live state "ctl apply" makes a server hold. It holds no
// secret: argv shows in the API server's audit log.
type Apply struct {
	Activated    bool
	Timeout      time.Duration
	KillOnChange bool // answer the requests waiting under the old timeout 503
	// MaxVirtualChannels, unless nil, is the limit on live channels to
	// hold, Unlimited for none; nil leaves the server's as it is.
	MaxVirtualChannels *int
	// History, unless nil, is the history's bounds to hold.
	History *History
}

// History is a channel history's bounds.
type History struct {
	Size int
	TTL  time.Duration
}

// Argv is the command the operator runs in a pod. ctlTimeout bounds the
// whole command. The flags for a part left nil are not passed, so an
// operator that does not ask for them keeps working with a server from
// before they existed.
func (a Apply) Argv(ctlTimeout time.Duration) []string {
	argv := []string{ServerBinary, CtlCommand, "--" + FlagSocket, AdminSocket, "--" + FlagCtlTimeout, ctlTimeout.String(), ApplyCommand,
		"--" + FlagActivated + "=" + strconv.FormatBool(a.Activated), "--" + FlagTimeout + "=" + a.Timeout.String()}
	if a.KillOnChange {
		argv = append(argv, "--"+FlagKillOnChange)
	}
	if a.MaxVirtualChannels != nil {
		argv = append(argv, "--"+FlagMaxVirtualChannels+"="+FormatLimit(*a.MaxVirtualChannels))
	}
	if a.History != nil {
		argv = append(argv, "--"+FlagHistorySize+"="+strconv.Itoa(a.History.Size), "--"+FlagHistoryTTL+"="+a.History.TTL.String())
	}
	return argv
}

// HeldBy reports whether a server in status s holds a.
func (a Apply) HeldBy(s Status) bool {
	if s.Activated != a.Activated || s.TimeoutDuration() != a.Timeout {
		return false
	}
	if a.MaxVirtualChannels != nil && LimitOf(s.MaxVirtualChannels) != *a.MaxVirtualChannels {
		return false
	}
	if a.History != nil && (s.HistorySize != a.History.Size || s.HistoryTTLDuration() != a.History.TTL) {
		return false
	}
	return true
}

// Describe renders a live state for messages and events, as
// "activated=B timeout=D [max_virtual_channels=N|none] [history=N/D]": a
// nil limit or history is left out.
func Describe(activated bool, timeout time.Duration, limit *int, history *History) string {
	d := fmt.Sprintf("activated=%t timeout=%s", activated, timeout)
	if limit != nil {
		d += " max_virtual_channels=" + FormatLimit(*limit)
	}
	if history != nil {
		d += fmt.Sprintf(" history=%d/%s", history.Size, history.TTL)
	}
	return d
}

// String is a's live state, as Describe renders it.
func (a Apply) String() string {
	return Describe(a.Activated, a.Timeout, a.MaxVirtualChannels, a.History)
}

// LimitOf is a status's limit as Apply holds it: Unlimited for none.
func LimitOf(limit *int) int {
	if limit == nil {
		return Unlimited
	}
	return *limit
}

// FormatLimit renders a limit: its count, or NoLimit.
func FormatLimit(limit int) string {
	if limit < 0 {
		return NoLimit
	}
	return strconv.Itoa(limit)
}

// ApplyResult is the one JSON line "ctl apply" prints on stdout, whatever
// its exit code: the state the server holds after the commands (absent if
// it could not be read), the command lines sent, and why it failed.
type ApplyResult struct {
	State *Status  `json:"state,omitempty"`
	Sent  []string `json:"sent"`
	Error string   `json:"error,omitempty"`
}
