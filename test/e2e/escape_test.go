//go:build e2e

package e2e

import (
	"encoding/base64"
	"fmt"
	"net/url"
	"unicode/utf16"
)

// jsEscape is JavaScript's escape(): what a browser client sends.
func jsEscape(s string) string {
	const keep = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789@*_+-./"
	var out []byte
	for _, r := range s {
		switch {
		case r < 0x80 && indexByte(keep, byte(r)):
			out = append(out, byte(r))
		case r < 0x100:
			out = append(out, fmt.Sprintf("%%%02X", r)...)
		default:
			for _, u := range utf16.Encode([]rune{r}) {
				out = append(out, fmt.Sprintf("%%u%04X", u)...)
			}
		}
	}
	return string(out)
}

func indexByte(s string, c byte) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return true
		}
	}
	return false
}

func urlPathEscape(s string) string { return url.PathEscape(s) }

func decodeBase64(s string) (string, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	return string(b), err
}
