package snapshotter

import (
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"syscall"

	"github.com/strata-snapshotter/strata/metadata"
)

// diskUsage measures the tree at dir, counting each hard-linked inode once:
// blocks in the units of continuity's fs.DiskUsage (st_blocks of 512 bytes),
// inodes, and the apparent bytes of everything but directories. Unlike
// fs.DiskUsage, a file that vanishes while the tree is walked is skipped
// rather than failing the walk: an active snapshot's directory is a running
// container's writable layer and changes under us.
func diskUsage(ctx context.Context, dir string) (metadata.Usage, error) {
	type inode struct{ dev, ino uint64 }
	seen := map[inode]struct{}{}
	var size, bytes int64
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
			if !d.IsDir() {
				bytes += st.Size
			}
		}
		return nil
	})
	if err != nil {
		return metadata.Usage{}, err
	}
	return metadata.Usage{Inodes: int64(len(seen)), Size: size, Bytes: bytes}, nil
}
