// Package mounts decides what the kernel is asked to mount for a snapshot,
// and checks, before a snapshot is handed out, that the kernel will accept it.
package mounts

import (
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
)

// MaxLowerDirs is the most lower directories one overlay mount may stack:
// OVL_MAX_STACK in the kernel's fs/overlayfs (the upper directory does not
// count against it).
const MaxLowerDirs = 500

// maxData is the most bytes of option data mount(2) takes: the kernel copies
// one page, and the last byte must be the terminating NUL.
const maxData = 4096 - 1

// Request describes the snapshot to mount.
type Request struct {
	// Writable is true for an active snapshot, false for a view.
	Writable bool
	// Dir is the directory holding the snapshot's own files: overlay's
	// upperdir for an active snapshot.
	Dir string
	// WorkDir is overlay's workdir for an active snapshot; on the same
	// filesystem as Dir.
	WorkDir string
	// Parents are the directories of the committed layers below, nearest
	// first. Keeping them short (all in one directory, with short names)
	// is what lets a deep chain fit in mount(2)'s page; see mountedSize.
	Parents []string
	// Options are appended to overlay mounts (never to bind mounts).
	Options []string
	// Mapping are containerd's uidmap=/gidmap= options, on every mount: a
	// user-namespaced container's snapshot, which containerd mounts with
	// idmapped mounts of its directories.
	Mapping []string
	// EmptyLower, when set, makes an active snapshot without parents an
	// overlay on this empty directory instead of a bind mount. containerd's
	// layer applier writes whiteouts as overlay's character devices only
	// into an overlay mount's upperdir; for a bind mount it writes none. A
	// layer unpacked without its parent (containerd's parallel unpack,
	// which commits it onto the parent later) needs its whiteouts kept.
	EmptyLower string
	// DataDir, when set, is the object store (share_files): a data-only
	// lower layer below Parents, from which the kernel reads the content
	// of the stubs in the last of them, and no other (metacopy=off). Every
	// mount of such a chain is an overlay, a view of one layer included.
	DataDir string
}

// For returns the mounts for a snapshot:
//   - no parents: a bind mount of its own directory, read-write for an active
//     snapshot and read-only for a view; or, for an active snapshot with
//     EmptyLower set, an overlay on that empty directory;
//   - a view of exactly one committed layer: a read-only bind of that layer;
//   - otherwise an overlay of the parents, with upperdir and workdir for an
//     active snapshot.
func For(r Request) []mount.Mount {
	if len(r.Parents) == 0 && !(r.Writable && r.EmptyLower != "") {
		return []mount.Mount{bind(r.Dir, r.Writable, r.Mapping)}
	}
	if !r.Writable && len(r.Parents) == 1 && r.DataDir == "" {
		return []mount.Mount{bind(r.Parents[0], false, r.Mapping)}
	}
	lowerdir := strings.Join(r.lowers(), ":")
	if r.DataDir != "" {
		lowerdir += "::" + r.DataDir
	}
	options := slices.Clone(r.Mapping)
	if r.Writable {
		options = append(options, "workdir="+r.WorkDir, "upperdir="+r.Dir)
	}
	options = append(options, "lowerdir="+lowerdir)
	options = append(options, r.Options...)
	if r.DataDir != "" {
		// Last, over the options and the module's default: with
		// metacopy the kernel would follow a stub in any lower layer
		// into the store, and containerd's applier writes a layer's
		// trusted.overlay xattrs as the image has them. Without it, only
		// the last lower layer's stubs are followed, which strata wrote.
		options = append(options, "metacopy=off")
	}

	return []mount.Mount{{Type: "overlay", Source: "overlay", Options: options}}
}

// lowers are an overlay mount's lower directories.
func (r Request) lowers() []string {
	if len(r.Parents) == 0 {
		return []string{r.EmptyLower}
	}
	return r.Parents
}

func bind(dir string, writable bool, mapping []string) mount.Mount {
	mode := "ro"
	if writable {
		mode = "rw"
	}
	return mount.Mount{Type: "bind", Source: dir, Options: append(slices.Clone(mapping), mode, "rbind")}
}

// Check returns a FailedPrecondition error when the kernel would refuse the
// mounts For(r) returns: more lower directories than overlayfs stacks, or
// more option data than mount(2) takes.
func Check(r Request) error {
	m := For(r)[0]
	if m.Type != "overlay" {
		return nil
	}
	lowers := r.lowers()
	if r.DataDir != "" {
		// The store is one more lower directory, and containerd cannot
		// shorten a lowerdir= with a data-only layer (see dataSize).
		if n := len(lowers) + 1; n > MaxLowerDirs {
			return fmt.Errorf("a chain of %d layers with shared files (share_files) needs %d lower directories, more than overlayfs's limit of %d (OVL_MAX_STACK): %w",
				len(lowers), n, MaxLowerDirs, errdefs.ErrFailedPrecondition)
		}
		if n := dataSize(m.Options, nil); n > maxData {
			return fmt.Errorf("a chain of %d layers with shared files (share_files) needs %d bytes of overlay mount options, more than the %d mount(2) accepts (containerd cannot shorten a lowerdir= with the object store in it): %w",
				len(lowers), n, maxData, errdefs.ErrFailedPrecondition)
		}
		return nil
	}
	if n := len(lowers); n > MaxLowerDirs {
		return fmt.Errorf("a chain of %d layers exceeds overlayfs's limit of %d lower directories (OVL_MAX_STACK): %w",
			n, MaxLowerDirs, errdefs.ErrFailedPrecondition)
	}
	if n := dataSize(m.Options, lowers); n > maxData {
		return fmt.Errorf("overlay mount options would take %d bytes, more than the %d mount(2) accepts; use a shorter root directory: %w",
			n, maxData, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// mountedSize is the length of the option string containerd's mount.All passes
// to mount(2) for m.
func mountedSize(m mount.Mount) int {
	lowers := lowerDirs(m.Options)
	if m.Type != "overlay" || slices.Contains(lowers, "") {
		// containerd compacts no lowerdir= with a data-only layer:
		// splitting it at ':' leaves an empty name.
		return dataSize(m.Options, nil)
	}
	return dataSize(m.Options, lowers)
}

// dataSize is the length of options as mount(2) receives them. When they
// reach a page less 512 bytes, containerd's mount.All
// (core/mount/mount_linux.go) changes into the lower directories' common
// parent and passes the lower directories relative to it; strata's layers all
// live in one directory, so each then costs only its name and a separator.
func dataSize(options, lowers []string) int {
	const compactAt = 4096 - 512
	size := 0
	for _, o := range options {
		size += len(o)
	}
	if size >= compactAt && len(lowers) > 1 {
		common := path.Dir(longestCommonPrefix(lowers)) + "/"
		size -= len(common) * len(lowers)
	}
	return size + len(options) - 1 // the commas between options
}

func lowerDirs(options []string) []string {
	for _, o := range options {
		if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
			return strings.Split(v, ":")
		}
	}
	return nil
}

func longestCommonPrefix(strs []string) string {
	prefix := strs[0]
	for _, s := range strs[1:] {
		n := 0
		for n < len(prefix) && n < len(s) && prefix[n] == s[n] {
			n++
		}
		prefix = prefix[:n]
	}
	return prefix
}

// HasOption reports whether options holds key, bare ("userxattr") or as
// key=value ("index=on").
func HasOption(options []string, key string) bool {
	for _, o := range options {
		if k, _, _ := strings.Cut(o, "="); k == key {
			return true
		}
	}
	return false
}
