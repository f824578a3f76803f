package longpoll

// The head of a taken-over connection's next poll, read without net/http.
//
// http.ReadRequest builds a header map, a URL and strings for every header
// of every request: about a tenth of the server's CPU per delivery, and most
// of its allocations. A client's next poll is nearly always the same few
// lines, so parseHead reads those in place, and only when it can tell that
// net/http would read the head the same way and serve it here (see
// serves). For anything else, however valid, it reports false and
// http.ReadRequest reads the head as before: this parser is a strict
// subset of net/http's, never a second opinion on what HTTP means.

import (
	"bytes"

	"golang.org/x/net/http/httpguts"
)

// quickHead is what parseHead keeps of a head: slices of its bytes.
type quickHead struct {
	contentType, origin []byte // the first value of each, trimmed; nil if absent
	contentLength       int64  // 0 when absent, as net/http has it for a POST
}

var crlf = []byte("\r\n")

// parseHead reads b, a whole request head ending in its blank line, when
// it is an HTTP/1.1 POST to path (sent as its exact bytes) with one valid
// Host, at most one Content-Length of plain digits, no Transfer-Encoding,
// Trailer, Expect or Upgrade, no Connection but keep-alive, every line
// ended by CRLF, no folded line, and valid names and values throughout.
// That is a head net/http parses without error into the same method, path,
// framing and values, and that serves accepts.
func parseHead(b []byte, path string) (h quickHead, ok bool) {
	line, rest, ok := bytes.Cut(b, crlf)
	if !ok || len(line) != len("POST ")+len(path)+len(" HTTP/1.1") ||
		!bytes.HasPrefix(line, []byte("POST ")) || !bytes.HasSuffix(line, []byte(" HTTP/1.1")) ||
		string(line[len("POST "):len(line)-len(" HTTP/1.1")]) != path {
		return h, false
	}
	// Counted, not tested for nil: an empty first value (Trim gives nil)
	// is the one net/http's Header.Get returns, not a later one.
	hosts, lengths, types, origins := 0, 0, 0, 0
	for {
		if line, rest, ok = bytes.Cut(rest, crlf); !ok {
			return h, false
		}
		if len(line) == 0 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok || len(name) == 0 {
			return h, false
		}
		for _, c := range name { // a token: no space, no control, nothing folded
			if !httpguts.IsTokenRune(rune(c)) {
				return h, false
			}
		}
		for _, c := range value { // textproto's and the server's rule: VCHAR, SP, HTAB, obs-text
			if c < ' ' && c != '\t' || c == 0x7f {
				return h, false
			}
		}
		value = bytes.Trim(value, " \t")
		switch {
		case asciiFold(name, "Host"):
			hosts++
			if len(value) == 0 || !httpguts.ValidHostHeader(string(value)) {
				return h, false
			}
		case asciiFold(name, "Content-Length"):
			lengths++
			if len(value) == 0 || len(value) > 9 { // 9 digits cannot overflow
				return h, false
			}
			h.contentLength = 0
			for _, c := range value {
				if c < '0' || c > '9' {
					return h, false
				}
				h.contentLength = h.contentLength*10 + int64(c-'0')
			}
		case asciiFold(name, "Content-Type"):
			if types++; types == 1 {
				h.contentType = value[:len(value):len(value)]
			}
		case asciiFold(name, "Origin"):
			if origins++; origins == 1 {
				h.origin = value[:len(value):len(value)]
			}
		case asciiFold(name, "Connection"):
			if !asciiFold(value, "keep-alive") {
				return h, false
			}
		case asciiFold(name, "Transfer-Encoding"), asciiFold(name, "Trailer"),
			asciiFold(name, "Expect"), asciiFold(name, "Upgrade"):
			return h, false
		}
	}
	return h, hosts == 1 && lengths <= 1 && len(rest) == 0
}

// asciiFold reports whether b is s, ignoring ASCII case, as header names
// compare once net/http has canonicalized them.
func asciiFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		x, y := b[i], s[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// quickPath reports whether a path's exact bytes are its request target,
// and nothing net/http would decode otherwise: no escape, query or
// fragment.
func quickPath(path string) bool {
	if len(path) == 0 || path[0] != '/' {
		return false
	}
	for i := range len(path) {
		c := path[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '/' || c == '-' || c == '.' || c == '_' || c == '~') {
			return false
		}
	}
	return true
}
