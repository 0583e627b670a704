package metadata

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

func openTest(t *testing.T) (*DB, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "metadata.db")
	db, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db, path
}

func create(t *testing.T, db *DB, key, parent string, kind snapshots.Kind) Snapshot {
	t.Helper()
	var s Snapshot
	err := db.Write(func(tx *Tx) (err error) {
		s, err = tx.CreateSnapshot(NewSnapshot{Key: key, Kind: kind, Parent: parent, DirName: "L" + key})
		return err
	})
	if err != nil {
		t.Fatalf("create %s: %v", key, err)
	}
	return s
}

func commit(t *testing.T, db *DB, key, name string) Snapshot {
	t.Helper()
	var s Snapshot
	err := db.Write(func(tx *Tx) error {
		a, err := tx.Get(key)
		if err != nil {
			return err
		}
		s, err = tx.CommitSnapshot(key, name, a.ID, Usage{Size: 4096, Inodes: 3, Bytes: 10}, snapshots.Info{})
		return err
	})
	if err != nil {
		t.Fatalf("commit %s: %v", key, err)
	}
	return s
}

// TestSchemaVersion: a new file records the current version; a file written
// by a newer strata is refused with a message saying so.
func TestSchemaVersion(t *testing.T) {
	db, path := openTest(t)
	if err := db.View(func(tx *Tx) error {
		if v := tx.storedSchema(); v != SchemaVersion {
			t.Errorf("recorded schema %d, want %d", v, SchemaVersion)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()

	// Reopening the current version works.
	db, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()

	// Stamp the file as a future version, as a newer strata would.
	editFile(t, path, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRoot).Put(keySchema, binary.BigEndian.AppendUint32(nil, SchemaVersion+1))
	})
	_, err = Open(context.Background(), path)
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "newer strata") {
		t.Fatalf("opening a newer schema: %v, want FailedPrecondition saying it is newer", err)
	}
}

