package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/strata-snapshotter/strata/accounting"
	"github.com/strata-snapshotter/strata/admin"
)

// A subcommand asks the running daemon, over its admin socket, about the
// store, and prints a table (or, with --json, the API's JSON).
type subcommand struct {
	synopsis string // the command and its arguments
	summary  string
	args     int // positional arguments it takes
	run      func(ctx context.Context, c *admin.Client, args []string, out io.Writer, asJSON bool) error
}

var subcommands = map[string]subcommand{
	"ls":      {synopsis: "ls", summary: "list snapshots", run: cmdLs},
	"tree":    {synopsis: "tree", summary: "the parent/child forest, leaves marked", run: cmdTree},
	"inspect": {synopsis: "inspect KEY", summary: "everything about one snapshot", args: 1, run: cmdInspect},
	"du":      {synopsis: "du", summary: "bytes per leaf, unique and shared, and what sharing saves", run: cmdDu},
}

func runSubcommand(name string, cmd subcommand, args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("strata-snapshotter "+name, flag.ContinueOnError)
	fl.SetOutput(stderr)
	configPath := fl.String("config", defaultConfigPath, "the daemon's config file, for its address and admin_address")
	address := fl.String("address", "", "the daemon's Snapshots socket; its admin socket is beside it (default: from --config)")
	adminAddress := fl.String("admin-address", "", "the daemon's admin socket (default: from --address or --config)")
	asJSON := fl.Bool("json", false, "print JSON instead of a table")
	fl.Usage = func() {
		fmt.Fprintf(stderr, "usage: strata-snapshotter %s [--config FILE | --address SOCKET | --admin-address SOCKET] [--json]\n%s\n", cmd.synopsis, cmd.summary)
		fl.PrintDefaults()
	}
	positional, code, ok := parseArgs(fl, args, cmd.args)
	if !ok {
		return code
	}
	socket, err := operatorAdminAddress(setFlags(fl), *configPath, *address, *adminAddress)
	if err != nil {
		fmt.Fprintf(stderr, "strata-snapshotter %s: %v\n", name, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := cmd.run(ctx, admin.NewClient(socket), positional, stdout, *asJSON); err != nil {
		fmt.Fprintf(stderr, "strata-snapshotter %s: %v\n", name, err)
		return 1
	}
	return 0
}

// operatorAdminAddress finds the admin socket of the daemon an operator
// command means: --admin-address as given; else the one beside --address;
// else the daemon's config file's (as the daemon itself resolves it, so a
// daemon started with only that file is found by the same file).
func operatorAdminAddress(set map[string]bool, configPath, address, adminAddress string) (string, error) {
	switch {
	case set["admin-address"]:
		return adminAddress, nil
	case set["address"]:
		return adminAddressFor(address), nil
	}
	cfg := defaultConfig()
	if err := loadFile(&cfg, configPath, set["config"]); err != nil {
		return "", err
	}
	if err := cfg.validate(); err != nil {
		return "", fmt.Errorf("config %s: %w", configPath, err)
	}
	return cfg.AdminAddress, nil
}

// setFlags names the flags given on the command line, which override the
// config file and the defaults.
func setFlags(fl *flag.FlagSet) map[string]bool {
	set := map[string]bool{}
	fl.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set
}

// parseArgs parses a subcommand's flags, before and after its positional
// arguments (inspect KEY --json works as well as inspect --json KEY), and
// checks it got nargs of them. When ok is false the subcommand exits with
// code: 0 for --help, 1 for bad flags or arguments (after the usage).
func parseArgs(fl *flag.FlagSet, args []string, nargs int) (positional []string, code int, ok bool) {
	for {
		if err := fl.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, 0, false
			}
			return nil, 1, false
		}
		if fl.NArg() == 0 {
			break
		}
		positional = append(positional, fl.Arg(0))
		args = fl.Args()[1:]
	}
	if len(positional) != nargs {
		fmt.Fprintf(fl.Output(), "strata-snapshotter: want %d argument(s), got %d %q\n", nargs, len(positional), positional)
		fl.Usage()
		return nil, 1, false
	}
	return positional, 0, true
}

func printJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func cmdLs(ctx context.Context, c *admin.Client, _ []string, out io.Writer, asJSON bool) error {
	snaps, err := c.Snapshots(ctx)
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(out, snaps)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tKIND\tPARENT\tSIZE\tCREATED\tLABELS")
	for _, s := range snaps {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\n", s.Key, s.Kind, orDash(s.Parent), humanBytes(s.Usage.Bytes),
			s.Created.Local().Format(time.DateTime), len(s.Labels))
	}
	return tw.Flush()
}

