package longpoll

import (
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// The socket queues the tests watch: bytes received and not yet read,
// bytes sent and not yet acknowledged.
const (
	unreadQueue = unix.SIOCINQ
	unsentQueue = unix.SIOCOUTQ
)

// socketQueue is the size of one of conn's queues, -1 if it cannot be read.
func socketQueue(t testing.TB, conn *net.TCPConn, queue uint) int {
	t.Helper()
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	n := -1
	raw.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), queue) })
	return n
}
