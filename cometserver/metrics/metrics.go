// Package metrics defines the comet server's Prometheus metrics.
package metrics

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/cometop/comet-operator/cometserver/engine"
)

// Metrics are the counters the server's parts update. A nil *Metrics is
// valid and records nothing, which keeps library users and tests free of it.
type Metrics struct {
	Registry         *prometheus.Registry
	messagesWritten  prometheus.Counter
	messagesDelivery *prometheus.CounterVec
	replies          *prometheus.CounterVec
	commands         *prometheus.CounterVec
}

// Sources are the gauges read at scrape time.
type Sources struct {
	Channels        func() float64 // live channels
	Waiting         func() float64 // long polls waiting
	HistoryMessages func() float64 // messages kept in histories, in this process
	HistoryBytes    func() float64 // their payload bytes
	Broker          func() engine.Status
}

// New registers the server's metrics, plus Go and process metrics. A nil
// source reads as 0.
func New(src Sources) *Metrics {
	for _, f := range []*func() float64{&src.Channels, &src.Waiting, &src.HistoryMessages, &src.HistoryBytes} {
		if *f == nil {
			*f = func() float64 { return 0 }
		}
	}
	if src.Broker == nil {
		src.Broker = func() engine.Status { return engine.Status{} }
	}
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		messagesWritten: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "comet_messages_written_total",
			Help: "Messages accepted for writing to a channel.",
		}),
		messagesDelivery: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "comet_message_deliveries_total",
			Help: "Replies that carried a message, by result (delivered: flushed, failed: not written).",
		}, []string{"result"}),
		replies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "comet_replies_total",
			Help: "Replies to long-poll requests, by HTTP status code.",
		}, []string{"code"}),
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "comet_admin_commands_total",
			Help: "Admin commands received on the socket or the command pipe, by command and result.",
		}, []string{"command", "result"}),
	}
	m.Registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "comet_channels", Help: "Live channels.",
		}, src.Channels),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "comet_waiting_requests", Help: "Long-poll requests waiting now.",
		}, src.Waiting),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "comet_history_messages", Help: "Messages kept in channel histories in this process.",
		}, src.HistoryMessages),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "comet_history_bytes", Help: "Payload bytes of the messages kept in channel histories in this process.",
		}, src.HistoryBytes),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "comet_broker_ready", Help: "1 if the channel engine can serve (with Redis: connected, PUB/SUB probes back in time), else 0.",
		}, func() float64 {
			if src.Broker().Ready {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "comet_broker_rtt_seconds", Help: "The last round trip of a probe through the broker's PUB/SUB (0 for the in-memory engine).",
		}, func() float64 { return src.Broker().RTT.Seconds() }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "comet_broker_subscriptions", Help: "Channels this server is subscribed to in its engine.",
		}, func() float64 { return float64(src.Broker().Subscriptions) }),
		m.messagesWritten, m.messagesDelivery, m.replies, m.commands,
	)
	return m
}

// MessageWritten counts one write and how many replies carried it.
func (m *Metrics) MessageWritten(delivered, failed int) {
	if m == nil {
		return
	}
	m.messagesWritten.Inc()
	m.messagesDelivery.WithLabelValues("delivered").Add(float64(delivered))
	m.messagesDelivery.WithLabelValues("failed").Add(float64(failed))
}

// Reply counts one long-poll reply with the given status code.
func (m *Metrics) Reply(code int) {
	if m == nil {
		return
	}
	m.replies.WithLabelValues(strconv.Itoa(code)).Inc()
}

// Command counts one admin command. command is "invalid" for a line that
// did not parse.
func (m *Metrics) Command(command string, err error) {
	if m == nil {
		return
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.commands.WithLabelValues(command, result).Inc()
}
