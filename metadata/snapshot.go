package metadata

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"maps"
	"sort"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// Snapshot is one record of the index.
type Snapshot struct {
	ID      uint64
	Key     string
	Kind    snapshots.Kind
	Parent  string // key of the parent, "" for none
	DirName string // short name of the layer's directory; see the snapshotter's layout
	Labels  map[string]string
	Created time.Time
	Updated time.Time
	// Usage is the layer's own usage, stored at Commit. It is zero for active
	// snapshots and views, whose usage is measured on demand.
	Usage Usage
	// Staged marks an active snapshot created on the directory of a
	// committed layer it will be committed as again: containerd's parallel
	// unpack prepares a layer without its parent, and when strata already
	// holds that layer it hands the directory out read-only instead of
	// having it unpacked again. It shares Dir with that layer.
	Staged bool
}

// Usage is what a layer's files take.
type Usage struct {
	// Size is in allocated blocks (st_blocks * 512), as containerd's
	// snapshots.Usage counts it.
	Size int64
	// Inodes counts each hard-linked inode once.
	Inodes int64
	// Bytes is the apparent size of the files (st_size of everything but
	// directories), as du --bytes --apparent-size counts it less the
	// directories: what the layer's content weighs wherever it is stored.
	Bytes int64
}

// Containerd is the usage as containerd's Snapshotter.Usage reports it.
func (u Usage) Containerd() snapshots.Usage {
	return snapshots.Usage{Size: u.Size, Inodes: u.Inodes}
}

// Info is the record as containerd's snapshots API describes it.
func (s Snapshot) Info() snapshots.Info {
	return snapshots.Info{
		Kind:    s.Kind,
		Name:    s.Key,
		Parent:  s.Parent,
		Labels:  maps.Clone(s.Labels),
		Created: s.Created,
		Updated: s.Updated,
	}
}

var (
	fieldID      = []byte("id")
	fieldKind    = []byte("kind")
	fieldParent  = []byte("parent")
	fieldDir     = []byte("dir")
	fieldCreated = []byte("created")
	fieldUpdated = []byte("updated")
	fieldSize    = []byte("size")
	fieldInodes  = []byte("inodes")
	fieldBytes   = []byte("bytes")
	fieldLabels  = []byte("labels")
	fieldStaged  = []byte("staged")
)

// Get returns the snapshot recorded under key.
func (t *Tx) Get(key string) (Snapshot, error) {
	b := t.snapshots.Bucket([]byte(key))
	if b == nil {
		return Snapshot{}, fmt.Errorf("snapshot %q: %w", key, errdefs.ErrNotFound)
	}
	return readSnapshot(key, b)
}

// GetByID returns the snapshot with the given id.
func (t *Tx) GetByID(id uint64) (Snapshot, error) {
	key := t.ids.Get(u64(id))
	if key == nil {
		return Snapshot{}, fmt.Errorf("snapshot id %d: %w", id, errdefs.ErrNotFound)
	}
	return t.Get(string(key))
}

// ChainDirs returns the directory names of s's parents, nearest first: the
// lower directories of its mount. It reads only each parent's link and
// directory, so that a Prepare on a deep chain costs little per layer.
func (t *Tx) ChainDirs(s Snapshot) ([]string, error) {
	var dirs []string
	seen := map[string]bool{s.Key: true}
	for parent := s.Parent; parent != ""; {
		b := t.snapshots.Bucket([]byte(parent))
		if b == nil {
			return nil, fmt.Errorf("parent chain of %q is broken at %q: %w", s.Key, parent, errdefs.ErrNotFound)
		}
		if seen[parent] {
			return nil, fmt.Errorf("parent chain of %q loops at %q: %w", s.Key, parent, errdefs.ErrDataLoss)
		}
		seen[parent] = true
		dirs = append(dirs, string(b.Get(fieldDir)))
		parent = string(b.Get(fieldParent))
	}
	return dirs, nil
}

