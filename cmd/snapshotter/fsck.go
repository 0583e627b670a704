package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/strata-snapshotter/strata/snapshotter"
)

// runFsck checks a stopped store: exit 0 when clean, 1 with the findings.
func runFsck(args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("strata-snapshotter fsck", flag.ContinueOnError)
	fl.SetOutput(stderr)
	root := fl.String("root", defaultRoot, "the store to check; strata must not be running on it")
	repair := fl.Bool("repair", false, "do what start-up does: put back directories of interrupted removals, remove those no snapshot owns (nothing else)")
	discard := fl.Bool("discard-unindexed", false, "the index is missing or empty: delete every layer, so strata starts an empty store")
	fl.Usage = func() {
		fmt.Fprintln(stderr, "usage: strata-snapshotter fsck [--root DIR] [--repair | --discard-unindexed]")
		fl.PrintDefaults()
	}
	if code, ok := parseArgs(fl, args, 0); !ok {
		return code
	}
	if *repair && *discard {
		fmt.Fprintln(stderr, "strata-snapshotter fsck: --repair and --discard-unindexed do not go together")
		return 1
	}
	r, err := snapshotter.Fsck(context.Background(), *root, snapshotter.FsckOptions{Repair: *repair, DiscardUnindexed: *discard})
	if err != nil {
		fmt.Fprintf(stderr, "strata-snapshotter fsck: %v\n", err)
		return 1
	}
	for _, f := range r.Findings {
		fmt.Fprintln(stdout, f)
	}
	for _, p := range r.Restored {
		fmt.Fprintf(stdout, "restored %s\n", p)
	}
	for _, p := range r.Removed {
		fmt.Fprintf(stdout, "removed %s\n", p)
	}
	if len(r.Findings) == 0 {
		fmt.Fprintf(stdout, "%s: clean\n", *root)
		return 0
	}
	fmt.Fprintf(stdout, "%s: %d findings, %d restored, %d removed\n", *root, len(r.Findings), len(r.Restored), len(r.Removed))
	return 1
}
