package snapshotter

import (
	"context"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"

	"github.com/strata-snapshotter/strata/internal/testutil"
)

// TestSnapshotterSuite runs containerd's own snapshotter test suite against
// strata in-process, once with background removal (the default) and once
// with synchronous removal. The suite is told the snapshotter is "overlayfs":
// overlay's documented limit (renaming a directory that lives in a lower
// layer) applies to strata too.
func TestSnapshotterSuite(t *testing.T) {
	testutil.RequiresRoot(t)
	if testing.Short() {
		t.Skip("slow: skipped by -short (make unit)")
	}
	for name, opts := range map[string][]Opt{
		"AsyncRemove": nil,
		"SyncRemove":  {WithSyncRemove},
	} {
		t.Run(name, func(t *testing.T) {
			testsuite.SnapshotterSuite(t, "overlayfs", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
				sn, err := New(ctx, root, opts...)
				if err != nil {
					return nil, nil, err
				}
				return sn, sn.Close, nil
			})
		})
	}
}
