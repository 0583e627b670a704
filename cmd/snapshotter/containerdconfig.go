package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/containerd/v2/plugins/snapshots/overlay/overlayutils"

	"github.com/strata-snapshotter/strata/containerdconfig"
	"github.com/strata-snapshotter/strata/containerdproc"
)

// runContainerdConfig registers strata in containerd's config file: the
// one recommended way to wire the two. It prints the patched file (to
// review), or with --write replaces it, only when something changed, keeping
// the original beside it, and prints "changed" or "unchanged": containerd
// needs a restart exactly when it says changed. With --restart it also
// restarts containerd then, and only then (the DaemonSet's init step, which
// must leave containerd alone when only strata's version changes). strata's
// address and root come from strata's config, as the daemon reads them.
func runContainerdConfig(g *globals, args []string, stdout, stderr io.Writer) int {
	fl := subcommandFlags(g, "containerd-config", stdout, stderr)
	file := setting{value: containerdproc.DefaultConfig, path: true}
	fl.Var(&file, "file", "containerd's config `FILE`")
	create := fl.Bool("create", false, "start --file as a new version 3 config when it does not exist (its directory must)")
	cri := fl.Bool("cri", false, "make strata the snapshotter of containerd's CRI plugin (Kubernetes' default-snapshotter mode)")
	handler := fl.String("runtime-handler", "", "add a CRI runtime handler of this `NAME`, the default runtime with strata as its snapshotter (for a Kubernetes RuntimeClass)")
	bootstrap := fl.String("bootstrap-handler", "", "with --cri and --runtime-handler: keep this CRI runtime handler (`NAME`, usually runc) on containerd's overlayfs for strata's own pod, and make --runtime-handler the default runtime")
	write := fl.Bool("write", false, "replace the file (keeping the original as FILE.strata-backup-TIME) instead of printing the result")
	restart := fl.Bool("restart", false, "with --write: when the file changed, or containerd started before its last change, restart the containerd listening on --containerd-address (SIGTERM; its service manager starts it again) and wait until it is back. Refused before anything changes when that containerd reads another file or nothing would start it again")
	containerdAddress := setting{value: "/run/containerd/containerd.sock", path: true}
	fl.Var(&containerdAddress, "containerd-address", "containerd's `SOCKET`, for --restart")
	restartTimeout := fl.Duration("restart-timeout", 2*time.Minute, "how long (`D`, such as 2m) --restart waits for containerd to stop and come back")
	podUID := fl.String("pod-uid", "", "with --restart, run as the init container of the pod with this `UID`: first wait until containerd's CRI reports this container running, so the kubelet's start of it is answered before containerd restarts")
	if _, code, ok := parseArgs(fl, args, 0); !ok {
		return code
	}
	if *restart && !*write {
		fmt.Fprintln(stderr, "strata-snapshotter containerd-config: --restart needs --write")
		return exitUsage
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "strata-snapshotter containerd-config: %v\n", err)
		return exitFailure
	}
	cfg, err := g.load()
	if err != nil {
		return fail(err)
	}
	in, mode, existed, err := readContainerdConfig(file.value, *create)
	if err != nil {
		return fail(err)
	}
	// remap-ids only where the kernel does idmapped mounts; elsewhere
	// containerd falls back to copying the image for a user namespace.
	remap, err := overlayutils.SupportsIDMappedMounts()
	if !remap {
		fmt.Fprintf(stderr, "idmapped mounts unsupported here (%v): not advertising remap-ids; containerd copies the image, chowned, for each user namespace\n", err)
	}
	out, changed, err := containerdconfig.Patch(in, containerdconfig.Options{Address: cfg.Address, Root: cfg.Root, CRI: *cri, RemapIDs: remap, RuntimeHandler: *handler, BootstrapHandler: *bootstrap})
	if err != nil {
		return fail(fmt.Errorf("%s: %w", file.value, err))
	}
	if !*write {
		stdout.Write(out)
		if changed {
			fmt.Fprintf(stderr, "changed: write it with --write; containerd needs a restart then\n")
		} else {
			fmt.Fprintln(stderr, "unchanged")
		}
		return 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), *restartTimeout)
	defer cancel()
	var target restartTarget
	if *restart {
		// Every reason to refuse comes before the file is touched.
		if target, err = findRestartTarget(ctx, containerdAddress.value, file.value); err != nil {
			return fail(err)
		}
	}
	if changed {
		backup, err := replaceFile(file.value, out, mode, existed)
		if err != nil {
			return fail(err)
		}
		if backup != "" {
			fmt.Fprintf(stderr, "kept the original as %s\n", backup)
		}
		fmt.Fprintln(stdout, "changed")
	} else {
		fmt.Fprintln(stdout, "unchanged")
	}
	if !*restart || !target.running {
		if *restart {
			fmt.Fprintf(stderr, "no containerd listens on %s; it reads the file when it starts\n", containerdAddress.value)
		}
		return 0
	}
	if !changed {
		// A run cut off between writing the file and restarting containerd
		// (killed, or timed out waiting) leaves a containerd that never read
		// it: restart one that started before the file's last change. A
		// second's margin covers the clocks' resolution; after a restart
		// containerd starts well after the write.
		fi, err := os.Stat(file.value)
		if err != nil {
			return fail(err)
		}
		if !target.started.Before(fi.ModTime().Add(-time.Second)) {
			return 0
		}
		fmt.Fprintf(stdout, "containerd started %s, before the config's last change at %s\n",
			target.started.UTC().Format(time.RFC3339), fi.ModTime().UTC().Format(time.RFC3339))
	}
	if err := containerdproc.WaitStartAnswered(ctx, containerdAddress.value, *podUID, os.Getpid()); err != nil {
		return fail(err)
	}
	restarted, err := containerdproc.Restart(ctx, containerdAddress.value)
	if err != nil {
		return fail(err)
	}
	if restarted {
		fmt.Fprintln(stdout, "containerd restarted")
	}
	return 0
}

