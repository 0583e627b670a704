package snapshotter

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/strata-snapshotter/strata/internal/testutil"
)

func newTestSnapshotter(t *testing.T, opts ...Opt) (*snapshotter, string) {
	t.Helper()
	testutil.RequiresRoot(t)
	root := t.TempDir()
	sn, err := New(context.Background(), root, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sn.Close() })
	return sn.(*snapshotter), root
}

// commitLayer commits name on parent holding files, through name-active.
func commitLayer(t *testing.T, sn snapshots.Snapshotter, name, parent string, files map[string]string) {
	t.Helper()
	testutil.WriteLayer(t, sn, name+"-active", parent, name, files)
}

// TestRemoveKeepsMountedDirectory: a removed snapshot whose directory still
// has something mounted in it is forgotten, but its directory is not deleted
// (the deletion would reach into the mounted filesystem); once unmounted,
// Cleanup deletes it. A snapshot whose directory is itself a mount point is
// not removed at all.
func TestRemoveKeepsMountedDirectory(t *testing.T) {
	sn, _ := newTestSnapshotter(t, WithSyncRemove)
	ctx := context.Background()
	ms, err := sn.Prepare(ctx, "a", "")
	if err != nil {
		t.Fatal(err)
	}
	name := layerOf(t, ms)
	layer, moved := sn.layout.layer(name), sn.layout.removedLayer(name)
	t.Cleanup(func() { // only matters when the test fails midway
		for _, d := range []string{layer, filepath.Join(layer, "sub"), filepath.Join(moved, "sub")} {
			unix.Unmount(d, unix.MNT_DETACH)
		}
	})

	// Mounted on the layer directory itself: Remove refuses.
	if err := unix.Mount("tmpfs", layer, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	if err := sn.Remove(ctx, "a"); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("Remove of a snapshot whose directory is a mount point: %v, want FailedPrecondition", err)
	}
	if _, err := sn.Stat(ctx, "a"); err != nil {
		t.Fatalf("refused Remove forgot the snapshot: %v", err)
	}
	if err := unix.Unmount(layer, 0); err != nil {
		t.Fatal(err)
	}

	// Mounted inside the layer directory: Remove forgets the snapshot and
	// leaves the directory.
	sub := filepath.Join(layer, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", sub, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sub, "precious"), []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := sn.Remove(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Stat(ctx, "a"); !errdefs.IsNotFound(err) {
		t.Fatalf("removed snapshot still recorded: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(moved, "sub", "precious")); err != nil || string(b) != "keep" {
		t.Fatalf("file in the filesystem mounted inside the snapshot: %q, %v", b, err)
	}
	// Cleanup leaves it too while it is mounted.
	if err := sn.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(moved, "sub", "precious")); err != nil {
		t.Fatalf("Cleanup deleted into a mount: %v", err)
	}
	if err := unix.Unmount(filepath.Join(moved, "sub"), 0); err != nil {
		t.Fatal(err)
	}
	if err := sn.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(moved); !os.IsNotExist(err) {
		t.Fatalf("Cleanup did not delete the unmounted directory: %v", err)
	}
}

// TestRemoveDeletesFiles: after Remove (synchronous, or background then
// Close), neither the directory nor the link is left.
func TestRemoveDeletesFiles(t *testing.T) {
	for name, opts := range map[string][]Opt{"sync": {WithSyncRemove}, "async": nil} {
		t.Run(name, func(t *testing.T) {
			sn, root := newTestSnapshotter(t, opts...)
			ctx := context.Background()
			commitLayer(t, sn, "base", "", map[string]string{"f": "x"})
			if err := sn.Remove(ctx, "base"); err != nil {
				t.Fatal(err)
			}
			if err := sn.Close(); err != nil { // waits for background deletion
				t.Fatal(err)
			}
			if got := entries(t, root); got != "" {
				t.Fatalf("left after Remove: %s", got)
			}
		})
	}
}

