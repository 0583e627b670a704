package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/strata-snapshotter/strata/containerdproc"
	"github.com/strata-snapshotter/strata/internal/testutil"
)

// TestContainerdConfigWrite: --write patches the file once, reports
// "changed", then "unchanged"; with --create a missing file is started.
func TestContainerdConfigWrite(t *testing.T) {
	file := filepath.Join(t.TempDir(), "config.toml")
	for i, want := range []string{"changed\n", "unchanged\n"} {
		var out strings.Builder
		if code := run([]string{"containerd-config", "--create", "--file", file, "--cri", "--write"}, &out, io.Discard); code != 0 {
			t.Fatalf("run %d exited %d", i, code)
		}
		if out.String() != want {
			t.Fatalf("run %d said %q, want %q", i, out.String(), want)
		}
	}
	b, err := os.ReadFile(file)
	if err != nil || !strings.Contains(string(b), "[proxy_plugins.strata]") || !strings.Contains(string(b), `snapshotter = "strata"`) {
		t.Fatalf("written config: %v\n%s", err, b)
	}
	var stderr strings.Builder
	os.WriteFile(file, []byte("version = 1\n"), 0o644)
	if code := run([]string{"containerd-config", "--file", file}, io.Discard, &stderr); code != 1 || !strings.Contains(stderr.String(), "versions 2, 3 and 4") {
		t.Fatalf("version 1: exit %d, %q", code, stderr.String())
	}
}

// TestContainerdConfigShareFiles: with share_files on in strata's config,
// registering strata for containerd's CRI plugin (--cri, --runtime-handler)
// is refused, saying why, and the file is left alone; registering it for
// ctr, nerdctl and BuildKit is not.
func TestContainerdConfigShareFiles(t *testing.T) {
	dir := t.TempDir()
	strataConfig := filepath.Join(dir, "strata.toml")
	if err := os.WriteFile(strataConfig, []byte("share_files = true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "config.toml")
	for _, args := range [][]string{{"--cri"}, {"--runtime-handler", "strata"}} {
		var stderr strings.Builder
		full := append([]string{"containerd-config", "--config", strataConfig, "--create", "--file", file, "--write"}, args...)
		if code := run(full, io.Discard, &stderr); code != 1 || !strings.Contains(stderr.String(), "share_files is on") || !strings.Contains(stderr.String(), "CRI") {
			t.Fatalf("%v with share_files: exit %d, %q", args, code, stderr.String())
		}
		if _, err := os.Stat(file); !os.IsNotExist(err) {
			t.Fatalf("%v with share_files wrote %s (%v)", args, file, err)
		}
	}
	if code := run([]string{"containerd-config", "--config", strataConfig, "--create", "--file", file, "--write"}, io.Discard, io.Discard); code != 0 {
		t.Fatalf("registering strata without CRI, with share_files: exit %d", code)
	}
}

// --restart without a containerd listening writes the file and leaves it at
// that; a second run restarts nothing (it is what a DaemonSet's init step
// does on every strata upgrade). The restart itself is exercised against a
// real containerd by TestKubernetesNode (integration/kubernetes_test.go),
// where a real kubelet runs the DaemonSet.
func TestContainerdConfigRestart(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "config.toml")
	args := []string{"containerd-config", "--create", "--file", file, "--runtime-handler", "strata", "--write", "--restart",
		"--containerd-address", filepath.Join(dir, "containerd.sock")}
	for i, want := range []string{"changed\n", "unchanged\n"} {
		var out, stderr strings.Builder
		if code := run(args, &out, &stderr); code != 0 || out.String() != want {
			t.Fatalf("run %d: exit %d, %q (want %q); %s", i, code, out.String(), want, stderr.String())
		}
	}
	b, _ := os.ReadFile(file)
	if !strings.Contains(string(b), `[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.strata]`) {
		t.Fatalf("no runtime handler:\n%s", b)
	}
	var stderr strings.Builder
	if code := run([]string{"containerd-config", "--file", file, "--restart"}, io.Discard, &stderr); code != 2 || !strings.Contains(stderr.String(), "--restart needs --write") {
		t.Fatalf("--restart alone: exit %d, %q", code, stderr.String())
	}
}

// TestContainerdConfigRestartsStaleContainerd: with the file already
// patched, --restart leaves alone a containerd that started after the file's
// last change (the rolling-update case), and restarts one that started
// before it (a previous run cut off between writing and restarting). A
// stand-in containerd reads the file (its --config) and exits on SIGTERM,
// with no service manager to start it again.
func TestContainerdConfigRestartsStaleContainerd(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "config.toml")
	if code := run([]string{"containerd-config", "--create", "--file", file, "--write"}, io.Discard, io.Discard); code != 0 {
		t.Fatalf("patch exited %d", code)
	}
	c := startFakeContainerd(t, file, false)
	args := []string{"containerd-config", "--file", file, "--write", "--restart", "--containerd-address", c.socket, "--restart-timeout", "2s"}

	// Written long before the listener started: nothing to do.
	hourAgo := time.Now().Add(-time.Hour)
	if err := os.Chtimes(file, hourAgo, hourAgo); err != nil {
		t.Fatal(err)
	}
	var out, stderr strings.Builder
	if code := run(args, &out, &stderr); code != 0 || out.String() != "unchanged\n" {
		t.Fatalf("config older than containerd: exit %d, %q %q", code, out.String(), stderr.String())
	}
	select {
	case <-c.exited:
		t.Fatal("the listener was stopped though it had read the config")
	default:
	}

	// Changed after the listener started: it gets SIGTERM, and since
	// nothing starts it again, the command says so.
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(file, later, later); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	stderr.Reset()
	code := run(args, &out, &stderr)
	if code != 1 || !strings.Contains(out.String(), "before the config's last change") || !strings.Contains(stderr.String(), "service manager") {
		t.Fatalf("config newer than containerd: exit %d, %q %q", code, out.String(), stderr.String())
	}
	<-c.exited
}