// readContainerdConfig reads containerd's config and its mode. A missing
// file is refused unless create is set (a mistyped --file must not start a
// config nobody reads), and even then its directory must exist.
func readContainerdConfig(file string, create bool) (in []byte, mode os.FileMode, existed bool, err error) {
	in, err = os.ReadFile(file)
	switch {
	case errors.Is(err, os.ErrNotExist) && !create:
		return nil, 0, false, fmt.Errorf("%s does not exist: check --file, or pass --create to start a new config there (containerd reads %s unless started with --config)", file, containerdproc.DefaultConfig)
	case errors.Is(err, os.ErrNotExist):
		if fi, err := os.Stat(filepath.Dir(file)); err != nil || !fi.IsDir() {
			return nil, 0, false, fmt.Errorf("--create: the directory of %s must exist: %v", file, err)
		}
		return []byte("version = 3\n"), 0o644, false, nil
	case err != nil:
		return nil, 0, false, err
	}
	fi, err := os.Stat(file)
	if err != nil {
		return nil, 0, false, err
	}
	return in, fi.Mode().Perm(), true, nil
}

// restartTarget is the containerd --restart would restart.
type restartTarget struct {
	running bool
	started time.Time
}

// findRestartTarget checks, before anything changes, that a restart of the
// containerd on socket would do what it is for: that containerd reads file,
// and something starts it again once it stops. Nothing listening is fine:
// containerd reads the file when it starts.
func findRestartTarget(ctx context.Context, socket, file string) (restartTarget, error) {
	p, running, err := containerdproc.Find(ctx, socket)
	if err != nil || !running {
		return restartTarget{}, err
	}
	if err := p.Reads(file); err != nil {
		return restartTarget{}, fmt.Errorf("--restart: %w", err)
	}
	if err := p.Supervised(); err != nil {
		return restartTarget{}, fmt.Errorf("--restart: %w", err)
	}
	started, err := containerdproc.StartTime(p.PID)
	if err != nil {
		return restartTarget{}, err
	}
	return restartTarget{running: true, started: started}, nil
}

// replaceFile replaces file atomically, so containerd never reads half of
// it, after keeping the original (when there was one) beside it as
// FILE.strata-backup-TIME; it returns that backup's path.
func replaceFile(file string, data []byte, mode os.FileMode, existed bool) (backup string, err error) {
	dir := filepath.Dir(file)
	if existed {
		backup = file + ".strata-backup-" + time.Now().UTC().Format("20060102T150405Z")
		if err := copyFile(file, backup, mode); err != nil {
			return "", fmt.Errorf("keep the original: %w", err)
		}
	}
	if err := writeSynced(dir, ".config.toml-", data, mode, func(tmp string) error { return os.Rename(tmp, file) }); err != nil {
		return "", err
	}
	return backup, nil
}

func copyFile(from, to string, mode os.FileMode) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return writeSynced(filepath.Dir(to), ".backup-", b, mode, func(tmp string) error { return os.Rename(tmp, to) })
}

// writeSynced writes data to a new file in dir, flushed, then hands it to
// place (which renames it into place).
func writeSynced(dir, pattern string, data []byte, mode os.FileMode, place func(tmp string) error) error {
	tmp, err := os.CreateTemp(dir, pattern)
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
	return place(tmp.Name())
}
