// Package ctl is the "cometserver ctl" command: a client of the admin
// socket. Its apply subcommand is what the operator runs inside pods.
package ctl

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/cometop/comet-operator/cometserver/admin"
	"github.com/cometop/comet-operator/cometserver/contract"
)

// Exit codes.
const (
	ExitOK          = 0
	ExitRefused     = 1 // the server answered error:, or apply did not converge
	ExitUsage       = 2
	ExitUnreachable = 3 // the socket is missing, refused or silent
)

// DefaultSocket is where the server listens unless told otherwise.
const DefaultSocket = contract.AdminSocket

const usage = `usage: cometserver ctl [--socket PATH] [--timeout DURATION (whole command, default 10s)] COMMAND

commands:
  activate                      resume comet activity
  deactivate                    stop comet activity (waiting clients get 503)
  set-timeout SECONDS [--kill]  timeout of new waits; --kill answers waiting clients 503
  status                        print the server's status as JSON
  apply --activated=BOOL --timeout=DURATION [--kill-on-change]
        [--max-virtual-channels=COUNT|none] [--history-size=N --history-ttl=DURATION]
                                send only what differs; print one JSON line
                                {"state":{...},"sent":[...],"error":"..."};
                                exit 0 only if the server now holds that state

exit codes: 0 ok, 1 refused or not converged, 2 usage, 3 socket unreachable
the socket defaults to $COMET_ADMIN_SOCKET, else ` + DefaultSocket + "\n"

// Main runs ctl with args (after "ctl") and returns the exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("cometserver ctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	socket := fs.String("socket", envOr("COMET_ADMIN_SOCKET", DefaultSocket), "admin socket path")
	timeout := fs.Duration("timeout", admin.DefaultTimeout, "time allowed for the whole command")
	if err := fs.Parse(args); err != nil {
		return usageError(stderr, err)
	}
	if fs.NArg() == 0 {
		return usageError(stderr, errors.New("no command"))
	}
	if *timeout <= 0 {
		return usageError(stderr, fmt.Errorf("--timeout must be greater than 0, got %s", *timeout))
	}
	c := admin.Client{Path: *socket, Timeout: *timeout, Deadline: time.Now().Add(*timeout)}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	switch cmd {
	case "activate", "deactivate":
		if len(rest) > 0 {
			return usageError(stderr, fmt.Errorf("%s takes no argument", cmd))
		}
		verb := admin.Activate
		if cmd == "deactivate" {
			verb = admin.Deactivate
		}
		return report(stderr, c.Run(admin.Command{Verb: verb}))
	case "set-timeout":
		sub := flag.NewFlagSet("set-timeout", flag.ContinueOnError)
		sub.SetOutput(io.Discard)
		kill := sub.Bool("kill", false, "answer waiting clients 503")
		if err := sub.Parse(interspersed(rest, "--kill", "-kill")); err != nil {
			return usageError(stderr, err)
		}
		if sub.NArg() != 1 {
			return usageError(stderr, errors.New("set-timeout takes exactly one SECONDS argument"))
		}
		d, err := admin.ParseSeconds(sub.Arg(0))
		if err != nil {
			return usageError(stderr, err)
		}
		return report(stderr, c.Run(admin.Command{Verb: admin.SetTimeout, Timeout: d, Kill: *kill}))
	case "status":
		if len(rest) > 0 {
			return usageError(stderr, errors.New("status takes no argument"))
		}
		s, err := c.Status()
		if err != nil {
			return report(stderr, err)
		}
		return printJSON(stdout, stderr, s)
	case "apply":
		return apply(c, rest, stdout, stderr)
	default:
		return usageError(stderr, fmt.Errorf("unknown command %q", cmd))
	}
}

func apply(c admin.Client, args []string, stdout, stderr io.Writer) int {
	want, err := parseApply(args)
	if err != nil {
		return usageError(stderr, err)
	}
	got, sent, err := Apply(c, want)
	result := contract.ApplyResult{Sent: []string{}}
	for _, cmd := range sent {
		result.Sent = append(result.Sent, cmd.String())
	}
	result.State = got
	if err == nil && !want.HeldBy(*got) {
		err = fmt.Errorf("%w: server holds %s, want %s", errNotConverged, describe(*got, want), want.String())
	}
	if err != nil {
		result.Error = err.Error()
	}
	if code := printJSON(stdout, stderr, result); code != ExitOK {
		return code
	}
	return report(stderr, err)
}

var errNotConverged = errors.New("not converged")