// TestMigrateSchema1: a version 1 file (one snapshot per directory,
// dirs/<dir> -> id) opens as the current version with the same snapshots,
// each still owning its directory, and a clean Check.
func TestMigrateSchema1(t *testing.T) {
	db, path := openTest(t)
	var ids = map[string]uint64{}
	err := db.Write(func(tx *Tx) error {
		for _, k := range []string{"a", "b"} {
			s, err := tx.CreateSnapshot(NewSnapshot{Key: k, Kind: snapshots.KindActive, DirName: "D" + k})
			if err != nil {
				return err
			}
			ids[k] = s.ID
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	// Rewrite it as strata of schema 1 wrote it.
	editFile(t, path, func(tx *bolt.Tx) error {
		root := tx.Bucket(bucketRoot)
		if err := root.DeleteBucket(bucketObjects); err != nil {
			return err
		}
		if err := root.DeleteBucket(bucketReleased); err != nil {
			return err
		}
		if err := root.DeleteBucket(bucketRefs); err != nil {
			return err
		}
		if err := root.DeleteBucket(bucketDirs); err != nil {
			return err
		}
		dirs, err := root.CreateBucket(bucketDirs)
		if err != nil {
			return err
		}
		for k, id := range ids {
			if err := dirs.Put([]byte("D"+k), u64(id)); err != nil {
				return err
			}
		}
		return root.Put(keySchema, binary.BigEndian.AppendUint32(nil, 1))
	})
	// A check changes nothing: it refuses to read the old schema.
	if _, err := OpenReadOnly(context.Background(), path); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "migrates") {
		t.Fatalf("read-only open of schema 1: %v, want FailedPrecondition saying the daemon migrates it", err)
	}
	openMigrated(t, path, func(tx *Tx) {
		for k, id := range ids {
			if got := tx.DirUsers("D" + k); len(got) != 1 || got[0] != id {
				t.Errorf("directory D%s belongs to %v after migration, want [%d]", k, got, id)
			}
		}
	})
}

// openMigrated opens the index at path read-write, as the daemon does, and
// checks that it then records the current schema and agrees with itself;
// check adds the test's own checks.
func openMigrated(t *testing.T, path string, check func(*Tx)) {
	t.Helper()
	db, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(tx *Tx) error {
		if v := tx.storedSchema(); v != SchemaVersion {
			t.Errorf("schema %d after migration, want %d", v, SchemaVersion)
		}
		check(tx)
		if f := tx.Check(); len(f) != 0 {
			t.Errorf("migrated index has findings: %q", f)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// downgrade rewrites the index at path as a strata of schema version wrote
// it: without the buckets that version did not have.
func downgrade(t *testing.T, path string, version uint32, buckets ...[]byte) {
	t.Helper()
	editFile(t, path, func(tx *bolt.Tx) error {
		root := tx.Bucket(bucketRoot)
		for _, b := range buckets {
			if err := root.DeleteBucket(b); err != nil {
				return err
			}
		}
		return root.Put(keySchema, binary.BigEndian.AppendUint32(nil, version))
	})
}

// TestMigrateSchema2: an index of schema 2 has no refs index; opening it
// builds one from the committed snapshots' layer labels, and lookups by
// layer find them.
func TestMigrateSchema2(t *testing.T) {
	db, path := openTest(t)
	ref := map[string]string{snapshots.LabelSnapshotRef: "sha256:layer"}
	err := db.Write(func(tx *Tx) error {
		for _, k := range []string{"base", "other"} {
			a, err := tx.CreateSnapshot(NewSnapshot{Key: k + "-a", Kind: snapshots.KindActive, DirName: "D" + k})
			if err != nil {
				return err
			}
			labels := ref
			if k == "other" {
				labels = nil
			}
			if _, err := tx.CommitSnapshot(k+"-a", k, a.ID, Usage{Size: 1, Inodes: 1}, snapshots.Info{Labels: labels}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	downgrade(t, path, 2, bucketObjects, bucketReleased, bucketRefs)
	openMigrated(t, path, func(tx *Tx) {
		if s, ok, err := tx.CommittedWithRef("sha256:layer", ""); err != nil || !ok || s.Key != "base" {
			t.Errorf("layer lookup after migration: %q %v %v, want base", s.Key, ok, err)
		}
	})
}

// TestMigrateSchema3: an index of schema 3 has no objects bucket; opening
// it adds an empty one, and its layers share no files.
func TestMigrateSchema3(t *testing.T) {
	db, path := openTest(t)
	err := db.Write(func(tx *Tx) error {
		_, err := tx.CreateSnapshot(NewSnapshot{Key: "a", Kind: snapshots.KindActive, DirName: "DA"})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	downgrade(t, path, 3, bucketObjects, bucketReleased)
	openMigrated(t, path, func(tx *Tx) {
		if tx.HasObjects("DA") || len(tx.Objects()) != 0 {
			t.Errorf("migrated index shares files: %v", tx.Objects())
		}
	})
}

// TestObjectsFollowDirectories: the objects a layer's stubs stand for are
// recorded by its directory, add up across calls, are shared by snapshots
// of one directory, and are forgotten only with the directory's last
// snapshot.
func TestObjectsFollowDirectories(t *testing.T) {
	db, _ := openTest(t)
	one := digest.FromString("one")
	two := digest.FromString("two")
	write := func(fn func(*Tx) error) {
		t.Helper()
		if err := db.Write(fn); err != nil {
			t.Fatal(err)
		}
	}
	objectsOf := func() (objs map[digest.Digest]ObjectRefs, shares bool) {
		t.Helper()
		_ = db.View(func(tx *Tx) error {
			objs, shares = tx.Objects(), tx.HasObjects("DL")
			return nil
		})
		return objs, shares
	}
	write(func(tx *Tx) error {
		a, err := tx.CreateSnapshot(NewSnapshot{Key: "a", Kind: snapshots.KindActive, DirName: "DL"})
		if err != nil {
			return err
		}
		if err := tx.ShareFiles("DL", map[digest.Digest]ObjectUse{one: {Size: 10, Files: 1}}); err != nil {
			return err
		}
		if err := tx.ShareFiles("DL", map[digest.Digest]ObjectUse{two: {Size: 20, Files: 2}}); err != nil {
			return err
		}
		_, err = tx.CommitSnapshot("a", "layer", a.ID, Usage{Size: 1, Inodes: 1}, snapshots.Info{})
		return err
	})
	// A second snapshot of the directory, as a staged commit makes.
	write(func(tx *Tx) error {
		_, err := tx.CreateSnapshot(NewSnapshot{Key: "staged", Kind: snapshots.KindActive, DirName: "DL", Staged: true})
		return err
	})
	want := map[digest.Digest]ObjectRefs{one: {Size: 10, Dirs: []string{"DL"}}, two: {Size: 20, Dirs: []string{"DL"}}}
	if objs, shares := objectsOf(); !shares || !reflect.DeepEqual(objs, want) {
		t.Fatalf("objects %v (sharing %v), want %v", objs, shares, want)
	}
	write(func(tx *Tx) error { _, err := tx.RemoveSnapshot("layer"); return err })
	if objs, shares := objectsOf(); !shares || !reflect.DeepEqual(objs, want) {
		t.Fatalf("objects after removing one of two snapshots of the directory: %v (sharing %v), want %v", objs, shares, want)
	}
	write(func(tx *Tx) error { _, err := tx.RemoveSnapshot("staged"); return err })
	if objs, shares := objectsOf(); shares || len(objs) != 0 {
		t.Fatalf("objects after the directory's last snapshot went: %v (sharing %v)", objs, shares)
	}
	// Released, for the store to delete them.
	_ = db.View(func(tx *Tx) error {
		got := tx.Released()
		sort.Slice(got, func(i, j int) bool { return got[i] < got[j] })
		want := []digest.Digest{one, two}
		sort.Slice(want, func(i, j int) bool { return want[i] < want[j] })
		if !reflect.DeepEqual(got, want) {
			t.Errorf("released %v, want %v", got, want)
		}
		return nil
	})
}

// TestRefsIndex: the layer lookup follows commits, label updates and
// removals, and the index stays consistent.
func TestRefsIndex(t *testing.T) {
	db, _ := openTest(t)
	const layer = "sha256:layer"
	find := func() string {
		var key string
		err := db.View(func(tx *Tx) error {
			if f := tx.Check(); len(f) != 0 {
				t.Errorf("findings: %q", f)
			}
			s, ok, err := tx.CommittedWithRef(layer, "")
			if ok {
				key = s.Key
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return key
	}
	update := func(labels map[string]string) {
		err := db.Write(func(tx *Tx) error {
			_, err := tx.UpdateInfo(snapshots.Info{Name: "base", Labels: labels}, "labels."+snapshots.LabelSnapshotRef)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	a := create(t, db, "base-a", "", snapshots.KindActive)
	err := db.Write(func(tx *Tx) error {
		_, err := tx.CommitSnapshot("base-a", "base", a.ID, Usage{Size: 1, Inodes: 1}, snapshots.Info{Labels: map[string]string{snapshots.LabelSnapshotRef: layer}})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if k := find(); k != "base" {
		t.Fatalf("after commit: %q, want base", k)
	}
	update(nil)
	if k := find(); k != "" {
		t.Fatalf("after the label's removal: %q, want none", k)
	}
	update(map[string]string{snapshots.LabelSnapshotRef: layer})
	if k := find(); k != "base" {
		t.Fatalf("after the label is set again: %q, want base", k)
	}
	if err := db.Write(func(tx *Tx) error { _, err := tx.RemoveSnapshot("base"); return err }); err != nil {
		t.Fatal(err)
	}
	if k := find(); k != "" {
		t.Fatalf("after removal: %q, want none", k)
	}
}

// TestRefsIndexRebuilt: a refs index that disagrees with the records (an
// entry naming no record, one missing) gives DataLoss on lookup, not
// NotFound, and is rebuilt when the index is opened read-write.
func TestRefsIndexRebuilt(t *testing.T) {
	db, path := openTest(t)
	a := create(t, db, "base-a", "", snapshots.KindActive)
	err := db.Write(func(tx *Tx) error {
		_, err := tx.CommitSnapshot("base-a", "base", a.ID, Usage{Size: 1, Inodes: 1}, snapshots.Info{Labels: map[string]string{snapshots.LabelSnapshotRef: "sha256:layer"}})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	editFile(t, path, func(tx *bolt.Tx) error {
		refs := tx.Bucket(bucketRoot).Bucket(bucketRefs)
		if err := refs.Delete(refKey("sha256:layer", a.ID)); err != nil {
			return err
		}
		return refs.Put(refKey("sha256:layer", 999), []byte("gone"))
	})
	rebuilt := func(tx *Tx) {
		if s, ok, err := tx.CommittedWithRef("sha256:layer", ""); err != nil || !ok || s.Key != "base" {
			t.Errorf("lookup after the rebuild: %q %v %v", s.Key, ok, err)
		}
	}
	viewReadOnly(t, path, func(tx *Tx) {
		if f := tx.Check(); len(f) != 2 {
			t.Errorf("findings %q, want the missing and the stale entry", f)
		}
		if _, _, err := tx.CommittedWithRef("sha256:layer", ""); !errdefs.IsDataLoss(err) {
			t.Errorf("lookup through a stale entry: %v, want DataLoss", err)
		}
	})
	openMigrated(t, path, rebuilt)
	// A missing index is reported by a check, and rebuilt too.
	editFile(t, path, func(tx *bolt.Tx) error { return tx.Bucket(bucketRoot).DeleteBucket(bucketRefs) })
	viewReadOnly(t, path, func(tx *Tx) {
		if f := tx.Check(); len(f) != 1 || !strings.Contains(f[0], "missing") {
			t.Errorf("findings %q, want the missing index", f)
		}
		if _, _, err := tx.CommittedWithRef("sha256:layer", ""); !errdefs.IsDataLoss(err) {
			t.Errorf("lookup without the index: %v, want DataLoss", err)
		}
	})
	openMigrated(t, path, rebuilt)
}

// viewReadOnly opens the index at path read-only, as fsck does, and runs
// check in a read transaction.
func viewReadOnly(t *testing.T, path string, check func(*Tx)) {
	t.Helper()
	db, err := OpenReadOnly(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.View(func(tx *Tx) error { check(tx); return nil }); err != nil {
		t.Fatal(err)
	}
}

// TestSecondOpenRefused: bolt's lock keeps a second process (here, a second
// Open) out with a clear error instead of a hang.
func TestSecondOpenRefused(t *testing.T) {
	_, path := openTest(t)
	_, err := Open(context.Background(), path)
	if err == nil || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("second open: %v", err)
	}
}

// TestIndexes: ids, children and directory names follow every create, commit and
// remove.
func TestIndexes(t *testing.T) {
	db, _ := openTest(t)
	create(t, db, "base-a", "", snapshots.KindActive)
	base := commit(t, db, "base-a", "base")
	c1 := create(t, db, "c1", "base", snapshots.KindActive)
	v1 := create(t, db, "v1", "base", snapshots.KindView)

	err := db.View(func(tx *Tx) error {
		kids := tx.Children(base.ID)
		sort.Strings(kids)
		if fmt.Sprint(kids) != "[c1 v1]" {
			t.Errorf("children of base: %v", kids)
		}
		if got, err := tx.GetByID(c1.ID); err != nil || got.Key != "c1" {
			t.Errorf("by id %d: %+v, %v", c1.ID, got, err)
		}
		dirs := tx.Dirs()
		if fmt.Sprint(dirs["Lbase-a"]) != fmt.Sprint([]uint64{base.ID}) || fmt.Sprint(dirs["Lc1"]) != fmt.Sprint([]uint64{c1.ID}) || fmt.Sprint(dirs["Lv1"]) != fmt.Sprint([]uint64{v1.ID}) {
			t.Errorf("dirs: %v", dirs)
		}
		if got, _ := tx.Get("base"); got.Usage != (Usage{Size: 4096, Inodes: 3, Bytes: 10}) || got.Kind != snapshots.KindCommitted {
			t.Errorf("committed record: %+v", got)
		}
		if _, err := tx.Get("base-a"); !errdefs.IsNotFound(err) {
			t.Errorf("active key still there after commit: %v", err)
		}
		lowers, err := tx.ChainDirs(c1)
		if err != nil || len(lowers) != 1 || lowers[0] != base.DirName {
			t.Errorf("chain of c1: %q, %v; want [%q]", lowers, err, base.DirName)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// Remove: refused with children, then index entries go with each.
	err = db.Write(func(tx *Tx) error {
		_, err := tx.RemoveSnapshot("base")
		return err
	})
	if !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("remove with children: %v", err)
	}
	for _, k := range []string{"c1", "v1", "base"} {
		if err := db.Write(func(tx *Tx) error { _, err := tx.RemoveSnapshot(k); return err }); err != nil {
			t.Fatalf("remove %s: %v", k, err)
		}
	}
	err = db.View(func(tx *Tx) error {
		if len(tx.recordedIDs()) != 0 || len(tx.Dirs()) != 0 || len(tx.Children(base.ID)) != 0 {
			t.Errorf("indexes not empty: ids %v dirs %v children %v", tx.recordedIDs(), tx.Dirs(), tx.Children(base.ID))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestErrorKinds: each misuse gets the errdefs kind clients act on.
func TestErrorKinds(t *testing.T) {
	db, _ := openTest(t)
	create(t, db, "base-a", "", snapshots.KindActive)
	commit(t, db, "base-a", "base")
	active := create(t, db, "active", "base", snapshots.KindActive)
	create(t, db, "view", "base", snapshots.KindView)

	for _, tc := range []struct {
		name string
		fn   func(tx *Tx) error
		is   func(error) bool
	}{
		{"create existing", func(tx *Tx) error {
			_, err := tx.CreateSnapshot(NewSnapshot{Key: "active", Kind: snapshots.KindActive, DirName: "new"})
			return err
		}, errdefs.IsAlreadyExists},
		{"create with used directory name", func(tx *Tx) error {
			_, err := tx.CreateSnapshot(NewSnapshot{Key: "x", Kind: snapshots.KindActive, DirName: "Lactive"})
			return err
		}, errdefs.IsAlreadyExists},
		{"create committed kind", func(tx *Tx) error {
			_, err := tx.CreateSnapshot(NewSnapshot{Key: "x", Kind: snapshots.KindCommitted, DirName: "new"})
			return err
		}, errdefs.IsInvalidArgument},
		{"create on missing parent", func(tx *Tx) error {
			_, err := tx.CreateSnapshot(NewSnapshot{Key: "x", Kind: snapshots.KindActive, Parent: "nope", DirName: "new"})
			return err
		}, errdefs.IsNotFound},
		{"create on active parent", func(tx *Tx) error {
			_, err := tx.CreateSnapshot(NewSnapshot{Key: "x", Kind: snapshots.KindActive, Parent: "active", DirName: "new"})
			return err
		}, errdefs.IsInvalidArgument},
		{"commit a view", func(tx *Tx) error {
			v, _ := tx.Get("view")
			_, err := tx.CommitSnapshot("view", "n", v.ID, Usage{}, snapshots.Info{})
			return err
		}, errdefs.IsFailedPrecondition},
		{"commit with stale id", func(tx *Tx) error {
			_, err := tx.CommitSnapshot("active", "n", active.ID+100, Usage{}, snapshots.Info{})
			return err
		}, errdefs.IsFailedPrecondition},
		{"commit onto existing name", func(tx *Tx) error {
			_, err := tx.CommitSnapshot("active", "base", active.ID, Usage{}, snapshots.Info{})
			return err
		}, errdefs.IsAlreadyExists},
		{"commit changing parent", func(tx *Tx) error {
			_, err := tx.CommitSnapshot("active", "n", active.ID, Usage{}, snapshots.Info{Parent: "other"})
			return err
		}, errdefs.IsInvalidArgument},
		{"update immutable field", func(tx *Tx) error {
			_, err := tx.UpdateInfo(snapshots.Info{Name: "base"}, "parent")
			return err
		}, errdefs.IsInvalidArgument},
		{"get missing", func(tx *Tx) error { _, err := tx.Get("nope"); return err }, errdefs.IsNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := db.Write(tc.fn)
			if !tc.is(err) {
				t.Fatalf("got %v", err)
			}
		})
	}
}

// TestUpdateLabels follows containerd's fieldpath rules.
func TestUpdateLabels(t *testing.T) {
	db, _ := openTest(t)
	err := db.Write(func(tx *Tx) error {
		_, err := tx.CreateSnapshot(NewSnapshot{Key: "a", Kind: snapshots.KindActive, DirName: "La", Labels: map[string]string{"keep": "1", "drop": "2"}})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	update := func(info snapshots.Info, paths ...string) map[string]string {
		t.Helper()
		var s Snapshot
		if err := db.Write(func(tx *Tx) (err error) { s, err = tx.UpdateInfo(info, paths...); return err }); err != nil {
			t.Fatal(err)
		}
		var again Snapshot
		db.View(func(tx *Tx) (err error) { again, err = tx.Get("a"); return err })
		if fmt.Sprint(again.Labels) != fmt.Sprint(s.Labels) {
			t.Fatalf("returned %v but stored %v", s.Labels, again.Labels)
		}
		return s.Labels
	}
	if got := update(snapshots.Info{Name: "a", Labels: map[string]string{"new": "3"}}, "labels.new", "labels.drop"); fmt.Sprint(got) != "map[keep:1 new:3]" {
		t.Fatalf("labels.KEY update: %v", got)
	}
	if got := update(snapshots.Info{Name: "a", Labels: map[string]string{"only": "4"}}); fmt.Sprint(got) != "map[only:4]" {
		t.Fatalf("whole update: %v", got)
	}
}

// TestConcurrentReaders: readers see a consistent index while a writer
// commits, and never block each other (run with -race).
func TestConcurrentReaders(t *testing.T) {
	db, _ := openTest(t)
	create(t, db, "base-a", "", snapshots.KindActive)
	commit(t, db, "base-a", "base")
	const writes = 200
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan error, 16)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				err := db.View(func(tx *Tx) error {
					// Every child listed under base must exist, with base
					// as its parent.
					b, err := tx.Get("base")
					if err != nil {
						return err
					}
					for _, k := range tx.Children(b.ID) {
						c, err := tx.Get(k)
						if err != nil || c.Parent != "base" {
							return fmt.Errorf("child %s: %+v, %v", k, c, err)
						}
					}
					return nil
				})
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for i := range writes {
		create(t, db, fmt.Sprintf("c%d", i), "base", snapshots.KindActive)
		if i%2 == 0 {
			if err := db.Write(func(tx *Tx) error { _, err := tx.RemoveSnapshot(fmt.Sprintf("c%d", i)); return err }); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	db.View(func(tx *Tx) error {
		b, _ := tx.Get("base")
		if n := len(tx.Children(b.ID)); n != writes/2 {
			t.Fatalf("%d children, want %d", n, writes/2)
		}
		return nil
	})
}

// TestReserveIDs: ids up to a reserved one are never handed out.
func TestReserveIDs(t *testing.T) {
	db, _ := openTest(t)
	if err := db.Write(func(tx *Tx) error { return tx.ReserveIDsThrough(100000) }); err != nil {
		t.Fatal(err)
	}
	if s := create(t, db, "a", "", snapshots.KindActive); s.ID != 100001 {
		t.Fatalf("id %d, want 100001", s.ID)
	}
	// Reserving below the counter does not move it back.
	if err := db.Write(func(tx *Tx) error { return tx.ReserveIDsThrough(5) }); err != nil {
		t.Fatal(err)
	}
	if s := create(t, db, "b", "", snapshots.KindActive); s.ID != 100002 {
		t.Fatalf("id %d, want 100002", s.ID)
	}
}

// TestCheck: a consistent index has no findings; each kind of damage, done
// to the file as a bug or a bad disk would, is found.
func TestCheck(t *testing.T) {
	db, path := openTest(t)
	create(t, db, "base-a", "", snapshots.KindActive)
	base := commit(t, db, "base-a", "base")
	c1 := create(t, db, "c1", "base", snapshots.KindActive)
	check := func() []string {
		var f []string
		db.View(func(tx *Tx) error { f = tx.Check(); return nil })
		return f
	}
	if f := check(); len(f) != 0 {
		t.Fatalf("a consistent index has findings: %v", f)
	}
	db.Close()

	for _, tc := range []struct {
		name   string
		damage func(root *bolt.Bucket) error
		want   string
	}{
		{"child link lost", func(r *bolt.Bucket) error {
			return r.Bucket(bucketChildren).Delete(childKey(base.ID, c1.ID))
		}, `snapshot "c1" is missing from the children of "base"`},
		{"id index lost", func(r *bolt.Bucket) error { return r.Bucket(bucketIDs).Delete(u64(c1.ID)) }, `snapshot "c1" has id`},
		{"stray directory entry", func(r *bolt.Bucket) error { return r.Bucket(bucketDirs).Put(dirKey("STRAY1", 999), nil) }, `directory index entry "STRAY1" (snapshot id 999) belongs to no snapshot`},
		{"parent gone", func(r *bolt.Bucket) error {
			return r.Bucket(bucketSnapshots).Bucket([]byte("c1")).Put(fieldParent, []byte("nope"))
		}, `parent "nope", which does not exist`},
		{"implausible usage", func(r *bolt.Bucket) error {
			return r.Bucket(bucketSnapshots).Bucket([]byte("base")).Put(fieldInodes, u64(0))
		}, `implausible stored usage`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			copyPath := filepath.Join(t.TempDir(), "copy.db")
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(copyPath, b, 0o600)
			editFile(t, copyPath, func(tx *bolt.Tx) error { return tc.damage(tx.Bucket(bucketRoot)) })
			db, err := Open(context.Background(), copyPath)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			var f []string
			db.View(func(tx *Tx) error { f = tx.Check(); return nil })
			if !strings.Contains(strings.Join(f, "\n"), tc.want) {
				t.Fatalf("findings %q, want one containing %q", f, tc.want)
			}
		})
	}
}

// TestForeignBoltFileRefused: a bbolt file that is some other program's
// database is refused, not given strata's schema beside its data.
func TestForeignBoltFileRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "other.db")
	editFile(t, path, func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("theirs")); return err })
	if _, err := Open(context.Background(), path); !errdefs.IsDataLoss(err) || !strings.Contains(err.Error(), "not strata's index") {
		t.Fatalf("opening another program's bbolt file: %v, want DataLoss saying it is not strata's index", err)
	}
}

// editFile changes the bbolt file at path directly, as another program (or
// another version of strata) would, in one transaction.
func editFile(t *testing.T, path string, fn func(*bolt.Tx) error) {
	t.Helper()
	raw, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if err := raw.Update(fn); err != nil {
		t.Fatal(err)
	}
}
