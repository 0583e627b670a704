// Package metadata is strata's index of snapshots: a bbolt database that
// records every snapshot's key, id, kind, parent, labels, usage and the short
// name of the directory holding its layer.
//
// The schema is strata's own rather than containerd's core/snapshots/storage
// so that it can hold fields that package cannot (directory names, usage computed
// outside the write transaction) and grow with a recorded schema version.
//
// Layout of the file (every name below is a bolt bucket unless it is a key):
//
//	strata/
//	  schema            key: the schema version, big-endian uint32
//	  snapshots/<key>/  one bucket per snapshot, fields below
//	    id kind parent dir created updated size inodes bytes staged, labels/
//	  ids/<id>          id (big-endian uint64) -> key; its sequence hands out ids
//	  children/<p><c>   parent id + child id (big-endian) -> child key
//	  dirs/<dir><id>    directory name + id of a snapshot using it -> nothing
//	  refs/<n><ref><id> length (big-endian uint32) + value of a committed
//	                    snapshot's containerd.io/snapshot.ref label + its id
//	                    -> key: finds a layer without reading every record
//	  objects/<dir>/    a layer whose large files are stubs of objects of the
//	                    store (share_files)
//	    <digest>        an object stubs in the layer stand for -> its size and
//	                    the number of stubs (big-endian uint64s); recorded
//	                    before the stubs are made
//	    converting/     a conversion under way: directory path relative to
//	                    the layer -> its access and modification times
//	  released/<digest> an object a layer stood for when the layer went:
//	                    deleted once no layer stands for it (an object no
//	                    layer records and never released is kept: see the
//	                    snapshotter's ownership.go)
//
// A directory usually has one snapshot. A committed layer's directory may
// have several: the same layer (same chain id) committed again through
// containerd's parallel unpack, which strata serves from the directory it
// already has (see Snapshot.Staged). The directory goes only with its last
// snapshot.
//
// Every change happens inside one bolt transaction (Update); readers use View
// and never block the writer or each other.
package metadata

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// SchemaVersion is the version of the layout described in the package
// documentation. A file recording a newer version was written by a newer
// strata and is refused rather than misread; an older one is migrated when
// opened. Version 1 had dirs/<dir> -> id, one snapshot per directory;
// version 2 had no refs; version 3 had no objects.
const SchemaVersion = 4

var (
	bucketRoot      = []byte("strata")
	bucketSnapshots = []byte("snapshots")
	bucketIDs       = []byte("ids")
	bucketChildren  = []byte("children")
	bucketDirs      = []byte("dirs")
	bucketRefs      = []byte("refs")
	bucketObjects   = []byte("objects")
	bucketReleased  = []byte("released")
	keySchema       = []byte("schema")
)

// openTimeout bounds how long Open waits for bolt's file lock, so that a second
// daemon pointed at the same root fails with a clear message instead of
// hanging.
const openTimeout = 2 * time.Second

// DB is an open index.
type DB struct {
	db *bolt.DB
}

// Open opens (creating if needed) the index at path, checks that all of it
// reads, and migrates an older schema.
func Open(ctx context.Context, path string) (*DB, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create metadata directory: %w", err)
	}
	return open(ctx, path, false)
}

// OpenReadOnly opens an existing index for reading only, as a check does:
// it changes nothing, so an index of an older schema is refused rather than
// migrated.
func OpenReadOnly(ctx context.Context, path string) (*DB, error) {
	return open(ctx, path, true)
}

func open(ctx context.Context, path string, readOnly bool) (*DB, error) {
	bdb, err := openChecked(ctx, path, readOnly)
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("metadata database %s is locked by another process (is another strata running on this root?): %w", path, errdefs.ErrUnavailable)
		}
		return nil, fmt.Errorf("metadata database %s: %w", path, err)
	}
	return &DB{db: bdb}, nil
}

