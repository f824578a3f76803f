package admin

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/cometop/comet-operator/cometserver/contract"
	"github.com/cometop/comet-operator/cometserver/metrics"
)

// Target is what the commands steer.
type Target interface {
	Activate()
	Deactivate()
	SetTimeout(d time.Duration, kill bool) error
	SetHistory(size int, ttl time.Duration) error
	SetMaxVirtualChannels(limit *int) error
	Status() contract.Status
}

// Executor runs command lines against a Target.
type Executor struct {
	Target  Target
	Logger  *slog.Logger
	Metrics *metrics.Metrics
}

// Exec runs one line and returns the one-line answer: "ok", a status JSON
// line, or "error: <reason>". A line that is refused changes nothing.
func (e *Executor) Exec(line string, source string) string {
	cmd, err := Parse(line)
	if err != nil {
		e.Metrics.Command("invalid", err)
		e.Logger.Warn("admin command refused", "source", source, "line", truncate(line), "error", err)
		return "error: " + err.Error()
	}
	answer := "ok"
	switch cmd.Verb {
	case Activate:
		e.Target.Activate()
	case Deactivate:
		e.Target.Deactivate()
	case SetTimeout:
		err = e.Target.SetTimeout(cmd.Timeout, cmd.Kill)
	case SetHistory:
		err = e.Target.SetHistory(cmd.HistorySize, cmd.HistoryTTL)
	case SetMaxVirtualChannels:
		err = e.Target.SetMaxVirtualChannels(LimitPtr(cmd.MaxVirtualChannels))
	case Status:
		var b []byte
		b, err = json.Marshal(e.Target.Status())
		answer = string(b)
	}
	e.Metrics.Command(string(cmd.Verb), err)
	if err != nil {
		e.Logger.Warn("admin command failed", "source", source, "command", cmd.String(), "error", err)
		return "error: " + err.Error()
	}
	if cmd.Verb != Status {
		e.Logger.Info("admin command applied", "source", source, "command", cmd.String())
	}
	return answer
}

// Limits of one socket connection.
const (
	maxLineBytes       = 4096
	defaultIdleTimeout = time.Minute
)

// Socket is the admin Unix socket.
type Socket struct {
	// IdleTimeout closes a connection that sends no line for this long
	// (default a minute). Set it before Serve.
	IdleTimeout time.Duration

	ln   net.Listener
	exec *Executor
	wg   sync.WaitGroup
	mu   sync.Mutex
	conn map[net.Conn]struct{}
	// closed is set under mu by Close, so that no handler is added to wg
	// once Close has begun waiting for them.
	closed bool
}

// ListenSocket binds the admin socket at path with mode 0600. A stale socket
// file is replaced; a live one (another server answers there) or a file
// that is not a socket is an error.
func ListenSocket(path string, exec *Executor) (*Socket, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	// The umask leaves sockets without write permission for others, and
	// connecting needs it, so nobody else can connect before this chmod.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	return &Socket{ln: ln, exec: exec, conn: make(map[net.Conn]struct{})}, nil
}

func removeStale(path string) error {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("admin socket %s: %w", path, err)
	case fi.Mode().Type() != fs.ModeSocket:
		return fmt.Errorf("admin socket %s: a file that is not a socket is in the way", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("admin socket %s: another server is listening there", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("admin socket %s: removing stale socket: %w", path, err)
	}
	return nil
}

// Addr is the socket's path.
func (s *Socket) Addr() string { return s.ln.Addr().String() }

// Serve answers connections until Close.
func (s *Socket) Serve() error {
	for {
		c, err := s.ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("admin socket: %w", err)
		}
		s.mu.Lock()
		if s.closed { // accepted just as Close ran
			s.mu.Unlock()
			c.Close()
			return nil
		}
		s.conn[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.serveConn(c)
			s.mu.Lock()
			delete(s.conn, c)
			s.mu.Unlock()
		}()
	}
}

