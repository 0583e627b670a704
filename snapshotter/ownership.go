package snapshotter

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/strata-snapshotter/strata/objects"
)

// What under the root belongs to whom, and what may be deleted, is decided
// here and only here: start-up, Cleanup and fsck all act on what survey
// returns, so they can never disagree. The rules:
//
//   - metadata.db, layers/, work/, empty/, objects/ (and lost+found, when
//     the root is a filesystem of its own) are the layout itself;
//   - layers/NAME and work/NAME belong to the snapshot recorded with
//     directory NAME (by the directory index or by the record itself);
//   - layers/rm-NAME and work/rm-NAME are directories a Remove moved aside.
//     If NAME is still recorded and its directory is missing, the Remove did
//     not commit (a crash, or a failed transaction not yet rolled back): the
//     directory is put back. Otherwise the removal committed: garbage;
//   - an empty layers/NAME of a name no snapshot has was made by a Prepare
//     whose transaction never committed (a layer is written only after its
//     Prepare commits): garbage, and so is its work/NAME;
//   - a layers/NAME with files in it that no snapshot has cannot come from a
//     crash: the index is stale (an older copy put back) or damaged. It is
//     "unindexed": kept, with its work/NAME, and reported, until an operator
//     runs fsck --discard-unindexed;
//   - layers/tmp-* and probe-* at the root were made by a Prepare or a
//     start-up probe cut off by a crash: garbage;
//   - an object under objects/ belongs to the layers whose stubs stand for
//     it: those the index records it for (before the stubs are made), and
//     the stubs in unindexed layers. An object the index released (the last
//     layer standing for it went) and no layer stands for is garbage. One
//     the index neither records nor released (the index is older than the
//     object, or damaged) is "unindexed", kept like such a layer;
//   - anything else, and anything of the names above that is not a
//     directory, is not strata's: reported, never deleted.
//
// Garbage is deleted by Cleanup, at start and by fsck --repair (objects
// inside the transaction that finds them unowned, so that no Commit records
// one meanwhile); restoring happens at start, in Cleanup and by fsck
// --repair.

// fate is what becomes of an entry under the root.
type fate int

const (
	garbage   fate = iota // made by strata, owned by nothing: may be deleted
	restore               // a recorded snapshot's directory moved aside: put back
	unindexed             // a layer with files the index does not record: kept
	foreign               // not a name strata makes: left alone
)

// stray is an entry under the root that no snapshot owns as it stands.
type stray struct {
	path string
	fate fate
	// to is where a restore puts the entry back.
	to string
	// why says, for an operator, how the entry came to be.
	why string
	// object marks an object of the store, whose content is digest.
	object bool
	digest digest.Digest
}

func (s stray) String() string {
	switch s.fate {
	case restore:
		return fmt.Sprintf("%s is the directory of a recorded snapshot, moved aside by a removal that did not commit (%s); start-up and fsck --repair put it back to %s", s.path, s.why, s.to)
	case unindexed:
		return fmt.Sprintf("%s is not recorded by the index but is not garbage (%s); it is kept until you put back the index that records it, or discard it with fsck --discard-unindexed", s.path, s.why)
	case foreign:
		return fmt.Sprintf("%s is not a name strata makes (%s); it is left alone", s.path, s.why)
	default:
		return fmt.Sprintf("%s belongs to no snapshot (%s); start-up, Cleanup and fsck --repair delete it", s.path, s.why)
	}
}

// owned is what the index gives an owner to, and the objects it released.
type owned struct {
	dirs     map[string]bool        // layer directory names of snapshots
	objects  map[digest.Digest]bool // objects of their stubs
	released map[digest.Digest]bool
}

// survey lists every entry under the root that no recorded snapshot owns,
// with its fate. busy says whether a path is already being deleted in the
// background, or used by a conversion (such a path is left out). Without
// wholeStore it judges, of the object store, only the released objects:
// Cleanup's pass, which must not walk every object inside its transaction.
func (l layout) survey(recorded owned, busy func(string) bool, wholeStore bool) ([]stray, error) {
	var strays []stray
	add := func(s stray) {
		if !busy(s.path) {
			strays = append(strays, s)
		}
	}
	rootEntries, err := os.ReadDir(l.root)
	if err != nil {
		return nil, err
	}
	for _, e := range rootEntries {
		p := filepath.Join(l.root, e.Name())
		switch name := e.Name(); {
		case name == dbFile || name == layersDir || name == workDir || name == emptyDir || name == objectsDir:
		case name == "lost+found" && e.IsDir():
		case strings.HasPrefix(name, probePrefix) && e.IsDir():
			add(stray{path: p, fate: garbage, why: "a start-up probe cut off by a crash"})
		default:
			add(stray{path: p, fate: foreign, why: "unknown entry in the root"})
		}
	}
	kept := map[string]bool{} // unindexed layers, whose work directories stay too
	for _, dir := range []string{l.layersRoot(), l.workRoot()} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			if s, ok := l.judge(dir, e, recorded.dirs, kept); ok {
				if s.fate == unindexed {
					kept[e.Name()] = true
				}
				add(s)
			}
		}
	}
	objs, err := l.objectStrays(recorded, kept, wholeStore)
	if err != nil {
		return nil, err
	}
	for _, s := range objs {
		add(s)
	}
	sort.Slice(strays, func(i, j int) bool { return strays[i].path < strays[j].path })
	return strays, nil
}

