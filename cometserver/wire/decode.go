// Package wire implements the comet wire format of PROTOCOL.md sections 1
// and 2: decoding a client's form body (encoded with JavaScript escape())
// into channel identifiers, and encoding the reply lines.
package wire

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/cometop/comet-operator/cometserver/engine"
)

// ErrEmptyRegistration is returned when a body names no channel at all. Its
// text is the exact reply body the protocol prescribes.
var ErrEmptyRegistration = errors.New("Empty or incorrect registration")

// SyntaxError is a malformed body: a bad escape or a pair without '='.
type SyntaxError struct {
	Offset int // byte offset in the body where the problem starts
	Reason string
}

func (e *SyntaxError) Error() string {
	return fmt.Sprintf("malformed body at byte %d: %s", e.Offset, e.Reason)
}

// TooManyIDsError is returned when a body registers more identifiers than allowed.
type TooManyIDsError struct{ Count, Max int }

func (e *TooManyIDsError) Error() string {
	return fmt.Sprintf("too many channel identifiers: %d, at most %d", e.Count, e.Max)
}

// Request is a decoded comet request body.
type Request struct {
	IDs []string // the registered channels, in order, without duplicates
	// Resume is true when the body has a "resume" parameter: the client
	// asks for positions (PROTOCOL.md section 7).
	Resume bool
	// From holds the positions the client resumes from, by channel.
	From map[string]engine.Position
}

// ResumeError is a malformed "resume" parameter.
type ResumeError struct{ Reason string }

func (e *ResumeError) Error() string { return "malformed resume parameter: " + e.Reason }

// ParseRequest decodes a form body. Its channel identifiers are those of
// every parameter named exactly "registration", merged in order, split on
// '\n', with empty identifiers dropped and duplicates collapsed (the first
// occurrence counts); maxIDs bounds what remains (maxIDs <= 0: no bound).
// A "resume" parameter opts in to positions; its value holds lines
// "id:position" for registered channels, split at the last ':'.
func ParseRequest(body []byte, maxIDs int) (Request, error) {
	var req Request
	var resume []string
	seen := make(map[string]struct{})
	offset := 0
	for pair := range strings.SplitSeq(string(body), "&") {
		start := offset
		offset += len(pair) + 1
		if pair == "" {
			continue // "a=1&&b=2" and a trailing '&' are harmless, as in URL query parsing
		}
		rawName, rawValue, ok := strings.Cut(pair, "=")
		if !ok {
			return Request{}, &SyntaxError{Offset: start, Reason: "parameter without '='"}
		}
		name, err := Unescape(rawName)
		if err != nil {
			return Request{}, shift(err, start)
		}
		if name != "registration" && name != "resume" {
			continue
		}
		value, err := Unescape(rawValue)
		if err != nil {
			return Request{}, shift(err, start+len(rawName)+1)
		}
		if name == "resume" {
			req.Resume = true
			resume = append(resume, value)
			continue
		}
		for id := range strings.SplitSeq(value, "\n") {
			if id == "" {
				continue
			}
			if _, dup := seen[id]; dup {
				continue
			}
			seen[id] = struct{}{}
			req.IDs = append(req.IDs, id)
			if maxIDs > 0 && len(req.IDs) > maxIDs {
				return Request{}, &TooManyIDsError{Count: len(req.IDs), Max: maxIDs}
			}
		}
	}
	if len(req.IDs) == 0 {
		return Request{}, ErrEmptyRegistration
	}
	for _, value := range resume {
		for line := range strings.SplitSeq(value, "\n") {
			if line == "" {
				continue
			}
			i := strings.LastIndexByte(line, ':')
			if i < 0 {
				return Request{}, &ResumeError{Reason: "a line without ':'"}
			}
			id := line[:i]
			if _, ok := seen[id]; !ok {
				return Request{}, &ResumeError{Reason: "a position for a channel not registered"}
			}
			if _, dup := req.From[id]; dup {
				return Request{}, &ResumeError{Reason: "two positions for one channel"}
			}
			pos, err := engine.ParsePosition(line[i+1:])
			if err != nil {
				return Request{}, &ResumeError{Reason: err.Error()}
			}
			if req.From == nil {
				req.From = make(map[string]engine.Position)
			}
			req.From[id] = pos
		}
	}
	return req, nil
}

func shift(err error, by int) error {
	var se *SyntaxError
	if errors.As(err, &se) {
		return &SyntaxError{Offset: se.Offset + by, Reason: se.Reason}
	}
	return err
}

// Unescape reverses JavaScript escape() and encodeURIComponent(): "%XX" is
// one byte, "%uXXXX" is one UTF-16 code unit (surrogate pairs are joined and
// written as UTF-8), and '+' is a space. Any other byte stands for itself.
func Unescape(s string) (string, error) {
	if !strings.ContainsAny(s, "%+") {
		return s, nil // the common case for generated identifiers: no copy
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); {
		switch c := s[i]; c {
		case '+':
			b.WriteByte(' ')
			i++
		case '%':
			if i+1 < len(s) && s[i+1] == 'u' {
				r, n, err := unescapeUnit(s, i)
				if err != nil {
					return "", err
				}
				b.WriteRune(r)
				i += n
				continue
			}
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
				return "", &SyntaxError{Offset: i, Reason: "'%' not followed by two hex digits"}
			}
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 3
		default:
			b.WriteByte(c)
			i++
		}
	}
	return b.String(), nil
}

// unescapeUnit decodes "%uXXXX" at s[i:], and the low surrogate that must
// follow a high one. It returns the rune and the number of bytes consumed.
func unescapeUnit(s string, i int) (rune, int, error) {
	hi, ok := hex4(s, i)
	if !ok {
		return 0, 0, &SyntaxError{Offset: i, Reason: "'%u' not followed by four hex digits"}
	}
	switch {
	case utf16.IsSurrogate(rune(hi)) && hi < 0xDC00:
		lo, ok := hex4(s, i+6)
		if !ok || lo < 0xDC00 || lo > 0xDFFF {
			return 0, 0, &SyntaxError{Offset: i, Reason: "high surrogate not followed by a '%u' low surrogate"}
		}
		return utf16.DecodeRune(rune(hi), rune(lo)), 12, nil
	case utf16.IsSurrogate(rune(hi)):
		return 0, 0, &SyntaxError{Offset: i, Reason: "low surrogate without a high surrogate before it"}
	}
	if !utf8.ValidRune(rune(hi)) {
		return 0, 0, &SyntaxError{Offset: i, Reason: "invalid code point"}
	}
	return rune(hi), 6, nil
}

// hex4 reads "%uXXXX" at s[i:].
func hex4(s string, i int) (uint16, bool) {
	if i+6 > len(s) || s[i] != '%' || s[i+1] != 'u' {
		return 0, false
	}
	var v uint16
	for _, c := range []byte(s[i+2 : i+6]) {
		if !isHex(c) {
			return 0, false
		}
		v = v<<4 | uint16(unhex(c))
	}
	return v, true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	default:
		return c - 'a' + 10
	}
}
