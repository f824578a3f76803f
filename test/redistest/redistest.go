// Package redistest starts real redis-server processes (Debian's, from
// hack/install-redis.sh) for tests: a standalone server or a Redis
// Cluster of masters, on loopback ports, stopped by PID when the test
// ends. No fake: the Redis engine's integration tests run against these.
package redistest

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cometop/comet-operator/test/freeport"
)

// Server is one redis-server process.
type Server struct {
	t    testing.TB
	Addr string // host:port on loopback
	dir  string
	args []string
	cmd  *exec.Cmd
	done chan struct{}

	roots  *x509.CertPool // TLS only: what trusts its certificate
	CAFile string         // TLS only: that CA, as PEM
}

// Start runs a standalone redis-server on a free loopback port, without
// persistence and with the extra arguments given (such as "--requirepass",
// "pw"), and stops it when the test ends.
func Start(t testing.TB, extra ...string) *Server {
	t.Helper()
	s := &Server{t: t, dir: t.TempDir()}
	s.Addr = freeAddr(t)
	_, port, _ := net.SplitHostPort(s.Addr)
	s.args = append([]string{"--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--daemonize", "no", "--dir", s.dir}, extra...)
	s.start()
	t.Cleanup(s.Stop)
	return s
}

// StartTLS runs a standalone redis-server that speaks only TLS, with a
// certificate for 127.0.0.1 from a CA made for the test (in CAFile).
func StartTLS(t testing.TB) *Server {
	t.Helper()
	s := &Server{t: t, dir: t.TempDir()}
	s.Addr = freeAddr(t)
	_, port, _ := net.SplitHostPort(s.Addr)
	cert, key := filepath.Join(s.dir, "tls.crt"), filepath.Join(s.dir, "tls.key")
	s.CAFile = filepath.Join(s.dir, "ca.crt")
	s.roots = writeCerts(t, s.CAFile, cert, key)
	s.args = []string{"--port", "0", "--tls-port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--daemonize", "no", "--dir", s.dir, "--tls-cert-file", cert, "--tls-key-file", key,
		"--tls-ca-cert-file", s.CAFile, "--tls-auth-clients", "no"}
	s.start()
	t.Cleanup(s.Stop)
	return s
}

