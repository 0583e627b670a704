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
	discard := fl.Bool("discard-unindexed", false, "delete the layers no index records: all of them when the index is missing or empty (strata then starts an empty store), else those kept as unindexed")
	fl.Usage = func() {
		fmt.Fprintln(stderr, "usage: strata-snapshotter fsck [--root DIR] [--repair | --discard-unindexed]")
		fl.PrintDefaults()
	}
	if _, code, ok := parseArgs(fl, args, 0); !ok {
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
	for _, p := range r.Restored {
		fmt.Fprintf(stdout, "restored %s\n", p)
	}
	for _, p := range r.Removed {
		fmt.Fprintf(stdout, "removed %s\n", p)
	}
	for _, f := range r.Findings {
		fmt.Fprintln(stdout, f)
	}
	switch {
	case *discard:
		fmt.Fprintf(stdout, "%s: discarded %d directories the index does not record\n", *root, len(r.Removed))
		return 0
	case len(r.Findings) == 0 && *repair:
		fmt.Fprintf(stdout, "%s: clean after repair (%d restored, %d removed)\n", *root, len(r.Restored), len(r.Removed))
		return 0
	case len(r.Findings) == 0:
		fmt.Fprintf(stdout, "%s: clean\n", *root)
		return 0
	case *repair:
		fmt.Fprintf(stdout, "%s: %d restored, %d removed; %d findings left that repair does not fix\n", *root, len(r.Restored), len(r.Removed), len(r.Findings))
	default:
		fmt.Fprintf(stdout, "%s: %d findings\n", *root, len(r.Findings))
	}
	return 1
}
