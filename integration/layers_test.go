package integration

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fileBytes sums, under dir, the sizes of the regular files and the
// apparent sizes of everything but directories (regular files, symlinks,
// whiteouts), as du --bytes --apparent-size counts them less directories.
func fileBytes(t *testing.T, dir string) (regular, apparent int64) {
	t.Helper()
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		apparent += fi.Size()
		if d.Type().IsRegular() {
			regular += fi.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return regular, apparent
}

// TestSharedLayersStoredOnce: two images sharing three base layers, pulled
// one after the other. Each shared layer is one committed snapshot and one
// directory, and the bytes under strata's root are those of the five
// distinct layers, not of the eight the two images list.
func TestSharedLayersStoredOnce(t *testing.T) {
	e := newEnv(t, EnvOptions{})
	for _, img := range []string{imgSharedA, imgSharedB} {
		e.ctr("images", "pull", "--plain-http", "--hosts-dir", hostsDir, "--snapshotter", "strata", img)
	}
	committed := 0
	for _, kind := range e.snapshots(namespace) {
		if kind == "Committed" {
			committed++
		}
	}
	if committed != 5 {
		t.Fatalf("%d committed snapshots, want 5 (3 shared + 1 per image)", committed)
	}
	if dirs := e.layerDirs(); len(dirs) != 5 {
		t.Fatalf("%d layer directories, want 5: %v", len(dirs), dirs)
	}
	bb, err := os.Stat("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	// busybox, the files of layers 2 and 3, and one file per image.
	distinct := bb.Size() + int64(len("layer 2\n")+len("from layer 2\n")+len("layer 3\n")+len("a\n")+len("b\n"))
	sum := distinct + bb.Size() + int64(len("layer 2\n")+len("from layer 2\n")+len("layer 3\n"))
	got, _ := fileBytes(t, layersDir(e.StrataRoot))
	t.Logf("file bytes under strata's root: %d; distinct layers: %d; both images' layers summed: %d", got, distinct, sum)
	if got != distinct {
		t.Fatalf("strata stores %d bytes of files, want %d (each shared layer once; summed would be %d)", got, distinct, sum)
	}
}

// TestDeepImage: an image of 300 layers pulls and runs; every layer's file
// is there.
func TestDeepImage(t *testing.T) {
	e := newEnv(t, EnvOptions{})
	e.ctr("images", "pull", "--plain-http", "--hosts-dir", hostsDir, "--snapshotter", "strata", imgDeep)
	out := e.ctr("run", "--rm", "--snapshotter", "strata", "--net-host", imgDeep, "deep", "/bin/sh", "-c", "ls /deep | wc -l; cat /deep/001 /deep/299")
	want := fmt.Sprintf("%d\n1\n299\n", deepLayers-1)
	if strings.Join(strings.Fields(out), "\n")+"\n" != want {
		t.Fatalf("container on %d layers printed %q, want %q", deepLayers, out, want)
	}
}

// TestParallelUnpack: with strata's rebase capability advertised, containerd
// unpacks layers in parallel, each into a snapshot without its parent, and
// commits them onto their parents afterwards. The image's top layer deletes
// a file of the layer below; the container must not see it.
func TestParallelUnpack(t *testing.T) {
	e := newEnv(t, EnvOptions{ParallelUnpack: true})
	e.ctr("images", "pull", "--plain-http", "--hosts-dir", hostsDir, "--snapshotter", "strata", imgWhiteout)
	if !containsLine(e.Containerd, "parallel=true") {
		t.Fatal("containerd did not unpack in parallel (no parallel=true in its log)")
	}
	out := e.ctr("run", "--rm", "--snapshotter", "strata", "--net-host", imgWhiteout, "wh",
		"/bin/sh", "-c", "cat /kept /top; test -e /gone && echo present || echo gone")
	if out != "kept\ntop\ngone\n" {
		t.Fatalf("container printed %q; the file the top layer deletes must be gone", out)
	}
}

// containsLine reports whether the daemon has printed a line containing s.
func containsLine(p *proc, s string) bool { return countLines(p, s) > 0 }

// countLines is the number of lines the daemon has printed containing s.
func countLines(p *proc, s string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, l := range p.lines {
		if strings.Contains(l, s) {
			n++
		}
	}
	return n
}
