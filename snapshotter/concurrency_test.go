package snapshotter

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
)

// TestConcurrentClients: 64 clients run full lifecycles at once on shared
// parents, re-using each other's keys (so Prepares collide and Removes race
// Commits on the same parent), and some commit a layer again through the
// staged path, sharing its directory. Every error is one of the documented kinds,
// nothing deadlocks (the test finishes), and at the end no directory is left
// that no snapshot owns. Run under -race by make test.
func TestConcurrentClients(t *testing.T) {
	sn, root := newTestSnapshotter(t)
	ctx := context.Background()
	const (
		clients = 64
		rounds  = 25
		parents = 4
	)
	for p := range parents {
		commitLayer(t, sn, fmt.Sprintf("parent-%d", p), "", map[string]string{"p": fmt.Sprint(p)})
		// A layer on it that no client removes, to be staged again.
		commitLayer(t, sn, fmt.Sprintf("base-%d", p), fmt.Sprintf("parent-%d", p), map[string]string{"b": fmt.Sprint(p)})
	}
	documented := func(err error) bool {
		return err == nil || errdefs.IsNotFound(err) || errdefs.IsAlreadyExists(err) ||
			errdefs.IsFailedPrecondition(err) || errdefs.IsInvalidArgument(err)
	}
	var (
		wg     sync.WaitGroup
		ops    atomic.Int64
		errs   atomic.Int64
		staged atomic.Int64
		failed sync.Once
	)
	fail := func(op string, err error) {
		errs.Add(1)
		if !documented(err) {
			failed.Do(func() { t.Errorf("%s: undocumented error %v", op, err) })
		}
	}
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(c), 1))
			for r := range rounds {
				ops.Add(1)
				// Keys are shared by pairs of clients, so they collide.
				key := fmt.Sprintf("active-%d-%d", c/2, r%5)
				name := fmt.Sprintf("layer-%d-%d", c/2, r%5)
				parent := fmt.Sprintf("parent-%d", rng.IntN(parents))
				if rng.IntN(4) == 0 {
					parent = name // stacking on a layer another client may be removing
				}
				if rng.IntN(6) == 0 {
					// The layer again, as parallel unpack of a held
					// image does: staged on its directory, while other
					// clients remove it or stack on it.
					again := fmt.Sprintf("again-%d-%d", c/2, r%5)
					layer := name // which another client may be removing
					if rng.IntN(2) == 0 {
						layer = fmt.Sprintf("base-%d", rng.IntN(parents))
					}
					if ok, err := stageAgain(ctx, sn, layer, key+"-staged", again); err != nil {
						fail("stage", err)
					} else if ok {
						staged.Add(1)
					}
					for _, k := range []string{key + "-staged", again} {
						if err := sn.Remove(ctx, k); err != nil {
							fail("remove", err)
						}
					}
					continue
				}
				ms, err := sn.Prepare(ctx, key, parent)
				if err != nil {
					fail("prepare", err)
					continue
				}
				if err := os.WriteFile(filepath.Join(upperOf(ms), "f"), []byte(key), 0o644); err != nil && !os.IsNotExist(err) {
					t.Errorf("write: %v", err)
				}
				switch rng.IntN(3) {
				case 0:
					if err := sn.Commit(ctx, name, key); err != nil {
						fail("commit", err)
					}
				case 1:
					if _, err := sn.View(ctx, key+"-view", parent); err != nil {
						fail("view", err)
					}
				}
				for _, k := range []string{key, key + "-view", name} {
					if err := sn.Remove(ctx, k); err != nil {
						fail("remove", err)
					}
				}
				if _, err := sn.Usage(ctx, parent); err != nil {
					fail("usage", err)
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d clients, %d lifecycles (%d staged re-commits), %d documented errors", clients, ops.Load(), staged.Load(), errs.Load())
	if staged.Load() == 0 {
		t.Error("no staged re-commit succeeded: the shared-directory path went untested")
	}

	// Remove whatever is left, children before parents; then nothing may
	// remain that the index does not own.
	for {
		details, err := sn.Details(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(details) == 0 {
			break
		}
		for _, d := range details {
			if err := sn.Remove(ctx, d.Name); err != nil && !errdefs.IsFailedPrecondition(err) {
				t.Fatal(err)
			}
		}
	}
	if err := sn.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := Fsck(ctx, root, FsckOptions{})
	if err != nil || len(r.Findings) != 0 {
		t.Fatalf("after the clients: %v %q", err, r.Findings)
	}
}

// upperOf is where a mount writes: its upperdir, or its bind source.
func upperOf(ms []mount.Mount) string {
	for _, o := range ms[0].Options {
		if len(o) > 9 && o[:9] == "upperdir=" {
			return o[9:]
		}
	}
	return ms[0].Source
}

// stageAgain commits layer again as name, as containerd's parallel unpack
// does when strata holds it: a parentless Prepare labelled with the layer's
// and its parent's refs (keys, here), committed onto the parent.
// It reports whether it committed.
func stageAgain(ctx context.Context, sn snapshots.Snapshotter, layer, key, name string) (bool, error) {
	info, err := sn.Stat(ctx, layer)
	if err != nil || info.Parent == "" {
		return false, err
	}
	labels := map[string]string{snapshots.LabelSnapshotRef: layer, labelParentChainID: info.Parent}
	if _, err := sn.Prepare(ctx, key, "", snapshots.WithLabels(labels)); err != nil {
		return false, err
	}
	err = sn.Commit(ctx, name, key, snapshots.WithParent(info.Parent), snapshots.WithLabels(labels))
	return err == nil, err
}
