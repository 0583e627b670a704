package snapshotter

import (
	"context"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"

	"github.com/strata-snapshotter/strata/internal/testutil"
)

var userNS = snapshots.WithLabels(map[string]string{
	snapshots.LabelSnapshotUIDMapping: "0:200000:65536",
	snapshots.LabelSnapshotGIDMapping: "0:300000:65536",
})

// TestUserNamespaceSnapshot: a snapshot for a user namespace is served as
// containerd's overlayfs serves it, with no copy of the image: its root is
// owned by the mapped root, and every mount carries uidmap=/gidmap=, which
// containerd's own mount code turns into idmapped mounts, through which the
// image's root-owned files show as the mapped root's.
func TestUserNamespaceSnapshot(t *testing.T) {
	sn, root := newTestSnapshotter(t)
	if !sn.idmapped {
		t.Skip("the kernel has no idmapped mounts")
	}
	ctx := context.Background()
	commitLayer(t, sn, "base", "", map[string]string{"file": "from the image\n"})
	before := len(layerNames(t, root))

	ms, err := sn.Prepare(ctx, "userns", "base", userNS)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if !slices.Contains(m.Options, "uidmap=0:200000:65536") || !slices.Contains(m.Options, "gidmap=0:300000:65536") {
			t.Fatalf("mount %+v carries no mapping", m)
		}
	}
	if n := len(layerNames(t, root)); n != before+1 {
		t.Fatalf("%d layer directories after Prepare, want %d: the image must not be copied", n, before+1)
	}
	again, err := sn.Mounts(ctx, "userns")
	if err != nil || !slices.Equal(again[0].Options, ms[0].Options) {
		t.Fatalf("Mounts: %v %+v, Prepare returned %+v", err, again, ms)
	}
	testutil.WithMount(t, ms, func(dir string) {
		for name, want := range map[string][2]uint32{".": {200000, 300000}, "file": {200000, 300000}} {
			fi, err := os.Lstat(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			st := fi.Sys().(*syscall.Stat_t)
			if st.Uid != want[0] || st.Gid != want[1] {
				t.Errorf("%s is owned by %d:%d through the mount, want the mapped root %d:%d", name, st.Uid, st.Gid, want[0], want[1])
			}
		}
	})

	// A view of the one layer is a bind mount, mapped too.
	vs, err := sn.View(ctx, "userns-view", "base", userNS)
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 1 || vs[0].Type != "bind" || !slices.Contains(vs[0].Options, "uidmap=0:200000:65536") {
		t.Fatalf("view mounts %+v", vs)
	}
}

// TestUserNamespaceMappingIsFixed: Update cannot change an active
// snapshot's or a view's mapping, but passes it through as containerd does
// (all inherited labels with "labels", or other keys one by one).
func TestUserNamespaceMappingIsFixed(t *testing.T) {
	sn, _ := newTestSnapshotter(t)
	if !sn.idmapped {
		t.Skip("the kernel has no idmapped mounts")
	}
	ctx := context.Background()
	commitLayer(t, sn, "base", "", map[string]string{"file": "x"})
	if _, err := sn.Prepare(ctx, "userns", "base", userNS); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.View(ctx, "userns-view", "base", userNS); err != nil {
		t.Fatal(err)
	}
	mapping := map[string]string{
		snapshots.LabelSnapshotUIDMapping: "0:200000:65536",
		snapshots.LabelSnapshotGIDMapping: "0:300000:65536",
	}
	for _, key := range []string{"userns", "userns-view"} {
		withOther := maps.Clone(mapping)
		withOther["containerd.io/snapshot/other"] = "x"
		if _, err := sn.Update(ctx, snapshots.Info{Name: key, Labels: withOther}, "labels"); err != nil {
			t.Errorf("%s: an update that keeps the mapping: %v", key, err)
		}
		if _, err := sn.Update(ctx, snapshots.Info{Name: key, Labels: mapping}, "labels.containerd.io/snapshot/other"); err != nil {
			t.Errorf("%s: an update of another label: %v", key, err)
		}
		for name, update := range map[string]func() error{
			"changed": func() error {
				_, err := sn.Update(ctx, snapshots.Info{Name: key, Labels: map[string]string{snapshots.LabelSnapshotUIDMapping: "0:100000:65536"}}, "labels."+snapshots.LabelSnapshotUIDMapping)
				return err
			},
			"dropped": func() error {
				_, err := sn.Update(ctx, snapshots.Info{Name: key}, "labels")
				return err
			},
		} {
			if err := update(); !errdefs.IsFailedPrecondition(err) {
				t.Errorf("%s: mapping %s: %v, want FailedPrecondition", key, name, err)
			}
		}
		ms, err := sn.Mounts(ctx, key)
		if err != nil || !slices.Contains(ms[0].Options, "uidmap=0:200000:65536") {
			t.Errorf("%s: after the refused updates, mounts %+v, %v", key, ms, err)
		}
	}
}