// NewSnapshot describes a snapshot to create.
type NewSnapshot struct {
	Key    string
	Kind   snapshots.Kind // KindActive or KindView
	Parent string         // must name a committed snapshot, or be ""
	Labels map[string]string
	// DirName is the short name of the new layer's directory; it must not be
	// in use (see DirInUse), unless Staged. Empty: CreateSnapshot takes the
	// first name DrawDir draws that no snapshot uses.
	DirName string
	// DrawDir draws a candidate directory name (the on-disk layout's
	// naming), for a DirName left empty.
	DrawDir func() (string, error)
	// Staged creates an active snapshot on DirName, the directory of a
	// committed snapshot (see Snapshot.Staged).
	Staged bool
}

// CreateSnapshot records a new active snapshot or view and returns it with its
// freshly assigned id.
func (t *Tx) CreateSnapshot(n NewSnapshot) (Snapshot, error) {
	if n.Kind != snapshots.KindActive && n.Kind != snapshots.KindView {
		return Snapshot{}, fmt.Errorf("cannot create a snapshot of kind %v: %w", n.Kind, errdefs.ErrInvalidArgument)
	}
	if n.Key == "" {
		return Snapshot{}, fmt.Errorf("snapshot key must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	var parent Snapshot
	if n.Parent != "" {
		var err error
		if parent, err = t.Get(n.Parent); err != nil {
			return Snapshot{}, fmt.Errorf("parent: %w", err)
		}
		if parent.Kind != snapshots.KindCommitted {
			return Snapshot{}, fmt.Errorf("parent %q is %v, not committed: %w", n.Parent, parent.Kind, errdefs.ErrInvalidArgument)
		}
	}
	if t.snapshots.Bucket([]byte(n.Key)) != nil {
		return Snapshot{}, fmt.Errorf("snapshot %q: %w", n.Key, errdefs.ErrAlreadyExists)
	}
	if n.DirName == "" && !n.Staged && n.DrawDir != nil {
		var err error
		if n.DirName, err = t.freeDir(n.DrawDir); err != nil {
			return Snapshot{}, err
		}
	}
	switch {
	case n.Staged && (n.Kind != snapshots.KindActive || !t.dirCommitted(n.DirName)):
		return Snapshot{}, fmt.Errorf("a staged snapshot must be active, on a committed layer's directory (not %q): %w", n.DirName, errdefs.ErrInvalidArgument)
	case !n.Staged && (n.DirName == "" || t.DirInUse(n.DirName)):
		return Snapshot{}, fmt.Errorf("directory name %q is empty or in use: %w", n.DirName, errdefs.ErrAlreadyExists)
	}
	id, err := t.ids.NextSequence()
	if err != nil {
		return Snapshot{}, fmt.Errorf("allocate snapshot id: %w", err)
	}
	now := time.Now().UTC()
	s := Snapshot{
		ID:      id,
		Key:     n.Key,
		Kind:    n.Kind,
		Parent:  n.Parent,
		DirName: n.DirName,
		Labels:  maps.Clone(n.Labels),
		Created: now,
		Updated: now,
		Staged:  n.Staged,
	}
	if err := t.put(s); err != nil {
		return Snapshot{}, err
	}
	if err := t.dirs.Put(dirKey(s.DirName, id), nil); err != nil {
		return Snapshot{}, err
	}
	if n.Parent != "" {
		if err := t.children.Put(childKey(parent.ID, id), []byte(n.Key)); err != nil {
			return Snapshot{}, err
		}
	}
	return s, nil
}

// CommitSnapshot turns the active snapshot key, whose id must be id, into the
// committed snapshot name, with the given usage. As containerd's interface
// specifies, the committed snapshot gets only the labels given to its
// Commit, and
// an active snapshot created without a parent may be given one now (the
// "rebase" capability used by parallel unpack).
func (t *Tx) CommitSnapshot(key, name string, id uint64, usage Usage, base snapshots.Info) (Snapshot, error) {
	if name == "" {
		return Snapshot{}, fmt.Errorf("commit name must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	s, err := t.Get(key)
	if err != nil {
		return Snapshot{}, err
	}
	if s.Kind != snapshots.KindActive {
		return Snapshot{}, fmt.Errorf("snapshot %q is %v, not active: %w", key, s.Kind, errdefs.ErrFailedPrecondition)
	}
	if s.ID != id {
		return Snapshot{}, fmt.Errorf("snapshot %q was replaced while it was being committed: %w", key, errdefs.ErrFailedPrecondition)
	}
	if t.snapshots.Bucket([]byte(name)) != nil {
		return Snapshot{}, fmt.Errorf("snapshot %q: %w", name, errdefs.ErrAlreadyExists)
	}
	if base.Parent != "" && base.Parent != s.Parent {
		if s.Parent != "" {
			return Snapshot{}, fmt.Errorf("cannot change parent of %q from %q to %q on commit: %w", key, s.Parent, base.Parent, errdefs.ErrInvalidArgument)
		}
		p, err := t.Get(base.Parent)
		if err != nil {
			return Snapshot{}, fmt.Errorf("commit parent: %w", err)
		}
		if p.Kind != snapshots.KindCommitted {
			return Snapshot{}, fmt.Errorf("commit parent %q is %v, not committed: %w", base.Parent, p.Kind, errdefs.ErrInvalidArgument)
		}
		s.Parent = base.Parent
	}
	if err := t.snapshots.DeleteBucket([]byte(key)); err != nil {
		return Snapshot{}, fmt.Errorf("delete active record %q: %w", key, err)
	}
	s.Key = name
	s.Kind = snapshots.KindCommitted
	s.Labels = maps.Clone(base.Labels)
	s.Created = time.Now().UTC()
	s.Updated = s.Created
	s.Usage = usage
	s.Staged = false
	if err := t.put(s); err != nil {
		return Snapshot{}, err
	}
	if err := t.reindexRef(Snapshot{}, s); err != nil {
		return Snapshot{}, err
	}
	if s.Parent != "" {
		p, err := t.Get(s.Parent)
		if err != nil {
			return Snapshot{}, fmt.Errorf("commit parent: %w", err)
		}
		if err := t.children.Put(childKey(p.ID, s.ID), []byte(name)); err != nil {
			return Snapshot{}, err
		}
	}
	return s, nil
}

// RemoveSnapshot deletes the record of key, which must have no children, and returns
// what it was. Its directory may still be another snapshot's: see DirInUse.
func (t *Tx) RemoveSnapshot(key string) (Snapshot, error) {
	s, err := t.Get(key)
	if err != nil {
		return Snapshot{}, err
	}
	if kids := t.Children(s.ID); len(kids) > 0 {
		return Snapshot{}, fmt.Errorf("snapshot %q has %d children (for example %q); remove them first: %w",
			key, len(kids), kids[0], errdefs.ErrFailedPrecondition)
	}
	if s.Parent != "" {
		p, err := t.Get(s.Parent)
		if err != nil {
			return Snapshot{}, fmt.Errorf("parent of %q: %w", key, err)
		}
		if err := t.children.Delete(childKey(p.ID, s.ID)); err != nil {
			return Snapshot{}, err
		}
	}
	if err := t.snapshots.DeleteBucket([]byte(key)); err != nil {
		return Snapshot{}, fmt.Errorf("delete record %q: %w", key, err)
	}
	if err := t.ids.Delete(u64(s.ID)); err != nil {
		return Snapshot{}, err
	}
	if err := t.dirs.Delete(dirKey(s.DirName, s.ID)); err != nil {
		return Snapshot{}, err
	}
	if !t.DirInUse(s.DirName) {
		if err := t.forgetObjects(s.DirName); err != nil {
			return Snapshot{}, err
		}
	}
	if err := t.reindexRef(s, Snapshot{}); err != nil {
		return Snapshot{}, err
	}
	return s, nil
}

// UpdateInfo changes the mutable fields of a snapshot (its labels) as
// containerd's Snapshotter.Update specifies: with no fieldpaths all labels are
// replaced; "labels" replaces them too; "labels.KEY" sets one label or, when
// info has no value for it, deletes it.
func (t *Tx) UpdateInfo(info snapshots.Info, fieldpaths ...string) (Snapshot, error) {
	s, err := t.Get(info.Name)
	if err != nil {
		return Snapshot{}, err
	}
	if len(fieldpaths) == 0 {
		fieldpaths = []string{"labels"}
	}
	labels := maps.Clone(s.Labels)
	for _, path := range fieldpaths {
		switch {
		case path == "labels":
			labels = maps.Clone(info.Labels)
		case strings.HasPrefix(path, "labels."):
			k := strings.TrimPrefix(path, "labels.")
			if v := info.Labels[k]; v != "" {
				if labels == nil {
					labels = map[string]string{}
				}
				labels[k] = v
			} else {
				delete(labels, k)
			}
		default:
			return Snapshot{}, fmt.Errorf("cannot update field %q of snapshot %q (only labels and labels.KEY): %w", path, info.Name, errdefs.ErrInvalidArgument)
		}
	}
	old := s
	s.Labels = labels
	s.Updated = time.Now().UTC()
	if err := t.put(s); err != nil {
		return Snapshot{}, err
	}
	return s, t.reindexRef(old, s)
}

// layerRef is the layer a committed snapshot holds by containerd's
// unpacker's label, or "".
func (s Snapshot) layerRef() string {
	if s.Kind != snapshots.KindCommitted {
		return ""
	}
	return s.Labels[snapshots.LabelSnapshotRef]
}

// reindexRef moves a snapshot's entry in the refs index from what old holds
// to what updated holds (either may be the zero Snapshot: none).
func (t *Tx) reindexRef(old, updated Snapshot) error {
	if ref := old.layerRef(); ref != "" {
		if err := t.refs.Delete(refKey(ref, old.ID)); err != nil {
			return err
		}
	}
	if ref := updated.layerRef(); ref != "" {
		return t.refs.Put(refKey(ref, updated.ID), []byte(updated.Key))
	}
	return nil
}

func refPrefix(ref string) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(ref))), ref...)
}

