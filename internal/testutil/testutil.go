// Package testutil holds helpers shared by strata's tests.
package testutil

import (
	"os"
	"testing"
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
