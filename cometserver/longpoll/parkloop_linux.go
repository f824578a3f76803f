package longpoll

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// parkLoop watches the sockets of parked polls with an epoll set of its
// own, so that a waiting poll holds no goroutine: one goroutine here
// learns of every hang-up (or byte sent ahead) and wakes that connection.
// Go's runtime poller keeps its own registration of the same sockets; it
// is not asked to wait on them while they are parked here. The loop's
// goroutine itself waits in Go's poller, on the epoll set's own file
// descriptor (readable when a socket in it has news): no thread blocks in
// epoll_wait, and the runtime does not hand its processor over at every
// wait as it does for a blocking system call.
//
// A socket is added once, edge-triggered, at its first park, and stays
// until it closes or goes back to net/http: changing the set at every
// park cost about 5 µs a system call here. The loop records each edge on
// the connection (parked.edge), so that a connection parks only when
// nothing came since its last read emptied the socket; otherwise it reads
// on. Events carry an identifier, not the file descriptor, so that a
// number reused by a new connection never reaches an old one.
type parkLoop struct {
	epfd  int
	file  *os.File // epfd, waited on through Go's poller
	mu    sync.Mutex
	next  int32
	conns map[int32]*parked // by identifier, from first park to forget
}

// theParkLoop is shared by every handler of the process, as Go's own
// poller is; it starts on first use and lives as long as the process.
var theParkLoop = sync.OnceValue(func() *parkLoop {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil // then polls wait on goroutines, as everywhere but Linux
	}
	if err := unix.SetNonblock(fd, true); err != nil { // so that os.NewFile gives it to Go's poller
		unix.Close(fd)
		return nil
	}
	l := &parkLoop{epfd: fd, file: os.NewFile(uintptr(fd), "comet-park-loop"), conns: make(map[int32]*parked)}
	raw, err := l.file.SyscallConn()
	if err != nil {
		l.file.Close()
		return nil
	}
	go l.run(raw)
	return l
})

// watch adds c's socket fd to the set, once: from then on every edge
// (data, a hang-up) reaches c.onEdge. Adding reports what is already
// there as an edge too.
func (l *parkLoop) watch(fd int, c *parked) error {
	if c.loopID != 0 {
		return nil
	}
	l.mu.Lock()
	for l.next++; l.next == 0 || l.conns[l.next] != nil; l.next++ {
	}
	c.loopID = l.next
	l.conns[c.loopID] = c
	l.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET, Fd: c.loopID}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		l.mu.Lock()
		delete(l.conns, c.loopID)
		l.mu.Unlock()
		c.loopID = 0
		return fmt.Errorf("epoll: %w", err)
	}
	return nil
}

// forget stops watching c, before its socket goes back to net/http
// (fd >= 0: deleted from the set) or once it is closed (fd < 0: closing
// removed it).
func (l *parkLoop) forget(c *parked, fd int) {
	if c.loopID == 0 {
		return
	}
	if fd >= 0 {
		_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	}
	l.mu.Lock()
	delete(l.conns, c.loopID)
	l.mu.Unlock()
	c.loopID = 0
}

func (l *parkLoop) run(raw syscall.RawConn) {
	events := make([]unix.EpollEvent, 256)
	type news struct {
		c   *parked
		hup bool
	}
	var woken []news
	var ready []*parked
	for {
		// Collect what is ready without waiting; with nothing, wait in
		// Go's poller for the set to become readable.
		var n int
		err := raw.Read(func(uintptr) bool {
			var werr error
			n, werr = unix.EpollWait(l.epfd, events, 0)
			if werr != nil {
				if !errors.Is(werr, unix.EINTR) {
					panic(fmt.Sprintf("longpoll: epoll_wait: %v", werr)) // nothing could wake a parked poll again
				}
				n = 0
			}
			return n > 0
		})
		if err != nil {
			panic(fmt.Sprintf("longpoll: waiting on the park loop: %v", err))
		}
		woken = woken[:0]
		l.mu.Lock()
		for _, ev := range events[:n] {
			if c := l.conns[ev.Fd]; c != nil {
				woken = append(woken, news{c, ev.Events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0})
			}
		}
		l.mu.Unlock()
		ready = ready[:0]
		for _, n := range woken { // outside l.mu: park holds c.mu while it adds
			if n.c.onEdge(n.hup) {
				ready = append(ready, n.c)
			}
		}
		resumeReady(ready)
	}
}

