package integration

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/strata-snapshotter/strata/admin"
)

// usernsChanges is what the user-namespaced container changes, as its own
// root, in the three-layers image: a new file and directory, a lower file
// appended to, chown-ed and deleted. It pins the mtimes of what it changed.
const usernsChanges = `echo written > /new; cat /new
mkdir /d; echo x > /d/f
echo appended >> /l2; chown 1000:1001 /l3; rm /lower-file
touch -d '2002-03-04 05:06:07' /new /d /d/f /l2 /l3`

// TestUserNamespaceCtr runs a user-namespaced container (ctr run
// --remap-labels --uidmap --gidmap, with runc 1.2+) on containerd's
// overlayfs and on strata side by side in one containerd: on both it sees
// its image owned by its own root through idmapped mounts and can write,
// neither makes a copy of the image (committed snapshots and their bytes
// are the same before and after), and the diff containerd computes of the
// container's changes (what a commit records) is the same entry by entry.
func TestUserNamespaceCtr(t *testing.T) {
	e := newEnv(t, EnvOptions{})
	// The container's root (host ID 200000) must reach its bundle under
	// containerd's state directory, as under /run/containerd (0711). It
	// gets a network namespace of its own (sysfs mounts only there).
	if err := os.Chmod(e.Dir, 0o711); err != nil {
		t.Fatal(err)
	}
	const mapping = "0:200000:65536"
	changes := map[string]layerTar{}
	for _, sn := range []string{refSn, testSn} {
		t.Run(sn, func(t *testing.T) {
			e.ctr("images", "pull", "--plain-http", "--hosts-dir", hostsDir, "--snapshotter", sn, imgThreeLayers)
			committed, bytes := committedUsage(e, sn, namespace)
			id := "userns-" + sn
			out := e.ctr("run", "--snapshotter", sn, "--runc-binary", filepath.Join(runcBin, "runc"),
				"--remap-labels", "--uidmap", mapping, "--gidmap", mapping, imgThreeLayers, id,
				"/bin/sh", "-c", "cat /proc/self/uid_map; ls -ln /l3\n"+usernsChanges)
			f := strings.Fields(out)
			if len(f) < 3 || f[0] != "0" || f[1] != "200000" || f[2] != "65536" {
				t.Fatalf("the container's uid_map is not the mapping:\n%s", out)
			}
			if !ownedByRoot(out, "/l3") || !strings.HasSuffix(out, "written\n") {
				t.Fatalf("inside, the image's files are not owned by the container's root, or the write failed:\n%s", out)
			}
			after, afterBytes := committedUsage(e, sn, namespace)
			t.Logf("%s: committed snapshots %d -> %d, bytes %d -> %d", sn, committed, after, bytes, afterBytes)
			if after != committed || afterBytes != bytes {
				t.Errorf("%s: a user-namespaced container copied the image: committed snapshots %d -> %d, bytes %d -> %d", sn, committed, after, bytes, afterBytes)
			}
			if sn == testSn {
				// The operator sees the container's mapping.
				var s admin.Snapshot
				for _, l := range e.du().Leaves {
					if l.Kind == "active" {
						if err := json.Unmarshal([]byte(e.strata("inspect", "--json", l.Key)), &s); err != nil {
							t.Fatal(err)
						}
					}
				}
				if s.IDMapping == nil || s.IDMapping.UIDs != mapping || s.IDMapping.GIDs != mapping {
					t.Errorf("strata-snapshotter inspect of the container: mapping %+v, want uids and gids %s", s.IDMapping, mapping)
				}
			}
			// What a commit of the container records: the diff of its
			// snapshot (named as the container) against its image.
			diff := e.ctr("snapshots", "--snapshotter", sn, "diff", "--media-type", ocispec.MediaTypeImageLayer, id)
			l, err := readLayer(strings.NewReader(diff))
			if err != nil {
				t.Fatalf("%s: the container's diff: %v", sn, err)
			}
			changes[sn] = l
			e.ctr("containers", "rm", id)
		})
	}
	want, got := changes[refSn], changes[testSn]
	if want.entries["/new"] == nil {
		t.Fatalf("overlayfs's diff of the container's changes does not hold /new: %q", want.order)
	}
	t.Logf("the diff of the container's changes: %d entries; /new is %s", len(want.entries), want.entries["/new"])
	// Runtime mount points carry the wall clock's mtimes.
	pinned := []string{"new", "d", "d/f", "l2", "l3"}
	unpinMtimes(want.entries, pinned)
	unpinMtimes(got.entries, pinned)
	if d := diffNodes(want.entries, got.entries); len(d) > 0 {
		t.Errorf("the diff of a user-namespaced container's changes: %d differences, overlayfs vs strata:\n%s", len(d), strings.Join(d, "\n"))
	} else if !slices.Equal(want.order, got.order) {
		t.Errorf("the diffs list their entries in different orders:\noverlayfs %q\nstrata    %q", want.order, got.order)
	}
}

