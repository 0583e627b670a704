package integration

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/content"
	contentproxy "github.com/containerd/containerd/v2/core/content/proxy"
	"github.com/containerd/containerd/v2/core/leases"
	leasesproxy "github.com/containerd/containerd/v2/core/leases/proxy"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	snapshotsproxy "github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/strata-snapshotter/strata/admin"
)

// The differential tests: whatever containerd's built-in overlayfs
// snapshotter makes of an image or of a container, strata must make too.
// Both run under one containerd. Each image of diffimages_test.go is pulled
// into both, and the trees they present (a read-only view of every prefix
// of the image's layer chain: the bottom layer alone, ..., the whole image)
// are compared path by path: type, mode, owner, size, content, symlink
// target, device numbers, every xattr, mtime, link count and hard-link
// group. Then one change script runs in a container on each, both are
// committed with nerdctl, the new layers are compared tar entry by tar
// entry, and each committed image is run on the other snapshotter and its
// trees compared again. Every difference is reported: path, field, the
// overlayfs value and the strata value.
//
// Parallel unpack: containerd 2.4.2's overlayfs advertises "rebase" outside
// a user namespace (plugins/snapshots/overlay/plugin/plugin.go), so with
// max_concurrent_unpacks > 1 it unpacks in parallel too. Every layer is then
// prepared without its parent; overlayfs returns a bind mount for that, and
// the unpacker turns it into an overlay mount (upperdir only) for every layer
// but the first (core/unpack/unpacker.go, bindToOverlay), so upper layers
// store their whiteouts as overlay whiteouts, while the first layer is
// applied through its bind mount: its whiteouts delete, nothing is stored.
// Sequentially, the first layer is a bind mount too and the others overlay
// mounts on their parents. Either way a bottom layer stores no whiteouts.

// The snapshotters compared: the reference and strata.
const (
	refSn  = "overlayfs"
	testSn = "strata"
)

// TestDifferential: under one containerd, with sequential and with parallel
// unpack, and with share_files off and on, strata presents every test
// image, container root and committed container exactly as containerd's
// overlayfs does.
func TestDifferential(t *testing.T) {
	imgs, err := diffImages()
	if err != nil {
		t.Fatal(err)
	}
	modes := []struct {
		name string
		opts EnvOptions
	}{
		{"sequential", EnvOptions{}},
		{"parallel", EnvOptions{ParallelUnpack: true}},
		{"sequential-share_files", EnvOptions{StrataConfig: shareFilesConfig}},
		{"parallel-share_files", EnvOptions{ParallelUnpack: true, StrataConfig: shareFilesConfig}},
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			e := newEnv(t, m.opts)
			c := dialContainerd(t, e)
			t.Run("parentless", func(t *testing.T) {
				diffViews(t, e, c, "a view without a parent", "", false)
				diffViews(t, e, c, "an active snapshot without a parent", "", true)
			})
			for _, img := range imgs {
				t.Run("unpack-"+img.name, func(t *testing.T) { diffUnpack(t, e, c, img.ref) })
			}
			commits := []struct{ name, image, script string }{
				{"changed", "stack", changeScript},
				// An unchanged container commits an empty layer: a
				// bottom layer's stored whiteout would show as a
				// deletion (or, in a directory of its own, break the
				// commit).
				{"unchanged-bottom", "bottom", ""},
				{"unchanged-root-whiteout", "root-whiteout", ""},
				{"unchanged-stack", "stack", ""},
			}
			for _, cm := range commits {
				t.Run("commit-"+cm.name, func(t *testing.T) { diffCommit(t, e, c, cm.name, imageRef(t, imgs, cm.image), cm.script) })
			}
			if m.opts.StrataConfig == shareFilesConfig {
				checkFilesShared(t, e)
			}
		})
	}
}

