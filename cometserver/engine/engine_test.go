package engine

import (
	"strings"
	"testing"
)

func TestParsePosition(t *testing.T) {
	for _, s := range []string{"0.a", "1.abc-DEF_9", "18446744073709551615.e", "7." + strings.Repeat("x", 64),
		"1.az", "1.AZ", "1.09", "1.-_", "1.z", "1.Z", "1.9", "1.A"} {
		p, err := ParsePosition(s)
		if err != nil || p.String() != s {
			t.Errorf("ParsePosition(%q) = %v, %v; want it back", s, p, err)
		}
	}
	for _, s := range []string{"", ".", "1", "1.", ".e", "01.e", "+1.e", "-1.e", " 1.e", "1.e ", "1.e.f", "1.e:f",
		"1.é", "18446744073709551616.e", "1." + strings.Repeat("x", 65), "0x1.e", "1e3.e", "1_0.e",
		// the characters just outside each range of the epoch's alphabet
		"1.`", "1.{", "1.@", "1.[", "1./", "1.:", "1.,", "1.^", "1.+"} {
		if p, err := ParsePosition(s); err == nil {
			t.Errorf("ParsePosition(%q) = %v, want an error", s, p)
		}
	}
	a, b := Position{3, "e"}, Position{4, "e"}
	if !b.Covers(a) || a.Covers(b) || !a.Covers(a) || (Position{9, "f"}).Covers(a) {
		t.Fatal("Covers")
	}
}

// FuzzParsePosition: whatever parses prints back to the same text, and
// is made only of characters that percent-encoding keeps as they are.
func FuzzParsePosition(f *testing.F) {
	for _, s := range []string{"0.a", "12.Zz-_", "1.", "x.y", "18446744073709551615.e", "01.a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePosition(s)
		if err != nil {
			return
		}
		if p.String() != s {
			t.Fatalf("%q parsed to %v, which prints as %q", s, p, p.String())
		}
		if strings.ContainsFunc(s, func(r rune) bool {
			return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || strings.ContainsRune("-_.", r))
		}) {
			t.Fatalf("%q holds a character that would be escaped", s)
		}
	})
}

func TestValidName(t *testing.T) {
	for _, ok := range []string{"a", "news/sport é", strings.Repeat("x", 256)} {
		if !ValidName(ok) {
			t.Errorf("ValidName(%q) = false", ok)
		}
	}
	for _, bad := range []string{"", "a:b", "a\nb", "a\rb", strings.Repeat("x", 257), "\xff"} {
		if ValidName(bad) {
			t.Errorf("ValidName(%q) = true", bad)
		}
	}
}
