package objects

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/containerd/continuity/sysx"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// Plan is the conversion of one layer that Scan prepared: the layer's large
// regular files, grouped by inode, with the digest of each group's content.
type Plan struct {
	groups []group
	// dirs are the directories whose entries Apply replaces, with their
	// times, put back once the stubs are in place.
	dirs map[string][2]unix.Timespec
	// Stripped names the entries whose forged kernel xattrs Scan removed.
	Stripped []string
}

// group is one inode of the layer: its names and its content.
type group struct {
	paths  []string
	digest digest.Digest
	size   int64
	// unlinked: Apply could not store its content, and left every name
	// as it was. (A stub that fails after some names were replaced leaves
	// those stubs: its object stays the layer's.)
	unlinked bool
}

// Use is how a converted layer uses one object.
type Use struct {
	Size  int64 // the object's bytes
	Files int64 // the layer's stubs (inodes) that stand for it
}

// Objects are the objects the plan's stubs stand for: what the index
// records before Apply makes the stubs, and after it, all but those it
// could not store (whose files it left as they were).
func (p *Plan) Objects() map[digest.Digest]Use {
	objs := make(map[digest.Digest]Use, len(p.groups))
	for _, g := range p.groups {
		if g.unlinked {
			continue
		}
		u := objs[g.digest]
		u.Size = g.size
		u.Files++
		objs[g.digest] = u
	}
	return objs
}

// DirTimes are the times (access, modification) of the directories the
// plan changes, by path, as Scan found them: what Apply puts back.
func (p *Plan) DirTimes() map[string][2]unix.Timespec {
	return maps.Clone(p.dirs)
}

// Resume makes the plan finish a conversion that a crash cut off: it keeps
// only the files whose content keep says was recorded, and puts back times
// as they were before that conversion began (DirTimes then).
func (p *Plan) Resume(keep func(digest.Digest) bool, times map[string][2]unix.Timespec) {
	p.groups = slices.DeleteFunc(p.groups, func(g group) bool { return !keep(g.digest) })
	maps.Copy(p.dirs, times)
}

// Files counts the files (inodes) the plan converts.
func (p *Plan) Files() int { return len(p.groups) }

// Scan reads the layer directory dir and prepares its conversion:
//   - with strip, it strips the kernel's metacopy and redirect xattrs from
//     every entry that is not a directory: containerd's applier writes an
//     image's xattrs as they are, and below a mount with the object store
//     the kernel would follow them into any object. Without (the rest of a
//     conversion a crash cut off), a file that carries them (a stub made
//     before the crash) is left alone;
//   - when minSize > 0, it hashes each regular file of at least minSize
//     bytes that holds its own data, once per inode, for Apply.
//
// Nothing may write to the layer meanwhile: it is an active snapshot being
// committed, or a committed layer whose conversion a crash cut off.
func Scan(dir string, minSize int64, strip bool) (*Plan, error) {
	p := &Plan{dirs: map[string][2]unix.Timespec{}}
	byInode := map[uint64]int{} // inode -> index in p.groups
	err := filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		carries, err := p.check(path, strip)
		if err != nil || carries {
			return err
		}
		if !e.Type().IsRegular() || minSize <= 0 {
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			return &fs.PathError{Op: "lstat", Path: path, Err: err}
		}
		if st.Size < minSize {
			return nil
		}
		if i, ok := byInode[st.Ino]; ok {
			p.groups[i].paths = append(p.groups[i].paths, path)
			return p.noteDir(path)
		}
		byInode[st.Ino] = len(p.groups)
		p.groups = append(p.groups, group{paths: []string{path}, size: st.Size})
		return p.noteDir(path)
	})
	if err != nil {
		return nil, err
	}
	return p, p.hash()
}

// hash computes each group's digest, on every CPU: hashing the layer just
// unpacked, mostly still in the page cache, is what a conversion adds to
// a pull.
func (p *Plan) hash() error {
	var g errgroup.Group
	g.SetLimit(runtime.GOMAXPROCS(0))
	for i := range p.groups {
		g.Go(func() (err error) {
			p.groups[i].digest, err = Hash(p.groups[i].paths[0])
			return err
		})
	}
	return g.Wait()
}