// openChecked opens the file with bbolt and checks that it is a whole strata
// index: as long as bbolt's own record of its pages says, and every bucket
// and key readable. bbolt maps the file into memory and asserts what it
// reads, so a damaged file makes it fault (SIGBUS past the end of a
// truncated file) or panic instead of returning an error: both are turned
// into errors here, before anything else reads the index. After a fault
// inside bolt.Open its mapping of the file stays, and with it its lock: the
// process is expected to exit (the daemon and fsck do), and another Open in
// it finds the file locked.
func openChecked(ctx context.Context, path string, readOnly bool) (bdb *bolt.DB, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	// The file is kept to close it after a fault inside bolt.Open, which
	// returns no handle then.
	var file *os.File
	openFile := func(name string, flag int, perm os.FileMode) (*os.File, error) {
		f, err := os.OpenFile(name, flag, perm)
		file = f
		return f, err
	}
	defer func() {
		if r := recover(); r != nil {
			if bdb != nil {
				bdb.Close()
			} else if file != nil {
				file.Close()
			}
			bdb, err = nil, fmt.Errorf("the file is damaged: %s: %w", readFailure(r), errdefs.ErrDataLoss)
		}
	}()
	bdb, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: openTimeout, OpenFile: openFile, ReadOnly: readOnly})
	if err != nil {
		if !errors.Is(err, bolterrors.ErrTimeout) {
			err = fmt.Errorf("not a readable bbolt file: %w: %w", err, errdefs.ErrDataLoss)
		}
		return nil, err
	}
	check := func(tx *bolt.Tx) error {
		if err := checkWhole(tx, path); err != nil {
			return err
		}
		version, err := schemaOf(tx)
		switch {
		case err != nil:
			return err
		case version == SchemaVersion && readOnly:
			return nil
		case version == SchemaVersion:
			return checkRefs(ctx, tx.Bucket(bucketRoot))
		case readOnly && version == 0:
			return fmt.Errorf("the file holds no schema yet (strata writes it when it starts): %w", errdefs.ErrFailedPrecondition)
		case readOnly:
			return fmt.Errorf("schema version %d is older than this strata's %d; the daemon migrates it when it starts (or fsck --repair does): %w",
				version, SchemaVersion, errdefs.ErrFailedPrecondition)
		case version == 0:
			return createSchema(ctx, tx)
		default:
			return migrate(ctx, tx.Bucket(bucketRoot), version)
		}
	}
	if readOnly {
		err = bdb.View(check)
	} else {
		err = bdb.Update(check)
	}
	if err != nil {
		bdb.Close()
		return nil, err
	}
	return bdb, nil
}

// readFailure says what a recovered panic of a read of the file means: a
// fault (a page past the end of a truncated file, say) or bbolt's own
// assertion about a page.
func readFailure(r any) string {
	if _, fault := r.(runtime.Error); fault {
		return "reading it faulted (truncated, or a page points outside it)"
	}
	return fmt.Sprintf("reading it failed (%v)", r)
}

// checkWhole checks that the file is as long as its pages reach and reads
// every bucket and key, so that damage shows here, where it is recovered.
func checkWhole(tx *bolt.Tx, path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if tx.Size() > st.Size() {
		return fmt.Errorf("the file is truncated: %d bytes, but its pages reach %d: %w", st.Size(), tx.Size(), errdefs.ErrDataLoss)
	}
	var walk func(b *bolt.Bucket) error
	walk = func(b *bolt.Bucket) error {
		return b.ForEach(func(k, v []byte) error {
			if v == nil {
				if nested := b.Bucket(k); nested != nil {
					return walk(nested)
				}
			}
			return nil
		})
	}
	return tx.ForEach(func(_ []byte, b *bolt.Bucket) error { return walk(b) })
}

// schemaOf returns the schema version the file records, or 0 for a file
// with no buckets at all (new).
func schemaOf(tx *bolt.Tx) (uint32, error) {
	root := tx.Bucket(bucketRoot)
	if root == nil {
		if k, _ := tx.Cursor().First(); k != nil {
			return 0, fmt.Errorf("the file is a bbolt database, but not strata's index (it holds a bucket %q): %w", k, errdefs.ErrDataLoss)
		}
		return 0, nil
	}
	v := root.Get(keySchema)
	if len(v) != 4 {
		return 0, fmt.Errorf("schema version record is corrupt (%d bytes): %w", len(v), errdefs.ErrDataLoss)
	}
	version := binary.BigEndian.Uint32(v)
	if version > SchemaVersion {
		return 0, fmt.Errorf("schema version %d was written by a newer strata; this one understands up to %d (run that strata, or restore an index this one wrote): %w",
			version, SchemaVersion, errdefs.ErrFailedPrecondition)
	}
	return version, nil
}

func createSchema(ctx context.Context, tx *bolt.Tx) error {
	root, err := tx.CreateBucket(bucketRoot)
	if err != nil {
		return err
	}
	for _, name := range [][]byte{bucketSnapshots, bucketIDs, bucketChildren, bucketDirs, bucketRefs, bucketObjects, bucketReleased} {
		if _, err := root.CreateBucket(name); err != nil {
			return err
		}
	}
	log.G(ctx).WithField("schema", SchemaVersion).Debug("initialised metadata database")
	return stampSchema(root)
}

// stampSchema records that the file follows the current schema.
func stampSchema(root *bolt.Bucket) error {
	return root.Put(keySchema, binary.BigEndian.AppendUint32(nil, SchemaVersion))
}

// migrate brings a file of an older schema to the current one, inside the
// transaction that opens it.
func migrate(ctx context.Context, root *bolt.Bucket, from uint32) error {
	if from < 1 || from > 3 {
		return fmt.Errorf("schema version %d is not one strata ever wrote: %w", from, errdefs.ErrDataLoss)
	}
	if from == 1 {
		if err := migrateDirs(root); err != nil {
			return err
		}
	}
	if from <= 2 {
		if err := migrateRefs(root); err != nil {
			return err
		}
	}
	// Version 3 to 4: no layer shared its files yet.
	for _, name := range [][]byte{bucketObjects, bucketReleased} {
		if _, err := root.CreateBucket(name); err != nil {
			return fmt.Errorf("migrate schema %d: %w", from, err)
		}
	}
	log.G(ctx).WithField("from", from).WithField("to", SchemaVersion).Info("migrated metadata database")
	return stampSchema(root)
}

