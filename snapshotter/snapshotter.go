// Package snapshotter implements containerd's snapshots.Snapshotter and
// snapshots.Cleaner on overlayfs: committed snapshots are overlay lower
// directories, an active snapshot is the upper directory, and the metadata
// package indexes them.
//
// The rules it keeps, whatever crashes:
//   - a snapshot's directory is built under a temporary name and renamed into
//     place inside the transaction that records it, so a snapshot is either
//     recorded with its directory or not there at all;
//   - Remove renames the directory out of the way inside the transaction that
//     forgets the snapshot and deletes it afterwards; a directory that is, or
//     holds, a mount point is never deleted;
//   - a layer's directory is deleted only with the last snapshot that has it
//     (two may share one: see unpack.go);
//   - what under the root belongs to whom, and what may be deleted, is
//     decided in ownership.go alone, for start-up, Cleanup and fsck; nothing
//     the index records, or may have recorded, is deleted without an
//     operator's explicit command.
package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/filters"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay/overlayutils"
	"github.com/containerd/continuity/fs"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/strata-snapshotter/strata/metadata"
	"github.com/strata-snapshotter/strata/mounts"
	"github.com/strata-snapshotter/strata/objects"
)

// Snapshotter is what New returns: containerd's snapshotter interface, its
// Cleaner, which containerd's garbage collector calls, and Details, Index,
// Detail and Stats for the operator's view of the store.
type Snapshotter interface {
	snapshots.Snapshotter
	snapshots.Cleaner
	Details(ctx context.Context) ([]Detail, error)
	Index(ctx context.Context) ([]Detail, error)
	Detail(ctx context.Context, key string) (Detail, error)
	Stats(ctx context.Context) (Stats, error)
}

// Opt configures New.
type Opt func(*config)

type config struct {
	syncRemove   bool
	commitSync   bool
	shareFiles   bool
	minShared    int64 // the smallest file shared; minSharedSize but in tests
	mountOptions []string
}

// WithSyncRemove makes Remove delete a snapshot's files before it returns,
// instead of in the background.
func WithSyncRemove(c *config) { c.syncRemove = true }

// WithCommitSync says whether Commit flushes the layer's data to disk before
// it acknowledges (the default). Without, commits are faster, but a power
// loss soon after may leave a committed layer with missing or empty files.
func WithCommitSync(on bool) Opt { return func(c *config) { c.commitSync = on } }

// WithMountOptions adds options to every overlay mount strata returns.
func WithMountOptions(options []string) Opt {
	return func(c *config) { c.mountOptions = append(c.mountOptions, options...) }
}

type snapshotter struct {
	layout     layout
	lock       *os.File // the root's lock, held until Close
	db         *metadata.DB
	syncRemove bool
	flusher    *flusher // nil without sync_on_commit
	options    []string // overlay mount options
	// idmapped: the kernel does idmapped mounts, which snapshots for a
	// user namespace need.
	idmapped bool
	// store holds the content of the stubs in shared layers; shareFiles
	// makes Commit share files through it (share.go).
	store      objects.Store
	shareFiles bool
	minShared  int64

	mu       sync.Mutex
	closed   bool
	deleting map[string]bool // directories being deleted in the background
	// converting are the temporary directories of conversions running
	// outside any transaction (share.go), which the survey must not take
	// for a crash's leftovers.
	converting map[string]bool
	wg         sync.WaitGroup // background deletions
}