// TestFailedPrepareLeavesNothing: a Prepare that fails after its directory
// was begun leaves no directory, link or record.
func TestFailedPrepareLeavesNothing(t *testing.T) {
	sn, root := newTestSnapshotter(t)
	ctx := context.Background()
	commitLayer(t, sn, "base", "", map[string]string{"f": "x"})
	// Lose the parent's files: populating the child (which copies the
	// owner of the parent's root) fails midway.
	if err := os.Rename(sn.layout.layer(onlyLayer(t, sn)), filepath.Join(root, "lost")); err != nil {
		t.Fatal(err)
	}
	before := entries(t, root)
	if _, err := sn.Prepare(ctx, "child", "base"); err == nil {
		t.Fatal("Prepare on a parent without files succeeded")
	}
	if after := entries(t, root); after != before {
		t.Fatalf("failed Prepare left:\nbefore %s\nafter  %s", before, after)
	}
	if _, err := sn.Stat(ctx, "child"); !errdefs.IsNotFound(err) {
		t.Fatalf("failed Prepare recorded the snapshot: %v", err)
	}
}

// onlyLayer returns the name of the one layer directory.
func onlyLayer(t *testing.T, sn *snapshotter) string {
	t.Helper()
	es, err := os.ReadDir(sn.layout.layersRoot())
	if err != nil || len(es) != 1 || !isLayerName(es[0].Name()) {
		t.Fatalf("want exactly one layer directory: %v, %v", es, err)
	}
	return es[0].Name()
}