// checkFilesShared requires that the images' large files were shared: the
// store holds objects, and layers hold stubs of them.
func checkFilesShared(t *testing.T, e *Env) {
	t.Helper()
	objs, err := filepath.Glob(filepath.Join(e.StrataRoot, "objects", "sha256", "*", "*"))
	if err != nil || len(objs) < 5 {
		t.Fatalf("share_files: %d objects in the store (%v); the test images' large files were not shared", len(objs), err)
	}
	r, err := admin.NewClient(e.AdminSock).DiskUsage(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	if r.FileSavedBytes <= 0 {
		t.Fatalf("share_files: du says sharing files saves %d bytes, with images whose bottom layers hold the same large files", r.FileSavedBytes)
	}
	t.Logf("share_files: %d objects in the store; du: %d bytes saved by sharing files, physical %d", len(objs), r.FileSavedBytes, r.PhysicalBytes)
}

// shareFilesConfig is strata's config with share_files on.
const shareFilesConfig = "share_files = true\n"

func imageRef(t *testing.T, imgs []diffImage, name string) string {
	t.Helper()
	for _, img := range imgs {
		if img.name == name {
			return img.ref
		}
	}
	t.Fatalf("no differential image %q", name)
	return ""
}

// diffUnpack pulls ref into both snapshotters and compares the views of
// every prefix of its chain, and a container's root on the whole image.
func diffUnpack(t *testing.T, e *Env, c *cdClient, ref string) {
	pullInto(t, e, refSn, ref)
	pullInto(t, e, testSn, ref)
	chain := c.chainIDs(t, ref)
	for k, id := range chain {
		diffViews(t, e, c, chainLabel(k, len(chain)), id, false)
		diffUsage(t, c, chainLabel(k, len(chain)), id)
	}
	diffViews(t, e, c, "a container's root (active snapshot on the whole image)", chain[len(chain)-1], true)
}

func chainLabel(k, n int) string {
	switch {
	case n == 1:
		return "the image's only layer"
	case k == 0:
		return fmt.Sprintf("bottom layer alone (1 of %d)", n)
	case k == n-1:
		return fmt.Sprintf("whole image (%d layers)", n)
	}
	return fmt.Sprintf("layers 1-%d of %d", k+1, n)
}

// pullInto pulls ref with ctr into snapshotter sn. With parallel unpack,
// strata must have been unpacked in parallel.
func pullInto(t *testing.T, e *Env, sn, ref string) {
	t.Helper()
	before := countLines(e.Containerd, "image unpacked")
	out, err := e.combined(e.ctrArgs("images", "pull", "--plain-http", "--hosts-dir", hostsDir, "--snapshotter", sn, ref)...)
	if err != nil && sn == refSn {
		t.Fatalf("pull into overlayfs, the reference, failed: %v\n%s", err, out)
	}
	if err != nil {
		t.Fatalf("pull into strata failed, overlayfs pulled the same image: %v\n%s", err, out)
	}
	line, err := e.Containerd.nthLine("image unpacked", before+1, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	parallel := strings.Contains(line, "parallel=true")
	if sn == testSn && parallel != e.opts.ParallelUnpack {
		t.Fatalf("strata unpacked with parallel=%v, want %v: %s", parallel, e.opts.ParallelUnpack, line)
	}
	t.Logf("%s unpacked with parallel=%v", sn, parallel)
}

// diffViews compares the trees overlayfs and strata present for chainID:
// read-only views, or, if active, active snapshots on it.
func diffViews(t *testing.T, e *Env, c *cdClient, label, chainID string, active bool) {
	t.Helper()
	want := c.snapshotTree(t, e, refSn, chainID, active)
	got := c.snapshotTree(t, e, testSn, chainID, active)
	t.Logf("%s: %d paths compared", label, len(want))
	if d := diffNodes(want, got); len(d) > 0 {
		t.Errorf("%s (%s): %d differences, overlayfs vs strata:\n%s", label, chainID, len(d), strings.Join(d, "\n"))
	}
}

// diffUsage compares the usage both snapshotters report for the committed
// snapshot chainID (ctr snapshots usage; the kubelet's image filesystem
// accounting).
func diffUsage(t *testing.T, c *cdClient, label, chainID string) {
	t.Helper()
	var usage [2]snapshots.Usage
	for i, sn := range []string{refSn, testSn} {
		s := snapshotsproxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(c.conn), sn)
		u, err := s.Usage(c.ctx, chainID)
		if err != nil {
			t.Fatalf("usage of %s on %s: %v", chainID, sn, err)
		}
		usage[i] = u
	}
	if usage[0] != usage[1] {
		t.Errorf("%s (%s): usage on overlayfs %+v, on strata %+v", label, chainID, usage[0], usage[1])
	}
}

// node is what one path looks like to a program reading it: field -> value.
type node map[string]string

func (n node) String() string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(n)) {
		fmt.Fprintf(&b, " %s=%q", k, n[k])
	}
	return strings.TrimSpace(b.String())
}

