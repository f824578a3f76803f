// Command cometserver is the comet push server (serve) and its admin
// client (ctl).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/cometop/comet-operator/cometserver/config"
	"github.com/cometop/comet-operator/cometserver/ctl"
	"github.com/cometop/comet-operator/cometserver/server"
)

const usage = `usage: cometserver serve [flags]   run the server (see --help)
       cometserver ctl COMMAND ...   steer a running server through its admin socket
       cometserver version           print the version
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		return serve(args[1:], stdout, stderr)
	case "ctl":
		return ctl.Main(args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, server.Version)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "unknown subcommand %q\n%s", args[0], usage)
		return 2
	}
}

func serve(args []string, stdout, stderr io.Writer) int {
	cfg, err := config.Load(args, os.Getenv)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, "usage: cometserver serve [flags]\n\nEvery flag is also a config file key (--max-body-bytes: max_body_bytes)\nand an environment variable (COMET_MAX_BODY_BYTES).\n\n")
		config.PrintFlags(stdout)
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "cometserver: %v\n", err)
		return 2
	}
	log := newLogger(cfg, stderr)
	logFileLimit(log)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	s, err := server.New(cfg, log)
	if err != nil {
		log.Error("cannot start", "error", err)
		return 1
	}
	if err := s.Run(ctx); err != nil {
		log.Error("stopped with an error", "error", err)
		return 1
	}
	log.Info("stopped")
	return 0
}

func newLogger(cfg config.Config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel)) // validated by config
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// logFileLimit logs the open-file limit: each waiting client holds one
// descriptor, so it bounds the clients this process can hold.
func logFileLimit(log *slog.Logger) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		log.Warn("cannot read the open-file limit", "error", err)
		return
	}
	log.Info("open-file limit bounds the clients this process can hold", "soft", lim.Cur, "hard", lim.Max)
}