// TestCleanupAndStartRemoveLeftovers: directories no snapshot owns (a
// half-built layer, a removal interrupted by a crash, a layer of an unrecorded
// snapshot, a stray work directory) are removed by Cleanup and at start;
// owned ones stay.
func TestCleanupAndStartRemoveLeftovers(t *testing.T) {
	sn, root := newTestSnapshotter(t)
	ctx := context.Background()
	commitLayer(t, sn, "base", "", map[string]string{"f": "x"})
	owned := entries(t, root)

	plant := func() {
		for _, d := range []string{"layers/tmp-123", "layers/rm-ABCDEF", "layers/QQQQQQ", "work/QQQQQQ/work"} {
			if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	plant()
	if err := sn.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if got := entries(t, root); got != owned {
		t.Fatalf("after Cleanup: %s\nwant %s", got, owned)
	}

	plant()
	if err := sn.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := New(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if got := entries(t, root); got != owned {
		t.Fatalf("after restart: %s\nwant %s", got, owned)
	}
}

// TestCommittedUsageIsStored: Usage of a committed snapshot is what Commit
// measured; it does not walk the layer again.
func TestCommittedUsageIsStored(t *testing.T) {
	sn, _ := newTestSnapshotter(t)
	ctx := context.Background()
	ms, err := sn.Prepare(ctx, "a", "")
	if err != nil {
		t.Fatal(err)
	}
	data := strings.Repeat("d", 64<<10)
	testutil.WithMount(t, ms, func(dir string) {
		if err := os.WriteFile(filepath.Join(dir, "data"), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	})
	activeUsage, err := sn.Usage(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	// The root directory and the file; at least the file's bytes.
	if activeUsage.Inodes != 2 || activeUsage.Size < int64(len(data)) {
		t.Fatalf("active usage %+v, want 2 inodes and at least %d bytes", activeUsage, len(data))
	}
	if err := sn.Commit(ctx, "c", "a"); err != nil {
		t.Fatal(err)
	}
	u, err := sn.Usage(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	if u != activeUsage {
		t.Fatalf("committed usage %+v, want what was measured at commit %+v", u, activeUsage)
	}
	// Grow the layer behind strata's back: the stored figure stands.
	if err := os.WriteFile(filepath.Join(ms[0].Source, "extra"), []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if again, _ := sn.Usage(ctx, "c"); again != u {
		t.Fatalf("committed usage changed to %+v: it was walked again", again)
	}
}

// TestCommitRebase: an active snapshot prepared without a parent can be
// committed onto one (WithParent), as containerd's parallel unpack does; the
// result stacks both layers.
func TestCommitRebase(t *testing.T) {
	sn, _ := newTestSnapshotter(t)
	ctx := context.Background()
	commitLayer(t, sn, "base", "", map[string]string{"base-file": "b"})
	ms, err := sn.Prepare(ctx, "top-active", "")
	if err != nil {
		t.Fatal(err)
	}
	testutil.WithMount(t, ms, func(dir string) {
		if err := os.WriteFile(filepath.Join(dir, "top-file"), []byte("t"), 0o644); err != nil {
			t.Fatal(err)
		}
	})
	if err := sn.Commit(ctx, "top", "top-active", snapshots.WithParent("base")); err != nil {
		t.Fatal(err)
	}
	info, err := sn.Stat(ctx, "top")
	if err != nil || info.Parent != "base" {
		t.Fatalf("rebased snapshot: %+v, %v; want parent base", info, err)
	}
	if err := sn.Remove(ctx, "base"); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("removing the new parent: %v, want FailedPrecondition", err)
	}
	view, err := sn.View(ctx, "v", "top")
	if err != nil {
		t.Fatal(err)
	}
	testutil.WithMount(t, view, func(dir string) {
		for _, f := range []string{"base-file", "top-file"} {
			if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
				t.Errorf("%s not visible in the rebased chain: %v", f, err)
			}
		}
	})
}

// TestMountsShapes: the mount strata returns for each kind of snapshot.
func TestMountsShapes(t *testing.T) {
	sn, root := newTestSnapshotter(t)
	ctx := context.Background()
	commitLayer(t, sn, "l1", "", nil)
	commitLayer(t, sn, "l2", "l1", nil)
	for _, tc := range []struct {
		name, parent string
		view         bool
		typ          string
		options      []string
	}{
		{"active-no-parent", "", false, "bind", []string{"rw", "rbind"}},
		{"view-no-parent", "", true, "bind", []string{"ro", "rbind"}},
		{"view-one-layer", "l1", true, "bind", []string{"ro", "rbind"}},
		{"active-one-layer", "l1", false, "overlay", []string{"workdir=", "upperdir=", "lowerdir=" + root + "/layers/", "index=off"}},
		{"view-two-layers", "l2", true, "overlay", []string{"lowerdir=" + root + "/layers/", "index=off"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			create := sn.Prepare
			if tc.view {
				create = sn.View
			}
			ms, err := create(ctx, tc.name, tc.parent)
			if err != nil {
				t.Fatal(err)
			}
			if len(ms) != 1 || ms[0].Type != tc.typ || len(ms[0].Options) != len(tc.options) {
				t.Fatalf("got %+v, want one %s mount with options like %v", ms, tc.typ, tc.options)
			}
			for i, want := range tc.options {
				if !strings.HasPrefix(ms[0].Options[i], want) {
					t.Errorf("option %d is %q, want %q…", i, ms[0].Options[i], want)
				}
			}
			again, err := sn.Mounts(ctx, tc.name)
			if err != nil || len(again) != 1 || strings.Join(again[0].Options, ",") != strings.Join(ms[0].Options, ",") {
				t.Fatalf("Mounts differs from what %s returned: %+v, %v", tc.name, again, err)
			}
		})
	}
}

// TestInterruptedRemoveRestored: a crash after Remove moved the directory
// aside but before its transaction committed leaves the snapshot recorded;
// at start its directory is put back, not deleted.
func TestInterruptedRemoveRestored(t *testing.T) {
	sn, root := newTestSnapshotter(t)
	ctx := context.Background()
	commitLayer(t, sn, "base", "", map[string]string{"f": "content"})
	name := onlyLayer(t, sn)
	active, err := sn.Prepare(ctx, "ctr", "base")
	if err != nil {
		t.Fatal(err)
	}
	activeName := layerOf(t, active)
	sn.Close()
	// Both removals were cut off after their renames: a committed layer,
	// and an active snapshot's layer and work directory.
	for _, m := range [][2]string{
		{sn.layout.layer(name), sn.layout.removedLayer(name)},
		{sn.layout.layer(activeName), sn.layout.removedLayer(activeName)},
		{sn.layout.work(activeName), filepath.Join(sn.layout.workRoot(), removePrefix+activeName)},
	} {
		if err := os.Rename(m[0], m[1]); err != nil {
			t.Fatal(err)
		}
	}
	again, err := New(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	view, err := again.View(ctx, "v", "base")
	if err != nil {
		t.Fatal(err)
	}
	testutil.WithMount(t, view, func(dir string) {
		if b, err := os.ReadFile(filepath.Join(dir, "f")); err != nil || string(b) != "content" {
			t.Fatalf("layer after restart: %q, %v", b, err)
		}
	})
	// The active snapshot mounts again: its work directory is back too.
	ms, err := again.Mounts(ctx, "ctr")
	if err != nil {
		t.Fatal(err)
	}
	testutil.WithMount(t, ms, func(string) {})
}

// TestCleanupRestoresInterruptedRemove: Cleanup, not only a start, puts back
// the directory of a recorded snapshot that a removal moved aside without
// committing, and deletes nothing of it.
func TestCleanupRestoresInterruptedRemove(t *testing.T) {
	sn, _ := newTestSnapshotter(t)
	ctx := context.Background()
	commitLayer(t, sn, "base", "", map[string]string{"f": "content"})
	name := onlyLayer(t, sn)
	if err := os.Rename(sn.layout.layer(name), sn.layout.removedLayer(name)); err != nil {
		t.Fatal(err)
	}
	if err := sn.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if exists(sn.layout.removedLayer(name)) {
		t.Fatalf("Cleanup left %s", sn.layout.removedLayer(name))
	}
	view, err := sn.View(ctx, "v", "base")
	if err != nil {
		t.Fatal(err)
	}
	testutil.WithMount(t, view, func(dir string) {
		if b, err := os.ReadFile(filepath.Join(dir, "f")); err != nil || string(b) != "content" {
			t.Fatalf("layer after Cleanup: %q, %v", b, err)
		}
	})
}

// TestActiveUsageToleratesVanishingFiles: measuring an active snapshot while
// files come and go (a running container) never fails.
func TestActiveUsageToleratesVanishingFiles(t *testing.T) {
	dir := t.TempDir()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			p := filepath.Join(dir, "f"+strings.Repeat("x", i%50))
			os.WriteFile(p, []byte("x"), 0o644)
			os.Remove(p)
		}
	}()
	defer func() { close(stop); <-done }()
	for range 2000 {
		if _, err := diskUsage(context.Background(), dir); err != nil {
			t.Fatalf("usage while files vanish: %v", err)
		}
	}
}

// TestRootMadePrivate: a root open to other users is closed at start.
func TestRootMadePrivate(t *testing.T) {
	testutil.RequiresRoot(t)
	root := filepath.Join(t.TempDir(), "root")
	if err := os.Mkdir(root, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(root, 0o777); err != nil { // past the umask
		t.Fatal(err)
	}
	sn, err := New(context.Background(), root)
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	fi, err := os.Stat(root)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o700 {
		t.Fatalf("root has mode %#o after start, want 0700", perm)
	}
}

// TestPlantedSymlinksNotFollowed: a container plants symlinks to outside the
// root in its layer. strata measures, commits, removes and cleans up without
// following them: the files outside are neither counted nor touched.
func TestPlantedSymlinksNotFollowed(t *testing.T) {
	sn, _ := newTestSnapshotter(t, WithSyncRemove)
	ctx := context.Background()
	victim := t.TempDir()
	big := strings.Repeat("v", 1<<20)
	if err := os.WriteFile(filepath.Join(victim, "precious"), []byte(big), 0o644); err != nil {
		t.Fatal(err)
	}
	ms, err := sn.Prepare(ctx, "evil", "")
	if err != nil {
		t.Fatal(err)
	}
	layer := upperOf(ms)
	for name, target := range map[string]string{"dir-link": victim, "file-link": filepath.Join(victim, "precious"), "up": "../../../../../../../../"} {
		if err := os.Symlink(target, filepath.Join(layer, name)); err != nil {
			t.Fatal(err)
		}
	}
	u, err := sn.Usage(ctx, "evil")
	if err != nil {
		t.Fatal(err)
	}
	if u.Size >= int64(len(big)) {
		t.Fatalf("usage %+v counts what the links point to", u)
	}
	if err := sn.Commit(ctx, "evil-c", "evil"); err != nil {
		t.Fatal(err)
	}
	if err := sn.Remove(ctx, "evil-c"); err != nil {
		t.Fatal(err)
	}
	if err := sn.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(victim, "precious")); err != nil || string(b) != big {
		t.Fatalf("file outside the root touched: %d bytes, %v", len(b), err)
	}
}
