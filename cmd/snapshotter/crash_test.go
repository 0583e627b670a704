package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/continuity/sysx"
	"github.com/containerd/errdefs"

	"github.com/strata-snapshotter/strata/admin"
	"github.com/strata-snapshotter/strata/internal/testutil"
)

// crashModel is what the client was told: the commits and removals strata
// acknowledged, which must survive any crash, and the operations whose
// answer a crash cut off, which may or may not have happened.
type crashModel struct {
	mu        sync.Mutex
	committed map[string]map[string]string // name -> the layer's own files
	removed   map[string]bool
	leaves    []string // keys the client may remove
	actives   []string // prepared, not yet committed or removed
	seq       int
	ops       int // acknowledged operations
	staged    int // acknowledged commits of a held layer again
	// large makes the files written big enough to be shared (share_files).
	large bool
}

func (m *crashModel) name(prefix string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.seq++
	return fmt.Sprintf("%s-%d", prefix, m.seq)
}

func (m *crashModel) pick(rng *rand.Rand, from []string) string {
	if len(from) == 0 {
		return ""
	}
	return from[rng.IntN(len(from))]
}

// acceptable reports whether err is an answer the client may get: a
// documented kind (the model does not know the outcome of cut-off
// operations), or the connection failing because the daemon died.
func acceptable(err error) bool {
	return err == nil || errdefs.IsNotFound(err) || errdefs.IsAlreadyExists(err) || errdefs.IsFailedPrecondition(err) ||
		errdefs.IsUnavailable(err) || errdefs.IsCanceled(err) || strings.Contains(err.Error(), "connection")
}

// crashClient runs a random mix of operations until its snapshotter fails.
func crashClient(t *testing.T, sn snapshots.Snapshotter, m *crashModel, rng *rand.Rand, work string) {
	ctx := context.Background()
	fail := func(op string, err error) bool {
		if !acceptable(err) {
			t.Errorf("%s: unexpected error %v", op, err)
		}
		return err != nil
	}
	for i := 0; ; i++ {
		m.mu.Lock()
		parent := m.pick(rng, keys(m.committed))
		active := m.pick(rng, m.actives)
		leaf := m.pick(rng, m.leaves)
		m.mu.Unlock()
		if m.large && rng.IntN(2) == 0 {
			parent = "" // an image's bottom layer: the one shared
		}
		switch op := rng.IntN(11); {
		case op < 3: // Prepare
			key := m.name("active")
			if _, err := sn.Prepare(ctx, key, parent); fail("prepare", err) {
				if !errdefs.IsNotFound(err) {
					return
				}
				continue
			}
			m.mu.Lock()
			m.actives = append(m.actives, key)
			m.ops++
			m.mu.Unlock()
		case op < 6 && active != "": // write files through the mount, Commit
			ms, err := sn.Mounts(ctx, active)
			if fail("mounts", err) {
				if !errdefs.IsNotFound(err) {
					return
				}
				continue
			}
			name := m.name("layer")
			files := map[string]string{}
			for j := range 1 + rng.IntN(3) {
				n := 1 + rng.IntN(200)
				if m.large {
					n = 2000 + rng.IntN(4000) // 16 KiB and more: shared
				}
				files[fmt.Sprintf("%s-%d", name, j)] = strings.Repeat(name, n)
			}
			target := filepath.Join(work, "mnt")
			if err := mount.All(ms, target); err != nil {
				t.Errorf("mount %s: %v", active, err)
				return
			}
			for p, body := range files {
				if err := os.WriteFile(filepath.Join(target, p), []byte(body), 0o644); err != nil {
					t.Errorf("write: %v", err)
				}
			}
			if err := mount.UnmountAll(target, 0); err != nil {
				t.Errorf("unmount: %v", err)
				return
			}
			err = sn.Commit(ctx, name, active)
			m.mu.Lock()
			m.actives = without(m.actives, active)
			if err == nil {
				m.committed[name] = files
				m.leaves = append(m.leaves, name)
				m.ops++
			}
			m.mu.Unlock()
			if fail("commit", err) && !errdefs.IsNotFound(err) {
				return
			}
		case op < 7 && parent != "": // View
			key := m.name("view")
			if _, err := sn.View(ctx, key, parent); fail("view", err) {
				if !errdefs.IsNotFound(err) {
					return
				}
				continue
			}
			m.mu.Lock()
			m.leaves = append(m.leaves, key)
			m.ops++
			m.mu.Unlock()
		case op < 9 && leaf != "": // Remove
			err := sn.Remove(ctx, leaf)
			m.mu.Lock()
			switch {
			case err == nil:
				m.removed[leaf] = true
				delete(m.committed, leaf)
				m.ops++
			case !errdefs.IsNotFound(err) && !errdefs.IsFailedPrecondition(err):
				// Cut off by the crash: it may or may not have
				// happened, so nothing is claimed of it any more.
				delete(m.committed, leaf)
			}
			if err == nil || errdefs.IsNotFound(err) {
				m.leaves = without(m.leaves, leaf)
			}
			m.mu.Unlock()
			if fail("remove", err) && !errdefs.IsNotFound(err) && !errdefs.IsFailedPrecondition(err) {
				return
			}
		case op == 10 && parent != "": // the layer again, as parallel unpack of a held image does
			if !stageAgain(t, sn, m, parent) {
				return
			}
		case parent != "": // Update
			_, err := sn.Update(ctx, snapshots.Info{Name: parent, Labels: map[string]string{"touched": fmt.Sprint(i)}}, "labels.touched")
			if fail("update", err) && !errdefs.IsNotFound(err) {
				return
			}
		}
	}
}