// writeCerts makes a CA and a certificate it signs for 127.0.0.1, writes
// them as PEM, and returns a pool that trusts the CA.
func writeCerts(t testing.TB, caFile, certFile, keyFile string) *x509.CertPool {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "redistest CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for file, block := range map[string]*pem.Block{
		caFile: {Type: "CERTIFICATE", Bytes: caDER}, certFile: {Type: "CERTIFICATE", Bytes: der},
		keyFile: {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pool
}

func (s *Server) start() {
	s.t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		s.t.Fatalf("redis-server is missing (hack/install-redis.sh installs it): %v", err)
	}
	s.cmd = exec.Command(bin, s.args...)
	s.cmd.Dir = s.dir
	log, err := os.Create(filepath.Join(s.dir, "redis.log"))
	if err != nil {
		s.t.Fatal(err)
	}
	s.cmd.Stdout, s.cmd.Stderr = log, log
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("starting redis-server: %v", err)
	}
	s.done = make(chan struct{})
	go func() { s.cmd.Wait(); log.Close(); close(s.done) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ping := Do
		if s.roots != nil {
			ping = func(addr string, args ...string) (string, error) { return DoTLS(addr, s.roots, args...) }
		}
		reply, err := ping(s.Addr, "PING")
		if err == nil && reply == "PONG" || err != nil && strings.Contains(err.Error(), "NOAUTH") {
			return // up (NOAUTH: up, with a password)
		}
		select {
		case <-s.done:
			s.t.Fatalf("redis-server on %s exited at start: %s", s.Addr, s.Log())
		default:
		}
		if time.Now().After(deadline) {
			s.Stop()
			s.t.Fatalf("redis-server on %s did not answer PING within 10s: %s", s.Addr, s.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// PID is the server's process id.
func (s *Server) PID() int { return s.cmd.Process.Pid }

// Log is what the server wrote.
func (s *Server) Log() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
	return string(b)
}

// Stop ends the server by its PID: SIGTERM, then SIGKILL after 5 seconds.
// Stopping a stopped server does nothing.
func (s *Server) Stop() {
	select {
	case <-s.done:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
}

// Restart stops the server and starts it again on the same port. Without
// persistence it comes back empty, as a Redis that lost its data does.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	os.Remove(filepath.Join(s.dir, "dump.rdb"))
	s.start()
}

// RestartKeepingData stops the server with SHUTDOWN SAVE (every write it
// acknowledged is saved), waits down for the given time, and starts it
// again with that data, as a Redis with persistence comes back.
func (s *Server) RestartKeepingData(down time.Duration) {
	s.t.Helper()
	s.Do("SHUTDOWN", "SAVE") // no reply: the connection closes
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		s.t.Fatalf("redis-server on %s did not exit on SHUTDOWN SAVE: %s", s.Addr, s.Log())
	}
	time.Sleep(down)
	s.start()
}

// RestartLosingWrites saves the data set, runs writes, then kills the
// server and starts it from the save: the writes are gone while the keys
// saved before remain, as after a failover to a replica that lagged or a
// restart from an older snapshot.
func (s *Server) RestartLosingWrites(writes func()) {
	s.t.Helper()
	if _, err := s.Do("SAVE"); err != nil {
		s.t.Fatalf("SAVE: %v", err)
	}
	writes()
	s.cmd.Process.Kill()
	<-s.done
	s.start()
}

// Pause stops the process (SIGSTOP) without closing its connections, as
// a hung Redis; Resume continues it.
func (s *Server) Pause()  { s.cmd.Process.Signal(syscall.SIGSTOP) }
func (s *Server) Resume() { s.cmd.Process.Signal(syscall.SIGCONT) }

// Cluster is a Redis Cluster of masters, each a Server.
type Cluster struct {
	Nodes []*Server
}

// StartCluster runs n masters (at least 3) with cluster mode on, joins
// them with redis-cli --cluster create, and waits until the cluster says
// it is ok.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	if n < 3 {
		t.Fatalf("a Redis Cluster needs at least 3 masters, not %d", n)
	}
	c := &Cluster{}
	var addrs []string
	for range n {
		s := &Server{t: t, dir: t.TempDir()}
		s.Addr = freeClusterAddr(t)
		_, port, _ := net.SplitHostPort(s.Addr)
		s.args = []string{"--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
			"--daemonize", "no", "--dir", s.dir, "--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"}
		s.start()
		t.Cleanup(s.Stop)
		c.Nodes = append(c.Nodes, s)
		addrs = append(addrs, s.Addr)
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Fatalf("redis-cli is missing (hack/install-redis.sh installs it): %v", err)
	}
	out, err := exec.Command(cli, append(append([]string{"--cluster", "create"}, addrs...), "--cluster-yes")...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok := true
		for _, s := range c.Nodes {
			info, err := Do(s.Addr, "CLUSTER", "INFO")
			ok = ok && err == nil && strings.Contains(info, "cluster_state:ok")
		}
		if ok {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("the cluster on %v is not ok after 30s", addrs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Addrs are the cluster's nodes.
func (c *Cluster) Addrs() []string {
	var out []string
	for _, s := range c.Nodes {
		out = append(out, s.Addr)
	}
	return out
}

// Do sends one command to the server, authenticated with the
// --requirepass it was started with, if any.
func (s *Server) Do(args ...string) (string, error) {
	password := ""
	for i, a := range s.args {
		if a == "--requirepass" && i+1 < len(s.args) {
			password = s.args[i+1]
		}
	}
	if password == "" {
		return Do(s.Addr, args...)
	}
	conn, err := net.DialTimeout("tcp", s.Addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	if _, err := do(nopCloser{conn}, "AUTH", password); err != nil {
		return "", err
	}
	return do(conn, args...)
}

// nopCloser keeps a connection open across do's close.
type nopCloser struct{ net.Conn }

func (nopCloser) Close() error { return nil }

// Do sends one command to addr and returns its reply as text: a simple
// string, an integer, or a bulk string; an error reply is an error. It is
// for the harness and for tests that look at Redis directly, not a client.
func Do(addr string, args ...string) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	return do(conn, args...)
}

// DoTLS is Do over TLS, trusting the given roots.
func DoTLS(addr string, roots *x509.CertPool, args ...string) (string, error) {
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 2 * time.Second}, Config: &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	return do(conn, args...)
}

func do(conn net.Conn, args ...string) (string, error) {
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := conn.Write([]byte(b.String())); err != nil {
		return "", err
	}
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return "", fmt.Errorf("an empty reply")
	}
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '-':
		return "", fmt.Errorf("redis: %s", line[1:])
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < -1 {
			return "", fmt.Errorf("a malformed bulk length %q", line)
		}
		if n == -1 {
			return "", nil // nil bulk
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
	return "", fmt.Errorf("a reply of a kind this helper does not read: %q", line)
}

// freeAddr is a port for a redis-server (see package freeport).
func freeAddr(t testing.TB) string {
	t.Helper()
	addr, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// freeClusterAddr is a free port whose cluster bus port (10,000 above it)
// is free too.
func freeClusterAddr(t testing.TB) string {
	t.Helper()
	addr, err := freeport.Addr(10000)
	if err != nil {
		t.Fatal(err)
	}
	return addr
}