// migrateRefs (version 2 to 3) indexes every committed snapshot's layer
// label.
func migrateRefs(root *bolt.Bucket) error {
	refs, err := root.CreateBucket(bucketRefs)
	if err != nil {
		return fmt.Errorf("migrate schema 2: %w", err)
	}
	want, err := wantRefs(root)
	if err != nil {
		return fmt.Errorf("migrate schema 2: %w", err)
	}
	for k, v := range want {
		if err := refs.Put([]byte(k), []byte(v)); err != nil {
			return err
		}
	}
	return nil
}

// wantRefs is the refs index the records call for: key -> value.
func wantRefs(root *bolt.Bucket) (map[string]string, error) {
	want := map[string]string{}
	sb := root.Bucket(bucketSnapshots)
	err := sb.ForEachBucket(func(k []byte) error {
		s, err := readSnapshot(string(k), sb.Bucket(k))
		if err != nil {
			return err
		}
		if ref := s.layerRef(); ref != "" {
			want[string(refKey(ref, s.ID))] = s.Key
		}
		return nil
	})
	return want, err
}

// checkRefs rebuilds the refs index, derived from the records, when it
// disagrees with them (Check reports how): whenever the daemon or fsck
// --repair opens the index.
func checkRefs(ctx context.Context, root *bolt.Bucket) error {
	want, err := wantRefs(root)
	if err != nil {
		// Check reports the damaged record; the index stays as it is.
		return nil
	}
	refs := root.Bucket(bucketRefs)
	if refs == nil {
		log.G(ctx).Warn("the index of layers by chain id was missing; rebuilt it from the snapshot records")
		return migrateRefs(root)
	}
	have := map[string]string{}
	if err := refs.ForEach(func(k, v []byte) error { have[string(k)] = string(v); return nil }); err != nil {
		return err
	}
	if maps.Equal(have, want) {
		return nil
	}
	if err := root.DeleteBucket(bucketRefs); err != nil {
		return err
	}
	if err := migrateRefs(root); err != nil {
		return err
	}
	log.G(ctx).WithField("entries", len(want)).WithField("were", len(have)).Warn("rebuilt the index of layers by chain id, which disagreed with the snapshot records")
	return nil
}

// migrateDirs (version 1 to 2): dirs/<dir> -> id becomes dirs/<dir><id>.
func migrateDirs(root *bolt.Bucket) error {
	dirs := root.Bucket(bucketDirs)
	old := map[string][]byte{}
	if err := dirs.ForEach(func(k, v []byte) error { old[string(k)] = append([]byte(nil), v...); return nil }); err != nil {
		return err
	}
	for k, v := range old {
		if len(v) != 8 {
			return fmt.Errorf("migrate schema 1: directory entry %q is corrupt: %w", k, errdefs.ErrDataLoss)
		}
		if err := dirs.Delete([]byte(k)); err != nil {
			return err
		}
		if err := dirs.Put(append([]byte(k), v...), nil); err != nil {
			return err
		}
	}
	return nil
}

// Close closes the database. It is safe to call more than once.
func (db *DB) Close() error {
	return db.db.Close()
}

// View runs fn in a read-only transaction.
func (db *DB) View(fn func(*Tx) error) error {
	return db.db.View(func(tx *bolt.Tx) error { return fn(newTx(tx)) })
}

// Write runs fn in a read-write transaction; all of fn's changes are
// committed together, or none are when fn returns an error.
func (db *DB) Write(fn func(*Tx) error) error {
	return db.db.Update(func(tx *bolt.Tx) error { return fn(newTx(tx)) })
}

// Tx is a transaction on the index. It is only valid inside the function
// given to View or Update.
type Tx struct {
	tx        *bolt.Tx
	snapshots *bolt.Bucket
	ids       *bolt.Bucket
	children  *bolt.Bucket
	dirs      *bolt.Bucket
	refs      *bolt.Bucket
	objects   *bolt.Bucket
	released  *bolt.Bucket
}

func newTx(tx *bolt.Tx) *Tx {
	root := tx.Bucket(bucketRoot)
	return &Tx{
		tx:        tx,
		snapshots: root.Bucket(bucketSnapshots),
		ids:       root.Bucket(bucketIDs),
		children:  root.Bucket(bucketChildren),
		dirs:      root.Bucket(bucketDirs),
		refs:      root.Bucket(bucketRefs),
		objects:   root.Bucket(bucketObjects),
		released:  root.Bucket(bucketReleased),
	}
}

// storedSchema returns the version recorded in the file.
func (t *Tx) storedSchema() uint32 {
	return binary.BigEndian.Uint32(t.tx.Bucket(bucketRoot).Get(keySchema))
}
