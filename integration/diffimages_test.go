package integration

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// The differential tests' images: layers written header by header, so that
// every attribute a snapshotter has to carry from a tar into a tree is set
// on purpose. They are pushed to the test registry once, by the first
// differential test that needs them.

// diffImage is an image the differential tests pull into both snapshotters.
type diffImage struct {
	name string // short, for subtests and messages
	ref  string
}

// diffImages pushes the differential tests' images, once.
var diffImages = sync.OnceValues(pushDiffImages)

// diffMtime is the mtime of every entry that does not set its own; its
// nanoseconds survive, as a PAX header carries them.
var diffMtime = time.Date(2001, 2, 3, 4, 5, 6, 123456789, time.UTC)

// entry is one header of a hand-made layer and, for a regular file, its body.
type entry struct {
	hdr  tar.Header
	body []byte
}

func dirE(name string, mode int64) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode}}
}

func fileE(name, body string, mode int64) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(body))}, body: []byte(body)}
}

// linkE is a hard link to target, an entry earlier in the same layer. Its
// header repeats the target's metadata, as tar writes it (containerd
// applies a link's header to the shared inode).
func linkE(name string, target entry) entry {
	h := target.hdr
	return entry{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: h.Name, Mode: h.Mode, Uid: h.Uid, Gid: h.Gid, ModTime: h.ModTime}}
}

func symlinkE(name, target string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}

func nodeE(name string, typ byte, mode, major, minor int64) entry {
	return entry{hdr: tar.Header{Typeflag: typ, Name: name, Mode: mode, Devmajor: major, Devminor: minor}}
}

// whiteoutE deletes name (a path of a lower layer) in the layer that holds it.
func whiteoutE(name string) entry {
	dir, base := "", name
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		dir, base = name[:i+1], name[i+1:]
	}
	return fileE(dir+".wh."+base, "", 0o644)
}

// opaqueE hides, in the layer that holds it, everything lower layers have in
// dir.
func opaqueE(dir string) entry { return fileE(dir+"/.wh..wh..opq", "", 0o644) }

func (e entry) owner(uid, gid int) entry { e.hdr.Uid, e.hdr.Gid = uid, gid; return e }

func (e entry) mtime(t time.Time) entry { e.hdr.ModTime = t; return e }

func (e entry) xattr(name, value string) entry {
	if e.hdr.PAXRecords == nil {
		e.hdr.PAXRecords = map[string]string{}
	}
	e.hdr.PAXRecords["SCHILY.xattr."+name] = value
	return e
}

// tarLayer writes entries, in order, as an uncompressed tar layer (PAX, so
// nanosecond mtimes, large ids and xattrs are kept).
func tarLayer(entries ...entry) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if h.ModTime.IsZero() {
			h.ModTime = diffMtime
		}
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			return nil, fmt.Errorf("%s: %w", h.Name, err)
		}
		if _, err := tw.Write(e.body); err != nil {
			return nil, fmt.Errorf("%s: %w", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
}

// diffApplets are the busybox applets the change script uses.
var diffApplets = []string{"sh", "cat", "echo", "rm", "mkdir", "chmod", "chown", "ln", "mknod", "mkfifo", "touch", "mv", "true", "truncate"}

// busyboxEntries is Debian's static busybox and its applets under /bin.
func busyboxEntries() ([]entry, error) {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return nil, fmt.Errorf("static busybox (Debian's busybox-static): %w", err)
	}
	es := []entry{dirE("bin", 0o755), fileE("bin/busybox", string(bb), 0o755)}
	for _, a := range diffApplets {
		es = append(es, symlinkE("bin/"+a, "busybox"))
	}
	return es, nil
}

// capNetBindService is a security.capability value (VFS_CAP_REVISION_2)
// granting CAP_NET_BIND_SERVICE, permitted and effective.
func capNetBindService() string {
	b := make([]byte, 20)
	binary.LittleEndian.PutUint32(b[0:], 0x02000000|1) // revision 2, effective
	binary.LittleEndian.PutUint32(b[4:], 1<<10)        // permitted: bit 10
	return string(b)
}