// TestContainerdConfigSafety: every reason not to touch containerd's config
// or containerd is found before anything changes, and said: a --file that
// does not exist (a typo), --create into a missing directory, --restart of a
// containerd that reads another file, or of one nothing would start again
// (run from a shell). A change keeps the original beside the file.
func TestContainerdConfigSafety(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "config.toml")
	original := "version = 3\n# the operator's comment\n"
	if err := os.WriteFile(file, []byte(original), 0o600); err != nil {
		t.Fatal(err)
	}
	unchanged := func(what string) {
		t.Helper()
		b, err := os.ReadFile(file)
		if err != nil || string(b) != original {
			t.Fatalf("%s: the file changed: %v %q", what, err, b)
		}
		entries, _ := os.ReadDir(dir)
		if len(entries) != 1 {
			t.Fatalf("%s: left %d entries in the directory, want only the file", what, len(entries))
		}
	}
	refused := func(what, want string, args ...string) {
		t.Helper()
		var out, stderr strings.Builder
		if code := run(append([]string{"containerd-config"}, args...), &out, &stderr); code != 1 || !strings.Contains(stderr.String(), want) || out.Len() != 0 {
			t.Fatalf("%s: exit %d, stdout %q, stderr %q; want 1 and %q", what, code, out.String(), stderr.String(), want)
		}
		unchanged(what)
	}

	refused("mistyped --file", "does not exist: check --file, or pass --create", "--file", filepath.Join(dir, "conifg.toml"), "--write")
	refused("--create in a missing directory", "must be an existing directory", "--create", "--file", filepath.Join(dir, "etc", "containerd", "config.toml"), "--write")

	elsewhere := filepath.Join(t.TempDir(), "config.toml")
	other := startFakeContainerd(t, elsewhere, false)
	refused("containerd reading another file", "reads "+elsewhere+", not "+file, "--file", file, "--write", "--restart", "--containerd-address", other.socket)

	shell := startFakeContainerd(t, file, true)
	refused("containerd under a shell", "runs under sh (pid", "--file", file, "--write", "--restart", "--containerd-address", shell.socket)
	for _, c := range []*fakeContainerd{other, shell} {
		select {
		case <-c.exited:
			t.Fatal("a refused --restart stopped containerd")
		default:
		}
	}

	// A change keeps the original, with its mode.
	var out, stderr strings.Builder
	if code := run([]string{"containerd-config", "--file", file, "--write"}, &out, &stderr); code != 0 || out.String() != "changed\n" {
		t.Fatalf("write: exit %d, %q %q", code, out.String(), stderr.String())
	}
	backups, _ := filepath.Glob(file + ".strata-backup-*")
	if len(backups) != 1 || !strings.Contains(stderr.String(), "kept the original as "+backups[0]) {
		t.Fatalf("backups %v, stderr %q; want one, named", backups, stderr.String())
	}
	b, _ := os.ReadFile(backups[0])
	fi, _ := os.Stat(file)
	if string(b) != original || fi.Mode().Perm() != 0o600 {
		t.Fatalf("backup holds %q, the file's mode is %v; want the original and 0600", b, fi.Mode().Perm())
	}
	// A second change at once keeps its own backup: the original's stays.
	if code := run([]string{"containerd-config", "--file", file, "--cri", "--write"}, io.Discard, io.Discard); code != 0 {
		t.Fatalf("second write: exit %d", code)
	}
	if b, _ := os.ReadFile(backups[0]); string(b) != original {
		t.Fatalf("the second change replaced the original's backup: %q", b)
	}
	if all, _ := filepath.Glob(file + ".strata-backup-*"); len(all) != 2 {
		t.Fatalf("backups after two changes: %v", all)
	}

	// A containerd that nothing would restart is no reason to refuse when
	// no restart is called for: it started after the file's last change.
	past := time.Now().Add(-time.Hour)
	if err := os.Chtimes(file, past, past); err != nil {
		t.Fatal(err)
	}
	later := startFakeContainerd(t, file, true)
	out.Reset()
	stderr.Reset()
	if code := run([]string{"containerd-config", "--file", file, "--cri", "--write", "--restart", "--containerd-address", later.socket}, &out, &stderr); code != 0 || out.String() != "unchanged\n" {
		t.Fatalf("nothing to restart: exit %d, %q %q", code, out.String(), stderr.String())
	}
}

