package snapshotter

import (
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// flusher flushes the store's filesystem for commits, one syncfs for all the
// commits waiting at once: a commit is covered by any syncfs that starts
// after it asks, so concurrent commits (parallel unpack, concurrent pulls)
// share one instead of queueing one each behind the journal.
type flusher struct {
	mu      sync.Mutex
	cond    sync.Cond
	running bool
	started uint64 // syncfs calls started
	done    uint64 // the last syncfs call finished
	err     error  // its result
	sync    func(dir string) error
}

func newFlusher() *flusher {
	f := &flusher{sync: syncFS}
	f.cond.L = &f.mu
	return f
}

// flush returns once a syncfs of dir's filesystem that started after the
// call has finished, with that syncfs's error.
func (f *flusher) flush(dir string) error {
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
		err := f.sync(dir)
		f.mu.Lock()
		f.running, f.done, f.err = false, gen, err
		f.cond.Broadcast()
	}
	return f.err
}

func syncFS(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return unix.Syncfs(int(d.Fd()))
}
