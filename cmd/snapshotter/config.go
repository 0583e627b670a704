package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
	"github.com/sirupsen/logrus"
)

// Defaults, also documented in config.toml.example.
const (
	defaultConfigPath = "/etc/strata/config.toml"
	defaultRoot       = "/var/lib/strata"
	defaultAddress    = "/run/strata/strata.sock"
)

// adminAddressFor is the admin socket of the daemon serving address when
// admin_address is not set: beside it, so that daemons given only their own
// --root and --address never share one (as containerd puts its ttrpc socket
// beside its gRPC socket).
func adminAddressFor(address string) string {
	return strings.TrimSuffix(address, ".sock") + ".admin.sock"
}

// Config is the daemon's configuration: built-in defaults, then the TOML
// file, then command-line flags, then validated once.
type Config struct {
	// Root is the directory holding snapshots and the index.
	Root string `toml:"root"`
	// Address is the unix socket serving containerd's Snapshots API.
	Address string `toml:"address"`
	// AdminAddress is the unix socket serving the operator's JSON API;
	// empty means adminAddressFor(Address).
	AdminAddress string `toml:"admin_address"`
	// MetricsAddress serves Prometheus metrics and /healthz: a unix socket
	// path or a host:port; empty is off. Off by default on a host; the
	// DaemonSet listens on the pod's own network, where the cluster's
	// Prometheus scrapes it.
	MetricsAddress string `toml:"metrics_address"`
	// LogLevel is one of trace, debug, info, warn, error, fatal, panic.
	LogLevel string `toml:"log_level"`
	// LogFormat is text or json, as containerd's [debug] format.
	LogFormat string `toml:"log_format"`
	// SyncRemove deletes a removed snapshot's files before Remove returns.
	SyncRemove bool `toml:"sync_remove"`
	// SyncOnCommit flushes a layer's files to disk before Commit returns.
	SyncOnCommit bool `toml:"sync_on_commit"`
	// ShareFiles stores each distinct content of the large files of the
	// layers committed from now on once, in an object store under the
	// root, and leaves metadata-only stubs in the layers (overlayfs
	// data-only lower layers, Linux 6.5).
	ShareFiles bool `toml:"share_files"`
	// MountOptions are added to every overlay mount.
	MountOptions []string `toml:"mount_options"`
	// ShutdownTimeout bounds how long in-flight calls may run after SIGTERM.
	ShutdownTimeout duration `toml:"shutdown_timeout"`
}

// duration is a time.Duration written in TOML as a string such as "10s".
type duration struct{ time.Duration }

func (d *duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

func (d duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

func defaultConfig() Config {
	return Config{
		Root:            defaultRoot,
		Address:         defaultAddress,
		LogLevel:        "info",
		LogFormat:       "text",
		SyncOnCommit:    true,
		ShutdownTimeout: duration{10 * time.Second},
	}
}

// loadFile reads path over cfg. A missing file is an error only when the
// user named it; unknown keys are always an error, naming the key.
func loadFile(cfg *Config, path string, named bool) error {
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist) && !named:
		return nil
	case errors.Is(err, os.ErrPermission):
		return fmt.Errorf("read config: %w: strata's config, store and sockets are root's; run as root", err)
	case err != nil:
		return fmt.Errorf("read config: %w", err)
	}
	dec := toml.NewDecoder(bytes.NewReader(b)).DisallowUnknownFields()
	if err := dec.Decode(cfg); err != nil {
		var strict *toml.StrictMissingError
		if errors.As(err, &strict) {
			var keys []string
			for _, e := range strict.Errors {
				row, _ := e.Position()
				keys = append(keys, fmt.Sprintf("%s (line %d)", strings.Join(e.Key(), "."), row))
			}
			return fmt.Errorf("config %s: unknown key(s) %s", path, strings.Join(keys, ", "))
		}
		var derr *toml.DecodeError
		if errors.As(err, &derr) {
			row, col := derr.Position()
			if key := strings.Join(derr.Key(), "."); key != "" {
				return fmt.Errorf("config %s:%d:%d: %s: %s", path, row, col, key, describeDecodeError(key, derr))
			}
			return fmt.Errorf("config %s:%d:%d: %v", path, row, col, derr)
		}
		return fmt.Errorf("config %s: %w", path, err)
	}
	return nil
}

