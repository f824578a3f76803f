package wire

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
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
			got, err := ParseRegistration([]byte(tt.body), 128)
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

func TestSyntaxErrorOffset(t *testing.T) {
	_, err := ParseRegistration([]byte("a=1&registration=ok%zz"), 0)
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

func FuzzParseRegistration(f *testing.F) {
	for _, seed := range []string{
		"registration=a%0Ab", "registration=%uD83D%uDE00", "registration=a+b&registration=c",
		"registration", "%", "%u", "%uD800%", "registration=%0A%0A", "&&", "a=b=c",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		ids, err := ParseRegistration(body, 128)
		if err != nil {
			if len(ids) != 0 {
				t.Fatalf("ids %q returned with error %v", ids, err)
			}
			return
		}
		if len(ids) == 0 || len(ids) > 128 {
			t.Fatalf("%d ids without error", len(ids))
		}
		seen := map[string]bool{}
		for _, id := range ids {
			if id == "" || strings.Contains(id, "\n") || seen[id] {
				t.Fatalf("bad id %q in %q", id, ids)
			}
			seen[id] = true
		}
	})
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
		if _, err := ParseRegistration(body, 128); err != nil {
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
