package snapshotter

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"

	"github.com/strata-snapshotter/strata/internal/testutil"
)

// The states a store is left in by crashes and by operators, and what
// start-up and fsck do with each: no recorded (or possibly recorded) layer is
// ever deleted without an explicit operator command, and strata either
// starts with everything intact or refuses, every time, saying what to do.

// store is a store with two committed layers, a container on the top one
// and a view of the bottom one, closed.
type store struct {
	root string
	dirs map[string]string // key -> layer directory name
}

// files is what each snapshot of a store shows at its root.
var storeFiles = map[string]string{"base": "f", "top": "g", "ctr": "h"}

func newStore(t *testing.T) store {
	t.Helper()
	sn, root := newTestSnapshotter(t)
	ctx := context.Background()
	commitLayer(t, sn, "base", "", map[string]string{"f": "base"})
	commitLayer(t, sn, "top", "base", map[string]string{"g": "top"})
	ms, err := sn.Prepare(ctx, "ctr", "top")
	if err != nil {
		t.Fatal(err)
	}
	testutil.WithMount(t, ms, func(dir string) {
		if err := os.WriteFile(filepath.Join(dir, "h"), []byte("ctr"), 0o644); err != nil {
			t.Fatal(err)
		}
	})
	if _, err := sn.View(ctx, "view", "base"); err != nil {
		t.Fatal(err)
	}
	st := store{root: root, dirs: map[string]string{}}
	for _, key := range []string{"base", "top", "ctr", "view"} {
		rec, err := sn.get(key)
		if err != nil {
			t.Fatal(err)
		}
		st.dirs[key] = rec.DirName
	}
	if err := sn.Close(); err != nil {
		t.Fatal(err)
	}
	return st
}

func (st store) path(elem ...string) string {
	return filepath.Join(append([]string{st.root}, elem...)...)
}

// checkIntact starts the store and checks that every snapshot but those in
// lost shows its files: the committed layers through a view, the container
// through its own mount.
func (st store) checkIntact(t *testing.T, lost ...string) {
	t.Helper()
	ctx := context.Background()
	sn, err := New(ctx, st.root)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	defer sn.Close()
	for key, file := range storeFiles {
		if strings.Contains(strings.Join(lost, " "), key) {
			continue
		}
		ms, done := mountsOf(t, sn, key)
		testutil.WithMount(t, ms, func(dir string) {
			if b, err := os.ReadFile(filepath.Join(dir, file)); err != nil || string(b) != key {
				t.Errorf("snapshot %q after restart: %s holds %q (%v), want %q", key, file, b, err, key)
			}
		})
		done()
	}
}

// mountsOf returns the mounts showing key: its own for the container, a
// view's for a committed layer; done removes the view.
func mountsOf(t *testing.T, sn Snapshotter, key string) (_ []mount.Mount, done func()) {
	t.Helper()
	ctx := context.Background()
	if key == "ctr" {
		ms, err := sn.Mounts(ctx, key)
		if err != nil {
			t.Fatalf("mounts of %q: %v", key, err)
		}
		return ms, func() {}
	}
	view := "check-" + key
	ms, err := sn.View(ctx, view, key)
	if err != nil {
		t.Fatalf("view of %q: %v", key, err)
	}
	return ms, func() {
		if err := sn.Remove(ctx, view); err != nil {
			t.Fatal(err)
		}
	}
}

// fsckSays runs fsck and requires each of want among its findings.
func fsckSays(t *testing.T, root string, opts FsckOptions, want ...string) FsckReport {
	t.Helper()
	r, err := Fsck(context.Background(), root, opts)
	if err != nil {
		t.Fatalf("fsck %+v: %v", opts, err)
	}
	all := strings.Join(r.Findings, "\n")
	for _, w := range want {
		if !strings.Contains(all, w) {
			t.Errorf("fsck findings lack %q:\n%s", w, all)
		}
	}
	return r
}

