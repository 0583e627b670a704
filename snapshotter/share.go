package snapshotter

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/strata-snapshotter/strata/metadata"
	"github.com/strata-snapshotter/strata/mounts"
	"github.com/strata-snapshotter/strata/objects"
)

// Sharing files across layers (share_files; docs/design/share-files.md).
// When a layer is committed, each of its regular files of at least
// minSharedSize bytes becomes an object of the store under objects/ (its
// inode is hard-linked there, or dropped when the store already has that
// content) and a metadata-only stub in the layer, which keeps every
// attribute a container sees. Every mount of a chain holding stubs has the
// store below its layers as an overlayfs data-only lower layer, from which
// the kernel reads their content: each distinct content is stored once and
// cached once, whatever layers it is in.
//
// The kernel follows the xattrs of a stub in any lower layer of such a
// mount, so the layers of a chain that has the store below are all scanned
// first, and any of the kernel's stub xattrs that strata did not write is
// stripped (objects.Scan). The index records which layers are scanned and
// the objects each layer's stubs stand for, before the stubs exist.

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

// dataDir is the object store when a chain of the lower directories lowers
// holds stubs, and "" when its mounts need no store.
func (s *snapshotter) dataDir(tx *metadata.Tx, lowers []string) string {
	for _, dir := range lowers {
		if tx.HasObjects(dir) {
			return s.store.Root()
		}
	}
	return ""
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
// Under share_files, or when the chain below already holds stubs, it scans
// the chain's layers not yet scanned and, unless it is staged, rec's own
// directory: forged stub xattrs are stripped before any mount can have the
// store below them. Under share_files it returns the plan converting rec's
// large files, which the commit records and applySharing carries out; nil
// when there is nothing to record.
func (s *snapshotter) planShare(ctx context.Context, rec metadata.Snapshot, parent string) (*objects.Plan, error) {
	var (
		unscanned []metadata.Snapshot
		chainHas  bool
		ownHas    bool
	)
	err := s.db.View(func(tx *metadata.Tx) error {
		chain, err := parentChain(tx, parent)
		if err != nil {
			return err
		}
		for _, p := range chain {
			chainHas = chainHas || tx.HasObjects(p.DirName)
			if !tx.Scanned(p.DirName) {
				unscanned = append(unscanned, p)
			}
		}
		ownHas = tx.HasObjects(rec.DirName)
		return nil
	})
	if err != nil {
		return nil, err
	}
	convert := s.shareFiles && !rec.Staged
	if !convert && !chainHas && !ownHas {
		return nil, nil
	}
	for _, p := range unscanned {
		if err := s.scanCommitted(ctx, p); err != nil {
			return nil, err
		}
	}
	if rec.Staged {
		return nil, nil
	}
	minSize := int64(0)
	if convert {
		minSize = s.minShared
	}
	path := s.layout.layer(rec.DirName)
	plan, err := objects.Scan(path, minSize, boundWritten(parent))
	if err != nil {
		return nil, fmt.Errorf("scan layer %s: %w", path, err)
	}
	logStripped(ctx, path, plan)
	return plan, nil
}

// scanCommitted scans the committed layer p, written before share_files was
// on, and records it as scanned.
func (s *snapshotter) scanCommitted(ctx context.Context, p metadata.Snapshot) error {
	path := s.layout.layer(p.DirName)
	plan, err := objects.Scan(path, 0, boundWritten(p.Parent))
	if err != nil {
		return fmt.Errorf("scan layer %s: %w", path, err)
	}
	logStripped(ctx, path, plan)
	return s.db.Write(func(tx *metadata.Tx) error {
		if !tx.DirInUse(p.DirName) {
			return fmt.Errorf("layer %q was removed while it was scanned: %w", p.Key, errdefs.ErrNotFound)
		}
		return tx.ShareFiles(p.DirName, nil)
	})
}

func logStripped(ctx context.Context, path string, plan *objects.Plan) {
	if len(plan.Stripped) > 0 {
		log.G(ctx).WithField("layer", path).WithField("files", plan.Stripped).Warn("stripped overlayfs's metacopy and redirect xattrs, which the image carried, from files of a layer: the kernel must follow only strata's")
	}
}

// applySharing replaces the files of the committed layer dir that plan
// converts with stubs. The commit recorded the plan's objects, so every
// mount of the layer has the store below, and each name reads its content
// at every step. A failure leaves the layer readable, with fewer files
// shared: it is logged, not returned, since the commit is done.
func (s *snapshotter) applySharing(ctx context.Context, dir string, plan *objects.Plan) {
	if plan.Files() == 0 {
		return
	}
	logger := log.G(ctx).WithField("layer", s.layout.layer(dir))
	tmp, err := s.layout.tempDir()
	if err != nil {
		logger.WithError(err).Error("failed to share files of a layer")
		return
	}
	defer os.RemoveAll(tmp)
	if err := plan.Apply(s.store, tmp); err != nil {
		logger.WithError(err).Error("failed to share every file of a layer; the layer stays readable, with fewer files shared")
		return
	}
	logger.WithField("files", plan.Files()).Debug("shared files of a layer through the object store")
}

// boundWritten reports whether a layer committed onto parent was written
// through a bind mount, where containerd's applier sets the kernel's xattrs
// an image carries as they are: an image's first layer. Every other layer
// is written through an overlay mount (its parents' or the empty
// directory's), which escapes them.
func boundWritten(parent string) bool { return parent == "" }

// parentChain is parent and its parents, nearest first.
func parentChain(tx *metadata.Tx, parent string) ([]metadata.Snapshot, error) {
	var chain []metadata.Snapshot
	for key := parent; key != ""; {
		p, err := tx.Get(key)
		if err != nil {
			return nil, fmt.Errorf("commit parent chain: %w", err)
		}
		if len(chain) > mounts.MaxLowerDirs {
			return nil, fmt.Errorf("commit parent chain of %q loops: %w", parent, errdefs.ErrDataLoss)
		}
		chain = append(chain, p)
		key = p.Parent
	}
	return chain, nil
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

// probeSharing checks at start that the kernel reads a stub's content from
// the object store below a mount with options: overlayfs with data-only
// lower layers (Linux 6.5), and trusted xattrs on the root's filesystem.
func probeSharing(l layout, options []string) error {
	td, err := l.probeDir()
	if err != nil {
		return fmt.Errorf("create probe directory: %w", err)
	}
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
	m := mounts.For(mounts.Request{Dir: td, Parents: []string{layer, below}, DataDir: store.Root(), Options: options})[0]
	if err := m.Mount(merged); err != nil {
		return fmt.Errorf("overlay mount with the object store as data-only lower layer failed (overlayfs has them since Linux 6.5): %w", err)
	}
	got, readErr := os.ReadFile(filepath.Join(merged, "f"))
	if err := mount.UnmountAll(merged, 0); err != nil {
		return fmt.Errorf("unmount probe: %w", err)
	}
	if readErr != nil || !bytes.Equal(got, content) {
		return fmt.Errorf("overlayfs does not read a stub's content from the object store (read %d bytes, %v)", len(got), readErr)
	}
	return os.RemoveAll(td)
}

// withMinSharedSize sets the smallest file shared, for tests that share
// small files.
func withMinSharedSize(n int64) Opt { return func(c *config) { c.minShared = n } }