func refKey(ref string, id uint64) []byte {
	return append(refPrefix(ref), u64(id)...)
}

// committedHolding calls fn for each committed snapshot that holds the
// layer ref names (Holds), from the index, until fn returns true.
func (t *Tx) committedHolding(ref string, fn func(Snapshot) bool) error {
	s, err := t.Get(ref)
	switch {
	case err == nil && s.Kind == snapshots.KindCommitted && fn(s):
		return nil
	case err != nil && !errdefs.IsNotFound(err):
		return err
	}
	if t.refs == nil {
		return fmt.Errorf("the index of layers by chain id is missing; restart strata or run fsck --repair to rebuild it: %w", errdefs.ErrDataLoss)
	}
	prefix := refPrefix(ref)
	c := t.refs.Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		s, err := t.Get(string(v))
		if err != nil {
			// The index is derived from the records; opening the
			// index read-write rebuilds it (checkRefs).
			return fmt.Errorf("refs index entry for %s names %q (%v); restart strata or run fsck --repair to rebuild the index: %w", ref, v, err, errdefs.ErrDataLoss)
		}
		if fn(s) {
			return nil
		}
	}
	return nil
}

// Walk calls fn for every snapshot, in key order.
func (t *Tx) Walk(fn func(Snapshot) error) error {
	return t.snapshots.ForEachBucket(func(k []byte) error {
		s, err := readSnapshot(string(k), t.snapshots.Bucket(k))
		if err != nil {
			return err
		}
		return fn(s)
	})
}

