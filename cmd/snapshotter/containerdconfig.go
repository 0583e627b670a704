package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/containerd/v2/plugins/snapshots/overlay/overlayutils"

	"github.com/strata-snapshotter/strata/containerdconfig"
	"github.com/strata-snapshotter/strata/containerdproc"
)

// runContainerdConfig registers strata in containerd's config file. It
// prints the patched file, or with --write replaces it (only when something
// changed) and prints "changed" or "unchanged": containerd needs a restart
// exactly when it says changed. With --restart it also restarts containerd
// then, and only then: the DaemonSet's init step, which must leave
// containerd alone when only strata's version changes.
func runContainerdConfig(args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("strata-snapshotter containerd-config", flag.ContinueOnError)
	fl.SetOutput(stderr)
	file := fl.String("file", "/etc/containerd/config.toml", "containerd's config file (a missing one starts as version 3)")
	address := fl.String("address", defaultAddress, "strata's Snapshots socket")
	root := fl.String("root", defaultRoot, "strata's root, exported for the kubelet's image filesystem accounting")
	cri := fl.Bool("cri", false, "make strata the snapshotter of containerd's CRI plugin (Kubernetes' default-snapshotter mode)")
	handler := fl.String("runtime-handler", "", "add a CRI runtime handler of this name, the default runtime with strata as its snapshotter (for a Kubernetes RuntimeClass)")
	bootstrap := fl.String("bootstrap-handler", "", "with --cri and --runtime-handler: keep this CRI runtime handler (runc) on containerd's overlayfs for strata's own pod, and make --runtime-handler the default runtime")
	write := fl.Bool("write", false, "replace the file instead of printing the result")
	restart := fl.Bool("restart", false, "with --write: when the file changed, or containerd started before its last change, restart the containerd listening on --containerd-address (SIGTERM; its service manager starts it again) and wait until it is back")
	containerdAddress := fl.String("containerd-address", "/run/containerd/containerd.sock", "containerd's socket, for --restart")
	restartTimeout := fl.Duration("restart-timeout", 2*time.Minute, "how long --restart waits for containerd to stop and come back")
	podUID := fl.String("pod-uid", "", "with --restart, run as this pod's init container: first wait until containerd's CRI reports this container running, so the kubelet's start of it is answered before containerd restarts")
	fl.Usage = func() {
		fmt.Fprintln(stderr, "usage: strata-snapshotter containerd-config [--file FILE] [--address SOCKET] [--root DIR] [--cri] [--runtime-handler NAME] [--bootstrap-handler NAME] [--write [--restart]]")
		fl.PrintDefaults()
	}
	if _, code, ok := parseArgs(fl, args, 0); !ok {
		return code
	}
	if *restart && !*write {
		fmt.Fprintln(stderr, "strata-snapshotter containerd-config: --restart needs --write")
		return 1
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
	// remap-ids only where the kernel does idmapped mounts; elsewhere
	// containerd falls back to copying the image for a user namespace.
	remap, err := overlayutils.SupportsIDMappedMounts()
	if !remap {
		fmt.Fprintf(stderr, "idmapped mounts unsupported here (%v): not advertising remap-ids; containerd copies the image, chowned, for each user namespace\n", err)
	}
	out, changed, err := containerdconfig.Patch(in, containerdconfig.Options{Address: *address, Root: *root, CRI: *cri, RemapIDs: remap, RuntimeHandler: *handler, BootstrapHandler: *bootstrap})
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
	if changed {
		if err := replaceFile(*file, out, mode); err != nil {
			return fail(err)
		}
		fmt.Fprintln(stdout, "changed")
	} else {
		fmt.Fprintln(stdout, "unchanged")
	}
	if !*restart {
		return 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), *restartTimeout)
	defer cancel()
	if !changed {
		// A run cut off between writing the file and restarting containerd
		// (killed, or timed out waiting) leaves a containerd that never read
		// it: restart one that started before the file's last change. A
		// second's margin covers the clocks' resolution; after a restart
		// containerd starts well after the write.
		fi, err := os.Stat(*file)
		if err != nil {
			return fail(err)
		}
		started, running, err := containerdproc.Started(ctx, *containerdAddress)
		if err != nil {
			return fail(err)
		}
		if !running || !started.Before(fi.ModTime().Add(-time.Second)) {
			return 0
		}
		fmt.Fprintf(stdout, "containerd started %s, before the config's last change at %s\n",
			started.UTC().Format(time.RFC3339), fi.ModTime().UTC().Format(time.RFC3339))
	}
	if err := containerdproc.WaitStartAnswered(ctx, *containerdAddress, *podUID, os.Getpid()); err != nil {
		return fail(err)
	}
	restarted, err := containerdproc.Restart(ctx, *containerdAddress)
	if err != nil {
		return fail(err)
	}
	if restarted {
		fmt.Fprintln(stdout, "containerd restarted")
	}
	return 0
}

// replaceFile replaces file atomically, so containerd never reads half of
// it.
func replaceFile(file string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), ".config.toml-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if _, err := tmp.Write(data); err != nil {
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), file)
}
