package integration

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// The test images are made here, in Go, from Debian's static busybox, and
// pushed to the test registry before any test runs.

// Image references, filled in by pushTestImages.
var (
	imgThreeLayers string // busybox, /l2 + /lower-file, /l3
	imgSharedA     string // the three layers above + /only-a
	imgSharedB     string // the three layers above + /only-b
	imgWhiteout    string // busybox, /gone + /kept, a layer deleting /gone
	imgDeep        string // busybox + 299 layers, one file each
)

// deepLayers is the number of layers of imgDeep.
const deepLayers = 300

// busyboxApplets are linked to /bin/busybox in the base layer.
var busyboxApplets = []string{"sh", "ls", "cat", "echo", "sleep", "rm", "touch", "mkdir", "test", "true", "stat", "mount", "hostname", "wc"}

type file struct {
	body    string
	symlink string
}

// layer builds an uncompressed tar layer. A name starting with ".wh." under
// a directory is a whiteout, as the OCI image spec defines.
func layer(files map[string]file) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	dirs := map[string]bool{}
	for _, n := range names {
		// Parent directories first.
		for i := 0; i < len(n); i++ {
			if n[i] == '/' && !dirs[n[:i]] {
				dirs[n[:i]] = true
				if err := tw.WriteHeader(&tar.Header{Name: n[:i] + "/", Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
					return nil, err
				}
			}
		}
		f := files[n]
		h := &tar.Header{Name: n, Mode: 0o755, Typeflag: tar.TypeReg, Size: int64(len(f.body))}
		if f.symlink != "" {
			h = &tar.Header{Name: n, Mode: 0o777, Typeflag: tar.TypeSymlink, Linkname: f.symlink}
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := io.WriteString(tw, f.body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
}

func busyboxLayer() (v1.Layer, error) {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return nil, fmt.Errorf("static busybox (Debian's busybox-static): %w", err)
	}
	files := map[string]file{"bin/busybox": {body: string(bb)}}
	for _, a := range busyboxApplets {
		files["bin/"+a] = file{symlink: "busybox"}
	}
	return layer(files)
}

// push writes an image of layers with cmd to the test registry as repo.
func push(repo string, cmd []string, layers ...v1.Layer) (string, error) {
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		return "", err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return "", err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Config.Cmd = cmd
	cfg.Config.Env = []string{"PATH=/bin"}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return "", err
	}
	ref := fmt.Sprintf("%s/%s:latest", registry, repo)
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return "", err
	}
	return ref, remote.Write(r, img)
}

func pushTestImages() error {
	bb, err := busyboxLayer()
	if err != nil {
		return err
	}
	must := func(l v1.Layer, err error) v1.Layer {
		if err != nil {
			panic(err)
		}
		return l
	}
	l2 := must(layer(map[string]file{"l2": {body: "layer 2\n"}, "lower-file": {body: "from layer 2\n"}}))
	l3 := must(layer(map[string]file{"l3": {body: "layer 3\n"}}))
	sh := []string{"/bin/sh"}
	if imgThreeLayers, err = push("three-layers", sh, bb, l2, l3); err != nil {
		return err
	}
	if imgSharedA, err = push("shared-a", sh, bb, l2, l3, must(layer(map[string]file{"only-a": {body: "a\n"}}))); err != nil {
		return err
	}
	if imgSharedB, err = push("shared-b", sh, bb, l2, l3, must(layer(map[string]file{"only-b": {body: "b\n"}}))); err != nil {
		return err
	}
	if imgWhiteout, err = push("whiteout", sh, bb,
		must(layer(map[string]file{"gone": {body: "deleted by the next layer\n"}, "kept": {body: "kept\n"}})),
		must(layer(map[string]file{".wh.gone": {}, "top": {body: "top\n"}}))); err != nil {
		return err
	}
	deep := []v1.Layer{bb}
	for i := 1; i < deepLayers; i++ {
		deep = append(deep, must(layer(map[string]file{fmt.Sprintf("deep/%03d", i): {body: fmt.Sprintf("%d\n", i)}})))
	}
	if imgDeep, err = push("deep", sh, deep...); err != nil {
		return err
	}
	// The CRI sandbox ("pause") image: sleeps until killed.
	if pauseImage, err = push("pause", []string{"/bin/sleep", "2147483647"}, bb); err != nil {
		return err
	}
	return nil
}
