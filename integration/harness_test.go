package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/strata-snapshotter/strata/containerdconfig"
	"github.com/strata-snapshotter/strata/internal/testutil"
)

// This file is the harness: it starts strata, containerd (and, for the tests
// that need them, BuildKit) as children of the test, wired together the way
// a node is, and tears everything down afterwards. Every daemon's root,
// state and sockets live under one short directory per test.

// namespace is the containerd namespace the tests work in; CRI uses k8s.io.
const namespace = "strata-test"

// proc is a daemon started by a test. Its output goes to a log file and is
// watched line by line, so tests wait for what a daemon says, not for time.
type proc struct {
	name string
	cmd  *exec.Cmd

	mu     sync.Mutex
	cond   *sync.Cond
	lines  []string
	done   bool
	err    error
	exited chan struct{} // closed once the daemon has exited
}

func startProc(t testing.TB, dir, name string, args ...string) *proc {
	t.Helper()
	p, err := startProcErr(dir, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func startProcErr(dir, name string, args ...string) (*proc, error) {
	p := &proc{name: name, cmd: exec.Command(args[0], args[1:]...), exited: make(chan struct{})}
	p.cond = sync.NewCond(&p.mu)
	logFile, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	// Own process group, so a stop reaches helpers the daemon started.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			fmt.Fprintln(logFile, sc.Text())
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			p.cond.Broadcast()
			p.mu.Unlock()
		}
		io.Copy(io.Discard, pr)
	}()
	go func() {
		err := p.cmd.Wait()
		pw.Close()
		p.mu.Lock()
		p.done, p.err = true, err
		p.cond.Broadcast()
		p.mu.Unlock()
		logFile.Close()
		close(p.exited)
	}()
	return p, nil
}

// waitLog blocks until the daemon prints a line containing s, failing the
// test if it exits first or takes longer than limit.
func (p *proc) waitLog(t testing.TB, s string, limit time.Duration) {
	t.Helper()
	if err := p.waitLogErr(s, limit); err != nil {
		t.Fatal(err)
	}
}

func (p *proc) waitLogErr(s string, limit time.Duration) error {
	_, err := p.nthLine(s, 1, limit)
	return err
}

// nthLine waits until the daemon has printed n lines containing s, and
// returns the nth: a command's effect on the log arrives through a pipe, a
// little after the command returns.
func (p *proc) nthLine(s string, n int, limit time.Duration) (string, error) {
	timer := time.AfterFunc(limit, func() {
		p.mu.Lock()
		p.cond.Broadcast()
		p.mu.Unlock()
	})
	defer timer.Stop()
	deadline := time.Now().Add(limit)
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, seen := 0, 0; ; {
		for ; i < len(p.lines); i++ {
			if strings.Contains(p.lines[i], s) {
				if seen++; seen == n {
					return p.lines[i], nil
				}
			}
		}
		if p.done {
			return "", fmt.Errorf("%s exited (%v) after printing %d of %d lines containing %q:\n%s", p.name, p.err, seen, n, s, p.tail())
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("%s printed %d of %d lines containing %q within %v:\n%s", p.name, seen, n, s, limit, p.tail())
		}
		p.cond.Wait()
	}
}

// output is the daemon's last lines.
func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.tail()
}

// tail is the daemon's last lines; p.mu must be held.
func (p *proc) tail() string {
	from := max(0, len(p.lines)-40)
	return strings.Join(p.lines[from:], "\n")
}

// stop sends sig and waits for the daemon to exit; after limit it kills the
// whole process group.
func (p *proc) stop(sig syscall.Signal, limit time.Duration) error {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	if done {
		return p.err
	}
	p.cmd.Process.Signal(sig)
	exited := make(chan struct{})
	go func() {
		p.mu.Lock()
		for !p.done {
			p.cond.Wait()
		}
		p.mu.Unlock()
		close(exited)
	}()
	select {
	case <-exited:
	case <-time.After(limit):
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}
	return p.err
}

// Env is one node: strata and containerd wired together under Dir.
type Env struct {
	t          testing.TB
	Dir        string
	StrataRoot string
	StrataSock string
	AdminSock  string // strata's operator endpoint
	Sock       string // containerd's
	Strata     *proc
	Containerd *proc
	Buildkit   *proc
	opts       EnvOptions
}

// EnvOptions vary the node's configuration.
type EnvOptions struct {
	// ParallelUnpack advertises strata's rebase capability to containerd
	// and raises the unpack concurrency, so layers unpack in parallel.
	ParallelUnpack bool
	// CRI enables containerd's CRI plugin with strata as its snapshotter.
	CRI bool
	// Unregistered leaves strata out of containerd's config: a node before
	// strata is installed (CRI, if enabled, on its default snapshotter).
	Unregistered bool
	// NoRemapIDs leaves remap-ids out of strata's capabilities, as in a
	// config written before strata had it.
	NoRemapIDs bool
	// Registration, when set, registers strata in containerd's config
	// instead of containerdconfig.Patch: a config text for containerd
	// listing only strata's entries (a README snippet), whose default
	// address and root become this node's.
	Registration string
	// StrataConfig is strata's config file; empty is strata's defaults.
	StrataConfig string
	// Quiet has strata and containerd log at info rather than debug, as
	// on a production node (benchmarks).
	Quiet bool
}

