package snapshotter

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/strata-snapshotter/strata/metadata"
	"github.com/strata-snapshotter/strata/mounts"
	"github.com/strata-snapshotter/strata/objects"
)

// Sharing files across layers (share_files; docs/design/share-files.md).
// When an image's bottom layer is committed, each of its regular files of
// at least minSharedSize bytes becomes an object of the store under
// objects/ (its inode is hard-linked there, or dropped when the store
// already has that content) and a metadata-only stub in the layer, which
// keeps every attribute a container sees. Every mount of a chain on such a
// layer has the store below its layers as an overlayfs data-only lower
// layer, from which the kernel reads the stubs' content: each distinct
// content is stored once and cached once, whatever images it is in.
//
// Only the bottom layer, because only there does the kernel follow a stub
// without the metacopy mount option: in any other lower layer it needs
// metacopy=on, which BuildKit's forced redirect_dir=off makes the kernel
// refuse. containerd's applier writes an image's trusted.overlay xattrs as
// they are into every layer (through the bottom layer's bind mount, and
// straight into the upper directory of the others). So the bottom layer's
// stub xattrs are stripped before the commit records any object, and every
// mount with the store has metacopy=off (mounts.For), whatever the overlay
// module's default: the kernel then follows no stub but those of the last
// lower layer, which strata wrote.
//
// The index records a layer's objects in the commit's transaction; the
// stubs are made after it, each after its object is stored, so that every
// name reads its content at every step.

// minSharedSize is the smallest file moved to the store. A stub costs an
// inode in the layer and a lookup in the store when a container first opens
// the file, whether or not its content is shared; a duplicate of a small
// file costs at most a few blocks of disk and pages of cache. At 16 KiB,
// files below the threshold hold a small part of a typical image's bytes
// (see BENCHMARKS.md) but most of its files.
const minSharedSize = 16 << 10

// WithShareFiles turns on sharing files across layers for layers committed
// from now on. Layers already shared stay so when it is off.
func WithShareFiles(on bool) Opt { return func(c *config) { c.shareFiles = on } }

// dataDir is the object store when rec, on the lower directories lowers,
// stands on a layer with stubs, and "" when its mounts need no store.
//
// A snapshot containerd extracts a layer into (labelled with the layer's
// chain id by containerd's unpacker, or named extract-... as containerd's
// and BuildKit's unpackers name it) gets none: containerd's
// applier reads the parents of its layer from the mount's lowerdir= split
// at ':', and would take the empty name of the store's "::" for the host's
// root, giving a directory it makes (a file's parent the layer has no
// entry for) the host directory's mode, owner and xattrs. It writes
// straight into the upper directory and reads no lower file's content, so
// the stubs' content is not needed there.
func (s *snapshotter) dataDir(tx *metadata.Tx, rec metadata.Snapshot, lowers []string) string {
	if !extracting(rec) && len(lowers) > 0 && tx.HasObjects(lowers[len(lowers)-1]) {
		return s.store.Root()
	}
	return ""
}

// extracting reports whether rec is a snapshot an unpacker extracts a layer
// into.
func extracting(rec metadata.Snapshot) bool {
	name := rec.Key[strings.LastIndex(rec.Key, "/")+1:]
	return rec.Kind == snapshots.KindActive &&
		(rec.Labels[snapshots.LabelSnapshotRef] != "" || strings.HasPrefix(name, snapshots.UnpackKeyPrefix+"-"))
}

// commitParent is the key of the snapshot that rec will be committed onto:
// WithParent's (containerd's parallel unpack), or its own parent.
func commitParent(rec metadata.Snapshot, base string) string {
	if base != "" {
		return base
	}
	return rec.Parent
}

// planShare runs before the commit of the active snapshot rec onto parent.
// Under share_files, for an image's bottom layer (no parent, and written
// through a bind mount: not staged), it strips forged stub xattrs and plans
// the conversion of the layer's large files, which the commit records and
// applySharing carries out; otherwise it returns nil.
func (s *snapshotter) planShare(ctx context.Context, rec metadata.Snapshot, parent string) (*objects.Plan, error) {
	if !s.shareFiles || parent != "" || rec.Staged {
		return nil, nil
	}
	path := s.layout.layer(rec.DirName)
	plan, err := objects.Scan(path, s.minShared, true)
	if err != nil {
		return nil, fmt.Errorf("scan layer %s: %w", path, err)
	}
	if n := len(plan.Stripped); n > 0 {
		// A few names: an image may carry millions.
		log.G(ctx).WithField("layer", path).WithField("count", n).WithField("files", plan.Stripped[:min(n, 5)]).
			Warn("stripped overlayfs's metacopy and redirect xattrs, which the image carried, from files of a layer: the kernel must follow only strata's")
	}
	return plan, nil
}

