package metrics

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/strata-snapshotter/strata/internal/testutil"
	"github.com/strata-snapshotter/strata/snapshotter"
)

// TestMetricsCountCalls: a real snapshotter served over gRPC with the
// interceptors; calls are counted by method, failures by code, a health
// probe's call not at all, and the store gauges read the index.
func TestMetricsCountCalls(t *testing.T) {
	testutil.RequiresRoot(t)
	ctx := context.Background()
	sn, err := snapshotter.New(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	m := New(sn, "v-test")

	socket := filepath.Join(testutil.ShortDir(t), "s.sock")
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(m.UnaryInterceptor), grpc.ChainStreamInterceptor(m.StreamInterceptor))
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	go srv.Serve(l)
	defer srv.Stop()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "strata")

	if _, err := client.Prepare(ctx, "a", ""); err != nil {
		t.Fatal(err)
	}
	if err := client.Commit(ctx, "base", "a"); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := client.Stat(ctx, "missing"); err == nil {
			t.Fatal("Stat of a missing key succeeded")
		}
	}
	if _, err := snapshotsapi.NewSnapshotsClient(conn).Stat(Probe(ctx), &snapshotsapi.StatSnapshotRequest{Key: "probe"}); err == nil {
		t.Fatal("the probe's Stat succeeded")
	}
	if err := client.Walk(ctx, func(context.Context, snapshots.Info) error { return nil }); err != nil {
		t.Fatal(err)
	}

	body := scrape(t, m, nil)
	for _, want := range []string{
		`strata_grpc_requests_total{method="Prepare"} 1`,
		`strata_grpc_requests_total{method="Stat"} 2`,
		`strata_grpc_requests_total{method="List"} 1`,
		`strata_grpc_errors_total{code="NotFound",method="Stat"} 2`,
		`strata_snapshots{kind="committed"} 1`,
		`strata_index_readable 1`,
		`strata_build_info{goversion="go`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}

	// /healthz answers with the check's verdict.
	if body := scrape(t, m, errors.New("index closed")); !strings.Contains(body, "unhealthy: index closed") {
		t.Errorf("healthz with a failing check: %q", body)
	}
}

// scrape reads /metrics, or with a health error /healthz, from m's handler.
func scrape(t *testing.T, m *Metrics, healthErr error) string {
	t.Helper()
	srv := httptest.NewServer(m.Handler(func(context.Context) error { return healthErr }))
	defer srv.Close()
	path := "/metrics"
	if healthErr != nil {
		path = "/healthz"
	}
	resp, err := srv.Client().Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
