// Package server assembles the comet server: the client endpoint, the
// publisher API, the admin socket and command pipe, around one channel hub
// and one security state, and shuts them down in order.
package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/cometop/comet-operator/cometserver/admin"
	"github.com/cometop/comet-operator/cometserver/channels"
	"github.com/cometop/comet-operator/cometserver/config"
	"github.com/cometop/comet-operator/cometserver/contract"
	"github.com/cometop/comet-operator/cometserver/demo"
	"github.com/cometop/comet-operator/cometserver/engine"
	"github.com/cometop/comet-operator/cometserver/engine/memory"
	redisengine "github.com/cometop/comet-operator/cometserver/engine/redis"
	"github.com/cometop/comet-operator/cometserver/longpoll"
	"github.com/cometop/comet-operator/cometserver/metrics"
	"github.com/cometop/comet-operator/cometserver/publisher"
	"github.com/cometop/comet-operator/cometserver/security"
	"github.com/cometop/comet-operator/cometserver/webclient"
)

// Version is the server's version, set at link time with
// -ldflags "-X github.com/cometop/comet-operator/cometserver/server.Version=...".
var Version = "dev"

// Server is a comet server with its listeners bound.
type Server struct {
	cfg     config.Config
	log     *slog.Logger
	state   *security.State
	engine  engine.Engine
	hub     *channels.Hub
	poll    *longpoll.Handler
	started time.Time
	ready   atomic.Bool

	clientLn, publisherLn net.Listener
	client, publisher     *http.Server
	socket                *admin.Socket
	pipe                  *admin.Pipe
	demo                  *demo.Demo
}

// New binds every listener of cfg, so that a bad address or a busy socket
// fails here, before anything is served. On error nothing stays open.
func New(cfg config.Config, log *slog.Logger) (_ *Server, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var token []byte
	if cfg.PublisherTokenFile != "" {
		if token, err = publisher.ReadToken(cfg.PublisherTokenFile); err != nil {
			return nil, err
		}
	}
	s := &Server{
		cfg:     cfg,
		log:     log,
		state:   security.New(cfg.Activated, cfg.Timeout.Duration),
		started: time.Now(),
	}
	if s.engine, err = newEngine(cfg, log); err != nil {
		return nil, err
	}
	s.hub = channels.New(s.engine)
	defer func() {
		if err != nil {
			s.closeAll()
		}
	}()
	m := metrics.New(metrics.Sources{
		Channels: func() float64 { return float64(s.channels()) },
		Waiting:  func() float64 { return float64(s.poll.Waiting()) },
		HistoryMessages: func() float64 {
			n, _ := historyStats(s.engine)
			return float64(n)
		},
		HistoryBytes: func() float64 {
			_, b := historyStats(s.engine)
			return float64(b)
		},
		Broker: s.engine.Status,
	})
	s.poll = longpoll.New(s.hub, s.state, longpoll.Options{
		MaxBodyBytes: cfg.MaxBodyBytes,
		MaxIDs:       cfg.MaxIDs,
		MaxWaiting:   cfg.MaxWaiting,
		CORSOrigins:  cfg.CORSOrigins,
		// The same limits as the http.Server below, for the connections
		// the handler takes over from it.
		ReadHeaderTimeout: cfg.ReadHeaderTimeout.Duration,
		ReadTimeout:       cfg.ReadTimeout.Duration,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		IdleTimeout:       idleTimeout,
		Logger:            log,
		Metrics:           m,
	})
	mux := http.NewServeMux()
	mux.Handle(cfg.Path, s.poll)
	webclient.Register(mux)
	if cfg.Demo {
		if s.demo, err = demo.Start(s.hub, log); err != nil {
			return nil, fmt.Errorf("demo: %w", err)
		}
		s.demo.Register(mux)
	}
	s.client = s.httpServer(mux)
	s.publisher = s.httpServer(publisher.New(s.hub, publisher.Options{
		Token:           token,
		MaxMessageBytes: cfg.MaxMessageBytes,
		Metrics:         m,
		Ready:           s.isReady,
		Pprof:           cfg.Pprof,
		ReadTimeout:     cfg.ReadTimeout.Duration,
	}))

	if s.clientLn, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	// Waiting polls leave net/http for a connection of their own, which
	// goes back to it for any other request.
	s.clientLn = s.poll.Listener(s.clientLn)
	if s.publisherLn, err = net.Listen("tcp", cfg.PublisherListen); err != nil {
		return nil, fmt.Errorf("publisher_listen: %w", err)
	}
	exec := &admin.Executor{Target: s, Logger: log, Metrics: m}
	if s.socket, err = admin.ListenSocket(cfg.AdminSocket, exec); err != nil {
		return nil, err
	}
	if cfg.CommandPipe != "" {
		if s.pipe, err = admin.OpenPipe(cfg.CommandPipe, exec); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// idleTimeout is how long a kept-alive connection may sit between requests.
const idleTimeout = 2 * time.Minute

func (s *Server) httpServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           closeOnRefusal(h),
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout.Duration,
		MaxHeaderBytes:    s.cfg.MaxHeaderBytes,
		IdleTimeout:       idleTimeout,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		// No WriteTimeout: a long poll outlives any fixed one. The client
		// handler sets a write deadline on each reply instead.
	}
}

