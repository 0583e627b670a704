package metadata

import (
	"encoding/binary"
	"fmt"
	"time"

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
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if v != nil { // not the conversion's bucket
			return true
		}
	}
	return false
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

// forgetObjects drops dir's objects, once no snapshot has dir, and marks
// them released.
func (t *Tx) forgetObjects(dir string) error {
	if t.objects.Bucket([]byte(dir)) == nil {
		return nil
	}
	for d := range t.DirObjects(dir) {
		if err := t.release(d); err != nil {
			return err
		}
	}
	if err := t.objects.DeleteBucket([]byte(dir)); err != nil {
		return fmt.Errorf("forget objects of %s: %w", dir, err)
	}
	return nil
}

// SetObjects makes objs the objects dir's stubs stand for: those a
// conversion recorded and then made no stub of are released.
func (t *Tx) SetObjects(dir string, objs map[digest.Digest]ObjectUse) error {
	for d := range t.DirObjects(dir) {
		if _, ok := objs[d]; ok {
			continue
		}
		if err := t.objects.Bucket([]byte(dir)).Delete([]byte(d)); err != nil {
			return err
		}
		if err := t.release(d); err != nil {
			return err
		}
	}
	return t.ShareFiles(dir, objs)
}

func (t *Tx) release(d digest.Digest) error {
	if err := t.released.Put([]byte(d), nil); err != nil {
		return fmt.Errorf("release object %s: %w", d, err)
	}
	return nil
}

// Released returns the objects released and not yet unreleased.
func (t *Tx) Released() []digest.Digest {
	var ds []digest.Digest
	_ = t.released.ForEach(func(k, _ []byte) error {
		ds = append(ds, digest.Digest(k))
		return nil
	})
	return ds
}

// Unrelease forgets that d was released: its object was deleted, or is
// another layer's again.
func (t *Tx) Unrelease(d digest.Digest) error {
	return t.released.Delete([]byte(d))
}

func readObjects(b *bolt.Bucket, fn func(digest.Digest, ObjectUse)) {
	_ = b.ForEach(func(k, v []byte) error {
		if d := digest.Digest(k); d.Validate() == nil && len(v) == 16 {
			fn(d, ObjectUse{Size: int64(binary.BigEndian.Uint64(v)), Files: int64(binary.BigEndian.Uint64(v[8:]))})
		}
		return nil
	})
}

// keyConverting names, in a directory's objects bucket, the bucket that
// records a conversion under way: the times to put back on the layer's
// directories, by path relative to the layer. It is not a digest, so
// readObjects passes over it.
var keyConverting = []byte("converting")

// StartConversion records that the stubs of dir are being made, with the
// times (access, modification) of the layer's directories the conversion
// changes, so that a start after a crash can finish it (Conversions).
func (t *Tx) StartConversion(dir string, times map[string][2]time.Time) error {
	b, err := t.objects.CreateBucketIfNotExists([]byte(dir))
	if err != nil {
		return err
	}
	c, err := b.CreateBucketIfNotExists(keyConverting)
	if err != nil {
		return fmt.Errorf("record the conversion of %s: %w", dir, err)
	}
	for rel, ts := range times {
		v := binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, uint64(ts[0].UnixNano())), uint64(ts[1].UnixNano()))
		if err := c.Put([]byte(rel), v); err != nil {
			return err
		}
	}
	return nil
}

// Conversions returns the directories whose conversion has not ended, with
// the times StartConversion recorded.
func (t *Tx) Conversions() map[string]map[string][2]time.Time {
	out := map[string]map[string][2]time.Time{}
	_ = t.objects.ForEachBucket(func(dir []byte) error {
		c := t.objects.Bucket(dir).Bucket(keyConverting)
		if c == nil {
			return nil
		}
		times := map[string][2]time.Time{}
		_ = c.ForEach(func(k, v []byte) error {
			if len(v) == 16 {
				times[string(k)] = [2]time.Time{
					time.Unix(0, int64(binary.BigEndian.Uint64(v))),
					time.Unix(0, int64(binary.BigEndian.Uint64(v[8:]))),
				}
			}
			return nil
		})
		out[string(dir)] = times
		return nil
	})
	return out
}

// EndConversion forgets that dir's conversion is under way.
func (t *Tx) EndConversion(dir string) error {
	b := t.objects.Bucket([]byte(dir))
	if b == nil || b.Bucket(keyConverting) == nil {
		return nil
	}
	return b.DeleteBucket(keyConverting)
}