// newEnv starts strata, then containerd, and registers their teardown.
func newEnv(t testing.TB, opts EnvOptions) *Env {
	t.Helper()
	dir, err := os.MkdirTemp("", "si-")
	if err != nil {
		t.Fatal(err)
	}
	e := &Env{
		t:          t,
		Dir:        dir,
		StrataRoot: filepath.Join(dir, "strata"),
		StrataSock: filepath.Join(dir, "strata.sock"),
		AdminSock:  filepath.Join(dir, "admin.sock"),
		Sock:       filepath.Join(dir, "containerd.sock"),
		opts:       opts,
	}
	t.Cleanup(e.teardown)
	// An empty config file: defaults, never the host's /etc/strata.
	if err := os.WriteFile(filepath.Join(dir, "strata.toml"), []byte(opts.StrataConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	e.StartStrata()
	e.startContainerd()
	return e
}

// StartStrata starts strata and waits until it serves: containerd must
// find the socket at start-up, or CRI's start-up sync times out.
func (e *Env) StartStrata() {
	e.t.Helper()
	// Ready as systemd learns it (Type=notify): READY=1 on NOTIFY_SOCKET.
	notify := filepath.Join(e.Dir, "strata.notify")
	ready := testutil.NotifySocket(e.t, notify)
	e.Strata = startProc(e.t, e.Dir, "strata", "env", "NOTIFY_SOCKET="+notify, strataBinary,
		"--root", e.StrataRoot, "--address", e.StrataSock, "--admin-address", e.AdminSock, "--log-level", e.logLevel(),
		"--config", filepath.Join(e.Dir, "strata.toml"))
	select {
	case <-ready:
	case <-e.Strata.exited:
		e.t.Fatalf("strata exited before it was ready:\n%s", e.Strata.output())
	case <-time.After(30 * time.Second):
		e.t.Fatalf("strata not ready within 30s:\n%s", e.Strata.output())
	}
}

func (e *Env) logLevel() string {
	if e.opts.Quiet {
		return "info"
	}
	return "debug"
}

// containerdConfig is this node's containerd config: its own paths and
// sockets, then strata registered by containerdconfig.Patch, exactly as
// `strata-snapshotter containerd-config` writes it (the README's snippets are
// checked against that command by TestReadmeContainerdConfig), so the tests
// run on the wiring users get.
func (e *Env) containerdConfig() string {
	var b strings.Builder
	fmt.Fprintf(&b, `version = 3
root = %q
state = %q
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"%s]

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  level = %q

[plugins."io.containerd.transfer.v1.local"]
  config_path = %q
`, filepath.Join(e.Dir, "containerd"), filepath.Join(e.Dir, "state"), criDisabled(e.opts.CRI), e.Sock, e.Sock+".ttrpc", e.logLevel(), hostsDir)
	if e.opts.ParallelUnpack {
		// containerd unpacks in parallel with rebase (which strata
		// advertises) and more than one concurrent unpack.
		b.WriteString("  max_concurrent_unpacks = 4\n")
	}
	if e.opts.CRI {
		fmt.Fprintf(&b, `
[plugins."io.containerd.cri.v1.images"]
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = %q
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = %q

[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = %q

# runc 1.2+ (tools/runc.sh): user-namespaced pods need its idmapped mounts.
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
    BinaryName = %q
`, hostsDir, pauseImage, filepath.Join(e.Dir, "cni"), filepath.Join(runcBin, "runc"))
	}
	if e.opts.Unregistered {
		return b.String()
	}
	if r := e.opts.Registration; r != "" {
		r = strings.TrimPrefix(r, "version = 3\n")
		r = strings.ReplaceAll(r, `"/run/strata/strata.sock"`, strconv.Quote(e.StrataSock))
		r = strings.ReplaceAll(r, `"/var/lib/strata"`, strconv.Quote(e.StrataRoot))
		return b.String() + "\n" + r
	}
	out, _, err := containerdconfig.Patch([]byte(b.String()), containerdconfig.Options{
		Address:  e.StrataSock,
		Root:     e.StrataRoot,
		CRI:      e.opts.CRI,
		RemapIDs: !e.opts.NoRemapIDs, // as containerd-config decides on this kernel, which has idmapped mounts
	})
	if err != nil {
		e.t.Fatalf("register strata in containerd's config: %v", err)
	}
	return string(out)
}

func criDisabled(enabled bool) string {
	if enabled {
		return ""
	}
	return `, "io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.podsandbox.controller.v1.podsandbox", "io.containerd.sandbox.controller.v1.shim"`
}

func (e *Env) startContainerd() {
	e.t.Helper()
	cfg := filepath.Join(e.Dir, "containerd.toml")
	if err := os.WriteFile(cfg, []byte(e.containerdConfig()), 0o600); err != nil {
		e.t.Fatal(err)
	}
	e.Containerd = startProc(e.t, e.Dir, "containerd", filepath.Join(toolsBin, "containerd"), "--config", cfg)
	e.Containerd.waitLog(e.t, "containerd successfully booted", time.Minute)
}

// run runs a command and returns its standard output, failing the test on
// a non-zero exit.
func (e *Env) run(args ...string) string {
	e.t.Helper()
	out, err := e.try(args...)
	if err != nil {
		e.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// try runs a command and returns its standard output and, on failure, an
// error carrying its standard error.
func (e *Env) try(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = append(os.Environ(), "PATH="+toolsBin+":"+os.Getenv("PATH"))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%w; stderr:\n%s", err, stderr.String())
	}
	return stdout.String(), nil
}

// combined runs a command and returns its standard output and error
// interleaved, for tools that report progress on standard error.
func (e *Env) combined(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = append(os.Environ(), "PATH="+toolsBin+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// ctr runs containerd's ctr against this node.
func (e *Env) ctr(args ...string) string {
	e.t.Helper()
	return e.run(append([]string{filepath.Join(toolsBin, "ctr"), "--address", e.Sock, "--namespace", namespace}, args...)...)
}

func (e *Env) ctrArgs(args ...string) []string {
	return append([]string{filepath.Join(toolsBin, "ctr"), "--address", e.Sock, "--namespace", namespace}, args...)
}

// crictl runs crictl against this node's CRI plugin, as the kubelet talks
// to it.
func (e *Env) crictl(args ...string) string {
	e.t.Helper()
	return e.run(e.crictlArgs(args...)...)
}

func (e *Env) crictlArgs(args ...string) []string {
	return append([]string{filepath.Join(toolsBin, "crictl"),
		"--runtime-endpoint", "unix://" + e.Sock, "--image-endpoint", "unix://" + e.Sock, "--timeout", "60s"}, args...)
}

// writeJSON writes v to name under Dir and returns the path: crictl's pod
// and container configs.
func (e *Env) writeJSON(name string, v any) string {
	e.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		e.t.Fatal(err)
	}
	p := filepath.Join(e.Dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// nerdctl runs nerdctl against this node with strata as its snapshotter.
func (e *Env) nerdctl(args ...string) string {
	e.t.Helper()
	return e.run(e.nerdctlArgs(args...)...)
}

func (e *Env) nerdctlArgs(args ...string) []string {
	return append([]string{filepath.Join(toolsBin, "nerdctl"),
		"--address", e.Sock, "--namespace", namespace, "--snapshotter", "strata",
		"--data-root", filepath.Join(e.Dir, "nerdctl"), "--hosts-dir", hostsDir,
		"--cni-path", "/usr/lib/cni", "--cni-netconfpath", filepath.Join(e.Dir, "cni"),
	}, args...)
}

// collectGarbage runs containerd's garbage collection and waits for it.
// containerd removes a snapshot from strata only when it collects garbage,
// some time after the snapshot was released (nerdctl run, for one, releases
// a temporary view of the image); a synchronous collection makes strata's
// view of the store deterministic. ctr offers one only through an image
// removal, so this removes a throwaway tag of img.
func (e *Env) collectGarbage(img string) {
	e.t.Helper()
	e.ctr("images", "tag", img, "strata-test/gc-trigger:latest")
	e.ctr("images", "rm", "--sync", "strata-test/gc-trigger:latest")
}

// snapshots lists strata's snapshots as ctr shows them: key -> kind.
func (e *Env) snapshots(ns string) map[string]string {
	e.t.Helper()
	out := e.run(filepath.Join(toolsBin, "ctr"), "--address", e.Sock, "--namespace", ns, "snapshots", "--snapshotter", "strata", "ls")
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) >= 2 {
			m[f[0]] = f[len(f)-1]
		}
	}
	return m
}

// What the tests know of strata's on-disk layout (snapshotter/layout.go):
// the directory of layers under the root, the layout's other directories,
// and that a layer being built (tmp-) or deleted in the background (rm-) is
// the only entry there whose name has a dash.
var layoutDirs = []string{"layers", "work", "empty"}

func layersDir(root string) string { return filepath.Join(root, "layers") }

func isLayerName(name string) bool { return !strings.Contains(name, "-") }

// layerDirs lists strata's layer directories, those of recorded snapshots.
func (e *Env) layerDirs() []string {
	e.t.Helper()
	es, err := os.ReadDir(layersDir(e.StrataRoot))
	if err != nil {
		e.t.Fatal(err)
	}
	var names []string
	for _, x := range es {
		if isLayerName(x.Name()) {
			names = append(names, x.Name())
		}
	}
	sort.Strings(names)
	return names
}

// teardown kills containers before containerd, stops containerd, then
// strata, unmounts anything left under Dir and removes it.
func (e *Env) teardown() {
	if e.Containerd != nil {
		for _, ns := range []string{namespace, "k8s.io"} {
			out, _ := e.try(filepath.Join(toolsBin, "ctr"), "--address", e.Sock, "--namespace", ns, "tasks", "ls", "-q")
			for _, id := range strings.Fields(out) {
				e.try(filepath.Join(toolsBin, "ctr"), "--address", e.Sock, "--namespace", ns, "tasks", "kill", "-s", "SIGKILL", id)
				e.try(filepath.Join(toolsBin, "ctr"), "--address", e.Sock, "--namespace", ns, "tasks", "delete", "-f", id)
			}
		}
		e.Containerd.stop(syscall.SIGTERM, 30*time.Second)
	}
	if e.Buildkit != nil {
		e.Buildkit.stop(syscall.SIGTERM, 30*time.Second)
	}
	if e.Strata != nil {
		e.Strata.stop(syscall.SIGTERM, 30*time.Second)
	}
	// Shims outlive containerd by design; they were killed with their
	// tasks above, but make sure none is left holding the directory.
	killShims(e.Dir)
	unmountUnder(e.t, e.Dir)
	if e.t.Failed() {
		logs, _ := filepath.Glob(filepath.Join(e.Dir, "*.log"))
		// STRATA_TEST_LOGS keeps a failed test's whole logs, for CI to save.
		if keep := os.Getenv("STRATA_TEST_LOGS"); keep != "" {
			dst := filepath.Join(keep, strings.ReplaceAll(e.t.Name(), "/", "_"))
			if err := os.MkdirAll(dst, 0o755); err == nil {
				for _, name := range logs {
					if b, err := os.ReadFile(name); err == nil {
						os.WriteFile(filepath.Join(dst, filepath.Base(name)), b, 0o644)
					}
				}
			}
		}
		for _, name := range logs {
			if b, err := os.ReadFile(name); err == nil {
				lines := strings.Split(string(b), "\n")
				e.t.Logf("--- %s (last lines) ---\n%s", filepath.Base(name), strings.Join(lines[max(0, len(lines)-60):], "\n"))
			}
		}
	}
	os.RemoveAll(e.Dir)
}

// killShims kills the containerd-shim processes whose command line names
// dir, and reaps them: the tests run as a child subreaper (see TestMain), so
// shims, which daemonize, are re-parented to the test, not to PID 1, which
// here reaps orphans only every few seconds.
func killShims(dir string) {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte("containerd-shim")) || !bytes.Contains(b, []byte(dir)) {
			continue
		}
		var pid int
		fmt.Sscanf(filepath.Base(filepath.Dir(p)), "%d", &pid)
		syscall.Kill(pid, syscall.SIGKILL)
	}
	reapOrphans()
}

// reapOrphans waits for the exited processes re-parented to the test that
// are not the test's own exec.Cmd children (those are waited on by Cmd).
func reapOrphans() {
	procs, _ := filepath.Glob("/proc/[0-9]*/stat")
	self := os.Getpid()
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// pid (comm) state ppid …; comm may hold spaces, so split after ')'.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		comm := string(b[bytes.IndexByte(b, '(')+1 : i])
		if len(f) < 2 || f[1] != fmt.Sprint(self) || !strings.HasPrefix(comm, "containerd-shim") {
			continue
		}
		var pid int
		fmt.Sscanf(string(b), "%d", &pid)
		var ws syscall.WaitStatus
		syscall.Wait4(pid, &ws, 0, nil)
	}
}

// unmountUnder unmounts every mount at or below dir, deepest first.
func unmountUnder(t testing.TB, dir string) {
	ms, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		t.Errorf("read mounts: %v", err)
		return
	}
	sort.Slice(ms, func(i, j int) bool { return len(ms[i].Mountpoint) > len(ms[j].Mountpoint) })
	for _, m := range ms {
		if err := unix.Unmount(m.Mountpoint, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", m.Mountpoint, err)
		}
	}
}

// freePortErr returns a loopback port nobody listens on.
func freePortErr() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// eventually polls cond until it holds, failing after limit with what it
// last said. For states only a poll can see (a container's exit through
// CRI, a probe passing), as the kubelet polls them too.
func eventually(t *testing.T, limit time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(limit)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", limit, last)
		}
		<-tick.C
	}
}