// TestUserNamespaceWithoutRemapIDs: a containerd whose config lists no
// remap-ids for strata (written before strata had it, or on a kernel
// without idmapped mounts) copies the image, chowned, for a user-namespaced
// container and passes the mapping labels anyway: on strata the container
// still sees its image owned by its own root, and can write.
func TestUserNamespaceWithoutRemapIDs(t *testing.T) {
	e := newEnv(t, EnvOptions{NoRemapIDs: true})
	if err := os.Chmod(e.Dir, 0o711); err != nil {
		t.Fatal(err)
	}
	const mapping = "0:200000:65536"
	e.ctr("images", "pull", "--plain-http", "--hosts-dir", hostsDir, "--snapshotter", testSn, imgThreeLayers)
	committed, _ := committedUsage(e, testSn, namespace)
	// Not --rm: the container keeps containerd's copy from its garbage
	// collection while the snapshots are counted.
	out := e.ctr("run", "--snapshotter", testSn, "--runc-binary", filepath.Join(runcBin, "runc"),
		"--remap-labels", "--uidmap", mapping, "--gidmap", mapping, imgThreeLayers, "userns-copy",
		"/bin/sh", "-c", "cat /proc/self/uid_map; ls -ln /l3; echo written > /new; cat /new")
	if f := strings.Fields(out); len(f) < 3 || f[1] != "200000" || !ownedByRoot(out, "/l3") || !strings.HasSuffix(out, "written\n") {
		t.Fatalf("on containerd's chowned copy, the container's root does not own its image, or the write failed:\n%s", out)
	}
	if after, _ := committedUsage(e, testSn, namespace); after != committed+1 {
		t.Errorf("committed snapshots %d -> %d: containerd's chowned copy should be the one new snapshot", committed, after)
	}
	e.ctr("containers", "rm", "userns-copy")
}

// ownedByRoot reports whether the `ls -ln` line for path in out shows it
// owned by user and group 0.
func ownedByRoot(out, path string) bool {
	for line := range strings.SplitSeq(out, "\n") {
		if f := strings.Fields(line); len(f) >= 4 && f[len(f)-1] == path {
			return f[2] == "0" && f[3] == "0"
		}
	}
	return false
}

