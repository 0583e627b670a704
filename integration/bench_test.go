package integration

// Benchmarks of strata against containerd's overlayfs, run by `make bench`
// (go test -run '^$' -bench . -benchtime 1x ./integration/): never by
// `make test`, and nothing here asserts a time. Each runs its sides
// alternately (A B, then B A) for STRATA_BENCH_ROUNDS rounds (default 3),
// on a fresh journaled ext4 on a loop device with direct I/O, so that both
// sides see the same filesystem (this machine's root is ext4 without a
// journal, which scans past recently freed inodes and penalises whichever
// side runs after a deletion). Every timed operation that writes starts
// after a sync, so neither side flushes what the other wrote. Results are
// ratios of strata's time to overlayfs's, per round, reported as the median
// with the range; the tables go to standard output and to STRATA_BENCH_OUT
// if set.

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots"
	snapshotsproxy "github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func benchRounds() int {
	if n, err := strconv.Atoi(os.Getenv("STRATA_BENCH_ROUNDS")); err == nil && n > 0 {
		return n
	}
	return 3
}

// benchFS mounts a fresh journaled ext4 of size on a loop device with
// direct I/O, and makes it TMPDIR for the benchmark, so that every Env and
// daemon the benchmark starts lives on it. Each step's undo is registered
// as soon as the step is done, so a failure leaves nothing behind.
func benchFS(b *testing.B, size string) string {
	b.Helper()
	run := func(args ...string) string {
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			b.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	undo := func(args ...string) {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			b.Errorf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	img, err := os.CreateTemp("/var/tmp", "strata-bench-*.img")
	if err != nil {
		b.Fatal(err)
	}
	img.Close()
	b.Cleanup(func() { os.Remove(img.Name()) })
	mnt, err := os.MkdirTemp("", "strata-bench-fs-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.Remove(mnt) })
	run("truncate", "-s", size, img.Name())
	run("mkfs.ext4", "-q", "-F", img.Name())
	dev := run("losetup", "--direct-io=on", "--find", "--show", img.Name())
	b.Cleanup(func() { undo("losetup", "-d", dev) })
	run("mount", dev, mnt)
	// Lazily: a benchmark that failed may have left a mount under it.
	b.Cleanup(func() { undo("umount", "--lazy", "--recursive", mnt) })
	b.Setenv("TMPDIR", mnt)
	return mnt
}

// sample is a workload's times, one per round, on each side.
type sample struct {
	workload   string
	ref, strat []time.Duration
}

// benchTable collects samples and renders them as Markdown.
type benchTable struct {
	title, refName, strataName string
	samples                    []*sample
	notes                      []string
}

func (t *benchTable) sample(workload string) *sample {
	for _, s := range t.samples {
		if s.workload == workload {
			return s
		}
	}
	s := &sample{workload: workload}
	t.samples = append(t.samples, s)
	return s
}

func medianOf[T int64 | float64 | time.Duration](v []T) T {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func (t *benchTable) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "### %s\n\n| workload | %s (median) | %s (median) | ratio, median (min-max) |\n| --- | --- | --- | --- |\n", t.title, t.refName, t.strataName)
	for _, s := range t.samples {
		var ratios []float64
		for i := range min(len(s.ref), len(s.strat)) {
			ratios = append(ratios, float64(s.strat[i])/float64(s.ref[i]))
		}
		lo, hi := slices.Min(ratios), slices.Max(ratios)
		fmt.Fprintf(&b, "| %s | %s | %s | **%.2f** (%.2f-%.2f) |\n", s.workload, fmtDur(medianOf(s.ref)), fmtDur(medianOf(s.strat)), medianOf(ratios), lo, hi)
	}
	for _, n := range t.notes {
		fmt.Fprintf(&b, "\n%s\n", n)
	}
	return b.String()
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
	}
}

// publish prints a table (go test truncates a benchmark's log) and appends
// it to STRATA_BENCH_OUT.
func publish(b *testing.B, t *benchTable) { publishMarkdown(b, t.markdown()) }

// publishMarkdown prints md and appends it to STRATA_BENCH_OUT.
func publishMarkdown(b *testing.B, md string) {
	fmt.Println(md)
	if out := os.Getenv("STRATA_BENCH_OUT"); out != "" {
		f, err := os.OpenFile(out, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		fmt.Fprintln(f, md)
	}
}

// procStats are a process's peak resident memory and CPU time so far.
func procStats(pid int) (peakRSS string, cpu time.Duration) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
				peakRSS = strings.TrimSpace(v)
			}
		}
		f.Close()
	}
	if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		// Fields after the command's closing parenthesis; utime and stime
		// are the 14th and 15th of the line, in clock ticks (100 Hz).
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
		u, _ := strconv.ParseInt(f[11], 10, 64)
		s, _ := strconv.ParseInt(f[12], 10, 64)
		cpu = time.Duration(u+s) * 10 * time.Millisecond
	}
	return peakRSS, cpu
}

