package snapshotter

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/continuity/sysx"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/strata-snapshotter/strata/internal/testutil"
	"github.com/strata-snapshotter/strata/metadata"
	"github.com/strata-snapshotter/strata/objects"
)

// seen is what a container sees of every entry of a tree: type and mode,
// owner, size, link count, mtime, user xattrs, content, and which names
// share an inode.
func seen(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	inodes := map[uint64]string{}
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		d := fmt.Sprintf("mode=%o uid=%d gid=%d nlink=%d mtime=%d.%09d", st.Mode, st.Uid, st.Gid, st.Nlink, st.Mtim.Sec, st.Mtim.Nsec)
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			d += fmt.Sprintf(" size=%d content=%s", st.Size, digest.FromBytes(b))
			if first, ok := inodes[st.Ino]; ok {
				d += " same-inode-as=" + first
			} else {
				inodes[st.Ino] = rel
			}
		}
		if v, err := sysx.LGetxattr(p, "user.tag"); err == nil {
			d += " user.tag=" + string(v)
		}
		out[rel] = d
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// build prepares key on parent, runs fill in its mount, records what the
// mount shows, and commits it as name; it returns what was seen.
func build(t *testing.T, sn snapshots.Snapshotter, name, parent string, fill func(dir string)) map[string]string {
	t.Helper()
	ctx := context.Background()
	key := name + "-active"
	ms, err := sn.Prepare(ctx, key, parent)
	if err != nil {
		t.Fatal(err)
	}
	var before map[string]string
	testutil.WithMount(t, ms, func(dir string) {
		fill(dir)
		before = seen(t, dir)
	})
	if err := sn.Commit(ctx, name, key); err != nil {
		t.Fatalf("commit %s: %v", name, err)
	}
	return before
}

// viewSees mounts a view of key and returns what it shows.
func viewSees(t *testing.T, sn snapshots.Snapshotter, key string) map[string]string {
	t.Helper()
	ctx := context.Background()
	ms, err := sn.View(ctx, "view-of-"+key, key)
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Remove(ctx, "view-of-"+key)
	var got map[string]string
	testutil.WithMount(t, ms, func(dir string) { got = seen(t, dir) })
	return got
}

