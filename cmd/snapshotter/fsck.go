package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/strata-snapshotter/strata/snapshotter"
)

// runFsck checks a stopped store: exit 0 when clean, 1 with the findings.
func runFsck(g *globals, args []string, stdout, stderr io.Writer) int {
	fl := subcommandFlags(g, "fsck", stdout, stderr)
	repair := fl.Bool("repair", false, "do what start-up does: put back directories of interrupted removals, remove those no snapshot owns (nothing else)")
	discard := fl.Bool("discard-unindexed", false, "delete the layers no index records: all of them when the index is missing or empty (strata then starts an empty store), else those kept as unindexed")
	verify := fl.Bool("verify-objects", false, "read every object of the store (share_files) and check that its content hashes to its name")
	if _, code, ok := parseArgs(fl, args, 0, 0); !ok {
		return code
	}
	if *repair && *discard {
		return usageError(stderr, "strata-snapshotter fsck", "--repair and --discard-unindexed do not go together")
	}
	cfg, err := g.load()
	if err != nil {
		fmt.Fprintf(stderr, "strata-snapshotter fsck: %v\n", err)
		return exitFailure
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(stderr, "strata-snapshotter fsck: must run as root: the store is root's only")
		return exitFailure
	}
	r, err := snapshotter.Fsck(context.Background(), cfg.Root, snapshotter.FsckOptions{Repair: *repair, DiscardUnindexed: *discard, VerifyObjects: *verify})
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
		fmt.Fprintf(stdout, "%s: discarded %d directories the index does not record\n", cfg.Root, len(r.Removed))
		return 0
	case len(r.Findings) == 0 && *repair:
		fmt.Fprintf(stdout, "%s: clean after repair (%d restored, %d removed)\n", cfg.Root, len(r.Restored), len(r.Removed))
		return 0
	case len(r.Findings) == 0:
		fmt.Fprintf(stdout, "%s: clean\n", cfg.Root)
		return 0
	case *repair:
		fmt.Fprintf(stdout, "%s: %d restored, %d removed; %s left that repair does not fix\n", cfg.Root, len(r.Restored), len(r.Removed), findings(len(r.Findings)))
	default:
		fmt.Fprintf(stdout, "%s: %s\n", cfg.Root, findings(len(r.Findings)))
	}
	return 1
}

func findings(n int) string {
	if n == 1 {
		return "1 finding"
	}
	return fmt.Sprintf("%d findings", n)
}
