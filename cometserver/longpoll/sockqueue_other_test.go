//go:build !linux

package longpoll

import (
	"net"
	"testing"
)

const unreadQueue, unsentQueue = 0, 1

// socketQueue skips the test: the queues' sizes are read with Linux's
// ioctls, as the park loop that these tests watch is Linux's epoll.
func socketQueue(t testing.TB, _ *net.TCPConn, _ uint) int {
	t.Helper()
	t.Skip("socket queue sizes are read on Linux only")
	return -1
}
