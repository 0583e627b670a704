package snapshotter

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containerd/errdefs"
)

// What under the root belongs to whom, and what may be deleted, is decided
// here and only here: start-up, Cleanup and fsck all act on what survey
// returns, so they can never disagree. The rules:
//
//   - metadata.db, layers/, work/ and empty/ are the layout itself;
//   - layers/NAME and work/NAME belong to the snapshot recorded with
//     directory NAME;
//   - layers/rm-NAME and work/rm-NAME are directories a Remove moved aside.
//     If NAME is still recorded and its directory is missing, the Remove did
//     not commit (a crash, or a failed transaction not yet rolled back): the
//     directory is put back. Otherwise the removal committed: garbage;
//   - layers/NAME and work/NAME of a name no snapshot has, layers/tmp-*, and
//     probe-* at the root were made by a transaction that never committed,
//     or by a start-up probe cut off by a crash: garbage;
//   - any other name is not one strata makes: it is reported, never deleted.
//
// Garbage is deleted by Cleanup, at start and by fsck --repair; restoring
// happens at start, in Cleanup and by fsck --repair.

// fate is what becomes of an entry under the root.
type fate int

const (
	garbage fate = iota // made by strata, owned by nothing: may be deleted
	restore             // a recorded snapshot's directory moved aside: put back
	foreign             // not a name strata makes: left alone
)

// stray is an entry under the root that no snapshot owns as it stands.
type stray struct {
	path string
	fate fate
	// to is where a restore puts the entry back.
	to string
	// why says, for an operator, how the entry came to be.
	why string
}

func (s stray) String() string {
	switch s.fate {
	case restore:
		return fmt.Sprintf("%s is the directory of a recorded snapshot, moved aside by a removal that did not commit (%s); it goes back to %s", s.path, s.why, s.to)
	case foreign:
		return fmt.Sprintf("%s is not a name strata makes (%s); it is left alone", s.path, s.why)
	default:
		return fmt.Sprintf("%s belongs to no snapshot (%s)", s.path, s.why)
	}
}

// survey lists every entry under the root that no recorded snapshot owns,
// with its fate. recorded holds the directory names the index gives to
// snapshots; busy says whether a path is already being deleted in the
// background (such a path is left out).
func (l layout) survey(recorded map[string]bool, busy func(string) bool) ([]stray, error) {
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
		case name == dbFile || name == layersDir || name == workDir || name == emptyDir:
		case name == "lost+found" && e.IsDir(): // a root that is a filesystem of its own
		case strings.HasPrefix(name, probePrefix) && e.IsDir():
			add(stray{path: p, fate: garbage, why: "a start-up probe cut off by a crash"})
		default:
			add(stray{path: p, fate: foreign, why: "unknown entry in the root"})
		}
	}
	for _, dir := range []string{l.layersRoot(), l.workRoot()} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			if s, ok := l.judge(dir, e.Name(), recorded); ok {
				add(s)
			}
		}
	}
	sort.Slice(strays, func(i, j int) bool { return strays[i].path < strays[j].path })
	return strays, nil
}

// judge decides the fate of name in dir (layers/ or work/); ok is false when
// a recorded snapshot owns it.
func (l layout) judge(dir, name string, recorded map[string]bool) (s stray, ok bool) {
	p := filepath.Join(dir, name)
	moved, isMoved := strings.CutPrefix(name, removePrefix)
	switch {
	case isLayerName(name) && recorded[name]:
		return stray{}, false
	case isLayerName(name):
		return stray{path: p, fate: garbage, why: "made by a snapshot transaction that did not commit"}, true
	case isMoved && isLayerName(moved) && recorded[moved] && !exists(filepath.Join(dir, moved)):
		return stray{path: p, fate: restore, to: filepath.Join(dir, moved), why: "interrupted Remove"}, true
	case isMoved && isLayerName(moved):
		return stray{path: p, fate: garbage, why: "a removed snapshot's directory awaiting deletion"}, true
	case dir == l.layersRoot() && strings.HasPrefix(name, tempPrefix):
		return stray{path: p, fate: garbage, why: "a layer being built when its transaction did not commit"}, true
	default:
		return stray{path: p, fate: foreign, why: "unknown entry in " + filepath.Base(dir) + "/"}, true
	}
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
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
		if isLayerName(e.Name()) || (isMoved && isLayerName(moved)) {
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
		"Put a copy of the index back at %s and start again, or discard every layer (containerd must then pull its images again) "+
		"with: strata-snapshotter fsck --root %s --discard-unindexed: %w",
		l.dbPath(), l.layersRoot(), n, l.dbPath(), l.root, errdefs.ErrFailedPrecondition)
}
