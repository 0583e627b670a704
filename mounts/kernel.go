package mounts

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay/overlayutils"
	"github.com/moby/sys/mountinfo"
)

// DefaultOptions returns the overlay options strata adds to those configured:
// "index=off" (so that a layer can be stacked under several uppers, and
// lower directories can be moved, without overlay's inode index objecting),
// and "userxattr" when the kernel requires it, as it does inside a user
// namespace. An option the configuration already sets is left to it: the
// kernel takes the last of repeated options.
func DefaultOptions(dir string, configured []string) ([]string, error) {
	options := append([]string(nil), configured...)
	if !HasOption(options, "index") {
		// /sys/module/overlay/parameters/index exists since Linux 4.13,
		// which introduced the index feature and the option.
		if _, err := os.Stat("/sys/module/overlay/parameters/index"); err == nil {
			options = append(options, "index=off")
		}
	}
	if !HasOption(options, "userxattr") {
		needed, err := overlayutils.NeedsUserXAttr(dir)
		if err != nil {
			return nil, fmt.Errorf("detect whether overlay needs userxattr: %w", err)
		}
		if needed {
			options = append(options, "userxattr")
		}
	}
	return options, nil
}

// Probe mounts a small overlay (two lower directories, an upper and a work
// directory) inside td, an empty directory the caller made and removes, with
// options, so that a kernel without overlayfs, a filesystem that cannot hold
// an upper directory, or an option the kernel rejects is found at start, not
// at a container's first mount.
func Probe(td string, options []string) error {
	for _, d := range []string{"l1", "l2", "upper", "work", "merged"} {
		if err := os.Mkdir(filepath.Join(td, d), 0o700); err != nil {
			return err
		}
	}
	m := mount.Mount{
		Type:   "overlay",
		Source: "overlay",
		Options: append([]string{
			"lowerdir=" + filepath.Join(td, "l1") + ":" + filepath.Join(td, "l2"),
			"upperdir=" + filepath.Join(td, "upper"),
			"workdir=" + filepath.Join(td, "work"),
		}, options...),
	}
	merged := filepath.Join(td, "merged")
	if err := m.Mount(merged); err != nil {
		return fmt.Errorf("overlay mount with options %q failed (kernel log may say more): %w", options, err)
	}
	if err := mount.UnmountAll(merged, 0); err != nil {
		return fmt.Errorf("unmount probe: %w", err)
	}
	return nil
}

// InUse lists the mount points that use dir: those at or below it, and the
// overlay mounts with a lower, upper or work directory at or below it (a
// running container's root on a layer). A directory in use must not be
// deleted: the deletion would reach into the mounted filesystem, or take
// the files from under a container.
func InUse(dir string) ([]string, error) { return usedBy(true, dir) }

// OverlaysOn lists the mount points of the overlays with a lower, upper or
// work directory at or below any of dirs: the running containers on a
// layer. It reads the mount table once.
func OverlaysOn(dirs ...string) ([]string, error) { return usedBy(false, dirs...) }

func usedBy(mountedIn bool, dirs ...string) ([]string, error) {
	infos, err := mountinfo.GetMounts(nil)
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	var points []string
	for _, i := range infos {
		for _, dir := range dirs {
			if mountedIn && within(i.Mountpoint, dir) || i.FSType == "overlay" && overlayUses(i.VFSOptions, dir) {
				points = append(points, i.Mountpoint)
				break
			}
		}
	}
	return points, nil
}

// overlayUses reports whether an overlay's options name dir, or a
// directory below it, as a layer. containerd may have given lower
// directories relative to their parent (mount.All shortens long option
// strings so): such a name counts when it is dir's own.
func overlayUses(options, dir string) bool {
	for _, o := range strings.Split(options, ",") {
		key, value, _ := strings.Cut(o, "=")
		switch key {
		case "lowerdir", "upperdir", "workdir", "lowerdir+", "datadir+":
		default:
			continue
		}
		for _, p := range strings.Split(unescapeOctal(value), ":") {
			if p != "" && (within(p, dir) || !filepath.IsAbs(p) && p == filepath.Base(dir)) {
				return true
			}
		}
	}
	return false
}

// unescapeOctal undoes the kernel's escapes in mount options (\040 for a
// space, \054 for a comma, \134 for a backslash).
func unescapeOctal(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func within(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, dir+"/")
}