// objectStrays judges the entries of the object store (the released
// objects alone, without wholeStore): an object is owned when the index
// records it or a stub in a kept (unindexed) layer stands for it.
func (l layout) objectStrays(recorded owned, kept map[string]bool, wholeStore bool) ([]stray, error) {
	if !exists(l.objectsRoot()) || !wholeStore && len(recorded.released) == 0 {
		return nil, nil
	}
	owns := maps.Clone(recorded.objects)
	for name := range kept {
		stubs, err := objects.StubsIn(l.layer(name))
		if err != nil {
			return nil, fmt.Errorf("read the stubs of unindexed layer %s: %w", l.layer(name), err)
		}
		maps.Copy(owns, stubs)
	}
	store := objects.Open(l.objectsRoot())
	judge := func(e objects.Entry) *stray {
		switch {
		case e.Digest == "":
			return &stray{path: e.Path, fate: foreign, why: "not an object of the store"}
		case owns[e.Digest]:
			return nil
		case recorded.released[e.Digest]:
			return &stray{path: e.Path, fate: garbage, object: true, digest: e.Digest, why: "an object no layer's stubs stand for any more"}
		default:
			return &stray{path: e.Path, fate: unindexed, object: true, digest: e.Digest, why: "an object the index neither records nor released: the index is older than the object, or damaged"}
		}
	}
	var strays []stray
	if !wholeStore {
		for d := range recorded.released {
			if p := store.Path(d); exists(p) {
				if st := judge(objects.Entry{Path: p, Digest: d}); st != nil {
					strays = append(strays, *st)
				}
			}
		}
		return strays, nil
	}
	err := store.Walk(func(e objects.Entry) error {
		if st := judge(e); st != nil {
			strays = append(strays, *st)
		}
		return nil
	})
	return strays, err
}

// judge decides the fate of entry e of dir (layers/, then work/); ok is
// false when a recorded snapshot owns it. kept names the unindexed layers
// found so far.
func (l layout) judge(dir string, e os.DirEntry, recorded, kept map[string]bool) (s stray, ok bool) {
	name := e.Name()
	p := filepath.Join(dir, name)
	moved, isMoved := strings.CutPrefix(name, removePrefix)
	inLayers := dir == l.layersRoot()
	switch {
	case !e.IsDir():
		return stray{path: p, fate: foreign, why: "not a directory"}, true
	case isLayerName(name) && recorded[name]:
		return stray{}, false
	case isLayerName(name) && inLayers && !isEmptyDir(p):
		return stray{path: p, fate: unindexed, why: "a layer with files: the index is older than the layers, or damaged"}, true
	case isLayerName(name) && kept[name]:
		return stray{path: p, fate: unindexed, why: "the work directory of such a layer"}, true
	case isLayerName(name):
		return stray{path: p, fate: garbage, why: "made by a Prepare whose transaction did not commit"}, true
	case isMoved && isLayerName(moved) && recorded[moved] && !exists(filepath.Join(dir, moved)):
		return stray{path: p, fate: restore, to: filepath.Join(dir, moved), why: "interrupted Remove"}, true
	case isMoved && isLayerName(moved):
		return stray{path: p, fate: garbage, why: "a removed snapshot's directory awaiting deletion"}, true
	case inLayers && strings.HasPrefix(name, tempPrefix):
		return stray{path: p, fate: garbage, why: "a layer being built when its transaction did not commit"}, true
	default:
		return stray{path: p, fate: foreign, why: "unknown entry in " + filepath.Base(dir) + "/"}, true
	}
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// isEmptyDir reports whether p is a directory with nothing in it; an
// unreadable directory counts as not empty, so it is never taken for
// garbage.
func isEmptyDir(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	return len(names) == 0 && err != nil
}

// unindexedLayers counts the layer directories under layers/ (recorded-looking
// names and directories moved aside by Remove): what a missing index would
// otherwise leave unowned.
func (l layout) unindexedLayers() (int, error) {
	entries, err := os.ReadDir(l.layersRoot())
	if os.IsNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range entries {
		moved, isMoved := strings.CutPrefix(e.Name(), removePrefix)
		if e.IsDir() && (isLayerName(e.Name()) || (isMoved && isLayerName(moved))) {
			n++
		}
	}
	return n, nil
}

// checkIndexPresent refuses a store whose index is missing (or empty, which
// is what a lost file looks like after some crashes) while layer
// directories exist: the index was lost, the layers are not garbage. It
// creates nothing, so the refusal holds on every start until an operator
// puts the index back or discards the layers with fsck.
func (l layout) checkIndexPresent() error {
	fi, err := os.Stat(l.dbPath())
	switch {
	case err == nil && fi.Size() > 0:
		return nil
	case err != nil && !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("check the index %s: %w", l.dbPath(), err)
	}
	n, err := l.unindexedLayers()
	if err != nil || n == 0 {
		return err
	}
	return fmt.Errorf("the index %s is missing or empty, but %s holds %d layer directories; strata will not treat them as garbage. "+
		"Put a copy of the index back at %s and start again, or discard every layer "+
		"with: strata-snapshotter fsck --root %s --discard-unindexed (then remove and pull again the images containerd had on strata): %w",
		l.dbPath(), l.layersRoot(), n, l.dbPath(), l.root, errdefs.ErrFailedPrecondition)
}

// withIndexRemedy adds to an error opening a damaged index (DataLoss: not
// bbolt, truncated, unreadable, another program's) what the operator does.
func (l layout) withIndexRemedy(err error) error {
	if !errdefs.IsDataLoss(err) {
		return err
	}
	return fmt.Errorf("%w. Move %s aside (keep it), then put a good copy of the index back, or discard every layer with: strata-snapshotter fsck --root %s --discard-unindexed",
		err, l.dbPath(), l.root)
}
