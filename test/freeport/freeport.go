// Package freeport hands out loopback ports for the servers that tests and
// the benchmark start as processes (redis-server, nginx, the comet
// server), which must be told their port before they bind it.
//
// A port the kernel picks for ":0" is in its ephemeral range: released
// before the process binds it, it can be taken meanwhile as the local port
// of any connection on the machine (seen in CI: "address already in use"),
// and so can the port of a Redis stopped for a restart. Ports here come
// from below that range, where only an explicit bind takes one, are free
// when handed out, and are never handed out twice by one process.
package freeport

import (
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

const first = 10000 // the lowest port handed out

var (
	mu        sync.Mutex
	handedOut = map[int]bool{}
)

// Addr returns "127.0.0.1:port" for a free port p below the ephemeral
// range such that p+off is free and below it too for each offset given (a
// Redis Cluster node's bus port is p+10000); all are reserved here.
func Addr(offsets ...int) (string, error) {
	limit := EphemeralLow()
	for _, off := range offsets {
		limit -= off
	}
	if limit <= first {
		return "", errors.New("freeport: no room below the ephemeral range")
	}
	mu.Lock()
	defer mu.Unlock()
	for range 10000 {
		p := first + rand.IntN(limit-first)
		ports := []int{p}
		for _, off := range offsets {
			ports = append(ports, p+off)
		}
		if free(ports) {
			for _, q := range ports {
				handedOut[q] = true
			}
			return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)), nil
		}
	}
	return "", errors.New("freeport: no free port below the ephemeral range")
}

// free reports whether none of ports was handed out and each can be bound
// now. mu is held.
func free(ports []int) bool {
	for _, q := range ports {
		if handedOut[q] {
			return false
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(q)))
		if err != nil {
			return false
		}
		ln.Close()
	}
	return true
}

// EphemeralLow is the first port of the kernel's ephemeral range, or 32768
// if the kernel does not say (or starts it too low to leave room below).
func EphemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 32768
	}
	low, err := strconv.Atoi(f[0])
	if err != nil || low <= 2*first {
		return 32768
	}
	return low
}
