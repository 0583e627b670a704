package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-snapshotter/strata/admin"
	"github.com/strata-snapshotter/strata/internal/testutil"
)

// fsckCmd runs the binary's fsck on root and returns its output and exit code.
func fsckCmd(t *testing.T, root string, args ...string) (string, int) {
	t.Helper()
	out, err := exec.Command(binary, append([]string{"fsck", "--root", root}, args...)...).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

// storeWithLayer starts a daemon on a new root, commits one layer and a
// container on it, and stops the daemon.
func storeWithLayer(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	d := startDaemon(t, root)
	sn := d.snapshotter()
	writeLayer(t, sn, "base-active", "", "base", 100)
	writeLayer(t, sn, "ctr", "base", "", 10)
	d.stop()
	return root
}

// refusesEveryStart starts the daemon on root three times, as a service
// manager with Restart=always would: each must exit 1 saying want, and
// leave no index behind when there was none.
func refusesEveryStart(t *testing.T, root, want string) {
	t.Helper()
	_, statErr := os.Stat(filepath.Join(root, "metadata.db"))
	for i := range 3 {
		d := newDaemon(t, root)
		if code := d.wait(); code != 1 {
			t.Fatalf("start %d exited %d, want 1; output:\n%s", i+1, code, d.logs())
		}
		if !strings.Contains(d.logs(), want) {
			t.Fatalf("start %d does not say %q:\n%s", i+1, want, d.logs())
		}
		if _, err := os.Stat(filepath.Join(root, "metadata.db")); os.IsNotExist(statErr) && !os.IsNotExist(err) {
			t.Fatalf("refused start %d left an index behind (%v)", i+1, err)
		}
	}
}

// TestLostIndexRefusedUntilOperatorActs: the daemon with layers on disk and
// no index refuses on every start, saying what to do; fsck says the same;
// after fsck --discard-unindexed it starts an empty store.
func TestLostIndexRefusedUntilOperatorActs(t *testing.T) {
	testutil.RequiresRoot(t)
	root := storeWithLayer(t)
	before := onDisk(t, root)
	if err := os.Remove(filepath.Join(root, "metadata.db")); err != nil {
		t.Fatal(err)
	}
	refusesEveryStart(t, root, "--discard-unindexed")
	if out, code := fsckCmd(t, root, "--repair"); code != 1 || !strings.Contains(out, "--discard-unindexed") {
		t.Fatalf("fsck --repair without an index exited %d:\n%s", code, out)
	}
	refusesEveryStart(t, root, "--discard-unindexed")
	if after := onDisk(t, root); after != before {
		t.Fatalf("layers changed before the operator acted: %s -> %s", before, after)
	}
	if out, code := fsckCmd(t, root, "--discard-unindexed"); code != 0 {
		t.Fatalf("fsck --discard-unindexed exited %d:\n%s", code, out)
	}
	d := startDaemon(t, root)
	if got := onDisk(t, root); got != "" {
		t.Fatalf("after the discard the store holds %s", got)
	}
	d.stop()
}

// TestMissingLayerReported: a daemon whose recorded layer directory an
// operator deleted starts, keeps the record, and its log names the lost
// snapshot and what to do about it.
func TestMissingLayerReported(t *testing.T) {
	testutil.RequiresRoot(t)
	// One layer, under a key as containerd's metadata store names it.
	root := t.TempDir()
	d := startDaemon(t, root)
	writeLayer(t, d.snapshotter(), "default/2/extract", "", "default/1/sha256:abc", 100)
	d.stop()
	layers, err := filepath.Glob(filepath.Join(root, "layers", "??????"))
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers of the store: %v, %v", layers, err)
	}
	if err := os.RemoveAll(layers[0]); err != nil {
		t.Fatal(err)
	}
	d = startDaemon(t, root)
	d.stop()
	for _, want := range []string{"its contents are lost", layers[0], "ctr -n default snapshots --snapshotter strata rm sha256:abc", "pull again"} {
		if !strings.Contains(d.logs(), want) {
			t.Fatalf("start-up log does not say %q:\n%s", want, d.logs())
		}
	}
}

