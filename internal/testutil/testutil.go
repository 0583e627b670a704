// Package testutil holds helpers shared by strata's tests.
package testutil

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
)

// RequiresRoot skips t unless it runs as root. Tests that mount filesystems
// or run the daemon need root; CI runs as root, so there they always run.
func RequiresRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("requires root (mounts overlayfs)")
	}
}

// ShortDir returns a new directory with a short path, removed after t: unix
// socket paths must stay under 108 bytes, which t.TempDir's long names
// (the test's name in them) can exceed.
func ShortDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "strata-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// WriteLayer prepares key on parent, writes files (path: content) into it
// through its mounts, and commits it as name unless name is "".
func WriteLayer(t testing.TB, sn snapshots.Snapshotter, key, parent, name string, files map[string]string) {
	t.Helper()
	ctx := context.Background()
	ms, err := sn.Prepare(ctx, key, parent)
	if err != nil {
		t.Fatal(err)
	}
	WithMount(t, ms, func(dir string) {
		for p, content := range files {
			if err := os.WriteFile(filepath.Join(dir, p), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	})
	if name == "" {
		return
	}
	if err := sn.Commit(ctx, name, key); err != nil {
		t.Fatal(err)
	}
}

// WithMount mounts ms on a temporary directory for fn, and unmounts it.
func WithMount(t testing.TB, ms []mount.Mount, fn func(dir string)) {
	t.Helper()
	dir := t.TempDir()
	if err := mount.All(ms, dir); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := mount.UnmountAll(dir, 0); err != nil {
			t.Fatal(err)
		}
	}()
	fn(dir)
}

// NotifySocket listens where a daemon started with NOTIFY_SOCKET=path tells
// its service manager it is ready, as systemd's Type=notify does; ready is
// closed when READY=1 arrives. A leftover socket at path (a restarted
// daemon's) is replaced.
func NotifySocket(t testing.TB, path string) (ready <-chan struct{}) {
	t.Helper()
	os.Remove(path)
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := make(chan struct{})
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			if strings.Contains(string(buf[:n]), "READY=1") {
				close(c)
				return
			}
		}
	}()
	return c
}
