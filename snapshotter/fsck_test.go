package snapshotter

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"

	"github.com/strata-snapshotter/strata/metadata"
)

// TestFsck: a store left by a clean run is clean; each kind of damage is
// found; --repair removes only what no snapshot owns.
func TestFsck(t *testing.T) {
	sn, root := newTestSnapshotter(t)
	ctx := context.Background()
	commitLayer(t, sn, "base", "", map[string]string{"f": "x"})
	commitLayer(t, sn, "top", "base", map[string]string{"g": "y"})
	if _, err := sn.Prepare(ctx, "ctr", "top"); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.View(ctx, "view", "base"); err != nil {
		t.Fatal(err)
	}
	// A container in a user namespace is part of a clean store.
	if _, err := sn.Prepare(ctx, "userns", "top", userNS); err != nil {
		t.Fatal(err)
	}
	details, err := sn.Details(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dirOf := map[string]string{}
	for _, d := range details {
		dirOf[d.Name] = d.Dir
	}

	// fsck refuses a store in use.
	if _, err := Fsck(ctx, root, FsckOptions{}); err == nil || !strings.Contains(err.Error(), "locked") {
		t.Fatalf("fsck of a running store: %v, want a lock error", err)
	}
	sn.Close()
	r, err := Fsck(ctx, root, FsckOptions{})
	if err != nil || len(r.Findings) != 0 {
		t.Fatalf("clean store: findings %q, %v", r.Findings, err)
	}

	// Damage: a committed layer changed, a work directory lost, and
	// leftovers nobody owns.
	if err := os.WriteFile(filepath.Join(dirOf["base"], "extra"), []byte("zz"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(root, workDir, filepath.Base(dirOf["ctr"]))); err != nil {
		t.Fatal(err)
	}
	leftovers := []string{filepath.Join(root, layersDir, "tmp-1"), filepath.Join(root, layersDir, "rm-ZZZZZZ"), filepath.Join(root, workDir, "QQQQQQ")}
	for _, d := range leftovers {
		if err := os.MkdirAll(filepath.Join(d, "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// And an ID mapping no mount can carry, written past strata's checks.
	db, err := metadata.Open(ctx, layout{root: root}.dbPath())
	if err != nil {
		t.Fatal(err)
	}
	err = db.Write(func(tx *metadata.Tx) error {
		_, err := tx.UpdateInfo(snapshots.Info{Name: "userns", Labels: map[string]string{snapshots.LabelSnapshotUIDMapping: "0:x:1"}}, "labels."+snapshots.LabelSnapshotUIDMapping)
		return err
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	r, err = Fsck(ctx, root, FsckOptions{})
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(r.Findings, "\n")
	for _, want := range []string{
		`committed snapshot "base" holds`,
		`active snapshot "ctr": its work directory`,
		"tmp-1 belongs to no snapshot",
		"rm-ZZZZZZ belongs to no snapshot",
		"QQQQQQ belongs to no snapshot",
		`snapshot "userns": its ID mapping cannot be used`,
	} {
		if !strings.Contains(all, want) {
			t.Errorf("findings lack %q:\n%s", want, all)
		}
	}
	if len(r.Removed) != 0 {
		t.Fatalf("fsck without --repair removed %v", r.Removed)
	}

	r, err = Fsck(ctx, root, FsckOptions{Repair: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Removed) != len(leftovers) {
		t.Fatalf("repair removed %v, want the %d leftovers", r.Removed, len(leftovers))
	}
	for _, d := range leftovers {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("%s survived the repair", d)
		}
	}
	// What belongs to a snapshot is never removed, damaged or not.
	for _, key := range []string{"base", "top", "ctr", "view"} {
		if _, err := os.Stat(dirOf[key]); err != nil {
			t.Errorf("repair touched %s's layer: %v", key, err)
		}
	}
	r, _ = Fsck(ctx, root, FsckOptions{})
	if len(r.Findings) != 3 {
		t.Fatalf("after repair: %q, want only the three unrepairable findings", r.Findings)
	}
}
