package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPatchedDefaultConfigLoads: containerd's own default config, patched
// by strata-snapshotter containerd-config, is one containerd accepts, and
// containerd reads strata's registration from it.
func TestPatchedDefaultConfigLoads(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.toml")
	e := &Env{t: t}
	def := e.run(filepath.Join(toolsBin, "containerd"), "config", "default")
	if err := os.WriteFile(cfg, []byte(def), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := e.run(strataBinary, "containerd-config", "--file", cfg, "--cri", "--write"); out != "changed\n" {
		t.Fatalf("patch said %q", out)
	}
	dump := e.run(filepath.Join(toolsBin, "containerd"), "--config", cfg, "config", "dump")
	for _, want := range []string{"[proxy_plugins.strata]", "address = '/run/strata/strata.sock'", "capabilities = ['rebase', 'remap-ids']", "root = '/var/lib/strata'", "snapshotter = 'strata'"} {
		if !strings.Contains(dump, want) {
			t.Errorf("containerd's view of the patched config lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("config dump:\n%s", dump)
	}
}
