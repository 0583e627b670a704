package main

import (
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/strata-snapshotter/strata/internal/testutil"
)

// parseConfig resolves the daemon's settings from command-line arguments,
// as run does before serving.
func parseConfig(args []string) (Config, error) {
	var g globals
	fl := newFlagSet("strata-snapshotter", io.Discard, io.Discard)
	g.register(fl)
	if err := fl.Parse(args); err != nil {
		return Config{}, err
	}
	return g.load()
}

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
	cfg, err := parseConfig([]string{"--config", p, "--root", "/flag/root", "--log-level", "warn", "--admin-address", "/flag/admin.sock"})
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Root:            "/flag/root",       // flag over file
		Address:         "/srv/strata.sock", // file over default
		AdminAddress:    "/flag/admin.sock", // flag over default
		LogLevel:        "warn",             // flag over file
		LogFormat:       "text",
		SyncRemove:      true,
		MountOptions:    []string{"volatile"},
		ShutdownTimeout: duration{3 * time.Second},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("got %+v\nwant %+v", cfg, want)
	}
	// Unset, the admin socket is beside the address in force.
	cfg, err = parseConfig([]string{"--config", p, "--address", "/flag/x.sock"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.AdminAddress != "/flag/x.admin.sock" {
		t.Fatalf("admin address %q, want /flag/x.admin.sock beside --address", cfg.AdminAddress)
	}
	// --address takes the daemon off the file's metrics address too,
	// unless --metrics-address is given.
	withMetrics := writeConfig(t, `metrics_address = "127.0.0.1:9477"`+"\n")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--config", withMetrics}, "127.0.0.1:9477"},
		{[]string{"--config", withMetrics, "--address", "/run/b/strata.sock"}, ""},
		{[]string{"--config", withMetrics, "--address", "/run/b/strata.sock", "--metrics-address", "/run/b/metrics.sock"}, "/run/b/metrics.sock"},
	} {
		cfg, err := parseConfig(tc.args)
		if err != nil || cfg.MetricsAddress != tc.want {
			t.Errorf("%v: metrics address %q, %v; want %q", tc.args, cfg.MetricsAddress, err, tc.want)
		}
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
		cfg, err := parseConfig(tc.args)
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
	if _, err := parseConfig([]string{"--config", missing}); err == nil || !strings.Contains(err.Error(), "no such file") {
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
		{"relative root file", `root = "x"`, nil, `root: "x" must be an absolute path`},
		{"relative address", `address = "s.sock"`, nil, "address:"},
		{"relative admin address", `admin_address = "admin.sock"`, nil, "admin_address:"},
		{"admin address is the API's", `address = "/run/x.sock"` + "\n" + `admin_address = "/run/x.sock"`, nil, "admin_address: \"/run/x.sock\" is also"},
		{"address too long", `address = "/` + strings.Repeat("a", 120) + `"`, nil, "at most 107"},
		{"unknown key", "root = \"/x\"\nrooot = \"/y\"\n", nil, "unknown key(s) rooot (line 2)"},
		{"unknown table key", "[extra]\nx = 1\n", nil, "unknown key(s) extra"},
		{"metrics port missing", "", []string{"--metrics-address", "0.0.0.0:"}, "neither a unix socket path nor host:port"},
		{"metrics address garbage", `metrics_address = "nine"`, nil, "metrics_address:"},
		{"bad log level flag", "", []string{"--log-level", "loud"}, `log_level: "loud"`},
		{"bad log level file", `log_level = "verbose"`, nil, `log_level: "verbose"`},
		{"mount option with comma", `mount_options = ["volatile,metacopy=on"]`, nil, "mount_options:"},
		{"mount option sets lowerdir", `mount_options = ["lowerdir=/etc"]`, nil, "strata sets lowerdir itself"},
		{"empty mount option", `mount_options = [""]`, nil, "mount_options: empty option"},
		{"bad duration", `shutdown_timeout = "soon"`, nil, `shutdown_timeout: time: invalid duration "soon" (want a duration string such as "10s")`},
		{"wrong type", `sync_remove = "yes"`, nil, "sync_remove: wrong type, want true or false"},
		{"wrong type list", `mount_options = "volatile"`, nil, "mount_options: wrong type, want a list of strings"},
		{"bad log format", `log_format = "xml"`, nil, `log_format: "xml" is not text or json`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"--config", writeConfig(t, tc.file)}, tc.flags...)
			_, err := parseConfig(args)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestConfigRelativeFlags: a relative path on the command line is taken
// against the working directory, as every command-line tool reads one; in
// the config file, which has no such directory, it is refused (above).
func TestConfigRelativeFlags(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := parseConfig([]string{"--config", writeConfig(t, ""), "--root", "var/lib/strata", "--address", "s/strata.sock"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Root != filepath.Join(wd, "var/lib/strata") || cfg.Address != filepath.Join(wd, "s/strata.sock") || cfg.AdminAddress != filepath.Join(wd, "s/strata.admin.sock") {
		t.Fatalf("relative flags resolved to root %q, address %q, admin %q", cfg.Root, cfg.Address, cfg.AdminAddress)
	}
	// A metrics socket is a path too; HOST:PORT is not.
	for arg, want := range map[string]string{"m.sock": filepath.Join(wd, "m.sock"), "127.0.0.1:9477": "127.0.0.1:9477"} {
		cfg, err := parseConfig([]string{"--config", writeConfig(t, ""), "--metrics-address", arg})
		if err != nil || cfg.MetricsAddress != want {
			t.Errorf("--metrics-address %s: %q, %v; want %q", arg, cfg.MetricsAddress, err, want)
		}
	}
}

// TestBadConfigExitsOne: the command prints the problem and exits 1.
func TestBadConfigExitsOne(t *testing.T) {
	var stderr strings.Builder
	cfg := writeConfig(t, `root = "relative"`)
	code := run([]string{"--config", cfg}, io.Discard, &stderr)
	if code != 1 || strings.Count(stderr.String(), "root:") != 1 || !strings.Contains(stderr.String(), "config "+cfg+": root:") {
		t.Fatalf("exit %d, stderr %q; want 1 and one message naming the file and root", code, stderr.String())
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
	testutil.RequiresRoot(t)
	cfg := writeConfig(t, `mount_options = ["no_such_overlay_option"]`)
	d := newDaemon(t, t.TempDir(), "--config", cfg)
	if code := d.wait(); code != 1 {
		t.Fatalf("exit code %d, want 1", code)
	}
	if !strings.Contains(d.logs(), "no_such_overlay_option") {
		t.Fatalf("message does not name the option:\n%s", d.logs())
	}
}
