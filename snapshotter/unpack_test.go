package snapshotter

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff/apply"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
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
		snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: "sha256:top"}))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || ms[0].Type != "overlay" {
		t.Fatalf("extraction without a parent got %+v, want one overlay mount", ms)
	}

	// The layer: delete "gone", add "new".
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	for name, body := range map[string]string{".wh.gone": "", "new": "3"} {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(body))
	}
	tw.Close()
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
	if err := sn.Commit(ctx, "top", "extract-1 sha256:top", snapshots.WithParent("base")); err != nil {
		t.Fatal(err)
	}

	view, err := sn.View(ctx, "v", "top")
	if err != nil {
		t.Fatal(err)
	}
	withMount(t, view, func(dir string) {
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