// recordedUse is a plan's objects as the index records them.
func recordedUse(objs map[digest.Digest]objects.Use) map[digest.Digest]metadata.ObjectUse {
	out := make(map[digest.Digest]metadata.ObjectUse, len(objs))
	for d, u := range objs {
		out[d] = metadata.ObjectUse{Size: u.Size, Files: u.Files}
	}
	return out
}

// applySharing replaces the files of the committed layer dir that plan
// converts with stubs, and ends the conversion the commit recorded. When
// plan is the whole conversion (not the rest of one a crash cut off), the
// index then drops the objects it could not store. The commit recorded the
// plan's objects, so every mount of the layer has the store below, and
// each name reads its content at every step. A failure leaves the files it
// concerns readable: it is logged, not returned, since the commit is done.
func (s *snapshotter) applySharing(ctx context.Context, dir string, plan *objects.Plan, whole bool) {
	logger := log.G(ctx).WithField("layer", s.layout.layer(dir))
	if err := s.apply(plan); err != nil {
		logger.WithError(err).Error("failed to share every file of a layer; the layer stays readable, with fewer files shared")
	} else {
		logger.WithField("files", plan.Files()).Debug("shared files of a layer through the object store")
	}
	// The stubs on disk before the index says the conversion ended: else
	// a power loss could leave a file linked into the store, and nothing
	// to finish it.
	if s.flusher != nil {
		if err := s.flusher.flush(); err != nil {
			logger.WithError(err).Error("failed to flush a layer's stubs to disk; the next start goes over its conversion again")
			return
		}
	}
	// For du and for Cleanup, which may delete the others.
	err := s.db.Write(func(tx *metadata.Tx) error {
		if !tx.DirInUse(dir) {
			return nil // removed meanwhile: its objects went with it
		}
		if whole {
			if err := tx.SetObjects(dir, recordedUse(plan.Objects())); err != nil {
				return err
			}
		}
		return tx.EndConversion(dir)
	})
	if err != nil {
		logger.WithError(err).Warn("failed to record the end of a layer's conversion; the next start goes over it again")
	}
}

// apply carries plan out in a temporary directory of the layout. The
// directory is made and registered under the lock that the survey's busy
// check takes, so that no Cleanup ever takes it for a crash's leftover.
func (s *snapshotter) apply(plan *objects.Plan) error {
	s.mu.Lock()
	tmp, err := s.layout.tempDir()
	if err == nil {
		s.converting[tmp] = true
	}
	s.mu.Unlock()
	if err != nil {
		return err
	}
	defer func() {
		os.RemoveAll(tmp)
		s.mu.Lock()
		delete(s.converting, tmp)
		s.mu.Unlock()
	}()
	return plan.Apply(s.store, tmp)
}

// relativeTimes are the plan's directory times by path relative to the
// layer dir, as the index records them.
func (s *snapshotter) relativeTimes(dir string, plan *objects.Plan) map[string][2]time.Time {
	root := s.layout.layer(dir)
	out := map[string][2]time.Time{}
	for p, ts := range plan.DirTimes() {
		rel, err := filepath.Rel(root, p)
		if err != nil {
			continue
		}
		out[rel] = [2]time.Time{time.Unix(ts[0].Unix()), time.Unix(ts[1].Unix())}
	}
	return out
}

