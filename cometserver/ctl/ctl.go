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
)

// Exit codes.
const (
	ExitOK          = 0
	ExitRefused     = 1 // the server answered error:, or apply did not converge
	ExitUsage       = 2
	ExitUnreachable = 3 // the socket is missing, refused or silent
)

// DefaultSocket is where the server listens unless told otherwise.
const DefaultSocket = "/run/comet/admin.sock"

const usage = `usage: cometserver ctl [--socket PATH] [--timeout DURATION (whole command, default 10s)] COMMAND

commands:
  activate                      resume comet activity
  deactivate                    stop comet activity (waiting clients get 503)
  set-timeout SECONDS [--kill]  timeout of new waits; --kill answers waiting clients 503
  status                        print the server's status as JSON
  apply --activated=BOOL --timeout=DURATION [--kill-on-change]
                                send only what differs, print the resulting status,
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
	sub := flag.NewFlagSet("apply", flag.ContinueOnError)
	sub.SetOutput(io.Discard)
	activated := sub.String("activated", "", "true or false (required)")
	timeout := sub.String("timeout", "", "a duration such as 20s (required)")
	killOnChange := sub.Bool("kill-on-change", false, "send KILL with set_timeout when the timeout changes")
	if err := sub.Parse(args); err != nil {
		return usageError(stderr, err)
	}
	if sub.NArg() > 0 {
		return usageError(stderr, fmt.Errorf("apply takes no positional argument, got %q", sub.Arg(0)))
	}
	var want Desired
	var err error
	if want.Activated, err = strconv.ParseBool(*activated); err != nil {
		return usageError(stderr, fmt.Errorf("--activated must be true or false, got %q", *activated))
	}
	if want.Timeout, err = time.ParseDuration(*timeout); err != nil || want.Timeout <= 0 {
		return usageError(stderr, fmt.Errorf("--timeout must be a duration greater than 0 such as 20s, got %q", *timeout))
	}
	want.KillOnChange = *killOnChange

	got, sent, err := Apply(c, want)
	for _, cmd := range sent {
		fmt.Fprintf(stderr, "sent %s\n", cmd)
	}
	if err != nil {
		return report(stderr, err)
	}
	if code := printJSON(stdout, stderr, got); code != ExitOK {
		return code
	}
	if !want.HeldBy(got) {
		fmt.Fprintf(stderr, "error: server holds activated=%t timeout=%s, want activated=%t timeout=%s\n",
			got.Activated, got.TimeoutDuration(), want.Activated, want.Timeout)
		return ExitRefused
	}
	return ExitOK
}

// Desired is the live state apply asks for.
type Desired struct {
	Activated    bool
	Timeout      time.Duration
	KillOnChange bool
}

// HeldBy reports whether a server in status s holds the desired state.
func (d Desired) HeldBy(s admin.StatusReply) bool {
	return s.Activated == d.Activated && s.TimeoutDuration() == d.Timeout
}

// Plan returns the commands that take a server from cur to d, and nothing
// for what already matches. A deactivation goes first and an activation
// last, so no request ever waits under the old timeout after the change.
func Plan(cur admin.StatusReply, d Desired) []admin.Command {
	var cmds []admin.Command
	if cur.Activated && !d.Activated {
		cmds = append(cmds, admin.Command{Verb: admin.Deactivate})
	}
	if cur.TimeoutDuration() != d.Timeout {
		cmds = append(cmds, admin.Command{Verb: admin.SetTimeout, Timeout: d.Timeout, Kill: d.KillOnChange})
	}
	if !cur.Activated && d.Activated {
		cmds = append(cmds, admin.Command{Verb: admin.Activate})
	}
	return cmds
}

// Apply reads the status, sends what Plan says, and reads the status back.
func Apply(c admin.Client, d Desired) (admin.StatusReply, []admin.Command, error) {
	cur, err := c.Status()
	if err != nil {
		return cur, nil, err
	}
	var sent []admin.Command
	for _, cmd := range Plan(cur, d) {
		if err := c.Run(cmd); err != nil {
			return cur, sent, err
		}
		sent = append(sent, cmd)
	}
	if len(sent) == 0 {
		return cur, nil, nil
	}
	got, err := c.Status()
	return got, sent, err
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
