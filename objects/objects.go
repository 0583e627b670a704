// Package objects is a content-addressed store of file contents and the
// metadata-only stubs that stand for them in a layer: the building block of
// sharing files across layers (docs/design/share-files.md). The store is an
// overlayfs data-only lower layer: a stub carries the kernel's
// trusted.overlay.metacopy and trusted.overlay.redirect xattrs, and the
// kernel reads its data from the object the redirect names, while the stub
// keeps its own mode, owner, xattrs, size and times.
package objects

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/continuity/sysx"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// The kernel's xattrs that make a stub: strata writes them, and never lets a
// layer's files carry them otherwise (they would point the kernel at
// another layer's data).
const (
	metacopyXattr = "trusted.overlay.metacopy"
	redirectXattr = "trusted.overlay.redirect"
)

// Store is the object store under root, one file per distinct content at
// root/ALGORITHM/XX/REST of its digest.
type Store struct{ root string }

// New opens the store at root, making it if needed.
func New(root string) (Store, error) {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return Store{}, fmt.Errorf("create object store: %w", err)
	}
	return Store{root: root}, nil
}

// Open is the store at root, which may not exist: for reading it without
// changing anything.
func Open(root string) Store { return Store{root: root} }

// Root is the store's directory: the data-only lower layer of a mount.
func (s Store) Root() string { return s.root }

// Redirect is the path of d's object as a stub's redirect names it,
// relative to the data-only layer's root.
func Redirect(d digest.Digest) string {
	hex := d.Encoded()
	return "/" + d.Algorithm().String() + "/" + hex[:2] + "/" + hex[2:]
}

// Path is where d's object lives.
func (s Store) Path(d digest.Digest) string {
	return filepath.Join(s.root, filepath.FromSlash(Redirect(d)))
}

// Add stores the content of the regular file at path, which must be on the
// store's filesystem, and returns its digest (see Link).
func (s Store) Add(path string) (digest.Digest, error) {
	d, err := Hash(path)
	if err != nil {
		return "", err
	}
	return d, s.Link(path, d)
}