// stageAgain commits the committed layer again under a new name, the way
// containerd's parallel unpack does when strata holds the layer: a
// parentless Prepare labelled with the layer's and its parent's refs, which
// strata stages on the layer's directory, then a Commit onto the parent.
// The new snapshot shares the directory. It reports whether the client may
// go on.
func stageAgain(t *testing.T, sn snapshots.Snapshotter, m *crashModel, layer string) bool {
	ctx := context.Background()
	info, err := sn.Stat(ctx, layer)
	if err != nil || info.Parent == "" {
		return err == nil || (acceptable(err) && errdefs.IsNotFound(err))
	}
	labels := map[string]string{snapshots.LabelSnapshotRef: layer, "containerd.io/snapshot/parent-chain-id": info.Parent}
	key := m.name("staged")
	ms, err := sn.Prepare(ctx, key, "", snapshots.WithLabels(labels))
	if err != nil {
		if !acceptable(err) {
			t.Errorf("stage %s: unexpected error %v", layer, err)
		}
		return errdefs.IsNotFound(err)
	}
	if len(ms) != 1 || !ms[0].ReadOnly() {
		t.Errorf("prepare of held layer %s: %+v, want one read-only (staged) mount", layer, ms)
		return false
	}
	name := m.name("again")
	err = sn.Commit(ctx, name, key, snapshots.WithParent(info.Parent), snapshots.WithLabels(labels))
	m.mu.Lock()
	if err == nil {
		m.committed[name] = m.committed[layer]
		m.leaves = append(m.leaves, name)
		m.ops++
		m.staged++
	}
	m.mu.Unlock()
	if err != nil && !acceptable(err) {
		t.Errorf("commit staged %s: unexpected error %v", layer, err)
	}
	return err == nil || errdefs.IsNotFound(err) || errdefs.IsFailedPrecondition(err)
}

// readLayerFile reads the file at p of a layer directory: its content, or
// for a stub (share_files) its object's under root.
func readLayerFile(root, p string) ([]byte, error) {
	redirect, err := sysx.LGetxattr(p, "trusted.overlay.redirect")
	if err != nil {
		return os.ReadFile(p)
	}
	if _, err := sysx.LGetxattr(p, "trusted.overlay.metacopy"); err != nil {
		return nil, fmt.Errorf("%s has a redirect but no metacopy: %w", p, err)
	}
	return os.ReadFile(filepath.Join(root, "objects", string(redirect)))
}

