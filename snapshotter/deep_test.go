package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"

	"github.com/strata-snapshotter/strata/internal/testutil"
	"github.com/strata-snapshotter/strata/metadata"
	"github.com/strata-snapshotter/strata/mounts"
)

// TestDeepChain500Layers builds a chain of 500 committed layers whose ids are
// past 100000, and mounts it with containerd's mount.All as a view and as an
// active snapshot (500 lower directories each, overlayfs's maximum); every
// layer's file must be visible. A snapshot whose chain would need 501 lower
// directories is refused at Prepare and View with FailedPrecondition.
//
// With containerd's built-in overlayfs snapshotter, lowerdir= of 500 layers
// with 6-digit ids does not fit in mount(2)'s page even after mount.All makes
// the paths relative ("100123/fs" is 10 bytes a layer); strata's short layer
// names make it fit (7 bytes a layer), whatever the ids.
func TestDeepChain500Layers(t *testing.T) {
	testutil.RequiresRoot(t)
	if testing.Short() {
		t.Skip("slow: skipped by -short (make unit)")
	}
	ctx := context.Background()
	root := t.TempDir()

	// Let the id counter have grown past 100000, as on a long-lived node.
	// Ids never appear in mount options, so the chain mounts all the same.
	db, err := metadata.Open(ctx, filepath.Join(root, dbFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Write(func(tx *metadata.Tx) error { return tx.ReserveIDsThrough(100000) }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	sn, err := New(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		sn.Close()
		db, err := metadata.Open(ctx, filepath.Join(root, dbFile))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		db.View(func(tx *metadata.Tx) error {
			if last := tx.LastID(); last <= 100000+mounts.MaxLowerDirs {
				t.Errorf("last id %d, want past %d", last, 100000+mounts.MaxLowerDirs)
			}
			return nil
		})
	}()

	work := t.TempDir()
	target := filepath.Join(work, "mnt")
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	parent := ""
	for i := 1; i <= mounts.MaxLowerDirs; i++ {
		key := fmt.Sprintf("layer-%d-active", i)
		ms, err := sn.Prepare(ctx, key, parent)
		if err != nil {
			t.Fatalf("prepare layer %d: %v", i, err)
		}
		// Write each layer through its own mount, as an unpacker does.
		if err := mount.All(ms, target); err != nil {
			t.Fatalf("mount layer %d: %v", i, err)
		}
		werr := os.WriteFile(filepath.Join(target, fmt.Sprintf("file-%d", i)), []byte(strconv.Itoa(i)), 0o644)
		if err := mount.UnmountAll(target, 0); err != nil {
			t.Fatal(err)
		}
		if werr != nil {
			t.Fatalf("write layer %d: %v", i, werr)
		}
		parent = fmt.Sprintf("layer-%d", i)
		if err := sn.Commit(ctx, parent, key); err != nil {
			t.Fatalf("commit layer %d: %v", i, err)
		}
	}

	view, err := sn.View(ctx, "view-500", parent)
	if err != nil {
		t.Fatalf("view of 500 layers: %v", err)
	}
	checkAllLayers(t, view, target, 500)

	active, err := sn.Prepare(ctx, "active-on-500", parent)
	if err != nil {
		t.Fatalf("prepare on 500 layers: %v", err)
	}
	// The options only fit mount(2)'s page thanks to short layer names
	// (mounts' TestDataSizeMatchesKernel measures that at the byte).
	checkAllLayers(t, active, target, 500)

	// A 501st layer on top: committing it is fine, but nothing can stand on
	// it, since that would need 501 lower directories.
	if err := sn.Commit(ctx, "layer-501", "active-on-500"); err != nil {
		t.Fatal(err)
	}
	before := entries(t, root)
	for name, create := range map[string]func() error{
		"Prepare": func() error { _, err := sn.Prepare(ctx, "too-deep", "layer-501"); return err },
		"View":    func() error { _, err := sn.View(ctx, "too-deep", "layer-501"); return err },
	} {
		err := create()
		if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "500") {
			t.Fatalf("%s on 501 layers: got %v, want FailedPrecondition naming the limit of 500", name, err)
		}
	}
	if _, err := sn.Stat(ctx, "too-deep"); !errdefs.IsNotFound(err) {
		t.Fatalf("refused snapshot was recorded: %v", err)
	}
	if after := entries(t, root); after != before {
		t.Fatalf("refused Prepare left something on disk:\nbefore %s\nafter  %s", before, after)
	}
}

// checkAllLayers mounts ms and checks file-1 … file-n each hold their layer's
// number.
func checkAllLayers(t *testing.T, ms []mount.Mount, target string, n int) {
	t.Helper()
	if err := mount.All(ms, target); err != nil {
		t.Fatalf("mount %d layers: %v", n, err)
	}
	defer func() {
		if err := mount.UnmountAll(target, 0); err != nil {
			t.Fatal(err)
		}
	}()
	for i := 1; i <= n; i++ {
		b, err := os.ReadFile(filepath.Join(target, fmt.Sprintf("file-%d", i)))
		if err != nil || string(b) != strconv.Itoa(i) {
			t.Fatalf("layer %d's file: %q, %v", i, b, err)
		}
	}
}

// layerOf returns the name of the layer directory a mount writes to (its
// upperdir, or the source of a bind mount).
func layerOf(t *testing.T, ms []mount.Mount) string {
	t.Helper()
	dir := ms[0].Source
	for _, o := range ms[0].Options {
		if v, ok := strings.CutPrefix(o, "upperdir="); ok {
			dir = v
		}
	}
	if !isLayerName(filepath.Base(dir)) {
		t.Fatalf("%s is not a layer directory", dir)
	}
	return filepath.Base(dir)
}

// entries lists what is under layers/ and work/.
func entries(t *testing.T, root string) string {
	t.Helper()
	var names []string
	for _, d := range []string{layersDir, workDir} {
		es, err := os.ReadDir(filepath.Join(root, d))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		for _, e := range es {
			names = append(names, d+"/"+e.Name())
		}
	}
	return strings.Join(names, " ")
}
