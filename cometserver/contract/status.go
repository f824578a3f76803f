package contract

import "time"

// Status is the JSON line that comet:status answers, and the state part of
// what "ctl apply" and "ctl status" print.
type Status struct {
	Activated bool `json:"activated"`
	// Timeout is in seconds, as set_timeout takes it.
	Timeout            float64 `json:"timeout"`
	TimeoutNanoseconds int64   `json:"timeout_ns"`
	// Channels is the number of live channels (with a shared broker, the
	// fleet's); -1 when the broker cannot tell.
	Channels int `json:"channels"`
	// MaxVirtualChannels is the limit on live channels; null for none.
	MaxVirtualChannels *int `json:"max_virtual_channels"`
	Waiting            int  `json:"waiting"`
	// HistorySize and HistoryTTL (seconds) bound each channel's history.
	HistorySize  int     `json:"history_size"`
	HistoryTTL   float64 `json:"history_ttl"`
	HistoryTTLNs int64   `json:"history_ttl_ns"`
	Draining     bool    `json:"draining"`
	// Broker is the channel engine's state.
	Broker    BrokerStatus `json:"broker"`
	Version   string       `json:"version,omitempty"`
	PID       int          `json:"pid"`
	StartedAt string       `json:"started_at,omitempty"`
}

// TimeoutDuration is the timeout as a time.Duration, exactly.
func (s Status) TimeoutDuration() time.Duration { return time.Duration(s.TimeoutNanoseconds) }

// HistoryTTLDuration is the history TTL as a time.Duration, exactly.
func (s Status) HistoryTTLDuration() time.Duration { return time.Duration(s.HistoryTTLNs) }

// BrokerStatus is the channel engine's state in a status reply.
type BrokerStatus struct {
	Name          string  `json:"name"`  // memory or redis
	Ready         bool    `json:"ready"` // able to serve
	LastError     string  `json:"last_error,omitempty"`
	RTTSeconds    float64 `json:"rtt_seconds"`   // the last PUB/SUB round trip
	Subscriptions int     `json:"subscriptions"` // channels this server watches
}