// parseApply reads apply's flags, named by the contract that the
// operator's argv is built from.
func parseApply(args []string) (contract.Apply, error) {
	sub := flag.NewFlagSet("apply", flag.ContinueOnError)
	sub.SetOutput(io.Discard)
	activated := sub.String(contract.FlagActivated, "", "true or false (required)")
	timeout := sub.String(contract.FlagTimeout, "", "a duration such as 20s (required)")
	killOnChange := sub.Bool(contract.FlagKillOnChange, false, "send KILL with set_timeout when the timeout changes")
	limit := sub.String(contract.FlagMaxVirtualChannels, "", "a count, or none")
	historySize := sub.String(contract.FlagHistorySize, "", "messages kept per channel")
	historyTTL := sub.String(contract.FlagHistoryTTL, "", "how long one is kept, such as 2m")
	var want contract.Apply
	if err := sub.Parse(args); err != nil {
		return want, err
	}
	if sub.NArg() > 0 {
		return want, fmt.Errorf("apply takes no positional argument, got %q", sub.Arg(0))
	}
	var err error
	if want.Activated, err = strconv.ParseBool(*activated); err != nil {
		return want, fmt.Errorf("--activated must be true or false, got %q", *activated)
	}
	if want.Timeout, err = time.ParseDuration(*timeout); err != nil || want.Timeout <= 0 {
		return want, fmt.Errorf("--timeout must be a duration greater than 0 such as 20s, got %q", *timeout)
	}
	want.KillOnChange = *killOnChange
	set := map[string]bool{}
	sub.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set[contract.FlagMaxVirtualChannels] {
		n, err := admin.ParseLimit(*limit)
		if err != nil {
			return want, fmt.Errorf("--%s: %w", contract.FlagMaxVirtualChannels, err)
		}
		want.MaxVirtualChannels = &n
	}
	if set[contract.FlagHistorySize] != set[contract.FlagHistoryTTL] {
		return want, fmt.Errorf("--%s and --%s go together", contract.FlagHistorySize, contract.FlagHistoryTTL)
	}
	if set[contract.FlagHistorySize] {
		size, err := admin.ParseHistorySize(*historySize)
		if err != nil {
			return want, fmt.Errorf("--%s: %w", contract.FlagHistorySize, err)
		}
		ttl, err := time.ParseDuration(*historyTTL)
		if err != nil || ttl <= 0 {
			return want, fmt.Errorf("--%s must be a duration greater than 0 such as 2m, got %q", contract.FlagHistoryTTL, *historyTTL)
		}
		want.History = &contract.History{Size: size, TTL: ttl}
	}
	return want, nil
}

// describe is the state s holds, in the terms of like: the limit and the
// history only where like asks for them.
func describe(s contract.Status, like contract.Apply) string {
	var limit *int
	var history *contract.History
	if like.MaxVirtualChannels != nil {
		l := contract.LimitOf(s.MaxVirtualChannels)
		limit = &l
	}
	if like.History != nil {
		history = &contract.History{Size: s.HistorySize, TTL: s.HistoryTTLDuration()}
	}
	return contract.Describe(s.Activated, s.TimeoutDuration(), limit, history)
}

// Plan returns the commands that take a server from cur to d, and nothing
// for what already matches. A deactivation goes first and an activation
// last, so no request ever waits under the old timeout after the change.
func Plan(cur contract.Status, d contract.Apply) []admin.Command {
	var cmds []admin.Command
	if cur.Activated && !d.Activated {
		cmds = append(cmds, admin.Command{Verb: admin.Deactivate})
	}
	if cur.TimeoutDuration() != d.Timeout {
		cmds = append(cmds, admin.Command{Verb: admin.SetTimeout, Timeout: d.Timeout, Kill: d.KillOnChange})
	}
	if d.MaxVirtualChannels != nil && contract.LimitOf(cur.MaxVirtualChannels) != *d.MaxVirtualChannels {
		cmds = append(cmds, admin.Command{Verb: admin.SetMaxVirtualChannels, MaxVirtualChannels: *d.MaxVirtualChannels})
	}
	if h := d.History; h != nil && (cur.HistorySize != h.Size || cur.HistoryTTLDuration() != h.TTL) {
		cmds = append(cmds, admin.Command{Verb: admin.SetHistory, HistorySize: h.Size, HistoryTTL: h.TTL})
	}
	if !cur.Activated && d.Activated {
		cmds = append(cmds, admin.Command{Verb: admin.Activate})
	}
	return cmds
}

// Apply reads the status, sends what Plan says, and reads the status back.
// The status is nil when it could not be read.
func Apply(c admin.Client, d contract.Apply) (*contract.Status, []admin.Command, error) {
	cur, err := c.Status()
	if err != nil {
		return nil, nil, err
	}
	var sent []admin.Command
	for _, cmd := range Plan(cur, d) {
		if err := c.Run(cmd); err != nil {
			return nil, sent, err
		}
		sent = append(sent, cmd)
	}
	if len(sent) == 0 {
		return &cur, nil, nil
	}
	got, err := c.Status()
	if err != nil {
		return nil, sent, err
	}
	return &got, sent, nil
}

func report(stderr io.Writer, err error) int {
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, admin.ErrUnreachable):
		fmt.Fprintf(stderr, "error: %v\n", err)
		return ExitUnreachable
	default:
		fmt.Fprintf(stderr, "error: %v\n", err)
		return ExitRefused
	}
}

func usageError(stderr io.Writer, err error) int {
	fmt.Fprintf(stderr, "error: %v\n\n%s", err, usage)
	return ExitUsage
}

func printJSON(stdout, stderr io.Writer, v any) int {
	b, err := json.Marshal(v)
	if err != nil {
		return report(stderr, err)
	}
	fmt.Fprintf(stdout, "%s\n", b)
	return ExitOK
}

// interspersed moves the named boolean flags before the positional
// arguments, so "set-timeout 5 --kill" works as well as "set-timeout --kill 5".
func interspersed(args []string, names ...string) []string {
	var flags, rest []string
	for _, a := range args {
		isFlag := false
		for _, n := range names {
			isFlag = isFlag || a == n
		}
		if isFlag {
			flags = append(flags, a)
		} else {
			rest = append(rest, a)
		}
	}
	return append(flags, rest...)
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
