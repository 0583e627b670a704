package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-snapshotter/strata/accounting"
	"github.com/strata-snapshotter/strata/admin"
)

// strata runs a strata-snapshotter subcommand against this node's daemon.
func (e *Env) strata(args ...string) string {
	e.t.Helper()
	return e.run(append([]string{strataBinary, args[0], "--admin-address", e.AdminSock}, args[1:]...)...)
}

func (e *Env) du() accounting.Report {
	e.t.Helper()
	var r accounting.Report
	if err := json.Unmarshal([]byte(e.strata("du", "--json")), &r); err != nil {
		e.t.Fatal(err)
	}
	return r
}

// TestSharedLayerAccounting pulls two images that share three base layers
// and starts two containers from each. strata's du counts each shared layer
// once in physical bytes, each image's own layer as unique to it, and a
// saving equal to the shared bytes counted extra times; inspect of a
// container lists its lower directories in the overlay mount's order; and a
// pull of an image already here, in another namespace, unpacks nothing (the
// remote-snapshot fast path).
func TestSharedLayerAccounting(t *testing.T) {
	e := newEnv(t, EnvOptions{})
	for _, img := range []string{imgSharedA, imgSharedB} {
		e.nerdctl("pull", "--insecure-registry", img)
	}
	bb, err := os.Stat("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	// busybox and its applets' symlinks, and the files of layers 2 and 3.
	base := bb.Size() + int64(len(busyboxApplets)*len("busybox")+len("layer 2\n")+len("from layer 2\n")+len("layer 3\n"))
	onlyA, onlyB := int64(len("a\n")), int64(len("b\n"))

	// The two images alone: their top layers are the leaves.
	r := e.du()
	if r.PhysicalBytes != base+onlyA+onlyB || r.LogicalBytes != 2*base+onlyA+onlyB || r.SavedBytes != base {
		t.Fatalf("two images: physical %d logical %d saved %d; want %d %d %d",
			r.PhysicalBytes, r.LogicalBytes, r.SavedBytes, base+onlyA+onlyB, 2*base+onlyA+onlyB, base)
	}
	for _, l := range r.Leaves {
		if l.Layers != 4 || l.SharedBytes != base || (l.UniqueBytes != onlyA && l.UniqueBytes != onlyB) {
			t.Errorf("image leaf %+v: want 4 layers, %d shared, its own layer unique", l, base)
		}
	}
	// What du measures is what is on disk, as du --bytes --apparent-size
	// counts it less the directories.
	if _, onDisk := fileBytes(t, layersDir(e.StrataRoot)); onDisk != r.PhysicalBytes {
		t.Errorf("du says %d physical bytes, the files under layers/ hold %d", r.PhysicalBytes, onDisk)
	}

	for _, c := range []struct{ name, img string }{{"a1", imgSharedA}, {"a2", imgSharedA}, {"b1", imgSharedB}, {"b2", imgSharedB}} {
		e.nerdctl("run", "-d", "--name", c.name, "--net", "none", c.img, "sleep", "3600")
	}
	e.collectGarbage(imgSharedA)
	r = e.du()
	upper := int64(0) // what the containers' writable layers hold
	leaves := 0
	for _, l := range r.Leaves {
		if l.Kind != "active" {
			continue
		}
		leaves++
		upper += l.UniqueBytes
		if l.Layers != 5 {
			t.Errorf("container leaf %+v: want 5 layers (4 of its image and its own)", l)
		}
		// A container shares the base with everyone and its image's top
		// layer with its sibling; only its writable layer is its own.
		if want := base + onlyA; l.SharedBytes != want && l.SharedBytes != base+onlyB {
			t.Errorf("container leaf %+v: shared %d, want the image's %d", l, l.SharedBytes, want)
		}
	}
	if leaves != 4 {
		t.Fatalf("%d container leaves, want 4: %+v", leaves, r.Leaves)
	}
	wantPhysical := base + onlyA + onlyB + upper
	wantSaved := 3*base + onlyA + onlyB // the base counted 4 times, each image's layer twice
	if r.PhysicalBytes != wantPhysical || r.SavedBytes != wantSaved || r.LogicalBytes != wantPhysical+wantSaved {
		t.Fatalf("four containers: physical %d logical %d saved %d; want %d %d %d",
			r.PhysicalBytes, r.LogicalBytes, r.SavedBytes, wantPhysical, wantPhysical+wantSaved, wantSaved)
	}
	t.Logf("strata-snapshotter du, two images sharing 3 layers, two containers each:\n%s", e.strata("du"))

	// inspect of a container: lower directories in the mount's order.
	var container string
	for _, l := range r.Leaves {
		if l.Kind == "active" {
			container = l.Key
			break
		}
	}
	var s admin.Snapshot
	if err := json.Unmarshal([]byte(e.strata("inspect", "--json", container)), &s); err != nil {
		t.Fatal(err)
	}
	var lowerdir string
	for _, o := range s.Mounts[0].Options {
		if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
			lowerdir = v
		}
	}
	if lowers := strings.Split(s.GraphDriver.Data.LowerDir, ":"); s.GraphDriver.Data.LowerDir != lowerdir || len(lowers) != 4 {
		t.Fatalf("inspect LowerDir %q, overlay lowerdir %q; want the same 4 directories", s.GraphDriver.Data.LowerDir, lowerdir)
	}
	if _, err := os.Stat(filepath.Join(strings.Split(lowerdir, ":")[0], "only-a")); err != nil {
		if _, err := os.Stat(filepath.Join(strings.Split(lowerdir, ":")[0], "only-b")); err != nil {
			t.Errorf("the first lower directory is not the image's top layer")
		}
	}

	// The fast path: the same image in another namespace. containerd asks
	// strata to Prepare each layer with its chain id; strata answers
	// AlreadyExists and nothing is unpacked again.
	before := len(e.layerDirs())
	e.run(filepath.Join(toolsBin, "ctr"), "--address", e.Sock, "--namespace", "other", "images", "pull",
		"--plain-http", "--hosts-dir", hostsDir, "--snapshotter", "strata", imgSharedA)
	if after := len(e.layerDirs()); after != before {
		t.Fatalf("pulling an image already here made %d new layer directories", after-before)
	}
	if n := len(e.snapshots("other")); n != 4 {
		t.Fatalf("namespace other sees %d snapshots, want the image's 4", n)
	}
}