// Close stops listening, removes the socket file, ends open connections
// and waits for their handlers.
func (s *Socket) Close() error {
	err := s.ln.Close()
	s.mu.Lock()
	s.closed = true
	for c := range s.conn {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

func (s *Socket) serveConn(c net.Conn) {
	defer c.Close()
	idle := s.IdleTimeout
	if idle <= 0 {
		idle = defaultIdleTimeout
	}
	r := bufio.NewReaderSize(c, maxLineBytes)
	for {
		_ = c.SetReadDeadline(time.Now().Add(idle))
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			s.exec.Logger.Warn("admin command refused", "source", "socket", "error", "line too long")
			io.WriteString(c, fmt.Sprintf("error: line longer than %d bytes\n", maxLineBytes))
			return
		}
		if len(line) == 0 || (err != nil && !errors.Is(err, io.EOF)) {
			return // EOF, idle timeout or closed
		}
		answer := s.exec.Exec(trimEOL(line), "socket")
		_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, werr := io.WriteString(c, answer+"\n"); werr != nil || err != nil {
			return
		}
	}
}

func trimEOL(b []byte) string {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return string(b)
}

// Pipe is the optional command FIFO: it takes the same lines as the socket,
// without answers, as the Ocsigen command pipe did.
type Pipe struct {
	path string
	exec *Executor
	done chan struct{}

	mu     sync.Mutex
	f      *os.File // open for reading, while a writer has the FIFO open
	closed bool
}

// OpenPipe creates the FIFO at path with mode 0600 if absent, and checks
// that it can be read.
func OpenPipe(path string, exec *Executor) (*Pipe, error) {
	if err := mkfifo(path); err != nil {
		return nil, fmt.Errorf("command pipe %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0) // does not wait for a writer
	if err != nil {
		return nil, fmt.Errorf("command pipe: %w", err)
	}
	f.Close()
	return &Pipe{path: path, exec: exec, done: make(chan struct{})}, nil
}

// Serve runs the lines written to the pipe until Close. It reads one
// writer's session at a time: it opens the FIFO, which waits for a writer,
// and reads until every writer has closed it, so that a last line a writer
// left without its newline is dropped rather than joined to the next
// writer's first.
func (p *Pipe) Serve() {
	defer close(p.done)
	for {
		f, err := os.OpenFile(p.path, os.O_RDONLY, 0)
		if err != nil {
			p.exec.Logger.Error("command pipe: cannot open", "path", p.path, "error", err)
			return
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			f.Close()
			return
		}
		p.f = f
		p.mu.Unlock()
		p.readSession(f)
		f.Close()
		p.mu.Lock()
		p.f = nil
		closed := p.closed
		p.mu.Unlock()
		if closed {
			return
		}
	}
}

// readSession runs the lines read from f until its writers are gone.
func (p *Pipe) readSession(f *os.File) {
	r := bufio.NewReaderSize(f, maxLineBytes)
	for {
		line, err := r.ReadSlice('\n')
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			p.exec.Logger.Warn("admin command refused", "source", "pipe", "error", "line too long")
			for errors.Is(err, bufio.ErrBufferFull) { // skip the rest of it
				_, err = r.ReadSlice('\n')
			}
			if err != nil {
				return
			}
		case err != nil:
			if len(line) > 0 && errors.Is(err, io.EOF) {
				p.exec.Logger.Warn("admin command refused", "source", "pipe", "error", "a line without its newline when the writer left", "line", truncate(string(line)))
			}
			return
		default:
			p.exec.Exec(trimEOL(line), "pipe")
		}
	}
}

// Close stops reading and waits for Serve to return. The FIFO file stays,
// as an operator may have created it.
func (p *Pipe) Close() error {
	p.mu.Lock()
	p.closed = true
	if p.f != nil {
		p.f.Close() // ends a read under way
	}
	p.mu.Unlock()
	// Serve may be waiting in open for a writer, or about to: be one, for
	// a moment, until it has seen the close.
	for {
		if w, err := os.OpenFile(p.path, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			w.Close()
		}
		select {
		case <-p.done:
			return nil
		case <-time.After(10 * time.Millisecond):
		}
	}
}
