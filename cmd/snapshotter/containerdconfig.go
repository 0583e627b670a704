package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
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
	var o containerdConfigOptions
	o.register(fl)
	if _, code, ok := parseArgs(fl, args, 0, 0); !ok {
		return code
	}
	if o.restart && !o.write {
		return usageError(stderr, "strata-snapshotter containerd-config", "--restart needs --write")
	}
	err := func() error {
		cfg, err := g.load()
		if err != nil {
			return err
		}
		// Its log (containerd's restart) in the configured level and
		// format, as the daemon's.
		if err := setUpLog(cfg, stderr); err != nil {
			return err
		}
		p, err := o.patch(cfg, stderr)
		switch {
		case err != nil:
			return err
		case !o.write:
			p.preview(stdout, stderr)
			return nil
		}
		return o.writeAndRestart(p, stdout, stderr)
	}()
	if err != nil {
		fmt.Fprintf(stderr, "strata-snapshotter containerd-config: %v\n", err)
		return exitFailure
	}
	return 0
}

type containerdConfigOptions struct {
	file, containerdAddress     setting
	create, cri, write, restart bool
	handler, bootstrap, podUID  string
	restartTimeout              time.Duration
}

func (o *containerdConfigOptions) register(fl *flag.FlagSet) {
	o.file = setting{value: containerdproc.DefaultConfig, path: true}
	o.containerdAddress = setting{value: "/run/containerd/containerd.sock", path: true}
	fl.Var(&o.file, "file", "containerd's config `FILE`")
	fl.BoolVar(&o.create, "create", false, "start --file as a new version 3 config when it does not exist (its directory must)")
	fl.BoolVar(&o.cri, "cri", false, "make strata the snapshotter of containerd's CRI plugin (Kubernetes' default-snapshotter mode)")
	fl.StringVar(&o.handler, "runtime-handler", "", "add a CRI runtime handler of this `NAME`, the default runtime with strata as its snapshotter (for a Kubernetes RuntimeClass)")
	fl.StringVar(&o.bootstrap, "bootstrap-handler", "", "with --cri and --runtime-handler: keep this CRI runtime handler (`NAME`, usually runc) on containerd's overlayfs for strata's own pod, and make --runtime-handler the default runtime")
	fl.BoolVar(&o.write, "write", false, "replace the file (keeping the original as FILE.strata-backup-TIME) instead of printing the result")
	fl.BoolVar(&o.restart, "restart", false, "with --write: when the file changed, or containerd started before its last change, restart the containerd listening on --containerd-address (SIGTERM; its service manager starts it again) and wait until it is back. Refused before anything changes when that containerd reads another file or nothing would start it again")
	fl.Var(&o.containerdAddress, "containerd-address", "containerd's `SOCKET`, for --restart")
	fl.DurationVar(&o.restartTimeout, "restart-timeout", 2*time.Minute, "how long (`D`, such as 2m) --restart waits for containerd to stop and come back")
	fl.StringVar(&o.podUID, "pod-uid", "", "with --restart, run as the init container of the pod with this `UID`: first wait until containerd's CRI reports this container running, so the kubelet's start of it is answered before containerd restarts")
}

// patched is containerd's config file with strata registered.
type patched struct {
	in, out []byte // the file as it was (nil when it did not exist) and as patched
	changed bool
	mode    os.FileMode
}

func (o *containerdConfigOptions) patch(cfg Config, stderr io.Writer) (patched, error) {
	if cfg.ShareFiles && (o.cri || o.handler != "") {
		return patched{}, fmt.Errorf("share_files is on in strata's config, and containerd's CRI plugin cannot run containers on shared files: " +
			"it reads a container's root filesystem itself to find users and groups, and cannot read an overlay whose object store is a data-only layer (containerd 2.3 and later); " +
			"turn share_files off for a node that serves Kubernetes")
	}
	in, mode, err := readContainerdConfig(o.file.value, o.create)
	if err != nil {
		return patched{}, err
	}
	src := in
	if src == nil { // --create: a new file
		src = []byte("version = 3\n")
	}
	// remap-ids only where the kernel does idmapped mounts; elsewhere
	// containerd falls back to copying the image for a user namespace.
	remap, err := overlayutils.SupportsIDMappedMounts()
	if !remap {
		fmt.Fprintf(stderr, "idmapped mounts unsupported here (%v): not advertising remap-ids; containerd copies the image, chowned, for each user namespace\n", err)
	}
	out, changed, err := containerdconfig.Patch(src, containerdconfig.Options{Address: cfg.Address, Root: cfg.Root, CRI: o.cri, RemapIDs: remap, RuntimeHandler: o.handler, BootstrapHandler: o.bootstrap})
	if err != nil {
		return patched{}, fmt.Errorf("%s: %w", o.file.value, err)
	}
	return patched{in: in, out: out, changed: changed, mode: mode}, nil
}

