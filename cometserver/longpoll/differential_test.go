package longpoll

// Differential tests: the same raw bytes, sent on a connection that has
// already answered one poll, to net/http's own server (the endpoint without
// takeover) and to a connection the handler took over. Whatever the bytes,
// both must answer the same: the same responses (status, reason, framing,
// body) in the same order, and the same end of the connection. net/http is
// the reference: a taken-over connection must never frame a request
// differently (request smuggling) nor accept what net/http refuses.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cometop/comet-operator/test/bounded"
)

// answers is what a server sent back for some bytes: each response in a
// normal form, then how the exchange ended.
type answers []string

// converse sends a poll that waits and is answered, then raw on the same
// connection, closes the writing side, and reads everything the server
// sends until it closes.
func converse(t testing.TB, e *env, raw string) answers {
	t.Helper()
	c := e.dial()
	e.park(c)
	c.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c.c, raw); err != nil {
		return answers{"write failed: " + err.Error()}
	}
	c.c.(*net.TCPConn).CloseWrite()
	var out answers
	for {
		resp, err := http.ReadResponse(c.br, nil)
		if err != nil {
			rest, _ := io.ReadAll(c.br)
			switch {
			case (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) && len(rest) == 0:
				return append(out, "closed")
			case isTimeout(err):
				return append(out, "no answer within 10s")
			}
			return append(out, fmt.Sprintf("unparsable: %v %q", err, rest))
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return append(out, "body: "+err.Error())
		}
		out = append(out, fmt.Sprintf("%s %s close=%v len=%d acao=%q %q", resp.Proto, resp.Status, resp.Close, resp.ContentLength,
			resp.Header.Get("Access-Control-Allow-Origin"), body))
	}
}

// differ reports how the two servers' answers to raw differ, if they do.
func differ(t testing.TB, reference, taken *env, raw string) string {
	t.Helper()
	want, got := converse(t, reference, raw), converse(t, taken, raw)
	if strings.Join(want, "\n") == strings.Join(got, "\n") {
		return ""
	}
	return fmt.Sprintf("net/http answered\n\t%s\nthe taken-over connection\n\t%s", strings.Join(want, "\n\t"), strings.Join(got, "\n\t"))
}

func diffEnvs(t *testing.T) (reference, taken *env) {
	// With an allowed origin, so that which Origin a server read shows.
	reference = newEnv(t, plain, time.Minute, Options{CORSOrigins: []string{"https://app.example"}})
	taken = newEnv(t, takeover, time.Minute, Options{CORSOrigins: []string{"https://app.example"}})
	return reference, taken
}

// poll is a well-formed poll for an unknown channel: answered at once.
func okPoll(extra ...string) string {
	return rawRequest("POST", "/comet", ContentType, "registration=gone", extra...)
}

