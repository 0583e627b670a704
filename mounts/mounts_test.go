package mounts

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/strata-snapshotter/strata/internal/testutil"
)

// layers names n layer directories under dir/layers, 8 characters each.
func layers(dir string, n int) []string {
	ls := make([]string, n)
	for i := range ls {
		ls[i] = filepath.Join(dir, "layers", fmt.Sprintf("%08d", i))
	}
	return ls
}

func TestForShapes(t *testing.T) {
	self := "/r/layers/SELF"
	two := layers("/r", 2)
	for _, tc := range []struct {
		name string
		req  Request
		want mount.Mount
	}{
		{"active without parent", Request{Writable: true, Dir: self, Options: []string{"index=off"}},
			mount.Mount{Type: "bind", Source: self, Options: []string{"rw", "rbind"}}},
		{"extraction without parent", Request{Writable: true, Dir: self, WorkDir: "/r/work/SELF", EmptyLower: "/r/empty", Options: []string{"index=off"}},
			mount.Mount{Type: "overlay", Source: "overlay", Options: []string{"workdir=/r/work/SELF", "upperdir=/r/layers/SELF", "lowerdir=/r/empty", "index=off"}}},
		{"view without parent ignores EmptyLower", Request{Dir: self, EmptyLower: "/r/empty"},
			mount.Mount{Type: "bind", Source: self, Options: []string{"ro", "rbind"}}},
		{"view without parent", Request{Dir: self},
			mount.Mount{Type: "bind", Source: self, Options: []string{"ro", "rbind"}}},
		{"view of one layer", Request{Dir: self, Parents: two[:1]},
			mount.Mount{Type: "bind", Source: two[0], Options: []string{"ro", "rbind"}}},
		{"view of one layer with shared files", Request{Dir: self, Parents: two[:1], DataDir: "/r/objects", Options: []string{"index=off"}},
			mount.Mount{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=/r/layers/00000000::/r/objects", "index=off", "metacopy=off"}}},
		{"active on layers with shared files, metacopy configured", Request{Writable: true, Dir: self, WorkDir: "/r/work/SELF", Parents: two, DataDir: "/r/objects", Options: []string{"metacopy=on"}},
			mount.Mount{Type: "overlay", Source: "overlay", Options: []string{"workdir=/r/work/SELF", "upperdir=/r/layers/SELF", "lowerdir=/r/layers/00000000:/r/layers/00000001::/r/objects", "metacopy=on", "metacopy=off"}}},
		{"view of two layers", Request{Dir: self, Parents: two, Options: []string{"index=off"}},
			mount.Mount{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=/r/layers/00000000:/r/layers/00000001", "index=off"}}},
		{"active on a layer", Request{Writable: true, Dir: self, WorkDir: "/r/work/SELF", Parents: two[:1], Options: []string{"index=off", "userxattr"}},
			mount.Mount{Type: "overlay", Source: "overlay", Options: []string{"workdir=/r/work/SELF", "upperdir=/r/layers/SELF", "lowerdir=/r/layers/00000000", "index=off", "userxattr"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := For(tc.req)
			if len(got) != 1 || fmt.Sprint(got[0]) != fmt.Sprint(tc.want) {
				t.Fatalf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestCheckLimitsLowerDirs(t *testing.T) {
	// 500 directories of 8 characters (4500 bytes) are too long for one
	// page whatever the root; strata's 6 fit.
	short := layers("/r", MaxLowerDirs+1)
	for i := range short {
		short[i] = short[i][:len(short[i])-2]
	}
	if err := Check(Request{Dir: "/r/s", Parents: layers("/r", MaxLowerDirs)}); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "mount(2) accepts") {
		t.Fatalf("500 lower dirs of 8-character names: %v, want FailedPrecondition about mount(2)'s limit", err)
	}
	ok := Request{Dir: "/r/s", Parents: short[:MaxLowerDirs]}
	if err := Check(ok); err != nil {
		t.Fatalf("%d lower dirs: %v", MaxLowerDirs, err)
	}
	tooMany := Request{Dir: "/r/s", Parents: short}
	err := Check(tooMany)
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "limit of 500") {
		t.Fatalf("%d lower dirs: %v, want FailedPrecondition naming the limit", MaxLowerDirs+1, err)
	}
}

func TestHasOption(t *testing.T) {
	opts := []string{"index=on", "userxattr"}
	for key, want := range map[string]bool{"index": true, "userxattr": true, "metacopy": false, "inde": false} {
		if got := HasOption(opts, key); got != want {
			t.Errorf("HasOption(%q) = %v", key, got)
		}
	}
}

// TestDataSizeMatchesKernel checks mountedSize's model of containerd's mount.All
// on the real kernel: an overlay whose option data, as mountedSize counts it,
// is exactly 4095 bytes mounts; one of 4097 is refused. With the object
// store as data-only layer, which containerd does not compact, too.
func TestDataSizeMatchesKernel(t *testing.T) {
	testutil.RequiresRoot(t)
	for _, data := range []bool{false, true} {
		t.Run(fmt.Sprintf("data-only layer %v", data), func(t *testing.T) { dataSizeMatchesKernel(t, data) })
	}
}

func dataSizeMatchesKernel(t *testing.T, data bool) {
	dir := t.TempDir()
	ls := layers(dir, MaxLowerDirs)
	for _, l := range ls {
		if err := os.MkdirAll(l, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var dataDir string
	if data {
		dataDir = filepath.Join(dir, "objects")
		if err := os.Mkdir(dataDir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// n lower directories, and an upper directory whose name is padded
	// by pad bytes to tune the total to the byte.
	request := func(n, pad int) Request {
		return Request{
			Writable: true,
			Dir:      filepath.Join(dir, "u", "fs"+strings.Repeat("x", pad)),
			WorkDir:  filepath.Join(dir, "u", "w"),
			Parents:  ls[:n],
			DataDir:  dataDir,
		}
	}
	for _, tc := range []struct {
		size  int
		mount bool
	}{{4095, true}, {4097, false}} {
		// The most layers that fit, then pad the rest (less than one
		// layer's cost).
		n := 1
		for n < len(ls) && mountedSize(For(request(n+1, 0))[0]) <= tc.size {
			n++
		}
		req := request(n, tc.size-mountedSize(For(request(n, 0))[0]))
		ms := For(req)
		if got := mountedSize(ms[0]); got != tc.size {
			t.Fatalf("built %d bytes, want %d", got, tc.size)
		}
		for _, d := range []string{req.Dir, req.WorkDir} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		target := t.TempDir()
		err := mount.All(ms, target)
		if err == nil {
			mount.UnmountAll(target, 0)
		}
		if (err == nil) != tc.mount {
			t.Fatalf("%d bytes (%d layers): mount error %v, want mounted=%v", tc.size, n, err, tc.mount)
		}
		if checkErr := Check(req); (checkErr == nil) != tc.mount {
			t.Fatalf("%d bytes: Check says %v, want ok=%v", tc.size, checkErr, tc.mount)
		}
		t.Logf("%d bytes of options with %d lower directories: mounted=%v", tc.size, n, err == nil)
	}
}

// TestDeepChainMountsWithMapping: the deepest chain strata allows, 500
// layers with its 6-character names, still mounts for a user namespace:
// containerd's mount code remounts the layers' directory idmapped at a
// temporary place, stacks the layers from there, and compacts the options
// to fit mount(2)'s page, as Check counts them.
func TestDeepChainMountsWithMapping(t *testing.T) {
	testutil.RequiresRoot(t)
	dir := t.TempDir()
	ls := make([]string, MaxLowerDirs)
	for i := range ls {
		ls[i] = filepath.Join(dir, "layers", fmt.Sprintf("%06d", i))
		if err := os.MkdirAll(ls[i], 0o755); err != nil {
			t.Fatal(err)
		}
	}
	req := Request{
		Writable: true,
		Dir:      filepath.Join(dir, "layers", "UPPER0"),
		WorkDir:  filepath.Join(dir, "work", "UPPER0"),
		Parents:  ls,
		Mapping:  []string{"uidmap=0:200000:65536", "gidmap=0:200000:65536"},
	}
	for _, d := range []string{req.Dir, req.WorkDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ms := For(req)
	if err := Check(req); err != nil {
		t.Fatalf("Check: %v", err)
	}
	// containerd's idmapped remount of the layers' directory goes under
	// the temporary directory; its unmount retries for a bounded time,
	// which a slow (race-instrumented) run can outlast. Leave none behind,
	// touching only this test's: new, and no overlay stacked on it (tests
	// in other packages may be mounting theirs meanwhile).
	temp := filepath.Join(os.TempDir(), "ovl-idmapped*")
	before, _ := filepath.Glob(temp)
	t.Cleanup(func() {
		overlays, _ := mountinfo.GetMounts(mountinfo.FSTypeFilter("overlay"))
		after, _ := filepath.Glob(temp)
		for _, p := range after {
			used := slices.ContainsFunc(overlays, func(m *mountinfo.Info) bool { return strings.Contains(m.VFSOptions, p+"/") })
			if !slices.Contains(before, p) && !used {
				unix.Unmount(p, unix.MNT_DETACH)
				os.Remove(p)
			}
		}
	})
	target := t.TempDir()
	if err := mount.All(ms, target); err != nil {
		t.Fatalf("a %d-layer chain with an ID mapping did not mount: %v", len(ls), err)
	}
	if err := mount.UnmountAll(target, 0); err != nil {
		t.Fatal(err)
	}
}

func TestOverlayUses(t *testing.T) {
	for _, tc := range []struct {
		options, dir string
		want         bool
	}{
		{"rw,lowerdir=/r/layers/AAAAAA:/r/layers/BBBBBB,upperdir=/r/layers/CCCCCC,workdir=/r/work/CCCCCC", "/r/layers/BBBBBB", true},
		{"rw,lowerdir=/r/layers/AAAAAA,upperdir=/r/layers/CCCCCC,workdir=/r/work/CCCCCC", "/r/work/CCCCCC", true},
		{"rw,lowerdir=/r/layers/AAAAAA::/r/objects", "/r/objects", true},
		{"rw,lowerdir=AAAAAA:BBBBBB", "/r/layers/BBBBBB", true}, // compacted by containerd
		{"rw,lowerdir+=/r/layers/AAAAAA,datadir+=/r/objects", "/r/layers/AAAAAA", true},
		{"rw,lowerdir=/r/sp\\040ace/AAAAAA", "/r/sp ace", true},
		{"rw,lowerdir=/r/layers/AAAAAA", "/r/layers/AAAAA", false},
		{"rw,lowerdir=/r/layers/AAAAAA,upperdir=/other/up", "/r/layers/BBBBBB", false},
	} {
		if got := overlayUses(tc.options, tc.dir); got != tc.want {
			t.Errorf("overlayUses(%q, %q) = %v, want %v", tc.options, tc.dir, got, tc.want)
		}
	}
}