func cmdTree(ctx context.Context, c *admin.Client, _ []string, out io.Writer, asJSON bool) error {
	snaps, err := c.Snapshots(ctx)
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(out, snaps)
	}
	byKey := map[string]admin.Snapshot{}
	var roots []string
	for _, s := range snaps {
		byKey[s.Key] = s
		if s.Parent == "" {
			roots = append(roots, s.Key)
		}
	}
	sort.Strings(roots)
	var walk func(key, indent string, last bool, root bool)
	walk = func(key, indent string, last bool, root bool) {
		s := byKey[key]
		branch, next := "├── ", "│   "
		if last {
			branch, next = "└── ", "    "
		}
		if root {
			branch, next = "", ""
		}
		mark := ""
		if s.Leaf {
			mark = " *"
		}
		fmt.Fprintf(out, "%s%s%s (%s, %s)%s\n", indent, branch, s.Key, s.Kind, humanBytes(s.Usage.Bytes), mark)
		for i, child := range s.Children {
			walk(child, indent+next, i == len(s.Children)-1, false)
		}
	}
	for _, r := range roots {
		walk(r, "", true, true)
	}
	fmt.Fprintln(out, "* leaf: nothing stands on it")
	return nil
}

func cmdInspect(ctx context.Context, c *admin.Client, args []string, out io.Writer, asJSON bool) error {
	s, err := c.Snapshot(ctx, args[0])
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(out, s)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	row("Key", s.Key)
	row("Kind", s.Kind)
	row("Parent", orDash(s.Parent))
	row("Created", s.Created.Local().Format(time.RFC3339))
	row("Updated", s.Updated.Local().Format(time.RFC3339))
	row("Size", fmt.Sprintf("%s (%d bytes, %d allocated, %d inodes)", humanBytes(s.Usage.Bytes), s.Usage.Bytes, s.Usage.Size, s.Usage.Inodes))
	row("Leaf", fmt.Sprint(s.Leaf))
	row("Children", orDash(strings.Join(s.Children, " ")))
	if m := s.IDMapping; m != nil {
		row("IDMapping", fmt.Sprintf("uids %s gids %s", m.UIDs, m.GIDs))
	} else {
		row("IDMapping", "-")
	}
	row("UpperDir", s.GraphDriver.Data.UpperDir)
	row("WorkDir", orDash(s.GraphDriver.Data.WorkDir))
	lowers := strings.Split(s.GraphDriver.Data.LowerDir, ":")
	if s.GraphDriver.Data.LowerDir == "" {
		lowers = []string{"-"}
	}
	for i, l := range lowers {
		k := ""
		if i == 0 {
			k = "LowerDir"
		}
		fmt.Fprintf(tw, "%s\t%s\n", k+strings.Repeat(":", min(1, len(k))), l)
	}
	for _, m := range s.Mounts {
		row("Mount", fmt.Sprintf("type=%s source=%s options=%s", m.Type, m.Source, strings.Join(m.Options, ",")))
	}
	keys := make([]string, 0, len(s.Labels))
	for k := range s.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		row("Label", k+"="+s.Labels[k])
	}
	return tw.Flush()
}

func cmdDu(ctx context.Context, c *admin.Client, _ []string, out io.Writer, asJSON bool) error {
	r, err := c.DiskUsage(ctx)
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(out, r)
	}
	return printDu(out, r)
}

func printDu(out io.Writer, r accounting.Report) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tKIND\tLAYERS\tTOTAL\tUNIQUE\tSHARED")
	for _, l := range r.Leaves {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", l.Key, l.Kind, l.Layers, humanBytes(l.TotalBytes), humanBytes(l.UniqueBytes), humanBytes(l.SharedBytes))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(out, "\nlogical %s (every leaf's layers counted in full), physical %s (on disk), saved %s by sharing\n",
		humanBytes(r.LogicalBytes), humanBytes(r.PhysicalBytes), humanBytes(r.SavedBytes))
	return err
}

// humanBytes writes n in decimal units, as docker system df does.
func humanBytes(n int64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	f, i := float64(n), 0
	for f >= unit && i < 5 {
		f /= unit
		i++
	}
	return fmt.Sprintf("%.3g%cB", f, "kMGTP"[i-1])
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