// trickyEntries is everything a layer can ask of a tree, under dir: hard
// links, xattrs (a trusted.* one, which containerd refuses to apply from an
// archive, and a 3000-byte one), device nodes and a fifo, special mode bits,
// ids, a large file of zeros, a 255-byte name, odd names, an 800-byte path,
// symlinks, mtimes, an opaque directory, whiteouts of paths that do not
// exist, and a path deleted and recreated. Files over share_files' threshold
// carry the attributes a stub must keep: special bits, ids, xattrs, a
// hard-link group.
func trickyEntries(dir string) []entry {
	old := time.Date(1985, 10, 26, 1, 21, 0, 0, time.UTC)
	zeros := strings.Repeat("\x00", 4<<20) + "end\n"
	hl := fileE(dir+"/hl-a", "linked\n", 0o640).owner(1000, 1000)
	bigHL := fileE(dir+"/big-hl-a", bigBody("hard-linked"), 0o640).owner(1000, 1000)
	return slices.Concat([]entry{
		dirE(dir, 0o755),
		fileE(dir+"/plain", "plain\n", 0o644),
		fileE(dir+"/empty", "", 0o644),
		fileE(dir+"/old", "old\n", 0o644).mtime(old),
		hl,
		linkE(dir+"/hl-b", hl),
		dirE(dir+"/sub", 0o750).owner(1000, 1000),
		linkE(dir+"/sub/hl-c", hl),
		fileE(dir+"/xattrs", "xattrs\n", 0o755).
			xattr("user.comment", "hello").xattr("user.empty", "").
			xattr("security.capability", capNetBindService()).xattr("trusted.strata-test", "t"),
		dirE(dir+"/xattr-dir", 0o755).xattr("user.dir", "yes"),
		nodeE(dir+"/chr", tar.TypeChar, 0o666, 1, 3),
		nodeE(dir+"/blk", tar.TypeBlock, 0o660, 7, 0).owner(0, 6),
		nodeE(dir+"/fifo", tar.TypeFifo, 0o600, 0, 0),
		fileE(dir+"/setuid", "u\n", 0o4755),
		fileE(dir+"/setgid", "g\n", 0o2755),
		dirE(dir+"/sticky", 0o1777),
		dirE(dir+"/sgid-dir", 0o2775).owner(0, 1000),
		fileE(dir+"/mode0", "nobody may\n", 0),
		dirE(dir+"/dir0", 0),
		fileE(dir+"/dir0/inside", "in a 0000 directory\n", 0o644),
		fileE(dir+"/user", "user\n", 0o600).owner(1000, 1000),
		fileE(dir+"/big-id", "big\n", 0o644).owner(4000000000, 4000000001),
		fileE(dir+"/nobody", "nobody\n", 0o644).owner(65534, 65534),
		fileE(dir+"/zeros", zeros, 0o644),
		fileE(dir+"/"+strings.Repeat("n", 255), "long name\n", 0o644),
		symlinkE(dir+"/abs", "/bin/busybox"),
		symlinkE(dir+"/rel", "../"+dir+"/plain"),
		symlinkE(dir+"/dangling", "/does/not/exist").mtime(old),
		symlinkE(dir+"/dirlink", "sub"),
		dirE(dir+"/opq", 0o755),
		opaqueE(dir + "/opq"),
		fileE(dir+"/opq/kept", "kept\n", 0o644),
		whiteoutE(dir + "/absent"),
		whiteoutE(dir + "/recreated"),
		fileE(dir+"/recreated", "recreated\n", 0o644),
		fileE(dir+"/big-xattr", "big\n", 0o644).xattr("user.big", strings.Repeat("x", 3000)),
		fileE(dir+"/big-setuid", bigBody("setuid"), 0o4755),
		fileE(dir+"/big-ids", bigBody("ids"), 0o600).owner(4000000000, 4000000001).mtime(old),
		fileE(dir+"/big-xattrs", bigBody("xattrs"), 0o755).
			xattr("user.comment", "hello").xattr("security.capability", capNetBindService()),
		bigHL,
		linkE(dir+"/sub/big-hl-b", bigHL),
		fileE(dir+"/big-copy", bigBody("setuid"), 0o644),
	}, oddNameEntries(dir+"/names"), deepEntries(dir+"/deep", 20))
}

// bigBody is a file body of 20 KiB, over share_files' threshold, that
// depends on tag alone: files of one tag share an object.
func bigBody(tag string) string {
	return strings.Repeat(tag+"\n", 20<<10/(len(tag)+1)+1)
}

// oddNameEntries are files whose names hold what shells, mount options and
// text formats choke on: spaces, separators, a newline, a backslash, bytes
// that are not UTF-8.
func oddNameEntries(dir string) []entry {
	es := []entry{dirE(dir, 0o755)}
	for _, name := range []string{"sp ace", "colon:comma,eq=", "nl\nname", "back\\slash", "\xff\xfe-not-utf8", "-dash", "ünïcødé"} {
		es = append(es, fileE(dir+"/"+name, name+"\n", 0o644))
	}
	return es
}

// deepEntries nest levels directories of 40-byte names under dir, a file at
// the bottom: a path of over 800 bytes.
func deepEntries(dir string, levels int) []entry {
	es := []entry{dirE(dir, 0o755)}
	for i := 0; i < levels; i++ {
		dir += fmt.Sprintf("/level-%02d-%s", i, strings.Repeat("d", 31))
		es = append(es, dirE(dir, 0o755))
	}
	return append(es, fileE(dir+"/bottom", "deep\n", 0o644))
}

