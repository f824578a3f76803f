// Command losswatch shows, live, that a comet fleet loses nothing: it
// writes numbered messages to a channel through the publisher API at a
// steady rate, follows the channel with resuming clients through the
// client endpoint (a Service spreads them over the pods), and prints every
// second what was acknowledged and what each client is missing or got
// twice. Roll, drain or scale the fleet meanwhile (make demo says how).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/cometop/comet-operator/test/losscount"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "losswatch:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("losswatch", flag.ContinueOnError)
	client := fs.String("client", "", "the client endpoint, such as http://10.252.0.20:8080/comet")
	publisher := fs.String("publisher", "", "the publisher API, such as http://10.252.0.21:8081")
	token := fs.String("token", "", "the publisher's bearer token")
	channel := fs.String("channel", "watch", "the channel to write and follow (made if missing)")
	rate := fs.Int("rate", 50, "messages a second, 1 to 1000")
	clients := fs.Int("clients", 4, "resuming clients, 1 to 100")
	duration := fs.Duration("duration", 0, "stop after this long (0: at Ctrl-C)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case *client == "" || *publisher == "":
		return errors.New("--client and --publisher are required")
	case *rate < 1 || *rate > 1000:
		return fmt.Errorf("--rate must be 1 to 1000, got %d", *rate)
	case *clients < 1 || *clients > 100:
		return fmt.Errorf("--clients must be 1 to 100, got %d", *clients)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if *duration > 0 {
		ctx, stop = context.WithTimeout(ctx, *duration)
		defer stop()
	}
	hc := &http.Client{Timeout: 5 * time.Second}
	post := func(path, body string) (int, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, *publisher+path, strings.NewReader(body))
		if err != nil {
			return 0, err
		}
		req.Header.Set("Authorization", "Bearer "+*token)
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	if code, err := post("/v1/channels", fmt.Sprintf(`{"name":%q}`, *channel)); err != nil || code != 201 && code != 409 {
		return fmt.Errorf("making channel %s: %d %v", *channel, code, err)
	}

	subs, polls := losscount.Start(ctx, *clients, []string{*channel}, func(int) string { return *client })
	pub := &losscount.Publisher{Channel: *channel, Post: func(ctx context.Context, channel, msg string) (int, error) {
		return post("/v1/channels/"+channel+"/messages", msg)
	}}
	go pub.Run(ctx, time.Second/time.Duration(*rate))

	report := func() {
		// A write acknowledged in the last second may not have reached a
		// client yet: count those older than that.
		acked := pub.Acked()
		settled := acked[:max(0, len(acked)-*rate)]
		n, f := len(acked), pub.Refused()
		var parts []string
		for i, s := range subs {
			parts = append(parts, fmt.Sprintf("client %d: %d lost %d twice %d gaps", i, len(s.Missing(settled...)), len(s.Duplicates()), s.Gaps()))
		}
		fmt.Fprintf(out, "%s acked %d (%d refused or unanswered) | %s\n", time.Now().Format("15:04:05"), n, f, strings.Join(parts, " | "))
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			polls.Wait()
			report()
			return nil
		case <-tick.C:
			report()
		}
	}
}