// timed runs fn after a sync and returns how long fn took.
func timed(b *testing.B, fn func()) time.Duration {
	b.Helper()
	if err := exec.Command("sync").Run(); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	fn()
	return time.Since(start)
}

// randomBody is n deterministic bytes: compressible text when text is
// set, as source files are, else incompressible, as binaries are.
func randomBody(r *rand.Rand, n int, text bool) string {
	buf := make([]byte, n)
	for i := range buf {
		if text {
			buf[i] = "abcdefghijklmnopqrstuvwxyz \n"[r.IntN(28)]
		} else {
			buf[i] = byte(r.Uint32())
		}
	}
	return string(buf)
}

var (
	benchImagesOnce sync.Once
	benchImagesErr  error
	// The images pulled in the end-to-end benchmark.
	imgManySmall string // 20 layers of 500 small files
	imgFewLarge  string // 1 layer of 20,000 small files and 5 of 20 MB
	imgManyLayer string // 100 layers of 3 small files
)

func pushBenchImages(b *testing.B) {
	benchImagesOnce.Do(func() {
		r := rand.New(rand.NewPCG(1, 2))
		var ls []v1.Layer
		for l := range 20 {
			files := map[string]file{}
			for i := range 500 {
				files[fmt.Sprintf("layer%d/d%d/f%d", l, i%20, i)] = file{body: randomBody(r, 100+r.IntN(8000), true)}
			}
			ls = append(ls, mustLayer(files))
		}
		if imgManySmall, benchImagesErr = push("bench-many-small", []string{"/bin/sh"}, ls...); benchImagesErr != nil {
			return
		}
		files := map[string]file{}
		for i := range 20000 {
			files[fmt.Sprintf("src/d%d/f%d", i%200, i)] = file{body: randomBody(r, 200+r.IntN(2000), true)}
		}
		for i := range 5 {
			files[fmt.Sprintf("blob/b%d", i)] = file{body: randomBody(r, 20<<20, false)}
		}
		if imgFewLarge, benchImagesErr = push("bench-few-large", []string{"/bin/sh"}, mustLayer(files)); benchImagesErr != nil {
			return
		}
		ls = nil
		for l := range 100 {
			files := map[string]file{}
			for i := range 3 {
				files[fmt.Sprintf("l%d/f%d", l, i)] = file{body: randomBody(r, 500, true)}
			}
			ls = append(ls, mustLayer(files))
		}
		imgManyLayer, benchImagesErr = push("bench-many-layers", []string{"/bin/sh"}, ls...)
	})
	if benchImagesErr != nil {
		b.Fatal(benchImagesErr)
	}
}

func mustLayer(files map[string]file) v1.Layer {
	l, err := layer(files)
	if err != nil {
		panic(err)
	}
	return l
}

// dialSnapshotter connects to a Snapshots API socket.
func dialSnapshotter(b *testing.B, sock, name string) snapshots.Snapshotter {
	b.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return snapshotsproxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), name)
}

// apiSide is one snapshotter daemon under benchmark, through the Snapshots
// gRPC API as containerd calls it.
type apiSide struct {
	name string
	proc *proc
	sn   snapshots.Snapshotter
	tips []string // the top of each populated chain
	n    int      // snapshots populated
}

// startAPISide starts a daemon (args, with %s for its root and socket) and
// connects to it.
func startAPISide(b *testing.B, dir, name, ready string, args func(root, sock string) []string) *apiSide {
	b.Helper()
	root, sock := filepath.Join(dir, name), filepath.Join(dir, name+".sock")
	if err := os.MkdirAll(root, 0o700); err != nil {
		b.Fatal(err)
	}
	p := startProc(b, dir, name, args(root, sock)...)
	b.Cleanup(func() { p.stop(syscall.SIGTERM, time.Minute) })
	p.waitLog(b, ready, time.Minute)
	return &apiSide{name: name, proc: p, sn: dialSnapshotter(b, sock, name)}
}

