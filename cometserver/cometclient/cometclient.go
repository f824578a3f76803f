// Package cometclient is a Go client of the comet long-poll protocol
// (PROTOCOL.md sections 1, 2 and 7). Poll sends one poll and decodes its
// reply; a Client keeps channels and their positions across polls, so that
// it loses nothing between them. Tests, tools and the load generator use
// it; browsers use comet.js.
package cometclient

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"

	"github.com/cometop/comet-operator/cometserver/wire"
)

// ContentType marks a comet request.
const ContentType = "application/x-ocsigen-comet"

// Message is one line of a reply: a message on a channel, its end, or (to
// a resuming poll) a gap before the messages that follow on it.
type Message struct {
	Channel string
	Data    []byte
	Ended   bool
	Gap     bool
}

// Reply is the answer to one poll. Messages and Positions are set for a
// 200 only; Positions (channel to position) only for a resuming poll.
type Reply struct {
	Status    int
	Messages  []Message
	Positions map[string]string
}

// Body is the registration body for ids, encoded as encodeURIComponent
// would (valid for escape()-style decoding too).
func Body(ids ...string) string {
	return "registration=" + url.QueryEscape(strings.Join(ids, "\n"))
}

// ResumeBody is a resuming request for ids, from the positions given (a
// channel without one starts from now).
func ResumeBody(ids []string, positions map[string]string) string {
	var lines []string
	for _, id := range ids {
		if p, ok := positions[id]; ok {
			lines = append(lines, id+":"+p)
		}
	}
	return Body(ids...) + "&resume=" + url.QueryEscape(strings.Join(lines, "\n"))
}

// Poll sends one long poll that does not resume to endpoint (such as
// http://host:8080/comet) and waits for its reply, until ctx ends.
func Poll(ctx context.Context, hc *http.Client, endpoint string, ids ...string) (Reply, error) {
	return send(ctx, hc, endpoint, Body(ids...))
}

func send(ctx context.Context, hc *http.Client, endpoint, body string) (Reply, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(body))
	if err != nil {
		return Reply{}, err
	}
	req.Header.Set("Content-Type", ContentType)
	resp, err := hc.Do(req)
	if err != nil {
		return Reply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return Reply{Status: resp.StatusCode}, fmt.Errorf("reading the reply: %w", err)
	}
	r := Reply{Status: resp.StatusCode}
	if resp.StatusCode == http.StatusOK {
		r.Messages, r.Positions, err = Decode(b)
	}
	return r, err
}

// Decode parses a 200 reply body: "id:payload" lines joined by '\n', each
// payload percent-encoded or the end marker, and, in a reply to a resuming
// poll, gap markers and positions.
func Decode(body []byte) (msgs []Message, positions map[string]string, err error) {
	if len(body) == 0 {
		return nil, nil, nil
	}
	lines := strings.Split(string(body), "\n")
	msgs = make([]Message, 0, len(lines))
	for i, line := range lines {
		at := strings.LastIndexByte(line, ':') // nothing after the id holds ':'
		if at < 0 {
			return nil, nil, fmt.Errorf("reply line %d has no ':': %.60q", i+1, line)
		}
		m := Message{Channel: line[:at]}
		payload := line[at+1:]
		switch {
		case payload == wire.EndedChannel:
			m.Ended = true
		case payload == wire.GapMarker:
			m.Gap = true
		case strings.HasPrefix(payload, wire.PositionPrefix):
			if positions == nil {
				positions = make(map[string]string)
			}
			positions[m.Channel] = payload[len(wire.PositionPrefix):]
			continue
		default:
			data, err := wire.Unescape(payload)
			if err != nil {
				return nil, nil, fmt.Errorf("reply line %d: %w", i+1, err)
			}
			m.Data = []byte(data)
		}
		msgs = append(msgs, m)
	}
	return msgs, positions, nil
}

// Client polls a set of channels, one poll at a time. It resumes by
// default: each poll sends the position the last reply gave for each
// channel, so that a message written between two polls, or carried by a
// reply that never arrived, comes with the next one, once.
type Client struct {
	Endpoint string
	HTTP     *http.Client // nil: http.DefaultClient
	NoResume bool         // poll as the seed's clients did: what comes between polls is lost

	mu        sync.Mutex
	ids       []string
	positions map[string]string
	polling   bool
}

// Add registers channels; the next poll listens to them too.
func (c *Client) Add(ids ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, id := range ids {
		if id != "" && !slices.Contains(c.ids, id) {
			c.ids = append(c.ids, id)
		}
	}
}

// Remove drops channels and their positions: a channel added again starts
// from its position then.
func (c *Client) Remove(ids ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, id := range ids {
		c.ids = slices.DeleteFunc(c.ids, func(x string) bool { return x == id })
		delete(c.positions, id)
	}
}

// Channels returns the registered channels.
func (c *Client) Channels() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.ids)
}

// Position returns the client's position in channel id, if it has one.
func (c *Client) Position(id string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.positions[id]
	return p, ok
}

// Poll sends one poll for the registered channels and waits for its reply.
// On a 200 it keeps the positions the reply gives and forgets the channels
// it says ended. Any other answer, or an error, changes nothing: the next
// poll asks again from the same positions. One poll at a time: two at once
// would get the same messages.
func (c *Client) Poll(ctx context.Context) (Reply, error) {
	c.mu.Lock()
	ids := slices.Clone(c.ids)
	body := Body(ids...)
	if !c.NoResume {
		body = ResumeBody(ids, c.positions)
	}
	busy := c.polling
	if len(ids) > 0 && !busy {
		c.polling = true
	}
	c.mu.Unlock()
	switch {
	case len(ids) == 0:
		return Reply{}, fmt.Errorf("no channel to poll")
	case busy:
		return Reply{}, fmt.Errorf("a poll is already under way")
	}
	defer func() {
		c.mu.Lock()
		c.polling = false
		c.mu.Unlock()
	}()
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	r, err := send(ctx, hc, c.Endpoint, body)
	if err != nil || r.Status != http.StatusOK {
		return r, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range r.Messages {
		if m.Ended {
			c.ids = slices.DeleteFunc(c.ids, func(x string) bool { return x == m.Channel })
			delete(c.positions, m.Channel)
		}
	}
	for id, p := range r.Positions {
		if slices.Contains(c.ids, id) { // not removed meanwhile
			if c.positions == nil {
				c.positions = make(map[string]string)
			}
			c.positions[id] = p
		}
	}
	return r, nil
}
