// Command strata-snapshotter serves containerd's Snapshots API for the strata
// overlayfs snapshotter on a unix socket, for containerd to load as
//
//	[proxy_plugins.strata]
//	  type = "snapshot"
//	  address = "/run/strata/strata.sock"
//
// Its subcommands inspect and check the store and register strata in
// containerd's config. Like ctr and nerdctl, global options may come before
// the subcommand or after it, and a subcommand's options before or after
// its arguments.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"runtime"
	"runtime/debug"
	"strings"
	"text/tabwriter"

	"github.com/containerd/log"
)

// version and revision are set at build time by the Makefile
// (-ldflags -X main.version=... -X main.revision=...).
var version, revision = "", ""

// Exit codes: 1 for a failure, 2 for a command line that cannot be parsed
// (Go's flag convention).
const (
	exitFailure = 1
	exitUsage   = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// A command is one of strata-snapshotter's subcommands.
type command struct {
	name     string
	synopsis string // its arguments and own options
	summary  string
	run      func(g *globals, args []string, stdout, stderr io.Writer) int
}

// commands lists the subcommands, in the order help shows them. It is set
// in init: help's own entry reads it, which an initializer would make a
// cycle.
var commands []command

func init() {
	commands = []command{
		{"ls", "[-n NAMESPACE] [--json]", "list snapshots", operatorCommand("ls", cmdLs, 0)},
		{"tree", "[-n NAMESPACE] [--json]", "the parent/child forest, leaves marked", operatorCommand("tree", cmdTree, 0)},
		{"inspect", "[-n NAMESPACE] [--json] NAME|KEY", "everything about one snapshot", operatorCommand("inspect", cmdInspect, 1)},
		{"du", "[-n NAMESPACE] [--json]", "bytes per leaf, unique and shared, and what sharing saves", operatorCommand("du", cmdDu, 0)},
		{"fsck", "[--repair | --discard-unindexed]", "check a stopped store (the root from --root or the config)", runFsck},
		{"containerd-config", "[--file FILE] [--create] [--cri] [--runtime-handler NAME] [--bootstrap-handler NAME] [--write [--restart ...]]", "register strata in containerd's config: print it patched, or write it", runContainerdConfig},
		{"health", "[--timeout D]", "ask the daemon's /healthz (exit 0 only when healthy)", runHealth},
		{"version", "", "print the version", runVersion},
		{"help", "[COMMAND]", "show help for strata-snapshotter or a command", runHelp},
	}
}

func lookup(name string) (command, bool) {
	for _, c := range commands {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

// run is the whole command; it returns the process's exit code.
func run(args []string, stdout, stderr io.Writer) int {
	var g globals
	fl, showVersion := topFlags(&g, stdout, stderr)
	if code, ok := parse(fl, args); !ok {
		return code
	}
	if *showVersion {
		return runVersion(&g, nil, stdout, stderr)
	}
	if fl.NArg() > 0 {
		name := fl.Arg(0)
		cmd, ok := lookup(name)
		if !ok {
			fmt.Fprintf(stderr, "strata-snapshotter: unknown command %q; run 'strata-snapshotter help' for the list\n", name)
			return exitUsage
		}
		return cmd.run(&g, fl.Args()[1:], stdout, stderr)
	}
	cfg, err := g.load()
	if err != nil {
		fmt.Fprintf(stderr, "strata-snapshotter: %v\n", err)
		return exitFailure
	}
	if err := setUpLog(cfg, stderr); err != nil {
		fmt.Fprintf(stderr, "strata-snapshotter: %v\n", err)
		return exitFailure
	}
	if os.Geteuid() != 0 {
		log.L.Error("strata-snapshotter must run as root: it mounts overlayfs and owns its root and sockets")
		return exitFailure
	}
	if err := serve(context.Background(), cfg); err != nil {
		log.L.WithError(err).Error("strata-snapshotter failed")
		return exitFailure
	}
	log.L.Info("strata-snapshotter stopped")
	return 0
}

// topFlags is the flag set before any command: the global options and
// --version.
func topFlags(g *globals, stdout, stderr io.Writer) (*flag.FlagSet, *bool) {
	fl := newFlagSet("strata-snapshotter", stdout, stderr)
	g.register(fl)
	showVersion := fl.Bool("version", false, "print the version and exit")
	fl.BoolVar(showVersion, "v", false, "print the version and exit (short for --version)")
	fl.Usage = func() { printHelp(fl.Output(), fl) }
	return fl, showVersion
}

// setUpLog points the log at stderr in the configured level and format,
// with containerd's RFC3339Nano timestamps, so strata's log lines up with
// containerd's.
func setUpLog(cfg Config, stderr io.Writer) error {
	if err := log.SetLevel(cfg.LogLevel); err != nil {
		return fmt.Errorf("log_level: %w", err)
	}
	if err := log.SetFormat(log.OutputFormat(cfg.LogFormat)); err != nil {
		return fmt.Errorf("log_format: %w", err)
	}
	log.L.Logger.SetOutput(stderr)
	return nil
}

// streams is a flag set's output: errors and usage after a mistake go to
// stderr (it is the Writer), help asked for goes to stdout.
type streams struct{ stdout, stderr io.Writer }

func (s streams) Write(p []byte) (int, error) { return s.stderr.Write(p) }

func newFlagSet(name string, stdout, stderr io.Writer) *flag.FlagSet {
	fl := flag.NewFlagSet(name, flag.ContinueOnError)
	fl.SetOutput(streams{stdout, stderr})
	return fl
}

// usageError says what is wrong with the command line and where the help
// is, and returns the exit code for it.
func usageError(w io.Writer, command, msg string) int {
	fmt.Fprintf(w, "%s: %s\nRun '%s --help' for usage.\n", command, msg, command)
	return exitUsage
}

// flagNameRE finds the flag a parse error names, with the one dash Go's
// flag package writes; help and the README write two.
var flagNameRE = regexp.MustCompile(`(^|: | for flag )-([a-z][a-z-]+)`)

// parse parses flags up to the first argument that is not one. When ok is
// false the command exits with code: 0 for --help (the help went to
// stdout, since it was asked for), 2 for a bad flag (said once, on stderr).
func parse(fl *flag.FlagSet, args []string) (code int, ok bool) {
	out := fl.Output()
	var help bytes.Buffer
	fl.SetOutput(&help)
	err := fl.Parse(args)
	fl.SetOutput(out)
	switch {
	case errors.Is(err, flag.ErrHelp):
		out.(streams).stdout.Write(help.Bytes())
		return 0, false
	case err != nil:
		return usageError(out, fl.Name(), flagNameRE.ReplaceAllString(err.Error(), "$1--$2")), false
	}
	return 0, true
}

// parseArgs parses a subcommand's flags, before and after its positional
// arguments (inspect KEY --json works as well as inspect --json KEY), and
// checks it got between least and most of them.
func parseArgs(fl *flag.FlagSet, args []string, least, most int) (positional []string, code int, ok bool) {
	for {
		if code, ok := parse(fl, args); !ok {
			return nil, code, false
		}
		if fl.NArg() == 0 {
			break
		}
		positional = append(positional, fl.Arg(0))
		args = fl.Args()[1:]
	}
	if len(positional) < least || len(positional) > most {
		what := map[[2]int]string{{0, 0}: "no arguments", {1, 1}: "one argument", {0, 1}: "at most one argument"}[[2]int{least, most}]
		msg := fmt.Sprintf("takes %s, got %d", what, len(positional))
		if len(positional) > 0 {
			msg += ": " + strings.Join(positional, " ")
		}
		return nil, usageError(fl.Output(), fl.Name(), msg), false
	}
	return positional, 0, true
}

// subcommandFlags is a subcommand's flag set: the global options (which
// may also come before the subcommand) and the usage text help prints.
func subcommandFlags(g *globals, name string, stdout, stderr io.Writer) *flag.FlagSet {
	fl := newFlagSet("strata-snapshotter "+name, stdout, stderr)
	g.register(fl)
	fl.Usage = func() {
		cmd, _ := lookup(name)
		printCommandHelp(fl.Output(), cmd, fl)
	}
	return fl
}

func printHelp(w io.Writer, fl *flag.FlagSet) {
	fmt.Fprint(w, `strata-snapshotter: a containerd snapshotter on overlayfs

Usage:
  strata-snapshotter [GLOBAL OPTIONS]                    serve containerd's Snapshots API
  strata-snapshotter [GLOBAL OPTIONS] COMMAND [ARGS]

Commands:
`)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, c := range commands {
		fmt.Fprintf(tw, "  %s\t%s\n", c.name, c.summary)
	}
	tw.Flush()
	fmt.Fprintln(w, "\nGlobal options (before or after the command):")
	printFlags(w, fl, func(name string) bool { return true })
	fmt.Fprint(w, `
Config file keys without a flag (see config.toml.example):
  sync_remove, sync_on_commit, share_files, mount_options, shutdown_timeout

Run 'strata-snapshotter help COMMAND' for a command's options.
`)
}

func printCommandHelp(w io.Writer, cmd command, fl *flag.FlagSet) {
	fmt.Fprintf(w, "strata-snapshotter %s: %s\n\nUsage:\n  strata-snapshotter %s %s\n", cmd.name, cmd.summary, cmd.name, cmd.synopsis)
	own := func(name string) bool { return !isGlobal(name) }
	if anyFlag(fl, own) {
		fmt.Fprintln(w, "\nOptions:")
		printFlags(w, fl, own)
	}
	fmt.Fprintln(w, "\nGlobal options:")
	printFlags(w, fl, isGlobal)
}

func anyFlag(fl *flag.FlagSet, keep func(string) bool) bool {
	found := false
	fl.VisitAll(func(f *flag.Flag) { found = found || keep(f.Name) })
	return found
}

// printFlags prints the flags keep selects, in the flag package's layout
// but with the double dash ctr and nerdctl users type.
func printFlags(w io.Writer, fl *flag.FlagSet, keep func(string) bool) {
	fl.VisitAll(func(f *flag.Flag) {
		if !keep(f.Name) {
			return
		}
		dash := "--"
		if len(f.Name) == 1 {
			dash = "-"
		}
		arg, usage := flag.UnquoteUsage(f)
		line := "  " + dash + f.Name
		if arg != "" {
			line += " " + arg
		}
		fmt.Fprintf(w, "%s\n    \t%s", line, strings.ReplaceAll(usage, "\n", "\n    \t"))
		if f.DefValue != "" && f.DefValue != "false" {
			fmt.Fprintf(w, " (default %q)", f.DefValue)
		}
		fmt.Fprintln(w)
	})
}

func runHelp(g *globals, args []string, stdout, stderr io.Writer) int {
	fl := subcommandFlags(g, "help", stdout, stderr)
	positional, code, ok := parseArgs(fl, args, 0, 1)
	if !ok {
		return code
	}
	if len(positional) == 0 {
		top, _ := topFlags(&globals{}, stdout, stdout)
		printHelp(stdout, top)
		return 0
	}
	cmd, ok := lookup(positional[0])
	if !ok {
		return usageError(stderr, "strata-snapshotter help", fmt.Sprintf("unknown command %q", positional[0]))
	}
	// A command's help is its --help, on stdout since it was asked for.
	return cmd.run(&globals{}, []string{"--help"}, stdout, stdout)
}

func runVersion(g *globals, args []string, stdout, stderr io.Writer) int {
	fl := subcommandFlags(g, "version", stdout, stderr)
	if _, code, ok := parseArgs(fl, args, 0, 0); !ok {
		return code
	}
	fmt.Fprintln(stdout, versionLine())
	return 0
}

// versionLine reads like containerd's: the program, its module, its
// version, the commit it was built from, and the Go that built it.
func versionLine() string {
	module, rev := "github.com/strata-snapshotter/strata", revision
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Path != "" {
			module = bi.Main.Path
		}
		dirty := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if rev == "" {
					rev = s.Value
				}
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if dirty && revision == "" {
			rev += ".m"
		}
	}
	line := fmt.Sprintf("strata-snapshotter %s %s", module, buildVersion())
	if rev != "" {
		line += " " + rev
	}
	return line + " " + runtime.Version()
}

// buildVersion is the version metrics and the start-up log report.
func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "v0.0.0-dev"
}