// differentialCases are requests net/http refuses or frames in its own way,
// each followed by a poll that a server which framed the request
// differently would answer.
func differentialCases() map[string]string {
	smuggled := "GET /comet.js HTTP/1.1\r\nHost: x\r\n\r\n"
	cases := map[string]string{
		"space before the colon of Content-Length": "POST /comet HTTP/1.1\r\nHost: x\r\nContent-Type: " + ContentType +
			fmt.Sprintf("\r\nContent-Length : %d\r\n\r\n", len(smuggled)) + smuggled,
		"Transfer-Encoding with a space and Content-Length": "POST /comet HTTP/1.1\r\nHost: x\r\nContent-Type: " + ContentType +
			"\r\nTransfer-Encoding : chunked\r\nContent-Length: 17\r\n\r\n0\r\n\r\n" + okPoll(),
		"Transfer-Encoding chunked and Content-Length": "POST /comet HTTP/1.1\r\nHost: x\r\nContent-Type: " + ContentType +
			"\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n11\r\nregistration=gone\r\n0\r\n\r\n" + okPoll(),
		"Transfer-Encoding gzip":        "POST /comet HTTP/1.1\r\nHost: x\r\nContent-Type: " + ContentType + "\r\nTransfer-Encoding: gzip\r\n\r\n" + okPoll(),
		"two Content-Lengths":           "POST /comet HTTP/1.1\r\nHost: x\r\nContent-Type: " + ContentType + "\r\nContent-Length: 17\r\nContent-Length: 18\r\n\r\nregistration=gone" + okPoll(),
		"the same Content-Length twice": "POST /comet HTTP/1.1\r\nHost: x\r\nContent-Type: " + ContentType + "\r\nContent-Length: 17\r\nContent-Length: 17\r\n\r\nregistration=gone" + okPoll(),
		"a malformed Host":              strings.Replace(okPoll(), "Host: test", "Host: a b{}", 1) + okPoll(),
		"no Host":                       strings.Replace(okPoll(), "Host: test\r\n", "", 1) + okPoll(),
		"two Hosts":                     strings.Replace(okPoll(), "Host: test\r\n", "Host: a\r\nHost: b\r\n", 1) + okPoll(),
		"HTTP/2.0":                      strings.Replace(okPoll(), "HTTP/1.1", "HTTP/2.0", 1) + okPoll(),
		"HTTP/1.2":                      strings.Replace(okPoll(), "HTTP/1.1", "HTTP/1.2", 1) + okPoll(),
		"HTTP/0.9":                      strings.Replace(okPoll(), "HTTP/1.1", "HTTP/0.9", 1) + okPoll(),
		"HTTP/3":                        strings.Replace(okPoll(), "HTTP/1.1", "HTTP/3", 1) + okPoll(),
		"no version":                    strings.Replace(okPoll(), " HTTP/1.1", "", 1) + okPoll(),
		"a CRLF after the body":         okPoll() + "\r\n" + okPoll(),
		"two CRLFs after the body":      okPoll() + "\r\n\r\n" + okPoll(),
		"a bare LF after the body":      okPoll() + "\n" + okPoll(),
		"bare LF line ends":             strings.ReplaceAll(okPoll(), "\r\n", "\n") + okPoll(),
		"a header name with a space":    strings.Replace(okPoll(), "Host: test\r\n", "Host: test\r\nX Y: z\r\n", 1) + okPoll(),
		"a control in a header name":    strings.Replace(okPoll(), "Host: test\r\n", "Host: test\r\nX\x01: z\r\n", 1) + okPoll(),
		"a control in a header value":   strings.Replace(okPoll(), "Host: test\r\n", "Host: test\r\nX: a\x00b\r\n", 1) + okPoll(),
		"a folded header (obs-fold)":    strings.Replace(okPoll(), "Host: test\r\n", "Host: test\r\nX: a\r\n b\r\n", 1) + okPoll(),
		"a folded Content-Length":       strings.Replace(okPoll(), "Content-Length: 17", "Content-Length:\r\n 17", 1) + okPoll(),
		"a header without a colon":      strings.Replace(okPoll(), "Host: test\r\n", "Host: test\r\nnocolon\r\n", 1) + okPoll(),
		"an empty header name":          strings.Replace(okPoll(), "Host: test\r\n", "Host: test\r\n: v\r\n", 1) + okPoll(),
		"a lower-case method":           strings.Replace(okPoll(), "POST", "post", 1) + okPoll(),
		"an invalid method":             strings.Replace(okPoll(), "POST", "PO(ST", 1) + okPoll(),
		"an absolute URI":               strings.Replace(okPoll(), "POST /comet", "POST http://test/comet", 1) + okPoll(),
		"an asterisk target":            strings.Replace(okPoll(), "POST /comet", "POST *", 1) + okPoll(),
		"a negative Content-Length":     strings.Replace(okPoll(), "Content-Length: 17", "Content-Length: -17", 1) + okPoll(),
		"a Content-Length with a sign":  strings.Replace(okPoll(), "Content-Length: 17", "Content-Length: +17", 1) + okPoll(),
		"a Content-Length in hex":       strings.Replace(okPoll(), "Content-Length: 17", "Content-Length: 0x11", 1) + okPoll(),
		"a huge Content-Length":         strings.Replace(okPoll(), "Content-Length: 17", "Content-Length: 99999999999999999999", 1) + okPoll(),
		"Expect: 100-continue":          okPoll("Expect: 100-continue") + okPoll(),
		"an unknown expectation":        okPoll("Expect: something") + okPoll(),
		"Connection: close":             okPoll("Connection: close") + okPoll(),
		"Connection: keep-alive, close": okPoll("Connection: keep-alive, close") + okPoll(),
		"a request line too long":       "POST /comet?" + strings.Repeat("a", 1<<20+8192) + " HTTP/1.1\r\nHost: test\r\n\r\n",
		"a header too long":             okPoll("X-Long: "+strings.Repeat("a", 1<<20+8192)) + okPoll(),
		"chunked, then a poll":          "POST /comet HTTP/1.1\r\nHost: x\r\nContent-Type: " + ContentType + "\r\nTransfer-Encoding: chunked\r\n\r\n11\r\nregistration=gone\r\n0\r\n\r\n" + okPoll(),
		"a bad chunk size":              "POST /comet HTTP/1.1\r\nHost: x\r\nContent-Type: " + ContentType + "\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nregistration=gone\r\n0\r\n\r\n" + okPoll(),
		"an upgrade to h2c":             okPoll("Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA") + okPoll(),
		"garbage":                       "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
		"a NUL in the request line":     strings.Replace(okPoll(), "/comet", "/com\x00et", 1) + okPoll(),
		"three pipelined polls":         okPoll() + okPoll() + okPoll(),
		// Heads at the edge of what a taken-over connection reads in place
		// (head.go): the same answers whichever parser reads them.
		"lower-case header names":         strings.NewReplacer("Host:", "host:", "Content-Type:", "content-type:", "Content-Length:", "CONTENT-LENGTH:").Replace(okPoll()) + okPoll(),
		"Connection: Keep-Alive":          okPoll("Connection: Keep-Alive") + okPoll(),
		"a Content-Length with zeros":     strings.Replace(okPoll(), "Content-Length: 17", "Content-Length: 000000017", 1) + okPoll(),
		"a Content-Length of ten digits":  strings.Replace(okPoll(), "Content-Length: 17", "Content-Length: 0000000017", 1) + okPoll(),
		"an empty Content-Length":         strings.Replace(okPoll(), "Content-Length: 17", "Content-Length: ", 1) + okPoll(),
		"no Content-Length":               strings.Replace(okPoll(), "Content-Length: 17\r\n", "", 1) + okPoll(),
		"a Content-Type with a parameter": strings.Replace(okPoll(), ContentType, ContentType+"; charset=utf-8", 1) + okPoll(),
		"a Content-Type with tabs":        strings.Replace(okPoll(), "Content-Type: ", "Content-Type:\t \t", 1) + okPoll(),
		"another Content-Type":            strings.Replace(okPoll(), ContentType, "text/plain", 1) + okPoll(),
		"obs-text in a value":             okPoll("Cookie: s=\xe9t\xe9") + okPoll(),
		"a query":                         strings.Replace(okPoll(), "/comet", "/comet?x=1", 1) + okPoll(),
		"an escaped path":                 strings.Replace(okPoll(), "/comet", "/com%65t", 1) + okPoll(),
		"another path":                    strings.Replace(okPoll(), "/comet", "/other", 1) + okPoll(),
		"a CR alone in a value":           okPoll("X: a\rb") + okPoll(),
		"a Host with a port":              strings.Replace(okPoll(), "Host: test", "Host: test:8080", 1) + okPoll(),
		// The first value is the one net/http reads, even empty (review of
		// the head parser: a nil test took the second).
		"an empty Content-Type, then ours": strings.Replace(okPoll(), "Content-Type: ", "Content-Type:\r\nContent-Type: ", 1) + okPoll(),
		"a blank Content-Type, then ours":  strings.Replace(okPoll(), "Content-Type: ", "Content-Type: \t \r\nContent-Type: ", 1) + okPoll(),
		"an allowed Origin":                okPoll("Origin: https://app.example") + okPoll(),
		"an empty Origin, then an allowed": okPoll("Origin:", "Origin: https://app.example") + okPoll(),
		"another Origin, then an allowed":  okPoll("Origin: https://evil.example", "Origin: https://app.example") + okPoll(),
	}
	return cases
}

// Each case: net/http's server and a taken-over connection answer the same.
func TestDifferentialAgainstNetHTTP(t *testing.T) {
	bounded.Test(t, 5*time.Minute)
	reference, taken := diffEnvs(t)
	for name, raw := range differentialCases() {
		t.Run(name, func(t *testing.T) {
			if d := differ(t, reference, taken, raw); d != "" {
				t.Fatal(d)
			}
		})
	}
}

// FuzzDifferential sends arbitrary bytes, after a poll, to both servers.
func FuzzDifferential(f *testing.F) {
	for _, raw := range differentialCases() {
		if len(raw) < 64<<10 {
			f.Add([]byte(raw))
		}
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		reference, taken := diffEnvs(t)
		if d := differ(t, reference, taken, string(raw)); d != "" {
			t.Fatal(d)
		}
	})
}