// snapshotOf lists every file and directory under the root with its
// content, so that "nothing changed" can be asserted byte for byte.
func snapshotOf(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		b.WriteString(rel)
		if fi.Mode().IsRegular() {
			c, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			b.WriteString("=" + string(bytes.ToValidUTF8(c, []byte("?"))))
		}
		b.WriteString("\n")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// refusedEveryTime starts the store several times; every start must fail
// with want in its message and change nothing on disk.
func refusedEveryTime(t *testing.T, root string, want string, is func(error) bool) {
	t.Helper()
	before := snapshotOf(t, root)
	for i := range 3 {
		sn, err := New(context.Background(), root)
		if err == nil {
			sn.Close()
			t.Fatalf("start %d succeeded; want a refusal saying %q", i+1, want)
		}
		if !strings.Contains(err.Error(), want) || !is(err) {
			t.Fatalf("start %d: %v; want a refusal of the right kind saying %q", i+1, err, want)
		}
		if after := snapshotOf(t, root); after != before {
			t.Fatalf("refused start %d changed the store:\nbefore:\n%s\nafter:\n%s", i+1, before, after)
		}
	}
}

// TestDiscardKeepsLayersUnderContainers: with the index lost and a
// container still running on the store's layers (its root an overlay on
// them), fsck --discard-unindexed keeps the layers it uses and says so; once
// the container is gone, it deletes them.
func TestDiscardKeepsLayersUnderContainers(t *testing.T) {
	st := newStore(t)
	// The container's root, as containerd's shim mounts it.
	root := t.TempDir()
	m := mount.Mount{Type: "overlay", Source: "overlay", Options: []string{
		"lowerdir=" + st.path(layersDir, st.dirs["top"]) + ":" + st.path(layersDir, st.dirs["base"]),
		"upperdir=" + st.path(layersDir, st.dirs["ctr"]),
		"workdir=" + st.path(workDir, st.dirs["ctr"]),
	}}
	if err := m.Mount(root); err != nil {
		t.Fatal(err)
	}
	mounted := true
	t.Cleanup(func() {
		if mounted {
			mount.UnmountAll(root, 0)
		}
	})
	if err := os.Remove(st.path(dbFile)); err != nil {
		t.Fatal(err)
	}
	r, err := Fsck(context.Background(), st.root, FsckOptions{DiscardUnindexed: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"base", "top", "ctr"} {
		if !exists(st.path(layersDir, st.dirs[key])) {
			t.Errorf("fsck --discard-unindexed deleted %s's layer under a running container", key)
		}
	}
	if all := strings.Join(r.Findings, "\n"); !strings.Contains(all, "stop the containers on strata") {
		t.Errorf("fsck does not say why it kept the layers: %q", r.Findings)
	}
	if b, err := os.ReadFile(filepath.Join(root, "f")); err != nil || string(b) != "base" {
		t.Errorf("the container's root reads %q, %v", b, err)
	}
	if err := mount.UnmountAll(root, 0); err != nil {
		t.Fatal(err)
	}
	mounted = false
	if _, err := Fsck(context.Background(), st.root, FsckOptions{DiscardUnindexed: true}); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"base", "top", "ctr"} {
		if exists(st.path(layersDir, st.dirs[key])) {
			t.Errorf("fsck --discard-unindexed kept %s's layer once no container used it", key)
		}
	}
}

// TestRemoveRefusedUnderContainer: removing the snapshot a running
// container's root stands on (ctr snapshots rm) is refused, and its files
// and record stay; once the container is gone, it is removed.
func TestRemoveRefusedUnderContainer(t *testing.T) {
	sn, _ := newTestSnapshotter(t, WithSyncRemove)
	ctx := context.Background()
	commitLayer(t, sn, "base", "", map[string]string{"f": "base"})
	ms, err := sn.Prepare(ctx, "ctr", "base")
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if err := mount.All(ms, root); err != nil {
		t.Fatal(err)
	}
	mounted := true
	t.Cleanup(func() {
		if mounted {
			mount.UnmountAll(root, 0)
		}
	})
	if err := os.WriteFile(filepath.Join(root, "written"), []byte("by the container"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := sn.Remove(ctx, "ctr"); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), root) {
		t.Fatalf("remove of a running container's snapshot: %v, want FailedPrecondition naming its mount", err)
	}
	if b, err := os.ReadFile(filepath.Join(root, "written")); err != nil || string(b) != "by the container" {
		t.Fatalf("the container's file after the refused remove: %q, %v", b, err)
	}
	if err := mount.UnmountAll(root, 0); err != nil {
		t.Fatal(err)
	}
	mounted = false
	if err := sn.Remove(ctx, "ctr"); err != nil {
		t.Fatalf("remove once the container is gone: %v", err)
	}
}

// TestIndexLostOrEmpty: with layers on disk and the index missing, or an
// empty file in its place, every start refuses and creates nothing, fsck
// says the same, and only fsck --discard-unindexed deletes the layers, after
// which strata starts an empty store.
func TestIndexLostOrEmpty(t *testing.T) {
	for name, damage := range map[string]func(string) error{
		"missing": os.Remove,
		"empty":   func(p string) error { return os.Truncate(p, 0) },
	} {
		t.Run(name, func(t *testing.T) {
			st := newStore(t)
			if err := damage(st.path(dbFile)); err != nil {
				t.Fatal(err)
			}
			const remedy = "--discard-unindexed"
			refusedEveryTime(t, st.root, remedy, errdefs.IsFailedPrecondition)
			before := snapshotOf(t, st.root)
			for _, opts := range []FsckOptions{{}, {Repair: true}} {
				if _, err := Fsck(context.Background(), st.root, opts); err == nil || !strings.Contains(err.Error(), remedy) {
					t.Fatalf("fsck %+v of a store without its index: %v, want the refusal naming %s", opts, err, remedy)
				}
			}
			if after := snapshotOf(t, st.root); after != before {
				t.Fatalf("fsck changed a store without its index:\n%s\n->\n%s", before, after)
			}

			r, err := Fsck(context.Background(), st.root, FsckOptions{DiscardUnindexed: true})
			if err != nil {
				t.Fatal(err)
			}
			if len(r.Removed) < 4 {
				t.Fatalf("discard removed %v, want the 4 layer directories and the container's work directory", r.Removed)
			}
			sn, err := New(context.Background(), st.root)
			if err != nil {
				t.Fatalf("start after discard: %v", err)
			}
			if got := entries(t, st.root); got != "" {
				t.Fatalf("after discard the store holds %s", got)
			}
			if _, err := Fsck(context.Background(), st.root, FsckOptions{DiscardUnindexed: true}); !errdefs.IsUnavailable(err) {
				t.Fatalf("discard while the daemon runs: %v, want Unavailable", err)
			}
			sn.Close()
		})
	}
}

// TestIndexUnreadable: an index that is not a bbolt file, or that a newer
// strata wrote, is refused on every start without a change to it or to any
// layer.
func TestIndexUnreadable(t *testing.T) {
	t.Run("not bbolt", func(t *testing.T) {
		st := newStore(t)
		if err := os.WriteFile(st.path(dbFile), bytes.Repeat([]byte("not an index\n"), 1000), 0o600); err != nil {
			t.Fatal(err)
		}
		refusedEveryTime(t, st.root, "not a readable bbolt file", errdefs.IsDataLoss)
		if _, err := Fsck(context.Background(), st.root, FsckOptions{Repair: true}); !errdefs.IsDataLoss(err) {
			t.Fatalf("fsck --repair of an unreadable index: %v, want DataLoss", err)
		}
		// fsck changed nothing: the next starts refuse as before.
		refusedEveryTime(t, st.root, "not a readable bbolt file", errdefs.IsDataLoss)
	})
	t.Run("newer schema", func(t *testing.T) {
		st := newStore(t)
		editIndex(t, st.root, func(tx *bolt.Tx) error {
			return tx.Bucket([]byte("strata")).Put([]byte("schema"), binary.BigEndian.AppendUint32(nil, 99))
		})
		refusedEveryTime(t, st.root, "newer strata", errdefs.IsFailedPrecondition)
		before := snapshotOf(t, st.root)
		for _, o := range []FsckOptions{{}, {Repair: true}, {DiscardUnindexed: true}} {
			if _, err := Fsck(context.Background(), st.root, o); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "newer strata") {
				t.Fatalf("fsck %+v of an index from a newer strata: %v, want FailedPrecondition naming it", o, err)
			}
		}
		if after := snapshotOf(t, st.root); before != after {
			t.Fatalf("fsck of an index from a newer strata changed the store:\nbefore %v\nafter  %v", before, after)
		}
		refusedEveryTime(t, st.root, "newer strata", errdefs.IsFailedPrecondition)
	})
}

