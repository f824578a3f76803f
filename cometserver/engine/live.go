package engine

import (
	"sync/atomic"
	"time"
)

// LiveLimits are the limits an engine takes at run time (the admin
// commands set_max_virtual_channels and set_history) and reads on every
// create and publish: atomics, so that neither takes a lock. Engines embed
// it; New must set both, as the zero value means "no channel allowed".
type LiveLimits struct {
	max         atomic.Int64 // live channels allowed; -1: no limit
	historySize atomic.Int64
	historyTTL  atomic.Int64 // nanoseconds
}

// SetMaxVirtualChannels sets the limit on live channels, nil for none.
func (l *LiveLimits) SetMaxVirtualChannels(limit *int) { l.max.Store(int64(MaxOrUnlimited(limit))) }

// SetHistory sets the history's bounds; negative values count as 0.
func (l *LiveLimits) SetHistory(size int, ttl time.Duration) {
	l.historySize.Store(int64(max(size, 0)))
	l.historyTTL.Store(int64(max(ttl, 0)))
}

// MaxChannels is the limit on live channels, -1 for none.
func (l *LiveLimits) MaxChannels() int { return int(l.max.Load()) }

// HistorySize is the messages kept per channel.
func (l *LiveLimits) HistorySize() int { return int(l.historySize.Load()) }

// HistoryTTL is how long a message is kept.
func (l *LiveLimits) HistoryTTL() time.Duration { return time.Duration(l.historyTTL.Load()) }

// Live returns base with the run-time limits in force.
func (l *LiveLimits) Live(base Limits) Limits {
	base.HistorySize, base.HistoryTTL, base.MaxVirtualChannels = l.HistorySize(), l.HistoryTTL(), nil
	if m := l.MaxChannels(); m >= 0 {
		base.MaxVirtualChannels = &m
	}
	return base
}