func keys(m map[string]map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func without(list []string, s string) []string {
	out := list[:0:0]
	for _, x := range list {
		if x != s {
			out = append(out, x)
		}
	}
	return out
}

// verify checks every acknowledged commit is there with byte-identical
// files in its own layer (a shared file's content read from the object its
// stub names), and every acknowledged removal stayed removed.
func verify(t *testing.T, d *daemon, m *crashModel) int {
	t.Helper()
	ctx := context.Background()
	all, err := admin.NewClient(d.admin).Snapshots(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	byKey := map[string]admin.Snapshot{}
	for _, s := range all {
		byKey[s.Key] = s
	}
	checked := 0
	m.mu.Lock()
	defer m.mu.Unlock()
	for name, files := range m.committed {
		s, ok := byKey[name]
		if !ok {
			t.Fatalf("acknowledged commit %s lost", name)
		}
		for p, want := range files {
			path := filepath.Join(s.GraphDriver.Data.UpperDir, p)
			got, err := readLayerFile(d.root, path)
			if err != nil || string(got) != want {
				t.Fatalf("acknowledged commit %s: file %s is %d bytes (%v), want %d bytes", name, p, len(got), err, len(want))
			}
			// One link, as written: a conversion a kill cut off, which
			// linked the file into the store, was finished at start.
			if fi, err := os.Lstat(path); err != nil || fi.Sys().(*syscall.Stat_t).Nlink != 1 {
				t.Fatalf("acknowledged commit %s: file %s has %v links (%v), want 1", name, p, fi.Sys().(*syscall.Stat_t).Nlink, err)
			}
		}
		checked++
	}
	for key := range m.removed {
		if _, ok := byKey[key]; ok {
			t.Fatalf("acknowledged removal of %s undone", key)
		}
		checked++
	}
	return checked
}

// TestCrashConsistency kills the daemon with SIGKILL at random moments, at
// least 100 times, while a client runs a random mix of Prepare, writes
// through the mount, Commit, View, Remove, Update, and the staged re-commit
// of a held layer (two snapshots sharing one directory). After every restart
// each acknowledged commit is there with byte-identical files and each
// acknowledged removal stayed removed; at the end, after Cleanup, fsck finds
// the store clean. Then again with share_files and files large enough to be
// shared, so that kills also fall in conversions: fsck also checks every
// stub and object's content.
func TestCrashConsistency(t *testing.T) {
	testutil.RequiresRoot(t)
	if testing.Short() {
		t.Skip("slow: skipped by -short (make unit)")
	}
	t.Run("defaults", func(t *testing.T) { crashConsistency(t, false) })
	t.Run("share_files", func(t *testing.T) { crashConsistency(t, true) })
}

func crashConsistency(t *testing.T, share bool) {
	const kills = 100
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	root := t.TempDir()
	work := t.TempDir()
	if err := os.Mkdir(filepath.Join(work, "mnt"), 0o755); err != nil {
		t.Fatal(err)
	}
	m := &crashModel{committed: map[string]map[string]string{}, removed: map[string]bool{}, large: share}
	var args []string
	if share {
		config := filepath.Join(work, "strata.toml")
		if err := os.WriteFile(config, []byte("share_files = true\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		args = []string{"--config", config}
	}
	checks, resumed := 0, 0
	for k := 0; k < kills; k++ {
		d := startDaemon(t, root, args...)
		resumed += strings.Count(d.logs(), "finishing the conversion")
		checks += verify(t, d, m)
		sn := d.snapshotter()
		done := make(chan struct{})
		clientRNG := rand.New(rand.NewPCG(rng.Uint64(), uint64(k)))
		go func() {
			defer close(done)
			crashClient(t, sn, m, clientRNG, work)
		}()
		// A random moment: often mid-operation, sometimes before the
		// client's first call.
		time.Sleep(time.Duration(rng.IntN(60)) * time.Millisecond)
		d.cmd.Process.Signal(syscall.SIGKILL)
		d.wait()
		<-done
		mount.UnmountAll(filepath.Join(work, "mnt"), 0) // in case the kill came mid-write
		if t.Failed() {
			t.FailNow()
		}
	}
	d := startDaemon(t, root, args...)
	checks += verify(t, d, m)
	if err := d.snapshotter().(snapshots.Cleaner).Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	d.stop()
	out, err := exec.Command(binary, "fsck", "--root", root, "--verify-objects").CombinedOutput()
	if err != nil {
		t.Fatalf("fsck after %d kills: %v\n%s", kills, err, out)
	}
	t.Logf("%d SIGKILLs survived; %d operations acknowledged (%d staged re-commits of a held layer); %d acknowledged results verified after restarts; fsck: %s",
		kills, m.ops, m.staged, checks, strings.TrimSpace(string(out)))
	if m.staged == 0 {
		t.Fatal("no staged re-commit of a held layer was acknowledged: the shared-directory path went untested")
	}
	if objs, _ := filepath.Glob(filepath.Join(root, "objects", "sha256", "*", "*")); share {
		if len(objs) == 0 {
			t.Fatal("share_files: no object in the store: the conversion went untested")
		}
		t.Logf("share_files: %d objects in the store; %d conversions cut off by a kill finished at start", len(objs), resumed)
	}
}