// CommittedWithRef finds a committed snapshot on parent that holds the layer
// ref names: one whose key is ref, or that carries ref in the label
// containerd's unpacker sets (containerd.io/snapshot.ref, the layer's chain
// id). It reads only the candidates, through the refs index.
func (t *Tx) CommittedWithRef(ref, parent string) (Snapshot, bool, error) {
	var found Snapshot
	ok := false
	err := t.committedHolding(ref, func(s Snapshot) bool {
		if s.Parent == parent {
			found, ok = s, true
		}
		return ok
	})
	return found, ok, err
}

// CommittedOnChain finds a committed snapshot holding the layer ref names
// (as CommittedWithRef) whose parent holds the layer parentRef names: the
// same layer on the same chain, whatever the parent's key.
func (t *Tx) CommittedOnChain(ref, parentRef string) (Snapshot, bool, error) {
	var found Snapshot
	ok := false
	err := t.committedHolding(ref, func(s Snapshot) bool {
		if s.Parent == "" {
			return false
		}
		if p, err := t.Get(s.Parent); err == nil && p.Holds(parentRef) {
			found, ok = s, true
		}
		return ok
	})
	return found, ok, err
}

// Holds reports whether s is the layer ref names: its key, or the label
// containerd's unpacker sets (the layer's chain id).
func (s Snapshot) Holds(ref string) bool {
	return s.Key == ref || s.Labels[snapshots.LabelSnapshotRef] == ref
}

