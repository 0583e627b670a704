package snapshotter

import (
	"os"
	"sync"
	"time"

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

// writeback starts writing layers to disk while containerd unpacks them,
// so that the flush a Commit waits for finds less left to write: the disk
// works while the unpacker decompresses and creates files. It flushes, a
// pass at a time, while any unpack is in flight (an active snapshot
// labelled with the layer it receives, from Prepare to Commit or Remove),
// each after a pause.
// Each pass is a syncfs through the flusher, so a Commit is never covered
// by a pass that started before it asked.
type writeback struct {
	flusher *flusher
	dir     string
	pause   time.Duration // between passes

	mu        sync.Mutex
	cond      sync.Cond
	unpacking map[string]bool // keys of the snapshots being unpacked into
	closed    bool
	done      chan struct{}
}

// writebackPause comes before each pass: a layer unpacked faster is left
// to its Commit's flush, and a long unpack of small files does not turn
// into a stream of journal commits.
const writebackPause = 50 * time.Millisecond

func startWriteback(f *flusher, dir string, pause time.Duration) *writeback {
	w := &writeback{flusher: f, dir: dir, pause: pause, unpacking: map[string]bool{}, done: make(chan struct{})}
	w.cond.L = &w.mu
	go w.run()
	return w
}

func (w *writeback) run() {
	defer close(w.done)
	for {
		w.mu.Lock()
		for len(w.unpacking) == 0 && !w.closed {
			w.cond.Wait()
		}
		closed := w.closed
		w.mu.Unlock()
		if closed {
			return
		}
		// A pause first: a small layer is committed before it ends, and
		// its Commit would otherwise wait for a pass that started
		// before it asked, then for its own.
		time.Sleep(w.pause)
		w.mu.Lock()
		busy := len(w.unpacking) > 0 && !w.closed
		w.mu.Unlock()
		if busy {
			// An error here is the next Commit's to report: its own
			// flush meets it again.
			_ = w.flusher.flush(w.dir)
		}
	}
}

// begin and end bracket an unpack into the snapshot key.
func (w *writeback) begin(key string) {
	w.mu.Lock()
	w.unpacking[key] = true
	w.cond.Broadcast()
	w.mu.Unlock()
}

func (w *writeback) end(key string) {
	w.mu.Lock()
	delete(w.unpacking, key)
	w.mu.Unlock()
}

func (w *writeback) close() {
	w.mu.Lock()
	w.closed = true
	w.cond.Broadcast()
	w.mu.Unlock()
	<-w.done
}