// Link stores the regular file at path, whose content has digest d, as
// d's object: when the store has none, path's inode becomes the object
// through a hard link (no data is copied); when it has one of path's size,
// nothing is written. One of another size is refused: it is not d's
// content (a write lost in a crash, say), and must not stand for path.
func (s Store) Link(path string, d digest.Digest) error {
	obj := s.Path(d)
	if err := os.MkdirAll(filepath.Dir(obj), 0o700); err != nil {
		return err
	}
	switch err := os.Link(path, obj); {
	case err == nil:
		return nil
	case !errors.Is(err, fs.ErrExist):
		return fmt.Errorf("store %s as %s: %w", path, d, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	ofi, err := os.Stat(obj)
	if err != nil {
		return err
	}
	if ofi.Size() != fi.Size() {
		return fmt.Errorf("object %s holds %d bytes, not the %d of %s: %w", d, ofi.Size(), fi.Size(), path, fs.ErrInvalid)
	}
	return nil
}

// Stub replaces the regular files at paths, names of one inode (a hard-link
// group), with one metadata-only stub of object d: a new inode with the
// file's mode (special bits included), owner, xattrs, size and times, and
// the kernel's metacopy and redirect xattrs, made in tmp (a directory on
// the same filesystem) and renamed over each name. A file that already
// carries those two is refused.
func Stub(d digest.Digest, tmp string, paths ...string) error {
	if len(paths) == 0 {
		return nil
	}
	first := paths[0]
	var st unix.Stat_t
	if err := unix.Lstat(first, &st); err != nil {
		return &fs.PathError{Op: "lstat", Path: first, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%s is not a regular file", first)
	}
	xattrs, err := fileXattrs(first)
	if err != nil {
		return err
	}
	stub, err := makeStub(tmp, first, &st, xattrs, d)
	if err != nil {
		return err
	}
	// The other names first, so that every name keeps resolving to the
	// file or its stub.
	for _, p := range paths[1:] {
		if err := replaceWithLink(stub, p); err != nil {
			os.Remove(stub)
			return err
		}
	}
	if err := os.Rename(stub, first); err != nil {
		os.Remove(stub)
		return err
	}
	return nil
}

// makeStub writes the stub of path under a temporary name in dir.
func makeStub(dir, path string, st *unix.Stat_t, xattrs map[string][]byte, d digest.Digest) (string, error) {
	f, err := os.CreateTemp(dir, "stub-")
	if err != nil {
		return "", err
	}
	tmp := f.Name()
	fail := func(err error) (string, error) {
		f.Close()
		os.Remove(tmp)
		return "", fmt.Errorf("stub %s: %w", path, err)
	}
	fd := int(f.Fd())
	if err := unix.Fchown(fd, int(st.Uid), int(st.Gid)); err != nil {
		return fail(err)
	}
	if err := unix.Ftruncate(fd, st.Size); err != nil {
		return fail(err)
	}
	for k, v := range xattrs {
		if err := unix.Fsetxattr(fd, k, v, 0); err != nil {
			return fail(err)
		}
	}
	if err := unix.Fsetxattr(fd, metacopyXattr, nil, 0); err != nil {
		return fail(err)
	}
	if err := unix.Fsetxattr(fd, redirectXattr, []byte(Redirect(d)), 0); err != nil {
		return fail(err)
	}
	// After the chown, which clears set-user-ID and set-group-ID bits.
	if err := unix.Fchmod(fd, st.Mode&07777); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return "", err
	}
	times := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, tmp, times, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		os.Remove(tmp)
		return "", err
	}
	return tmp, nil
}

// replaceWithLink makes p another name of target's inode, through a
// temporary name beside target.
func replaceWithLink(target, p string) error {
	tmp := target + "-link"
	if err := os.Link(target, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// fileXattrs reads path's xattrs to copy to its stub. The kernel's own
// xattrs of a copied-up file (trusted.overlay.origin, say) go along, as
// they would stay on the file; its stub xattrs are refused: a file that
// carries them already points overlayfs at other data (Scan strips them).
func fileXattrs(path string) (map[string][]byte, error) {
	names, err := sysx.LListxattr(path)
	if err != nil {
		return nil, fmt.Errorf("list xattrs of %s: %w", path, err)
	}
	xattrs := map[string][]byte{}
	for _, k := range names {
		if k == metacopyXattr || k == redirectXattr {
			return nil, fmt.Errorf("%s carries the kernel's xattr %s: a layer must not point overlayfs at other data", path, k)
		}
		if xattrs[k], err = sysx.LGetxattr(path, k); err != nil {
			return nil, fmt.Errorf("read xattr %s of %s: %w", k, path, err)
		}
	}
	return xattrs, nil
}

// Entry is a name found under the store's root.
type Entry struct {
	Path string
	// Digest is the content the name stands for; "" for a name the store
	// does not make.
	Digest digest.Digest
}

// Walk calls fn for every file under the store's root, and for every
// directory that is not one the store makes.
func (s Store) Walk(fn func(Entry) error) error {
	return filepath.WalkDir(s.root, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(s.root, path)
		if err != nil || rel == "." {
			return err
		}
		parts := strings.Split(rel, string(filepath.Separator))
		if e.IsDir() {
			ours := parts[0] == digest.SHA256.String() && (len(parts) == 1 || len(parts) == 2 && len(parts[1]) == 2)
			if ours {
				return nil
			}
			if err := fn(Entry{Path: path}); err != nil {
				return err
			}
			return filepath.SkipDir
		}
		d, ok := digestOf("/" + filepath.ToSlash(rel))
		if !ok || !e.Type().IsRegular() {
			d = ""
		}
		return fn(Entry{Path: path, Digest: d})
	})
}

// StubsIn returns the objects the stubs in the layer directory dir stand
// for.
func StubsIn(dir string) (map[digest.Digest]bool, error) {
	objs := map[digest.Digest]bool{}
	err := filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return err
		}
		if d, ok := stubObject(path); ok {
			objs[d] = true
		}
		return nil
	})
	return objs, err
}
