package integration

import (
	"strings"
	"testing"
)

// TestCtr: ctr pulls from the registry into strata, runs a container on it,
// and ctr's snapshot commands show strata's snapshots.
func TestCtr(t *testing.T) {
	e := newEnv(t, EnvOptions{})
	e.ctr("images", "pull", "--plain-http", "--hosts-dir", hostsDir, "--snapshotter", "strata", imgThreeLayers)

	out := e.ctr("run", "--rm", "--snapshotter", "strata", "--net-host", imgThreeLayers, "c1",
		"/bin/sh", "-c", "cat /l2 /l3 /lower-file")
	if want := "layer 2\nlayer 3\nfrom layer 2\n"; out != want {
		t.Fatalf("container printed %q, want %q", out, want)
	}

	// The container's snapshot leaves strata at containerd's next GC.
	e.collectGarbage(imgThreeLayers)
	snaps := e.snapshots(namespace)
	committed := 0
	for _, kind := range snaps {
		if kind == "Committed" {
			committed++
		}
	}
	if committed != 3 {
		t.Fatalf("ctr snapshots ls shows %d committed snapshots, want the image's 3:\n%v", committed, snaps)
	}
	// The top layer's chain id names its snapshot; info, usage and tree
	// know it.
	var top string
	for key := range snaps {
		if strings.Contains(e.ctr("snapshots", "--snapshotter", "strata", "info", key), `"Parent"`) {
			if !strings.Contains(e.ctr("snapshots", "--snapshotter", "strata", "tree"), key) {
				t.Fatalf("tree does not show %s", key)
			}
			top = key
		}
	}
	if top == "" {
		t.Fatal("no snapshot with a parent in ctr snapshots info")
	}
	usage := e.ctr("snapshots", "--snapshotter", "strata", "usage")
	if !strings.Contains(usage, top) {
		t.Fatalf("ctr snapshots usage does not list %s:\n%s", top, usage)
	}
	// The layers are strata's: its root holds one directory per snapshot.
	if n := len(e.layerDirs()); n != 3 {
		t.Fatalf("strata holds %d snapshot directories, want 3: %v", n, e.layerDirs())
	}
}