// diffNodes lists every difference between two trees, path by path and
// field by field.
func diffNodes(want, got map[string]node) []string {
	all := maps.Clone(want)
	maps.Copy(all, got)
	var d []string
	for _, p := range slices.Sorted(maps.Keys(all)) {
		w, inWant := want[p]
		g, inGot := got[p]
		switch {
		case !inGot:
			d = append(d, fmt.Sprintf("%s: only on overlayfs: %s", p, w))
		case !inWant:
			d = append(d, fmt.Sprintf("%s: only on strata: %s", p, g))
		default:
			d = append(d, diffFields(p, w, g)...)
		}
	}
	return d
}

func diffFields(p string, w, g node) []string {
	fields := maps.Clone(w)
	maps.Copy(fields, g)
	var d []string
	for _, f := range slices.Sorted(maps.Keys(fields)) {
		wv, wok := w[f]
		gv, gok := g[f]
		if wv != gv || wok != gok {
			d = append(d, fmt.Sprintf("%s: %s: overlayfs %s, strata %s", p, f, showField(wv, wok), showField(gv, gok)))
		}
	}
	return d
}

func showField(v string, ok bool) string {
	if !ok {
		return "(none)"
	}
	return fmt.Sprintf("%q", v)
}

// scanTree describes every path under root. The root's own mtime is left
// out: a snapshot's root directory is made by the snapshotter at the wall
// clock's time (a layer's tar cannot set it; containerd skips "./").
func scanTree(t *testing.T, root string) map[string]node {
	t.Helper()
	tree := map[string]node{}
	inodes := map[[2]uint64][]string{}
	err := filepath.WalkDir(root, func(p string, _ fs.DirEntry, walkErr error) error {
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		name := "/" + strings.TrimPrefix(rel, ".")
		// A name a directory lists but that cannot be looked up, or a
		// directory that cannot be read, is a finding, not the end.
		if walkErr != nil {
			if tree[name] == nil {
				tree[name] = node{}
			}
			tree[name]["error"] = errnoText(walkErr)
			return nil
		}
		n, ino, err := describe(p)
		if err != nil {
			tree[name] = node{"error": "listed by its directory, but " + errnoText(err)}
			return nil
		}
		if name == "/" {
			delete(n, "mtime")
		}
		tree[name] = n
		if n["type"] != "dir" {
			inodes[ino] = append(inodes[ino], name)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("scan %s: %v", root, err)
	}
	markHardLinks(tree, inodes)
	return tree
}

// markHardLinks gives every path sharing its inode with others the set of
// them, as field "hardlinks".
func markHardLinks(tree map[string]node, inodes map[[2]uint64][]string) {
	for _, paths := range inodes {
		if len(paths) > 1 {
			sort.Strings(paths)
			for _, p := range paths {
				tree[p]["hardlinks"] = strings.Join(paths, " ")
			}
		}
	}
}

// describe is one path's fields, and its device and inode. A directory's
// size and link count are left out: they are the filesystem's bookkeeping
// (blocks of entries, overlayfs's made-up count for merged directories), and
// its entries are compared one by one anyway.
func describe(p string) (node, [2]uint64, error) {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return nil, [2]uint64{}, &fs.PathError{Op: "lstat", Path: p, Err: err}
	}
	n := node{
		"mode":  fmt.Sprintf("%04o", st.Mode&0o7777),
		"uid":   fmt.Sprint(st.Uid),
		"gid":   fmt.Sprint(st.Gid),
		"mtime": fmt.Sprintf("%d.%09d", st.Mtim.Sec, st.Mtim.Nsec),
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		n["nlink"] = fmt.Sprint(st.Nlink)
	}
	if err := describeType(p, &st, n); err != nil {
		return nil, [2]uint64{}, err
	}
	x, err := xattrs(p)
	if err != nil {
		return nil, [2]uint64{}, err
	}
	n["xattrs"] = x
	return n, [2]uint64{st.Dev, st.Ino}, nil
}

func describeType(p string, st *unix.Stat_t, n node) error {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		n["type"] = "dir"
	case unix.S_IFREG:
		n["type"], n["size"] = "file", fmt.Sprint(st.Size)
		// Whether the file has holes: what an unpack or a copy-up
		// allocates, which usage figures count.
		n["sparse"] = fmt.Sprint(st.Blocks*512 < st.Size)
		sum, err := fileSHA256(p)
		if err != nil {
			return err
		}
		n["sha256"] = sum
	case unix.S_IFLNK:
		target, err := os.Readlink(p)
		if err != nil {
			return err
		}
		n["type"], n["link"] = "symlink", target
	case unix.S_IFCHR, unix.S_IFBLK:
		n["type"] = map[uint32]string{unix.S_IFCHR: "char", unix.S_IFBLK: "block"}[st.Mode&unix.S_IFMT]
		n["rdev"] = fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	case unix.S_IFIFO:
		n["type"] = "fifo"
	default:
		n["type"] = fmt.Sprintf("mode %o", st.Mode&unix.S_IFMT)
	}
	return nil
}

