package integration

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestGarbageCollection: after every image and container is removed and
// containerd has collected garbage, strata holds no snapshot and, once its
// background deletions have finished, no directory but its skeleton.
func TestGarbageCollection(t *testing.T) {
	e := newEnv(t, EnvOptions{})
	e.nerdctl("pull", "--insecure-registry", imgSharedA)
	e.nerdctl("pull", "--insecure-registry", imgSharedB)
	e.nerdctl("run", "--name", "gc", "--net", "none", imgSharedA, "touch", "/written")
	if len(e.snapshots(namespace)) == 0 {
		t.Fatal("no snapshots before the removal")
	}
	e.nerdctl("rm", "gc")
	// --sync waits for containerd's garbage collection, which removes the
	// snapshots through strata and calls its Cleanup.
	e.ctr("images", "rm", "--sync", imgSharedA, imgSharedB)
	if snaps := e.snapshots(namespace); len(snaps) != 0 {
		t.Fatalf("snapshots left after GC: %v", snaps)
	}
	// A clean stop waits for background deletions.
	if err := e.Strata.stop(syscall.SIGTERM, 30*time.Second); err != nil {
		t.Fatalf("strata stop: %v", err)
	}
	for _, d := range layoutDirs {
		es, err := os.ReadDir(filepath.Join(e.StrataRoot, d))
		if err != nil {
			t.Fatal(err)
		}
		if len(es) != 0 {
			t.Errorf("%s/ still holds %d entries after GC", d, len(es))
		}
	}
}

// TestStrataRestart: strata is killed with SIGKILL while a container runs.
// Snapshot calls fail while it is down; once it is restarted containerd
// reconnects by itself, the container is still running, the snapshots are
// all there, and a new pull and run work.
func TestStrataRestart(t *testing.T) {
	e := newEnv(t, EnvOptions{})
	e.nerdctl("pull", "--insecure-registry", imgThreeLayers)
	e.nerdctl("run", "-d", "--name", "survivor", "--net", "none", imgThreeLayers, "sleep", "3600")
	before := e.snapshots(namespace)

	if err := e.Strata.stop(syscall.SIGKILL, 10*time.Second); err == nil {
		t.Fatal("strata exited cleanly from SIGKILL?")
	}
	if out, err := e.try(e.ctrArgs("snapshots", "--snapshotter", "strata", "ls")...); err == nil {
		t.Fatalf("snapshot call succeeded with strata down: %q", out)
	}

	e.StartStrata()
	// containerd's proxy plugin redials by itself, with gRPC's backoff.
	start := time.Now()
	var lastErr error
	for time.Since(start) < 30*time.Second {
		if _, lastErr = e.try(e.ctrArgs("snapshots", "--snapshotter", "strata", "ls")...); lastErr == nil {
			break
		}
		time.Sleep(100 * time.Millisecond) // polling containerd, a separate process
	}
	if lastErr != nil {
		t.Fatalf("containerd did not reconnect to strata within 30s: %v", lastErr)
	}
	t.Logf("containerd reconnected %v after strata's restart", time.Since(start).Round(10*time.Millisecond))

	if out := e.nerdctl("exec", "survivor", "cat", "/l3"); out != "layer 3\n" {
		t.Fatalf("running container after the restart: %q", out)
	}
	after := e.snapshots(namespace)
	for key, kind := range before {
		// nerdctl's short-lived views of the image come and go; the
		// image's layers and the container's writable layer must stay.
		if kind == "View" {
			continue
		}
		if after[key] != kind {
			t.Errorf("snapshot %s was %s, now %q", key, kind, after[key])
		}
	}
	e.nerdctl("pull", "--insecure-registry", imgSharedB)
	if out := e.nerdctl("run", "--rm", "--net", "none", imgSharedB, "cat", "/only-b"); strings.TrimSpace(out) != "b" {
		t.Fatalf("new run after the restart printed %q", out)
	}
}
