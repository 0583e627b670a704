// Package containerdproc restarts the containerd serving a socket, so that it
// reads a changed config. It finds containerd by its socket rather than by
// name (the kernel says which process listens on it), stops it with SIGTERM,
// and waits for its service manager to start it again: containerd's systemd
// unit has Restart=always, and KillMode=process keeps running containers'
// shims alive across the restart. This is what `systemctl restart
// containerd` does, without needing systemd's bus inside a container.
package containerdproc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// ServerPID returns the process listening on the unix socket, as the
// caller's PID namespace numbers it. It is 0 when that process is outside
// the caller's PID namespace (a pod without hostPID).
func ServerPID(ctx context.Context, socket string) (int, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	raw, err := conn.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if credErr != nil {
		return 0, fmt.Errorf("peer credentials of %s: %w", socket, credErr)
	}
	return int(cred.Pid), nil
}

// Restart stops the containerd listening on socket and waits until a new
// one listens there. It reports false, and does nothing, when nothing
// listens (containerd reads the config whenever it starts). A containerd
// that does not come back before ctx ends is an error: its service manager
// does not restart it.
func Restart(ctx context.Context, socket string) (bool, error) {
	pid, running, err := listenerPID(ctx, socket)
	if err != nil {
		return false, err
	}
	if !running {
		log.G(ctx).WithField("socket", socket).Info("containerd is not running; it reads the new config when it starts")
		return false, nil
	}
	// A pidfd names this process and no later one with a reused PID.
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return false, fmt.Errorf("open containerd's process %d: %w", pid, err)
	}
	defer unix.Close(pidfd)
	log.G(ctx).WithField("pid", pid).WithField("socket", socket).Info("restarting containerd")
	if err := unix.PidfdSendSignal(pidfd, unix.SIGTERM, nil, 0); err != nil {
		return false, fmt.Errorf("stop containerd (pid %d): %w", pid, err)
	}
	if err := waitExit(ctx, pidfd); err != nil {
		return false, fmt.Errorf("containerd (pid %d) did not stop: %w", pid, err)
	}
	// Its service manager starts it again; wait until it listens.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		newPID, err := ServerPID(ctx, socket)
		if err == nil && newPID != pid {
			log.G(ctx).WithField("pid", newPID).Info("containerd is back")
			return true, nil
		}
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("containerd stopped but nothing listens on %s again (%v): is it run by a service manager that restarts it?", socket, ctx.Err())
		case <-tick.C:
		}
	}
}

// waitExit waits until the process behind pidfd exits: the pidfd becomes
// readable then.
func waitExit(ctx context.Context, pidfd int) error {
	for {
		timeout := -1
		if deadline, ok := ctx.Deadline(); ok {
			timeout = max(0, int(time.Until(deadline).Milliseconds()))
		}
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, timeout)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return err
		case n > 0:
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		}
	}
}

// listenerPID returns the PID of the containerd listening on socket; running
// is false when nothing does (no socket, or a stale one).
func listenerPID(ctx context.Context, socket string) (pid int, running bool, err error) {
	pid, err = ServerPID(ctx, socket)
	switch {
	case errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ECONNREFUSED):
		return 0, false, nil
	case err != nil:
		return 0, false, fmt.Errorf("find containerd: %w", err)
	case pid == 0:
		return 0, false, fmt.Errorf("containerd on %s runs in another PID namespace; run this in the host's (a pod needs hostPID: true)", socket)
	}
	return pid, true, nil
}

// StartTime returns when process pid started, to the clock tick (10ms).
func StartTime(pid int) (time.Time, error) {
	f, err := statFields(pid)
	if err != nil {
		return time.Time{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	// starttime is field 22, the 20th after the command name.
	ticks, err := strconv.ParseInt(f[19], 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("/proc/%d/stat starttime: %w", pid, err)
	}
	// starttime counts clock ticks (USER_HZ, 100 on every Linux ABI)
	// since boot, on the clock CLOCK_BOOTTIME reads.
	var now unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &now); err != nil {
		return time.Time{}, err
	}
	age := time.Duration(now.Nano()) - time.Duration(ticks)*10*time.Millisecond
	return time.Now().Add(-age), nil
}
