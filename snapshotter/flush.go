package snapshotter

import (
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// flusher flushes the store's filesystem for commits, one syncfs for all the
// commits waiting at once: a commit is covered by any syncfs that starts
// after it asks, so concurrent commits (concurrent pulls) share one instead
// of queueing one each behind the journal.
//
// The syncfs calls go through one descriptor of the root, opened at start:
// the kernel reports a writeback error to each open descriptor once, on
// the first syncfs through it after the error, so a descriptor opened per
// call would miss an error that happened before it was opened. An error
// stays: the flush that saw it cannot tell whose data was lost, so every
// later commit fails too, until an operator has checked the disk and
// restarted strata.
type flusher struct {
	root *os.File
	sync func() error // syncfs of root's filesystem

	mu      sync.Mutex
	cond    sync.Cond
	running bool
	started uint64 // syncfs calls started
	done    uint64 // the last syncfs call finished
	failed  error  // the first error a syncfs returned
}

func newFlusher(root string) (*flusher, error) {
	d, err := os.Open(root)
	if err != nil {
		return nil, err
	}
	f := &flusher{root: d}
	f.sync = func() error { return unix.Syncfs(int(d.Fd())) }
	f.cond.L = &f.mu
	return f, nil
}

// flush returns once a syncfs that started after the call has finished;
// its error is that syncfs's or any earlier one's.
func (f *flusher) flush() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	need := f.started + 1
	for f.done < need {
		if f.running {
			f.cond.Wait()
			continue
		}
		f.running = true
		f.started++
		gen := f.started
		f.mu.Unlock()
		err := f.sync()
		f.mu.Lock()
		if err != nil && f.failed == nil {
			f.failed = fmt.Errorf("flushing the store's filesystem failed, so written layers may be lost: %w; check the disk and restart strata", err)
		}
		f.running, f.done = false, gen
		f.cond.Broadcast()
	}
	return f.failed
}

func (f *flusher) close() error {
	return f.root.Close()
}