// Children returns the keys of the snapshots whose parent has the given id.
func (t *Tx) Children(id uint64) []string {
	var kids []string
	prefix := u64(id)
	c := t.children.Cursor()
	for k, v := c.Seek(prefix); k != nil && len(k) == 16 && binary.BigEndian.Uint64(k) == id; k, v = c.Next() {
		kids = append(kids, string(v))
	}
	return kids
}

// freeDir draws directory names until one is free. With names drawn from a
// large space a second draw is rare; 16 failures mean the drawing is broken.
func (t *Tx) freeDir(draw func() (string, error)) (string, error) {
	for range 16 {
		name, err := draw()
		if err != nil {
			return "", err
		}
		if !t.DirInUse(name) {
			return name, nil
		}
	}
	return "", fmt.Errorf("no free layer directory name after 16 draws")
}

// DirInUse reports whether a snapshot has the directory name.
func (t *Tx) DirInUse(dir string) bool {
	return len(t.DirUsers(dir)) > 0
}

// DirUsers returns the ids of the snapshots that have the directory name.
func (t *Tx) DirUsers(dir string) []uint64 {
	var ids []uint64
	c := t.dirs.Cursor()
	for k, _ := c.Seek([]byte(dir)); k != nil && strings.HasPrefix(string(k), dir); k, _ = c.Next() {
		if len(k) == len(dir)+8 {
			ids = append(ids, binary.BigEndian.Uint64(k[len(dir):]))
		}
	}
	return ids
}

// CommittedInDir returns a committed snapshot that has the directory name.
func (t *Tx) CommittedInDir(dir string) (Snapshot, bool) {
	for _, id := range t.DirUsers(dir) {
		if s, err := t.GetByID(id); err == nil && s.Kind == snapshots.KindCommitted {
			return s, true
		}
	}
	return Snapshot{}, false
}

func (t *Tx) dirCommitted(dir string) bool {
	_, ok := t.CommittedInDir(dir)
	return ok
}

func dirKey(dir string, id uint64) []byte {
	return append([]byte(dir), u64(id)...)
}

// recordedIDs returns the ids of every recorded snapshot.
func (t *Tx) recordedIDs() map[uint64]bool {
	ids := map[uint64]bool{}
	_ = t.ids.ForEach(func(k, _ []byte) error {
		ids[binary.BigEndian.Uint64(k)] = true
		return nil
	})
	return ids
}

// Dirs returns every recorded directory name with the ids of the snapshots
// that have it.
func (t *Tx) Dirs() map[string][]uint64 {
	dirs := map[string][]uint64{}
	_ = t.dirs.ForEach(func(k, _ []byte) error {
		if len(k) > 8 {
			dir := string(k[:len(k)-8])
			dirs[dir] = append(dirs[dir], binary.BigEndian.Uint64(k[len(k)-8:]))
		}
		return nil
	})
	return dirs
}

// LastID is the highest id handed out so far.
func (t *Tx) LastID() uint64 { return t.ids.Sequence() }

// ReserveIDsThrough makes sure no id up to and including id is handed out
// again, for an index rebuilt or merged beside records that used them. Ids
// name nothing on disk, so the snapshotter itself never needs it; the deep
// chain test uses it to start numbering past 100000.
func (t *Tx) ReserveIDsThrough(id uint64) error {
	if t.ids.Sequence() >= id {
		return nil
	}
	return t.ids.SetSequence(id)
}

