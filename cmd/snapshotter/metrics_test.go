package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"

	"github.com/strata-snapshotter/strata/internal/testutil"
	"github.com/strata-snapshotter/strata/metrics"
	"github.com/strata-snapshotter/strata/snapshotter"
)

func unixGet(t *testing.T, socket, path string) (int, string) {
	t.Helper()
	c := http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}}
	resp, err := c.Get("http://strata" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metric returns the value of the sample whose name and labels match.
func metric(t *testing.T, text, sample string) float64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(sample) + ` (\S+)$`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("no sample %s in:\n%s", sample, text)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestMetricsMove: the daemon's metrics count calls per method, failures per
// gRPC code, time them, and report the store; /healthz answers.
func TestMetricsMove(t *testing.T) {
	testutil.RequiresRoot(t)
	socket := filepath.Join(testutil.ShortDir(t), "metrics.sock")
	d := startDaemon(t, t.TempDir(), "--metrics-address", socket)
	c := d.client()
	ctx := context.Background()
	for _, k := range []string{"a", "b"} {
		if _, err := c.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Key: k}); err != nil {
			t.Fatal(err)
		}
	}
	c.Stat(ctx, &snapshotsapi.StatSnapshotRequest{Key: "missing"})

	code, text := unixGet(t, socket, "/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	for sample, want := range map[string]float64{
		`strata_grpc_requests_total{method="Prepare"}`:                 2,
		`strata_grpc_errors_total{code="NotFound",method="Stat"}`:      1,
		`strata_grpc_request_duration_seconds_count{method="Prepare"}`: 2,
		`strata_snapshots{kind="active"}`:                              2,
		`strata_snapshots{kind="committed"}`:                           0,
		`strata_index_readable`:                                        1,
	} {
		if got := metric(t, text, sample); got != want {
			t.Errorf("%s = %v, want %v", sample, got, want)
		}
	}
	if !strings.Contains(text, `strata_build_info{goversion="go`) {
		t.Error("no strata_build_info")
	}

	// They move.
	if _, err := c.Commit(ctx, &snapshotsapi.CommitSnapshotRequest{Key: "a", Name: "a-c"}); err != nil {
		t.Fatal(err)
	}
	_, text = unixGet(t, socket, "/metrics")
	for sample, want := range map[string]float64{
		`strata_grpc_requests_total{method="Commit"}`: 1,
		`strata_snapshots{kind="committed"}`:          1,
		`strata_snapshots{kind="active"}`:             1,
	} {
		if got := metric(t, text, sample); got != want {
			t.Errorf("after Commit: %s = %v, want %v", sample, got, want)
		}
	}
	if metric(t, text, `strata_stored_inodes`) < 1 {
		t.Error("stored inodes did not count the committed layer")
	}
	if code, body := unixGet(t, socket, "/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	// The health subcommand agrees.
	var out, stderr strings.Builder
	if code := run([]string{"health", "--metrics-address", socket}, &out, &stderr); code != 0 || out.String() != "ok\n" {
		t.Fatalf("health: exit %d, %q %q", code, out.String(), stderr.String())
	}
	// Probes are not traffic: a kubelet probing every few seconds must not
	// move the error rate an alert watches (the probe's Stat is NotFound).
	_, text = unixGet(t, socket, "/metrics")
	for sample, want := range map[string]float64{
		`strata_grpc_errors_total{code="NotFound",method="Stat"}`: 1,
		`strata_grpc_requests_total{method="Stat"}`:               1,
	} {
		if got := metric(t, text, sample); got != want {
			t.Errorf("after two health probes: %s = %v, want %v", sample, got, want)
		}
	}
	d.stop()
	stderr.Reset()
	if code := run([]string{"health", "--metrics-address", socket}, io.Discard, &stderr); code != 1 {
		t.Fatalf("health with the daemon stopped: exit %d, %q", code, stderr.String())
	}
}

// TestHealthFailsWithIndexClosed: once the index is closed, /healthz says so.
func TestHealthFailsWithIndexClosed(t *testing.T) {
	testutil.RequiresRoot(t)
	d := startDaemon(t, t.TempDir())
	sn, err := snapshotter.New(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	h := metrics.New(sn, "test").Handler(healthCheck(sn, d.address))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
	if rec.Code != 200 {
		t.Fatalf("healthy store: %d %s", rec.Code, rec.Body)
	}
	sn.Close()
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
	if rec.Code != 503 || !strings.Contains(rec.Body.String(), "index unreadable") {
		t.Fatalf("closed index: %d %q, want 503 naming the index", rec.Code, rec.Body)
	}
	// And when the socket does not serve.
	d.stop()
	sn2, err := snapshotter.New(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer sn2.Close()
	rec = httptest.NewRecorder()
	metrics.New(sn2, "test").Handler(healthCheck(sn2, d.address)).ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
	if rec.Code != 503 || !strings.Contains(rec.Body.String(), "snapshots socket") {
		t.Fatalf("socket down: %d %q, want 503 naming the socket", rec.Code, rec.Body)
	}
}

// TestSystemdNotify: with NOTIFY_SOCKET set, as systemd does for
// Type=notify, the daemon sends READY=1 once it serves and STOPPING=1 on
// SIGTERM.
func TestSystemdNotify(t *testing.T) {
	testutil.RequiresRoot(t)
	sock := filepath.Join(testutil.ShortDir(t), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	d := startDaemon(t, t.TempDir())
	buf := make([]byte, 256)
	n, err := conn.Read(buf)
	if err != nil || string(buf[:n]) != "READY=1" {
		t.Fatalf("first notification %q, %v; want READY=1", buf[:n], err)
	}
	// READY comes after the socket serves.
	if _, err := d.client().Stat(context.Background(), &snapshotsapi.StatSnapshotRequest{Key: "x"}); !strings.Contains(err.Error(), "not found") {
		t.Fatalf("not serving after READY: %v", err)
	}
	d.stop()
	n, err = conn.Read(buf)
	if err != nil || string(buf[:n]) != "STOPPING=1" {
		t.Fatalf("notification on SIGTERM %q, %v; want STOPPING=1", buf[:n], err)
	}
}
