package containerdproc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultConfig is the config file containerd reads without --config.
const DefaultConfig = "/etc/containerd/config.toml"

// Process is the containerd listening on a socket, as /proc shows it.
type Process struct {
	PID int
	// Config is the config file it reads (--config, or containerd's
	// default), as a path in its own mount namespace.
	Config string
	// Parent is its parent process and that process's command name.
	Parent     int
	ParentName string
}

// Find returns the containerd listening on socket; running is false when
// nothing does.
func Find(ctx context.Context, socket string) (p Process, running bool, err error) {
	pid, running, err := listenerPID(ctx, socket)
	if err != nil || !running {
		return Process{}, running, err
	}
	p = Process{PID: pid}
	args, err := cmdline(pid)
	if err != nil {
		return Process{}, false, err
	}
	p.Config = configArg(args)
	if p.Parent, err = parentPID(pid); err != nil {
		return Process{}, false, err
	}
	p.ParentName = comm(p.Parent)
	return p, true, nil
}

// configArg finds containerd's --config (-c) in its arguments.
func configArg(args []string) string {
	for i, a := range args {
		for _, name := range []string{"--config", "-config", "-c", "--c"} {
			switch {
			case a == name && i+1 < len(args):
				return args[i+1]
			case strings.HasPrefix(a, name+"="):
				return strings.TrimPrefix(a, name+"=")
			}
		}
	}
	return DefaultConfig
}

// Reads says whether p reads file, comparing the files themselves (through
// p's root and working directory, so a file seen from a pod's mount of the
// host's /etc/containerd matches): a restart for a file containerd does not
// read would change nothing. file need not exist yet; its directory must.
func (p Process) Reads(file string) error {
	theirs := p.Config
	if !filepath.IsAbs(theirs) {
		theirs = filepath.Join(fmt.Sprintf("/proc/%d/cwd", p.PID), theirs)
	} else {
		theirs = filepath.Join(fmt.Sprintf("/proc/%d/root", p.PID), theirs)
	}
	same := func(a, b string) bool {
		fa, errA := os.Stat(a)
		fb, errB := os.Stat(b)
		return errA == nil && errB == nil && os.SameFile(fa, fb)
	}
	if same(file, theirs) || (filepath.Base(file) == filepath.Base(theirs) && same(filepath.Dir(file), filepath.Dir(theirs))) {
		return nil
	}
	return fmt.Errorf("containerd (pid %d) reads %s, not %s: restarting it would not load this file", p.PID, p.Config, file)
}

// Supervised says whether something starts p again once it stops: a
// service manager (systemd's containerd.service, runit, s6, supervisord, a
// test's supervisor) is its parent. A containerd started by hand (from a
// shell, sudo, nohup, a terminal multiplexer), or daemonized under an init
// that does not supervise it, would stay stopped.
func (p Process) Supervised() error {
	if startedByHand(p.ParentName) {
		return fmt.Errorf("containerd (pid %d) runs under %s (pid %d), which does not start it again once it stops: write the file without --restart and restart containerd yourself", p.PID, p.ParentName, p.Parent)
	}
	if p.Parent == 1 {
		if comm(1) != "systemd" {
			return fmt.Errorf("containerd (pid %d) is a daemon under %s (pid 1), which does not start it again once it stops: write the file without --restart and restart containerd yourself", p.PID, comm(1))
		}
		cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", p.PID))
		if !bytes.Contains(cg, []byte(".service")) {
			return fmt.Errorf("containerd (pid %d) runs under systemd but in no service unit (its cgroups: %s): nothing starts it again once it stops; restart it yourself", p.PID, strings.TrimSpace(string(cg)))
		}
	}
	return nil
}

// startedByHand says whether a parent of this name is how a person starts
// a program (a shell, or a command run from one), not a service manager.
func startedByHand(name string) bool {
	switch name {
	case "sh", "bash", "dash", "ash", "zsh", "ksh", "mksh", "fish", "tcsh", "csh", "busybox",
		"sudo", "su", "doas", "runuser", "nohup", "setsid", "env", "timeout", "script",
		"screen", "tmux: server", "sshd", "login":
		return true
	}
	return false
}

func cmdline(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, fmt.Errorf("read containerd's command line: %w", err)
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"), nil
}

func comm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

// statFields are /proc/PID/stat's fields after the command name, which may
// hold spaces and parentheses: field 3 (state) is the first.
func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, errors.New("unexpected format")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return nil, errors.New("unexpected format")
	}
	return f, nil
}

func parentPID(pid int) (int, error) {
	f, err := statFields(pid)
	if err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return strconv.Atoi(f[1])
}
