package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"

	"github.com/strata-snapshotter/strata/accounting"
	"github.com/strata-snapshotter/strata/admin"
	"github.com/strata-snapshotter/strata/internal/testutil"
)

// writeLayer prepares key on parent, writes one file of n bytes through the
// mount, and commits it as name unless name is "".
func writeLayer(t *testing.T, sn snapshots.Snapshotter, key, parent, name string, n int) {
	t.Helper()
	testutil.WriteLayer(t, sn, key, parent, name, map[string]string{"file-" + strings.ReplaceAll(key, "/", "_"): strings.Repeat("x", n)})
}

// subcommand runs the binary's subcommand against d's admin socket.
func (d *daemon) subcommand(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	return runBinary(t, append(args[:1:1], append([]string{"--admin-address", d.admin}, args[1:]...)...)...)
}

// TestOperatorCommands builds a store of a 1000-byte base under two images
// (10 and 20 bytes) and a container (5 bytes) on the first, then checks what
// ls, tree, inspect and du say about it.
func TestOperatorCommands(t *testing.T) {
	testutil.RequiresRoot(t)
	d := startDaemon(t, t.TempDir())
	sn := d.snapshotter()
	writeLayer(t, sn, "base-active", "", "base", 1000)
	writeLayer(t, sn, "img-a-active", "base", "img-a", 10)
	writeLayer(t, sn, "img-b-active", "base", "img-b", 20)
	writeLayer(t, sn, "ctr", "img-a", "", 5)

	out, _, code := d.subcommand(t, "du", "--json")
	if code != 0 {
		t.Fatalf("du exited %d", code)
	}
	var r accounting.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("du --json: %v\n%s", err, out)
	}
	want := accounting.Report{
		LogicalBytes: 1015 + 1020, PhysicalBytes: 1035, SavedBytes: 1000, PhysicalInodes: r.PhysicalInodes,
		Leaves: []accounting.Leaf{
			{Key: "ctr", Kind: "active", TotalBytes: 1015, UniqueBytes: 15, SharedBytes: 1000, Layers: 3},
			{Key: "img-b", Kind: "committed", TotalBytes: 1020, UniqueBytes: 20, SharedBytes: 1000, Layers: 2},
		},
	}
	if got := jsonOf(r); got != jsonOf(want) {
		t.Fatalf("du --json:\n got %s\nwant %s", got, jsonOf(want))
	}
	for _, key := range []string{"logical_bytes", "physical_bytes", "saved_bytes", "leaves", "unique_bytes", "shared_bytes", "total_bytes"} {
		if !strings.Contains(out, `"`+key+`"`) {
			t.Errorf("du --json lacks %q", key)
		}
	}
	table, _, _ := d.subcommand(t, "du")
	if !strings.Contains(table, "saved 1000.0 B by sharing") || !strings.Contains(table, "ctr") {
		t.Errorf("du table:\n%s", table)
	}

	ls, _, _ := d.subcommand(t, "ls")
	for _, want := range []string{"KEY", "base", "committed", "img-a", "ctr", "active", "1000.0 B"} {
		if !strings.Contains(ls, want) {
			t.Errorf("ls lacks %q:\n%s", want, ls)
		}
	}

	tree, _, _ := d.subcommand(t, "tree")
	for _, want := range []string{"base (committed, 1000.0 B)\n", "├── img-a (committed, 10.0 B)\n", "│   └── ctr (active, 5.0 B) *\n", "└── img-b (committed, 20.0 B) *\n"} {
		if !strings.Contains(tree, want) {
			t.Errorf("tree lacks %q:\n%s", want, tree)
		}
	}

	// inspect of a container in a user namespace shows its mapping.
	userns := map[string]string{snapshots.LabelSnapshotUIDMapping: "0:200000:65536", snapshots.LabelSnapshotGIDMapping: "0:300000:65536"}
	if _, err := sn.Prepare(context.Background(), "userns", "img-b", snapshots.WithLabels(userns)); err != nil {
		t.Fatal(err)
	}
	out, _, _ = d.subcommand(t, "inspect", "--json", "userns")
	var us admin.Snapshot
	if err := json.Unmarshal([]byte(out), &us); err != nil {
		t.Fatalf("inspect --json: %v\n%s", err, out)
	}
	if want := (admin.IDMapping{UIDs: "0:200000:65536", GIDs: "0:300000:65536"}); us.IDMapping == nil || *us.IDMapping != want {
		t.Errorf("inspect --json userns: mapping %+v, want %+v", us.IDMapping, want)
	}
	if human, _, _ := d.subcommand(t, "inspect", "userns"); !strings.Contains(human, "IDMapping:  uids 0:200000:65536 gids 0:300000:65536\n") {
		t.Errorf("inspect userns shows no mapping:\n%s", human)
	}

	// inspect: the lower directories in the order the overlay mount uses.
	out, _, _ = d.subcommand(t, "inspect", "--json", "ctr")
	var s admin.Snapshot
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("inspect --json: %v\n%s", err, out)
	}
	var lowerdir string
	for _, o := range s.Mounts[0].Options {
		if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
			lowerdir = v
		}
	}
	if lowerdir == "" || s.GraphDriver.Data.LowerDir != lowerdir || len(strings.Split(lowerdir, ":")) != 2 {
		t.Fatalf("inspect LowerDir %q, mount's lowerdir %q", s.GraphDriver.Data.LowerDir, lowerdir)
	}
	if _, err := os.Stat(filepath.Join(strings.Split(lowerdir, ":")[0], "file-img-a-active")); err != nil {
		t.Errorf("first LowerDir is not img-a's layer: %v", err)
	}
	if s.Usage.Bytes != 5 || s.GraphDriver.Data.WorkDir == "" || s.GraphDriver.Data.UpperDir == "" {
		t.Errorf("inspect ctr: %+v", s)
	}
	human, _, _ := d.subcommand(t, "inspect", "ctr")
	for _, want := range []string{"LowerDir:", "UpperDir:", "WorkDir:", "Mount:", "type=overlay", "IDMapping:  -\n"} {
		if !strings.Contains(human, want) {
			t.Errorf("inspect lacks %q:\n%s", want, human)
		}
	}

	t.Logf("du:\n%s\nls:\n%s\ntree:\n%s\ninspect ctr:\n%s", table, ls, tree, human)
	if _, stderr, code := d.subcommand(t, "inspect", "nope"); code != 1 || !strings.Contains(stderr, "no such snapshot") {
		t.Errorf("inspect of an unknown key: exit %d, %q", code, stderr)
	}
	d.stop()
	if _, stderr, code := d.subcommand(t, "ls"); code != 1 || !strings.Contains(stderr, d.admin) {
		t.Errorf("ls with the daemon down: exit %d, %q; want 1 and the socket's path", code, stderr)
	}
}

func jsonOf(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}