// New opens (creating if needed) a snapshotter rooted at root, which must be
// an absolute path on a filesystem that can hold overlay upper directories.
// It locks the root, and refuses a store whose index is missing, empty or
// damaged while layers exist. Before returning it reconciles the index with
// the disk (ownership.go): directories of interrupted removals are put back,
// leftovers of interrupted operations removed, and snapshots whose directory
// is missing, unindexed layers and entries strata did not make are logged.
func New(ctx context.Context, root string, opts ...Opt) (_ Snapshotter, err error) {
	c := config{commitSync: true, minShared: minSharedSize}
	for _, o := range opts {
		o(&c)
	}
	if !filepath.IsAbs(root) {
		return nil, fmt.Errorf("root %q must be an absolute path: %w", root, errdefs.ErrInvalidArgument)
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("create root: %w", err)
	}
	// Resolve the root once: every path strata builds or deletes is below
	// this real directory.
	if root, err = filepath.EvalSymlinks(root); err != nil {
		return nil, fmt.Errorf("resolve root: %w", err)
	}
	// Layers hold every container's files: only root may look in.
	if fi, err := os.Stat(root); err != nil {
		return nil, err
	} else if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		log.G(ctx).WithField("root", root).WithField("mode", fmt.Sprintf("%#o", perm)).Warn("root directory was open to other users; setting it to 0700")
		if err := os.Chmod(root, 0o700); err != nil {
			return nil, fmt.Errorf("restrict root: %w", err)
		}
	}
	l := layout{root: root}
	lock, err := l.lockRoot()
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			lock.Close()
		}
	}()
	if err := l.init(); err != nil {
		return nil, fmt.Errorf("create layout under %s: %w", root, err)
	}
	if ok, err := fs.SupportsDType(root); err != nil {
		return nil, fmt.Errorf("check d_type support of %s: %w", root, err)
	} else if !ok {
		return nil, fmt.Errorf("%s does not support d_type, which overlayfs needs (xfs must be formatted with ftype=1): %w", root, errdefs.ErrFailedPrecondition)
	}
	options, err := mounts.DefaultOptions(root, c.mountOptions)
	if err != nil {
		return nil, err
	}
	if err := probe(l, options); err != nil {
		// Tell the operator's options apart from the kernel or the
		// filesystem: without them, does the probe mount?
		if len(c.mountOptions) > 0 {
			if plain, perr := mounts.DefaultOptions(root, nil); perr == nil && probe(l, plain) == nil {
				return nil, fmt.Errorf("mount_options %q: the kernel refuses an overlay mount with them under %s: %w", c.mountOptions, root, err)
			}
		}
		return nil, fmt.Errorf("overlayfs is not usable under %s: %w", root, err)
	}
	if c.shareFiles && !c.commitSync {
		// An object is a layer's file that other images' layers then
		// stand for: a write a power loss undid would damage them.
		return nil, fmt.Errorf("share_files needs sync_on_commit = true: a shared file's content is stored once for every image that holds it, and must be on disk before they stand on it: %w", errdefs.ErrInvalidArgument)
	}
	store, err := objects.New(l.objectsRoot())
	if err != nil {
		return nil, err
	}
	if err := l.checkIndexPresent(); err != nil {
		return nil, err
	}
	db, err := metadata.Open(ctx, l.dbPath())
	if err != nil {
		return nil, l.withIndexRemedy(err)
	}
	s := &snapshotter{
		layout:     l,
		lock:       lock,
		db:         db,
		syncRemove: c.syncRemove,
		options:    options,
		deleting:   map[string]bool{},
		converting: map[string]bool{},
		store:      store,
		shareFiles: c.shareFiles,
		minShared:  c.minShared,
	}
	if err := s.reconcile(ctx); err != nil {
		db.Close()
		return nil, err
	}
	if err := s.checkSharing(ctx, c.shareFiles); err != nil {
		db.Close()
		return nil, err
	}
	if err := s.resumeConversions(ctx); err != nil {
		db.Close()
		return nil, err
	}
	if c.commitSync {
		if s.flusher, err = newFlusher(l.root); err != nil {
			db.Close()
			return nil, fmt.Errorf("open the root to flush commits: %w", err)
		}
	}
	s.warnIfDeepChainsCannotMount(ctx)
	idmapped, probeErr := overlayutils.SupportsIDMappedMounts()
	if s.idmapped = idmapped; !idmapped {
		log.G(ctx).WithError(probeErr).Warn("this kernel has no idmapped mounts: leave remap-ids out of containerd's config for strata, and containerd copies the image, chowned, for each user namespace")
	}
	return s, nil
}

