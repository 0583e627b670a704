package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/strata-snapshotter/strata/containerdconfig"
)

// runContainerdConfig registers strata in containerd's config file. It
// prints the patched file, or with --write replaces it (only when something
// changed) and prints "changed" or "unchanged": containerd needs a restart
// exactly when it says changed.
func runContainerdConfig(args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("strata-snapshotter containerd-config", flag.ContinueOnError)
	fl.SetOutput(stderr)
	file := fl.String("file", "/etc/containerd/config.toml", "containerd's config file (a missing one starts as version 3)")
	address := fl.String("address", defaultAddress, "strata's Snapshots socket")
	root := fl.String("root", defaultRoot, "strata's root, exported for the kubelet's image filesystem accounting")
	cri := fl.Bool("cri", false, "make strata the snapshotter of containerd's CRI plugin (Kubernetes)")
	write := fl.Bool("write", false, "replace the file instead of printing the result")
	fl.Usage = func() {
		fmt.Fprintln(stderr, "usage: strata-snapshotter containerd-config [--file FILE] [--address SOCKET] [--root DIR] [--cri] [--write]")
		fl.PrintDefaults()
	}
	if code, ok := parseArgs(fl, args, 0); !ok {
		return code
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "strata-snapshotter containerd-config: %v\n", err)
		return 1
	}
	in, err := os.ReadFile(*file)
	mode := os.FileMode(0o644)
	switch {
	case errors.Is(err, os.ErrNotExist):
		in = []byte("version = 3\n")
	case err != nil:
		return fail(err)
	default:
		if fi, err := os.Stat(*file); err == nil {
			mode = fi.Mode().Perm()
		}
	}
	out, changed, err := containerdconfig.Patch(in, containerdconfig.Options{Address: *address, Root: *root, CRI: *cri})
	if err != nil {
		return fail(fmt.Errorf("%s: %w", *file, err))
	}
	if !*write {
		stdout.Write(out)
		if changed {
			fmt.Fprintln(stderr, "changed: containerd needs a restart once this is written")
		} else {
			fmt.Fprintln(stderr, "unchanged")
		}
		return 0
	}
	if !changed {
		fmt.Fprintln(stdout, "unchanged")
		return 0
	}
	// Replace atomically: containerd never reads half a file.
	if err := os.MkdirAll(filepath.Dir(*file), 0o755); err != nil {
		return fail(err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(*file), ".config.toml-")
	if err != nil {
		return fail(err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(out); err != nil {
		return fail(err)
	}
	if err := tmp.Chmod(mode); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	tmp.Close()
	if err := os.Rename(tmp.Name(), *file); err != nil {
		return fail(err)
	}
	fmt.Fprintln(stdout, "changed")
	return 0
}