// errnoText is err without the path, which differs between two views.
func errnoText(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Sprintf("%s: %v", pe.Op, pe.Err)
	}
	return err.Error()
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return fmt.Sprintf("%x", h.Sum(nil)), nil
}

// xattrs lists every extended attribute of p, not following a symlink,
// trusted.overlay.* included: a view must not show them.
func xattrs(p string) (string, error) {
	// overlayfs answers the size query with its lower or upper file's
	// list, private xattrs included, and the list itself without them:
	// the size is an upper bound, the list may be shorter or empty.
	size, err := unix.Llistxattr(p, nil)
	if err != nil || size == 0 {
		return "", err
	}
	buf := make([]byte, size)
	if size, err = unix.Llistxattr(p, buf); err != nil {
		return "", err
	}
	var names []string
	for _, name := range strings.Split(string(buf[:size]), "\x00") {
		if name != "" {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	var out []string
	for _, name := range names {
		vsize, err := unix.Lgetxattr(p, name, nil)
		if err != nil {
			return "", fmt.Errorf("xattr %s: %w", name, err)
		}
		v := make([]byte, vsize)
		if vsize, err = unix.Lgetxattr(p, name, v); err != nil {
			return "", fmt.Errorf("xattr %s: %w", name, err)
		}
		out = append(out, fmt.Sprintf("%s=%q", name, v[:vsize]))
	}
	return strings.Join(out, " "), nil
}

// cdClient talks to containerd's API directly: containerd's Go client
// would need modules go.mod does not list. Everything it makes is held by
// one lease, so containerd's garbage collection leaves it alone.
type cdClient struct {
	ctx     context.Context
	conn    *grpc.ClientConn
	content content.Store
	images  imagesapi.ImagesClient
	views   atomic.Int64 // names views
}

func dialContainerd(t *testing.T, e *Env) *cdClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+e.Sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx := namespaces.WithNamespace(context.Background(), namespace)
	lm := leasesproxy.NewLeaseManager(leasesapi.NewLeasesClient(conn))
	l, err := lm.Create(ctx, leases.WithRandomID(), leases.WithExpiration(time.Hour))
	if err != nil {
		t.Fatalf("create lease: %v", err)
	}
	t.Cleanup(func() {
		if err := lm.Delete(ctx, l); err != nil {
			t.Errorf("delete lease: %v", err)
		}
		conn.Close()
	})
	return &cdClient{
		ctx:     leases.WithLease(ctx, l.ID),
		conn:    conn,
		content: contentproxy.NewContentStore(conn),
		images:  imagesapi.NewImagesClient(conn),
	}
}

// snapshotTree makes a read-only view of chainID on snapshotter sn (or, if
// active, an active snapshot on it: a container's root), mounts it under the
// Env's directory, describes it, and unmounts and removes it.
func (c *cdClient) snapshotTree(t *testing.T, e *Env, sn, chainID string, active bool) map[string]node {
	t.Helper()
	s := snapshotsproxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(c.conn), sn)
	key := fmt.Sprintf("diff-view-%d", c.views.Add(1))
	newSnapshot := s.View
	if active {
		newSnapshot = s.Prepare
	}
	ms, err := newSnapshot(c.ctx, key, chainID)
	if err != nil {
		t.Fatalf("snapshot of %s on %s (active: %v): %v", chainID, sn, active, err)
	}
	defer func() {
		if err := s.Remove(c.ctx, key); err != nil {
			t.Errorf("remove view %s on %s: %v", key, sn, err)
		}
	}()
	target, err := os.MkdirTemp(e.Dir, "view-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(target)
	if err := mount.All(ms, target); err != nil {
		t.Fatalf("mount view of %s on %s (%+v): %v", chainID, sn, ms, err)
	}
	defer func() {
		if err := mount.UnmountAll(target, 0); err != nil {
			t.Errorf("unmount view %s: %v", target, err)
		}
	}()
	tree := scanTree(t, target)
	// A directory the applier makes for a file whose parent has no entry
	// takes the time of the unpack: a different time on each side.
	unpinMtimes(map[string]node{"/tmp": tree["/tmp"]}, nil)
	return tree
}

// manifest reads the image's manifest and config from containerd's store.
func (c *cdClient) manifest(t *testing.T, ref string) (ocispec.Manifest, ocispec.Image) {
	t.Helper()
	r, err := c.images.Get(c.ctx, &imagesapi.GetImageRequest{Name: ref})
	if err != nil {
		t.Fatalf("image %s: %v", ref, err)
	}
	target := ocispec.Descriptor{MediaType: r.Image.Target.MediaType, Digest: digest.Digest(r.Image.Target.Digest), Size: r.Image.Target.Size}
	var m ocispec.Manifest
	c.readJSON(t, target, &m)
	var cfg ocispec.Image
	c.readJSON(t, m.Config, &cfg)
	if len(m.Layers) != len(cfg.RootFS.DiffIDs) {
		t.Fatalf("image %s: %d layers, %d diff ids", ref, len(m.Layers), len(cfg.RootFS.DiffIDs))
	}
	return m, cfg
}

func (c *cdClient) readJSON(t *testing.T, desc ocispec.Descriptor, v any) {
	t.Helper()
	b, err := content.ReadBlob(c.ctx, c.content, desc)
	if err != nil {
		t.Fatalf("read %s: %v", desc.Digest, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decode %s (%s): %v", desc.Digest, desc.MediaType, err)
	}
}

// chainIDs are the chain ids of every prefix of the image's layers: the
// names of the committed snapshots an unpack leaves.
func (c *cdClient) chainIDs(t *testing.T, ref string) []string {
	t.Helper()
	_, cfg := c.manifest(t, ref)
	var ids []string
	for _, id := range identity.ChainIDs(slices.Clone(cfg.RootFS.DiffIDs)) {
		ids = append(ids, id.String())
	}
	return ids
}

// changeScript changes the stack image's tree in a container in every way
// busybox can: new files, directories, a hard link, device nodes, a fifo and
// symlinks; a lower file modified (one with xattrs, one hard-linked),
// chmod-ed and chown-ed, deleted, renamed, truncated and hard-linked; a lower
// directory deleted, renamed (overlayfs without redirect_dir refuses, and mv
// copies), and replaced by a file; a lower file replaced by a directory; a
// new sparse file; large (shared) lower files appended to, chmod-ed,
// chown-ed and renamed.
// busybox has no setfattr, so no xattr is set; the copied-up lower files
// carry theirs. Last it pins the mtimes of what it changed (pinnedMtimes);
// every other mtime in the commit is the wall clock's.
var changeScript = `set -e
echo new > /new-file
chmod 4755 /new-file
ln /new-file /new-link
mkdir -p /new-dir/sub
echo deep > /new-dir/sub/f
chown 4000000000:4000000001 /new-dir/sub/f
echo appended >> /t/xattrs
echo appended >> /t/hl-a
chmod 0701 /t/user
chown 1234:5678 /t/user
chmod 0 /t/empty
rm /t/fifo
rm -r /t/dir0
rm -r /t/opq
echo now a file > /t/opq
rm /t/old
mkdir /t/old
ln /t/setuid /setuid-link
mknod /new-chr c 1 5
mknod /new-blk b 7 1
mkfifo /new-fifo
ln -s /t/abs /new-sym
ln -s missing /new-dangling
mv /s/recreated /s/renamed
mv /s/real /s/moved-dir
truncate -s 1048576 /t/zeros
truncate -s 8388608 /new-sparse
echo appended >> /t/big-hl-a
chmod 0700 /t/big-setuid
chown 1:2 /t/big-ids
mv /t/big-xattrs /t/big-renamed
rm -r /s/file-to-dir
echo file again > /s/file-to-dir
cd / && touch -d '2002-03-04 05:06:07' ` + strings.Join(pinnedMtimes, " ") + "\n"

// pinnedMtimes are the paths whose mtime changeScript sets; only theirs
// are compared in the committed layers.
var pinnedMtimes = []string{
	"new-file", "new-link", "new-dir/sub/f", "new-dir/sub", "new-dir", "t/xattrs", "t/hl-a", "t/user",
	"t/empty", "t/opq", "t/old", "t/setuid", "setuid-link", "new-chr", "new-blk", "new-fifo",
	"s/renamed", "s/moved-dir", "s/moved-dir/inner", "t/zeros", "new-sparse", "s/file-to-dir", "s", "t",
	"t/big-hl-a", "t/big-setuid", "t/big-ids", "t/big-renamed",
}

// diffCommit runs script (or, if empty, nothing: the container is created,
// never started) in a container of image on each snapshotter, commits it
// with nerdctl, and compares the committed layers; then runs each committed
// image on the other snapshotter and compares the whole images' trees.
func diffCommit(t *testing.T, e *Env, c *cdClient, name, image, script string) {
	layers := map[string]layerTar{}
	refs := map[string]string{}
	for _, sn := range []string{refSn, testSn} {
		pullInto(t, e, sn, image)
	}
	for _, sn := range []string{refSn, testSn} {
		// Named for the registry, never pushed.
		refs[sn] = fmt.Sprintf("%s/diff-commit-%s-%s:latest", registry, name, sn)
		commitContainer(t, e, sn, "diff-"+name+"-"+sn, image, script, refs[sn])
		layers[sn] = c.topLayer(t, refs[sn])
	}
	diffLayers(t, layers[refSn], layers[testSn], script == "")
	for sn, other := range map[string]string{refSn: testSn, testSn: refSn} {
		nerdctlOn(t, e, other, "run", "--rm", "--net", "none", refs[sn], "true")
		chain := c.chainIDs(t, refs[sn])
		diffViews(t, e, c, fmt.Sprintf("image committed on %s, whole", sn), chain[len(chain)-1], false)
	}
}

// diffLayers compares two committed layers entry by entry and, for an
// unchanged container, by digest.
func diffLayers(t *testing.T, want, got layerTar, unchanged bool) {
	t.Helper()
	t.Logf("committed layers: %d entries compared", len(want.entries))
	if !unchanged {
		// The runtime's mount points and what the script does not pin
		// carry the wall clock's mtimes: compare only the pinned ones.
		// The digests differ for that reason too.
		unpinMtimes(want.entries, pinnedMtimes)
		unpinMtimes(got.entries, pinnedMtimes)
	} else if want.diffID != got.diffID {
		t.Errorf("unchanged container: committed layer %s on overlayfs, %s on strata", want.diffID, got.diffID)
	}
	if d := diffNodes(want.entries, got.entries); len(d) > 0 {
		t.Errorf("committed layers: %d differences, overlayfs vs strata:\n%s", len(d), strings.Join(d, "\n"))
	} else if !slices.Equal(want.order, got.order) {
		t.Errorf("committed layers list their entries in different orders:\noverlayfs %q\nstrata    %q", want.order, got.order)
	}
}

// commitContainer makes a container of image on snapshotter sn, runs
// script in it unless script is empty, and commits it as ref.
func commitContainer(t *testing.T, e *Env, sn, container, image, script, ref string) {
	t.Helper()
	if script == "" {
		nerdctlOn(t, e, sn, "create", "--name", container, "--net", "none", image, "true")
	} else {
		nerdctlOn(t, e, sn, "run", "--name", container, "--net", "none", image, "sh", "-c", script)
	}
	// The container has stopped (or never started): nothing to pause.
	nerdctlOn(t, e, sn, "commit", "--pause=false", container, ref)
	nerdctlOn(t, e, sn, "rm", "-f", container)
}

// nerdctlOn runs nerdctl against the Env's containerd on snapshotter sn.
func nerdctlOn(t *testing.T, e *Env, sn string, args ...string) string {
	t.Helper()
	argv := e.nerdctlArgs(args...)
	argv[slices.Index(argv, "--snapshotter")+1] = sn
	out, err := e.try(argv...)
	if err != nil {
		t.Fatalf("on %s: nerdctl %s: %v\n%s", sn, strings.Join(args, " "), err, out)
	}
	return out
}

// layerTar is a layer's entries, by name, in the tar's order, and its
// diff id.
type layerTar struct {
	diffID  string
	entries map[string]node
	order   []string
}

// topLayer reads the image's last layer from containerd's content store.
func (c *cdClient) topLayer(t *testing.T, ref string) layerTar {
	t.Helper()
	m, cfg := c.manifest(t, ref)
	desc := m.Layers[len(m.Layers)-1]
	ra, err := c.content.ReaderAt(c.ctx, desc)
	if err != nil {
		t.Fatalf("layer %s of %s: %v", desc.Digest, ref, err)
	}
	defer ra.Close()
	r, err := compression.DecompressStream(content.NewReader(ra))
	if err != nil {
		t.Fatalf("layer %s of %s: %v", desc.Digest, ref, err)
	}
	defer r.Close()
	l, err := readLayer(r)
	if err != nil {
		t.Fatalf("layer %s of %s: %v", desc.Digest, ref, err)
	}
	l.diffID = cfg.RootFS.DiffIDs[len(cfg.RootFS.DiffIDs)-1].String()
	return l
}

// readLayer reads an uncompressed layer tar's entries.
func readLayer(r io.Reader) (layerTar, error) {
	l := layerTar{entries: map[string]node{}}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return l, nil
		}
		if err != nil {
			return l, err
		}
		name := "/" + strings.TrimSuffix(h.Name, "/")
		if l.entries[name], err = tarNode(h, tr); err != nil {
			return l, fmt.Errorf("%s: %w", h.Name, err)
		}
		l.order = append(l.order, name)
	}
}

