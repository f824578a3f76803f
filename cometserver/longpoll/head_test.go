package longpoll

import (
	"bufio"
	"bytes"
	"net/http"
	"strings"
	"testing"

	"golang.org/x/net/http/httpguts"
)

// goClientHead is the head Go's http.Client sends for a poll.
const goClientHead = "POST /comet HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: Go-http-client/1.1\r\n" +
	"Content-Length: 14\r\nContent-Type: application/x-ocsigen-comet\r\nAccept-Encoding: gzip\r\n\r\n"

// browserHead is a cross-origin poll as a browser sends it.
const browserHead = "POST /comet HTTP/1.1\r\nHost: push.example.com\r\nConnection: keep-alive\r\nContent-Length: 14\r\n" +
	"sec-ch-ua-platform: \"Linux\"\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0.0.0 Safari/537.36\r\n" +
	"Content-Type: application/x-ocsigen-comet\r\nAccept: */*\r\nOrigin: https://app.example.com\r\n" +
	"Sec-Fetch-Mode: cors\r\nReferer: https://app.example.com/\r\nAccept-Language: fr-FR,fr;q=0.9\r\n" +
	"Cookie: session=\xe9t\xe9\r\n\r\n"

// netHTTPReads is the reference for parseHead: what net/http's server
// makes of head (http.ReadRequest, then the server's own checks), and
// whether this connection would serve it. ok is false where net/http
// refuses the head or the connection would give it back.
func netHTTPReads(head []byte) (req *http.Request, ok bool) {
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
	if err != nil {
		return nil, false
	}
	// http.Server's readRequest: one valid Host, valid names and values.
	c := &parked{h: New(nil, nil, Options{}), path: "/comet"}
	return req, c.serves(req)
}

func TestParseHeadReadsWhatNetHTTPReads(t *testing.T) {
	for name, head := range map[string]string{
		"Go's client":                   goClientHead,
		"a browser":                     browserHead,
		"lower-case names":              "POST /comet HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\nCONTENT-TYPE: a/b\r\norigin: o\r\n\r\n",
		"no Content-Length":             "POST /comet HTTP/1.1\r\nHost: x\r\n\r\n",
		"values with spaces and tabs":   "POST /comet HTTP/1.1\r\nHost: \t x \t\r\nContent-Length:  007 \r\nContent-Type:\ta/b ; c=d\t\r\n\r\n",
		"an empty value":                "POST /comet HTTP/1.1\r\nHost: x\r\nX-Empty:\r\nContent-Type:\r\n\r\n",
		"Connection: Keep-Alive":        "POST /comet HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive\r\n\r\n",
		"two Content-Types, first wins": "POST /comet HTTP/1.1\r\nHost: x\r\nContent-Type: a/b\r\ncontent-type: c/d\r\n\r\n",
		"an empty Content-Type first":   "POST /comet HTTP/1.1\r\nHost: x\r\nContent-Type:\r\nContent-Type: a/b\r\nOrigin: \t\r\nOrigin: o\r\n\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			q, ok := parseHead([]byte(head), "/comet")
			req, want := netHTTPReads([]byte(head))
			if !ok || !want {
				t.Fatalf("parseHead %v, net/http and serves %v", ok, want)
			}
			if string(q.contentType) != req.Header.Get("Content-Type") || string(q.origin) != req.Header.Get("Origin") ||
				q.contentLength != req.ContentLength {
				t.Fatalf("parseHead read %q %q %d, net/http %q %q %d", q.contentType, q.origin, q.contentLength,
					req.Header.Get("Content-Type"), req.Header.Get("Origin"), req.ContentLength)
			}
		})
	}
}

