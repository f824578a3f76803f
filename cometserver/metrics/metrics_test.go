package metrics

import (
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Every counter moves by what it is told, gauges are read at scrape time,
// and a nil *Metrics records nothing without failing.
func TestMetrics(t *testing.T) {
	channels, waiting := 3.0, 5.0
	m := New(Sources{Channels: func() float64 { return channels }, Waiting: func() float64 { return waiting },
		HistoryMessages: func() float64 { return 7 }, HistoryBytes: func() float64 { return 70 }})
	m.MessageWritten(2, 1)
	m.MessageWritten(0, 0)
	m.Reply(200)
	m.Reply(200)
	m.Reply(503)
	m.Command("activate", nil)
	m.Command("set_timeout", errors.New("refused"))
	channels = 4
	want := `
# HELP comet_admin_commands_total Admin commands received on the socket or the command pipe, by command and result.
# TYPE comet_admin_commands_total counter
comet_admin_commands_total{command="activate",result="ok"} 1
comet_admin_commands_total{command="set_timeout",result="error"} 1
# HELP comet_channels Live channels.
# TYPE comet_channels gauge
comet_channels 4
# HELP comet_history_bytes Payload bytes of the messages kept in channel histories in this process.
# TYPE comet_history_bytes gauge
comet_history_bytes 70
# HELP comet_history_messages Messages kept in channel histories in this process.
# TYPE comet_history_messages gauge
comet_history_messages 7
# HELP comet_message_deliveries_total Replies that carried a message, by result (delivered: flushed, failed: not written).
# TYPE comet_message_deliveries_total counter
comet_message_deliveries_total{result="delivered"} 2
comet_message_deliveries_total{result="failed"} 1
# HELP comet_messages_written_total Messages accepted for writing to a channel.
# TYPE comet_messages_written_total counter
comet_messages_written_total 2
# HELP comet_replies_total Replies to long-poll requests, by HTTP status code.
# TYPE comet_replies_total counter
comet_replies_total{code="200"} 2
comet_replies_total{code="503"} 1
# HELP comet_waiting_requests Long-poll requests waiting now.
# TYPE comet_waiting_requests gauge
comet_waiting_requests 5
`
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want),
		"comet_admin_commands_total", "comet_channels", "comet_message_deliveries_total", "comet_history_bytes", "comet_history_messages",
		"comet_messages_written_total", "comet_replies_total", "comet_waiting_requests"); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(m.Registry, "go_goroutines", "process_open_fds"); err != nil || n != 2 {
		t.Fatalf("the Go and process collectors: %d series, %v", n, err)
	}

	// A source not given reads as 0.
	if err := testutil.GatherAndCompare(New(Sources{}).Registry, strings.NewReader(`
# HELP comet_history_messages Messages kept in channel histories in this process.
# TYPE comet_history_messages gauge
comet_history_messages 0
`), "comet_history_messages"); err != nil {
		t.Fatal(err)
	}

	var none *Metrics
	none.MessageWritten(1, 1)
	none.Reply(200)
	none.Command("activate", nil)
}
