package snapshotter

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/containerd/containerd/v2/core/snapshots"

	"github.com/strata-snapshotter/strata/metadata"
)

// FsckReport is what Fsck found, and what it removed when asked to repair.
type FsckReport struct {
	Findings []string
	Removed  []string
}

// Fsck checks a stopped store at root: the index against itself, every
// snapshot against its directories (present, real directories, of the right
// name, with the usage stored at Commit), and every directory against the
// index. With repair it removes what no snapshot owns, and nothing else:
// a snapshot whose files are missing or wrong is reported, never deleted.
func Fsck(ctx context.Context, root string, repair bool) (FsckReport, error) {
	root, err := filepath.EvalSymlinks(root)
	if err != nil {
		return FsckReport{}, fmt.Errorf("root: %w", err)
	}
	l := layout{root: root}
	if _, err := os.Stat(l.dbPath()); err != nil {
		return FsckReport{}, fmt.Errorf("no index at %s: %w", l.dbPath(), err)
	}
	db, err := metadata.Open(ctx, l.dbPath())
	if err != nil {
		return FsckReport{}, err
	}
	defer db.Close()

	var (
		r     FsckReport
		recs  []metadata.Snapshot
		owned map[string]uint64
	)
	add := func(format string, args ...any) { r.Findings = append(r.Findings, fmt.Sprintf(format, args...)) }
	err = db.View(func(tx *metadata.Tx) error {
		r.Findings = append(r.Findings, tx.Check()...)
		owned = tx.Dirs()
		return tx.Walk(func(s metadata.Snapshot) error {
			recs = append(recs, s)
			return nil
		})
	})
	if err != nil {
		return r, err
	}

	for _, s := range recs {
		if !isLayerName(s.Dir) {
			add("snapshot %q has directory name %q, which is not a layer name", s.Key, s.Dir)
			continue
		}
		dir := l.layer(s.Dir)
		fi, err := os.Lstat(dir)
		switch {
		case err != nil:
			add("snapshot %q: its layer directory %s is missing", s.Key, dir)
			continue
		case !fi.IsDir():
			add("snapshot %q: %s is a %v, not a directory", s.Key, dir, fi.Mode().Type())
			continue
		}
		if s.Kind == snapshots.KindActive {
			if fi, err := os.Lstat(l.work(s.Dir)); err != nil || !fi.IsDir() {
				add("active snapshot %q: its work directory %s is missing", s.Key, l.work(s.Dir))
			}
		}
		if s.Kind == snapshots.KindCommitted {
			u, err := diskUsage(ctx, dir)
			if err != nil {
				add("snapshot %q: cannot measure %s: %v", s.Key, dir, err)
			} else if u.Bytes != s.Usage.Bytes || u.Inodes != s.Usage.Inodes {
				add("committed snapshot %q holds %d bytes in %d inodes, but %d bytes in %d inodes were stored at commit",
					s.Key, u.Bytes, u.Inodes, s.Usage.Bytes, s.Usage.Inodes)
			}
		}
	}

	var unowned []string
	for _, d := range []string{l.layersRoot(), l.workRoot()} {
		entries, err := os.ReadDir(d)
		if err != nil {
			add("cannot read %s: %v", d, err)
			continue
		}
		for _, e := range entries {
			if _, ok := owned[e.Name()]; !ok {
				unowned = append(unowned, filepath.Join(d, e.Name()))
			}
		}
	}
	sort.Strings(unowned)
	for _, p := range unowned {
		add("%s belongs to no snapshot", p)
	}
	if repair {
		s := &snapshotter{layout: l, removing: map[string]bool{}, syncRemove: true}
		for _, p := range unowned {
			s.deleteNow(ctx, p)
			if _, err := os.Lstat(p); os.IsNotExist(err) {
				r.Removed = append(r.Removed, p)
			}
		}
	}
	return r, nil
}
