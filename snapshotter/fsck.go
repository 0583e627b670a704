package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/strata-snapshotter/strata/metadata"
	"github.com/strata-snapshotter/strata/objects"
)

// FsckReport is what Fsck found, and what it changed when asked to repair.
type FsckReport struct {
	Findings []string
	Restored []string // directories put back where their snapshot expects them
	Removed  []string
}

// FsckOptions say what Fsck may change.
type FsckOptions struct {
	// Repair puts back what a Remove that did not commit moved aside and
	// deletes what no snapshot owns, exactly as strata's start-up does
	// (see ownership.go). A snapshot whose files are missing or changed is
	// reported, never deleted.
	Repair bool
	// DiscardUnindexed deletes the layers no index records: every layer of
	// a store whose index is missing or empty (the state in which strata
	// refuses to start), or the unindexed layers of one with an index.
	DiscardUnindexed bool
	// VerifyObjects reads every object of the store (share_files) and
	// checks that its content hashes to its name.
	VerifyObjects bool
}

// Fsck checks a stopped store at root: the index against itself, every
// snapshot against its directories (present, real directories, of the right
// name, with the usage stored at Commit), and every entry under the root
// against the index.
func Fsck(ctx context.Context, root string, opts FsckOptions) (FsckReport, error) {
	root, err := filepath.EvalSymlinks(root)
	if err != nil {
		return FsckReport{}, fmt.Errorf("root: %w", err)
	}
	l := layout{root: root}
	lock, err := l.lockRoot()
	if err != nil {
		return FsckReport{}, err
	}
	defer lock.Close()
	if opts.DiscardUnindexed {
		return discardUnindexed(ctx, l)
	}
	if err := l.checkIndexPresent(); err != nil {
		return FsckReport{}, err
	}
	if !exists(l.dbPath()) {
		return FsckReport{}, fmt.Errorf("no index at %s: %w", l.dbPath(), errdefs.ErrNotFound)
	}
	open := metadata.OpenReadOnly
	if opts.Repair {
		open = metadata.Open // migrates an older schema, as the daemon would
	}
	db, err := open(ctx, l.dbPath())
	if err != nil {
		return FsckReport{}, l.withIndexRemedy(err)
	}
	defer db.Close()

	var r FsckReport
	// Objects are read once: after the repair, when there is one.
	findings, strays, err := check(ctx, l, db, opts.VerifyObjects && !opts.Repair)
	if err != nil || !opts.Repair {
		r.Findings = findings
		return r, err
	}
	r.repair(ctx, strays)
	// What is left is what repair cannot fix.
	r.Findings, _, err = check(ctx, l, db, opts.VerifyObjects)
	return r, err
}

// check compares the index with itself and with the disk, and surveys the
// root.
func check(ctx context.Context, l layout, db *metadata.DB, verify bool) (findings []string, strays []stray, err error) {
	var (
		recs     []metadata.Snapshot
		recorded owned
		objs     map[string]map[digest.Digest]metadata.ObjectUse // by directory
		users    map[digest.Digest][]string
	)
	err = db.View(func(tx *metadata.Tx) (err error) {
		findings = append(findings, tx.Check()...)
		if recorded, err = recordedOwners(tx); err != nil {
			return err
		}
		objs = map[string]map[digest.Digest]metadata.ObjectUse{}
		for _, dir := range tx.ObjectDirs() {
			objs[dir] = tx.DirObjects(dir)
		}
		users = objectUsers(tx)
		return tx.Walk(func(s metadata.Snapshot) error {
			recs = append(recs, s)
			return nil
		})
	})
	if err != nil {
		return nil, nil, err
	}
	if strays, err = l.survey(recorded, func(string) bool { return false }, true); err != nil {
		return nil, nil, err
	}
	restoring := map[string]bool{}
	for _, st := range strays {
		if st.fate == restore {
			restoring[st.to] = true
		}
	}
	for _, s := range recs {
		findings = append(findings, checkRecord(ctx, l, s, restoring)...)
	}
	for _, st := range strays {
		findings = append(findings, st.String())
	}
	findings = append(findings, checkStubs(l, objs)...)
	if verify {
		findings = append(findings, verifyObjects(l, users)...)
	}
	return findings, strays, nil
}

