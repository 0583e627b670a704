package accounting

import (
	"testing"
)

func leaf(t *testing.T, r Report, key string) Leaf {
	t.Helper()
	for _, l := range r.Leaves {
		if l.Key == key {
			return l
		}
	}
	t.Fatalf("no leaf %q in %+v", key, r.Leaves)
	return Leaf{}
}

func compute(t *testing.T, nodes []Node) Report {
	t.Helper()
	r, err := Compute(nodes)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// A base of 1000 bytes under two images (10 and 20 bytes on top), and a
// container (5 bytes) on the first image.
var forest = []Node{
	{Key: "base", Kind: "committed", Bytes: 1000},
	{Key: "img-a", Parent: "base", Kind: "committed", Bytes: 10},
	{Key: "img-b", Parent: "base", Kind: "committed", Bytes: 20},
	{Key: "ctr-a", Parent: "img-a", Kind: "active", Bytes: 5},
}

func TestSharedBase(t *testing.T) {
	r := compute(t, forest)
	if len(r.Leaves) != 2 {
		t.Fatalf("leaves %+v, want ctr-a and img-b", r.Leaves)
	}
	a := leaf(t, r, "ctr-a")
	if a != (Leaf{Key: "ctr-a", Kind: "active", TotalBytes: 1015, UniqueBytes: 15, SharedBytes: 1000, Layers: 3}) {
		t.Errorf("ctr-a: %+v", a)
	}
	b := leaf(t, r, "img-b")
	if b != (Leaf{Key: "img-b", Kind: "committed", TotalBytes: 1020, UniqueBytes: 20, SharedBytes: 1000, Layers: 2}) {
		t.Errorf("img-b: %+v", b)
	}
	// The base is counted twice logically and once physically.
	if r.LogicalBytes != 2035 || r.PhysicalBytes != 1035 || r.SavedBytes != 1000 {
		t.Errorf("logical %d physical %d saved %d, want 2035 1035 1000", r.LogicalBytes, r.PhysicalBytes, r.SavedBytes)
	}
}

// TestDivergingChains: three leaves on one long chain that diverges at two
// points; each layer counts as shared exactly when more than one leaf is
// above it.
func TestDivergingChains(t *testing.T) {
	r := compute(t, []Node{
		{Key: "l1", Bytes: 100},
		{Key: "l2", Parent: "l1", Bytes: 200},
		{Key: "x", Parent: "l2", Bytes: 1},
		{Key: "l3", Parent: "l2", Bytes: 300},
		{Key: "y", Parent: "l3", Bytes: 2},
		{Key: "z", Parent: "l3", Bytes: 4},
	})
	for key, want := range map[string][3]int64{
		"x": {301, 1, 300}, // l1 and l2 shared with y and z
		"y": {602, 2, 600}, // l1, l2, l3 shared
		"z": {604, 4, 600},
	} {
		l := leaf(t, r, key)
		if got := [3]int64{l.TotalBytes, l.UniqueBytes, l.SharedBytes}; got != want {
			t.Errorf("%s: total/unique/shared %v, want %v", key, got, want)
		}
	}
	if r.PhysicalBytes != 607 || r.LogicalBytes != 301+602+604 || r.SavedBytes != r.LogicalBytes-607 {
		t.Errorf("report %+v", r)
	}
}

// TestRemovingALeafMovesSharedToUnique: once ctr-a and img-a are gone, the
// base is img-b's alone.
func TestRemovingALeafMovesSharedToUnique(t *testing.T) {
	r := compute(t, []Node{forest[0], forest[2]})
	b := leaf(t, r, "img-b")
	if b.UniqueBytes != 1020 || b.SharedBytes != 0 {
		t.Errorf("img-b after the other image went: %+v, want all 1020 bytes unique", b)
	}
	if r.SavedBytes != 0 {
		t.Errorf("saved %d with nothing shared", r.SavedBytes)
	}
}

func TestMissingParentRefused(t *testing.T) {
	if _, err := Compute([]Node{{Key: "orphan", Parent: "gone"}}); err == nil {
		t.Fatal("a snapshot whose parent is missing was accounted")
	}
}

func TestEmptyStore(t *testing.T) {
	r := compute(t, nil)
	if r.LogicalBytes != 0 || r.PhysicalBytes != 0 || r.Leaves == nil {
		t.Fatalf("empty store: %+v (leaves must be an empty list, not null)", r)
	}
}

// TestOneDirectoryTwoSnapshots: a layer committed twice (two keys, one
// directory, as parallel unpack of a layer already held makes it) is stored
// once: physical counts it once, and a leaf on either copy shares it.
func TestOneDirectoryTwoSnapshots(t *testing.T) {
	r := compute(t, []Node{
		{Key: "base", Kind: "committed", Dir: "B", Bytes: 1000},
		{Key: "top-ns1", Parent: "base", Kind: "committed", Dir: "T", Bytes: 100},
		{Key: "top-ns2", Parent: "base", Kind: "committed", Dir: "T", Bytes: 100},
	})
	if r.PhysicalBytes != 1100 || r.LogicalBytes != 2200 || r.SavedBytes != 1100 {
		t.Fatalf("physical %d, logical %d, saved %d; want 1100, 2200, 1100", r.PhysicalBytes, r.LogicalBytes, r.SavedBytes)
	}
	for _, key := range []string{"top-ns1", "top-ns2"} {
		if l := leaf(t, r, key); l.UniqueBytes != 0 || l.SharedBytes != 1100 {
			t.Errorf("%s: unique %d, shared %d; want 0 and 1100", key, l.UniqueBytes, l.SharedBytes)
		}
	}
}

// TestSharedFiles: two images on bases that share one file's content (A)
// and each hold one of their own (B, C), and a third whose two files are
// one content (D). A's content is stored once: the store saves its second
// copy, each base's leaf counts it as shared through files rather than
// unique, and a content held twice in one leaf's own layers is unique,
// once.
func TestSharedFiles(t *testing.T) {
	r := compute(t, []Node{
		{Key: "v1", Kind: "committed", Bytes: 1000, Objects: map[string]Object{"A": {400, 1}, "B": {300, 1}}},
		{Key: "v2", Kind: "committed", Bytes: 1000, Objects: map[string]Object{"A": {400, 1}, "C": {300, 1}}},
		{Key: "v3", Kind: "committed", Bytes: 500, Objects: map[string]Object{"D": {200, 2}}},
	})
	// Physical: what is not in objects (300 + 300 + 100) and A, B, C, D
	// once (400 + 300 + 300 + 200).
	if r.LogicalBytes != 2500 || r.PhysicalBytes != 1900 || r.SavedBytes != 600 || r.FileSavedBytes != 600 {
		t.Errorf("logical %d physical %d saved %d by files %d, want 2500 1900 600 600", r.LogicalBytes, r.PhysicalBytes, r.SavedBytes, r.FileSavedBytes)
	}
	for key, want := range map[string]Leaf{
		"v1": {Key: "v1", Kind: "committed", TotalBytes: 1000, UniqueBytes: 600, FileSharedBytes: 400, Layers: 1},
		"v2": {Key: "v2", Kind: "committed", TotalBytes: 1000, UniqueBytes: 600, FileSharedBytes: 400, Layers: 1},
		// Removing v3 frees its 100 bytes that are not shared and D once.
		"v3": {Key: "v3", Kind: "committed", TotalBytes: 500, UniqueBytes: 300, Layers: 1},
	} {
		if got := leaf(t, r, key); got != want {
			t.Errorf("%s: %+v, want %+v", key, got, want)
		}
	}
}
