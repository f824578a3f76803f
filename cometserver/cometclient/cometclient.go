// Package cometclient is a Go client of the comet long-poll protocol
// (PROTOCOL.md sections 1 and 2): it sends one poll and decodes its reply.
// Tests, tools and the load generator use it; browsers use comet.js.
package cometclient

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/cometop/comet-operator/cometserver/wire"
)

// ContentType marks a comet request.
const ContentType = "application/x-ocsigen-comet"

// Message is one line of a reply: a message on a channel, or its end.
type Message struct {
	Channel string
	Data    []byte
	Ended   bool
}

// Reply is the answer to one poll. Messages is set for a 200 only.
type Reply struct {
	Status   int
	Messages []Message
}

// Body is the registration body for ids, encoded as encodeURIComponent
// would (valid for escape()-style decoding too).
func Body(ids ...string) string {
	return "registration=" + url.QueryEscape(strings.Join(ids, "\n"))
}

// Poll sends one long poll to endpoint (such as http://host:8080/comet)
// and waits for its reply, until ctx ends.
func Poll(ctx context.Context, hc *http.Client, endpoint string, ids ...string) (Reply, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(Body(ids...)))
	if err != nil {
		return Reply{}, err
	}
	req.Header.Set("Content-Type", ContentType)
	resp, err := hc.Do(req)
	if err != nil {
		return Reply{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return Reply{Status: resp.StatusCode}, fmt.Errorf("reading the reply: %w", err)
	}
	r := Reply{Status: resp.StatusCode}
	if resp.StatusCode == http.StatusOK {
		r.Messages, err = Decode(body)
	}
	return r, err
}

// Decode parses a 200 reply body: "id:payload" lines joined by '\n', each
// payload percent-encoded or the end marker.
func Decode(body []byte) ([]Message, error) {
	if len(body) == 0 {
		return nil, nil
	}
	lines := strings.Split(string(body), "\n")
	msgs := make([]Message, 0, len(lines))
	for i, line := range lines {
		at := strings.LastIndexByte(line, ':') // a payload never holds ':'
		if at < 0 {
			return nil, fmt.Errorf("reply line %d has no ':': %.60q", i+1, line)
		}
		m := Message{Channel: line[:at]}
		payload := line[at+1:]
		if payload == wire.EndedChannel {
			m.Ended = true
		} else {
			data, err := wire.Unescape(payload)
			if err != nil {
				return nil, fmt.Errorf("reply line %d: %w", i+1, err)
			}
			m.Data = []byte(data)
		}
		msgs = append(msgs, m)
	}
	return msgs, nil
}
