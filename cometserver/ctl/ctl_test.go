package ctl

import (
	"strings"
	"testing"
	"time"

	"github.com/cometop/comet-operator/cometserver/admin"
)

func status(activated bool, timeout time.Duration) admin.StatusReply {
	return admin.StatusReply{Activated: activated, Timeout: timeout.Seconds(), TimeoutNanoseconds: int64(timeout)}
}

func TestPlan(t *testing.T) {
	const s20, s5 = 20 * time.Second, 5 * time.Second
	tests := []struct {
		name string
		cur  admin.StatusReply
		want Desired
		cmds string
	}{
		{"nothing differs", status(true, s20), Desired{true, s20, true}, ""},
		{"deactivate only", status(true, s20), Desired{false, s20, true}, "comet:deactivate"},
		{"activate only", status(false, s20), Desired{true, s20, false}, "comet:activate"},
		{"retime without kill", status(true, s20), Desired{true, s5, false}, "comet:set_timeout 5"},
		{"retime with kill", status(true, s20), Desired{true, s5, true}, "comet:set_timeout 5 KILL"},
		{"deactivate first", status(true, s20), Desired{false, s5, false}, "comet:deactivate, comet:set_timeout 5"},
		{"activate last", status(false, s20), Desired{true, 1500 * time.Millisecond, true}, "comet:set_timeout 1.5 KILL, comet:activate"},
		{"sub-second exactness", status(true, 100*time.Millisecond), Desired{true, 100 * time.Millisecond, true}, ""},
	}
	for _, tt := range tests {
		var got []string
		for _, c := range Plan(tt.cur, tt.want) {
			got = append(got, c.String())
		}
		if strings.Join(got, ", ") != tt.cmds {
			t.Errorf("%s: plan %q, want %q", tt.name, got, tt.cmds)
		}
		if tt.cmds == "" && !tt.want.HeldBy(tt.cur) {
			t.Errorf("%s: nothing to send, yet the state is not held", tt.name)
		}
	}
}

// Every command the plan sends parses back to the duration asked for.
func TestPlanTimeoutsSurviveTheWire(t *testing.T) {
	for _, d := range []time.Duration{time.Nanosecond, 333 * time.Millisecond, 20 * time.Second, time.Hour, 1234567891 * time.Microsecond} {
		cmds := Plan(status(true, 0), Desired{Activated: true, Timeout: d})
		back, err := admin.Parse(cmds[0].String())
		if err != nil || back.Timeout != d {
			t.Errorf("%v went over the wire as %q and came back as %v, %v", d, cmds[0], back.Timeout, err)
		}
	}
}
