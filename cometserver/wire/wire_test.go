package wire

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/cometop/comet-operator/cometserver/engine"
)

func TestUnescape(t *testing.T) {
	tests := []struct {
		in, want string
		err      string
	}{
		{in: "plain", want: "plain"},
		{in: "a+b", want: "a b"},
		{in: "%41%62", want: "Ab"},
		{in: "%e9", want: "\xe9"}, // escape("é") is one Latin-1 byte, kept as is
		{in: "%C3%A9", want: "é"}, // encodeURIComponent("é")
		{in: "%u00E9", want: "é"},
		{in: "%u20ac", want: "€"},
		{in: "%uD83D%uDE00", want: "😀"}, // surrogate pair joined into one UTF-8 rune
		{in: "x%0Ay", want: "x\ny"},
		{in: "%2B", want: "+"},
		{in: "%", err: "two hex digits"},
		{in: "%4", err: "two hex digits"},
		{in: "%G1", err: "two hex digits"},
		{in: "%u12", err: "four hex digits"},
		{in: "%u12G4", err: "four hex digits"},
		{in: "%uD83D", err: "high surrogate"},
		{in: "%uD83Dx", err: "high surrogate"},
		{in: "%uD83D%u0041", err: "high surrogate"},
		{in: "%uDE00", err: "low surrogate"},
		{in: "%uDC00%uDC00", err: "low surrogate"},                   // the first of the low range
		{in: "%uD800%uDC00", want: "\U00010000"},                     // the first pair
		{in: "%uDBFF%uDFFF", want: "\U0010FFFF"},                     // the last pair
		{in: "%uD7FF%uE000", want: "\uD7FF\uE000"},                   // just outside the surrogates
		{in: "%FF%ff%Af%aF%09%90", want: "\xff\xff\xaf\xaf\x09\x90"}, // every hex digit case
		{in: "%u00ff%u00FF", want: "ÿÿ"},
	}
	for _, tt := range tests {
		got, err := Unescape(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("Unescape(%q) error = %v, want one containing %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("Unescape(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestParseRegistration(t *testing.T) {
	many := func(n int) string {
		ids := make([]string, n)
		for i := range ids {
			ids[i] = fmt.Sprint("c", i)
		}
		return "registration=" + url.QueryEscape(strings.Join(ids, "\n"))
	}
	tests := []struct {
		name, body string
		want       []string
		err        string
	}{
		{name: "one id", body: "registration=abc", want: []string{"abc"}},
		{name: "newline separated", body: "registration=a%0Ab%0Ac", want: []string{"a", "b", "c"}},
		{name: "merged in order", body: "registration=a&other=x&registration=b%0Ac", want: []string{"a", "b", "c"}},
		{name: "escaped name", body: "%72egistration=a", want: []string{"a"}},
		{name: "empty ids dropped", body: "registration=%0Aa%0A%0Ab%0A", want: []string{"a", "b"}},
		{name: "duplicates collapsed, first wins", body: "registration=b%0Aa%0Ab&registration=a", want: []string{"b", "a"}},
		{name: "plus is space", body: "registration=a+b", want: []string{"a b"}},
		{name: "surrogate pair", body: "registration=%uD83D%uDE00", want: []string{"😀"}},
		{name: "empty pairs ignored", body: "&registration=a&&", want: []string{"a"}},
		{name: "exactly the id limit", body: many(128), want: nil},
		{name: "no body", body: "", err: ErrEmptyRegistration.Error()},
		{name: "only other params", body: "foo=bar", err: ErrEmptyRegistration.Error()},
		{name: "only separators", body: "registration=%0A%0A", err: ErrEmptyRegistration.Error()},
		{name: "name is case sensitive", body: "Registration=a", err: ErrEmptyRegistration.Error()},
		{name: "pair without =", body: "registration", err: "without '='"},
		{name: "bad escape in value", body: "registration=%ZZ", err: "two hex digits"},
		{name: "bad escape in name", body: "re%g=a", err: "two hex digits"},
		{name: "too many ids", body: many(129), err: "too many channel identifiers: 129, at most 128"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseIDs([]byte(tt.body), 128)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error = %v, want one containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.want == nil { // the limit case: only the count matters
				if len(got) != 128 {
					t.Fatalf("got %d ids, want 128", len(got))
				}
				return
			}
			if strings.Join(got, "|") != strings.Join(tt.want, "|") {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

// maxIDs of 0 or less sets no bound.
func TestNoBound(t *testing.T) {
	ids := make([]string, 300)
	for i := range ids {
		ids[i] = fmt.Sprint(i)
	}
	for _, max := range []int{0, -1} {
		if got, err := parseIDs([]byte("registration="+strings.Join(ids, "%0A")), max); err != nil || len(got) != 300 {
			t.Fatalf("300 ids with max %d: %d, %v", max, len(got), err)
		}
	}
}

func TestSyntaxErrorOffset(t *testing.T) {
	_, err := parseIDs([]byte("a=1&registration=ok%zz"), 0)
	var se *SyntaxError
	if !errors.As(err, &se) || se.Offset != 19 {
		t.Fatalf("error = %#v, want a SyntaxError at byte 19", err)
	}
}

func TestAppendReply(t *testing.T) {
	lines := []Line{
		{ID: "gone", Ended: true},
		{ID: "news", Payload: []byte("a:b\nc d%é")},
		{ID: "news", Payload: []byte("AZaz09~_.!*-")},
		{ID: "empty", Payload: nil},
	}
	got := string(AppendReply(nil, lines))
	want := "gone:ENDED_CHANNEL\nnews:a%3Ab%0Ac%20d%25%C3%A9\nnews:AZaz09~_.!*-\nempty:"
	if got != want {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
	if got := AppendReply(nil, nil); len(got) != 0 {
		t.Fatalf("empty reply = %q", got)
	}
}

// Every payload survives the round trip through the encoding and
// decodeURIComponent's rules, and never holds a separator.
func TestPayloadRoundTrip(t *testing.T) {
	var all []byte
	for c := range 256 {
		all = append(all, byte(c))
	}
	enc := string(AppendPayload(nil, all))
	if strings.ContainsAny(enc, ":\n") {
		t.Fatalf("encoded payload holds a separator: %q", enc)
	}
	dec, err := url.PathUnescape(enc)
	if err != nil || dec != string(all) {
		t.Fatalf("round trip lost bytes: %v", err)
	}
}

// FuzzParseRegistration compares ParseRegistration with refParse, a
// plain reference decoding written apart from it: the same identifiers, or
// the same kind of error.
func FuzzParseRegistration(f *testing.F) {
	for _, seed := range []string{
		"registration=a%0Ab", "registration=%uD83D%uDE00", "registration=a+b&registration=c",
		"registration", "%", "%u", "%uD800%", "registration=%0A%0A", "&&", "a=b=c",
		"registration=%uDE00", "registration=%uD83D%u0041", "%72egistration=x", "registration=%E9%0A%e9",
	} {
		f.Add([]byte(seed), uint8(4))
		f.Add([]byte(seed), uint8(0))
	}
	f.Fuzz(func(t *testing.T, body []byte, max uint8) {
		maxIDs := int(max % 8) // 0: no bound
		ids, err := parseIDs(body, maxIDs)
		want, wantErr := refParse(string(body), maxIDs)
		var re *ResumeError
		if errors.As(err, &re) && wantErr == "" {
			return // a malformed resume parameter, which the reference ignores: FuzzParseResume's part
		}
		if kind(err) != wantErr {
			t.Fatalf("%q (max %d): error %v, the reference says %q", body, maxIDs, err, wantErr)
		}
		if err != nil {
			if len(ids) != 0 {
				t.Fatalf("ids %q returned with error %v", ids, err)
			}
			return
		}
		if strings.Join(ids, "\x00") != strings.Join(want, "\x00") || len(ids) != len(want) {
			t.Fatalf("%q: ids %q, the reference decodes %q", body, ids, want)
		}
	})
}

func kind(err error) string {
	var se *SyntaxError
	var tm *TooManyIDsError
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrEmptyRegistration):
		return "empty"
	case errors.As(err, &se):
		return "syntax"
	case errors.As(err, &tm):
		return "too many"
	}
	return "other: " + err.Error()
}

// refParse is the protocol's section 1 read literally: pairs split on '&',
// empty pairs skipped, a pair without '=' refused, names and values decoded
// (refUnescape), only "registration" read, its value split on '\n', empty
// identifiers dropped, later duplicates dropped, more than maxIDs refused.
func refParse(body string, maxIDs int) ([]string, string) {
	var ids []string
	for _, pair := range strings.Split(body, "&") {
		if pair == "" {
			continue
		}
		eq := strings.IndexByte(pair, '=')
		if eq < 0 {
			return nil, "syntax"
		}
		name, ok := refUnescape(pair[:eq])
		if !ok {
			return nil, "syntax"
		}
		if name != "registration" {
			continue
		}
		value, ok := refUnescape(pair[eq+1:])
		if !ok {
			return nil, "syntax"
		}
		for _, id := range strings.Split(value, "\n") {
			if id != "" && !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
			if maxIDs > 0 && len(ids) > maxIDs {
				return nil, "too many"
			}
		}
	}
	if len(ids) == 0 {
		return nil, "empty"
	}
	return ids, ""
}

// refUnescape decodes escape() and encodeURIComponent() text in two
// passes: first into units (bytes from literals, '+' and %XX; UTF-16 code
// units from %uXXXX), then runs of code units through unicode/utf16,
// refusing a surrogate that is not half of a pair.
func refUnescape(s string) (string, bool) {
	type unit struct {
		b    byte
		cu   uint16
		wide bool
	}
	var units []unit
	for i := 0; i < len(s); {
		switch {
		case s[i] == '+':
			units = append(units, unit{b: ' '})
			i++
		case strings.HasPrefix(s[i:], "%u"):
			if len(s) < i+6 || !isHexString(s[i+2:i+6]) {
				return "", false
			}
			v, _ := strconv.ParseUint(s[i+2:i+6], 16, 16)
			units = append(units, unit{cu: uint16(v), wide: true})
			i += 6
		case s[i] == '%':
			if len(s) < i+3 || !isHexString(s[i+1:i+3]) {
				return "", false
			}
			v, _ := strconv.ParseUint(s[i+1:i+3], 16, 8)
			units = append(units, unit{b: byte(v)})
			i += 3
		default:
			units = append(units, unit{b: s[i]})
			i++
		}
	}
	var out []byte
	for i := 0; i < len(units); i++ {
		u := units[i]
		if !u.wide {
			out = append(out, u.b)
			continue
		}
		pair := []uint16{u.cu}
		if utf16.IsSurrogate(rune(u.cu)) {
			if u.cu >= 0xDC00 || i+1 == len(units) || !units[i+1].wide || units[i+1].cu < 0xDC00 || units[i+1].cu > 0xDFFF {
				return "", false
			}
			pair = append(pair, units[i+1].cu)
			i++
		}
		out = utf8.AppendRune(out, utf16.Decode(pair)[0])
	}
	return string(out), true
}

func isHexString(s string) bool {
	for _, c := range s {
		if !strings.ContainsRune("0123456789abcdefABCDEF", c) {
			return false
		}
	}
	return true
}

func FuzzPayload(f *testing.F) {
	f.Add([]byte("hello: world\n"))
	f.Add([]byte{0, 0xff, '%'})
	f.Fuzz(func(t *testing.T, p []byte) {
		enc := string(AppendPayload(nil, p))
		if strings.ContainsAny(enc, ":\n") {
			t.Fatalf("separator in %q", enc)
		}
		if dec, err := Unescape(enc); err != nil || dec != string(p) {
			t.Fatalf("round trip of %q gave %q, %v", p, dec, err)
		}
	})
}

func BenchmarkParseRegistration(b *testing.B) {
	// A browser tab on 8 generated channels, as escape() sends it.
	var ids []string
	for i := range 8 {
		ids = append(ids, fmt.Sprintf("Xk3v_9QmT2pL-aZ8rN4wYg%d", i))
	}
	body := []byte("registration=" + strings.Join(ids, "%0A"))
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseRequest(body, 128); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendReply(b *testing.B) {
	lines := []Line{
		{ID: "Xk3v_9QmT2pL-aZ8rN4wYg", Payload: []byte(`{"user":"ann","text":"hello, world: 42"}`)},
		{ID: "gone", Ended: true},
	}
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendReply(buf[:0], lines)
	}
	b.SetBytes(int64(len(buf)))
}

// parseIDs is ParseRequest's identifiers, for the tests of registration.
func parseIDs(body []byte, maxIDs int) ([]string, error) {
	r, err := ParseRequest(body, maxIDs)
	return r.IDs, err
}

func TestParseRequestResume(t *testing.T) {
	for _, tt := range []struct {
		body   string
		resume bool
		from   string // "id=position ..." sorted as given
		err    string
	}{
		{"registration=a", false, "", ""},
		{"registration=a&resume=", true, "", ""},
		{"resume=&registration=a", true, "", ""},
		{"registration=a%0Ab&resume=a:3.e%0A%0Ab:0.f", true, "a=3.e b=0.f", ""},
		{"registration=a&resume=a%3A3.e", true, "a=3.e", ""},
		{"registration=x:y&resume=x:y:1.e", true, "x:y=1.e", ""},
		{"registration=a&resume=a:1.e&resume=", true, "a=1.e", ""},
		{"registration=a&resume=a", true, "", "a line without ':'"},
		{"registration=a&resume=a:1", true, "", "malformed position"},
		{"registration=a&resume=b:1.e", true, "", "not registered"},
		{"registration=a&resume=:1.e", true, "", "not registered"},
		{"registration=a&resume=a:1.e%0Aa:2.e", true, "", "two positions"},
		{"resume=a:1.e", true, "", "Empty or incorrect registration"},
		{"registration=a&resume=%zz", true, "", "malformed body"},
	} {
		r, err := ParseRequest([]byte(tt.body), 0)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%q: %v, want an error with %q", tt.body, err, tt.err)
			}
			continue
		}
		var from []string
		for _, id := range r.IDs {
			if p, ok := r.From[id]; ok {
				from = append(from, id+"="+p.String())
			}
		}
		if err != nil || r.Resume != tt.resume || strings.Join(from, " ") != tt.from || len(from) != len(r.From) {
			t.Errorf("%q: %+v, %v; want resume %v, from %q", tt.body, r, err, tt.resume, tt.from)
		}
	}
}

func TestAppendReplyMarkers(t *testing.T) {
	got := string(AppendReply(nil, []Line{
		{ID: "a", Ended: true}, {ID: "b", Gap: true}, {ID: "b", Payload: []byte("#GAP")},
		{ID: "b", Payload: []byte("@1.e")}, {ID: "b", Position: "7.e"},
	}))
	if want := "a:ENDED_CHANNEL\nb:#GAP\nb:%23GAP\nb:%401.e\nb:@7.e"; got != want {
		t.Fatalf("reply %q, want %q", got, want)
	}
}

// FuzzParseResume: a request that parses has positions only for its
// registered channels, each one that prints back as a valid position, and
// says it resumes exactly when a parameter named resume is in the body.
func FuzzParseResume(f *testing.F) {
	for _, seed := range []string{
		"registration=a&resume=a:1.e", "registration=a%0Ab&resume=b:0.f%0Aa:2.g", "registration=a&resume=",
		"registration=x:y&resume=x:y:1.e", "registration=a&resume=a", "registration=a&resume=a:01.e",
		"registration=a&res%75me=a:1.e", "registration=a&resume=a:1.e&resume=a:1.e",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := ParseRequest(body, 0)
		if err != nil {
			return
		}
		hasResume := false
		for pair := range strings.SplitSeq(string(body), "&") {
			name, _, _ := strings.Cut(pair, "=")
			if n, err := Unescape(name); err == nil && n == "resume" {
				hasResume = true
			}
		}
		if r.Resume != hasResume {
			t.Fatalf("%q: Resume %v, the body has a resume parameter: %v", body, r.Resume, hasResume)
		}
		for id, p := range r.From {
			if !slices.Contains(r.IDs, id) {
				t.Fatalf("%q: a position for %q, not registered", body, id)
			}
			if back, err := engine.ParsePosition(p.String()); err != nil || back != p {
				t.Fatalf("%q: position %v does not print back", body, p)
			}
		}
	})
}
