// Package channels holds comet channels and fans messages out to the
// requests waiting on them (PROTOCOL.md section 3).
//
// Hub is the seam for a later shared broker (Redis, NATS): the long-poll
// handler and the publisher API only see a Hub, so a broker-backed Hub can
// let several replicas serve the same channels without sticky sessions.
package channels

import (
	"context"
	"errors"
)

// Errors a Hub returns. Callers match them with errors.Is.
var (
	ErrTooManyVirtualChannels = errors.New("too many virtual channels")
	ErrNameTaken              = errors.New("channel name taken by a live channel")
	ErrInvalidName            = errors.New("invalid channel name: want 1 to 256 bytes of UTF-8 without ':', CR or LF")
	ErrNotFound               = errors.New("channel unknown or ended")
	ErrReservedMessage        = errors.New("the message ENDED_CHANNEL is reserved for the end marker")
)

// Hub is a set of channels and the requests waiting on them.
type Hub interface {
	// Create makes a channel. An empty name asks for a generated,
	// unguessable identifier; otherwise the name is the identifier.
	Create(name string) (id string, err error)
	// Write broadcasts msg to the requests waiting on channel id at this
	// instant and waits, until ctx ends, for each of their replies to be
	// flushed or to fail.
	Write(ctx context.Context, id string, msg []byte) (Outcome, error)
	// Close ends a channel: its waiting requests get the end marker at once.
	Close(id string) error
	// Info describes a live channel.
	Info(id string) (Info, error)
	// Subscribe makes a Waiter on the live channels among ids and returns
	// the others, in the order given, as ended.
	Subscribe(ids []string) (w *Waiter, ended []string)
	// Len is the number of live channels.
	Len() int
}

// Outcome says what became of one write.
type Outcome struct {
	Delivered int `json:"delivered"` // replies carrying the message that were flushed
	Failed    int `json:"failed"`    // replies carrying it that could not be written
}

// NoListener reports that nobody was waiting when the message was written.
func (o Outcome) NoListener() bool { return o.Delivered == 0 && o.Failed == 0 }

// Info describes a live channel.
type Info struct {
	ID        string `json:"id"`
	Listeners int    `json:"listeners"`
}