// TestRecordedLayerMissing: a snapshot whose directory an operator deleted
// is reported at start and by fsck, and nothing else is touched; --repair
// does not delete the record or anything of another snapshot.
func TestRecordedLayerMissing(t *testing.T) {
	st := newStore(t)
	if err := os.RemoveAll(st.path(layersDir, st.dirs["ctr"])); err != nil {
		t.Fatal(err)
	}
	st.checkIntact(t, "ctr")
	fsckSays(t, st.root, FsckOptions{Repair: true}, `snapshot "ctr": its layer directory`)
	st.checkIntact(t, "ctr")
	fsckSays(t, st.root, FsckOptions{}, `snapshot "ctr": its layer directory`)
}

// TestInterruptedOperations: what each crash leaves (a layer being built, a
// layer of a Prepare that did not commit, removals that did and did not
// commit, a start-up probe), handled the same way by start-up and by fsck
// --repair: the recorded snapshots' directories go back, the rest goes, and
// what strata did not make stays.
func TestInterruptedOperations(t *testing.T) {
	for _, first := range []string{"start", "fsck --repair"} {
		t.Run(first, func(t *testing.T) {
			st := newStore(t)
			// Removals of the committed bottom layer and of the
			// container cut off before their transactions committed.
			for _, m := range [][2]string{
				{st.path(layersDir, st.dirs["base"]), st.path(layersDir, removePrefix+st.dirs["base"])},
				{st.path(layersDir, st.dirs["ctr"]), st.path(layersDir, removePrefix+st.dirs["ctr"])},
				{st.path(workDir, st.dirs["ctr"]), st.path(workDir, removePrefix+st.dirs["ctr"])},
			} {
				if err := os.Rename(m[0], m[1]); err != nil {
					t.Fatal(err)
				}
			}
			// A Prepare that did not commit: its (empty) layer and its
			// work directory.
			if err := os.Mkdir(st.path(layersDir, "QQQQQQ"), 0o755); err != nil {
				t.Fatal(err)
			}
			garbage := []string{
				st.path(layersDir, "QQQQQQ"),
				st.path(workDir, "QQQQQQ"),
				st.path(layersDir, tempPrefix+"123"),            // a layer being built
				st.path(layersDir, removePrefix+"ZZZZZZ"),       // a committed removal
				st.path(workDir, removePrefix+"ZZZZZZ"),         // its work directory
				st.path(probePrefix + "42"),                     // a start-up probe
				st.path(layersDir, removePrefix+st.dirs["top"]), // a committed removal of a name since reused
			}
			foreign := []string{st.path("backup"), st.path(layersDir, "backup.tar"), st.path(workDir, "notes")}
			for _, d := range append(garbage[1:], foreign...) {
				if err := os.MkdirAll(filepath.Join(d, "sub"), 0o755); err != nil {
					t.Fatal(err)
				}
			}

			r := fsckSays(t, st.root, FsckOptions{},
				removePrefix+st.dirs["base"]+" is the directory of a recorded snapshot",
				removePrefix+st.dirs["ctr"]+" is the directory of a recorded snapshot",
				tempPrefix+"123 belongs to no snapshot",
				probePrefix+"42 belongs to no snapshot",
				"backup is not a name strata makes")
			if len(r.Removed)+len(r.Restored) != 0 {
				t.Fatalf("fsck without --repair changed the store: %+v", r)
			}
			if first == "fsck --repair" {
				r := fsckSays(t, st.root, FsckOptions{Repair: true})
				if len(r.Restored) != 3 || len(r.Removed) != len(garbage) {
					t.Fatalf("repair restored %v and removed %v; want the 3 moved directories back and the %d leftovers gone",
						r.Restored, r.Removed, len(garbage))
				}
			}
			st.checkIntact(t)
			for _, d := range garbage {
				if exists(d) {
					t.Errorf("%s survived %s and a start", d, first)
				}
			}
			for _, d := range foreign {
				if !exists(d) {
					t.Errorf("%s, which strata did not make, was deleted", d)
				}
			}
			for _, d := range foreign {
				os.RemoveAll(d)
			}
			if r := fsckSays(t, st.root, FsckOptions{}); len(r.Findings) != 0 {
				t.Fatalf("after %s and a start, fsck finds %q", first, r.Findings)
			}
		})
	}
}