// ClientAddr is the address of the client endpoint.
func (s *Server) ClientAddr() string { return s.clientLn.Addr().String() }

// PublisherAddr is the address of the publisher API.
func (s *Server) PublisherAddr() string { return s.publisherLn.Addr().String() }

// Run serves until ctx ends, then drains: /readyz turns false, waiting
// clients get 503 so that they retry elsewhere, and Run returns once every
// connection is done or the grace period is over.
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, 3)
	var wg sync.WaitGroup
	serve := func(name string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	serve("client endpoint", func() error { return s.client.Serve(s.clientLn) })
	serve("publisher API", func() error { return s.publisher.Serve(s.publisherLn) })
	serve("admin socket", s.socket.Serve)
	if s.pipe != nil {
		wg.Add(1)
		go func() { defer wg.Done(); s.pipe.Serve() }()
	}
	s.ready.Store(true)
	snap := s.state.Snapshot()
	s.log.Info("comet server started", "version", Version,
		"listen", s.ClientAddr(), "path", s.cfg.Path, "publisher_listen", s.PublisherAddr(),
		"admin_socket", s.cfg.AdminSocket, "command_pipe", s.cfg.CommandPipe,
		"activated", snap.Activated, "timeout", snap.Timeout,
		"max_virtual_channels", s.cfg.MaxVirtualChannels.String(), "publisher_auth", s.cfg.PublisherTokenFile != "",
		"demo", s.cfg.Demo)

	var runErr error
	select {
	case <-ctx.Done():
		s.log.Info("shutting down", "grace", s.cfg.ShutdownGrace.Duration)
	case runErr = <-errc:
		s.log.Error("serving failed, shutting down", "error", runErr)
	}
	err := s.shutdown()
	wg.Wait()
	return errors.Join(runErr, err)
}

func (s *Server) shutdown() error {
	s.ready.Store(false)
	// Kept-alive connections would pin clients to this process, through a
	// Service's connection tracking too: close each after its reply.
	s.client.SetKeepAlivesEnabled(false)
	s.publisher.SetKeepAlivesEnabled(false)
	s.state.Drain()
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownGrace.Duration)
	defer cancel()
	// Clients that hold a connection past the grace period (a request
	// never finished, a reply never read) are cut: that is what the grace
	// period is for, and the stop is still a clean one.
	var cut []string
	if err := s.client.Shutdown(ctx); err != nil {
		cut = append(cut, "client endpoint")
		s.client.Close()
	}
	s.poll.Shutdown(ctx) // the connections it took over from s.client
	if err := s.publisher.Shutdown(ctx); err != nil {
		cut = append(cut, "publisher API")
		s.publisher.Close()
	}
	if len(cut) > 0 {
		s.log.Warn("shutdown grace period over: open connections cut", "servers", cut, "grace", s.cfg.ShutdownGrace.Duration)
	}
	s.closeAll()
	return nil
}

// closeOnRefusal closes the connection after every refusal (a status of
// 400 or more), within a second: after the reply net/http reads what is
// left of a body the handler did not read, and without a bound a client
// that never sends it would hold the connection forever.
func closeOnRefusal(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(&refusalCloser{ResponseWriter: w}, r)
	})
}

type refusalCloser struct{ http.ResponseWriter }