// committedUsage counts a snapshotter's committed snapshots in a containerd
// namespace and the bytes they hold, as ctr reports them.
func committedUsage(e *Env, sn, ns string) (n int, bytes int64) {
	e.t.Helper()
	ctr := func(args ...string) string {
		return e.run(append([]string{filepath.Join(toolsBin, "ctr"), "--address", e.Sock, "--namespace", ns}, args...)...)
	}
	kinds := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(ctr("snapshots", "--snapshotter", sn, "ls")), "\n")[1:] {
		if f := strings.Fields(line); len(f) >= 2 && f[len(f)-1] == "Committed" {
			kinds[f[0]] = true
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(ctr("snapshots", "--snapshotter", sn, "usage", "-b")), "\n")[1:] {
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

// TestUserNamespaceCRI does what the kubelet does for a hostUsers: false
// pod, with crictl: a pod sandbox and a container with user-namespace
// options on strata, CRI's snapshotter. The container's root owns its
// image, writes work, and strata holds no copy of the image.
func TestUserNamespaceCRI(t *testing.T) {
	e := newEnv(t, EnvOptions{CRI: true})
	if err := os.Chmod(e.Dir, 0o711); err != nil {
		t.Fatal(err)
	}
	// A pod network of its own: sysfs mounts only in a network namespace
	// the user namespace owns.
	cni := filepath.Join(e.Dir, "cni")
	if err := os.MkdirAll(cni, 0o755); err != nil {
		t.Fatal(err)
	}
	const bridge, network = "strata-cri0", "strata-cri-test"
	t.Cleanup(func() {
		exec.Command("ip", "link", "del", bridge).Run()
		os.RemoveAll("/var/lib/cni/networks/" + network)
	})
	// Before the Env's teardown stops containerd: pods go through CRI, so
	// their network namespaces go with them, whatever the test did.
	t.Cleanup(func() { e.try(e.crictlArgs("rmp", "--all", "--force")...) })
	if err := os.WriteFile(filepath.Join(cni, "10-test.conflist"), []byte(`{"cniVersion": "1.0.0", "name": "`+network+`", "plugins": [
  {"type": "bridge", "bridge": "`+bridge+`", "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.254.3.0/24"}]]}}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	e.crictl("pull", pauseImage)
	e.crictl("pull", imgThreeLayers)
	committed, bytes := committedUsage(e, "strata", "k8s.io")
	ids := []map[string]any{{"host_id": 200000, "container_id": 0, "length": 65536}}
	// The kubelet gives the sandbox and each container the pod's mapping.
	linux := map[string]any{"security_context": map[string]any{"namespace_options": map[string]any{
		"userns_options": map[string]any{"mode": 0, "uids": ids, "gids": ids}, // POD
	}}}
	pod := e.writeJSON("userns-pod.json", map[string]any{
		"metadata":      map[string]any{"name": "userns-pod", "namespace": "default", "uid": "userns-pod-uid", "attempt": 0},
		"log_directory": filepath.Join(e.Dir, "pods"),
		"linux":         linux,
	})
	ctr := e.writeJSON("userns-container.json", map[string]any{
		"metadata": map[string]any{"name": "main"},
		"image":    map[string]any{"image": imgThreeLayers},
		"command":  []string{"/bin/sh", "-c", "sleep 3600"},
		"log_path": "main.log",
		"linux":    linux,
	})
	podID := strings.TrimSpace(e.crictl("runp", pod))
	cid := strings.TrimSpace(e.crictl("create", podID, ctr, pod))
	e.crictl("start", cid)
	out := e.crictl("exec", "-s", cid, "/bin/sh", "-c", "cat /proc/self/uid_map; ls -ln /l3; echo written > /new; cat /new")
	if f := strings.Fields(out); len(f) < 3 || f[0] != "0" || f[1] != "200000" {
		t.Errorf("the container's uid_map is not the pod's mapping:\n%s", out)
	}
	if !ownedByRoot(out, "/l3") || !strings.HasSuffix(strings.TrimSpace(out), "written") {
		t.Errorf("inside, the image's files are not owned by the container's root, or the write failed:\n%s", out)
	}
	if after, afterBytes := committedUsage(e, "strata", "k8s.io"); after != committed || afterBytes != bytes {
		t.Errorf("a user-namespaced pod copied the image: committed snapshots %d -> %d, bytes %d -> %d", committed, after, bytes, afterBytes)
	}
	e.crictl("stop", "--timeout", "0", cid)
	e.crictl("rm", cid)
	e.crictl("stopp", podID)
	e.crictl("rmp", podID)
}