var tarTypes = map[byte]string{
	tar.TypeReg: "file", tar.TypeLink: "hardlink", tar.TypeSymlink: "symlink", tar.TypeChar: "char",
	tar.TypeBlock: "block", tar.TypeDir: "dir", tar.TypeFifo: "fifo",
}

// tarNode describes a tar entry: its header's fields, every PAX record but
// the times (fields of their own), and its body's hash.
func tarNode(h *tar.Header, body io.Reader) (node, error) {
	n := node{
		"type": tarTypes[h.Typeflag], "mode": fmt.Sprintf("%04o", h.Mode), "uid": fmt.Sprint(h.Uid), "gid": fmt.Sprint(h.Gid),
		"uname": h.Uname, "gname": h.Gname, "size": fmt.Sprint(h.Size), "link": h.Linkname,
		"mtime": h.ModTime.UTC().Format(time.RFC3339Nano),
		"atime": h.AccessTime.UTC().Format(time.RFC3339Nano), "ctime": h.ChangeTime.UTC().Format(time.RFC3339Nano),
	}
	if n["type"] == "" {
		n["type"] = fmt.Sprintf("typeflag %q", h.Typeflag)
	}
	if h.Typeflag == tar.TypeChar || h.Typeflag == tar.TypeBlock {
		n["rdev"] = fmt.Sprintf("%d:%d", h.Devmajor, h.Devminor)
	}
	var pax []string
	for k, v := range h.PAXRecords {
		if k != "mtime" && k != "atime" && k != "ctime" {
			pax = append(pax, fmt.Sprintf("%s=%q", k, v))
		}
	}
	sort.Strings(pax)
	n["pax"] = strings.Join(pax, " ")
	if h.Typeflag == tar.TypeReg {
		sum := sha256.New()
		if _, err := io.Copy(sum, body); err != nil {
			return nil, err
		}
		n["sha256"] = fmt.Sprintf("%x", sum.Sum(nil))
	}
	return n, nil
}

// unpinMtimes drops the times of every entry but the pinned ones.
func unpinMtimes(entries map[string]node, pinned []string) {
	for name, n := range entries {
		if !slices.Contains(pinned, strings.TrimPrefix(name, "/")) {
			delete(n, "mtime")
			delete(n, "atime")
			delete(n, "ctime")
		}
	}
}