// fakeContainerdEnv makes the test binary a stand-in for containerd:
// listening on the socket the variable names, its command line naming its
// config file, until SIGTERM.
const fakeContainerdEnv = "STRATA_TEST_FAKE_CONTAINERD"

func fakeContainerdMain(socket string) int {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM)
	l, err := net.Listen("unix", socket)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer l.Close()
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	fmt.Println("listening")
	<-signals
	return 0
}

type fakeContainerd struct {
	socket string
	exited chan struct{}
}

// startFakeContainerd starts a stand-in containerd reading config (from a
// shell that stays its parent, if viaShell) and waits until it listens.
func startFakeContainerd(t *testing.T, config string, viaShell bool) *fakeContainerd {
	t.Helper()
	c := &fakeContainerd{socket: filepath.Join(testutil.ShortDir(t), "containerd.sock"), exited: make(chan struct{})}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "--config", config)
	if viaShell {
		// "; true" keeps sh as the parent rather than exec'ing.
		cmd = exec.Command("sh", "-c", `"$0" --config "$1"; true`, self, config)
	}
	cmd.Env = append(os.Environ(), fakeContainerdEnv+"="+c.socket)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		io.Copy(io.Discard, stdout)
		cmd.Wait()
		close(c.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-c.exited:
			return
		default:
		}
		if pid, err := containerdproc.ServerPID(context.Background(), c.socket); err == nil {
			syscall.Kill(pid, syscall.SIGTERM)
		}
		<-c.exited
	})
	// Ready when it answers on the socket; it says so before that.
	for {
		if _, err := containerdproc.ServerPID(context.Background(), c.socket); err == nil {
			return c
		}
		select {
		case <-c.exited:
			t.Fatal("the stand-in containerd exited before listening")
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// TestContainerdConfigDefaultSnapshotter: the default-snapshotter mode's
// flags reach the patch, and a bootstrap handler without --cri is refused
// before anything is written.
func TestContainerdConfigDefaultSnapshotter(t *testing.T) {
	file := filepath.Join(t.TempDir(), "config.toml")
	var stderr strings.Builder
	if code := run([]string{"containerd-config", "--create", "--file", file, "--runtime-handler", "strata", "--bootstrap-handler", "runc", "--write"}, io.Discard, &stderr); code != 1 || !strings.Contains(stderr.String(), "bootstrap") {
		t.Fatalf("--bootstrap-handler without --cri: exit %d, %q", code, stderr.String())
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Fatalf("a refused run wrote the file: %v", err)
	}
	if code := run([]string{"containerd-config", "--create", "--file", file, "--cri", "--runtime-handler", "strata", "--bootstrap-handler", "runc", "--write"}, io.Discard, io.Discard); code != 0 {
		t.Fatalf("exit %d", code)
	}
	b, _ := os.ReadFile(file)
	for _, want := range []string{`default_runtime_name = "strata"`, `runtime_platforms.runc]`, `snapshotter = "overlayfs"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("written config lacks %s:\n%s", want, b)
		}
	}
}
