// Package metrics exposes strata to Prometheus: per-method request counts,
// error counts by gRPC code and latency histograms (from gRPC interceptors),
// snapshot counts by kind, stored bytes and inodes, and build info; and
// answers health checks.
package metrics

import (
	"context"
	"net/http"
	"path"
	"runtime"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/strata-snapshotter/strata/snapshotter"
)

// StatsSource is what the store gauges read: the running snapshotter.
type StatsSource interface {
	Stats(ctx context.Context) (snapshotter.Stats, error)
}

// Metrics is strata's Prometheus registry.
type Metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	errors   *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

// New registers strata's metrics; src feeds the store gauges at each scrape.
func New(src StatsSource, version string) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "strata_grpc_requests_total", Help: "Snapshots API calls, by method.",
		}, []string{"method"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "strata_grpc_errors_total", Help: "Snapshots API calls that failed, by method and gRPC code.",
		}, []string{"method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "strata_grpc_request_duration_seconds", Help: "Snapshots API call latency, by method.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10), // 0.5ms to ~2 min
		}, []string{"method"}),
	}
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "strata_build_info", Help: "strata's version and the Go it was built with; always 1.",
	}, []string{"version", "goversion"})
	build.WithLabelValues(version, runtime.Version()).Set(1)
	m.reg.MustRegister(m.requests, m.errors, m.latency, build, storeCollector{src},
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// observe counts and times a call, unless it is a health probe's.
func (m *Metrics) observe(ctx context.Context, method string, start time.Time, err error) {
	if IsProbe(ctx) {
		return
	}
	method = path.Base(method) // "/containerd.services.snapshots.v1.Snapshots/Prepare" -> "Prepare"
	m.requests.WithLabelValues(method).Inc()
	m.latency.WithLabelValues(method).Observe(time.Since(start).Seconds())
	if err != nil {
		m.errors.WithLabelValues(method, status.Code(err).String()).Inc()
	}
}

// probeKey is the gRPC metadata key /healthz's own call carries. Probe
// calls are not counted: a kubelet probing every few seconds would
// otherwise add a NotFound (the probe's Stat of a key that cannot exist)
// to the error rate of every node.
const probeKey = "strata-health-probe"

// Probe marks ctx's outgoing call as a health probe.
func Probe(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, probeKey, "1")
}

// IsProbe says whether ctx is an incoming health probe's call.
func IsProbe(ctx context.Context) bool {
	return len(metadata.ValueFromIncomingContext(ctx, probeKey)) > 0
}

// UnaryInterceptor counts and times unary calls.
func (m *Metrics) UnaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	m.observe(ctx, info.FullMethod, start, err)
	return resp, err
}

// StreamInterceptor counts and times streaming calls (List).
func (m *Metrics) StreamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	start := time.Now()
	err := handler(srv, ss)
	m.observe(ss.Context(), info.FullMethod, start, err)
	return err
}

// Handler serves /metrics in Prometheus's text format, and /healthz, which
// answers 200 only when health returns nil.
func (m *Metrics) Handler(health func(context.Context) error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		if err := health(ctx); err != nil {
			http.Error(w, "unhealthy: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	return mux
}

// storeCollector reads the store's gauges from the index at each scrape.
type storeCollector struct{ src StatsSource }

var (
	snapshotsDesc = prometheus.NewDesc("strata_snapshots", "Snapshots, by kind.", []string{"kind"}, nil)
	bytesDesc     = prometheus.NewDesc("strata_stored_bytes", "Apparent bytes of the committed layers.", nil, nil)
	inodesDesc    = prometheus.NewDesc("strata_stored_inodes", "Inodes of the committed layers.", nil, nil)
	upDesc        = prometheus.NewDesc("strata_index_readable", "1 when the index could be read for this scrape.", nil, nil)
)

func (c storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- snapshotsDesc
	ch <- bytesDesc
	ch <- inodesDesc
	ch <- upDesc
}

func (c storeCollector) Collect(ch chan<- prometheus.Metric) {
	st, err := c.src.Stats(context.Background())
	if err != nil {
		ch <- prometheus.MustNewConstMetric(upDesc, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(upDesc, prometheus.GaugeValue, 1)
	for _, k := range []snapshots.Kind{snapshots.KindActive, snapshots.KindView, snapshots.KindCommitted} {
		ch <- prometheus.MustNewConstMetric(snapshotsDesc, prometheus.GaugeValue, float64(st.Snapshots[k]), strings.ToLower(k.String()))
	}
	ch <- prometheus.MustNewConstMetric(bytesDesc, prometheus.GaugeValue, float64(st.Bytes))
	ch <- prometheus.MustNewConstMetric(inodesDesc, prometheus.GaugeValue, float64(st.Inodes))
}
