package snapshotter

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff/apply"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/strata-snapshotter/strata/internal/testutil"
)

// TestParallelUnpackKeepsWhiteouts follows containerd's parallel unpack: a
// layer is extracted into a snapshot prepared without its parent (labelled
// with its chain id, as the unpacker does), applied with containerd's own
// filesystem applier, and committed onto its parent with WithParent. The
// layer deletes a file of the parent; the deletion must survive.
func TestParallelUnpackKeepsWhiteouts(t *testing.T) {
	sn, _ := newTestSnapshotter(t)
	ctx := context.Background()
	commitLayer(t, sn, "base", "", map[string]string{"gone": "1", "kept": "2"})

	ms, err := sn.Prepare(ctx, "extract-1 sha256:top", "",
		snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: "sha256:top", labelParentChainID: "sha256:base"}))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || ms[0].Type != "overlay" {
		t.Fatalf("extraction without a parent got %+v, want one overlay mount", ms)
	}

	// The layer: delete "gone", add "new".
	applyLayer(t, ms, []tarEntry{{name: ".wh.gone"}, {name: "new", body: "3"}})
	if err := sn.Commit(ctx, "top", "extract-1 sha256:top", snapshots.WithParent("base")); err != nil {
		t.Fatal(err)
	}

	view, err := sn.View(ctx, "v", "top")
	if err != nil {
		t.Fatal(err)
	}
	testutil.WithMount(t, view, func(dir string) {
		if _, err := os.Stat(filepath.Join(dir, "gone")); !os.IsNotExist(err) {
			t.Errorf("file deleted by the layer is visible: %v", err)
		}
		for _, f := range []string{"kept", "new"} {
			if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
				t.Errorf("%s: %v", f, err)
			}
		}
	})
}

// tarEntry is one entry of a layer built by applyLayer: a directory when
// name ends in "/", a regular file otherwise.
type tarEntry struct{ name, body string }

// applyLayer writes entries as a layer tar, in order, and applies it to ms
// with containerd's own filesystem applier, as containerd's unpacker does.
func applyLayer(t *testing.T, ms []mount.Mount, entries []tarEntry) {
	t.Helper()
	ctx := context.Background()
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.body)), Typeflag: tar.TypeReg}
		if strings.HasSuffix(e.name, "/") {
			h = &tar.Header{Name: e.name, Mode: 0o755, Typeflag: tar.TypeDir}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	cs, err := local.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(layer.Bytes()), Size: int64(layer.Len())}
	if err := content.WriteBlob(ctx, cs, "layer", bytes.NewReader(layer.Bytes()), desc); err != nil {
		t.Fatal(err)
	}
	if _, err := apply.NewFileSystemApplier(cs).Apply(ctx, desc, ms); err != nil {
		t.Fatal(err)
	}
}

// TestFirstLayerStoresNoWhiteouts: an image's first layer is extracted into
// a parentless snapshot labelled with its chain id but with no parent chain
// id. Its whiteouts hide nothing, and containerd's overlayfs stores none:
// strata must give the same bind mount, so the layer's directory holds no
// whiteout device and no opaque xattr, a whiteout of a file the same layer
// wrote removes it, and a view of the layer alone shows exactly its files.
func TestFirstLayerStoresNoWhiteouts(t *testing.T) {
	sn, _ := newTestSnapshotter(t)
	ctx := context.Background()
	ms, err := sn.Prepare(ctx, "extract-0 sha256:bottom", "",
		snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: "sha256:bottom"}))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || ms[0].Type != "bind" {
		t.Fatalf("extraction of an image's first layer got %+v, want the bind mount containerd's overlayfs gives", ms)
	}
	applyLayer(t, ms, []tarEntry{
		{name: "x", body: "written, then whited out"},
		{name: ".wh.x"},
		{name: ".wh.never-existed"},
		{name: "d/"},
		{name: "d/.wh..wh..opq"},
		{name: "d/f", body: "kept"},
	})
	if err := sn.Commit(ctx, "bottom", "extract-0 sha256:bottom"); err != nil {
		t.Fatal(err)
	}
	rec, err := sn.get("bottom")
	if err != nil {
		t.Fatal(err)
	}
	dir := sn.layout.layer(rec.DirName)
	if got := tree(t, dir); got != "d d/f" {
		t.Errorf("first layer's directory holds %q, want only %q", got, "d d/f")
	}
	var buf [64]byte
	if n, err := unix.Lgetxattr(filepath.Join(dir, "d"), "trusted.overlay.opaque", buf[:]); err == nil {
		t.Errorf("first layer's d carries trusted.overlay.opaque=%q; overlayfs stores no opaque marker there", buf[:n])
	}
	view, err := sn.View(ctx, "v", "bottom")
	if err != nil {
		t.Fatal(err)
	}
	testutil.WithMount(t, view, func(root string) {
		if got := tree(t, root); got != "d d/f" {
			t.Errorf("view of the first layer shows %q, want %q", got, "d d/f")
		}
	})
}

