package containerdproc

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The test binary doubles as a stand-in for containerd: with
// STRATA_TEST_LISTEN set it listens on that socket until SIGTERM.
func TestMain(m *testing.M) {
	if path := os.Getenv("STRATA_TEST_LISTEN"); path != "" {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM)
		os.Remove(path)
		l, err := net.Listen("unix", path)
		if err != nil {
			os.Exit(2)
		}
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		os.Stdout.WriteString("listening\n")
		<-sig
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// server is one run of the stand-in, started once it listens.
type server struct {
	cmd  *exec.Cmd
	done chan error
}

func startServer(t *testing.T, socket string) *server {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	// Under -race a process sleeps a second at exit unless told not to.
	cmd.Env = append(os.Environ(), "STRATA_TEST_LISTEN="+socket, "GORACE=atexit_sleep_ms=0")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait for "listening", said once the socket accepts.
	buf := make([]byte, len("listening\n"))
	if _, err := out.Read(buf); err != nil {
		t.Fatalf("stand-in did not start: %v", err)
	}
	s := &server{cmd: cmd, done: make(chan error, 1)}
	go func() { s.done <- cmd.Wait() }()
	return s
}

// supervise runs the stand-in like a service manager with Restart=always:
// each run that exits is replaced. It returns the runs so far.
func supervise(t *testing.T, socket string) func() []*server {
	var mu sync.Mutex
	runs := []*server{startServer(t, socket)}
	stop := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			mu.Lock()
			cur := runs[len(runs)-1]
			mu.Unlock()
			select {
			case <-stop:
				cur.cmd.Process.Kill()
				<-cur.done
				return
			case err := <-cur.done:
				cur.done <- err // for the test to read too
				next := startServer(t, socket)
				mu.Lock()
				runs = append(runs, next)
				mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-finished })
	return func() []*server {
		mu.Lock()
		defer mu.Unlock()
		return append([]*server(nil), runs...)
	}
}

func TestRestartReplacesTheListener(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "containerd.sock")
	runs := supervise(t, socket)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	first := runs()[0]
	pid, err := ServerPID(ctx, socket)
	if err != nil || pid != first.cmd.Process.Pid {
		t.Fatalf("ServerPID = %d, %v; the listener is %d", pid, err, first.cmd.Process.Pid)
	}
	restarted, err := Restart(ctx, socket)
	if err != nil || !restarted {
		t.Fatalf("Restart = %v, %v", restarted, err)
	}
	// The first run got SIGTERM (and exited cleanly on it), and the one
	// listening now is another process.
	if err := <-first.done; err != nil {
		t.Fatalf("first run exited with %v, want a clean exit on SIGTERM", err)
	}
	now, err := ServerPID(ctx, socket)
	if err != nil || now == pid {
		t.Fatalf("after restart ServerPID = %d, %v (was %d)", now, err, pid)
	}
	if got := runs(); len(got) != 2 || got[1].cmd.Process.Pid != now {
		t.Fatalf("%d runs; the listener is %d", len(got), now)
	}
}

func TestRestartWithoutContainerd(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	// No socket at all.
	if restarted, err := Restart(ctx, filepath.Join(dir, "none.sock")); err != nil || restarted {
		t.Fatalf("missing socket: %v, %v", restarted, err)
	}
	// A socket file left by a containerd that is gone.
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if restarted, err := Restart(ctx, stale); err != nil || restarted {
		t.Fatalf("stale socket: %v, %v", restarted, err)
	}
}

// A containerd nobody restarts: Restart says so instead of reporting success.
func TestRestartNotRestartedBySupervisor(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "containerd.sock")
	s := startServer(t, socket)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	restarted, err := Restart(ctx, socket)
	if err == nil || restarted || !strings.Contains(err.Error(), "service manager") {
		t.Fatalf("Restart = %v, %v", restarted, err)
	}
	if err := <-s.done; err != nil {
		t.Fatalf("stand-in exited with %v", err)
	}
	// Nothing listens any more: the socket is gone or refuses.
	if _, err := ServerPID(context.Background(), socket); !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ECONNREFUSED) {
		t.Fatalf("ServerPID after the stop: %v", err)
	}
}

// StartTime agrees with the wall clock around the process's start, to the
// kernel's tick.
func TestStartTime(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "containerd.sock")
	before := time.Now()
	s := startServer(t, socket)
	after := time.Now()
	defer func() { s.cmd.Process.Kill(); <-s.done }()
	pid, err := ServerPID(context.Background(), socket)
	if err != nil {
		t.Fatal(err)
	}
	got, err := StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	// One tick (10ms) of truncation, and a little for the clocks' reads.
	if got.Before(before.Add(-20*time.Millisecond)) || got.After(after.Add(20*time.Millisecond)) {
		t.Fatalf("started %v; the process was started between %v and %v", got, before, after)
	}
}
