package freeport

import (
	"net"
	"strconv"
	"testing"
)

// Ports come from below the ephemeral range, free, never twice, with their
// offset ports free and reserved too.
func TestAddr(t *testing.T) {
	seen := map[int]bool{}
	for i := range 300 {
		var offsets []int
		if i%2 == 1 {
			offsets = []int{10000}
		}
		addr, err := Addr(offsets...)
		if err != nil {
			t.Fatal(err)
		}
		_, p, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatal(err)
		}
		port, _ := strconv.Atoi(p)
		ports := []int{port}
		for _, off := range offsets {
			ports = append(ports, port+off)
		}
		for _, q := range ports {
			if q < first || q >= EphemeralLow() || seen[q] {
				t.Fatalf("port %d of %s: outside [%d, %d) or handed out twice (%v)", q, addr, first, EphemeralLow(), seen[q])
			}
			seen[q] = true
			ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(q)))
			if err != nil {
				t.Fatalf("port %d of %s is not free: %v", q, addr, err)
			}
			ln.Close()
		}
	}
}
