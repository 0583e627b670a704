package snapshotter

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// The directory layout under the root: every path is built here, and
// ownership.go reads the names back.
//
//	metadata.db          the index (package metadata)
//	layers/<dir>         a snapshot's files: overlay's upperdir, or a lowerdir of its children
//	layers/tmp-*         a layer being built; renamed to <dir> inside the transaction recording it
//	layers/rm-<dir>      a removed snapshot's layer awaiting deletion
//	work/<dir>           overlay's workdir, for active snapshots
//	work/rm-<dir>        a removed snapshot's workdir awaiting deletion
//	empty/               an empty lower directory for layers unpacked without their parent
//	objects/             the object store of shared files (share.go; package objects)
//	probe-*              the overlay mounted once at start to check the kernel and options
//
// ownership.go says which of these belong to a snapshot and which may go.
//
// A layer's directory name is short and of fixed length, and all layers sit
// in one directory, so that lowerdir= of a 500-layer chain fits in the one
// page of options mount(2) takes: containerd's mount.All passes the lower
// directories relative to layers/ when the options grow long, and each then
// costs its name and a separator. The names are real directories, not links
// to them, so tools that read a mount's options and walk its directories
// (BuildKit's differ does) see the files. Keys never appear in a path.
const (
	dbFile       = "metadata.db"
	layersDir    = "layers"
	workDir      = "work"
	emptyDir     = "empty"
	objectsDir   = "objects"
	tempPrefix   = "tmp-"
	removePrefix = "rm-"
	probePrefix  = "probe-"
)

// nameLen is the length of a layer's directory name. Six characters of
// base32 give 2^30 names, so random names rarely collide (and a collision is
// retried), while a 500-layer lowerdir= takes 500*7 bytes, leaving room in
// mount(2)'s page for upperdir, workdir and options.
const nameLen = 6

// nameAlphabet has no lower-case letters or '-', so no name can be mistaken
// for a temporary or removed directory.
const nameAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"

type layout struct {
	root string
}

func (l layout) dbPath() string           { return filepath.Join(l.root, dbFile) }
func (l layout) layersRoot() string       { return filepath.Join(l.root, layersDir) }
func (l layout) workRoot() string         { return filepath.Join(l.root, workDir) }
func (l layout) empty() string            { return filepath.Join(l.root, emptyDir) }
func (l layout) objectsRoot() string      { return filepath.Join(l.root, objectsDir) }
func (l layout) layer(name string) string { return filepath.Join(l.layersRoot(), name) }
func (l layout) work(name string) string  { return filepath.Join(l.workRoot(), name) }
func (l layout) removedLayer(name string) string {
	return filepath.Join(l.layersRoot(), removePrefix+name)
}
func (l layout) removedWork(name string) string {
	return filepath.Join(l.workRoot(), removePrefix+name)
}
func (l layout) tempDir() (string, error)  { return os.MkdirTemp(l.layersRoot(), tempPrefix) }
func (l layout) probeDir() (string, error) { return os.MkdirTemp(l.root, probePrefix) }

// init creates the skeleton of the layout.
func (l layout) init() error {
	for _, d := range []string{l.root, l.layersRoot(), l.workRoot(), l.empty()} {
		if err := os.Mkdir(d, 0o700); err != nil && !os.IsExist(err) {
			return err
		}
	}
	return nil
}

// isLayerName reports whether name has the shape of a layer's directory.
func isLayerName(name string) bool {
	if len(name) != nameLen {
		return false
	}
	for _, c := range name {
		if !strings.ContainsRune(nameAlphabet, c) {
			return false
		}
	}
	return true
}

// drawLayerName draws a random layer directory name: nameLen characters
// of nameAlphabet. The index picks one no snapshot uses (metadata's
// NewSnapshot.DrawDir).
func drawLayerName() (string, error) {
	var b [nameLen]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	for i := range b {
		b[i] = nameAlphabet[int(b[i])%len(nameAlphabet)]
	}
	return string(b[:]), nil
}

// lockRoot takes an exclusive lock on the root directory, held while a
// daemon serves the store or fsck works on it, so that neither acts on a
// store the other is using, whatever state the index is in (bbolt's own
// lock is on the index file, which may be missing). Closing the file
// releases it.
func (l layout) lockRoot() (*os.File, error) {
	f, err := os.Open(l.root)
	if err != nil {
		return nil, fmt.Errorf("open root to lock it: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s is locked by another strata process (a running daemon, or fsck): %w", l.root, errdefs.ErrUnavailable)
		}
		return nil, fmt.Errorf("lock %s: %w", l.root, err)
	}
	return f, nil
}