// populate grows the side's store to n committed snapshots, in chains of
// five (an image's layers), four at a time as parallel unpacks would.
func (s *apiSide) populate(b *testing.B, n int) {
	ctx := context.Background()
	chains := (n - s.n) / 5
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	next := len(s.tips)
	for w := range 4 {
		wg.Go(func() {
			for c := w; c < chains; c += 4 {
				parent := ""
				for d := range 5 {
					name := fmt.Sprintf("chain-%d-%d", next+c, d)
					if err := prepareCommit(ctx, s.sn, name, parent); err != nil {
						errs <- err
						return
					}
					parent = name
				}
				mu.Lock()
				s.tips = append(s.tips, parent)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatalf("%s: populate: %v", s.name, err)
	}
	s.n += chains * 5
}

// prepareCommit makes a committed snapshot name on parent as containerd's
// unpacker does: an active snapshot labelled with the layer, committed.
func prepareCommit(ctx context.Context, sn snapshots.Snapshotter, name, parent string) error {
	labels := snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: name})
	if _, err := sn.Prepare(ctx, name+"-extract", parent, labels); err != nil {
		return fmt.Errorf("prepare %s: %w", name, err)
	}
	if err := sn.Commit(ctx, name, name+"-extract", labels); err != nil {
		return fmt.Errorf("commit %s: %w", name, err)
	}
	return nil
}

// BenchmarkSnapshotsAPI compares strata (with and without sync_on_commit)
// with containerd's overlay snapshotter served the same way
// (bench/overlayref), call by call: Prepare+Commit, Stat and Walk with
// 100, 5,000 and 20,000 snapshots in the store, and Prepare on chains 10,
// 100 and 500 deep.
func BenchmarkSnapshotsAPI(b *testing.B) {
	dir := benchFS(b, "20G")
	ref := filepath.Join(dir, "overlayref")
	if out, err := exec.Command("go", "build", "-o", ref, "../bench/overlayref").CombinedOutput(); err != nil {
		b.Fatalf("build overlayref: %v\n%s", err, out)
	}
	strataArgs := func(sync bool) func(root, sock string) []string {
		return func(root, sock string) []string {
			cfg := filepath.Join(dir, filepath.Base(root)+".toml")
			if err := os.WriteFile(cfg, fmt.Appendf(nil, "sync_on_commit = %v\n", sync), 0o600); err != nil {
				b.Fatal(err)
			}
			return []string{strataBinary, "--root", root, "--address", sock, "--config", cfg, "--log-level", "info"}
		}
	}
	sides := []*apiSide{
		startAPISide(b, dir, "overlayfs", "overlayref serving", func(root, sock string) []string {
			return []string{ref, "--root", root, "--address", sock}
		}),
		startAPISide(b, dir, "strata", "strata-snapshotter serving", strataArgs(true)),
		startAPISide(b, dir, "strata-nosync", "strata-snapshotter serving", strataArgs(false)),
	}
	tables := []*benchTable{
		{title: "Snapshots API: strata (sync_on_commit = true, the default) / containerd's overlay", refName: "overlayfs", strataName: "strata"},
		{title: "Snapshots API: strata (sync_on_commit = false) / containerd's overlay", refName: "overlayfs", strataName: "strata, no sync"},
	}
	record := func(workload string, times map[string]time.Duration) {
		for i, name := range []string{"strata", "strata-nosync"} {
			s := tables[i].sample(workload)
			s.ref = append(s.ref, times["overlayfs"])
			s.strat = append(s.strat, times[name])
		}
	}
	ctx := context.Background()
	for _, n := range []int{100, 5000, 20000} {
		for _, s := range sides {
			start := time.Now()
			s.populate(b, n)
			b.Logf("%s: populated to %d snapshots in %v", s.name, s.n, time.Since(start))
		}
		for r := range benchRounds() {
			times := map[string]map[string]time.Duration{}
			for _, s := range rotate(sides, r) {
				times[s.name] = s.measureScale(b, ctx, n, r)
			}
			for _, w := range []string{"Prepare+Commit", "Stat", "Usage", "Walk"} {
				per := map[string]time.Duration{}
				for name, t := range times {
					per[name] = t[w]
				}
				record(fmt.Sprintf("%s, %d snapshots", w, n), per)
			}
		}
	}
	for _, s := range sides {
		parent := ""
		for d := range 500 {
			name := fmt.Sprintf("deep-%d", d)
			if err := prepareCommit(ctx, s.sn, name, parent); err != nil {
				b.Fatalf("%s: %v", s.name, err)
			}
			parent = name
		}
	}
	for r := range benchRounds() {
		for _, depth := range []int{10, 100, 500} {
			per := map[string]time.Duration{}
			for _, s := range rotate(sides, r) {
				per[s.name] = s.measureDepth(b, ctx, depth, r)
			}
			record(fmt.Sprintf("Prepare on a chain %d deep", depth), per)
		}
	}
	var notes []string
	for _, s := range sides {
		rss, cpu := procStats(s.proc.cmd.Process.Pid)
		var index int64
		if fi, err := os.Stat(filepath.Join(dir, s.name, "metadata.db")); err == nil {
			index = fi.Size()
		}
		notes = append(notes, fmt.Sprintf("%s: peak RSS %s, CPU %v, index file %d MiB", s.name, rss, cpu.Round(10*time.Millisecond), index>>20))
	}
	for _, t := range tables {
		t.notes = append(t.notes, "Per call, the median of the round's calls; Walk is one walk of the whole store. "+strings.Join(notes, "; ")+" (whole run).")
		publish(b, t)
	}
}

// rotate returns sides starting at the r-th, so that each takes every
// place in the order across rounds.
func rotate[T any](sides []T, r int) []T {
	r %= len(sides)
	return append(slices.Clone(sides[r:]), sides[:r]...)
}

// measureScale times, on a store of about n snapshots: Prepare+Commit of a
// layer on an image's top (the median of 50), Stat and Usage of populated
// snapshots (the medians of 200), and one Walk of everything.
func (s *apiSide) measureScale(b *testing.B, ctx context.Context, n, round int) map[string]time.Duration {
	var pc []time.Duration
	var made []string
	for i := range 50 {
		name := fmt.Sprintf("op-%d-%d-%d", n, round, i)
		parent := s.tips[i%len(s.tips)]
		pc = append(pc, timed(b, func() {
			if err := prepareCommit(ctx, s.sn, name, parent); err != nil {
				b.Fatalf("%s: %v", s.name, err)
			}
		}))
		made = append(made, name)
	}
	// call times one call on each of 200 populated snapshots, spread by
	// stride over the chains.
	call := func(what string, stride int, fn func(key string) error) []time.Duration {
		var ts []time.Duration
		for i := range 200 {
			key := fmt.Sprintf("chain-%d-%d", (i*stride)%len(s.tips), i%5)
			start := time.Now()
			if err := fn(key); err != nil {
				b.Fatalf("%s: %s %s: %v", s.name, what, key, err)
			}
			ts = append(ts, time.Since(start))
		}
		return ts
	}
	st := call("stat", 7919, func(key string) error { _, err := s.sn.Stat(ctx, key); return err })
	us := call("usage of", 7907, func(key string) error { _, err := s.sn.Usage(ctx, key); return err })
	var count int
	walk := timed(b, func() {
		if err := s.sn.Walk(ctx, func(context.Context, snapshots.Info) error { count++; return nil }); err != nil {
			b.Fatalf("%s: walk: %v", s.name, err)
		}
	})
	if count < n {
		b.Fatalf("%s: walk saw %d snapshots, want at least %d", s.name, count, n)
	}
	for _, name := range made {
		if err := s.sn.Remove(ctx, name); err != nil {
			b.Fatalf("%s: remove %s: %v", s.name, name, err)
		}
	}
	return map[string]time.Duration{"Prepare+Commit": medianOf(pc), "Stat": medianOf(st), "Usage": medianOf(us), "Walk": walk}
}

// measureDepth times Prepare of a container's snapshot on the depth-th
// layer of a 500-layer chain (the median of 20; each removed after).
func (s *apiSide) measureDepth(b *testing.B, ctx context.Context, depth, round int) time.Duration {
	var ts []time.Duration
	parent := fmt.Sprintf("deep-%d", depth-1)
	for i := range 20 {
		key := fmt.Sprintf("depth-%d-%d-%d", depth, round, i)
		ts = append(ts, timed(b, func() {
			if _, err := s.sn.Prepare(ctx, key, parent); err != nil {
				b.Fatalf("%s: prepare on %s: %v", s.name, parent, err)
			}
		}))
		if err := s.sn.Remove(ctx, key); err != nil {
			b.Fatalf("%s: remove %s: %v", s.name, key, err)
		}
	}
	return medianOf(ts)
}

// BenchmarkEndToEnd compares strata with containerd's overlayfs in one
// containerd, through ctr and nerdctl as users drive it: pulls (the layer
// blobs already in the content store, so a pull is resolve and unpack),
// usage of every snapshot, container starts (cold, warm, 10 concurrent), a
// commit of a 100 MB change, and image removal with garbage collection. One
// sub-benchmark per configuration: sequential and parallel unpack, and
// durability on or off on each side.
func BenchmarkEndToEnd(b *testing.B) {
	pushBenchImages(b)
	benchFS(b, "40G")
	for _, v := range []struct {
		name, title string
		opts        EnvOptions
		full        bool                // every workload, not only pulls
		pullArgs    map[string][]string // extra ctr pull flags, by snapshotter
	}{
		{name: "defaults", title: "strata's defaults (sync_on_commit = true) / overlayfs, containerd's defaults, sequential unpack", full: true},
		{name: "parallel", title: "strata's defaults / overlayfs, parallel unpack (rebase, max_concurrent_unpacks = 4)", opts: EnvOptions{ParallelUnpack: true}, full: true},
		{name: "nosync", title: "strata, sync_on_commit = false / overlayfs: neither flushes, sequential unpack", opts: EnvOptions{StrataConfig: "sync_on_commit = false\n"}},
		{name: "nosync-parallel", title: "strata, sync_on_commit = false / overlayfs: neither flushes, parallel unpack", opts: EnvOptions{StrataConfig: "sync_on_commit = false\n", ParallelUnpack: true}},
		// containerd flushes only where its diff service applies layers: a
		// client-side unpack (ctr pull --local --sync-fs), not the transfer
		// service's.
		{name: "durable", title: "strata's defaults / overlayfs with containerd's flush (ctr pull --local --sync-fs): both durable, client-side sequential unpack",
			pullArgs: map[string][]string{refSn: {"--local", "--sync-fs"}, testSn: {"--local"}}},
	} {
		b.Run(v.name, func(b *testing.B) {
			v.opts.Quiet = true
			e := newEnv(b, v.opts)
			images := []string{imgManySmall, imgFewLarge, imgManyLayer, imgThreeLayers}
			e.keepContent(images)
			t := &benchTable{title: "End to end: " + v.title, refName: "overlayfs", strataName: "strata"}
			for r := range benchRounds() {
				order := []string{refSn, testSn}
				if r%2 == 1 {
					slices.Reverse(order)
				}
				for _, sn := range order {
					times := e.endToEndRound(b, sn, v.full, v.pullArgs[sn])
					for _, w := range times.order {
						s := t.sample(w)
						if sn == refSn {
							s.ref = append(s.ref, times.d[w])
						} else {
							s.strat = append(s.strat, times.d[w])
						}
					}
				}
			}
			srss, scpu := procStats(e.Strata.cmd.Process.Pid)
			crss, ccpu := procStats(e.Containerd.cmd.Process.Pid)
			t.notes = append(t.notes, fmt.Sprintf("Whole run: strata peak RSS %s, CPU %v; containerd (which runs overlayfs and serves both sides) peak RSS %s, CPU %v.",
				srss, scpu.Round(10*time.Millisecond), crss, ccpu.Round(10*time.Millisecond)))
			publish(b, t)
		})
	}
}

// keepContent fetches the images' blobs into the content store and makes
// their layers garbage-collection roots, so that every timed pull finds
// them there and image removals leave them. Only the layers: the unpacker
// labels an image's config with references to its snapshots, which would
// keep them from being collected; the small manifests and configs are
// fetched again by each pull, on both sides.
func (e *Env) keepContent(images []string) {
	e.t.Helper()
	for _, img := range images {
		e.ctr("content", "fetch", "--plain-http", "--hosts-dir", hostsDir, "--platform", "linux/amd64", img)
		ref, err := name.ParseReference(img, name.Insecure)
		if err != nil {
			e.t.Fatal(err)
		}
		ri, err := remote.Image(ref)
		if err != nil {
			e.t.Fatal(err)
		}
		m, err := ri.Manifest()
		if err != nil {
			e.t.Fatal(err)
		}
		for _, l := range m.Layers {
			e.ctr("content", "label", l.Digest.String(), "containerd.io/gc.root=bench")
		}
	}
}

// roundTimes are one round's times on one side, by workload, in order.
type roundTimes struct {
	order []string
	d     map[string]time.Duration
}

func (r *roundTimes) add(w string, d time.Duration) {
	r.order = append(r.order, w)
	r.d[w] = d
}

// endToEndRound runs the workloads once on snapshotter sn (its pulls with
// pullArgs), and leaves
// containerd and the snapshotter as it found them: no image, no snapshot,
// no directory being deleted.
func (e *Env) endToEndRound(b *testing.B, sn string, full bool, pullArgs []string) *roundTimes {
	rt := &roundTimes{d: map[string]time.Duration{}}
	pull := func(img string) func() {
		args := append([]string{"images", "pull", "--plain-http", "--hosts-dir", hostsDir, "--snapshotter", sn}, pullArgs...)
		return func() { e.ctr(append(args, img)...) }
	}
	rt.add("pull: 20 layers x 500 small files", timed(b, pull(imgManySmall)))
	rt.add("pull: 1 layer, 20,000 small files + 5 x 20 MB", timed(b, pull(imgFewLarge)))
	rt.add("pull: 100 layers", timed(b, pull(imgManyLayer)))
	images := []string{imgManySmall, imgFewLarge, imgManyLayer}
	if full {
		pull(imgThreeLayers)()
		images = append(images, imgThreeLayers)
		rt.add("usage of every snapshot (ctr snapshots usage)", timed(b, func() { e.ctr("snapshots", "--snapshotter", sn, "usage") }))
		run := func(id string) func() {
			return func() { e.ctr("run", "--rm", "--snapshotter", sn, imgThreeLayers, id, "true") }
		}
		rt.add("ctr run --rm, first container of the image", timed(b, run("bench-cold")))
		rt.add("ctr run --rm, again", timed(b, run("bench-warm")))
		rt.add("10 concurrent ctr run --rm", timed(b, func() {
			var wg sync.WaitGroup
			for i := range 10 {
				wg.Go(run(fmt.Sprintf("bench-par-%d", i)))
			}
			wg.Wait()
		}))
		committed := fmt.Sprintf("%s/bench-commit-%s:latest", registry, sn)
		nerdctl := func(args ...string) {
			argv := e.nerdctlArgs(args...)
			argv[slices.Index(argv, "--snapshotter")+1] = sn
			e.run(argv...)
		}
		nerdctl("run", "--name", "bench-commit", "--net", "none", imgThreeLayers, "sh", "-c", "busybox head -c 100000000 /dev/urandom > /big")
		rt.add("nerdctl commit of a 100 MB change", timed(b, func() { nerdctl("commit", "--pause=false", "bench-commit", committed) }))
		nerdctl("rm", "-f", "bench-commit")
		images = append(images, committed)
	}
	rt.add("image removal + GC (ctr images rm --sync)", timed(b, func() { e.ctr(append([]string{"images", "rm", "--sync"}, images...)...) }))
	e.waitEmpty(b, sn)
	return rt
}

// waitEmpty waits until snapshotter sn holds no snapshot directory, those
// deleted in the background included, so the next timed operation does not
// share the disk with a deletion.
func (e *Env) waitEmpty(b *testing.B, sn string) {
	dir := layersDir(e.StrataRoot)
	if sn == refSn {
		dir = filepath.Join(e.Dir, "containerd", "io.containerd.snapshotter.v1.overlayfs", "snapshots")
	}
	deadline := time.Now().Add(5 * time.Minute)
	for {
		es, err := os.ReadDir(dir)
		if err != nil {
			b.Fatal(err)
		}
		if len(es) == 0 {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s still holds %d directories in %s", sn, len(es), dir)
		}
		// Background deletion says nothing when it is done: poll.
		time.Sleep(100 * time.Millisecond)
	}
}
