package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestContainerdConfigWrite: --write patches the file once, reports
// "changed", then "unchanged"; a missing file is created.
func TestContainerdConfigWrite(t *testing.T) {
	file := filepath.Join(t.TempDir(), "containerd", "config.toml")
	for i, want := range []string{"changed\n", "unchanged\n"} {
		var out strings.Builder
		if code := run([]string{"containerd-config", "--file", file, "--cri", "--write"}, &out, io.Discard); code != 0 {
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

// --restart without a containerd listening writes the file and leaves it at
// that; a second run restarts nothing (it is what a DaemonSet's init step
// does on every strata upgrade). The restart itself is exercised against a
// real containerd by TestKubernetesNode (integration/kubernetes_test.go),
// where a real kubelet runs the DaemonSet.
func TestContainerdConfigRestart(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "config.toml")
	args := []string{"containerd-config", "--file", file, "--runtime-handler", "strata", "--write", "--restart",
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
	if code := run([]string{"containerd-config", "--file", file, "--restart"}, io.Discard, &stderr); code != 1 || !strings.Contains(stderr.String(), "--restart needs --write") {
		t.Fatalf("--restart alone: exit %d, %q", code, stderr.String())
	}
}

// TestContainerdConfigRestartsStaleContainerd: with the file already
// patched, --restart leaves alone a containerd that started after the file's
// last change (the rolling-update case), and restarts one that started
// before it (a previous run cut off between writing and restarting). A
// strata daemon stands in for containerd: a process listening on a socket
// that exits on SIGTERM, with no service manager to start it again.
func TestContainerdConfigRestartsStaleContainerd(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "config.toml")
	if code := run([]string{"containerd-config", "--file", file, "--write"}, io.Discard, io.Discard); code != 0 {
		t.Fatalf("patch exited %d", code)
	}
	d := startDaemon(t, t.TempDir())
	args := []string{"containerd-config", "--file", file, "--write", "--restart", "--containerd-address", d.address, "--restart-timeout", "2s"}

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
	case <-d.exited:
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
	if code := d.wait(); code != 0 {
		t.Fatalf("the listener exited %d on SIGTERM, want 0", code)
	}
}

// TestContainerdConfigDefaultSnapshotter: the default-snapshotter mode's
// flags reach the patch, and a bootstrap handler without --cri is refused
// before anything is written.
func TestContainerdConfigDefaultSnapshotter(t *testing.T) {
	file := filepath.Join(t.TempDir(), "config.toml")
	var stderr strings.Builder
	if code := run([]string{"containerd-config", "--file", file, "--runtime-handler", "strata", "--bootstrap-handler", "runc", "--write"}, io.Discard, &stderr); code != 1 || !strings.Contains(stderr.String(), "bootstrap") {
		t.Fatalf("--bootstrap-handler without --cri: exit %d, %q", code, stderr.String())
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Fatalf("a refused run wrote the file: %v", err)
	}
	if code := run([]string{"containerd-config", "--file", file, "--cri", "--runtime-handler", "strata", "--bootstrap-handler", "runc", "--write"}, io.Discard, io.Discard); code != 0 {
		t.Fatalf("exit %d", code)
	}
	b, _ := os.ReadFile(file)
	for _, want := range []string{`default_runtime_name = "strata"`, `runtime_platforms.runc]`, `snapshotter = "overlayfs"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("written config lacks %s:\n%s", want, b)
		}
	}
}
