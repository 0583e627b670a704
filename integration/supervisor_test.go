package integration

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// supervisor runs containerd the way systemd's containerd.service does
// (Restart=always): whenever it exits, it is started again with the same
// config file. There is no systemd here; this is its stand-in.
type supervisor struct {
	e       *Env
	cfg     string
	started chan int // the run number, each time a run has booted
	stop    chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	err     error
}

// superviseContainerd starts the supervisor; halt stops it restarting
// (before the teardown stops the last run).
func (e *Env) superviseContainerd(cfg string) *supervisor {
	s := &supervisor{e: e, cfg: cfg, started: make(chan int, 16), stop: make(chan struct{}), done: make(chan struct{})}
	go s.loop()
	return s
}

func (s *supervisor) halt() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
}

func (s *supervisor) loop() {
	defer close(s.done)
	for n := 1; ; n++ {
		select {
		case <-s.stop: // halted while the last run exited
			return
		default:
		}
		p, err := startProcErr(s.e.Dir, fmt.Sprintf("containerd-%d", n), filepath.Join(toolsBin, "containerd"), "--config", s.cfg)
		if err == nil {
			err = p.waitLogErr("containerd successfully booted", time.Minute)
		}
		s.mu.Lock()
		if p != nil {
			s.e.Containerd = p
		}
		s.err = err
		s.mu.Unlock()
		if err != nil {
			close(s.started)
			return
		}
		s.started <- n
		select {
		case <-p.exited:
		case <-s.stop:
			return
		}
	}
}

// waitStart waits until containerd's run number n has booted.
func (s *supervisor) waitStart(t *testing.T, n int, limit time.Duration) {
	t.Helper()
	select {
	case got, ok := <-s.started:
		if !ok {
			s.mu.Lock()
			defer s.mu.Unlock()
			t.Fatalf("containerd did not boot: %v", s.err)
		}
		if got != n {
			t.Fatalf("containerd run %d booted, want run %d", got, n)
		}
	case <-time.After(limit):
		t.Fatalf("containerd run %d did not boot within %v", n, limit)
	}
}