// stackBaseEntries are what the upper layers of diff-stack change, and a
// file written through a symlink of the same layer.
func stackBaseEntries() []entry {
	return []entry{
		dirE("s", 0o755),
		fileE("s/gone-file", "gone\n", 0o644),
		dirE("s/gone-dir", 0o755),
		fileE("s/gone-dir/a", "a\n", 0o644),
		dirE("s/gone-dir/sub", 0o700),
		fileE("s/gone-dir/sub/b", "b\n", 0o644),
		dirE("s/opq", 0o755),
		fileE("s/opq/a", "a\n", 0o644),
		dirE("s/opq/sub", 0o755),
		fileE("s/opq/sub/b", "b\n", 0o644),
		dirE("s/dir-to-file", 0o755),
		fileE("s/dir-to-file/x", "x\n", 0o644),
		fileE("s/file-to-dir", "file\n", 0o644),
		fileE("s/recreated", "old\n", 0o644),
		fileE("s/meta", "meta\n", 0o644),
		fileE("s/xattr-change", "x\n", 0o644).xattr("user.a", "1"),
		dirE("s/real", 0o755),
		symlinkE("s/via-link", "real"),
		fileE("s/via-link/inner", "written through a symlink\n", 0o644),
		symlinkE("s/link-to-dir", "real"),
	}
}

// stackChangeEntries change stackBaseEntries and trickyEntries("t") from
// above: whiteouts of files and directories, an opaque directory over a
// populated one, directory to file, file to directory and symlink to
// directory, a path deleted and recreated, new metadata and xattrs, a
// whiteout of what never existed, hard links.
func stackChangeEntries() []entry {
	hl := fileE("s/hl-1", "upper link\n", 0o604).owner(1000, 0)
	return []entry{
		dirE("s", 0o755),
		whiteoutE("s/gone-file"),
		whiteoutE("s/gone-dir"),
		dirE("s/opq", 0o711),
		opaqueE("s/opq"),
		fileE("s/opq/new", "new\n", 0o644),
		fileE("s/dir-to-file", "now a file\n", 0o644),
		dirE("s/file-to-dir", 0o755),
		fileE("s/file-to-dir/inner", "inner\n", 0o644),
		whiteoutE("s/recreated"),
		fileE("s/recreated", "new\n", 0o644),
		fileE("s/meta", "meta\n", 0o4711).owner(1000, 1001),
		fileE("s/xattr-change", "x\n", 0o644).xattr("user.b", "2"),
		whiteoutE("s/never-existed"),
		dirE("s/link-to-dir", 0o755),
		fileE("s/link-to-dir/inside", "symlink to directory\n", 0o644),
		hl,
		linkE("s/hl-2", hl),
		dirE("t", 0o755),
		whiteoutE("t/plain"),
		whiteoutE("t/sub"),
	}
}

// diffImageSpec is a differential image: its name and its layers' entries.
type diffImageSpec struct {
	name   string
	layers [][]entry
}

func diffImageSpecs() ([]diffImageSpec, error) {
	bb, err := busyboxEntries()
	if err != nil {
		return nil, err
	}
	return []diffImageSpec{
		// One layer: what is wrong with a bottom layer shows in the
		// image itself, and in a commit of an unchanged container.
		{"bottom", [][]entry{slices.Concat(bb, trickyEntries("t"), []entry{whiteoutE("absent-top")})}},
		// Whiteouts at the root of the bottom layer only: an opaque
		// directory and a whiteout of a path that does not exist.
		{"root-whiteout", [][]entry{slices.Concat(bb, []entry{
			whiteoutE("absent-top"), dirE("opq-top", 0o755), opaqueE("opq-top"), fileE("opq-top/kept", "kept\n", 0o644),
		})}},
		// A file followed by its own whiteout in the bottom layer.
		{"self-whiteout", [][]entry{{fileE("x", "x\n", 0o644), whiteoutE("x"), fileE("kept", "kept\n", 0o644)}}},
		// (The same for a directory fails on overlayfs too: containerd
		// deletes it, then sets its mtime at the end of the layer.)
		// Empty layers (tars without entries), at the bottom and on top.
		{"empty-bottom", [][]entry{{}, bb, {}}},
		// The tricky entries at the bottom again, busybox, an empty
		// layer, and a layer changing the bottom one.
		{"stack", [][]entry{
			slices.Concat(trickyEntries("t"), stackBaseEntries()),
			bb,
			{},
			stackChangeEntries(),
			// A file whose parent directory has no entry, and no layer
			// below has: the applier makes the directory. (/tmp on this
			// machine is 1777: a directory made from the wrong place
			// would show it.)
			{fileE("top", "top\n", 0o644), fileE("tmp/no-parent-entry", "x\n", 0o644)},
		}},
	}, nil
}

func pushDiffImages() ([]diffImage, error) {
	specs, err := diffImageSpecs()
	if err != nil {
		return nil, err
	}
	var out []diffImage
	for _, s := range specs {
		var layers []v1.Layer
		for _, es := range s.layers {
			l, err := tarLayer(es...)
			if err != nil {
				return nil, fmt.Errorf("image %s: %w", s.name, err)
			}
			layers = append(layers, l)
		}
		ref, err := push("diff-"+s.name, []string{"/bin/sh"}, layers...)
		if err != nil {
			return nil, fmt.Errorf("push image %s: %w", s.name, err)
		}
		out = append(out, diffImage{name: s.name, ref: ref})
	}
	return out, nil
}