// TestExistingLayerFastPath: containerd's remote-snapshot protocol. A
// Prepare labelled with the chain id of a layer already committed on the same
// parent gets AlreadyExists and creates nothing; on another parent, or
// without the label, it proceeds.
func TestExistingLayerFastPath(t *testing.T) {
	sn, root := newTestSnapshotter(t)
	ctx := context.Background()
	ref := func(v string) snapshots.Opt {
		return snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: v})
	}
	if _, err := sn.Prepare(ctx, "ns1/1/extract", "", ref("sha256:layer1")); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "ns1/2/sha256:layer1", "ns1/1/extract", ref("sha256:layer1")); err != nil {
		t.Fatal(err)
	}
	before := entries(t, root)
	_, err := sn.Prepare(ctx, "ns2/1/extract", "", ref("sha256:layer1"))
	if !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare of a layer that is already here: %v, want AlreadyExists", err)
	}
	if after := entries(t, root); after != before {
		t.Fatalf("the fast path created something: %s -> %s", before, after)
	}
	if _, err := sn.Stat(ctx, "ns2/1/extract"); !errdefs.IsNotFound(err) {
		t.Fatalf("the fast path recorded a snapshot: %v", err)
	}
	// The same layer on another parent is another snapshot.
	if _, err := sn.Prepare(ctx, "ns2/2/extract", "ns1/2/sha256:layer1", ref("sha256:layer1")); err != nil {
		t.Fatalf("same ref on another parent: %v", err)
	}
	// A Prepare without the label is never short-cut.
	if _, err := sn.Prepare(ctx, "ns2/3/plain", ""); err != nil {
		t.Fatal(err)
	}
}

