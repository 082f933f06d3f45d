package api

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics belong to one Server instance, registered on its own registry.
type metrics struct {
	httpRequests *prometheus.CounterVec
	httpDuration *prometheus.HistogramVec
	applyLatency *prometheus.HistogramVec
	forwarded    prometheus.Counter
}

// kicksHelp describes allsource_raft_election_kicks_total, one series per
// cause (cluster/failover.go).
const kicksHelp = "Elections this server started early, by cause: its leader silent for the heartbeat timeout, or a candidate asking for its vote while it was."

func newMetrics(reg *prometheus.Registry, node Node) *metrics {
	m := &metrics{
		httpRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "allsource_http_requests_total", Help: "HTTP requests by method, route and status code.",
		}, []string{"method", "route", "code"}),
		httpDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "allsource_http_request_duration_seconds", Help: "HTTP request latency by route.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 14),
		}, []string{"route"}),
		applyLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "allsource_raft_apply_duration_seconds", Help: "Time from proposing a command to its application.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}, []string{"command"}),
		forwarded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "allsource_http_forwarded_total", Help: "Requests forwarded to the leader.",
		}),
	}
	reg.MustRegister(m.httpRequests, m.httpDuration, m.applyLatency, m.forwarded,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "allsource_raft_applied_index", Help: "Last applied raft index."},
			func() float64 { return float64(node.AppliedIndex()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "allsource_raft_commit_index", Help: "Raft commit index."},
			func() float64 { return float64(node.CommitIndex()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "allsource_raft_term", Help: "Current raft term."},
			func() float64 { return float64(node.Term()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "allsource_raft_election_kicks_total",
			Help:        kicksHelp,
			ConstLabels: prometheus.Labels{"cause": "silence"}},
			func() float64 { s, _ := node.ElectionKicks(); return float64(s) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "allsource_raft_election_kicks_total",
			Help:        kicksHelp,
			ConstLabels: prometheus.Labels{"cause": "vote_request"}},
			func() float64 { _, v := node.ElectionKicks(); return float64(v) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "allsource_raft_is_leader", Help: "1 on the leader, else 0."},
			func() float64 {
				if node.IsLeader() {
					return 1
				}
				return 0
			}),
	)
	return m
}

func (s *Server) handleMetrics(w http.ResponseWriter, r *http.Request) {
	if !s.cfg.PublicMetrics {
		if _, err := s.authenticate(r); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}).ServeHTTP(w, r)
}
