package main

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/strata-snapshotter/strata/internal/testutil"
)

// TestBadInputGRPCCodes sends each kind of bad request over the socket, as
// containerd would, and checks the gRPC code the client sees, and that the
// rejected request left nothing behind on disk.
func TestBadInputGRPCCodes(t *testing.T) {
	testutil.RequiresRoot(t)
	root := t.TempDir()
	d := startDaemon(t, root)
	c := d.client()
	ctx := context.Background()

	// A committed base, an active snapshot on it, and a view.
	must(t, errOf(c.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Key: "base-active"})))
	must(t, errOf(c.Commit(ctx, &snapshotsapi.CommitSnapshotRequest{Key: "base-active", Name: "base"})))
	must(t, errOf(c.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Key: "active", Parent: "base"})))
	must(t, errOf(c.View(ctx, &snapshotsapi.ViewSnapshotRequest{Key: "view", Parent: "base"})))

	huge := map[string]string{"big": strings.Repeat("x", 4097)}
	longKey := strings.Repeat("k", 4097)
	for _, tc := range []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"Prepare empty key", func() error { return errOf(c.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Key: ""})) }, codes.InvalidArgument},
		{"View empty key", func() error { return errOf(c.View(ctx, &snapshotsapi.ViewSnapshotRequest{Key: "", Parent: "base"})) }, codes.InvalidArgument},
		{"Prepare key over 4096 bytes", func() error { return errOf(c.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Key: longKey})) }, codes.InvalidArgument},
		{"Prepare label over 4096 bytes", func() error {
			return errOf(c.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Key: "x", Labels: huge}))
		}, codes.InvalidArgument},
		{"Prepare unknown parent", func() error {
			return errOf(c.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Key: "x", Parent: "nope"}))
		}, codes.NotFound},
		{"Prepare on an active parent", func() error {
			return errOf(c.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Key: "x", Parent: "active"}))
		}, codes.InvalidArgument},
		{"View on a view", func() error { return errOf(c.View(ctx, &snapshotsapi.ViewSnapshotRequest{Key: "x", Parent: "view"})) }, codes.InvalidArgument},
		{"Prepare existing key", func() error {
			return errOf(c.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Key: "active", Parent: "base"}))
		}, codes.AlreadyExists},
		{"Prepare key of a committed snapshot", func() error {
			return errOf(c.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Key: "base"}))
		}, codes.AlreadyExists},
		{"Remove with children", func() error { return errOf(c.Remove(ctx, &snapshotsapi.RemoveSnapshotRequest{Key: "base"})) }, codes.FailedPrecondition},
		{"Remove unknown key", func() error { return errOf(c.Remove(ctx, &snapshotsapi.RemoveSnapshotRequest{Key: "nope"})) }, codes.NotFound},
		{"Commit unknown key", func() error {
			return errOf(c.Commit(ctx, &snapshotsapi.CommitSnapshotRequest{Key: "nope", Name: "n"}))
		}, codes.NotFound},
		{"Commit a view", func() error {
			return errOf(c.Commit(ctx, &snapshotsapi.CommitSnapshotRequest{Key: "view", Name: "n"}))
		}, codes.FailedPrecondition},
		{"Commit a committed snapshot", func() error {
			return errOf(c.Commit(ctx, &snapshotsapi.CommitSnapshotRequest{Key: "base", Name: "n"}))
		}, codes.FailedPrecondition},
		{"Commit to an existing name", func() error {
			return errOf(c.Commit(ctx, &snapshotsapi.CommitSnapshotRequest{Key: "active", Name: "base"}))
		}, codes.AlreadyExists},
		{"Commit empty name", func() error {
			return errOf(c.Commit(ctx, &snapshotsapi.CommitSnapshotRequest{Key: "active", Name: ""}))
		}, codes.InvalidArgument},
		{"Commit label over 4096 bytes", func() error {
			return errOf(c.Commit(ctx, &snapshotsapi.CommitSnapshotRequest{Key: "active", Name: "n", Labels: huge}))
		}, codes.InvalidArgument},
		{"Commit with a different parent", func() error {
			return errOf(c.Commit(ctx, &snapshotsapi.CommitSnapshotRequest{Key: "active", Name: "n", Parent: "view"}))
		}, codes.InvalidArgument},
		{"Mounts of a committed snapshot", func() error { return errOf(c.Mounts(ctx, &snapshotsapi.MountsRequest{Key: "base"})) }, codes.FailedPrecondition},
		{"Mounts unknown key", func() error { return errOf(c.Mounts(ctx, &snapshotsapi.MountsRequest{Key: "nope"})) }, codes.NotFound},
		{"Stat unknown key", func() error { return errOf(c.Stat(ctx, &snapshotsapi.StatSnapshotRequest{Key: "nope"})) }, codes.NotFound},
		{"Usage unknown key", func() error { return errOf(c.Usage(ctx, &snapshotsapi.UsageRequest{Key: "nope"})) }, codes.NotFound},
		{"Update unknown key", func() error {
			return errOf(c.Update(ctx, &snapshotsapi.UpdateSnapshotRequest{Info: &snapshotsapi.Info{Name: "nope"}}))
		}, codes.NotFound},
		{"Update immutable field", func() error {
			return errOf(c.Update(ctx, &snapshotsapi.UpdateSnapshotRequest{
				Info:       &snapshotsapi.Info{Name: "base", Parent: "x"},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"parent"}},
			}))
		}, codes.InvalidArgument},
		{"Update label over 4096 bytes", func() error {
			return errOf(c.Update(ctx, &snapshotsapi.UpdateSnapshotRequest{Info: &snapshotsapi.Info{Name: "base", Labels: huge}}))
		}, codes.InvalidArgument},
		{"Walk bad filter", func() error {
			s, err := c.List(ctx, &snapshotsapi.ListSnapshotsRequest{Filters: []string{"name=="}})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}, codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := onDisk(t, root)
			err := tc.call()
			if got := status.Code(err); got != tc.want {
				t.Fatalf("got %v (%v), want %v", got, err, tc.want)
			}
			if after := onDisk(t, root); after != before {
				t.Fatalf("rejected request changed the disk:\nbefore %s\nafter  %s", before, after)
			}
		})
	}

	// A key is a name, never a path: one that looks like an escape gets an
	// ordinary directory under the root.
	resp, err := c.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Key: "../../../../escape", Parent: "base"})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range resp.Mounts {
		for _, o := range m.Options {
			if dir, ok := strings.CutPrefix(o, "upperdir="); ok && !strings.HasPrefix(dir, root+"/layers/") {
				t.Fatalf("upperdir %s is not under %s/layers", dir, root)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(root, "..", "..", "escape")); err == nil {
		t.Fatal("a key made a directory outside the root")
	}
	d.stop()
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func errOf[T any](_ T, err error) error { return err }

// onDisk lists the snapshot directories and links under root.
func onDisk(t *testing.T, root string) string {
	t.Helper()
	var names []string
	for _, d := range []string{"layers", "work"} {
		entries, err := os.ReadDir(filepath.Join(root, d))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			names = append(names, d+"/"+e.Name())
		}
	}
	sort.Strings(names)
	return strings.Join(names, " ")
}
