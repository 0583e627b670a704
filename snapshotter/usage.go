package snapshotter

import (
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"syscall"

	"github.com/containerd/containerd/v2/core/snapshots"
)

// diskUsage measures the blocks and inodes of the tree at dir, counting each
// hard-linked inode once, in the units of continuity's fs.DiskUsage (st_blocks
// of 512 bytes). Unlike fs.DiskUsage, a file that vanishes while the tree is
// walked is skipped rather than failing the walk: an active snapshot's
// directory is a running container's writable layer and changes under us.
func diskUsage(ctx context.Context, dir string) (snapshots.Usage, error) {
	type inode struct{ dev, ino uint64 }
	seen := map[inode]struct{}{}
	var size int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && path != dir {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return nil
		}
		key := inode{dev: uint64(st.Dev), ino: st.Ino}
		if _, ok := seen[key]; !ok {
			seen[key] = struct{}{}
			size += st.Blocks * 512
		}
		return nil
	})
	if err != nil {
		return snapshots.Usage{}, err
	}
	return snapshots.Usage{Inodes: int64(len(seen)), Size: size}, nil
}
