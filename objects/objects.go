// Package objects is a content-addressed store of file contents and the
// metadata-only stubs that stand for them in a layer: the building block of
// sharing files across layers (docs/design/share-files.md). The store is an
// overlayfs data-only lower layer: a stub carries the kernel's
// trusted.overlay.metacopy and trusted.overlay.redirect xattrs, and the
// kernel reads its data from the object the redirect names, while the stub
// keeps its own mode, owner, xattrs, size and times.
//
// Not wired into the snapshotter yet (issue 16).
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

// The kernel's xattrs: its own namespace, which a stub carries and which
// strata never copies from a layer's files (a layer that carries them could
// point the kernel at another layer's data).
const (
	overlayXattrPrefix = "trusted.overlay."
	metacopyXattr      = overlayXattrPrefix + "metacopy"
	redirectXattr      = overlayXattrPrefix + "redirect"
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
// store's filesystem, and returns its digest. When the store has no object
// of that content, path's inode becomes the object through a hard link (no
// data is copied); when it has one, nothing is written.
func (s Store) Add(path string) (digest.Digest, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	d, err := digest.SHA256.FromReader(f)
	f.Close()
	if err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	obj := s.Path(d)
	if err := os.MkdirAll(filepath.Dir(obj), 0o700); err != nil {
		return "", err
	}
	if err := os.Link(path, obj); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", fmt.Errorf("store %s as %s: %w", path, d, err)
	}
	return d, nil
}

// Stub replaces the regular files at paths, names of one inode (a hard-link
// group), with one metadata-only stub of object d: a new inode with the
// file's mode (special bits included), owner, xattrs, size and times, and
// the kernel's metacopy and redirect xattrs. A file that already carries
// xattrs of the kernel's namespace is refused.
func Stub(d digest.Digest, paths ...string) error {
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
	xattrs, err := userXattrs(first)
	if err != nil {
		return err
	}
	tmp, err := makeStub(first, &st, xattrs, d)
	if err != nil {
		return err
	}
	// The other names first, so that every name keeps resolving to the
	// file or its stub.
	for _, p := range paths[1:] {
		if err := replaceWithLink(tmp, p); err != nil {
			os.Remove(tmp)
			return err
		}
	}
	if err := os.Rename(tmp, first); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// makeStub writes the stub beside path under a temporary name.
func makeStub(path string, st *unix.Stat_t, xattrs map[string][]byte, d digest.Digest) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(path), ".strata-stub-")
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

// replaceWithLink makes p another name of target's inode.
func replaceWithLink(target, p string) error {
	tmp := p + ".strata-link"
	if err := os.Link(target, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// userXattrs reads path's xattrs, refusing the kernel's own namespace.
func userXattrs(path string) (map[string][]byte, error) {
	names, err := sysx.LListxattr(path)
	if err != nil {
		return nil, fmt.Errorf("list xattrs of %s: %w", path, err)
	}
	xattrs := map[string][]byte{}
	for _, k := range names {
		if strings.HasPrefix(k, overlayXattrPrefix) {
			return nil, fmt.Errorf("%s carries the kernel's xattr %s: a layer must not point overlayfs at other data", path, k)
		}
		if xattrs[k], err = sysx.LGetxattr(path, k); err != nil {
			return nil, fmt.Errorf("read xattr %s of %s: %w", k, path, err)
		}
	}
	return xattrs, nil
}
