package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"

	"github.com/strata-snapshotter/strata/internal/testutil"
)

// smallFilesystem mounts a fresh ext4 of 32 MiB, with no blocks reserved for
// root, on a loop device, and returns where.
func smallFilesystem(t *testing.T, mkfsArgs ...string) string {
	t.Helper()
	testutil.RequiresRoot(t)
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "fs.img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(32 << 20)
	f.Close()
	args := append([]string{"-q", "-F", "-m", "0"}, mkfsArgs...)
	if out, err := exec.Command("mkfs.ext4", append(args, img)...).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount: %v\n%s", err, out)
		}
	})
	return mnt
}

// fill uses up the filesystem from inside the active snapshot "filler":
// one big file for blocks, or empty files for inodes.
func fill(t *testing.T, sn *snapshotter, inodes bool) {
	t.Helper()
	ms, err := sn.Prepare(context.Background(), "filler", "")
	if err != nil {
		t.Fatal(err)
	}
	dir := ms[0].Source
	if inodes {
		for i := 0; ; i++ {
			f, err := os.Create(filepath.Join(dir, fmt.Sprint(i)))
			if errors.Is(err, syscall.ENOSPC) {
				return
			} else if err != nil {
				t.Fatal(err)
			}
			f.Close()
		}
	}
	f, err := os.Create(filepath.Join(dir, "big"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 1<<20)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	// The last partial blocks, in small files.
	for i := 0; ; i++ {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprint("small-", i)), make([]byte, 1024), 0o644); err != nil {
			return
		}
	}
}

// TestFullDisk runs strata on a small filesystem and exhausts its blocks,
// then its inodes. Operations that cannot get space fail with
// ResourceExhausted and leave nothing half-made; the index stays readable;
// once space is freed, everything works again.
func TestFullDisk(t *testing.T) {
	for _, tc := range []struct {
		name   string
		inodes bool
		mkfs   []string
	}{
		{"blocks", false, nil},
		{"inodes", true, []string{"-N", "128"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := filepath.Join(smallFilesystem(t, tc.mkfs...), "strata")
			ctx := context.Background()
			s, err := New(ctx, root, WithSyncRemove)
			if err != nil {
				t.Fatal(err)
			}
			sn := s.(*snapshotter)
			defer sn.Close()
			commitLayer(t, sn, "base", "", map[string]string{"f": "base"})
			pending, err := sn.Prepare(ctx, "pending", "base")
			if err != nil {
				t.Fatal(err)
			}
			fill(t, sn, tc.inodes)
			// Writes fail as the kernel says.
			if err := os.WriteFile(filepath.Join(upperOf(pending), "more"), []byte("x"), 0o644); !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("write on a full disk: %v, want ENOSPC", err)
			}

			before := entries(t, root)
			exhausted := 0
			for i, op := range []func() error{
				func() error { _, err := sn.Prepare(ctx, "p1", "base"); return err },
				func() error { _, err := sn.View(ctx, "v1", "base"); return err },
				func() error { _, err := sn.Prepare(ctx, "p2", ""); return err },
				func() error { return sn.Commit(ctx, "pending-c", "pending") },
			} {
				err := op()
				if err == nil {
					continue // bbolt and ext4 found room after all
				}
				if !errdefs.IsResourceExhausted(err) {
					t.Fatalf("operation %d on a full disk: %v, want ResourceExhausted", i, err)
				}
				exhausted++
				t.Logf("operation %d: %v", i, err)
				if after := entries(t, root); after != before {
					t.Fatalf("a failed operation left something:\nbefore %s\nafter  %s", before, after)
				}
			}
			if exhausted == 0 {
				t.Fatal("no operation ran out of space: the disk was not full")
			}
			// The index is readable.
			if _, err := sn.Stat(ctx, "base"); err != nil {
				t.Fatalf("index after the disk filled: %v", err)
			}
			for _, k := range []string{"p1", "v1", "p2", "pending", "pending-c"} {
				sn.Remove(ctx, k) // those that succeeded
			}

			// Free the space; strata works again.
			if err := sn.Remove(ctx, "filler"); err != nil {
				t.Fatalf("removing the filler: %v", err)
			}
			ms, err := sn.Prepare(ctx, "after", "base")
			if err != nil {
				t.Fatalf("Prepare after space was freed: %v", err)
			}
			dir := t.TempDir()
			if err := mount.All(ms, dir); err != nil {
				t.Fatal(err)
			}
			werr := os.WriteFile(filepath.Join(dir, "new"), []byte("works"), 0o644)
			mount.UnmountAll(dir, 0)
			if werr != nil {
				t.Fatal(werr)
			}
			if err := sn.Commit(ctx, "after-c", "after"); err != nil {
				t.Fatalf("Commit after space was freed: %v", err)
			}
			sn.Close()
			if r, err := Fsck(ctx, root, FsckOptions{}); err != nil || len(r.Findings) != 0 {
				t.Fatalf("fsck: %v %q", err, r.Findings)
			}
		})
	}
}