// TestStaleIndexKeepsLayers: an older copy of the index put back (as the
// recovery table says) and a damaged directory index entry: layers the
// index does not record, or records only in the snapshot's own record, are
// never deleted by start-up or fsck --repair; unindexed ones go only with
// fsck --discard-unindexed.
func TestStaleIndexKeepsLayers(t *testing.T) {
	st := newStore(t)
	old, err := os.ReadFile(st.path(dbFile))
	if err != nil {
		t.Fatal(err)
	}
	sn, err := New(context.Background(), st.root)
	if err != nil {
		t.Fatal(err)
	}
	commitLayer(t, sn, "newer", "top", map[string]string{"n": "newer"})
	newer, err := sn.(*snapshotter).get("newer")
	if err != nil {
		t.Fatal(err)
	}
	sn.Close()
	newerDir := st.path(layersDir, newer.DirName)
	if err := os.WriteFile(st.path(dbFile), old, 0o600); err != nil {
		t.Fatal(err)
	}
	// And the directory index loses the bottom layer's entry.
	editIndex(t, st.root, func(tx *bolt.Tx) error {
		dirs := tx.Bucket([]byte("strata")).Bucket([]byte("dirs"))
		c := dirs.Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			if strings.HasPrefix(string(k), st.dirs["base"]) {
				return dirs.Delete(k)
			}
		}
		return nil
	})

	st.checkIntact(t)
	fsckSays(t, st.root, FsckOptions{Repair: true}, newerDir+" is not recorded by the index but is not garbage")
	st.checkIntact(t)
	if !exists(filepath.Join(newerDir, "n")) {
		t.Fatalf("the layer the older index does not record was deleted")
	}
	r, err := Fsck(context.Background(), st.root, FsckOptions{DiscardUnindexed: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Removed) != 2 || r.Removed[0] != newerDir {
		t.Fatalf("discard removed %v, want %s and its work directory", r.Removed, newerDir)
	}
	st.checkIntact(t)
}

// editIndex changes the index of the stopped store at root directly, as a
// damaged disk or another version of strata would, in one transaction.
func editIndex(t *testing.T, root string, fn func(*bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(root, dbFile), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
}