func (t *Tx) put(s Snapshot) error {
	b, err := t.snapshots.CreateBucketIfNotExists([]byte(s.Key))
	if err != nil {
		return fmt.Errorf("record %q: %w", s.Key, err)
	}
	created, err := s.Created.MarshalBinary()
	if err != nil {
		return err
	}
	updated, err := s.Updated.MarshalBinary()
	if err != nil {
		return err
	}
	for _, f := range []struct{ k, v []byte }{
		{fieldID, u64(s.ID)},
		{fieldKind, []byte{byte(s.Kind)}},
		{fieldParent, []byte(s.Parent)},
		{fieldDir, []byte(s.DirName)},
		{fieldCreated, created},
		{fieldUpdated, updated},
		{fieldSize, u64(uint64(s.Usage.Size))},
		{fieldInodes, u64(uint64(s.Usage.Inodes))},
		{fieldBytes, u64(uint64(s.Usage.Bytes))},
		{fieldStaged, boolByte(s.Staged)},
	} {
		if err := b.Put(f.k, f.v); err != nil {
			return fmt.Errorf("record %q: %w", s.Key, err)
		}
	}
	if b.Bucket(fieldLabels) != nil {
		if err := b.DeleteBucket(fieldLabels); err != nil {
			return err
		}
	}
	lb, err := b.CreateBucket(fieldLabels)
	if err != nil {
		return err
	}
	for k, v := range s.Labels {
		// As in containerd, a label with an empty value is no label at all.
		if v == "" {
			continue
		}
		if err := lb.Put([]byte(k), []byte(v)); err != nil {
			return fmt.Errorf("label %q of %q: %w", k, s.Key, err)
		}
	}
	return t.ids.Put(u64(s.ID), []byte(s.Key))
}

func readSnapshot(key string, b *bolt.Bucket) (Snapshot, error) {
	s := Snapshot{Key: key}
	id := b.Get(fieldID)
	kind := b.Get(fieldKind)
	if len(id) != 8 || len(kind) != 1 {
		return Snapshot{}, fmt.Errorf("record of snapshot %q is corrupt: %w", key, errdefs.ErrDataLoss)
	}
	s.ID = binary.BigEndian.Uint64(id)
	s.Kind = snapshots.Kind(kind[0])
	s.Parent = string(b.Get(fieldParent))
	s.DirName = string(b.Get(fieldDir))
	if err := s.Created.UnmarshalBinary(b.Get(fieldCreated)); err != nil {
		return Snapshot{}, fmt.Errorf("created time of %q: %w", key, err)
	}
	if err := s.Updated.UnmarshalBinary(b.Get(fieldUpdated)); err != nil {
		return Snapshot{}, fmt.Errorf("updated time of %q: %w", key, err)
	}
	if v := b.Get(fieldSize); len(v) == 8 {
		s.Usage.Size = int64(binary.BigEndian.Uint64(v))
	}
	if v := b.Get(fieldInodes); len(v) == 8 {
		s.Usage.Inodes = int64(binary.BigEndian.Uint64(v))
	}
	if v := b.Get(fieldBytes); len(v) == 8 {
		s.Usage.Bytes = int64(binary.BigEndian.Uint64(v))
	}
	s.Staged = bytes.Equal(b.Get(fieldStaged), []byte{1})
	if lb := b.Bucket(fieldLabels); lb != nil {
		_ = lb.ForEach(func(k, v []byte) error {
			if s.Labels == nil {
				s.Labels = map[string]string{}
			}
			s.Labels[string(k)] = string(v)
			return nil
		})
	}
	return s, nil
}

func boolByte(v bool) []byte {
	if v {
		return []byte{1}
	}
	return []byte{0}
}

func u64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

func childKey(parent, child uint64) []byte {
	return append(u64(parent), u64(child)...)
}