// Heads that net/http refuses, or that this connection gives back, are
// never read in place; nor are the unusual ones listed here, which
// http.ReadRequest reads as before.
func TestParseHeadLeavesTheRestToNetHTTP(t *testing.T) {
	for name, head := range map[string]string{
		"a query":                   "POST /comet?x=1 HTTP/1.1\r\nHost: x\r\n\r\n",
		"an escaped path":           "POST /com%65t HTTP/1.1\r\nHost: x\r\n\r\n",
		"another path":              "POST /comets HTTP/1.1\r\nHost: x\r\n\r\n",
		"a Connection with tokens":  "POST /comet HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\n\r\n",
		"an empty Content-Length":   "POST /comet HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n",
		"two equal Content-Lengths": "POST /comet HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
		"a Trailer":                 "POST /comet HTTP/1.1\r\nHost: x\r\nTrailer: X\r\n\r\n",
		"an empty Host":             "POST /comet HTTP/1.1\r\nHost: \r\n\r\n",
		"a CR in a value":           "POST /comet HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n",
		"a bare LF in a value":      "POST /comet HTTP/1.1\r\nHost: x\r\nX: a\nb\r\n\r\n",
		"DEL in a value":            "POST /comet HTTP/1.1\r\nHost: x\r\nX: a\x7fb\r\n\r\n",
		"a space before the line":   "POST /comet HTTP/1.1\r\n Host: x\r\n\r\n",
		"ten digits of length":      "POST /comet HTTP/1.1\r\nHost: x\r\nContent-Length: 0000000017\r\n\r\n",
		"HTTP/1.0":                  "POST /comet HTTP/1.0\r\nHost: x\r\n\r\n",
		"two spaces":                "POST  /comet HTTP/1.1\r\nHost: x\r\n\r\n",
		"more after the blank line": "POST /comet HTTP/1.1\r\nHost: x\r\n\r\nX: y\r\n\r\n",
	} {
		if _, ok := parseHead([]byte(head), "/comet"); ok {
			t.Errorf("%s: parseHead read %q", name, head)
		}
	}
	for name, raw := range differentialCases() {
		end := strings.Index(raw, "\r\n\r\n")
		if end < 0 {
			continue
		}
		head := []byte(raw[:end+4])
		if _, ok := parseHead(head, "/comet"); ok {
			if _, served := netHTTPReads(head); !served {
				t.Errorf("%s: parseHead read %q, which net/http refuses or this connection gives back", name, head)
			}
		}
	}
}

// FuzzParseHead: whatever parseHead reads, net/http reads the same, and
// this connection would serve.
func FuzzParseHead(f *testing.F) {
	f.Add([]byte(goClientHead))
	f.Add([]byte(browserHead))
	for _, raw := range differentialCases() {
		if len(raw) < 4096 {
			f.Add([]byte(raw))
		}
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		end := bytes.Index(raw, crlfcrlf)
		if end < 0 {
			return
		}
		head := raw[:end+4]
		q, ok := parseHead(head, "/comet")
		if !ok {
			return
		}
		req, served := netHTTPReads(head)
		if !served {
			t.Fatalf("parseHead read %q, which net/http refuses or this connection gives back", head)
		}
		if string(q.contentType) != req.Header.Get("Content-Type") || string(q.origin) != req.Header.Get("Origin") ||
			q.contentLength != req.ContentLength || !httpguts.ValidHostHeader(req.Host) {
			t.Fatalf("%q: parseHead read %q %q %d, net/http %q %q %d", head, q.contentType, q.origin, q.contentLength,
				req.Header.Get("Content-Type"), req.Header.Get("Origin"), req.ContentLength)
		}
	})
}

func TestParseHeadAllocatesNothing(t *testing.T) {
	for _, head := range []string{goClientHead, browserHead} {
		b := []byte(head)
		if n := testing.AllocsPerRun(100, func() {
			if _, ok := parseHead(b, "/comet"); !ok {
				t.Fatal("not read")
			}
		}); n != 0 {
			t.Errorf("%d allocations to read %q", int(n), head)
		}
	}
}

// BenchmarkReadHead: a poll's head read in place, and by net/http.
func BenchmarkReadHead(b *testing.B) {
	for _, head := range []struct{ name, head string }{{"go-client", goClientHead}, {"browser", browserHead}} {
		raw := []byte(head.head)
		b.Run("parseHead/"+head.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := parseHead(raw, "/comet"); !ok {
					b.Fatal("not read")
				}
			}
		})
		b.Run("http.ReadRequest/"+head.name, func(b *testing.B) {
			b.ReportAllocs()
			r, br := bytes.NewReader(raw), bufio.NewReader(nil)
			for b.Loop() {
				r.Reset(raw)
				br.Reset(r)
				if _, err := http.ReadRequest(br); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
