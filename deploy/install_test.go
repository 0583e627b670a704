// Package deploy holds how strata is installed on a host (systemd) and on a
// cluster (kubernetes/); its tests check those files.
package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func runMake(t *testing.T, destdir string, target string) {
	t.Helper()
	out, err := exec.Command("make", "-C", "..", target, "DESTDIR="+destdir).CombinedOutput()
	if err != nil {
		t.Fatalf("make %s: %v\n%s", target, err, out)
	}
}

// TestInstallUninstall: make install puts the binary, the unit and the
// example config in place without overwriting an existing config; make
// uninstall removes what install added and keeps an edited config.
func TestInstallUninstall(t *testing.T) {
	dest := t.TempDir()
	runMake(t, dest, "install")
	bin := filepath.Join(dest, "usr/local/bin/strata-snapshotter")
	unit := filepath.Join(dest, "etc/systemd/system/strata.service")
	cfg := filepath.Join(dest, "etc/strata/config.toml")
	if out, err := exec.Command(bin, "--version").Output(); err != nil || !strings.HasPrefix(string(out), "strata-snapshotter ") {
		t.Fatalf("installed binary: %q, %v", out, err)
	}
	u, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Type=notify", "Before=containerd.service", "Restart=always", "ExecStart=/usr/local/bin/strata-snapshotter --config /etc/strata/config.toml"} {
		if !strings.Contains(string(u), want+"\n") {
			t.Errorf("unit lacks %q", want)
		}
	}
	example, _ := os.ReadFile("../config.toml.example")
	if got, _ := os.ReadFile(cfg); string(got) != string(example) {
		t.Fatal("config not installed from config.toml.example")
	}

	// An edited config survives another install and the uninstall.
	edited := append(example, []byte("\n# mine\n")...)
	os.WriteFile(cfg, edited, 0o600)
	runMake(t, dest, "install")
	runMake(t, dest, "uninstall")
	for _, p := range []string{bin, unit} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left after uninstall", p)
		}
	}
	if got, _ := os.ReadFile(cfg); string(got) != string(edited) {
		t.Fatal("uninstall removed or changed an edited config")
	}

	// An untouched config goes with the uninstall, even one an older
	// version installed from its own example.
	dest = t.TempDir()
	cfg = filepath.Join(dest, "etc/strata/config.toml")
	runMake(t, dest, "install")
	older := []byte("# an older version's example\nroot = \"/var/lib/strata\"\n")
	os.WriteFile(cfg, older, 0o600)
	os.WriteFile(filepath.Join(dest, "usr/local/share/strata/config.toml.installed"), older, 0o644)
	runMake(t, dest, "uninstall")
	if _, err := os.Stat(cfg); !os.IsNotExist(err) {
		t.Fatal("uninstall kept the config an older install added")
	}
	if _, err := os.Stat(filepath.Join(dest, "usr/local/share/strata")); !os.IsNotExist(err) {
		t.Fatal("uninstall left strata's share directory")
	}
}
