// Package integration tests strata the way users reach it: through a real
// containerd driven by ctr, nerdctl, BuildKit and CRI (crictl), with images
// from a real registry on 127.0.0.1. It needs root; the tools are built by
// tools/install.sh (cached after the first run).
package integration

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var (
	toolsBin     string // containerd, ctr, nerdctl, crictl, buildkitd, registry …
	strataBinary string
	registry     string // host:port of the test registry
	hostsDir     string // containerd hosts.toml directory: the registry is plain HTTP
	pauseImage   string
	runcBin      string // runc 1.2+, for user namespaces with idmapped mounts
)

func TestMain(m *testing.M) {
	os.Exit(mainWithCleanup(m))
}

func mainWithCleanup(m *testing.M) int {
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Println("integration: skipped, requires root")
		return 0
	}
	if testing.Short() {
		fmt.Println("integration: skipped by -short")
		return 0
	}
	// Become the reaper of orphaned descendants: containerd's shims
	// daemonize, and would otherwise wait for PID 1 to reap them.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "become subreaper:", err)
		return 1
	}
	defer reapAll()
	// containerd's shims and runc keep state under fixed host paths
	// (/run/containerd/s, fifo, runc/<namespace>) whatever containerd's
	// own state directory: remove what the tests made there, if they made
	// the directory, once it is empty of everything but directories.
	if _, err := os.Stat(containerdRun); errors.Is(err, os.ErrNotExist) {
		defer removeEmptyDirs(containerdRun)
	}
	work, err := os.MkdirTemp("", "strata-it-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(work)

	if toolsBin, err = installTools("./tools/install.sh"); err != nil {
		fmt.Fprintln(os.Stderr, "install tools:", err)
		return 1
	}
	if kubeBin, err = installTools("./tools/kubernetes.sh"); err != nil {
		fmt.Fprintln(os.Stderr, "install kubernetes:", err)
		return 1
	}
	if runcBin, err = installTools("./tools/runc.sh"); err != nil {
		fmt.Fprintln(os.Stderr, "install runc:", err)
		return 1
	}
	strataBinary = filepath.Join(work, "strata-snapshotter")
	if out, err := exec.Command("go", "build", "-o", strataBinary, "../cmd/snapshotter").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build strata: %v\n%s", err, out)
		return 1
	}
	reg, err := startRegistry(work)
	if err != nil {
		fmt.Fprintln(os.Stderr, "registry:", err)
		return 1
	}
	defer reg.stop(syscall.SIGTERM, 10*time.Second)
	if err := pushTestImages(); err != nil {
		fmt.Fprintln(os.Stderr, "push test images:", err)
		return 1
	}
	return m.Run()
}

// containerdRun is where containerd's shims and runc keep their state.
const containerdRun = "/run/containerd"

// removeEmptyDirs removes dir and the directories under it, bottom up, if
// they hold nothing else: a file anywhere keeps it and its parents.
func removeEmptyDirs(dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if e.IsDir() {
			removeEmptyDirs(filepath.Join(dir, e.Name()))
		}
	}
	os.Remove(dir) // fails, harmlessly, unless empty
}

// installTools runs an installer under tools/, which builds the pinned tools
// once and prints their directory.
func installTools(script string) (string, error) {
	cmd := exec.Command(script)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", err
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1], nil
}

// startRegistry runs distribution's registry on a free loopback port, and
// writes the hosts.toml that tells containerd, ctr and nerdctl it is plain
// HTTP.
func startRegistry(work string) (*proc, error) {
	port, err := freePortErr()
	if err != nil {
		return nil, err
	}
	registry = fmt.Sprintf("127.0.0.1:%d", port)
	cfg := filepath.Join(work, "registry.yml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
`, filepath.Join(work, "registry"), registry)), 0o600); err != nil {
		return nil, err
	}
	hostsDir = filepath.Join(work, "hosts")
	if err := os.MkdirAll(filepath.Join(hostsDir, registry), 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(hostsDir, registry, "hosts.toml"), []byte(fmt.Sprintf(`server = "http://%s"

[host."http://%s"]
  capabilities = ["pull", "resolve", "push"]
  skip_verify = true
`, registry, registry)), 0o644); err != nil {
		return nil, err
	}
	p, err := startProcErr(work, "registry", filepath.Join(toolsBin, "registry"), "serve", cfg)
	if err != nil {
		return nil, err
	}
	if err := p.waitLogErr("listening on", 30*time.Second); err != nil {
		return nil, err
	}
	return p, nil
}

// reapAll kills and reaps whatever descendant is left once every test is
// done (a shim's helper re-parented to the test, say), so nothing is left
// for PID 1.
func reapAll() {
	procs, _ := filepath.Glob("/proc/[0-9]*/stat")
	self := fmt.Sprint(os.Getpid())
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		i := strings.LastIndexByte(string(b), ')')
		if f := strings.Fields(string(b[i+1:])); i > 0 && len(f) > 1 && f[1] == self {
			var pid int
			fmt.Sscanf(string(b), "%d", &pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	for {
		var ws syscall.WaitStatus
		if _, err := syscall.Wait4(-1, &ws, 0, nil); err != nil {
			return // ECHILD: none left
		}
	}
}
