package integration

import (
	"bufio"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// BenchmarkShareFiles compares, side by side in one run, containerd's
// overlayfs, strata and strata with share_files on a set of images that
// share files but not layers: one application on three versions of a base
// root filesystem, each version changing one file in eight. The base is
// real files of this machine (its shared libraries), the application 8 MB
// of its own. For each side: the time to pull the three images, the disk
// the snapshotter then takes (du of its directory, hard links counted
// once), the time to start a first container of each image, and the page
// cache taken when a container of each image has read every file of its
// base (from a cache dropped before). share_files runs in a containerd of
// its own, on the same filesystem.
func BenchmarkShareFiles(b *testing.B) {
	images := pushShareImages(b)
	benchFS(b, "20G")
	plain := newEnv(b, EnvOptions{Quiet: true})
	shared := newEnv(b, EnvOptions{Quiet: true, StrataConfig: shareFilesConfig})
	plain.keepContent(images)
	shared.keepContent(images)
	sides := []shareSide{
		{"overlayfs", plain, refSn},
		{"strata", plain, testSn},
		{"strata, share_files", shared, testSn},
	}
	results := map[string]map[string][]float64{} // side -> measure -> per round
	for _, s := range sides {
		results[s.name] = map[string][]float64{}
	}
	for r := range benchRounds() {
		for _, s := range rotate(sides, r) {
			for _, m := range s.round(b, images) {
				results[s.name][m.name] = append(results[s.name][m.name], m.value)
			}
		}
	}
	publishShare(b, sides, []string{mPull, mDisk, mStart, mCache}, results)
}

// shareSide is one snapshotter of one containerd.
type shareSide struct {
	name string
	e    *Env
	sn   string
}

type measure struct {
	name  string
	value float64 // seconds or bytes
}

// Measures, and how each is shown.
const (
	mPull  = "pull of the three images (s)"
	mDisk  = "disk taken by the snapshotter (MiB)"
	mStart = "first container of each image, nerdctl run --rm (s)"
	mCache = "page cache after reading every base file in a container of each image (MiB)"
)

// round pulls the images on s, measures, and removes them, leaving the
// snapshotter empty.
func (s shareSide) round(b *testing.B, images []string) []measure {
	e := s.e
	var ms []measure
	ms = append(ms, measure{mPull, timed(b, func() {
		for _, img := range images {
			e.ctr("images", "pull", "--plain-http", "--hosts-dir", hostsDir, "--snapshotter", s.sn, img)
		}
	}).Seconds()})
	ms = append(ms, measure{mDisk, float64(duBytes(b, s.dir())) / (1 << 20)})
	// Containers through nerdctl: ctr of containerd 2.4 cannot start one
	// on a shared layer (see README, "Sharing files across images").
	nerdctl := func(args ...string) {
		argv := e.nerdctlArgs(args...)
		argv[slices.Index(argv, "--snapshotter")+1] = s.sn
		e.run(argv...)
	}
	ms = append(ms, measure{mStart, timed(b, func() {
		for _, img := range images {
			nerdctl("run", "--rm", "--net", "none", img, "busybox", "true")
		}
	}).Seconds()})
	dropCaches(b)
	before := cachedBytes(b)
	for _, img := range images {
		nerdctl("run", "--rm", "--net", "none", img, "busybox", "sh", "-c", "busybox find /base -type f -exec busybox cat {} + > /dev/null")
	}
	ms = append(ms, measure{mCache, float64(cachedBytes(b)-before) / (1 << 20)})
	e.ctr(append([]string{"images", "rm", "--sync"}, images...)...)
	e.waitEmpty(b, s.sn)
	return ms
}

// dir is the directory holding everything the side's snapshotter stores.
func (s shareSide) dir() string {
	if s.sn == refSn {
		return filepath.Join(s.e.Dir, "containerd", "io.containerd.snapshotter.v1.overlayfs")
	}
	return s.e.StrataRoot
}

func duBytes(b *testing.B, dir string) int64 {
	b.Helper()
	out, err := exec.Command("du", "-s", "--block-size=1", dir).Output()
	if err != nil {
		b.Fatalf("du %s: %v", dir, err)
	}
	n, err := strconv.ParseInt(strings.Fields(string(out))[0], 10, 64)
	if err != nil {
		b.Fatal(err)
	}
	return n
}

// dropCaches writes dirty pages out and empties the page cache, so that
// what a workload reads shows in Cached.
func dropCaches(b *testing.B) {
	b.Helper()
	if err := exec.Command("sync").Run(); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200); err != nil {
		b.Fatal(err)
	}
}

