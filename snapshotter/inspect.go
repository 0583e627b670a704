package snapshotter

import (
	"context"
	"fmt"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/opencontainers/go-digest"

	"github.com/strata-snapshotter/strata/metadata"
	"github.com/strata-snapshotter/strata/mounts"
)

// Detail is everything strata knows of one snapshot, for operators.
type Detail struct {
	snapshots.Info
	ID uint64
	// Usage of the snapshot's own layer: stored at Commit for a committed
	// snapshot, measured now for an active one; a view's own layer is
	// empty.
	Usage metadata.Usage
	// Dir holds the snapshot's own files.
	Dir string
	// LowerDirs are the layers below, nearest first: the order of
	// lowerdir= in the overlay mount.
	LowerDirs []string
	// WorkDir is overlay's workdir, for an active snapshot.
	WorkDir string
	// Mounts are what Mounts returns, for active snapshots and views.
	Mounts []mount.Mount
	// UIDMapping and GIDMapping are the user namespace a snapshot was
	// made for (containerID:hostID:size ranges), empty when none.
	UIDMapping, GIDMapping string
	// Objects are the object store's contents its layer's stubs stand for
	// (share_files), by digest: part of Usage.Bytes.
	Objects map[digest.Digest]metadata.ObjectUse
}

// Details describes every snapshot. Committed layers are not walked; active
// ones are, outside any transaction.
func (s *snapshotter) Details(ctx context.Context) ([]Detail, error) {
	details, err := s.Index(ctx)
	if err != nil {
		return nil, err
	}
	for i := range details {
		if err := measure(ctx, &details[i]); err != nil {
			return nil, err
		}
	}
	return details, nil
}

// Detail describes the snapshot key, measuring only its own layer: one
// inspect does not walk every running container's upper directory.
func (s *snapshotter) Detail(ctx context.Context, key string) (Detail, error) {
	var d Detail
	err := s.db.View(func(tx *metadata.Tx) error {
		rec, err := tx.Get(key)
		if err != nil {
			return err
		}
		d, err = s.detail(tx, rec)
		return err
	})
	if err != nil {
		return Detail{}, err
	}
	return d, measure(ctx, &d)
}

// Index describes every snapshot from the index alone: an active
// snapshot's usage is left at zero, unmeasured.
func (s *snapshotter) Index(ctx context.Context) ([]Detail, error) {
	var details []Detail
	err := s.db.View(func(tx *metadata.Tx) error {
		return tx.Walk(func(rec metadata.Snapshot) error {
			d, err := s.detail(tx, rec)
			details = append(details, d)
			return err
		})
	})
	return details, err
}

// measure fills in an active snapshot's usage by walking its directory.
func measure(ctx context.Context, d *Detail) error {
	if d.Kind != snapshots.KindActive {
		return nil
	}
	u, err := diskUsage(ctx, d.Dir)
	if err != nil {
		return fmt.Errorf("measure usage of %q: %w", d.Name, err)
	}
	d.Usage = u
	return nil
}

// detail describes rec from the index alone.
func (s *snapshotter) detail(tx *metadata.Tx, rec metadata.Snapshot) (Detail, error) {
	lowers, err := tx.ChainDirs(rec)
	if err != nil {
		return Detail{}, err
	}
	d := Detail{Info: rec.Info(), ID: rec.ID, Usage: rec.Usage, Dir: s.layout.layer(rec.DirName)}
	for _, dir := range lowers {
		d.LowerDirs = append(d.LowerDirs, s.layout.layer(dir))
	}
	if rec.Kind == snapshots.KindActive && !rec.Staged {
		d.WorkDir = s.layout.work(rec.DirName)
	}
	mapping := s.mappingFor(rec.Labels, lowers)
	if rec.Kind != snapshots.KindCommitted {
		d.Mounts = mounts.For(s.mountRequest(tx, rec, lowers, mapping))
	}
	if mapping != nil {
		d.UIDMapping, d.GIDMapping = mapping.uids, mapping.gids
	}
	if objs := tx.DirObjects(rec.DirName); len(objs) > 0 && rec.Kind == snapshots.KindCommitted {
		d.Objects = objs
	}
	return d, nil
}

// Stats is a summary of the store from the index alone, cheap enough for
// every metrics scrape and health check.
type Stats struct {
	// Snapshots counts snapshots by kind.
	Snapshots map[snapshots.Kind]int
	// Bytes and Inodes sum the usage stored for committed layers, each
	// directory once.
	Bytes, Inodes int64
}

// Stats reads the summary in one read transaction; an error means the
// index cannot be read.
func (s *snapshotter) Stats(ctx context.Context) (Stats, error) {
	st := Stats{Snapshots: map[snapshots.Kind]int{}}
	counted := map[string]bool{}
	err := s.db.View(func(tx *metadata.Tx) error {
		return tx.Walk(func(rec metadata.Snapshot) error {
			st.Snapshots[rec.Kind]++
			if rec.Kind != snapshots.KindCommitted || counted[rec.DirName] {
				return nil
			}
			counted[rec.DirName] = true
			st.Bytes += rec.Usage.Bytes
			st.Inodes += rec.Usage.Inodes
			return nil
		})
	})
	return st, err
}
