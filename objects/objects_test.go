package objects

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/continuity/sysx"
	"golang.org/x/sys/unix"

	"github.com/strata-snapshotter/strata/internal/testutil"
)

// entry is what a container sees of a file.
type entry struct {
	mode      uint32
	uid, gid  uint32
	size      int64
	nlink     uint64
	mtime     unix.Timespec
	xattr     string
	content   []byte
	sameInode string // another name of the same inode, "" if none seen
}

func look(t *testing.T, dir string, names ...string) map[string]entry {
	t.Helper()
	m := map[string]entry{}
	inodes := map[uint64]string{}
	for _, n := range names {
		p := filepath.Join(dir, n)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		v, _ := sysx.LGetxattr(p, "user.tag")
		e := entry{mode: st.Mode, uid: st.Uid, gid: st.Gid, size: st.Size, nlink: uint64(st.Nlink), mtime: st.Mtim, xattr: string(v), content: b, sameInode: inodes[st.Ino]}
		if _, ok := inodes[st.Ino]; !ok {
			inodes[st.Ino] = n
		}
		m[n] = e
	}
	return m
}

// TestStubsReadTheirObjects: a layer whose files are replaced by stubs of
// objects shows, mounted over the store as a data-only lower layer, exactly
// what the layer showed before (mode and special bits, owner, size, link
// count and hard-link groups, mtime, user xattrs, content); two files of one
// content are one object; a write in a container copies up and leaves the
// object as it was.
func TestStubsReadTheirObjects(t *testing.T) {
	testutil.RequiresRoot(t)
	dir := t.TempDir()
	layer, store := filepath.Join(dir, "layer"), filepath.Join(dir, "objects")
	if err := os.Mkdir(layer, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, content string, mode os.FileMode, uid, gid int) {
		p := filepath.Join(layer, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
		if err := unix.Chmod(p, uint32(mode)); err != nil {
			t.Fatal(err)
		}
		if err := unix.Setxattr(p, "user.tag", []byte("tag-"+name), 0); err != nil {
			t.Fatal(err)
		}
		old := time.Date(2001, 2, 3, 4, 5, 6, 7, time.UTC)
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	big := strings.Repeat("the same bytes in two layers\n", 4096)
	write("setuid", "#!/bin/sh\necho hi\n", 0o4755, 0, 0)
	write("owned", big, 0o640, 1000, 2000)
	write("copy", big, 0o600, 0, 0)
	if err := os.Link(filepath.Join(layer, "owned"), filepath.Join(layer, "owned-link")); err != nil {
		t.Fatal(err)
	}
	names := []string{"setuid", "owned", "owned-link", "copy"}
	before := look(t, layer, names...)

	s, err := New(store)
	if err != nil {
		t.Fatal(err)
	}
	for _, group := range [][]string{{"setuid"}, {"owned", "owned-link"}, {"copy"}} {
		d, err := s.Add(filepath.Join(layer, group[0]))
		if err != nil {
			t.Fatal(err)
		}
		var paths []string
		for _, n := range group {
			paths = append(paths, filepath.Join(layer, n))
		}
		if err := Stub(d, t.TempDir(), paths...); err != nil {
			t.Fatal(err)
		}
	}
	objects, _ := filepath.Glob(filepath.Join(store, "sha256", "*", "*"))
	if len(objects) != 2 {
		t.Fatalf("objects %v, want 2 (two files of one content are one object)", objects)
	}
	// The stubs hold no data (their blocks, if any, are their xattrs').
	for _, n := range names {
		f, err := os.Open(filepath.Join(layer, n))
		if err != nil {
			t.Fatal(err)
		}
		if off, err := unix.Seek(int(f.Fd()), 0, unix.SEEK_DATA); err != unix.ENXIO {
			t.Errorf("stub %s has data at %d (%v)", n, off, err)
		}
		f.Close()
	}

	// A view (read-only) and a container (writable) over the layer.
	view := t.TempDir()
	if err := mount.All([]mount.Mount{{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=" + layer + "::" + store, "metacopy=on"}}}, view); err != nil {
		t.Fatal(err)
	}
	defer mount.UnmountAll(view, 0)
	after := look(t, view, names...)
	for _, n := range names {
		b, a := before[n], after[n]
		if b.mode != a.mode || b.uid != a.uid || b.gid != a.gid || b.size != a.size || b.nlink != a.nlink || b.mtime != a.mtime || b.xattr != a.xattr || !bytes.Equal(b.content, a.content) || b.sameInode != a.sameInode {
			t.Errorf("%s: before %+v\nafter %+v", n, summary(b), summary(a))
		}
	}

	upper, work, ctr := filepath.Join(dir, "upper"), filepath.Join(dir, "work"), t.TempDir()
	os.Mkdir(upper, 0o755)
	os.Mkdir(work, 0o755)
	if err := mount.All([]mount.Mount{{Type: "overlay", Source: "overlay", Options: []string{
		"lowerdir=" + layer + "::" + store, "upperdir=" + upper, "workdir=" + work, "metacopy=on", "redirect_dir=on"}}}, ctr); err != nil {
		t.Fatal(err)
	}
	defer mount.UnmountAll(ctr, 0)
	f, err := os.OpenFile(filepath.Join(ctr, "copy"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("more")
	f.Close()
	if b, _ := os.ReadFile(filepath.Join(ctr, "copy")); string(b) != big+"more" {
		t.Errorf("container's write: %d bytes", len(b))
	}
	for _, o := range objects {
		if b, _ := os.ReadFile(o); string(b) != big && !strings.HasPrefix(string(b), "#!/bin/sh") {
			t.Errorf("object %s changed by a container's write", o)
		}
	}
}

// TestStubRefusesTheKernelsXattrs: a file that carries overlayfs's own
// xattrs (an image's first layer can) is never made a stub.
func TestStubRefusesTheKernelsXattrs(t *testing.T) {
	testutil.RequiresRoot(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "forged")
	os.WriteFile(p, []byte("x"), 0o644)
	if err := unix.Setxattr(p, redirectXattr, []byte("/sha256/ab/cd"), 0); err != nil {
		t.Fatal(err)
	}
	s, _ := New(filepath.Join(dir, "objects"))
	d, err := s.Add(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := Stub(d, dir, p); err == nil || !strings.Contains(err.Error(), "kernel's xattr") {
		t.Fatalf("Stub of a file with %s: %v", redirectXattr, err)
	}
}

func summary(e entry) string {
	return fmt.Sprintf("mode=%o owner=%d:%d size=%d nlink=%d mtime=%v xattr=%q link-of=%q", e.mode, e.uid, e.gid, e.size, e.nlink, e.mtime, e.xattr, e.sameInode)
}

// TestLinkRefusesAnObjectOfAnotherSize: an object already stored under a
// digest but not of the file's size (a write a crash undid) is not taken
// for the file's content.
func TestLinkRefusesAnObjectOfAnotherSize(t *testing.T) {
	dir := t.TempDir()
	s, err := New(filepath.Join(dir, "objects"))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("the content"), 0o644); err != nil {
		t.Fatal(err)
	}
	d, err := Hash(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(s.Path(d)), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.Path(d), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Link(p, d); err == nil || !strings.Contains(err.Error(), "holds 0 bytes") {
		t.Fatalf("Link onto an empty object of the digest: %v", err)
	}
	if err := os.WriteFile(s.Path(d), []byte("the content"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Link(p, d); err != nil {
		t.Fatalf("Link onto the object: %v", err)
	}
}
