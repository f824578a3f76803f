// Command nbioeval weighs nbio's HTTP server (github.com/lesismal/nbio,
// an epoll-based Go HTTP implementation that parks idle connections
// without a goroutine each) as a replacement for the comet server's
// takeover of net/http connections. The criterion is issue 12's: the
// answer to every malformed request must match net/http's. It serves one
// handler from both, sends each request of a corpus (the long-poll
// package's differential cases, and a few more) on its own connection, and
// prints where the answers differ.
//
// It lives in a module of its own so that the product does not depend on
// nbio:
//
//	cd hack/nbioeval && go run .
package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/lesismal/nbio/nbhttp"
)

func handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/comet", func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, "cannot read body", http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%s %d %q", r.Method, len(b), r.Host)
	})
	return mux
}

func poll(extra ...string) string {
	var b strings.Builder
	b.WriteString("POST /comet HTTP/1.1\r\nHost: test\r\nContent-Type: application/x-ocsigen-comet\r\n")
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("Content-Length: 17\r\n\r\nregistration=gone")
	return b.String()
}

func corpus() map[string]string {
	smuggled := "GET /comet.js HTTP/1.1\r\nHost: x\r\n\r\n"
	head := "POST /comet HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ocsigen-comet\r\n"
	return map[string]string{
		"a plain poll":                          poll(),
		"space before the colon":                head + fmt.Sprintf("Content-Length : %d\r\n\r\n", len(smuggled)) + smuggled,
		"TE with a space and CL":                head + "Transfer-Encoding : chunked\r\nContent-Length: 17\r\n\r\n0\r\n\r\n" + poll(),
		"TE chunked and CL":                     head + "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n11\r\nregistration=gone\r\n0\r\n\r\n" + poll(),
		"TE gzip":                               head + "Transfer-Encoding: gzip\r\n\r\n" + poll(),
		"two Content-Lengths":                   head + "Content-Length: 17\r\nContent-Length: 18\r\n\r\nregistration=gone" + poll(),
		"a malformed Host":                      strings.Replace(poll(), "Host: test", "Host: a b{}", 1) + poll(),
		"no Host":                               strings.Replace(poll(), "Host: test\r\n", "", 1) + poll(),
		"two Hosts":                             strings.Replace(poll(), "Host: test\r\n", "Host: a\r\nHost: b\r\n", 1) + poll(),
		"HTTP/2.0":                              strings.Replace(poll(), "HTTP/1.1", "HTTP/2.0", 1) + poll(),
		"HTTP/1.2":                              strings.Replace(poll(), "HTTP/1.1", "HTTP/1.2", 1) + poll(),
		"HTTP/0.9":                              strings.Replace(poll(), "HTTP/1.1", "HTTP/0.9", 1) + poll(),
		"no version":                            strings.Replace(poll(), " HTTP/1.1", "", 1) + poll(),
		"a CRLF after the body":                 poll() + "\r\n" + poll(),
		"bare LF line ends":                     strings.ReplaceAll(poll(), "\r\n", "\n") + poll(),
		"a header name with a space":            strings.Replace(poll(), "Host: test\r\n", "Host: test\r\nX Y: z\r\n", 1) + poll(),
		"a control in a header value":           strings.Replace(poll(), "Host: test\r\n", "Host: test\r\nX: a\x00b\r\n", 1) + poll(),
		"obs-fold":                              strings.Replace(poll(), "Host: test\r\n", "Host: test\r\nX: a\r\n b\r\n", 1) + poll(),
		"a header without a colon":              strings.Replace(poll(), "Host: test\r\n", "Host: test\r\nnocolon\r\n", 1) + poll(),
		"an invalid method":                     strings.Replace(poll(), "POST", "PO(ST", 1) + poll(),
		"a negative Content-Length":             strings.Replace(poll(), "Content-Length: 17", "Content-Length: -17", 1) + poll(),
		"a Content-Length with a sign":          strings.Replace(poll(), "Content-Length: 17", "Content-Length: +17", 1) + poll(),
		"a huge Content-Length":                 strings.Replace(poll(), "Content-Length: 17", "Content-Length: 99999999999999999999", 1) + poll(),
		"an unknown expectation":                poll("Expect: something") + poll(),
		"a header line over 1 MiB":              poll("X-Long: "+strings.Repeat("a", 1<<20+8192)) + poll(),
		"a bad chunk size":                      head + "Transfer-Encoding: chunked\r\n\r\nzz\r\nregistration=gone\r\n0\r\n\r\n" + poll(),
		"garbage":                               "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
		"a NUL in the request line":             strings.Replace(poll(), "/comet", "/com\x00et", 1) + poll(),
		"three pipelined polls":                 poll() + poll() + poll(),
		"an absolute URI":                       strings.Replace(poll(), "POST /comet", "POST http://test/comet", 1) + poll(),
		"a lower-case method":                   strings.Replace(poll(), "POST", "post", 1) + poll(),
		"Connection: close, then a second poll": poll("Connection: close") + poll(),
	}
}

// converse sends raw on a new connection and returns every response,
// normalized, then how the connection ended: closed, or still open after a
// second without a byte. (It does not half-close: nbio closes a connection
// at the end of its input without answering what it read.)
func converse(addr, raw string) string {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return "dial: " + err.Error()
	}
	defer c.Close()
	io.WriteString(c, raw)
	br := bufio.NewReader(c)
	var out []string
	for {
		c.SetReadDeadline(time.Now().Add(time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			rest, _ := io.ReadAll(br)
			var ne net.Error
			switch {
			case (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) && len(rest) == 0:
				out = append(out, "closed")
			case errors.As(err, &ne) && ne.Timeout() && len(rest) == 0:
				out = append(out, "open")
			default:
				out = append(out, fmt.Sprintf("unparsable (%v) %.40q", err, rest))
			}
			return strings.Join(out, " | ")
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		out = append(out, fmt.Sprintf("%d close=%v %.60q", resp.StatusCode, resp.Close, b))
	}
}

func main() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	std := &http.Server{Handler: handler()}
	go std.Serve(ln)
	defer std.Close()

	nbAddr := "127.0.0.1:18089"
	engine := nbhttp.NewEngine(nbhttp.Config{Network: "tcp", Addrs: []string{nbAddr}, Handler: handler()})
	if err := engine.Start(); err != nil {
		panic(err)
	}
	defer engine.Stop()

	cases := corpus()
	names := make([]string, 0, len(cases))
	for name := range cases {
		names = append(names, name)
	}
	sort.Strings(names)
	differ := 0
	for _, name := range names {
		want, got := converse(ln.Addr().String(), cases[name]), converse(nbAddr, cases[name])
		if want != got {
			differ++
			fmt.Printf("DIFFERS  %s\n  net/http: %s\n  nbio:     %s\n", name, want, got)
		}
	}
	fmt.Printf("\n%d of %d requests answered differently by nbio %s than by net/http\n", differ, len(cases), "v1.6.8")
	if differ > 0 {
		os.Exit(1)
	}
}
