package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
