package main

import (
	"context"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"

	"github.com/strata-snapshotter/strata/internal/testutil"
)

// TestSuiteOverSocket runs containerd's snapshotter test suite against the
// built daemon over its unix socket, through containerd's own proxy
// snapshotter: exactly the path containerd takes for a proxy plugin. Each
// test of the suite gets its own daemon, stopped with SIGTERM at the end,
// which must exit 0.
func TestSuiteOverSocket(t *testing.T) {
	testutil.RequiresRoot(t)
	if testing.Short() {
		t.Skip("slow: skipped by -short (make unit)")
	}
	testsuite.SnapshotterSuite(t, "overlayfs", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		d, err := launch(t, root)
		if err == nil {
			err = d.serving()
		}
		if err != nil {
			return nil, nil, err
		}
		return d.snapshotter(), d.terminate, nil
	})
}
