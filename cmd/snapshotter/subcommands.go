package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	units "github.com/docker/go-units"

	"github.com/strata-snapshotter/strata/accounting"
	"github.com/strata-snapshotter/strata/admin"
)

// An operator command asks the running daemon, over its admin socket, about
// the store, and prints a table (or, with --json, the API's JSON).
type operatorRun func(ctx context.Context, c *admin.Client, q query, out io.Writer) error

// query is what an operator command asks for.
type query struct {
	namespace string // containerd namespace; empty: all
	args      []string
	json      bool
}

// operatorCommand makes the command name of run, which takes nargs
// arguments.
func operatorCommand(name string, run operatorRun, nargs int) func(g *globals, args []string, stdout, stderr io.Writer) int {
	return func(g *globals, args []string, stdout, stderr io.Writer) int {
		fl := subcommandFlags(g, name, stdout, stderr)
		var q query
		fl.StringVar(&q.namespace, "namespace", "", "the snapshots made in this containerd `NAMESPACE` (as ctr -n and nerdctl --namespace name it) and the layers they stand on")
		fl.StringVar(&q.namespace, "n", "", "short for --namespace `NAMESPACE`")
		fl.BoolVar(&q.json, "json", false, "print the admin API's JSON instead of a table")
		positional, code, ok := parseArgs(fl, args, nargs, nargs)
		if !ok {
			return code
		}
		q.args = positional
		cfg, err := g.load()
		if err != nil {
			fmt.Fprintf(stderr, "strata-snapshotter %s: %v\n", name, err)
			return exitFailure
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if err := run(ctx, admin.NewClient(cfg.AdminAddress), q, stdout); err != nil {
			fmt.Fprintf(stderr, "strata-snapshotter %s: %v\n", name, err)
			return exitFailure
		}
		return 0
	}
}

func printJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func cmdLs(ctx context.Context, c *admin.Client, q query, out io.Writer) error {
	snaps, err := c.Snapshots(ctx, q.namespace)
	if err != nil {
		return err
	}
	if q.json {
		return printJSON(out, snaps)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAMESPACE\tNAME\tKIND\tPARENT\tSIZE\tCREATED\tKEY")
	for _, s := range snaps {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", orDash(s.Namespace), s.Name, s.Kind, orDash(parentName(s)), humanBytes(s.Usage.Bytes),
			s.Created.Local().Format(time.DateTime), s.Key)
	}
	return tw.Flush()
}

// parentName is the parent as containerd names it (the key within the
// namespace), as ctr snapshots ls shows it.
func parentName(s admin.Snapshot) string {
	if _, name, ok := admin.SplitKey(s.Parent); ok {
		return name
	}
	return s.Parent
}

func cmdTree(ctx context.Context, c *admin.Client, q query, out io.Writer) error {
	snaps, err := c.Snapshots(ctx, q.namespace)
	if err != nil {
		return err
	}
	if q.json {
		return printJSON(out, snaps)
	}
	if len(snaps) == 0 {
		_, err := fmt.Fprintln(out, "no snapshots")
		return err
	}
	byKey := map[string]admin.Snapshot{}
	var roots []string
	for _, s := range snaps {
		byKey[s.Key] = s
	}
	for _, s := range snaps {
		// With a namespace, a parent outside it is not shown (containerd
		// never makes one; a hand-made snapshot could).
		if _, ok := byKey[s.Parent]; !ok {
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
		// With a namespace, children of a shared layer in other
		// namespaces are not shown.
		var children []string
		for _, c := range s.Children {
			if _, ok := byKey[c]; ok {
				children = append(children, c)
			}
		}
		for i, child := range children {
			walk(child, indent+next, i == len(children)-1, false)
		}
	}
	for _, r := range roots {
		walk(r, "", true, true)
	}
	fmt.Fprintln(out, "* leaf: nothing stands on it")
	return nil
}

func cmdInspect(ctx context.Context, c *admin.Client, q query, out io.Writer) error {
	s, err := c.Snapshot(ctx, q.namespace, q.args[0])
	if err != nil {
		return err
	}
	if q.json {
		return printJSON(out, s)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	row("Key", s.Key)
	row("Namespace", orDash(s.Namespace))
	row("Name", s.Name)
	row("Kind", s.Kind)
	row("Parent", orDash(s.Parent))
	row("Created", s.Created.Local().Format(time.RFC3339))
	row("Updated", s.Updated.Local().Format(time.RFC3339))
	row("Size", fmt.Sprintf("%s (%d bytes, %d allocated, %d inodes)", humanBytes(s.Usage.Bytes), s.Usage.Bytes, s.Usage.AllocatedBytes, s.Usage.Inodes))
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

func cmdDu(ctx context.Context, c *admin.Client, q query, out io.Writer) error {
	r, err := c.DiskUsage(ctx, q.namespace)
	if err != nil {
		return err
	}
	if q.json {
		return printJSON(out, r)
	}
	if err := printDu(out, r); err != nil {
		return err
	}
	if q.namespace != "" {
		_, err = fmt.Fprintf(out, "(the leaves of namespace %s; unique, shared and the totals count the whole store)\n", q.namespace)
	}
	return err
}

func printDu(out io.Writer, r accounting.Report) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAMESPACE\tNAME\tKIND\tLAYERS\tTOTAL\tUNIQUE\tSHARED\tSHARED FILES")
	for _, l := range r.Leaves {
		ns, name, _ := admin.SplitKey(l.Key)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", orDash(ns), name, l.Kind, l.Layers,
			humanBytes(l.TotalBytes), humanBytes(l.UniqueBytes), humanBytes(l.SharedBytes), humanBytes(l.FileSharedBytes))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(out, "\nlogical %s (every leaf's layers counted in full), physical %s (on disk), saved %s by sharing (%s of it by sharing files)\n",
		humanBytes(r.LogicalBytes), humanBytes(r.PhysicalBytes), humanBytes(r.SavedBytes), humanBytes(r.FileSavedBytes))
	return err
}

// humanBytes writes n in binary units with one decimal, as ctr snapshots
// usage does (containerd's progress.Bytes): 1.9 MiB.
func humanBytes(n int64) string {
	return units.CustomSize("%02.1f %s", float64(n), 1024.0, []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"})
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