// checkStubs checks that every stub in a layer that holds them stands for
// an object the index records for the layer, and that the object is there.
func checkStubs(l layout, objs map[string]map[digest.Digest]metadata.ObjectUse) []string {
	var findings []string
	store := objects.Open(l.objectsRoot())
	for _, dir := range slices.Sorted(maps.Keys(objs)) {
		if !exists(l.layer(dir)) {
			continue // reported with its snapshot
		}
		stubs, err := objects.StubsIn(l.layer(dir))
		if err != nil {
			findings = append(findings, fmt.Sprintf("layer %s: cannot read its stubs: %v", l.layer(dir), err))
			continue
		}
		for _, d := range slices.Sorted(maps.Keys(stubs)) {
			if _, ok := objs[dir][d]; !ok {
				findings = append(findings, fmt.Sprintf("layer %s has stubs of object %s, which the index does not record for it", l.layer(dir), d))
			}
			if !exists(store.Path(d)) {
				findings = append(findings, fmt.Sprintf("layer %s has stubs of object %s, which is missing: those files cannot be read; remove the images and containers that use the layer, then pull again", l.layer(dir), d))
			}
		}
	}
	return findings
}

// objectUsers names, by object, the snapshots whose layers stand for it.
func objectUsers(tx *metadata.Tx) map[digest.Digest][]string {
	users := map[digest.Digest][]string{}
	for d, refs := range tx.Objects() {
		for _, dir := range refs.Dirs {
			for _, id := range tx.DirUsers(dir) {
				if rec, err := tx.GetByID(id); err == nil {
					users[d] = append(users[d], rec.Key)
				}
			}
		}
		slices.Sort(users[d])
	}
	return users
}

// verifyObjects hashes every object of the store; users names, by object,
// the snapshots whose layers stand for it.
func verifyObjects(l layout, users map[digest.Digest][]string) []string {
	if !exists(l.objectsRoot()) {
		return nil
	}
	store := objects.Open(l.objectsRoot())
	var findings []string
	err := store.Walk(func(e objects.Entry) error {
		if e.Digest == "" {
			return nil // reported by the survey
		}
		if got, err := objects.Hash(e.Path); err != nil {
			findings = append(findings, fmt.Sprintf("object %s: %v", e.Path, err))
		} else if got != e.Digest {
			findings = append(findings, fmt.Sprintf("object %s holds content of digest %s: the files that stand for it read wrong in snapshots %q; remove the images and containers that use them (until none is left, a pull shares the bad object again), then pull again", e.Path, got, users[e.Digest]))
		}
		return nil
	})
	if err != nil {
		findings = append(findings, fmt.Sprintf("object store: %v", err))
	}
	return findings
}

