package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// connTransport is one client's own kept-alive connection: it writes a
// request and reads its response on the calling goroutine. net/http's
// Transport spends two goroutines and their hand-offs per connection on
// top of the caller's; with 10,000 clients on the same two cores as the
// server, that was about as much CPU as the server under test spent, and
// the generator, not the server, set the tail latency. Every server is
// driven through it alike.
type connTransport struct {
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	conn net.Conn
	br   *bufio.Reader
	out  bytes.Buffer
}

var errCanceled = errors.New("poll canceled")

func (t *connTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.conn == nil {
		c, err := t.dial(req.Context(), "tcp", req.URL.Host)
		if err != nil {
			// The dialer gives up at the context's deadline, maybe a moment
			// before the context itself says so: that is a hang-up too.
			if dl, ok := req.Context().Deadline(); ok && !time.Now().Before(dl) {
				<-req.Context().Done()
				return nil, errCanceled
			}
			return nil, err
		}
		t.conn, t.br = c, bufio.NewReaderSize(c, 2048)
	}
	// A canceled poll hangs up: its connection is closed, as net/http's
	// Transport does, and the next poll dials again.
	conn := t.conn
	stop := context.AfterFunc(req.Context(), func() { conn.SetDeadline(time.Unix(1, 0)) })
	t.out.Reset()
	if err := req.Write(&t.out); err != nil {
		stop()
		return nil, err
	}
	if _, err := t.conn.Write(t.out.Bytes()); err != nil {
		return nil, t.fail(stop, req.Context(), err)
	}
	resp, err := http.ReadResponse(t.br, req)
	if err != nil {
		return nil, t.fail(stop, req.Context(), err)
	}
	resp.Body = &connBody{ReadCloser: resp.Body, t: t, stop: stop, ctx: req.Context(), close: resp.Close}
	return resp, nil
}

// fail drops the connection after a failed exchange.
func (t *connTransport) fail(stop func() bool, ctx context.Context, err error) error {
	stop()
	t.conn.Close()
	t.conn, t.br = nil, nil
	if ctx.Err() != nil {
		return errCanceled
	}
	return err
}

// connBody keeps the connection for the next request once the body is
// read to its end.
type connBody struct {
	io.ReadCloser
	t     *connTransport
	stop  func() bool
	ctx   context.Context
	close bool
	once  sync.Once
	err   error
}

func (b *connBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}

func (b *connBody) Close() error {
	b.once.Do(func() {
		_, err := io.Copy(io.Discard, b.ReadCloser)
		if err == nil {
			err = b.err
		}
		if !b.stop() || err != nil || b.close {
			b.t.fail(func() bool { return true }, b.ctx, io.EOF)
			return
		}
	})
	return nil
}
