package ctl

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cometop/comet-operator/cometserver/admin"
	"github.com/cometop/comet-operator/cometserver/contract"
)

func status(activated bool, timeout time.Duration) contract.Status {
	return contract.Status{Activated: activated, Timeout: timeout.Seconds(), TimeoutNanoseconds: int64(timeout)}
}

func TestPlan(t *testing.T) {
	const s20, s5 = 20 * time.Second, 5 * time.Second
	tests := []struct {
		name string
		cur  contract.Status
		want contract.Apply
		cmds string
	}{
		{"nothing differs", status(true, s20), contract.Apply{Activated: true, Timeout: s20, KillOnChange: true}, ""},
		{"deactivate only", status(true, s20), contract.Apply{Activated: false, Timeout: s20, KillOnChange: true}, "comet:deactivate"},
		{"activate only", status(false, s20), contract.Apply{Activated: true, Timeout: s20, KillOnChange: false}, "comet:activate"},
		{"retime without kill", status(true, s20), contract.Apply{Activated: true, Timeout: s5, KillOnChange: false}, "comet:set_timeout 5"},
		{"retime with kill", status(true, s20), contract.Apply{Activated: true, Timeout: s5, KillOnChange: true}, "comet:set_timeout 5 KILL"},
		{"deactivate first", status(true, s20), contract.Apply{Activated: false, Timeout: s5, KillOnChange: false}, "comet:deactivate, comet:set_timeout 5"},
		{"activate last", status(false, s20), contract.Apply{Activated: true, Timeout: 1500 * time.Millisecond, KillOnChange: true}, "comet:set_timeout 1.5 KILL, comet:activate"},
		{"sub-second exactness", status(true, 100*time.Millisecond), contract.Apply{Activated: true, Timeout: 100 * time.Millisecond, KillOnChange: true}, ""},
		{"limit unmanaged", status(true, s20), contract.Apply{Activated: true, Timeout: s20}, ""},
		{"limit set", status(true, s20), contract.Apply{Activated: true, Timeout: s20, MaxVirtualChannels: ptr(5)}, "comet:set_max_virtual_channels 5"},
		{"limit removed", withLimit(status(true, s20), 5), contract.Apply{Activated: true, Timeout: s20, MaxVirtualChannels: ptr(contract.Unlimited)}, "comet:set_max_virtual_channels none"},
		{"limit held", withLimit(status(true, s20), 0), contract.Apply{Activated: true, Timeout: s20, MaxVirtualChannels: ptr(0)}, ""},
		{"history", status(true, s20), contract.Apply{Activated: true, Timeout: s20, History: &contract.History{Size: 10, TTL: time.Minute}}, "comet:set_history 10 60"},
		{"all, activate last", status(false, s20), contract.Apply{Activated: true, Timeout: s5, MaxVirtualChannels: ptr(1), History: &contract.History{Size: 1, TTL: time.Second}},
			"comet:set_timeout 5, comet:set_max_virtual_channels 1, comet:set_history 1 1, comet:activate"},
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
		cmds := Plan(status(true, 0), contract.Apply{Activated: true, Timeout: d})
		back, err := admin.Parse(cmds[0].String())
		if err != nil || back.Timeout != d {
			t.Errorf("%v went over the wire as %q and came back as %v, %v", d, cmds[0], back.Timeout, err)
		}
	}
}

func ptr(n int) *int { return &n }

func withLimit(s contract.Status, n int) contract.Status {
	s.MaxVirtualChannels = &n
	return s
}

// The operator's argv, read back by ctl, is what the operator asked for:
// one contract, two sides.
func TestArgvRoundTrip(t *testing.T) {
	for _, a := range []contract.Apply{
		{Activated: true, Timeout: 20 * time.Second},
		{Activated: false, Timeout: 1500 * time.Millisecond, KillOnChange: true},
		{Activated: true, Timeout: time.Hour, MaxVirtualChannels: ptr(0)},
		{Activated: true, Timeout: time.Second, MaxVirtualChannels: ptr(contract.Unlimited), History: &contract.History{Size: 100000, TTL: 24 * time.Hour}},
		{Activated: true, Timeout: time.Second, History: &contract.History{Size: 0, TTL: time.Millisecond}},
	} {
		argv := a.Argv(9 * time.Second)
		if argv[0] != contract.ServerBinary || argv[1] != "ctl" || argv[6] != "apply" {
			t.Fatalf("argv %q", argv)
		}
		got, err := parseApply(argv[7:])
		if err != nil || !reflect.DeepEqual(got, a) {
			t.Errorf("%+v went as %q and came back as %+v, %v", a, argv, got, err)
		}
	}
}