// takeByte reads, without waiting, what made a parked connection
// readable: a byte sent ahead, kept for the next request, or the end of
// the connection. It reports false if the client left.
func (c *parked) takeByte() bool {
	c.mu.Lock()
	c.edge = false
	c.mu.Unlock()
	n, err, cerr := rawCall(c.raw, false, c.one[:])
	if cerr != nil {
		return false
	}
	switch {
	case n > 0:
		c.pending = append(c.pending, c.one[0])
		c.sentAhead, c.drained = true, false
		return true
	case err == unix.EAGAIN: // nothing after all
		c.drained = true
		return true
	case err == unix.EINTR:
		return true
	}
	return false
}

// writeNow writes what the socket takes of b without waiting:
// errWouldBlock if it takes nothing. Through Control, as readNow.
func (c *parked) writeNow(b []byte) (int, error) {
	n, err, cerr := rawCall(c.raw, true, b)
	if cerr != nil {
		return 0, cerr
	}
	switch {
	case err == unix.EAGAIN:
		return 0, errWouldBlock
	case err != nil:
		return 0, &net.OpError{Op: "write", Net: "tcp", Source: c.conn.LocalAddr(), Addr: c.conn.RemoteAddr(), Err: os.NewSyscallError("write", err)}
	}
	return n, nil
}

// readNow reads what the socket holds without waiting: errWouldBlock if
// it holds nothing. Through Control, not RawConn.Read: a read deadline
// left from an earlier wait, passed or not, must not decide it.
func (c *parked) readNow(b []byte) (int, error) {
	n, err, cerr := rawCall(c.raw, false, b)
	if cerr != nil {
		return 0, cerr
	}
	switch {
	case n > 0:
		return n, nil
	case err == unix.EAGAIN || err == unix.EINTR:
		return 0, errWouldBlock
	case err != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.conn.LocalAddr(), Addr: c.conn.RemoteAddr(), Err: os.NewSyscallError("read", err)}
	}
	return 0, io.EOF
}

// rawIO makes a read or write that does not wait, through
// RawConn.Control, with functions bound once (rawIOs): a closure that
// captures its results escapes to the heap, and those cost about four
// allocations per delivery. Pooled rather than kept per connection, whose
// size class a waiting poll pays for.
type rawIO struct {
	b           []byte
	n           int
	err         error
	read, write func(fd uintptr)
}

var rawIOs = sync.Pool{New: func() any {
	s := new(rawIO)
	s.read, s.write = s.readFD, s.writeFD
	return s
}}

func (s *rawIO) readFD(fd uintptr) { s.n, s.err = unix.Read(int(fd), s.b) }

func (s *rawIO) writeFD(fd uintptr) {
	for {
		if s.n, s.err = unix.Write(int(fd), s.b); s.err != unix.EINTR {
			return
		}
	}
}

// rawCall makes one read (write false) or write of b on raw: the system
// call's count and error, and Control's (the connection closed, say).
func rawCall(raw syscall.RawConn, write bool, b []byte) (n int, err, ctlErr error) {
	s := rawIOs.Get().(*rawIO)
	s.b = b
	if write {
		ctlErr = raw.Control(s.write)
	} else {
		ctlErr = raw.Control(s.read)
	}
	n, err = s.n, s.err
	s.b, s.n, s.err = nil, 0, nil // b is the caller's, often pooled
	rawIOs.Put(s)
	return n, err, ctlErr
}