// Check verifies that the index agrees with itself: every record's id, name
// and parent link are in the indexes, every index entry names a record that
// agrees, parents exist and are committed, chains end without a loop, and
// stored usage is plausible. It returns what it finds wrong.
func (t *Tx) Check() []string {
	var findings []string
	add := func(format string, args ...any) { findings = append(findings, fmt.Sprintf(format, args...)) }
	records := map[string]Snapshot{}
	err := t.snapshots.ForEachBucket(func(k []byte) error {
		s, err := readSnapshot(string(k), t.snapshots.Bucket(k))
		if err != nil {
			add("%v", err)
			return nil
		}
		records[s.Key] = s
		return nil
	})
	if err != nil {
		add("cannot read the snapshots: %v", err)
	}
	for key, s := range records {
		if s.Kind < snapshots.KindView || s.Kind > snapshots.KindCommitted {
			add("snapshot %q has unknown kind %d", key, s.Kind)
		}
		if got := string(t.ids.Get(u64(s.ID))); got != key {
			add("snapshot %q has id %d, but the id index names %q", key, s.ID, got)
		}
		if t.dirs.Get(dirKey(s.DirName, s.ID)) == nil {
			add("snapshot %q has directory %q, which the directory index does not give to it", key, s.DirName)
		}
		// A staged snapshot may outlive the committed layer it was
		// staged on; it then holds the directory alone.
		if s.Staged && s.Kind != snapshots.KindActive {
			add("%v snapshot %q is marked staged, which only an active snapshot may be", s.Kind, key)
		}
		if !s.Staged && s.Kind != snapshots.KindCommitted && len(t.DirUsers(s.DirName)) > 1 {
			add("%v snapshot %q shares its directory %q with another snapshot", s.Kind, key, s.DirName)
		}
		if s.Parent != "" {
			p, ok := records[s.Parent]
			switch {
			case !ok:
				add("snapshot %q has parent %q, which does not exist", key, s.Parent)
			case p.Kind != snapshots.KindCommitted:
				add("snapshot %q has parent %q, which is %v, not committed", key, s.Parent, p.Kind)
			case string(t.children.Get(childKey(p.ID, s.ID))) != key:
				add("snapshot %q is missing from the children of %q", key, s.Parent)
			}
		}
		if _, err := t.ChainDirs(s); err != nil {
			add("%v", err)
		}
		u := s.Usage
		if s.Kind == snapshots.KindCommitted {
			if u.Size < 0 || u.Bytes < 0 || u.Inodes < 1 {
				add("committed snapshot %q has implausible stored usage %+v", key, u)
			}
		} else if u != (Usage{}) {
			add("%v snapshot %q has stored usage %+v; only committed ones should", s.Kind, key, u)
		}
	}
	_ = t.ids.ForEach(func(k, v []byte) error {
		if s, ok := records[string(v)]; !ok || len(k) != 8 || s.ID != binary.BigEndian.Uint64(k) {
			add("id index entry %x names %q, which has no such id", k, v)
		}
		return nil
	})
	dirOfID := map[uint64]string{}
	for _, s := range records {
		dirOfID[s.ID] = s.DirName
	}
	_ = t.dirs.ForEach(func(k, _ []byte) error {
		if len(k) <= 8 {
			add("directory index entry %q is corrupt", k)
			return nil
		}
		dir, id := string(k[:len(k)-8]), binary.BigEndian.Uint64(k[len(k)-8:])
		if d, ok := dirOfID[id]; !ok || d != dir {
			add("directory index entry %q (snapshot id %d) belongs to no snapshot", dir, id)
		}
		return nil
	})
	if t.refs == nil {
		add("the index of layers by chain id (refs) is missing; a read-write open rebuilds it")
	} else {
		for key, s := range records {
			if ref := s.layerRef(); ref != "" && string(t.refs.Get(refKey(ref, s.ID))) != key {
				add("committed snapshot %q holds layer %s, which the refs index does not give to it", key, ref)
			}
		}
		_ = t.refs.ForEach(func(k, v []byte) error {
			if s, ok := records[string(v)]; !ok || !bytes.Equal(refKey(s.layerRef(), s.ID), k) {
				add("refs index entry %q names %q, which does not hold that layer", k, v)
			}
			return nil
		})
	}
	for _, dir := range t.ObjectDirs() {
		if !t.DirInUse(dir) {
			add("objects are recorded for directory %q, which no snapshot has", dir)
		}
		_ = t.objects.Bucket([]byte(dir)).ForEach(func(k, v []byte) error {
			if v == nil && bytes.Equal(k, keyConverting) {
				return nil
			}
			if digest.Digest(k).Validate() != nil || len(v) != 16 {
				add("directory %q has a damaged object entry %q", dir, k)
			}
			return nil
		})
	}
	_ = t.released.ForEach(func(k, _ []byte) error {
		if digest.Digest(k).Validate() != nil {
			add("released object entry %q is not a digest", k)
		}
		return nil
	})
	_ = t.children.ForEach(func(k, v []byte) error {
		c, ok := records[string(v)]
		if len(k) != 16 || !ok || c.ID != binary.BigEndian.Uint64(k[8:]) {
			add("children index entry %x names %q, which does not match", k, v)
			return nil
		}
		if p, ok := records[c.Parent]; !ok || p.ID != binary.BigEndian.Uint64(k[:8]) {
			add("children index lists %q under parent id %d, but its parent is %q", v, binary.BigEndian.Uint64(k[:8]), c.Parent)
		}
		return nil
	})
	sort.Strings(findings)
	return findings
}
