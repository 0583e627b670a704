package snapshotter

import (
	"context"
	"fmt"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"

	"github.com/strata-snapshotter/strata/metadata"
)

// How strata serves containerd's unpacker (core/unpack), which extracts each
// layer of an image into an active snapshot labelled with the layer's chain
// id (containerd.io/snapshot.ref) and commits it under that chain id. In
// sequential mode each layer is prepared on its parent; in parallel mode
// (strata advertises "rebase") every layer but the first is prepared without
// a parent, labelled with its parent's chain id, and committed onto the
// parent with WithParent.

// labelParentChainID is the label containerd's unpacker puts on the snapshot
// it extracts every layer but an image's first into: the chain id of the
// layer below (core/unpack's labelSnapshotParent).
const labelParentChainID = "containerd.io/snapshot/parent-chain-id"

// extractsUpperLayer reports whether rec is a parentless active snapshot
// into which containerd's parallel unpack extracts a layer that belongs
// above another one: such a snapshot must be an overlay (on the empty
// directory), so the applier keeps the layer's whiteouts for when it is
// committed onto its parent; see mounts.Request.EmptyLower. An image's first
// layer (no parent-chain-id label) has nothing below it to hide: like
// containerd's overlayfs, it gets a bind mount, and the applier drops its
// whiteouts instead of storing them.
func extractsUpperLayer(rec metadata.Snapshot) bool {
	return rec.Kind == snapshots.KindActive && rec.Parent == "" && !rec.Staged &&
		rec.Labels[snapshots.LabelSnapshotRef] != "" && rec.Labels[labelParentChainID] != ""
}

// existingLayer is the "already here, never unpacked again" fast path, for a
// Prepare of n that extracts a layer strata already holds (pulled in another
// containerd namespace, say):
//   - prepared on its parent (sequential unpack, or an image's first layer):
//     containerd's remote-snapshot protocol. AlreadyExists, and nothing is
//     created; containerd then finds the committed layer by its chain id
//     label and parent, and uses it.
//   - prepared without its parent (parallel unpack): containerd would look
//     for a committed layer with no parent, which this one is not, so the
//     protocol cannot answer. Instead staged is true: the new snapshot is
//     created on the layer's directory, read-only, which tells the unpacker
//     to skip extracting and commit it (onto its parent) at once.
func existingLayer(tx *metadata.Tx, n metadata.NewSnapshot) (layer metadata.Snapshot, staged bool, err error) {
	ref := n.Labels[snapshots.LabelSnapshotRef]
	if ref == "" || n.Kind != snapshots.KindActive {
		return metadata.Snapshot{}, false, nil
	}
	if parentRef := n.Labels[labelParentChainID]; n.Parent == "" && parentRef != "" {
		layer, found, err := tx.CommittedOnChain(ref, parentRef)
		return layer, found, err
	}
	layer, found, err := tx.CommittedWithRef(ref, n.Parent)
	if err != nil {
		return metadata.Snapshot{}, false, err
	}
	if found {
		return metadata.Snapshot{}, false, fmt.Errorf("layer %s is already committed as %q: %w", ref, layer.Key, errdefs.ErrAlreadyExists)
	}
	return metadata.Snapshot{}, false, nil
}

// stagedUsage checks that the staged snapshot rec is being committed onto a
// parent that holds the layer its label names, so that its directory is
// stacked on the same content as it was first committed on, and returns the
// layer's usage: stored when it was first committed (and flushed then), or,
// if that snapshot has been removed since, measured now.
func (s *snapshotter) stagedUsage(ctx context.Context, tx *metadata.Tx, rec metadata.Snapshot, parent string) (metadata.Usage, error) {
	want := rec.Labels[labelParentChainID]
	if parent == "" {
		return metadata.Usage{}, fmt.Errorf("snapshot %q holds layer %s, which stands on %s: commit it onto that parent (WithParent): %w",
			rec.Key, rec.Labels[snapshots.LabelSnapshotRef], want, errdefs.ErrFailedPrecondition)
	}
	p, err := tx.Get(parent)
	if err != nil {
		return metadata.Usage{}, fmt.Errorf("commit parent: %w", err)
	}
	if !p.Holds(want) {
		return metadata.Usage{}, fmt.Errorf("snapshot %q holds a layer that stands on %s, but its commit parent %q is another layer: %w",
			rec.Key, want, parent, errdefs.ErrFailedPrecondition)
	}
	if layer, ok := tx.CommittedInDir(rec.DirName); ok {
		return layer.Usage, nil
	}
	return diskUsage(ctx, s.layout.layer(rec.DirName))
}