func sameTree(t *testing.T, what string, want, got map[string]string) {
	t.Helper()
	var diffs []string
	for k, w := range want {
		if g := got[k]; g != w {
			diffs = append(diffs, fmt.Sprintf("%s:\n  before: %s\n  now:    %s", k, w, g))
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: new: %s", k, g))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		t.Fatalf("%s differs:\n%s", what, strings.Join(diffs, "\n"))
	}
}

func writeFile(t *testing.T, p string, b []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

// objectsIn lists the objects of the store under root.
func objectsIn(t *testing.T, root string) []digest.Digest {
	t.Helper()
	store, err := objects.New(filepath.Join(root, objectsDir))
	if err != nil {
		t.Fatal(err)
	}
	var ds []digest.Digest
	err = store.Walk(func(e objects.Entry) error {
		if e.Digest == "" {
			t.Errorf("not an object in the store: %s", e.Path)
		}
		ds = append(ds, e.Digest)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds
}

func digests(bs ...[]byte) []digest.Digest {
	var ds []digest.Digest
	for _, b := range bs {
		ds = append(ds, digest.FromBytes(b))
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds
}

// TestShareFiles: with share_files, each distinct content of the large
// files of images' bottom layers is stored once, small files and the
// layers above stay as they are, and every view (a single layer included)
// and container shows exactly what the layer showed before its commit:
// modes with special bits, owners, sizes, link counts and hard-link groups,
// mtimes of files and directories, user xattrs, content. A container's
// write copies up and leaves the object alone. Objects go with the last
// layer whose stubs stand for them.
func TestShareFiles(t *testing.T) {
	sn, root := newTestSnapshotter(t, WithShareFiles(true))
	ctx := context.Background()
	a, b, c := randomBytes(t, 64<<10), randomBytes(t, 20<<10), randomBytes(t, 1<<20)
	small := []byte("small file, stays in its layer\n")
	baseSaw := build(t, sn, "base", "", func(dir string) {
		writeFile(t, filepath.Join(dir, "usr/lib/a.so"), a, 0o755)
		writeFile(t, filepath.Join(dir, "usr/lib/a-copy.so"), a, 0o644)
		writeFile(t, filepath.Join(dir, "usr/bin/tool"), b, 0o4755)
		if err := os.Link(filepath.Join(dir, "usr/bin/tool"), filepath.Join(dir, "usr/bin/tool-link")); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(filepath.Join(dir, "usr/bin/tool"), 1000, 4000000000); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(dir, "usr/bin/tool"), 0o4755); err != nil {
			t.Fatal(err)
		}
		if err := unix.Lsetxattr(filepath.Join(dir, "usr/lib/a.so"), "user.tag", []byte("kept"), 0); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, "etc/small"), small, 0o600)
		for _, p := range []string{"usr/lib/a.so", "usr/lib", "usr/bin", "usr"} {
			if err := unix.UtimesNano(filepath.Join(dir, p), []unix.Timespec{{Sec: 1e9, Nsec: 5}, {Sec: 1e9, Nsec: 7}}); err != nil {
				t.Fatal(err)
			}
		}
	})
	sameTree(t, "a view of the bottom layer alone", baseSaw, viewSees(t, sn, "base"))

	appSaw := build(t, sn, "app", "base", func(dir string) {
		writeFile(t, filepath.Join(dir, "app/a-again.so"), a, 0o644)
		writeFile(t, filepath.Join(dir, "app/big"), c, 0o644)
		if err := os.Remove(filepath.Join(dir, "usr/lib/a-copy.so")); err != nil {
			t.Fatal(err)
		}
	})
	sameTree(t, "a view of the image", appSaw, viewSees(t, sn, "app"))

	if got, want := objectsIn(t, root), digests(a, b); !equalDigests(got, want) {
		t.Fatalf("objects %v, want one per distinct large content of the bottom layer %v", got, want)
	}
	// A second image whose bottom layer holds a's content again stores
	// nothing new.
	otherSaw := build(t, sn, "other", "", func(dir string) {
		writeFile(t, filepath.Join(dir, "lib/a.so"), a, 0o644)
	})
	sameTree(t, "a view of another image's bottom layer", otherSaw, viewSees(t, sn, "other"))
	if got, want := objectsIn(t, root), digests(a, b); !equalDigests(got, want) {
		t.Fatalf("objects after a second image %v, want %v", got, want)
	}
	baseDir := sn.layout.layer(layerOfKey(t, sn, "base"))
	for _, p := range []string{"usr/lib/a.so", "usr/bin/tool"} {
		var st unix.Stat_t
		// ext4 gives the stub's xattrs a block of their own when they
		// do not fit in the inode: 8 sectors.
		if err := unix.Lstat(filepath.Join(baseDir, p), &st); err != nil || st.Blocks > 8 {
			t.Errorf("%s in the layer holds %d sectors (%v); want a stub without data", p, st.Blocks, err)
		}
	}
	if got, err := os.ReadFile(filepath.Join(baseDir, "etc/small")); err != nil || !bytes.Equal(got, small) {
		t.Errorf("the small file does not stay in its layer: %q, %v", got, err)
	}
	// containerd's usage counts the layer as overlayfs would store it.
	if u, err := sn.Usage(ctx, "base"); err != nil || u.Size < int64(len(a)*2+len(b)) {
		t.Errorf("usage of base %+v (%v), want at least the %d bytes of its files", u, err, len(a)*2+len(b))
	}

	// A container writes to a shared file: the object stays as it was.
	ms, err := sn.Prepare(ctx, "ctr", "app")
	if err != nil {
		t.Fatal(err)
	}
	testutil.WithMount(t, ms, func(dir string) {
		f, err := os.OpenFile(filepath.Join(dir, "app/a-again.so"), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.Write([]byte("changed"))
		f.Close()
		if err := os.Chmod(filepath.Join(dir, "usr/bin/tool"), 0o700); err != nil {
			t.Fatal(err)
		}
		if got, err := os.ReadFile(filepath.Join(dir, "usr/bin/tool")); err != nil || !bytes.Equal(got, b) {
			t.Fatalf("a chmod-ed shared file reads %d bytes (%v)", len(got), err)
		}
	})
	if got, err := os.ReadFile(filepath.Join(root, objectsDir, objectPath(digest.FromBytes(a)))); err != nil || !bytes.Equal(got, a) {
		t.Fatalf("the object changed under a container's write (%v)", err)
	}
	sameTree(t, "the image after a container wrote", appSaw, viewSees(t, sn, "app"))

	// The objects go with the last layer that stands on them.
	for _, key := range []string{"ctr", "app", "other"} {
		if err := sn.Remove(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	if err := sn.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := objectsIn(t, root), digests(a, b); !equalDigests(got, want) {
		t.Fatalf("objects after removing app: %v, want %v", got, want)
	}
	sameTree(t, "the bottom layer after app went", baseSaw, viewSees(t, sn, "base"))
	if err := sn.Remove(ctx, "base"); err != nil {
		t.Fatal(err)
	}
	if err := sn.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if got := objectsIn(t, root); len(got) != 0 {
		t.Fatalf("objects after removing every layer: %v", got)
	}
}

func equalDigests(a, b []digest.Digest) bool {
	return fmt.Sprint(a) == fmt.Sprint(b)
}

func objectPath(d digest.Digest) string {
	return strings.TrimPrefix(objects.Redirect(d), "/")
}

func layerOfKey(t *testing.T, sn *snapshotter, key string) string {
	t.Helper()
	rec, err := sn.get(key)
	if err != nil {
		t.Fatal(err)
	}
	return rec.DirName
}

// TestForgedStubXattrs: an image's layers cannot make a file read another
// image's file from the object store. containerd's applier writes a
// layer's xattrs as the image has them: into an image's bottom layer
// through its bind mount, into the others straight into their upper
// directory. The bottom layer's stub xattrs are stripped when it is
// committed; the others' are never followed, since every mount with the
// store has metacopy=off (whatever the overlay module's default). A
// container's chmod of a shared file copies it up whole, and reads right.
func TestForgedStubXattrs(t *testing.T) {
	sn, _ := newTestSnapshotter(t, WithShareFiles(true))
	ctx := context.Background()
	secret := randomBytes(t, 64<<10)
	build(t, sn, "victim", "", func(dir string) {
		writeFile(t, filepath.Join(dir, "secret"), secret, 0o600)
	})
	forge := func(p string) {
		for k, v := range map[string]string{"trusted.overlay.metacopy": "", "trusted.overlay.redirect": objects.Redirect(digest.FromBytes(secret))} {
			if err := unix.Lsetxattr(p, k, []byte(v), 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A hole where the secret would be, carrying a stub's xattrs naming
	// the secret's object, and a large file of its own with them too.
	steal := func(dir string) {
		if err := os.WriteFile(filepath.Join(dir, "steal"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(filepath.Join(dir, "steal"), int64(len(secret))); err != nil {
			t.Fatal(err)
		}
		forge(filepath.Join(dir, "steal"))
	}
	own := randomBytes(t, 32<<10)
	build(t, sn, "evil", "", func(dir string) {
		steal(dir)
		writeFile(t, filepath.Join(dir, "own"), own, 0o644)
		forge(filepath.Join(dir, "own"))
	})
	// A layer above, written as containerd's applier writes one: straight
	// into its upper directory.
	if _, err := sn.Prepare(ctx, "evil-top-active", "evil"); err != nil {
		t.Fatal(err)
	}
	upper := sn.layout.layer(layerOfKey(t, sn, "evil-top-active"))
	if err := os.Mkdir(filepath.Join(upper, "up"), 0o755); err != nil {
		t.Fatal(err)
	}
	steal(filepath.Join(upper, "up"))
	if err := sn.Commit(ctx, "evil-top", "evil-top-active"); err != nil {
		t.Fatal(err)
	}
	// And a container's chmod of a shared file.
	chmodMounts, err := sn.Prepare(ctx, "evil-chmod-active", "evil-top")
	if err != nil {
		t.Fatal(err)
	}
	testutil.WithMount(t, chmodMounts, func(dir string) {
		if err := os.Chmod(filepath.Join(dir, "own"), 0o600); err != nil {
			t.Fatal(err)
		}
	})
	if err := sn.Commit(ctx, "evil-chmod", "evil-chmod-active"); err != nil {
		t.Fatal(err)
	}
	ms, err := sn.View(ctx, "check", "evil-chmod")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(ms[0].Options, "metacopy=off") {
		t.Fatalf("a mount with the store lacks metacopy=off: %v", ms[0].Options)
	}
	testutil.WithMount(t, ms, func(dir string) {
		// The bottom layer's, stripped, reads its own zeros; the upper
		// layer's is refused by the kernel, as on containerd's overlayfs.
		for _, p := range []string{"steal", "up/steal"} {
			got, err := os.ReadFile(filepath.Join(dir, p))
			if err == nil && bytes.Equal(got, secret) {
				t.Errorf("%s: a forged stub read the other image's file", p)
			}
		}
		if got, err := os.ReadFile(filepath.Join(dir, "own")); err != nil || !bytes.Equal(got, own) {
			t.Errorf("a file with forged stub xattrs, chmod-ed in a container, read %d bytes (%v); want its own content", len(got), err)
		}
	})
}

// TestShareFilesFailure: a conversion that fails on some files (here one
// the kernel will not let it link, and one in a directory where its stub
// cannot be put) fails no commit: the layer is committed, every name reads
// what it held with the link count it had, and the other files are shared.
func TestShareFilesFailure(t *testing.T) {
	sn, root := newTestSnapshotter(t, WithShareFiles(true))
	ctx := context.Background()
	files := map[string][]byte{"a": randomBytes(t, 32<<10), "b": randomBytes(t, 32<<10), "c": randomBytes(t, 32<<10), "0locked/d": randomBytes(t, 32<<10)}
	ms, err := sn.Prepare(ctx, "active", "")
	if err != nil {
		t.Fatal(err)
	}
	var saw map[string]string
	testutil.WithMount(t, ms, func(dir string) {
		for n, b := range files {
			writeFile(t, filepath.Join(dir, n), b, 0o644)
		}
		saw = seen(t, dir)
	})
	dir := sn.layout.layer(layerOf(t, ms))
	// b is append-only: it cannot be linked into the store. 0locked is
	// immutable: d is linked into the store, but no stub can replace it.
	for p, flag := range map[string]int{"b": fsAppendFL, "0locked": fsImmutableFL} {
		setFlag(t, filepath.Join(dir, p), flag, true)
		t.Cleanup(func() { setFlag(t, filepath.Join(dir, p), flag, false) })
	}
	if err := sn.Commit(ctx, "layer", "active"); err != nil {
		t.Fatalf("commit with files that cannot be shared: %v", err)
	}
	sameTree(t, "the layer after a conversion failed on some files", saw, viewSees(t, sn, "layer"))
	for _, n := range []string{"a", "c"} {
		if _, err := sysx.LGetxattr(filepath.Join(dir, n), "trusted.overlay.metacopy"); err != nil {
			t.Errorf("%s was not shared: %v", n, err)
		}
	}
	// b's content was never stored, so b's record goes; d's was stored
	// before its stub failed, and stays the layer's (a stub that fails
	// may have replaced some names of a hard-link group already).
	if err := sn.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := objectsIn(t, root), digests(files["a"], files["c"], files["0locked/d"]); !equalDigests(got, want) {
		t.Fatalf("objects %v, want a's, c's and d's %v", got, want)
	}
}

// The kernel's FS_IMMUTABLE_FL and FS_APPEND_FL inode flags (linux/fs.h).
const (
	fsImmutableFL = 0x10
	fsAppendFL    = 0x20
)

// setFlag turns the inode flag of p on or off, keeping its others (ext4
// refuses to clear the extents flag).
func setFlag(t *testing.T, p string, flag int, on bool) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	flags, err := unix.IoctlGetInt(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err != nil {
		t.Fatal(err)
	}
	if on {
		flags |= flag
	} else {
		flags &^= flag
	}
	if err := unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, flags); err != nil {
		t.Fatal(err)
	}
}

// TestSharedChainRefusesMapping: containerd cannot mount the object store
// for a user namespace, so a snapshot with an ID mapping on layers holding
// stubs is refused, saying why; on layers without, it is served.
func TestSharedChainRefusesMapping(t *testing.T) {
	sn, _ := newTestSnapshotter(t, WithShareFiles(true))
	if !sn.idmapped {
		t.Skip("this kernel has no idmapped mounts")
	}
	build(t, sn, "shared", "", func(dir string) { writeFile(t, filepath.Join(dir, "big"), randomBytes(t, 32<<10), 0o644) })
	build(t, sn, "plain", "", func(dir string) { writeFile(t, filepath.Join(dir, "small"), []byte("x"), 0o644) })
	mapped := snapshots.WithLabels(map[string]string{"containerd.io/snapshot/uidmapping": "0:200000:65536", "containerd.io/snapshot/gidmapping": "0:200000:65536"})
	_, err := sn.Prepare(context.Background(), "userns", "shared", mapped)
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "share_files") {
		t.Fatalf("mapped container on shared layers: %v, want FailedPrecondition naming share_files", err)
	}
	if _, err := sn.Prepare(context.Background(), "userns-plain", "plain", mapped); err != nil {
		t.Fatalf("mapped container on layers without stubs: %v", err)
	}
}

// TestFsckObjects: fsck reports a stub whose object is missing, and with
// VerifyObjects an object whose content is not its name's; an object the
// index never released is kept until fsck --discard-unindexed, and one that
// only an unindexed layer's stubs stand on is kept with the layer.
func TestFsckObjects(t *testing.T) {
	sn, root := newTestSnapshotter(t, WithShareFiles(true))
	ctx := context.Background()
	olderIndex, err := os.ReadFile(filepath.Join(root, dbFile))
	if err != nil {
		t.Fatal(err)
	}
	content := randomBytes(t, 32<<10)
	build(t, sn, "layer", "", func(dir string) { writeFile(t, filepath.Join(dir, "f"), content, 0o644) })
	sn.Close()
	if r := fsckSays(t, root, FsckOptions{VerifyObjects: true}); len(r.Findings) != 0 {
		t.Fatalf("fsck of a clean store with shared files: %q", r.Findings)
	}
	obj := filepath.Join(root, objectsDir, objectPath(digest.FromBytes(content)))

	// An object whose content changed.
	if err := os.WriteFile(obj, []byte("not what it was"), 0o644); err != nil {
		t.Fatal(err)
	}
	fsckSays(t, root, FsckOptions{VerifyObjects: true}, "holds content of digest "+digest.FromString("not what it was").String())
	// An object gone.
	if err := os.Remove(obj); err != nil {
		t.Fatal(err)
	}
	fsckSays(t, root, FsckOptions{}, "which is missing: those files cannot be read")
	if err := os.WriteFile(obj, content, 0o644); err != nil {
		t.Fatal(err)
	}

	// An object the index neither records nor released (an index older
	// than it, or damaged): kept by start-up and fsck --repair, reported,
	// and deleted only by fsck --discard-unindexed.
	orphan := randomBytes(t, 100)
	orphanPath := filepath.Join(root, objectsDir, objectPath(digest.FromBytes(orphan)))
	writeFile(t, orphanPath, orphan, 0o644)
	fsckSays(t, root, FsckOptions{Repair: true}, orphanPath+" is not recorded by the index but is not garbage (an object the index neither records nor released")
	again, err := New(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	if err := again.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	sameTree(t, "the layer after start-up", map[string]string{".": "", "f": ""}, keysOnly(viewSees(t, again, "layer")))
	again.Close()
	if !exists(orphanPath) {
		t.Fatal("start-up or Cleanup deleted an object the index never released")
	}
	if _, err := Fsck(ctx, root, FsckOptions{DiscardUnindexed: true}); err != nil {
		t.Fatal(err)
	}
	if exists(orphanPath) || !exists(obj) {
		t.Fatalf("fsck --discard-unindexed: orphan left %v, the layer's object kept %v", exists(orphanPath), exists(obj))
	}

	// An older index put back, which does not record the layer: the layer
	// is kept as unindexed, and so is its object.
	if err := os.WriteFile(filepath.Join(root, dbFile), olderIndex, 0o600); err != nil {
		t.Fatal(err)
	}
	older, err := New(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	if err := older.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	older.Close()
	if !exists(obj) {
		t.Fatal("start-up and Cleanup deleted the object of an unindexed layer")
	}
	fsckSays(t, root, FsckOptions{}, "is not recorded by the index but is not garbage")
	// Discarded, the layer takes its object with it.
	if _, err := Fsck(ctx, root, FsckOptions{DiscardUnindexed: true}); err != nil {
		t.Fatal(err)
	}
	if exists(obj) {
		t.Fatal("fsck --discard-unindexed left the object of the layer it discarded")
	}
}

func keysOnly(m map[string]string) map[string]string {
	out := map[string]string{}
	for k := range m {
		out[k] = ""
	}
	return out
}

// TestShareFilesWhileCleanup: Cleanup running all along (containerd's
// garbage collector) never takes a conversion's temporary directory for a
// crash's leftover: every layer committed meanwhile ends with its large
// files shared, and reads what it held.
func TestShareFilesWhileCleanup(t *testing.T) {
	sn, _ := newTestSnapshotter(t, WithShareFiles(true))
	ctx := context.Background()
	stop := make(chan struct{})
	done := make(chan error)
	go func() {
		for {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			if err := sn.Cleanup(ctx); err != nil {
				done <- err
				return
			}
		}
	}()
	saw := map[string]map[string]string{}
	for i := range 20 {
		name := fmt.Sprintf("layer-%d", i)
		saw[name] = build(t, sn, name, "", func(dir string) {
			for j := range 8 {
				writeFile(t, filepath.Join(dir, fmt.Sprintf("d%d/f%d", j%3, j)), randomBytes(t, 20<<10), 0o644)
			}
		})
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for name, want := range saw {
		dir := sn.layout.layer(layerOfKey(t, sn, name))
		for j := range 8 {
			p := filepath.Join(dir, fmt.Sprintf("d%d/f%d", j%3, j))
			if _, err := sysx.LGetxattr(p, "trusted.overlay.metacopy"); err != nil {
				t.Errorf("%s: %s was not shared: %v", name, p, err)
			}
		}
		sameTree(t, name, want, viewSees(t, sn, name))
	}
}

// TestShareFilesResumedAfterCrash: a crash in the middle of a conversion
// leaves a file linked into the store but not yet replaced by its stub (a
// container would see two links), and directories with changed times. The
// next start finishes the conversion: the file becomes a stub, the
// directories get their times back, and the layer shows what it held.
func TestShareFilesResumedAfterCrash(t *testing.T) {
	sn, root := newTestSnapshotter(t, WithShareFiles(true))
	ctx := context.Background()
	content := randomBytes(t, 32<<10)
	saw := build(t, sn, "layer", "", func(dir string) {
		writeFile(t, filepath.Join(dir, "sub/f"), content, 0o644)
		if err := unix.UtimesNano(filepath.Join(dir, "sub"), []unix.Timespec{{Sec: 1e9}, {Sec: 1e9}}); err != nil {
			t.Fatal(err)
		}
	})
	name := layerOfKey(t, sn, "layer")
	layer := sn.layout.layer(name)
	f := filepath.Join(layer, "sub/f")
	// The state a crash leaves: f is the object's inode again, sub's mtime
	// is the conversion's, and the index says the conversion is under way
	// (with the times from before it).
	obj := filepath.Join(root, objectsDir, objectPath(digest.FromBytes(content)))
	if err := os.Link(obj, f+"-tmp"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(f+"-tmp", f); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(filepath.Join(layer, "sub"), time.Now(), time.Now()); err != nil {
		t.Fatal(err)
	}
	err := sn.db.Write(func(tx *metadata.Tx) error {
		return tx.StartConversion(name, map[string][2]time.Time{"sub": {time.Unix(1e9, 0), time.Unix(1e9, 0)}})
	})
	if err != nil {
		t.Fatal(err)
	}
	sn.Close()

	again, err := New(ctx, root, WithShareFiles(true))
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	var st unix.Stat_t
	if err := unix.Lstat(f, &st); err != nil || st.Nlink != 1 {
		t.Fatalf("after the start, %s has %d links (%v), want a stub of its own", f, st.Nlink, err)
	}
	if _, err := sysx.LGetxattr(f, "trusted.overlay.metacopy"); err != nil {
		t.Fatalf("after the start, %s is not a stub: %v", f, err)
	}
	sameTree(t, "the layer after its conversion was finished", saw, viewSees(t, again, "layer"))
	err = again.(*snapshotter).db.View(func(tx *metadata.Tx) error {
		if c := tx.Conversions(); len(c) != 0 {
			t.Errorf("conversions still under way: %v", c)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestShareFilesNeedsSyncOnCommit: share_files without sync_on_commit is
// refused at start, saying why: an object stands for the files of other
// images than the one whose commit wrote it.
func TestShareFilesNeedsSyncOnCommit(t *testing.T) {
	testutil.RequiresRoot(t)
	_, err := New(context.Background(), t.TempDir(), WithShareFiles(true), WithCommitSync(false))
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "sync_on_commit") {
		t.Fatalf("share_files without sync_on_commit: %v, want InvalidArgument naming sync_on_commit", err)
	}
}

// TestShareFilesPartialGroup: a hard-link group whose stub replaced some of
// its names before it failed on another (here one in an immutable
// directory) keeps its object: those names stand for it, and read their
// content after Cleanup.
func TestShareFilesPartialGroup(t *testing.T) {
	sn, _ := newTestSnapshotter(t, WithShareFiles(true))
	ctx := context.Background()
	content := randomBytes(t, 32<<10)
	ms, err := sn.Prepare(ctx, "active", "")
	if err != nil {
		t.Fatal(err)
	}
	testutil.WithMount(t, ms, func(dir string) {
		writeFile(t, filepath.Join(dir, "a"), content, 0o644)
		for _, p := range []string{"b", "locked/c"} {
			if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Link(filepath.Join(dir, "a"), filepath.Join(dir, p)); err != nil {
				t.Fatal(err)
			}
		}
	})
	locked := filepath.Join(sn.layout.layer(layerOf(t, ms)), "locked")
	setFlag(t, locked, fsImmutableFL, true)
	t.Cleanup(func() { setFlag(t, locked, fsImmutableFL, false) })
	if err := sn.Commit(ctx, "layer", "active"); err != nil {
		t.Fatal(err)
	}
	if err := sn.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	view, err := sn.View(ctx, "v", "layer")
	if err != nil {
		t.Fatal(err)
	}
	testutil.WithMount(t, view, func(dir string) {
		for _, p := range []string{"a", "b", "locked/c"} {
			if got, err := os.ReadFile(filepath.Join(dir, p)); err != nil || !bytes.Equal(got, content) {
				t.Errorf("%s reads %d bytes (%v) after Cleanup", p, len(got), err)
			}
		}
	})
}

// TestExtractionGetsNoStore: a snapshot an unpacker extracts a layer into
// (containerd's, labelled with the layer's chain id; BuildKit's, only named
// extract-...) gets no object store below, so containerd's applier does not
// take the empty name of "::" for the host's root; a container's snapshot
// on the same layers does.
func TestExtractionGetsNoStore(t *testing.T) {
	sn, _ := newTestSnapshotter(t, WithShareFiles(true))
	ctx := context.Background()
	build(t, sn, "base", "", func(dir string) { writeFile(t, filepath.Join(dir, "big"), randomBytes(t, 32<<10), 0o644) })
	for key, opts := range map[string][]snapshots.Opt{
		"default/1/extract-1 sha256:abc": nil,
		"default/2/unpack-me":            {snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: "sha256:abc"})},
		"default/3/container":            nil,
	} {
		ms, err := sn.Prepare(ctx, key, "base", opts...)
		if err != nil {
			t.Fatal(err)
		}
		store := strings.Contains(strings.Join(ms[0].Options, ","), "::")
		if want := key == "default/3/container"; store != want {
			t.Errorf("%s: the store below: %v, want %v (%v)", key, store, want, ms[0].Options)
		}
	}
}