// validate checks cfg once every source has been applied, and fills in
// the admin address when none was set.
func (c *Config) validate() error {
	if c.Root == "" || !filepath.IsAbs(c.Root) {
		return fmt.Errorf("root: %q must be an absolute path", c.Root)
	}
	if err := validateSocketPath(c.Address); err != nil {
		return fmt.Errorf("address: %w", err)
	}
	if c.AdminAddress == "" {
		c.AdminAddress = adminAddressFor(c.Address)
		if err := validateSocketPath(c.AdminAddress); err != nil {
			return fmt.Errorf("admin_address: unset, so it would be %q beside address, but %w; set it", c.AdminAddress, err)
		}
	} else if err := validateSocketPath(c.AdminAddress); err != nil {
		return fmt.Errorf("admin_address: %w", err)
	}
	if err := validateMetricsAddress(c.MetricsAddress); err != nil {
		return fmt.Errorf("metrics_address: %w", err)
	}
	if c.Address == c.AdminAddress {
		return fmt.Errorf("admin_address: %q is also the Snapshots API's address", c.AdminAddress)
	}
	if c.MetricsAddress == c.Address || c.MetricsAddress == c.AdminAddress {
		return fmt.Errorf("metrics_address: %q is also the address of the Snapshots API or of the admin API", c.MetricsAddress)
	}
	if _, err := logrus.ParseLevel(c.LogLevel); err != nil {
		return fmt.Errorf("log_level: %q is not one of trace, debug, info, warn, error, fatal, panic", c.LogLevel)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return fmt.Errorf("log_format: %q is not text or json", c.LogFormat)
	}
	for _, o := range c.MountOptions {
		if err := validateMountOption(o); err != nil {
			return fmt.Errorf("mount_options: %w", err)
		}
	}
	if c.ShutdownTimeout.Duration < 0 {
		return fmt.Errorf("shutdown_timeout: %v must not be negative", c.ShutdownTimeout)
	}
	return nil
}

// validateMetricsAddress allows a unix socket path or a TCP host:port.
// Metrics carry no secrets and /healthz changes nothing, so any address the
// operator names is allowed; nothing listens unless one is named.
func validateMetricsAddress(addr string) error {
	if addr == "" || strings.HasPrefix(addr, "/") {
		if addr == "" {
			return nil
		}
		return validateSocketPath(addr)
	}
	if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
		return fmt.Errorf("%q is neither a unix socket path nor host:port", addr)
	}
	return nil
}

func validateSocketPath(path string) error {
	if path == "" || !filepath.IsAbs(path) {
		return fmt.Errorf("%q must be an absolute path to a unix socket", path)
	}
	// sun_path holds 108 bytes including the terminating NUL.
	if len(path) > 107 {
		return fmt.Errorf("%q is %d bytes; a unix socket path must be at most 107", path, len(path))
	}
	return nil
}

// validateMountOption refuses options that cannot be passed on: empty ones,
// ones that would split into several, and the directories strata sets itself.
// Whether the kernel accepts an option is checked at start by a probe mount.
func validateMountOption(o string) error {
	if o == "" {
		return errors.New("empty option")
	}
	if strings.ContainsAny(o, ", \t\n\x00") {
		return fmt.Errorf("%q: an option must not contain commas, spaces or NUL", o)
	}
	key, _, _ := strings.Cut(o, "=")
	switch key {
	case "lowerdir", "upperdir", "workdir", "datadir", "lowerdir+":
		return fmt.Errorf("%q: strata sets %s itself", o, key)
	}
	return nil
}

// describeDecodeError says what a key's value should be, in TOML's terms
// rather than the Go field's the decoder names.
func describeDecodeError(key string, err error) string {
	want := map[string]string{
		"root": "a string (an absolute path)", "address": "a string (a socket path)",
		"admin_address": "a string (a socket path)", "metrics_address": "a string (a socket path or HOST:PORT)",
		"log_level": "a string", "log_format": "a string", "sync_remove": "true or false",
		"sync_on_commit": "true or false", "share_files": "true or false", "mount_options": "a list of strings",
		"shutdown_timeout": `a duration string such as "10s"`,
	}[key]
	msg := strings.TrimPrefix(err.Error(), "toml: ")
	if !strings.Contains(msg, "struct field") {
		// The value's own error (a bad duration), not a wrong type.
		return fmt.Sprintf("%s (want %s)", msg, want)
	}
	if want == "" {
		return err.Error()
	}
	return "wrong type, want " + want
}
