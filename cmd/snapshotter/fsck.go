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
	repair := fl.Bool("repair", false, "remove the directories no snapshot owns (nothing else)")
	fl.Usage = func() {
		fmt.Fprintln(stderr, "usage: strata-snapshotter fsck [--root DIR] [--repair]")
		fl.PrintDefaults()
	}
	if code, ok := parseArgs(fl, args, 0); !ok {
		return code
	}
	r, err := snapshotter.Fsck(context.Background(), *root, *repair)
	if err != nil {
		fmt.Fprintf(stderr, "strata-snapshotter fsck: %v\n", err)
		return 1
	}
	for _, f := range r.Findings {
		fmt.Fprintln(stdout, f)
	}
	for _, p := range r.Removed {
		fmt.Fprintf(stdout, "removed %s\n", p)
	}
	if len(r.Findings) == 0 {
		fmt.Fprintf(stdout, "%s: clean\n", *root)
		return 0
	}
	fmt.Fprintf(stdout, "%s: %d findings, %d repaired\n", *root, len(r.Findings), len(r.Removed))
	return 1
}
