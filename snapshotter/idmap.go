package snapshotter

import (
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"

	"github.com/strata-snapshotter/strata/metadata"
)

// idMapping is the user namespace a snapshot is for: containerd's remap-ids
// labels, each a comma-separated list of containerID:hostID:size ranges (the
// form containerd's own userns package, internal to containerd, writes).
// strata serves it as containerd's overlayfs does: the snapshot's root is
// owned by the mapped root, and its mounts carry uidmap=/gidmap=, which
// containerd applies as idmapped mounts of the layers. No image is copied.
type idMapping struct {
	uids, gids string // the labels, as given
	rootUID    int
	rootGID    int
}

// mappingOf returns the ID mapping labels asks for, or nil when they ask
// for none. A malformed mapping, or one that maps no root, is
// InvalidArgument.
func mappingOf(labels map[string]string) (*idMapping, error) {
	uids, uok := labels[snapshots.LabelSnapshotUIDMapping]
	gids, gok := labels[snapshots.LabelSnapshotGIDMapping]
	if !uok && !gok {
		return nil, nil
	}
	if !uok || !gok {
		return nil, fmt.Errorf("labels %s and %s go together: %w", snapshots.LabelSnapshotUIDMapping, snapshots.LabelSnapshotGIDMapping, errdefs.ErrInvalidArgument)
	}
	m := &idMapping{uids: uids, gids: gids}
	var err error
	if m.rootUID, err = mappedRoot(uids); err != nil {
		return nil, fmt.Errorf("label %s=%q: %v: %w", snapshots.LabelSnapshotUIDMapping, uids, err, errdefs.ErrInvalidArgument)
	}
	if m.rootGID, err = mappedRoot(gids); err != nil {
		return nil, fmt.Errorf("label %s=%q: %v: %w", snapshots.LabelSnapshotGIDMapping, gids, err, errdefs.ErrInvalidArgument)
	}
	return m, nil
}

// mappedRoot checks a list of containerID:hostID:size ranges and returns
// the host ID container ID 0 maps to.
func mappedRoot(ranges string) (int, error) {
	root := -1
	for r := range strings.SplitSeq(ranges, ",") {
		f := strings.Split(r, ":")
		if len(f) != 3 {
			return 0, fmt.Errorf("range %q is not containerID:hostID:size", r)
		}
		var n [3]uint64
		for i, s := range f {
			v, err := strconv.ParseUint(s, 10, 32)
			if err != nil {
				return 0, fmt.Errorf("range %q: %v", r, err)
			}
			n[i] = v
		}
		if n[2] == 0 || n[0]+n[2]-1 >= math.MaxUint32 || n[1]+n[2]-1 >= math.MaxUint32 {
			return 0, fmt.Errorf("range %q is empty or runs past the largest ID", r)
		}
		if n[0] == 0 {
			root = int(n[1])
		}
	}
	if root < 0 {
		return 0, fmt.Errorf("no range maps the container's root (ID 0)")
	}
	return root, nil
}

// keepsMapping refuses an update of an active snapshot's or a view's labels
// that would change its ID mapping: its root is owned by the mapped root,
// and what its container wrote is stored under the mapped IDs, so another
// mapping would show it all under the wrong owners. containerd itself
// passes the mapping labels through unchanged. A committed snapshot's
// labels are free: it is never mounted with its own.
func keepsMapping(old, updated metadata.Snapshot) error {
	if old.Kind == snapshots.KindCommitted {
		return nil
	}
	for _, k := range []string{snapshots.LabelSnapshotUIDMapping, snapshots.LabelSnapshotGIDMapping} {
		if was, now := old.Labels[k], updated.Labels[k]; was != now {
			made := fmt.Sprintf("%q", was)
			if was == "" {
				made = "none"
			}
			return fmt.Errorf("label %s of snapshot %q is its ID mapping, fixed when it was made (%s, not %q): %w",
				k, old.Key, made, now, errdefs.ErrFailedPrecondition)
		}
	}
	return nil
}

// mappingFor is the ID mapping the mounts of a snapshot with labels on
// lowers carry, or nil: none without mapping labels (the labels were
// checked when the snapshot was made, Update keeps them, and fsck reports a
// record that holds bad ones); none where the kernel has no idmapped
// mounts; and none where the image below is already in the user namespace.
// containerd copies the image, chowned, for a snapshotter whose config
// entry does not list remap-ids (this kernel's lack, or a config written
// before strata had it) and still passes the labels: an idmapped mount of
// the copy would shift its owners twice. The copy's root is owned by the
// mapped root; an image's root is not.
func (s *snapshotter) mappingFor(labels map[string]string, lowers []string) *idMapping {
	m, err := mappingOf(labels)
	if err != nil || m == nil || !s.idmapped {
		return nil
	}
	if len(lowers) > 0 {
		if fi, err := os.Stat(s.layout.layer(lowers[0])); err == nil {
			if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) == m.rootUID && int(st.Gid) == m.rootGID {
				return nil
			}
		}
	}
	return m
}

// options are the mount options that hand the mapping to containerd.
func (m *idMapping) options() []string {
	if m == nil {
		return nil
	}
	return []string{"uidmap=" + m.uids, "gidmap=" + m.gids}
}
