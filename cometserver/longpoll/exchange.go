package longpoll

import (
	"net/http"
	"strconv"
	"time"

	"github.com/cometop/comet-operator/cometserver/channels"
)

// httpExchange is a request on net/http's own connection.
type httpExchange struct {
	h *Handler
	w http.ResponseWriter
	r *http.Request
}

func (x *httpExchange) header() http.Header { return x.w.Header() }

func (x *httpExchange) bodyDeadline(t time.Time) {
	_ = http.NewResponseController(x.w).SetReadDeadline(t) // not every ResponseWriter supports deadlines
}

func (x *httpExchange) park(*poll) bool { return false } // net/http's goroutine waits

func (x *httpExchange) wait(p *poll) bool {
	timer := time.NewTimer(time.Until(p.deadline))
	defer timer.Stop()
	select {
	case <-p.waiter.Ready():
	case <-timer.C:
	case <-p.abort: // deactivate, set_timeout KILL, or shutdown
	case <-x.h.stop:
	case <-x.r.Context().Done(): // the client hung up
		return false
	}
	return true
}

func (x *httpExchange) reply(status int, body []byte, close bool, carried []channels.Event) {
	channels.Resolve(carried, x.write(status, body, close))
}

// write writes the response, and reports whether it was flushed.
func (x *httpExchange) write(status int, body []byte, close bool) bool {
	rc := http.NewResponseController(x.w)
	_ = rc.SetWriteDeadline(time.Now().Add(x.h.o.WriteTimeout))
	if status == http.StatusNoContent { // an answered OPTIONS: headers only
		x.w.WriteHeader(status)
		return rc.Flush() == nil
	}
	hdr := x.w.Header()
	hdr.Set("Content-Type", "text/plain; charset=utf-8")
	hdr.Set("Cache-Control", "no-store")
	// With its length known the reply goes out in one write when flushed;
	// without, net/http would chunk it and write the last chunk separately.
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	if close {
		// net/http closes after the reply; before, it reads what is left
		// of the body, and a second bounds that.
		hdr.Set("Connection", "close")
		_ = rc.SetReadDeadline(time.Now().Add(time.Second))
	}
	x.w.WriteHeader(status)
	if _, err := x.w.Write(body); err != nil {
		return false
	}
	return rc.Flush() == nil
}