// TestDamagedIndexRefused: a truncated index (bbolt maps the file, so a
// read past its end faults) and a file that is not an index are refused on
// every start with exit code 1 and a message, not a crash, and are left as
// they were.
func TestDamagedIndexRefused(t *testing.T) {
	testutil.RequiresRoot(t)
	for name, damage := range map[string]func(string) error{
		"truncated to half":     func(p string) error { fi, _ := os.Stat(p); return os.Truncate(p, fi.Size()/2) },
		"truncated to one page": func(p string) error { return os.Truncate(p, 4096) },
		"not an index":          func(p string) error { return os.WriteFile(p, []byte(strings.Repeat("x", 8192)), 0o600) },
		"pages overwritten": func(p string) error {
			f, err := os.OpenFile(p, os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.WriteAt([]byte(strings.Repeat("\xab", 3*4096)), 2*4096)
			return err
		},
	} {
		t.Run(name, func(t *testing.T) {
			root := storeWithLayer(t)
			db := filepath.Join(root, "metadata.db")
			if err := damage(db); err != nil {
				t.Fatal(err)
			}
			content, err := os.ReadFile(db)
			if err != nil {
				t.Fatal(err)
			}
			before := onDisk(t, root)
			refusesEveryStart(t, root, "metadata database "+db)
			refusesEveryStart(t, root, "--discard-unindexed")
			if out, code := fsckCmd(t, root, "--repair"); code != 1 || !strings.Contains(out, db) {
				t.Fatalf("fsck --repair of a damaged index exited %d:\n%s", code, out)
			}
			if after, _ := os.ReadFile(db); string(after) != string(content) {
				t.Fatal("the damaged index was changed")
			}
			if after := onDisk(t, root); after != before {
				t.Fatalf("layers changed: %s -> %s", before, after)
			}
			// fsck changed nothing, so the next start refuses as before.
			refusesEveryStart(t, root, "--discard-unindexed")
		})
	}
}

// TestTwoDaemons: two daemons given only their own --root and --address,
// sockets side by side in one directory, serve at the same time, and the
// operator commands reach each one by its --address or its config file.
func TestTwoDaemons(t *testing.T) {
	testutil.RequiresRoot(t)
	dir := testutil.ShortDir(t)
	stores := map[string]string{"a": "layer-of-a", "b": "layer-of-b"}
	daemons := map[string]*daemon{}
	for name, layer := range stores {
		d := startDaemon(t, t.TempDir(), "--address", filepath.Join(dir, name+".sock"))
		writeLayer(t, d.snapshotter(), layer+"-active", "", layer, 10)
		daemons[name] = d
	}
	for name, layer := range stores {
		address := filepath.Join(dir, name+".sock")
		config := filepath.Join(dir, name+".toml")
		if err := os.WriteFile(config, []byte("address = \""+address+"\"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, how := range [][]string{{"--address", address}, {"--config", config}} {
			out, err := exec.Command(binary, append([]string{"ls", "--json"}, how...)...).CombinedOutput()
			if err != nil {
				t.Fatalf("ls %v: %v\n%s", how, err, out)
			}
			var snaps []admin.Snapshot
			if err := json.Unmarshal(out, &snaps); err != nil {
				t.Fatalf("ls %v: %v\n%s", how, err, out)
			}
			if len(snaps) != 1 || snaps[0].Key != layer {
				t.Errorf("ls %v lists %s, want only daemon %s's %q", how, out, name, layer)
			}
		}
		if _, err := admin.NewClient(daemons[name].admin).Snapshot(context.Background(), "", layer); err != nil {
			t.Errorf("daemon %s's admin socket: %v", name, err)
		}
		// Flags may follow the key, as the README writes it.
		out, err := exec.Command(binary, "inspect", layer, "--address", address, "--json").CombinedOutput()
		var snap admin.Snapshot
		if err != nil || json.Unmarshal(out, &snap) != nil || snap.Key != layer {
			t.Errorf("inspect %s --address %s --json: %v\n%s", layer, address, err, out)
		}
	}
	for _, d := range daemons {
		d.stop()
	}
}
