package snapshotter

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
)

// TestFlusherCoversEveryCaller: concurrent commits share syncfs calls, and
// each returns only after a syncfs that started after it asked has
// finished (real syncfs calls, counted).
func TestFlusherCoversEveryCaller(t *testing.T) {
	f, err := newFlusher(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer f.close()
	var clock atomic.Int64 // orders the events below
	type span struct{ start, end int64 }
	var mu sync.Mutex
	var syncs []span
	syncfs := f.sync
	f.sync = func() error {
		s := span{start: clock.Add(1)}
		err := syncfs()
		s.end = clock.Add(1)
		mu.Lock()
		syncs = append(syncs, s)
		mu.Unlock()
		return err
	}
	const workers, each = 8, 25
	calls := make([]span, workers*each)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				c := &calls[w*each+i]
				c.start = clock.Add(1)
				if err := f.flush(); err != nil {
					t.Error(err)
				}
				c.end = clock.Add(1)
			}
		})
	}
	wg.Wait()
	for _, c := range calls {
		covered := false
		for _, s := range syncs {
			covered = covered || (s.start > c.start && s.end < c.end)
		}
		if !covered {
			t.Fatalf("a flush called at %d returned at %d with no syncfs between (syncs %v)", c.start, c.end, syncs)
		}
	}
	t.Logf("%d flushes, %d syncfs calls", len(calls), len(syncs))
	if len(syncs) >= len(calls) {
		t.Errorf("%d concurrent flushes made %d syncfs calls: none shared", len(calls), len(syncs))
	}
}

// TestFlusherErrorStays: the kernel reports a writeback error once; every
// flush after it fails too, since the lost data may be anyone's.
func TestFlusherErrorStays(t *testing.T) {
	f, err := newFlusher(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer f.close()
	syncfs, eio := f.sync, errors.New("input/output error")
	f.sync = func() error { f.sync = syncfs; return eio }
	for i := range 3 {
		if err := f.flush(); !errors.Is(err, eio) {
			t.Fatalf("flush %d after a failed syncfs: %v, want the failure", i, err)
		}
	}
}