// tree lists the paths under dir, sorted, each followed by its type when it
// is neither a directory nor a regular file ("x(c)" for a whiteout device).
func tree(t *testing.T, dir string) string {
	t.Helper()
	var names []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if typ := d.Type(); typ != 0 && !typ.IsDir() {
			rel += "(" + typ.String()[:1] + ")"
		}
		names = append(names, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(names)
	return strings.Join(names, " ")
}

// unpackParallel extracts layers as containerd's parallel unpack does, in
// namespace ns: the first on no parent, each other without its parent but
// labelled with the parent's chain id, committed onto the parent. A layer
// already held is not extracted (AlreadyExists for the first, a staged,
// read-only snapshot for the others). It returns the committed keys and how
// many layers were extracted.
func unpackParallel(t *testing.T, sn *snapshotter, ns string, layers [][]tarEntry) (keys []string, extracted int) {
	t.Helper()
	ctx := context.Background()
	parent := ""
	for i, l := range layers {
		chainID := fmt.Sprintf("sha256:chain-%d", i)
		labels := map[string]string{snapshots.LabelSnapshotRef: chainID}
		if i > 0 {
			labels[labelParentChainID] = fmt.Sprintf("sha256:chain-%d", i-1)
		}
		key := fmt.Sprintf("%s/extract-%d %s", ns, i, chainID)
		ms, err := sn.Prepare(ctx, key, "", snapshots.WithLabels(labels))
		if errdefs.IsAlreadyExists(err) && i == 0 {
			existing, found, err := findCommitted(sn, chainID, "")
			if err != nil || !found {
				t.Fatalf("AlreadyExists for %s, but no committed layer with that label and no parent: %v", chainID, err)
			}
			keys, parent = append(keys, existing), existing
			continue
		}
		if err != nil {
			t.Fatalf("prepare layer %d in %s: %v", i, ns, err)
		}
		if len(ms) == 0 || !ms[len(ms)-1].ReadOnly() {
			applyLayer(t, ms, l)
			extracted++
		}
		name := fmt.Sprintf("%s/%s", ns, chainID)
		opts := []snapshots.Opt{snapshots.WithLabels(labels)}
		if i > 0 {
			opts = append(opts, snapshots.WithParent(parent))
		}
		if err := sn.Commit(ctx, name, key, opts...); err != nil {
			t.Fatalf("commit layer %d in %s: %v", i, ns, err)
		}
		keys, parent = append(keys, name), name
	}
	return keys, extracted
}

// findCommitted is what containerd does on AlreadyExists: a Walk for a
// committed snapshot with the chain id label on the given parent.
func findCommitted(sn *snapshotter, ref, parent string) (key string, found bool, err error) {
	filter := fmt.Sprintf(`labels.%q==%s,parent==%q`, snapshots.LabelSnapshotRef, ref, parent)
	err = sn.Walk(context.Background(), func(_ context.Context, info snapshots.Info) error {
		if info.Kind == snapshots.KindCommitted && !found {
			key, found = info.Name, true
		}
		return nil
	}, filter)
	return key, found, err
}

var threeLayers = [][]tarEntry{
	{{name: "a", body: "1"}, {name: "d/"}, {name: "d/x", body: "x"}},
	{{name: "b", body: "22"}, {name: "d/.wh.x"}},
	{{name: "c", body: "333"}, {name: ".wh.a"}},
}

// TestParallelUnpackOfHeldImage: an image strata holds, unpacked in parallel
// into a second namespace, is not extracted again: the first layer gets
// AlreadyExists, the others a staged read-only snapshot committed at once
// onto its parent. Nothing new is stored, the second namespace's image
// shows the same files, each copy survives the removal of the other, and
// fsck finds the store clean.
func TestParallelUnpackOfHeldImage(t *testing.T) {
	sn, root := newTestSnapshotter(t)
	ctx := context.Background()
	first, n := unpackParallel(t, sn, "ns1", threeLayers)
	if n != 3 {
		t.Fatalf("first pull extracted %d layers, want 3", n)
	}
	before := entries(t, root)
	second, n := unpackParallel(t, sn, "ns2", threeLayers)
	if n != 0 {
		t.Fatalf("second pull extracted %d layers, want 0", n)
	}
	if after := entries(t, root); after != before {
		t.Fatalf("second pull stored something: %s -> %s", before, after)
	}
	want := "b c d"
	for _, keys := range [][]string{first, second} {
		top := keys[len(keys)-1]
		u1, _ := sn.Usage(ctx, first[len(first)-1])
		if u, err := sn.Usage(ctx, top); err != nil || u != u1 {
			t.Errorf("usage of %s: %+v, %v; want the first pull's %+v", top, u, err, u1)
		}
		view, err := sn.View(ctx, "view-"+top, top)
		if err != nil {
			t.Fatal(err)
		}
		testutil.WithMount(t, view, func(dir string) {
			if got := tree(t, dir); got != want {
				t.Errorf("image %s shows %q, want %q", top, got, want)
			}
		})
		if err := sn.Remove(ctx, "view-"+top); err != nil {
			t.Fatal(err)
		}
	}
	// Remove the first namespace's image; the second's still shows.
	for i := len(first) - 1; i >= 1; i-- {
		if err := sn.Remove(ctx, first[i]); err != nil {
			t.Fatalf("remove %s: %v", first[i], err)
		}
	}
	sn.wg.Wait()
	view, err := sn.View(ctx, "v2", second[2])
	if err != nil {
		t.Fatal(err)
	}
	testutil.WithMount(t, view, func(dir string) {
		if got := tree(t, dir); got != want {
			t.Errorf("after the first image's removal the second shows %q, want %q", got, want)
		}
	})
	for _, k := range []string{"v2", second[2], second[1], second[0]} {
		if err := sn.Remove(ctx, k); err != nil {
			t.Fatalf("remove %s: %v", k, err)
		}
	}
	sn.Close()
	if got := entries(t, root); got != "" {
		t.Fatalf("after removing both images the store holds %s", got)
	}
}

// TestStagedLayerCommitChecksParent: a staged layer commits only onto a
// parent holding the layer its label names.
func TestStagedLayerCommitChecksParent(t *testing.T) {
	sn, root := newTestSnapshotter(t)
	ctx := context.Background()
	first, _ := unpackParallel(t, sn, "ns1", threeLayers)
	labels := map[string]string{snapshots.LabelSnapshotRef: "sha256:chain-2", labelParentChainID: "sha256:chain-1"}
	ms, err := sn.Prepare(ctx, "staged", "", snapshots.WithLabels(labels))
	if err != nil || len(ms) != 1 || !ms[0].ReadOnly() {
		t.Fatalf("prepare of a held layer: %+v, %v; want one read-only mount", ms, err)
	}
	for _, parent := range []string{"", first[0]} {
		err := sn.Commit(ctx, "bad", "staged", snapshots.WithLabels(labels), snapshots.WithParent(parent))
		if !errdefs.IsFailedPrecondition(err) {
			t.Errorf("commit of a staged layer onto %q: %v, want FailedPrecondition", parent, err)
		}
	}
	if err := sn.Commit(ctx, "good", "staged", snapshots.WithLabels(labels), snapshots.WithParent(first[1])); err != nil {
		t.Fatal(err)
	}
	// A layer stored once for two snapshots, and one staged: a clean store.
	if _, err := sn.Prepare(ctx, "staged-again", "", snapshots.WithLabels(labels)); err != nil {
		t.Fatal(err)
	}
	sn.Close()
	if r, err := Fsck(ctx, root, FsckOptions{}); err != nil || len(r.Findings) != 0 {
		t.Fatalf("fsck of a store with a shared layer directory: %q, %v", r.Findings, err)
	}
}