// check deals with the kernel's stub xattrs on path: with strip it strips
// them, else it reports that path carries them (a stub made before a
// crash, which holds no data of its own).
func (p *Plan) check(path string, strip bool) (carries bool, err error) {
	names, err := sysx.LListxattr(path)
	if err != nil {
		return false, fmt.Errorf("list xattrs of %s: %w", path, err)
	}
	var found []string
	for _, n := range names {
		if n == metacopyXattr || n == redirectXattr {
			found = append(found, n)
		}
	}
	if len(found) == 0 {
		return false, nil
	}
	if !strip {
		return true, nil
	}
	for _, n := range found {
		if err := unix.Lremovexattr(path, n); err != nil && !errors.Is(err, unix.ENODATA) {
			return false, fmt.Errorf("strip %s from %s: %w", n, path, err)
		}
	}
	p.Stripped = append(p.Stripped, path)
	return false, nil
}

// stubObject returns the object a stub at path stands for: the digest its
// redirect names in the store, if it has both of the kernel's xattrs.
func stubObject(path string) (digest.Digest, bool) {
	if _, err := sysx.LGetxattr(path, metacopyXattr); err != nil {
		return "", false
	}
	r, err := sysx.LGetxattr(path, redirectXattr)
	if err != nil {
		return "", false
	}
	return digestOf(string(r))
}

// digestOf reads a redirect ("/sha256/ab/cdef...") back into a digest.
func digestOf(redirect string) (digest.Digest, bool) {
	parts := strings.Split(strings.TrimPrefix(redirect, "/"), "/")
	if len(parts) != 3 || len(parts[1]) != 2 {
		return "", false
	}
	d := digest.NewDigestFromEncoded(digest.Algorithm(parts[0]), parts[1]+parts[2])
	return d, d.Validate() == nil && Redirect(d) == redirect
}

// noteDir records the times of path's directory, once, before Apply
// changes its entries.
func (p *Plan) noteDir(path string) error {
	dir := filepath.Dir(path)
	if _, ok := p.dirs[dir]; ok {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return &fs.PathError{Op: "lstat", Path: dir, Err: err}
	}
	p.dirs[dir] = [2]unix.Timespec{st.Atim, st.Mtim}
	return nil
}

// Apply stores each planned file's content in s (its inode becomes the
// object when s has none of that content) and replaces its names with a
// stub made in tmp, a directory on the layer's filesystem, then puts back
// the times of the directories it changed. The index must record the
// plan's objects first (Objects), and mounts of the layer must have the
// store below, so that every name reads its content at every step: a crash
// leaves each name the file or a stub of an object already stored, and
// temporary names only in tmp. A file that fails stays as it was, and the
// others are converted.
func (p *Plan) Apply(s Store, tmp string) (err error) {
	// The times go back whatever happens: a failure leaves some files
	// converted, and their directories changed.
	defer func() {
		for _, dir := range slices.Sorted(maps.Keys(p.dirs)) {
			ts := p.dirs[dir]
			if terr := unix.UtimesNanoAt(unix.AT_FDCWD, dir, ts[:], unix.AT_SYMLINK_NOFOLLOW); terr != nil && err == nil {
				err = &fs.PathError{Op: "utimes", Path: dir, Err: terr}
			}
		}
	}()
	var errs []error
	for i := range p.groups {
		g := &p.groups[i]
		if err := s.Link(g.paths[0], g.digest); err != nil {
			g.unlinked = true
			errs = append(errs, err)
			continue
		}
		if err := Stub(g.digest, tmp, g.paths...); err != nil {
			errs = append(errs, err, s.detach(g.paths[0], g.digest, tmp))
		}
	}
	return errors.Join(errs...)
}

// detach gives d's object an inode of its own when it is path's, which a
// stub failed to replace: else a container would see the file's link count
// grow. The copy replaces the object's name at once, so a stub of another
// layer that already names it reads on.
func (s Store) detach(path string, d digest.Digest, tmp string) error {
	var pst, ost unix.Stat_t
	if err := unix.Lstat(path, &pst); err != nil {
		return nil // the stub replaced it after all
	}
	obj := s.Path(d)
	if err := unix.Lstat(obj, &ost); err != nil || ost.Ino != pst.Ino || ost.Dev != pst.Dev {
		return nil
	}
	src, err := os.Open(path)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.CreateTemp(tmp, "object-")
	if err != nil {
		return err
	}
	_, err = io.Copy(dst, src)
	if err == nil {
		// Other layers' stubs may name it: on disk before its name.
		err = dst.Sync()
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(dst.Name(), obj)
	}
	if err != nil {
		os.Remove(dst.Name())
		return fmt.Errorf("give object %s an inode of its own: %w", d, err)
	}
	return nil
}

// Hash is the digest of the content of the file at path.
func Hash(path string) (digest.Digest, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	d, err := digest.SHA256.FromReader(f)
	if err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return d, nil
}
