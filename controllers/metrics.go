package controllers

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

var (
	pushes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "comet_operator_pushes_total",
		Help: "Pushes of the live state into comet server pods, by result.",
	}, []string{"result"})
	pushDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "comet_operator_push_duration_seconds",
		Help:    "Time one push took (exec of ctl apply in a pod), by result.",
		Buckets: prometheus.ExponentialBuckets(0.01, 2, 12),
	}, []string{"result"})
)

func init() {
	metrics.Registry.MustRegister(pushes, pushDuration)
}

func observePush(err error, d time.Duration) {
	result := "success"
	if err != nil {
		result = "failure"
	}
	pushes.WithLabelValues(result).Inc()
	pushDuration.WithLabelValues(result).Observe(d.Seconds())
}