// resumeConversions finishes, at start, the conversions a crash cut off
// (errors are logged: the layers stay readable):
// their files whose content the commit recorded become stubs, and their
// directories get back the times they had before. Without it, a file
// linked into the store whose stub was not yet made would show a container
// two links.
func (s *snapshotter) resumeConversions(ctx context.Context) error {
	var (
		convs map[string]map[string][2]time.Time
		objs  = map[string]map[digest.Digest]metadata.ObjectUse{}
	)
	err := s.db.View(func(tx *metadata.Tx) error {
		convs = tx.Conversions()
		for dir := range convs {
			objs[dir] = tx.DirObjects(dir)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for dir, times := range convs {
		root := s.layout.layer(dir)
		plan, err := objects.Scan(root, s.minShared, false)
		if err != nil {
			// The layer stays readable; the next start tries again.
			log.G(ctx).WithError(err).WithField("layer", root).Error("failed to scan a layer to finish its conversion")
			continue
		}
		abs := map[string][2]unix.Timespec{}
		for rel, ts := range times {
			abs[filepath.Join(root, rel)] = [2]unix.Timespec{unix.NsecToTimespec(ts[0].UnixNano()), unix.NsecToTimespec(ts[1].UnixNano())}
		}
		plan.Resume(func(d digest.Digest) bool { _, ok := objs[dir][d]; return ok }, abs)
		log.G(ctx).WithField("layer", root).WithField("files", plan.Files()).Warn("finishing the conversion of a layer that a crash cut off")
		s.applySharing(ctx, dir, plan, false)
	}
	return nil
}

// refuseMappedSharing refuses an ID mapping on a chain whose mounts need the
// object store: containerd's idmapped overlay mounts remount each lower
// directory, and cannot tell the store's data-only separator from one.
func refuseMappedSharing(mapping *idMapping, data string) error {
	if mapping == nil || data == "" {
		return nil
	}
	return fmt.Errorf("the layers below share files through strata's object store (share_files), which containerd cannot mount for a user namespace: "+
		"run this container without a user namespace, or pull its image with share_files off: %w", errdefs.ErrFailedPrecondition)
}

// checkSharing runs at start, under share_files or while layers share
// files (the option turned off since): the kernel must read their stubs'
// content, and the operator hears what containerd cannot do with them.
func (s *snapshotter) checkSharing(ctx context.Context, on bool) error {
	var shared bool
	err := s.db.View(func(tx *metadata.Tx) error {
		for _, dir := range tx.ObjectDirs() {
			shared = shared || tx.HasObjects(dir)
		}
		return nil
	})
	if err != nil || !on && !shared {
		return err
	}
	if err := probeSharing(s.layout, s.options); err != nil {
		what := "share_files"
		if !on {
			what = "layers share files (share_files was on)"
		}
		return fmt.Errorf("%s: this kernel or the filesystem under %s cannot read a shared file: %w: %w", what, s.layout.root, err, errdefs.ErrFailedPrecondition)
	}
	log.G(ctx).WithField("share_files", on).WithField("shared_layers", shared).
		Warn("share_files is experimental: containerd 2.3 and later (its CRI plugin, ctr run) cannot create a container on an image whose bottom layer shares files; nerdctl 2.x and BuildKit can (README: Sharing files across images)")
	return nil
}

// probeSharing checks at start that the kernel reads the content of a stub
// in the bottom layer from the object store below a mount with options:
// overlayfs with data-only lower layers (Linux 6.5), and trusted xattrs on
// the root's filesystem.
func probeSharing(l layout, options []string) (err error) {
	td, err := l.probeDir()
	if err != nil {
		return fmt.Errorf("create probe directory: %w", err)
	}
	mounted := false
	defer func() {
		// Left for the next start's survey if a mount may be in it.
		if err != nil && !mounted {
			os.RemoveAll(td)
		}
	}()
	layer, below, merged := filepath.Join(td, "layer"), filepath.Join(td, "below"), filepath.Join(td, "merged")
	for _, d := range []string{layer, below, merged} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return err
		}
	}
	content := bytes.Repeat([]byte("strata"), 1000)
	file := filepath.Join(layer, "f")
	if err := os.WriteFile(file, content, 0o600); err != nil {
		return err
	}
	store, err := objects.New(filepath.Join(td, "objects"))
	if err != nil {
		return err
	}
	d, err := store.Add(file)
	if err != nil {
		return err
	}
	if err := objects.Stub(d, td, file); err != nil {
		return fmt.Errorf("make a stub (the filesystem needs trusted xattrs): %w", err)
	}
	m := mounts.For(mounts.Request{Dir: td, Parents: []string{below, layer}, DataDir: store.Root(), Options: options})[0]
	if err := m.Mount(merged); err != nil {
		return fmt.Errorf("overlay mount with the object store as data-only lower layer failed (overlayfs has them since Linux 6.5): %w", err)
	}
	mounted = true
	got, readErr := os.ReadFile(filepath.Join(merged, "f"))
	if err := mount.UnmountAll(merged, 0); err != nil {
		return fmt.Errorf("unmount probe: %w", err)
	}
	mounted = false
	if readErr != nil || !bytes.Equal(got, content) {
		return fmt.Errorf("overlayfs does not read a stub's content from the object store (read %d bytes, %v)", len(got), readErr)
	}
	return os.RemoveAll(td)
}

// withMinSharedSize sets the smallest file shared, for tests that share
// small files.
func withMinSharedSize(n int64) Opt { return func(c *config) { c.minShared = n } }
