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