// probe mounts a small overlay with options in a probe directory under the
// root, and removes the directory unless the mount could not be undone.
func probe(l layout, options []string) error {
	td, err := l.probeDir()
	if err != nil {
		return fmt.Errorf("create probe directory: %w", err)
	}
	if err := mounts.Probe(td, options); err != nil {
		// Left for the next start's survey, which checks for mounts
		// before deleting.
		return err
	}
	return os.RemoveAll(td)
}

// get reads the record of key.
func (s *snapshotter) get(key string) (rec metadata.Snapshot, err error) {
	err = s.db.View(func(tx *metadata.Tx) error {
		rec, err = tx.Get(key)
		return err
	})
	return rec, err
}

// Stat returns the info of the snapshot named key.
func (s *snapshotter) Stat(ctx context.Context, key string) (snapshots.Info, error) {
	rec, err := s.get(key)
	if err != nil {
		return snapshots.Info{}, err
	}
	return rec.Info(), nil
}

// Update changes a snapshot's labels; see metadata.Tx.Update for fieldpaths.
func (s *snapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (snapshots.Info, error) {
	if err := validateKey("key", info.Name); err != nil {
		return snapshots.Info{}, err
	}
	if err := validateLabels(info.Labels); err != nil {
		return snapshots.Info{}, err
	}
	var rec metadata.Snapshot
	err := s.db.Write(func(tx *metadata.Tx) (err error) {
		old, err := tx.Get(info.Name)
		if err != nil {
			return err
		}
		if rec, err = tx.UpdateInfo(info, fieldpaths...); err != nil {
			return err
		}
		return keepsMapping(old, rec)
	})
	if err != nil {
		return snapshots.Info{}, exhaustedOnFullDisk(err)
	}
	return rec.Info(), nil
}

// Usage returns the snapshot's own usage: stored at Commit for a committed
// snapshot, measured now for an active one.
func (s *snapshotter) Usage(ctx context.Context, key string) (snapshots.Usage, error) {
	rec, err := s.get(key)
	if err != nil {
		return snapshots.Usage{}, err
	}
	if rec.Kind != snapshots.KindActive {
		return rec.Usage.Containerd(), nil
	}
	u, err := diskUsage(ctx, s.layout.layer(rec.DirName))
	if err != nil {
		return snapshots.Usage{}, fmt.Errorf("measure usage of %q: %w", key, err)
	}
	return u.Containerd(), nil
}

// Mounts returns the mounts of an active snapshot or view.
func (s *snapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	var ms []mount.Mount
	err := s.db.View(func(tx *metadata.Tx) error {
		rec, err := tx.Get(key)
		if err != nil {
			return err
		}
		if rec.Kind != snapshots.KindActive && rec.Kind != snapshots.KindView {
			return fmt.Errorf("snapshot %q is %v; only active snapshots and views have mounts: %w", key, rec.Kind, errdefs.ErrFailedPrecondition)
		}
		lowers, err := tx.ChainDirs(rec)
		if err != nil {
			return err
		}
		ms = mounts.For(s.mountRequest(tx, rec, lowers, s.mappingFor(rec.Labels, lowers)))
		return nil
	})
	return ms, err
}

// Prepare creates an active snapshot on parent.
func (s *snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.create(ctx, snapshots.KindActive, key, parent, opts)
}

// View creates a read-only view of parent.
func (s *snapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.create(ctx, snapshots.KindView, key, parent, opts)
}

func (s *snapshotter) create(ctx context.Context, kind snapshots.Kind, key, parent string, opts []snapshots.Opt) (_ []mount.Mount, err error) {
	info, err := checkCreate(key, parent, opts)
	if err != nil {
		return nil, err
	}
	// undo reverses what the transaction did on disk when the transaction
	// does not commit.
	var undo undoStack
	defer func() {
		if err != nil {
			undo.run(ctx, key)
		}
	}()

	var ms []mount.Mount
	err = s.db.Write(func(tx *metadata.Tx) error {
		n := metadata.NewSnapshot{Key: key, Kind: kind, Parent: parent, Labels: info.Labels, DrawDir: drawLayerName}
		layer, staged, err := existingLayer(tx, n)
		if err != nil {
			return err
		}
		if staged {
			n.DirName, n.Staged = layer.DirName, true
		}
		rec, err := tx.CreateSnapshot(n)
		if err != nil {
			return err
		}
		lowers, err := tx.ChainDirs(rec)
		if err != nil {
			return err
		}
		mapping := s.mappingFor(rec.Labels, lowers)
		req := s.mountRequest(tx, rec, lowers, mapping)
		if err := refuseMappedSharing(mapping, req.DataDir); err != nil {
			return fmt.Errorf("snapshot %q on %q: %w", key, parent, err)
		}
		if err := mounts.Check(req); err != nil {
			return fmt.Errorf("snapshot %q on %q: %w", key, parent, err)
		}
		ms = mounts.For(req)
		if staged {
			log.G(ctx).WithField("key", key).WithField("layer", layer.Key).Debug("layer already here; staged for commit without unpacking")
			return nil
		}
		return s.makeDirs(rec, lowers, mapping, &undo)
	})
	if err != nil {
		return nil, exhaustedOnFullDisk(err)
	}
	return ms, nil
}

// checkCreate checks a Prepare's or View's request before anything is
// recorded, and returns the options it carries.
func checkCreate(key, parent string, opts []snapshots.Opt) (snapshots.Info, error) {
	if err := validateKey("key", key); err != nil {
		return snapshots.Info{}, err
	}
	if parent != "" {
		if err := validateKey("parent", parent); err != nil {
			return snapshots.Info{}, err
		}
	}
	info, err := applyOpts(opts)
	if err != nil {
		return snapshots.Info{}, err
	}
	if _, err := mappingOf(info.Labels); err != nil {
		return snapshots.Info{}, err
	}
	return info, nil
}

// undoStack holds what to reverse, newest first, when a transaction that
// made things on disk does not commit.
type undoStack []func() error

func (u *undoStack) push(f func() error) { *u = append(*u, f) }

func (u undoStack) run(ctx context.Context, key string) {
	for i := len(u) - 1; i >= 0; i-- {
		if err := u[i](); err != nil {
			log.G(ctx).WithError(err).WithField("key", key).Error("failed to undo a snapshot that was not created; Cleanup will retry")
		}
	}
}

// makeDirs builds rec's directory under a temporary name and renames it
// into place, with a work directory for an active snapshot; what it made is
// pushed on undo.
func (s *snapshotter) makeDirs(rec metadata.Snapshot, lowers []string, mapping *idMapping, undo *undoStack) error {
	td, err := s.layout.tempDir()
	if err != nil {
		return fmt.Errorf("create snapshot directory: %w", err)
	}
	undo.push(func() error { return os.RemoveAll(td) })
	if err := s.populate(td, lowers, mapping); err != nil {
		return err
	}
	if rec.Kind == snapshots.KindActive {
		// A leftover of the same name that the index does not own
		// is garbage of a transaction that never committed.
		work := s.layout.work(rec.DirName)
		if err := os.RemoveAll(work); err != nil {
			return err
		}
		if err := os.Mkdir(work, 0o711); err != nil {
			return fmt.Errorf("create work directory: %w", err)
		}
		undo.push(func() error { return os.RemoveAll(work) })
	}
	dir := s.layout.layer(rec.DirName)
	if err := os.Rename(td, dir); err != nil {
		return fmt.Errorf("move snapshot directory into place: %w", err)
	}
	undo.push(func() error { return os.RemoveAll(dir) })
	return nil
}

// populate prepares a new layer's directory: owned by the mapped root for a
// user namespace (as containerd's overlayfs does), else like the parent's
// root, so the merged root keeps its owner.
func (s *snapshotter) populate(td string, lowers []string, mapping *idMapping) error {
	if err := os.Chmod(td, 0o755); err != nil {
		return err
	}
	if mapping != nil {
		if err := os.Lchown(td, mapping.rootUID, mapping.rootGID); err != nil {
			return fmt.Errorf("chown snapshot root to the mapped root: %w", err)
		}
		return nil
	}
	if len(lowers) == 0 {
		return nil
	}
	fi, err := os.Stat(s.layout.layer(lowers[0]))
	if err != nil {
		return fmt.Errorf("stat parent layer: %w", err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if err := os.Lchown(td, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("chown snapshot root: %w", err)
	}
	return nil
}

// mountRequest describes rec's mounts on lowers, carrying mapping
// (mappingFor) if any, to the mounts package.
func (s *snapshotter) mountRequest(tx *metadata.Tx, rec metadata.Snapshot, lowers []string, mapping *idMapping) mounts.Request {
	parents := make([]string, len(lowers))
	for i, dir := range lowers {
		parents[i] = s.layout.layer(dir)
	}
	req := mounts.Request{
		// A staged snapshot is another layer's directory: read-only,
		// which also tells containerd's unpacker not to apply into it.
		Writable: rec.Kind == snapshots.KindActive && !rec.Staged,
		Dir:      s.layout.layer(rec.DirName),
		WorkDir:  s.layout.work(rec.DirName),
		Parents:  parents,
		Options:  s.options,
		Mapping:  mapping.options(),
		DataDir:  s.dataDir(tx, rec, lowers),
	}
	if extractsUpperLayer(rec) {
		req.EmptyLower = s.layout.empty()
	}
	return req
}

// Commit turns the active snapshot key into the committed snapshot name. Its
// usage is measured once, here, outside the write transaction, and stored.
func (s *snapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	if err := validateKey("name", name); err != nil {
		return err
	}
	if err := validateKey("key", key); err != nil {
		return err
	}
	base, err := applyOpts(opts)
	if err != nil {
		return err
	}
	var rec metadata.Snapshot
	err = s.db.View(func(tx *metadata.Tx) (err error) {
		if rec, err = tx.Get(key); err != nil {
			return err
		}
		if rec.Kind != snapshots.KindActive {
			return fmt.Errorf("snapshot %q is %v, not active: %w", key, rec.Kind, errdefs.ErrFailedPrecondition)
		}
		if _, err := tx.Get(name); err == nil {
			return fmt.Errorf("snapshot %q: %w", name, errdefs.ErrAlreadyExists)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if rec.Staged {
		return exhaustedOnFullDisk(s.db.Write(func(tx *metadata.Tx) error {
			usage, err := s.stagedUsage(ctx, tx, rec, base.Parent)
			if err != nil {
				return err
			}
			_, err = tx.CommitSnapshot(key, name, rec.ID, usage, base)
			return err
		}))
	}
	dir := s.layout.layer(rec.DirName)
	usage, err := diskUsage(ctx, dir)
	if err != nil {
		return exhaustedOnFullDisk(fmt.Errorf("measure usage of %q: %w", key, err))
	}
	// After the usage, which counts the layer as containerd's overlayfs
	// would store it.
	plan, err := s.planShare(ctx, rec, commitParent(rec, base.Parent))
	if err != nil {
		return exhaustedOnFullDisk(fmt.Errorf("share files of %q: %w", key, err))
	}
	if s.flusher != nil {
		// The layer's files reach the disk before the commit is
		// acknowledged (bbolt syncs the index itself). syncfs flushes the
		// filesystem once, cheaper than an fsync per file of a layer, and
		// once for all the commits waiting together.
		if err := s.flusher.flush(); err != nil {
			return exhaustedOnFullDisk(fmt.Errorf("flush layer %q to disk: %w", key, err))
		}
	}
	err = s.db.Write(func(tx *metadata.Tx) error {
		if _, err := tx.CommitSnapshot(key, name, rec.ID, usage, base); err != nil {
			return err
		}
		if plan == nil {
			return nil
		}
		if err := tx.ShareFiles(rec.DirName, recordedUse(plan.Objects())); err != nil {
			return err
		}
		return tx.StartConversion(rec.DirName, s.relativeTimes(rec.DirName, plan))
	})
	if err != nil {
		return exhaustedOnFullDisk(err)
	}
	if plan != nil {
		s.applySharing(ctx, rec.DirName, plan, true)
	}
	return nil
}

// exhaustedOnFullDisk marks a full disk (or quota) as ResourceExhausted, so
// clients see the cause in the gRPC code instead of Unknown.
func exhaustedOnFullDisk(err error) error {
	if err != nil && (errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)) && !errdefs.IsResourceExhausted(err) {
		return fmt.Errorf("%w: %w", err, errdefs.ErrResourceExhausted)
	}
	return err
}

// Remove forgets the snapshot key and deletes its files, in the background
// unless configured with WithSyncRemove.
func (s *snapshotter) Remove(ctx context.Context, key string) (err error) {
	if err := validateKey("key", key); err != nil {
		return err
	}
	// moved pairs each directory moved aside in the transaction with where
	// it went: deleted once the transaction commits, put back if it does not.
	var moved [][2]string
	err = s.db.Write(func(tx *metadata.Tx) error {
		rec, err := tx.RemoveSnapshot(key)
		if err != nil {
			return err
		}
		if tx.DirInUse(rec.DirName) {
			return nil // the layer's directory is also another snapshot's
		}
		// A running container's root on it (ctr snapshots rm of a
		// container's snapshot): its files stay, and so does the record.
		if points, err := mounts.OverlaysOn(s.layout.layer(rec.DirName), s.layout.work(rec.DirName)); err != nil {
			return fmt.Errorf("check whether a mount uses %q: %w", key, err)
		} else if len(points) > 0 {
			return fmt.Errorf("snapshot %q is in use by the overlay mounted at %s (a running container's root?); stop it first: %w", key, points[0], errdefs.ErrFailedPrecondition)
		}
		// The layer, then its work directory (active snapshots only), go
		// to rm- names, which no new snapshot can be given.
		layer := [2]string{s.layout.layer(rec.DirName), s.layout.removedLayer(rec.DirName)}
		work := [2]string{s.layout.work(rec.DirName), s.layout.removedWork(rec.DirName)}
		for i, m := range [][2]string{layer, work} {
			err := os.Rename(m[0], m[1])
			switch {
			case err == nil:
				moved = append(moved, m)
			case errors.Is(err, syscall.EBUSY):
				return fmt.Errorf("directory of %q is a mount point; unmount it first: %w", key, errdefs.ErrFailedPrecondition)
			case !errors.Is(err, os.ErrNotExist):
				return fmt.Errorf("move directory of %q out of the way: %w", key, err)
			case i == 0:
				log.G(ctx).WithField("key", key).WithField("path", m[0]).Warn("removed snapshot had no directory")
			}
		}
		return nil
	})
	if err != nil {
		for i := len(moved) - 1; i >= 0; i-- {
			// Cleanup may have put it back already: the snapshot is
			// still recorded (see ownership.go).
			if rerr := os.Rename(moved[i][1], moved[i][0]); rerr != nil && !exists(moved[i][0]) {
				log.G(ctx).WithError(rerr).WithField("key", key).Error("failed to restore directory of a snapshot whose removal did not commit")
			}
		}
		return exhaustedOnFullDisk(err)
	}
	for _, m := range moved {
		s.deleteRemoved(ctx, m[1])
	}
	return nil
}

// deleteRemoved removes dir, now or in the background. Failures are logged, not
// returned: the snapshot is already gone from the index, and Cleanup retries.
func (s *snapshotter) deleteRemoved(ctx context.Context, dir string) {
	if s.syncRemove {
		deleteDir(ctx, dir)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return // left for the reconciliation at next start
	}
	s.deleting[dir] = true
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		deleteDir(context.WithoutCancel(ctx), dir)
		s.mu.Lock()
		delete(s.deleting, dir)
		s.mu.Unlock()
	}()
}

// deleteDir removes dir unless a mount uses it: something mounted at or
// below it, or an overlay (a running container) standing on it; it returns
// the mount points that kept it. Failures are logged: whoever asked has
// already decided the directory is garbage, and Cleanup (or the next
// start) tries again.
func deleteDir(ctx context.Context, dir string) (inUse []string) {
	logger := log.G(ctx).WithField("path", dir)
	points, err := mounts.InUse(dir)
	if err != nil {
		logger.WithError(err).Warn("not deleting directory: cannot tell whether a mount uses it")
		return nil
	}
	if len(points) > 0 {
		logger.WithField("mountpoints", points).Error("not deleting directory: a mount still uses it (a container's root, or something mounted in it)")
		return points
	}
	if err := os.RemoveAll(dir); err != nil {
		logger.WithError(err).Warn("failed to delete directory; Cleanup will retry")
	}
	return nil
}

// Walk calls fn for every snapshot matching all of the filters, given in
// containerd's filter syntax over name, parent, kind and labels.KEY.
func (s *snapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, fs ...string) error {
	filter, err := filters.ParseAll(fs...)
	if err != nil {
		return err
	}
	// Collect first and call fn outside the transaction: fn may call back
	// into the snapshotter, and a read transaction held across a caller's
	// work would block the writer's remapping of the file.
	var matched []snapshots.Info
	err = s.db.View(func(tx *metadata.Tx) error {
		return tx.Walk(func(rec metadata.Snapshot) error {
			if info := rec.Info(); filter.Match(adaptInfo(info)) {
				matched = append(matched, info)
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	for _, info := range matched {
		if err := fn(ctx, info); err != nil {
			return err
		}
	}
	return nil
}

// Cleanup puts back what a Remove that did not commit moved aside, and
// deletes what no snapshot owns: leftovers of removals and of operations
// interrupted by a crash. ownership.go decides which is which.
func (s *snapshotter) Cleanup(ctx context.Context) error {
	_, err := s.tidy(ctx, false)
	return err
}

// tidy acts on the survey of the root (of the whole object store with
// wholeStore, else of its released objects): restores inside a write
// transaction, which keeps Prepare and Remove (they move directories inside
// theirs) out while the disk is compared with the index; deletions of
// directories after it. It returns the survey.
func (s *snapshotter) tidy(ctx context.Context, wholeStore bool) ([]stray, error) {
	var strays []stray
	err := s.db.Write(func(tx *metadata.Tx) error {
		recorded, err := recordedOwners(tx)
		if err != nil {
			return err
		}
		if strays, err = s.layout.survey(recorded, s.busy, wholeStore); err != nil {
			return err
		}
		if err := s.deleteReleased(ctx, tx, strays, recorded.released); err != nil {
			return err
		}
		for _, st := range strays {
			if st.fate != restore {
				continue
			}
			logger := log.G(ctx).WithField("path", st.to)
			if err := os.Rename(st.path, st.to); err != nil {
				// Left in place: it is never garbage while recorded.
				logger.WithError(err).Error("failed to put back the directory of a snapshot whose removal did not commit")
				continue
			}
			logger.Warn("restored directory of a snapshot whose removal did not commit")
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, st := range strays {
		if st.fate == garbage && !st.object {
			log.G(ctx).WithField("path", st.path).WithField("reason", st.why).Info("deleting directory no snapshot owns")
			deleteDir(ctx, st.path)
		}
	}
	return strays, nil
}

// deleteReleased deletes the released objects the survey found garbage,
// inside the transaction that found them unowned (once it ends, a Commit
// may record one again before it links it), and forgets every release
// settled: deleted, gone, or another layer's again.
func (s *snapshotter) deleteReleased(ctx context.Context, tx *metadata.Tx, strays []stray, released map[digest.Digest]bool) error {
	unsettled := map[digest.Digest]bool{}
	for _, st := range strays {
		if st.object && st.fate == garbage {
			if !deleteObject(ctx, st) {
				unsettled[st.digest] = true
			}
		}
	}
	for d := range released {
		if !unsettled[d] {
			if err := tx.Unrelease(d); err != nil {
				return err
			}
		}
	}
	return nil
}

// recordedOwners is what the index gives to snapshots: directory names, by
// its directory index and by the records themselves, so that a damaged
// index entry never makes a snapshot's directory look unowned; the objects
// recorded for any directory; and the objects it released.
func recordedOwners(tx *metadata.Tx) (owned, error) {
	o := owned{dirs: map[string]bool{}, objects: map[digest.Digest]bool{}, released: map[digest.Digest]bool{}}
	for name := range tx.Dirs() {
		o.dirs[name] = true
	}
	for d := range tx.Objects() {
		o.objects[d] = true
	}
	for _, d := range tx.Released() {
		o.released[d] = true
	}
	err := tx.Walk(func(rec metadata.Snapshot) error {
		o.dirs[rec.DirName] = true
		return nil
	})
	return o, err
}

// deleteObject removes an object no layer owns, and reports whether it is
// gone.
func deleteObject(ctx context.Context, st stray) bool {
	if err := os.Remove(st.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.G(ctx).WithError(err).WithField("path", st.path).Warn("failed to delete an object no layer owns; Cleanup will retry")
		return false
	}
	log.G(ctx).WithField("path", st.path).Debug("deleted an object no layer owns")
	return true
}

// busy reports whether a background deletion or a conversion is working on
// path.
func (s *snapshotter) busy(path string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.deleting[path] || s.converting[path]
}

// reconcile runs at start, before anything is served: it tidies the root
// and tells the operator about what it cannot fix.
func (s *snapshotter) reconcile(ctx context.Context) error {
	strays, err := s.tidy(ctx, true)
	if err != nil {
		return fmt.Errorf("reconcile index with disk: %w", err)
	}
	for _, st := range strays {
		switch st.fate {
		case foreign:
			log.G(ctx).WithField("path", st.path).Warn("entry under strata's root is not one strata makes; leaving it alone")
		case unindexed:
			log.G(ctx).WithField("path", st.path).WithField("reason", st.why).Warn("entry the index does not record, but not garbage; keeping it: put back the index that records it, or run strata-snapshotter fsck --discard-unindexed")
		}
	}
	return s.db.View(func(tx *metadata.Tx) error {
		return tx.Walk(func(rec metadata.Snapshot) error {
			if !exists(s.layout.layer(rec.DirName)) {
				log.G(ctx).WithField("key", rec.Key).WithField("path", s.layout.layer(rec.DirName)).
					Errorf("snapshot's directory is missing; its contents are lost: remove the snapshot through containerd (%s, or remove the image or container that uses it) and pull again", removeCommand(rec.Key))
			}
			return nil
		})
	})
}

// removeCommand is the ctr command that removes the snapshot containerd
// keeps as key (NAMESPACE/ID/NAME, as its metadata store names the keys it
// gives a proxy snapshotter).
func removeCommand(key string) string {
	parts := strings.SplitN(key, "/", 3)
	if len(parts) != 3 {
		return "ctr snapshots --snapshotter strata rm KEY"
	}
	return fmt.Sprintf("ctr -n %s snapshots --snapshotter strata rm %s", parts[0], parts[2])
}

// warnIfDeepChainsCannotMount tells the operator at start when the root path
// is so long that a chain of mounts.MaxLowerDirs layers would not fit in
// mount(2)'s page, instead of leaving them to find out from a failed Prepare.
func (s *snapshotter) warnIfDeepChainsCannotMount(ctx context.Context) {
	name := strings.Repeat("X", nameLen)
	parents := make([]string, mounts.MaxLowerDirs)
	for i := range parents {
		parents[i] = s.layout.layer(name)
	}
	req := mounts.Request{
		Writable: true,
		Dir:      s.layout.layer(name),
		WorkDir:  s.layout.work(name),
		Parents:  parents,
		Options:  s.options,
	}
	if err := mounts.Check(req); err != nil {
		log.G(ctx).WithError(err).WithField("root", s.layout.root).Warn("deepest chains will not mount under this root")
	}
}

// Close waits for background deletions and closes the index. It may be
// called more than once.
func (s *snapshotter) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	if s.flusher != nil {
		s.flusher.close()
	}
	s.wg.Wait()
	err := s.db.Close()
	s.lock.Close()
	return err
}
