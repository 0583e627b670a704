package snapshotter

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/strata-snapshotter/strata/metadata"
)

// The directory layout under the root belongs to this file alone:
//
//	metadata.db                  the index (package metadata)
//	snapshots/<id>/fs            a snapshot's files: overlay's upperdir, or a lowerdir
//	snapshots/<id>/work          overlay's workdir, for active snapshots
//	snapshots/new-*              a snapshot being built; renamed to <id> when recorded
//	snapshots/rm-<id>            a removed snapshot's directory awaiting deletion
//	l/<link>                     -> ../snapshots/<id>/fs, a short name for lowerdir=
//	empty/                       an empty lower directory for layers unpacked without their parent
//
// Keys never appear in a path: directories are named by id, which the index
// hands out.
const (
	dbFile       = "metadata.db"
	snapshotsDir = "snapshots"
	linksDir     = "l"
	emptyDir     = "empty"
	tempPrefix   = "new-"
	removePrefix = "rm-"
)

// linkLen is the length of a link name. Six characters of base32 give 2^30
// names, so random names rarely collide (and a collision is retried), while a
// 500-layer lowerdir= takes 500*7 bytes once containerd's mount.All makes it
// relative to l/, leaving room in mount(2)'s page for upperdir and workdir.
const linkLen = 6

const linkAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"

type layout struct {
	root string
}

func (l layout) dbPath() string        { return filepath.Join(l.root, dbFile) }
func (l layout) snapshotsRoot() string { return filepath.Join(l.root, snapshotsDir) }
func (l layout) linksRoot() string     { return filepath.Join(l.root, linksDir) }
func (l layout) dir(id uint64) string {
	return filepath.Join(l.snapshotsRoot(), strconv.FormatUint(id, 10))
}
func (l layout) fs(id uint64) string   { return filepath.Join(l.dir(id), "fs") }
func (l layout) work(id uint64) string { return filepath.Join(l.dir(id), "work") }
func (l layout) removing(id uint64) string {
	return filepath.Join(l.snapshotsRoot(), removePrefix+strconv.FormatUint(id, 10))
}
func (l layout) link(name string) string { return filepath.Join(l.linksRoot(), name) }
func (l layout) empty() string           { return filepath.Join(l.root, emptyDir) }
func linkTarget(id uint64) string {
	return filepath.Join("..", snapshotsDir, strconv.FormatUint(id, 10), "fs")
}
func (l layout) tempDir() (string, error) { return os.MkdirTemp(l.snapshotsRoot(), tempPrefix) }

// init creates the skeleton of the layout.
func (l layout) init() error {
	for _, d := range []string{l.root, l.snapshotsRoot(), l.linksRoot(), l.empty()} {
		if err := os.Mkdir(d, 0o700); err != nil && !os.IsExist(err) {
			return err
		}
	}
	return nil
}

// idOfDir returns the id a name under snapshots/ belongs to: "<id>" or
// "rm-<id>"; ok is false for temporary and foreign names.
func idOfDir(name string) (id uint64, ok bool) {
	id, err := strconv.ParseUint(strings.TrimPrefix(name, removePrefix), 10, 64)
	return id, err == nil
}

// newLinkName returns a link name no snapshot in tx uses.
func newLinkName(tx *metadata.Tx) (string, error) {
	for range 16 {
		var b [linkLen]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", err
		}
		for i := range b {
			b[i] = linkAlphabet[int(b[i])%len(linkAlphabet)]
		}
		if name := string(b[:]); !tx.LinkInUse(name) {
			return name, nil
		}
	}
	return "", fmt.Errorf("no free link name after 16 tries")
}

// makeLink points l/<name> at the layer of id. A link of that name that the
// index does not own is a leftover of a transaction that never committed, and
// is replaced.
func (l layout) makeLink(name string, id uint64) error {
	p := l.link(name)
	err := os.Symlink(linkTarget(id), p)
	if os.IsExist(err) {
		if err := os.Remove(p); err != nil {
			return err
		}
		err = os.Symlink(linkTarget(id), p)
	}
	return err
}
