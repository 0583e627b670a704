package metadata

import (
	"encoding/binary"
	"fmt"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// The objects a layer's stubs stand for (share_files), recorded by the
// layer's directory name, like the directory itself: snapshots that share a
// directory share its stubs. They are recorded before the stubs are made,
// so that an object is never unreferenced while a stub in a recorded
// directory may name it, and forgotten with the directory's last snapshot.

// ObjectUse is how a layer uses one object.
type ObjectUse struct {
	Size  int64 // the object's bytes
	Files int64 // the layer's stubs (inodes) that stand for it
}

// ShareFiles records objs as the objects the stubs of layer directory dir
// stand for, beside those already recorded.
func (t *Tx) ShareFiles(dir string, objs map[digest.Digest]ObjectUse) error {
	b, err := t.objects.CreateBucketIfNotExists([]byte(dir))
	if err != nil {
		return fmt.Errorf("record objects of %s: %w", dir, err)
	}
	for d, use := range objs {
		if err := d.Validate(); err != nil {
			return fmt.Errorf("object of %s: %w", dir, err)
		}
		v := binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, uint64(use.Size)), uint64(use.Files))
		if err := b.Put([]byte(d), v); err != nil {
			return fmt.Errorf("record object %s of %s: %w", d, dir, err)
		}
	}
	return nil
}

// HasObjects reports whether stubs in dir stand for objects: whether a
// mount of a chain holding it needs the object store below.
func (t *Tx) HasObjects(dir string) bool {
	b := t.objects.Bucket([]byte(dir))
	if b == nil {
		return false
	}
	k, _ := b.Cursor().First()
	return k != nil
}

// DirObjects returns the objects dir references.
func (t *Tx) DirObjects(dir string) map[digest.Digest]ObjectUse {
	objs := map[digest.Digest]ObjectUse{}
	if b := t.objects.Bucket([]byte(dir)); b != nil {
		readObjects(b, func(d digest.Digest, use ObjectUse) { objs[d] = use })
	}
	return objs
}

// ObjectRefs is what the index knows of one object.
type ObjectRefs struct {
	Size int64
	Dirs []string // directory names of the layers whose stubs name it
}

// Objects returns every referenced object, with its size and the
// directories that reference it.
func (t *Tx) Objects() map[digest.Digest]ObjectRefs {
	objs := map[digest.Digest]ObjectRefs{}
	_ = t.objects.ForEachBucket(func(dir []byte) error {
		readObjects(t.objects.Bucket(dir), func(d digest.Digest, use ObjectUse) {
			r := objs[d]
			r.Size = use.Size
			r.Dirs = append(r.Dirs, string(dir))
			objs[d] = r
		})
		return nil
	})
	return objs
}

// ObjectDirs returns the directory names the index records objects for.
func (t *Tx) ObjectDirs() []string {
	var dirs []string
	_ = t.objects.ForEachBucket(func(dir []byte) error {
		dirs = append(dirs, string(dir))
		return nil
	})
	return dirs
}

// forgetObjects drops dir's objects, once no snapshot has dir.
func (t *Tx) forgetObjects(dir string) error {
	if t.objects.Bucket([]byte(dir)) == nil {
		return nil
	}
	if err := t.objects.DeleteBucket([]byte(dir)); err != nil {
		return fmt.Errorf("forget objects of %s: %w", dir, err)
	}
	return nil
}

func readObjects(b *bolt.Bucket, fn func(digest.Digest, ObjectUse)) {
	_ = b.ForEach(func(k, v []byte) error {
		if d := digest.Digest(k); d.Validate() == nil && len(v) == 16 {
			fn(d, ObjectUse{Size: int64(binary.BigEndian.Uint64(v)), Files: int64(binary.BigEndian.Uint64(v[8:]))})
		}
		return nil
	})
}
