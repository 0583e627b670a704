package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/strata-snapshotter/strata/internal/testutil"
)

// binary is the strata-snapshotter built once for the tests in this package.
var binary string

func TestMain(m *testing.M) {
	if socket := os.Getenv(fakeContainerdEnv); socket != "" {
		os.Exit(fakeContainerdMain(socket))
	}
	dir, err := os.MkdirTemp("", "strata-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "strata-snapshotter")
	build := exec.Command("go", "build", "-o", binary, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build strata-snapshotter:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if fuzzServer.dir != "" {
		os.RemoveAll(fuzzServer.dir)
	}
	os.Exit(code)
}

// daemon is a strata-snapshotter process started by a test.
type daemon struct {
	t       testing.TB
	cmd     *exec.Cmd
	root    string
	address string
	admin   string

	mu     sync.Mutex
	output bytes.Buffer
	lines  chan string     // every line the daemon logs, for waitFor
	ready  <-chan struct{} // closed when the daemon notifies READY=1
	exited chan struct{}
	err    error // the process's exit status, once exited is closed
}

// startDaemon runs the binary with args (plus --root and --address unless
// given) and, unless the caller expects failure, waits until it logs that it
// serves.
func startDaemon(t testing.TB, root string, args ...string) *daemon {
	t.Helper()
	d, err := launch(t, root, args...)
	if err == nil {
		err = d.serving()
	}
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// newDaemon starts the binary without waiting for it to serve.
func newDaemon(t testing.TB, root string, args ...string) *daemon {
	t.Helper()
	d, err := launch(t, root, args...)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// launch starts the binary. It reports errors rather than failing t, so that
// it can run outside t's goroutine (containerd's suite calls its factory from
// its subtests).
func launch(t testing.TB, root string, args ...string) (*daemon, error) {
	dir, err := os.MkdirTemp("", "strata-")
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d := &daemon{
		t:       t,
		root:    root,
		address: filepath.Join(dir, "strata.sock"),
		lines:   make(chan string, 1024),
		exited:  make(chan struct{}),
	}
	var full []string
	if !contains(args, "--config") {
		// Never read the host's /etc/strata/config.toml: an empty file
		// stands for "defaults".
		empty := filepath.Join(dir, "config.toml")
		if err := os.WriteFile(empty, nil, 0o600); err != nil {
			return nil, err
		}
		full = append(full, "--config", empty)
	}
	full = append(full, "--root", root, "--address", d.address, "--log-level", "debug")
	// Later flags win, so args may override any of the above.
	full = append(full, args...)
	for i, a := range args {
		if a == "--address" && i+1 < len(args) {
			d.address = args[i+1]
		}
	}
	// The admin socket is the default one, beside the address, unless
	// args name one.
	d.admin = adminAddressFor(d.address)
	for i, a := range args {
		if a == "--admin-address" && i+1 < len(args) {
			d.admin = args[i+1]
		}
	}
	d.cmd = exec.Command(binary, full...)
	// Readiness as systemd learns it (Type=notify): READY=1 on a
	// datagram socket named by NOTIFY_SOCKET. A test that listens there
	// itself (TestSystemdNotify) keeps its own.
	if os.Getenv("NOTIFY_SOCKET") == "" {
		notify := filepath.Join(dir, "notify.sock")
		d.ready = testutil.NotifySocket(t, notify)
		d.cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notify)
	}
	stderr, err := d.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			d.mu.Lock()
			d.output.WriteString(sc.Text() + "\n")
			d.mu.Unlock()
			select {
			case d.lines <- sc.Text():
			default: // nobody is waiting for this many lines
			}
		}
		d.err = d.cmd.Wait()
		close(d.exited)
		close(d.lines)
	}()
	t.Cleanup(func() {
		select {
		case <-d.exited:
		default:
			d.cmd.Process.Kill()
			<-d.exited
		}
		if t.Failed() {
			t.Logf("daemon output:\n%s", d.logs())
		}
	})
	return d, nil
}

func contains(args []string, s string) bool {
	for _, a := range args {
		if a == s {
			return true
		}
	}
	return false
}

func (d *daemon) logs() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.output.String()
}

// serving waits until the daemon tells its service manager it serves
// (READY=1), or, when a test took NOTIFY_SOCKET, until it logs so.
func (d *daemon) serving() error {
	if os.Getenv("NOTIFY_SOCKET") != "" {
		return d.logged("strata-snapshotter serving")
	}
	select {
	case <-d.ready:
		return nil
	case <-d.exited:
		select {
		case <-d.ready: // ready, then stopped
			return nil
		default:
		}
		return fmt.Errorf("daemon exited (%v) before it was ready; output:\n%s", d.err, d.logs())
	}
}

// logged blocks until the daemon logs a line containing s, and fails if the
// daemon exits first.
func (d *daemon) logged(s string) error {
	for line := range d.lines {
		if strings.Contains(line, s) {
			return nil
		}
	}
	return fmt.Errorf("daemon exited (%v) before logging %q; output:\n%s", d.err, s, d.logs())
}

// waitFor is logged for the test goroutine.
func (d *daemon) waitFor(s string) {
	d.t.Helper()
	if err := d.logged(s); err != nil {
		d.t.Fatal(err)
	}
}

// exitCode waits for the daemon to exit and returns its exit code.
func (d *daemon) exitCode() (int, error) {
	select {
	case <-d.exited:
	case <-time.After(time.Minute):
		return 0, fmt.Errorf("daemon did not exit within a minute; output:\n%s", d.logs())
	}
	var ee *exec.ExitError
	if errors.As(d.err, &ee) {
		return ee.ExitCode(), nil
	}
	return 0, d.err
}

// wait is exitCode for the test goroutine.
func (d *daemon) wait() int {
	d.t.Helper()
	code, err := d.exitCode()
	if err != nil {
		d.t.Fatal(err)
	}
	return code
}

// terminate sends SIGTERM and requires a clean exit.
func (d *daemon) terminate() error {
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	code, err := d.exitCode()
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("daemon exited %d after SIGTERM; output:\n%s", code, d.logs())
	}
	return nil
}

// stop is terminate for the test goroutine.
func (d *daemon) stop() {
	d.t.Helper()
	if err := d.terminate(); err != nil {
		d.t.Fatal(err)
	}
}

// dial connects to the daemon's socket; grpc connects lazily, so this does
// not fail for a daemon that is down.
func (d *daemon) dial(opts ...grpc.DialOption) *grpc.ClientConn {
	conn, err := grpc.NewClient("unix://"+d.address, append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		panic(err) // only for a malformed target, which "unix://" + path is not
	}
	d.t.Cleanup(func() { conn.Close() })
	return conn
}

func (d *daemon) client() snapshotsapi.SnapshotsClient {
	return snapshotsapi.NewSnapshotsClient(d.dial())
}

// snapshotter is containerd's own proxy, as containerd uses it for a
// proxy_plugins entry.
func (d *daemon) snapshotter() snapshots.Snapshotter {
	return proxy.NewSnapshotter(d.client(), "strata")
}