func (w *refusalCloser) WriteHeader(code int) {
	if code >= 400 {
		w.Header().Set("Connection", "close")
		_ = http.NewResponseController(w.ResponseWriter).SetReadDeadline(time.Now().Add(time.Second))
	}
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap gives http.ResponseController the writer underneath (Hijack,
// Flush, deadlines).
func (w *refusalCloser) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush is for handlers that look for http.Flusher rather than use a
// ResponseController.
func (w *refusalCloser) Flush() { _ = http.NewResponseController(w.ResponseWriter).Flush() }

// closeAll closes the admin endpoints and the hub. The HTTP listeners are
// closed by their servers, or here if they never served.
func (s *Server) closeAll() {
	for _, ln := range []net.Listener{s.clientLn, s.publisherLn} {
		if ln != nil {
			ln.Close()
		}
	}
	if s.socket != nil {
		s.socket.Close()
	}
	if s.pipe != nil {
		s.pipe.Close()
	}
	if s.demo != nil {
		s.demo.Stop()
	}
	s.engine.Stop()
}

// newEngine makes the engine cfg.Broker names.
func newEngine(cfg config.Config, log *slog.Logger) (engine.Engine, error) {
	limits := engine.Limits{
		MaxVirtualChannels: cfg.MaxVirtualChannels.Ptr(),
		IdleExpiry:         cfg.ChannelIdleExpiry.Duration,
		HistorySize:        cfg.HistorySize,
		HistoryTTL:         cfg.HistoryTTL.Duration,
	}
	if cfg.Broker != "redis" {
		return memory.New(limits), nil
	}
	opt, err := rueidis.ParseURL(cfg.RedisURL)
	if err != nil {
		return nil, fmt.Errorf("redis_url: %w", err)
	}
	if cfg.RedisPasswordFile != "" {
		b, err := os.ReadFile(cfg.RedisPasswordFile)
		if err != nil {
			return nil, fmt.Errorf("redis_password_file: %w", err)
		}
		if opt.Password = strings.TrimRight(string(b), "\r\n"); opt.Password == "" {
			return nil, fmt.Errorf("redis_password_file %s is empty", cfg.RedisPasswordFile)
		}
	}
	if cfg.RedisTLSCAFile != "" {
		pem, err := os.ReadFile(cfg.RedisTLSCAFile)
		if err != nil {
			return nil, fmt.Errorf("redis_tls_ca_file: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("redis_tls_ca_file %s: no PEM certificate in it", cfg.RedisTLSCAFile)
		}
		opt.TLSConfig.RootCAs = roots // ParseURL made TLSConfig for rediss://
	}
	opt.ClientName = "cometserver"
	return redisengine.New(redisengine.Options{Client: opt, Prefix: cfg.RedisPrefix, Limits: limits, Logger: log})
}

// historyStats is what the in-memory engine's histories hold; a shared
// engine's live in Redis, which reports them itself.
func historyStats(e engine.Engine) (messages, bytes int64) {
	if m, ok := e.(*memory.Engine); ok {
		return m.HistoryStats()
	}
	return 0, 0
}

// isReady is /readyz: serving, not draining, and the engine able to serve.
func (s *Server) isReady() bool { return s.ready.Load() && s.engine.Status().Ready }

// channels is the number of live channels (with a shared engine, the
// fleet's); -1 if the engine cannot tell now.
func (s *Server) channels() int {
	n, err := s.engine.Len(context.Background())
	if err != nil {
		return -1
	}
	return n
}

func (s *Server) SetHistory(size int, ttl time.Duration) error {
	s.engine.SetHistory(size, ttl)
	return nil
}

// SetMaxVirtualChannels changes the limit on live channels; with a
// shared engine, the fleet's.
func (s *Server) SetMaxVirtualChannels(limit *int) error {
	s.engine.SetMaxVirtualChannels(limit)
	return nil
}

// Activate, Deactivate, SetTimeout and Status make Server the admin.Target.

func (s *Server) Activate()   { s.state.Activate() }
func (s *Server) Deactivate() { s.state.Deactivate() }
func (s *Server) SetTimeout(d time.Duration, kill bool) error {
	return s.state.SetTimeout(d, kill)
}

func (s *Server) Status() contract.Status {
	snap := s.state.Snapshot()
	limits := s.engine.Limits()
	return contract.Status{
		HistorySize:        limits.HistorySize,
		HistoryTTL:         limits.HistoryTTL.Seconds(),
		HistoryTTLNs:       int64(limits.HistoryTTL),
		Activated:          snap.Activated,
		Timeout:            snap.Timeout.Seconds(),
		TimeoutNanoseconds: int64(snap.Timeout),
		Channels:           s.channels(),
		MaxVirtualChannels: limits.MaxVirtualChannels,
		Waiting:            s.poll.Waiting(),
		Broker:             brokerStatus(s.engine.Status()),
		Draining:           snap.Draining,
		Version:            Version,
		PID:                os.Getpid(),
		StartedAt:          s.started.UTC().Format(time.RFC3339),
	}
}

func brokerStatus(st engine.Status) contract.BrokerStatus {
	return contract.BrokerStatus{
		Name:          st.Broker,
		Ready:         st.Ready,
		LastError:     st.LastError,
		RTTSeconds:    st.RTT.Seconds(),
		Subscriptions: st.Subscriptions,
	}
}

// Hub is the server's channel hub, for in-process publishers.
func (s *Server) Hub() *channels.Hub { return s.hub }

// State is the server's security state, for in-process control.
func (s *Server) State() *security.State { return s.state }
