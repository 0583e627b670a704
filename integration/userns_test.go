package integration

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestUserNamespaceCtr runs a user-namespaced container (ctr run
// --remap-labels --uidmap --gidmap, with runc 1.2+) on containerd's
// overlayfs and on strata side by side in one containerd: on both it sees
// its image owned by its own root through idmapped mounts and can write,
// and neither makes a copy of the image (committed snapshots and their
// bytes are the same before and after).
func TestUserNamespaceCtr(t *testing.T) {
	e := newEnv(t, EnvOptions{})
	// The container's root (host ID 200000) must reach its bundle under
	// containerd's state directory, as under /run/containerd (0711). It
	// gets a network namespace of its own (sysfs mounts only there).
	if err := os.Chmod(e.Dir, 0o711); err != nil {
		t.Fatal(err)
	}
	const mapping = "0:200000:65536"
	for _, sn := range []string{"overlayfs", "strata"} {
		t.Run(sn, func(t *testing.T) {
			e.ctr("images", "pull", "--plain-http", "--hosts-dir", hostsDir, "--snapshotter", sn, imgThreeLayers)
			committed, bytes := committedUsage(e, sn)
			id := "userns-" + sn
			out := e.ctr("run", "--snapshotter", sn, "--runc-binary", filepath.Join(runcBin, "runc"),
				"--remap-labels", "--uidmap", mapping, "--gidmap", mapping, imgThreeLayers, id,
				"/bin/sh", "-c", "cat /proc/self/uid_map; ls -ln /l3; echo written > /new; cat /new")
			f := strings.Fields(out)
			if len(f) < 3 || f[0] != "0" || f[1] != "200000" || f[2] != "65536" {
				t.Fatalf("the container's uid_map is not the mapping:\n%s", out)
			}
			if !strings.Contains(out, " 0 ") || !strings.HasSuffix(out, "written\n") {
				t.Fatalf("inside, the image's files are not owned by the container's root, or the write failed:\n%s", out)
			}
			after, afterBytes := committedUsage(e, sn)
			t.Logf("%s: committed snapshots %d -> %d, bytes %d -> %d", sn, committed, after, bytes, afterBytes)
			if after != committed || afterBytes != bytes {
				t.Errorf("%s: a user-namespaced container copied the image: committed snapshots %d -> %d, bytes %d -> %d", sn, committed, after, bytes, afterBytes)
			}
			e.ctr("containers", "rm", id)
		})
	}
}

// committedUsage counts a snapshotter's committed snapshots in the test
// namespace and the bytes they hold, as ctr reports them.
func committedUsage(e *Env, sn string) (n int, bytes int64) {
	e.t.Helper()
	kinds := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(e.ctr("snapshots", "--snapshotter", sn, "ls")), "\n")[1:] {
		if f := strings.Fields(line); len(f) >= 2 && f[len(f)-1] == "Committed" {
			kinds[f[0]] = true
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(e.ctr("snapshots", "--snapshotter", sn, "usage", "-b")), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) >= 2 && kinds[f[0]] {
			v, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				e.t.Fatalf("ctr snapshots usage: %q: %v", line, err)
			}
			bytes += v
		}
	}
	return len(kinds), bytes
}
