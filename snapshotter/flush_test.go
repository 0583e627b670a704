package snapshotter

import (
	"sync"
	"sync/atomic"
	"testing"
)

// TestFlusherCoversEveryCaller: concurrent commits share syncfs calls, and
// each returns only after a syncfs that started after it asked has
// finished (real syncfs calls, counted).
func TestFlusherCoversEveryCaller(t *testing.T) {
	dir := t.TempDir()
	f := newFlusher()
	var clock atomic.Int64 // orders the events below
	type span struct{ start, end int64 }
	var mu sync.Mutex
	var syncs []span
	f.sync = func(dir string) error {
		s := span{start: clock.Add(1)}
		err := syncFS(dir)
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
				if err := f.flush(dir); err != nil {
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

// TestWritebackRunsWhileUnpacking: passes run (real syncfs calls, counted)
// while an unpack is in flight, none before, and close stops the loop.
func TestWritebackRunsWhileUnpacking(t *testing.T) {
	dir := t.TempDir()
	f := newFlusher()
	passes := make(chan struct{}, 100)
	f.sync = func(dir string) error {
		select {
		case passes <- struct{}{}:
		default:
		}
		return syncFS(dir)
	}
	w := startWriteback(f, dir, 0)
	// Nothing unpacks yet: a Commit's own flush is the only syncfs.
	if err := f.flush(dir); err != nil {
		t.Fatal(err)
	}
	if n := len(passes); n != 1 {
		t.Fatalf("%d syncfs calls with nothing unpacking and one flush, want 1", n)
	}
	<-passes
	w.begin("layer")
	for range 3 {
		<-passes // blocks until the loop runs: the test's timeout if it never does
	}
	w.end("layer")
	w.close()
}