// TestUserNamespaceWithoutIdmappedMounts: where the kernel has no idmapped
// mounts (this machine's has; the start-up probe's answer is overridden),
// containerd copies the image, chowned, and still passes the mapping
// labels: strata serves the snapshot without a mapping, its root owned
// like its parent's, as containerd's overlayfs does.
func TestUserNamespaceWithoutIdmappedMounts(t *testing.T) {
	sn, _ := newTestSnapshotter(t)
	if !sn.idmapped {
		t.Skip("the kernel has no idmapped mounts: the override below would test nothing")
	}
	sn.idmapped = false
	commitLayer(t, sn, "base", "", map[string]string{"file": "x"})
	ms, err := sn.Prepare(context.Background(), "userns", "base", userNS)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if slices.ContainsFunc(m.Options, func(o string) bool { return strings.HasPrefix(o, "uidmap=") }) {
			t.Errorf("mount %+v carries a mapping the kernel cannot apply", m)
		}
	}
}

// TestUserNamespaceOnShiftedCopy: a containerd whose config does not list
// remap-ids for strata copies the image chowned into the user namespace
// (its root owned by the mapped root) and prepares the container on the
// copy with the mapping labels. strata mounts it as it is: an idmapped
// mount would shift the owners a second time.
func TestUserNamespaceOnShiftedCopy(t *testing.T) {
	sn, _ := newTestSnapshotter(t)
	ctx := context.Background()
	commitLayer(t, sn, "image", "", map[string]string{"file": "x"})
	// containerd's copy: a snapshot on the image, chowned, committed.
	ms, err := sn.Prepare(ctx, "copy-remap", "image")
	if err != nil {
		t.Fatal(err)
	}
	testutil.WithMount(t, ms, func(dir string) {
		for _, name := range []string{".", "file"} {
			if err := os.Lchown(filepath.Join(dir, name), 200000, 300000); err != nil {
				t.Fatal(err)
			}
		}
	})
	if err := sn.Commit(ctx, "copy", "copy-remap"); err != nil {
		t.Fatal(err)
	}
	ms, err = sn.Prepare(ctx, "userns", "copy", userNS)
	if err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(ms[0].Options, func(o string) bool { return strings.HasPrefix(o, "uidmap=") }) {
		t.Fatalf("mounts %+v map the chowned copy again", ms)
	}
	testutil.WithMount(t, ms, func(dir string) {
		fi, err := os.Lstat(filepath.Join(dir, "file"))
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 200000 || st.Gid != 300000 {
			t.Errorf("the copy's file is owned by %d:%d through the mount, want 200000:300000", st.Uid, st.Gid)
		}
	})
}

// Bad mapping labels are InvalidArgument, and nothing is made.
func TestUserNamespaceBadLabels(t *testing.T) {
	sn, _ := newTestSnapshotter(t)
	for name, labels := range map[string]map[string]string{
		"not a number":  {snapshots.LabelSnapshotUIDMapping: "0:x:1", snapshots.LabelSnapshotGIDMapping: "0:1:1"},
		"uid map alone": {snapshots.LabelSnapshotUIDMapping: "0:1000:1"},
		"no root":       {snapshots.LabelSnapshotUIDMapping: "1:1000:10", snapshots.LabelSnapshotGIDMapping: "0:1000:10"},
		"empty range":   {snapshots.LabelSnapshotUIDMapping: "0:1000:0", snapshots.LabelSnapshotGIDMapping: "0:1000:1"},
		"past the top":  {snapshots.LabelSnapshotUIDMapping: "0:4294967290:100", snapshots.LabelSnapshotGIDMapping: "0:1000:1"},
		"two fields":    {snapshots.LabelSnapshotUIDMapping: "0:1000", snapshots.LabelSnapshotGIDMapping: "0:1000:1"},
	} {
		_, err := sn.Prepare(context.Background(), "bad-"+name, "", snapshots.WithLabels(labels))
		if !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
}

func layerNames(t *testing.T, root string) []string {
	t.Helper()
	es, err := os.ReadDir(filepath.Join(root, "layers"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}
