package main

import (
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConfigPrecedence: defaults, then the file, then flags.
func TestConfigPrecedence(t *testing.T) {
	p := writeConfig(t, `
root = "/srv/strata"
address = "/srv/strata.sock"
log_level = "debug"
sync_remove = true
sync_on_commit = false
mount_options = ["volatile"]
shutdown_timeout = "3s"
`)
	cfg, _, err := parseConfig([]string{"--config", p, "--root", "/flag/root", "--log-level", "warn", "--admin-address", "/flag/admin.sock"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Root:            "/flag/root",       // flag over file
		Address:         "/srv/strata.sock", // file over default
		AdminAddress:    "/flag/admin.sock", // flag over default
		LogLevel:        "warn",             // flag over file
		SyncRemove:      true,
		MountOptions:    []string{"volatile"},
		ShutdownTimeout: duration{3 * time.Second},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("got %+v\nwant %+v", cfg, want)
	}
	// Unset, the admin socket is beside the address in force.
	cfg, _, err = parseConfig([]string{"--config", p, "--address", "/flag/x.sock"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.AdminAddress != "/flag/x.admin.sock" {
		t.Fatalf("admin address %q, want /flag/x.admin.sock beside --address", cfg.AdminAddress)
	}
	// A config that names an admin socket (as an upgraded host's does)
	// still gives a daemon started with its own --address its own one.
	named := writeConfig(t, `admin_address = "/run/strata/admin.sock"`+"\n")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--config", named}, "/run/strata/admin.sock"},
		{[]string{"--config", named, "--address", "/run/b/strata.sock"}, "/run/b/strata.admin.sock"},
		{[]string{"--config", named, "--address", "/run/b/strata.sock", "--admin-address", "/run/b/a.sock"}, "/run/b/a.sock"},
	} {
		cfg, _, err := parseConfig(tc.args, io.Discard)
		if err != nil || cfg.AdminAddress != tc.want {
			t.Errorf("%v: admin address %q, %v; want %q", tc.args, cfg.AdminAddress, err, tc.want)
		}
	}
}

// TestConfigDefaultFileMayBeMissing: without --config a missing file means
// defaults; a named missing file is an error.
func TestConfigDefaultFileMayBeMissing(t *testing.T) {
	cfg := defaultConfig()
	missing := filepath.Join(t.TempDir(), "none.toml")
	if err := loadFile(&cfg, missing, false); err != nil {
		t.Fatalf("unnamed missing file: %v", err)
	}
	if !reflect.DeepEqual(cfg, defaultConfig()) {
		t.Fatalf("config changed by a missing file: %+v", cfg)
	}
	if _, _, err := parseConfig([]string{"--config", missing}, io.Discard); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("named missing file: got %v, want an error", err)
	}
}

// TestConfigExampleIsTheDefaults: config.toml.example lists every key with
// its default value.
func TestConfigExampleIsTheDefaults(t *testing.T) {
	cfg := Config{}
	if err := loadFile(&cfg, "../../config.toml.example", true); err != nil {
		t.Fatal(err)
	}
	want := defaultConfig()
	want.MountOptions = []string{}
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("config.toml.example gives %+v\ndefaults are %+v", cfg, want)
	}
	b, err := os.ReadFile("../../config.toml.example")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range reflect.VisibleFields(reflect.TypeOf(Config{})) {
		key := f.Tag.Get("toml")
		if !strings.Contains(string(b), "\n"+key+" = ") {
			t.Errorf("config.toml.example does not list %s", key)
		}
	}
}

// TestConfigValidation: each bad value is refused with a message naming its
// key.
func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		flags      []string
		want       string
	}{
		{"relative root flag", "", []string{"--root", "var/lib/strata"}, `root: "var/lib/strata" must be an absolute path`},
		{"relative root file", `root = "x"`, nil, `root: "x" must be an absolute path`},
		{"relative address", `address = "s.sock"`, nil, "address:"},
		{"relative admin address", "", []string{"--admin-address", "admin.sock"}, "admin_address:"},
		{"admin address is the API's", `address = "/run/x.sock"` + "\n" + `admin_address = "/run/x.sock"`, nil, "admin_address: \"/run/x.sock\" is also"},
		{"address too long", `address = "/` + strings.Repeat("a", 120) + `"`, nil, "at most 107"},
		{"unknown key", "root = \"/x\"\nrooot = \"/y\"\n", nil, "unknown key(s) rooot"},
		{"unknown table key", "[extra]\nx = 1\n", nil, "unknown key(s) extra"},
		{"metrics port missing", "", []string{"--metrics-address", "0.0.0.0:"}, "neither a unix socket path nor host:port"},
		{"metrics address garbage", `metrics_address = "nine"`, nil, "metrics_address:"},
		{"bad log level flag", "", []string{"--log-level", "loud"}, `log_level: "loud"`},
		{"bad log level file", `log_level = "verbose"`, nil, `log_level: "verbose"`},
		{"mount option with comma", `mount_options = ["volatile,metacopy=on"]`, nil, "mount_options:"},
		{"mount option sets lowerdir", `mount_options = ["lowerdir=/etc"]`, nil, "strata sets lowerdir itself"},
		{"empty mount option", `mount_options = [""]`, nil, "mount_options: empty option"},
		{"bad duration", `shutdown_timeout = "soon"`, nil, "config"},
		{"wrong type", `sync_remove = "yes"`, nil, "config"},
		{"stray argument", "", []string{"serve"}, `unexpected argument "serve"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"--config", writeConfig(t, tc.file)}, tc.flags...)
			_, _, err := parseConfig(args, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestBadConfigExitsOne: the command prints the problem and exits 1.
func TestBadConfigExitsOne(t *testing.T) {
	var stderr strings.Builder
	code := run([]string{"--config", writeConfig(t, ""), "--root", "relative"}, io.Discard, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "root:") {
		t.Fatalf("exit %d, stderr %q; want 1 and a message naming root", code, stderr.String())
	}
	var stdout strings.Builder
	if code := run([]string{"--version"}, &stdout, io.Discard); code != 0 || !strings.HasPrefix(stdout.String(), "strata-snapshotter ") {
		t.Fatalf("--version: exit %d, output %q", code, stdout.String())
	}
}

// TestBadMountOptionRefusedByKernel: an option that passes the syntax check
// but that the kernel rejects stops the daemon at start, exit 1, instead of
// failing every container's mount later.
func TestBadMountOptionRefusedByKernel(t *testing.T) {
	requireRoot(t)
	cfg := writeConfig(t, `mount_options = ["no_such_overlay_option"]`)
	d := newDaemon(t, t.TempDir(), "--config", cfg)
	if code := d.wait(); code != 1 {
		t.Fatalf("exit code %d, want 1", code)
	}
	if !strings.Contains(d.logs(), "no_such_overlay_option") {
		t.Fatalf("message does not name the option:\n%s", d.logs())
	}
}