// cachedBytes is the page cache's size (Cached in /proc/meminfo).
func cachedBytes(b *testing.B) int64 {
	b.Helper()
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Cached:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb << 10
		}
	}
	b.Fatal("no Cached in /proc/meminfo")
	return 0
}

// pushShareImages pushes the three images: busybox and base version N in
// the bottom layer, the application above.
func pushShareImages(b *testing.B) []string {
	b.Helper()
	base := baseFiles(b, 120<<20)
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		b.Fatal(err)
	}
	r := rand.New(rand.NewPCG(3, 4))
	app := map[string]file{}
	for i := range 8 {
		app[fmt.Sprintf("app/lib%d.so", i)] = file{body: randomBody(r, 1<<20, false)}
	}
	appLayer := mustLayer(app)
	var refs []string
	for v := 1; v <= 3; v++ {
		files := map[string]file{"bin/busybox": {body: string(bb)}}
		for i, f := range base {
			body := f.body
			// Version v changes one file in eight, a different eighth each.
			if v > 1 && i%8 == v {
				body += fmt.Sprintf("\nversion %d\n", v)
			}
			files["base/"+f.name] = file{body: body}
		}
		ref, err := push(fmt.Sprintf("bench-share-v%d", v), []string{"/bin/busybox", "true"}, []v1.Layer{mustLayer(files), appLayer}...)
		if err != nil {
			b.Fatal(err)
		}
		refs = append(refs, ref)
	}
	return refs
}

type namedFile struct {
	name, body string
}

// baseFiles reads regular files of this machine's shared libraries, in
// name order, up to total bytes: a base root filesystem's binaries, with
// their real sizes.
func baseFiles(b *testing.B, total int) []namedFile {
	b.Helper()
	const root = "/usr/lib/x86_64-linux-gnu"
	var names []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			names = append(names, p)
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	sort.Strings(names)
	var files []namedFile
	size := 0
	for _, p := range names {
		body, err := os.ReadFile(p)
		if err != nil || len(body) > 16<<20 {
			continue
		}
		rel, _ := filepath.Rel(root, p)
		files = append(files, namedFile{rel, string(body)})
		if size += len(body); size >= total {
			break
		}
	}
	return files
}

// publishShare prints the medians of every measure by side, with each
// side's ratio to overlayfs.
func publishShare(b *testing.B, sides []shareSide, measures []string, results map[string]map[string][]float64) {
	var sb strings.Builder
	fmt.Fprintf(&sb, "### Sharing files: three images, one application on three versions of a base (median of %d rounds)\n\n", benchRounds())
	fmt.Fprintf(&sb, "| measure | %s | %s | %s | %s / %s |\n|---|---|---|---|---|\n",
		sides[0].name, sides[1].name, sides[2].name, sides[2].name, sides[1].name)
	for _, m := range measures {
		ref, plain, shared := medianOf(results[sides[0].name][m]), medianOf(results[sides[1].name][m]), medianOf(results[sides[2].name][m])
		fmt.Fprintf(&sb, "| %s | %s | %s (%.2f) | %s (%.2f) | %.2f |\n", m,
			fmtMeasure(ref), fmtMeasure(plain), plain/ref, fmtMeasure(shared), shared/ref, shared/plain)
	}
	fmt.Fprintf(&sb, "\nIn parentheses: the ratio to %s.\n", sides[0].name)
	publishMarkdown(b, sb.String())
}

func fmtMeasure(v float64) string {
	if v >= 100 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.2f", v)
}
