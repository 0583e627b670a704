package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// globals are the options every command takes, before or after its name:
// where the config file is, and the settings that override it. Every
// command resolves them the same way (load), so each finds the daemon and
// the store the config names.
type globals struct {
	config, root, address, adminAddress, metricsAddress, logLevel, logFormat setting
}

// setting is a flag's value and whether the command line gave it.
type setting struct {
	value string
	set   bool
	// path: a relative value is made absolute against the working
	// directory, as every command-line tool reads a path; hostPort: a
	// value with a colon is HOST:PORT, not a path.
	path, hostPort bool
}

func (s *setting) String() string { return s.value }

func (s *setting) Set(v string) error {
	if s.path && v != "" && !(s.hostPort && strings.Contains(v, ":")) {
		abs, err := filepath.Abs(v)
		if err != nil {
			return err
		}
		v = abs
	}
	s.value, s.set = v, true
	return nil
}

// isGlobal says whether a flag of that name is a global option, one that
// register adds.
func isGlobal(name string) bool {
	fl := flag.NewFlagSet("", flag.ContinueOnError)
	(&globals{}).register(fl)
	return fl.Lookup(name) != nil
}

// register adds the global options to fl, bound to g, so a value given
// before the subcommand is kept and one after it overrides it.
func (g *globals) register(fl *flag.FlagSet) {
	g.config.path, g.root.path, g.address.path, g.adminAddress.path = true, true, true, true
	g.metricsAddress.path, g.metricsAddress.hostPort = true, true
	if !g.config.set {
		g.config.value = defaultConfigPath
	}
	fl.Var(&g.config, "config", "the config `FILE` (a missing default one is fine; a named one must exist)")
	fl.Var(&g.root, "root", "`DIR` holding snapshots and the index (config key root, default "+defaultRoot+")")
	fl.Var(&g.address, "address", "unix `SOCKET` serving the Snapshots API (config key address, default "+defaultAddress+")")
	fl.Var(&g.adminAddress, "admin-address", "unix `SOCKET` serving the operator's JSON API (config key admin_address, default beside --address: .sock becomes .admin.sock)")
	fl.Var(&g.metricsAddress, "metrics-address", "unix socket or HOST:PORT (`ADDRESS`) for Prometheus /metrics and /healthz (config key metrics_address, default off)")
	fl.Var(&g.logLevel, "log-level", "`LEVEL`: trace, debug, info, warn, error, fatal or panic (config key log_level, default info)")
	fl.Var(&g.logFormat, "log-format", "`FORMAT`: text or json, as containerd's (config key log_format, default text)")
}

// load applies the built-in defaults, then the config file, then the
// options given on the command line, and validates the result.
func (g *globals) load() (Config, error) {
	cfg := defaultConfig()
	path := g.config.value // register's default when not given
	if err := loadFile(&cfg, path, g.config.set); err != nil {
		return Config{}, err
	}
	if g.root.set {
		cfg.Root = g.root.value
	}
	if g.address.set {
		// An address given on the command line takes the daemon off the
		// config file's other sockets: the admin socket goes beside it,
		// and metrics are off, unless they are given too. A second
		// daemon started with only its own --root and --address never
		// collides with the first, which reads the same file.
		cfg.Address, cfg.AdminAddress, cfg.MetricsAddress = g.address.value, "", ""
	}
	if g.adminAddress.set {
		cfg.AdminAddress = g.adminAddress.value
	}
	if g.metricsAddress.set {
		cfg.MetricsAddress = g.metricsAddress.value
	}
	if g.logLevel.set {
		cfg.LogLevel = g.logLevel.value
	}
	if g.logFormat.set {
		cfg.LogFormat = g.logFormat.value
	}
	// validate's errors name the key; say which file set it, unless an
	// option did (each option's help names its key).
	if err := cfg.validate(); err != nil {
		key, _, _ := strings.Cut(err.Error(), ":")
		if !g.setsKey(key) && fileExists(path) {
			return Config{}, fmt.Errorf("config %s: %w", path, err)
		}
		return Config{}, err
	}
	return cfg, nil
}

// setsKey says whether an option given on the command line set the config
// key.
func (g *globals) setsKey(key string) bool {
	return map[string]bool{
		"root": g.root.set, "address": g.address.set, "admin_address": g.adminAddress.set || g.address.set,
		"metrics_address": g.metricsAddress.set, "log_level": g.logLevel.set, "log_format": g.logFormat.set,
	}[key]
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
