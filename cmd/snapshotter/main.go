// Command strata-snapshotter serves containerd's Snapshots API for the strata
// overlayfs snapshotter on a unix socket, for containerd to load as
//
//	[proxy_plugins.strata]
//	  type = "snapshot"
//	  address = "/run/strata/strata.sock"
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	"github.com/containerd/log"
)

// version is set at build time by the Makefile (-ldflags -X main.version=...).
var version = ""

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is the whole command; it returns the process's exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		if cmd, ok := subcommands[args[0]]; ok {
			return runSubcommand(args[0], cmd, args[1:], stdout, stderr)
		}
		switch args[0] {
		case "fsck":
			return runFsck(args[1:], stdout, stderr)
		case "containerd-config":
			return runContainerdConfig(args[1:], stdout, stderr)
		case "health":
			return runHealth(args[1:], stdout, stderr)
		}
	}
	cfg, showVersion, err := parseConfig(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "strata-snapshotter: %v\n", err)
		return 1
	}
	if showVersion {
		fmt.Fprintf(stdout, "strata-snapshotter %s\n", buildVersion())
		return 0
	}
	if err := log.SetLevel(cfg.LogLevel); err != nil {
		fmt.Fprintf(stderr, "strata-snapshotter: log_level: %v\n", err)
		return 1
	}
	log.L.Logger.SetOutput(stderr)
	if err := serve(context.Background(), cfg); err != nil {
		log.L.WithError(err).Error("strata-snapshotter failed")
		return 1
	}
	return 0
}

// parseConfig applies the built-in defaults, then the config file, then the
// flags given on the command line, and validates the result.
func parseConfig(args []string, stderr io.Writer) (Config, bool, error) {
	fl := flag.NewFlagSet("strata-snapshotter", flag.ContinueOnError)
	fl.SetOutput(stderr)
	var (
		configPath  = fl.String("config", defaultConfigPath, "path to the TOML config file")
		root        = fl.String("root", "", "directory holding snapshots and the index (default "+defaultRoot+")")
		address     = fl.String("address", "", "unix socket to serve the Snapshots API on (default "+defaultAddress+")")
		admin       = fl.String("admin-address", "", "unix socket to serve the operator's JSON API on (default: beside --address, ADDRESS.admin.sock)")
		metricsAddr = fl.String("metrics-address", "", "unix socket or 127.0.0.1:PORT for Prometheus metrics and /healthz (default off)")
		logLevel    = fl.String("log-level", "", "log level: trace, debug, info, warn, error (default info)")
		showVersion = fl.Bool("version", false, "print the version and exit")
	)
	if err := fl.Parse(args); err != nil {
		return Config{}, false, err
	}
	if fl.NArg() > 0 {
		return Config{}, false, fmt.Errorf("unexpected argument %q (subcommands: ls, tree, inspect, du, fsck, containerd-config, health)", fl.Arg(0))
	}
	if *showVersion {
		return Config{}, true, nil
	}
	set := setFlags(fl)

	cfg := defaultConfig()
	if err := loadFile(&cfg, *configPath, set["config"]); err != nil {
		return Config{}, false, err
	}
	if set["root"] {
		cfg.Root = *root
	}
	if set["address"] {
		// The admin socket goes with the address given on the command
		// line (beside it) unless it is given too: a second daemon
		// started with its own --address never takes the admin socket a
		// config file names for the first.
		cfg.Address, cfg.AdminAddress = *address, ""
	}
	if set["admin-address"] {
		cfg.AdminAddress = *admin
	}
	if set["metrics-address"] {
		cfg.MetricsAddress = *metricsAddr
	}
	if set["log-level"] {
		cfg.LogLevel = *logLevel
	}
	if err := cfg.validate(); err != nil {
		return Config{}, false, err
	}
	return cfg, false, nil
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}
