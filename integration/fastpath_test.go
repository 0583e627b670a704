package integration

import (
	"fmt"
	"path/filepath"
	"testing"
)

// TestHeldImageNotUnpackedAgain: an image strata holds, pulled into another
// containerd namespace, is not unpacked again, whether containerd unpacks
// sequentially or in parallel: no new layer directory, the other namespace
// sees every layer and runs a container on them, and the image survives its
// removal from the first namespace.
func TestHeldImageNotUnpackedAgain(t *testing.T) {
	for _, parallel := range []bool{false, true} {
		t.Run(fmt.Sprintf("parallel=%v", parallel), func(t *testing.T) {
			e := newEnv(t, EnvOptions{ParallelUnpack: parallel})
			other := func(args ...string) string {
				return e.run(append([]string{filepath.Join(toolsBin, "ctr"), "--address", e.Sock, "--namespace", "other"}, args...)...)
			}
			e.ctr("images", "pull", "--plain-http", "--hosts-dir", hostsDir, "--snapshotter", "strata", imgSharedA)
			if parallel != containsLine(e.Containerd, "parallel=true") {
				t.Fatalf("containerd's unpack was not in the mode under test (parallel=%v)", parallel)
			}
			before := e.layerDirs()
			other("images", "pull", "--plain-http", "--hosts-dir", hostsDir, "--snapshotter", "strata", imgSharedA)
			if after := e.layerDirs(); len(after) != len(before) {
				t.Fatalf("pulling an image already here made %d new layer directories (%v -> %v)", len(after)-len(before), before, after)
			}
			if n := len(e.snapshots("other")); n != 4 {
				t.Fatalf("namespace other sees %d snapshots, want the image's 4", n)
			}
			want := "a\nlayer 3\n"
			if out := other("run", "--rm", "--snapshotter", "strata", "--net-host", imgSharedA, "c1", "/bin/cat", "/only-a", "/l3"); out != want {
				t.Fatalf("container in namespace other printed %q, want %q", out, want)
			}
			// containerd's garbage collection removes the first
			// namespace's snapshots; the layers stay for the other's.
			e.ctr("images", "rm", "--sync", imgSharedA)
			if after := e.layerDirs(); len(after) != len(before) {
				t.Fatalf("after the removal from the first namespace strata holds layer directories %v, want the %d the other namespace uses", after, len(before))
			}
			if out := other("run", "--rm", "--snapshotter", "strata", "--net-host", imgSharedA, "c2", "/bin/cat", "/only-a", "/l3"); out != want {
				t.Fatalf("after removal from the first namespace, the container printed %q, want %q", out, want)
			}
		})
	}
}
