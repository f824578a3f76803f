// Package channelstest makes hubs over the in-memory engine for tests.
package channelstest

import (
	"context"

	"github.com/cometop/comet-operator/cometserver/channels"
	"github.com/cometop/comet-operator/cometserver/engine"
	"github.com/cometop/comet-operator/cometserver/engine/memory"
)

// New returns a Hub over a new in-memory engine with limits l. Stop it
// with hub.Engine().Stop().
func New(l engine.Limits) *channels.Hub { return channels.New(memory.New(l)) }

// Len is the hub's number of live channels (the in-memory engine cannot fail).
func Len(h *channels.Hub) int {
	n, _ := h.Len(context.Background())
	return n
}