// preview prints the patched file, to review.
func (p patched) preview(stdout, stderr io.Writer) {
	stdout.Write(p.out)
	if p.changed {
		fmt.Fprintf(stderr, "changed: write it with --write; containerd needs a restart then\n")
	} else {
		fmt.Fprintln(stderr, "unchanged")
	}
}

// writeAndRestart replaces the file when it changed and, with --restart,
// restarts containerd when it has not read the file: every reason to refuse
// the restart is found before the file is touched.
func (o *containerdConfigOptions) writeAndRestart(p patched, stdout, stderr io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), o.restartTimeout)
	defer cancel()
	var plan containerdproc.Plan
	if o.restart {
		var err error
		if plan, err = containerdproc.PlanRestart(ctx, o.containerdAddress.value, o.file.value, p.changed); err != nil {
			return fmt.Errorf("--restart: %w", err)
		}
	}
	if p.changed {
		backup, err := replaceFile(o.file.value, p)
		if err != nil {
			return err
		}
		if backup != "" {
			fmt.Fprintf(stderr, "kept the original as %s\n", backup)
		}
		fmt.Fprintln(stdout, "changed")
	} else {
		fmt.Fprintln(stdout, "unchanged")
	}
	if !o.restart {
		return nil
	}
	if !plan.Running {
		fmt.Fprintf(stderr, "no containerd listens on %s; it reads the file when it starts\n", plan.Socket)
		return nil
	}
	if plan.Reason == "" {
		return nil // containerd has read the file
	}
	if !p.changed {
		fmt.Fprintln(stdout, plan.Reason)
	}
	if err := containerdproc.WaitStartAnswered(ctx, plan.Socket, o.podUID, os.Getpid()); err != nil {
		return err
	}
	restarted, err := containerdproc.Restart(ctx, plan.Socket)
	if restarted {
		fmt.Fprintln(stdout, "containerd restarted")
	}
	return err
}

// readContainerdConfig reads containerd's config and its mode. A missing
// file is refused unless create is set (a mistyped --file must not start a
// config nobody reads), and even then its directory must exist; in is nil
// then.
func readContainerdConfig(file string, create bool) (in []byte, mode os.FileMode, err error) {
	in, err = os.ReadFile(file)
	switch {
	case errors.Is(err, os.ErrNotExist) && !create:
		return nil, 0, fmt.Errorf("%s does not exist: check --file, or pass --create to start a new config there (containerd reads %s unless started with --config)", file, containerdproc.DefaultConfig)
	case errors.Is(err, os.ErrNotExist):
		if fi, err := os.Stat(filepath.Dir(file)); err != nil || !fi.IsDir() {
			return nil, 0, fmt.Errorf("--create: %s must be an existing directory", filepath.Dir(file))
		}
		return nil, 0o644, nil
	case err != nil:
		return nil, 0, err
	}
	if strings.TrimSpace(string(in)) == "" {
		return nil, 0, fmt.Errorf("%s is empty: fill it with 'containerd config default > %s' (did that command run?), or remove it and pass --create", file, file)
	}
	fi, err := os.Stat(file)
	if err != nil {
		return nil, 0, err
	}
	return in, fi.Mode().Perm(), nil
}

// replaceFile replaces file with p's patched text atomically, so containerd
// never reads half of it, after keeping the original (when there was one)
// beside it as FILE.strata-backup-TIME; it returns that backup's path.
func replaceFile(file string, p patched) (backup string, err error) {
	if p.in != nil {
		// To the nanosecond: a second change within the second must not
		// replace the backup of the first.
		backup = file + ".strata-backup-" + time.Now().UTC().Format("20060102T150405.000000000Z")
		if err := writeSynced(backup, p.in, p.mode); err != nil {
			return "", fmt.Errorf("keep the original: %w", err)
		}
	}
	return backup, writeSynced(file, p.out, p.mode)
}

// writeSynced writes data to a new file beside path, flushed, and renames
// it into place.
func writeSynced(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-")
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
	return os.Rename(tmp.Name(), path)
}
