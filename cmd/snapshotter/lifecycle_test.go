package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"google.golang.org/grpc"

	"github.com/strata-snapshotter/strata/internal/testutil"
)

// TestSocketPermissions: the socket's directory is 0700 and the socket 0600.
func TestSocketPermissions(t *testing.T) {
	testutil.RequiresRoot(t)
	dir := filepath.Join(testutil.ShortDir(t), "run", "strata")
	d := startDaemon(t, t.TempDir(), "--address", filepath.Join(dir, "s.sock"))
	for path, want := range map[string]os.FileMode{dir: 0o700, d.address: 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s has mode %o, want %o", path, got, want)
		}
	}
	d.stop()
	if _, err := os.Lstat(d.address); !os.IsNotExist(err) {
		t.Errorf("socket still there after a clean stop: %v", err)
	}
}

// TestSocketInUseRefused: a second daemon on the address of a live one exits
// 1 naming the address, and the first keeps serving.
func TestSocketInUseRefused(t *testing.T) {
	testutil.RequiresRoot(t)
	first := startDaemon(t, t.TempDir())
	second := newDaemon(t, t.TempDir(), "--address", first.address)
	if code := second.wait(); code != 1 {
		t.Fatalf("second daemon exited %d, want 1", code)
	}
	if !strings.Contains(second.logs(), "another server is already listening on "+first.address) {
		t.Fatalf("second daemon's message does not say why:\n%s", second.logs())
	}
	if _, err := first.client().Stat(context.Background(), &snapshotsapi.StatSnapshotRequest{Key: "x"}); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("first daemon no longer answers: %v", err)
	}
	first.stop()
}

// TestStaleSocketReplaced: a socket file nobody listens on (left by a crash)
// is replaced.
func TestStaleSocketReplaced(t *testing.T) {
	testutil.RequiresRoot(t)
	address := filepath.Join(testutil.ShortDir(t), "s.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: address, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	if fi, err := os.Lstat(address); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("stale socket not in place: %v", err)
	}
	d := startDaemon(t, t.TempDir(), "--address", address)
	if _, err := d.client().Stat(context.Background(), &snapshotsapi.StatSnapshotRequest{Key: "x"}); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("daemon on replaced socket does not answer: %v", err)
	}
	d.stop()
}

// TestNonSocketRefused: a path that is not a socket is never replaced.
func TestNonSocketRefused(t *testing.T) {
	testutil.RequiresRoot(t)
	address := filepath.Join(testutil.ShortDir(t), "s.sock")
	if err := os.WriteFile(address, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := newDaemon(t, t.TempDir(), "--address", address)
	if code := d.wait(); code != 1 {
		t.Fatalf("exit code %d, want 1", code)
	}
	if !strings.Contains(d.logs(), "is not a socket") {
		t.Fatalf("message does not say why:\n%s", d.logs())
	}
	if b, err := os.ReadFile(address); err != nil || string(b) != "precious" {
		t.Fatalf("file at the address was touched: %q, %v", b, err)
	}
}

// manySnapshots creates n snapshots with large labels, so that listing them
// takes far more than one HTTP/2 flow-control window.
func manySnapshots(t *testing.T, c snapshotsapi.SnapshotsClient, n int) {
	t.Helper()
	label := map[string]string{"padding": strings.Repeat("p", 4000)}
	for i := range n {
		must(t, errOf(c.Prepare(context.Background(), &snapshotsapi.PrepareSnapshotRequest{Key: fmt.Sprintf("s%03d", i), Labels: label})))
	}
}

// slowReader opens a List stream with a fixed 64 KiB flow-control window
// (which turns off grpc's window growth) and reads one message, so the
// server's List handler is left blocked mid-stream: an in-flight call.
func slowReader(t *testing.T, d *daemon) snapshotsapi.Snapshots_ListClient {
	t.Helper()
	conn := d.dial(grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	stream, err := snapshotsapi.NewSnapshotsClient(conn).List(context.Background(), &snapshotsapi.ListSnapshotsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	return stream
}

// TestGracefulStop: on SIGTERM the daemon lets an in-flight call finish, then
// closes the index and exits 0.
func TestGracefulStop(t *testing.T) {
	testutil.RequiresRoot(t)
	root := t.TempDir()
	d := startDaemon(t, root)
	const n = 300
	manySnapshots(t, d.client(), n)
	stream := slowReader(t, d)

	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	d.waitFor("shutting down")
	got := 100 // the first message carries one block of 100
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("in-flight List cut off after %d snapshots: %v", got, err)
		}
		got += len(resp.Info)
	}
	if got != n {
		t.Fatalf("in-flight List returned %d snapshots, want %d", got, n)
	}
	if code := d.wait(); code != 0 {
		t.Fatalf("exit code %d after SIGTERM, want 0", code)
	}
	// The index was closed: a new daemon opens it (bolt's lock is free)
	// and finds every snapshot.
	again := startDaemon(t, root)
	list, err := again.client().List(context.Background(), &snapshotsapi.ListSnapshotsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for {
		resp, err := list.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		total += len(resp.Info)
	}
	if total != n {
		t.Fatalf("after restart %d snapshots, want %d", total, n)
	}
	again.stop()
}

// TestShutdownDeadline: a call that does not finish within shutdown_timeout
// is cancelled and the daemon still exits 0.
func TestShutdownDeadline(t *testing.T) {
	testutil.RequiresRoot(t)
	cfg := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(cfg, []byte("shutdown_timeout = \"200ms\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, t.TempDir(), "--config", cfg)
	manySnapshots(t, d.client(), 300)
	slowReader(t, d) // and never read again

	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	d.waitFor("did not finish in time")
	if code := d.wait(); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
}
