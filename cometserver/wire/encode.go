package wire

// EndedChannel is the payload that tells a client a channel is gone for good.
const EndedChannel = "ENDED_CHANNEL"

// The markers of the resume extension (PROTOCOL.md section 7). Neither
// '#' nor '@' survives percent-encoding, so no payload starts with them.
const (
	GapMarker      = "#GAP" // the history could not cover the client's position
	PositionPrefix = "@"    // followed by the channel's position after this reply
)

// Line is one line of a reply: a channel identifier and one of a message
// payload, the end marker, a gap marker or a position.
type Line struct {
	ID       string
	Payload  []byte
	Ended    bool
	Gap      bool
	Position string
}

// AppendReply appends the reply body for lines to dst: "id:payload" lines
// joined by '\n' without a trailing newline, payloads percent-encoded.
func AppendReply(dst []byte, lines []Line) []byte {
	for i, l := range lines {
		if i > 0 {
			dst = append(dst, '\n')
		}
		dst = append(dst, l.ID...)
		dst = append(dst, ':')
		switch {
		case l.Ended:
			dst = append(dst, EndedChannel...)
		case l.Gap:
			dst = append(dst, GapMarker...)
		case l.Position != "":
			dst = append(dst, PositionPrefix...)
			dst = append(dst, l.Position...)
		default:
			dst = AppendPayload(dst, l.Payload)
		}
	}
	return dst
}

const upperHex = "0123456789ABCDEF"

// AppendPayload percent-encodes p byte by byte: every byte outside
// A-Z a-z 0-9 ~ _ . ! * - becomes %XX, so a payload never holds ':' or '\n'
// and decodeURIComponent() or unescape() restore it.
func AppendPayload(dst, p []byte) []byte {
	for _, c := range p {
		if keep[c] {
			dst = append(dst, c)
		} else {
			dst = append(dst, '%', upperHex[c>>4], upperHex[c&15])
		}
	}
	return dst
}

var keep = func() (t [256]bool) {
	for c := 'A'; c <= 'Z'; c++ {
		t[c], t[c+'a'-'A'] = true, true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "~_.!*-" {
		t[c] = true
	}
	return t
}()