// checkRecord compares one snapshot with its directories. A layer directory
// that a restore will put back is not missing.
func checkRecord(ctx context.Context, l layout, s metadata.Snapshot, restoring map[string]bool) []string {
	var findings []string
	add := func(format string, args ...any) { findings = append(findings, fmt.Sprintf(format, args...)) }
	if !isLayerName(s.DirName) {
		add("snapshot %q has directory name %q, which is not a layer name", s.Key, s.DirName)
		return findings
	}
	dir := l.layer(s.DirName)
	fi, err := os.Lstat(dir)
	switch {
	case restoring[dir]:
		return findings
	case err != nil:
		add("snapshot %q: its layer directory %s is missing; its contents are lost: remove the snapshot through containerd and pull again", s.Key, dir)
		return findings
	case !fi.IsDir():
		add("snapshot %q: %s is a %v, not a directory", s.Key, dir, fi.Mode().Type())
		return findings
	}
	if _, err := mappingOf(s.Labels); err != nil && s.Kind != snapshots.KindCommitted {
		add("snapshot %q: its ID mapping cannot be used, and its mounts carry none: %v", s.Key, err)
	}
	if s.Kind == snapshots.KindActive && !s.Staged && !restoring[l.work(s.DirName)] {
		if fi, err := os.Lstat(l.work(s.DirName)); err != nil || !fi.IsDir() {
			add("active snapshot %q: its work directory %s is missing", s.Key, l.work(s.DirName))
		}
	}
	if s.Kind == snapshots.KindCommitted {
		u, err := diskUsage(ctx, dir)
		if err != nil {
			add("snapshot %q: cannot measure %s: %v", s.Key, dir, err)
		} else if u.Bytes != s.Usage.Bytes || u.Inodes != s.Usage.Inodes {
			add("committed snapshot %q holds %d bytes in %d inodes, but %d bytes in %d inodes were stored at commit: its files were changed by hand; remove the images that use it and pull them again",
				s.Key, u.Bytes, u.Inodes, s.Usage.Bytes, s.Usage.Inodes)
		}
	}
	return findings
}

// repair acts on the survey as start-up does: restores, then deletions.
// Entries that are not strata's are left alone.
func (r *FsckReport) repair(ctx context.Context, strays []stray) {
	for _, st := range strays {
		switch st.fate {
		case restore:
			if err := os.Rename(st.path, st.to); err != nil {
				r.Findings = append(r.Findings, fmt.Sprintf("cannot put back %s: %v", st.path, err))
				continue
			}
			r.Restored = append(r.Restored, st.to)
		case garbage:
			r.remove(ctx, st.path)
		}
	}
}

// remove deletes path as Cleanup would, and lists it as removed once it is
// gone (deleteDir leaves a directory a mount uses, and says which).
func (r *FsckReport) remove(ctx context.Context, path string) {
	points := deleteDir(ctx, path)
	if !exists(path) {
		r.Removed = append(r.Removed, path)
		return
	}
	if len(points) > 0 {
		f := fmt.Sprintf("kept %s: mounts use it (%s); stop the containers on strata and run fsck again", path, strings.Join(points, ", "))
		if !slices.Contains(r.Findings, f) {
			r.Findings = append(r.Findings, f)
		}
	}
}

// discardUnindexed deletes the layers no index records. With the index
// missing or empty (the state in which strata refuses to start) that is
// every layer, and the empty index goes too, so that the next start begins
// an empty store. With an index, it is the unindexed layers ownership.go
// keeps (an older copy of the index was put back, say). What is not
// strata's stays.
func discardUnindexed(ctx context.Context, l layout) (FsckReport, error) {
	recorded := owned{dirs: map[string]bool{}, objects: map[digest.Digest]bool{}, released: map[digest.Digest]bool{}}
	fi, err := os.Stat(l.dbPath())
	indexed := err == nil && fi.Size() > 0
	if indexed {
		db, err := metadata.OpenReadOnly(ctx, l.dbPath())
		if err != nil {
			return FsckReport{}, l.withIndexRemedy(err)
		}
		err = db.View(func(tx *metadata.Tx) (err error) {
			recorded, err = recordedOwners(tx)
			return err
		})
		db.Close()
		if err != nil {
			return FsckReport{}, err
		}
	}
	// Twice: the objects of the layers the first pass deletes are the
	// second's (their stubs owned them while the layers were there).
	var r FsckReport
	for range 2 {
		strays, err := l.survey(recorded, func(string) bool { return false }, true)
		if err != nil {
			return r, err
		}
		for _, st := range strays {
			if (st.fate == unindexed || (!indexed && st.fate == garbage)) && !slices.Contains(r.Removed, st.path) {
				r.remove(ctx, st.path)
			}
		}
	}
	if !indexed {
		if err := os.Remove(l.dbPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
			return r, fmt.Errorf("remove the empty index: %w", err)
		}
	}
	return r, nil
}
